//! `kubectl mesh detach`: remove a cluster from the mesh.
//!
//! Deletes what attach created and nothing else: on the remote, the objects attach creates,
//! by name, each only when its labels say kubectl-mesh created it for this cluster and its
//! annotation says from this primary (another primary may have attached it since; and the
//! mesh namespace only when attach created it and it holds nothing else); on the primary,
//! the cluster's Secrets and its MeshCluster. The MeshCluster goes last, so a detach that
//! fails halfway can be re-run: it still knows the cluster. A re-run after the MeshCluster is
//! gone still cleans a remote given with --remote-kubeconfig.
//!
//! Order on the remote, and why:
//! 1. the guard (ValidatingAdmissionPolicy and binding), so that a deny guard cannot refuse
//!    the label removals of step 3;
//! 2. the token Secrets: deleting them revokes the tokens at once, so the webhook's reconciler
//!    (still running for this cluster until its MeshCluster goes) can no longer write labels;
//! 3. with --strip-labels, the managed labels of the remote's namespaces (not before 2, or the
//!    reconciler would put them back);
//! 4. the sync scope (policy and binding), only now that no token is left for it to confine;
//! 5. ClusterRoleBindings, ClusterRoles, ServiceAccounts, then the namespace.
//!
//! Detach needs admin rights on the remote: the stored token may only patch namespaces. It
//! uses --remote-kubeconfig, or else the context attach recorded, looked up in the user's
//! kubeconfig. When the remote cannot be reached (or no credentials are at hand), detach
//! refuses; --force detaches from the primary anyway and lists what stays on the remote.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams},
    config::Kubeconfig,
    core::{ClusterResourceScope, NamespaceResourceScope},
};
use mesh_core::{
    GROUP, MESH_NAMESPACE,
    cluster::{MeshCluster, RemoteGuard},
    labels::SyncRule,
    remote::Failure,
    sync::{self, SyncMode, sync_remote},
};
use serde::de::DeserializeOwned;

use super::attach::{remote_kubeconfig_error, wait_namespace_gone};
use crate::{
    Context, Error, Result,
    access::{self, Need, Target},
    kubeconfig, mesh_state,
    output::Progress,
    remote_setup as setup,
};

/// Detach a cluster from the mesh.
///
/// Deletes what attach created, on the remote and on the primary; nothing else. Needs an
/// admin kubeconfig of the remote: --remote-kubeconfig, or the context attach used if your
/// kubeconfig has it. Safe to re-run.
#[derive(Debug, clap::Args)]
pub struct Detach {
    /// Name of the attached cluster.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Remove the cluster from the primary even if the remote cannot be reached.
    #[arg(long)]
    pub force: bool,
    /// Also remove the managed labels kubectl-mesh set on the remote's namespaces.
    #[arg(long)]
    pub strip_labels: bool,
    /// Admin kubeconfig of the remote [default: your kubeconfig, with the context attach used].
    #[arg(long, value_name = "FILE")]
    pub remote_kubeconfig: Option<PathBuf>,
    /// Context of the remote in that kubeconfig [default: its current context].
    #[arg(long, value_name = "CONTEXT")]
    pub remote_context: Option<String>,
    /// How long to wait for the remote's mesh namespace to be deleted.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// How detach reaches the remote, or why it does not.
enum RemoteAccess {
    Ready { client: Client, target: Target },
    Skipped { why: String },
}

impl Detach {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            name,
            force,
            strip_labels,
            remote_kubeconfig,
            remote_context,
            timeout,
        } = self;
        let progress = ctx.progress;
        let (primary_kc, primary_context, primary_target) = ctx.primary_target()?;
        let primary = access::client(primary_kc.clone(), Some(&primary_context)).await?;

        let clusters: Api<MeshCluster> = Api::all(primary.clone());
        let mc = match clusters.get_opt(&name).await {
            Ok(mc) => mc,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Error::Refused {
                    what: "kubectl-mesh is not installed on the primary (it has no MeshCluster \
                           resource)"
                        .into(),
                    hint: "nothing is attached; `kubectl mesh install` installs it".into(),
                });
            }
            Err(e) => {
                return Err(access::request_error(
                    &primary_target,
                    "read MeshClusters",
                    e,
                ));
            }
        };
        let missing = access::missing(&primary, &primary_needs(strip_labels))
            .await
            .map_err(|e| access::request_error(&primary_target, "check rights", e))?;
        if !missing.is_empty() {
            return Err(Error::Refused {
                what: format!(
                    "missing permissions on the primary ({}): {}",
                    primary_target.server,
                    missing.join(", ")
                ),
                hint: "use an admin context or ask a cluster admin (`kubectl auth can-i --list` \
                       shows yours)"
                    .into(),
            });
        }
        // What attach recorded on the remote's objects: only this primary's are deleted.
        let primary_id = access::cluster_id(&primary)
            .await
            .map_err(|e| access::request_error(&primary_target, "read kube-system", e))?;
        let primary_secrets = labelled_secrets(&primary, &name)
            .await
            .map_err(|e| access::request_error(&primary_target, "list Secrets", e))?;
        if mc.is_none() && primary_secrets.is_empty() && remote_kubeconfig.is_none() {
            return Err(Error::Refused {
                what: format!("cluster {name:?} is not attached"),
                hint: "`kubectl mesh list` shows the attached clusters; to clean up a remote \
                       that a forced detach left behind, pass --remote-kubeconfig"
                    .into(),
            });
        }

        // The labels to strip are the ones the installed webhook manages, read before anything
        // is deleted so that a refusal leaves everything in place.
        // Within the cluster's scope: a namespace left out of it was never written, and its
        // labels are the remote's own.
        let strip = if strip_labels {
            let rule = mesh_state::rule_of(&primary, &primary_target).await?;
            Some(match &mc {
                Some(mc) => mesh_state::scoped_rule(&rule, mc)?,
                None => rule,
            })
        } else {
            None
        };

        let remote = resolve_remote(
            &name,
            mc.as_ref(),
            &primary_kc,
            remote_kubeconfig.as_ref(),
            remote_context.as_deref(),
            strip_labels,
            force,
        )
        .await?;

        let mut left = Vec::new();
        match &remote {
            RemoteAccess::Ready { client, target } => {
                clean_remote(
                    client,
                    target,
                    Ours {
                        cluster: &name,
                        primary: &primary_id,
                    },
                    mc.as_ref(),
                    strip.as_ref(),
                    timeout,
                    progress,
                )
                .await?;
            }
            RemoteAccess::Skipped { why } => {
                let has = |namespace: &str, secret: &str| {
                    primary_secrets.iter().any(|s| {
                        s.namespace().as_deref() == Some(namespace) && s.name_any() == secret
                    })
                };
                left = left_on_remote(
                    mc.as_ref(),
                    has(setup::ISTIO_NAMESPACE, &setup::istio_secret_name(&name)),
                    has(MESH_NAMESPACE, &setup::view_secret_name(&name)),
                );
                progress.warn(format!("skipping remote cluster {name} (--force): {why}"));
            }
        }

        // The primary: Secrets, the namespace istio-system if attach created it and it is
        // empty now, and the MeshCluster last.
        for secret in &primary_secrets {
            let ns = secret.namespace().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(primary.clone(), &ns);
            delete(&api, &secret.name_any(), "primary", progress)
                .await
                .map_err(|e| access::request_error(&primary_target, "delete Secrets", e))?;
        }
        if primary_secrets
            .iter()
            .any(|s| s.namespace().as_deref() == Some(setup::ISTIO_NAMESPACE))
        {
            remove_namespace_if_unused(&primary, setup::ISTIO_NAMESPACE, "primary", None, progress)
                .await
                .map_err(|e| access::request_error(&primary_target, "delete istio-system", e))?;
        }
        if mc.is_some() {
            delete(&clusters, &name, "primary", progress)
                .await
                .map_err(|e| access::request_error(&primary_target, "delete the MeshCluster", e))?;
        }

        if left.is_empty() {
            progress.ok(format!("{name} detached"));
        } else {
            progress.warn(format!(
                "{name} detached from the primary; left on the remote: {}",
                left.join(", ")
            ));
            progress.info(format!(
                "once it is reachable, `kubectl mesh detach {name} --remote-kubeconfig <file>` \
                 removes them (it finds them by name and their label {}={name})",
                mesh_core::cluster::CLUSTER_LABEL
            ));
        }
        Ok(())
    }
}

fn primary_needs(strip_labels: bool) -> Vec<Need> {
    let mut needs = vec![
        // Its uid is the primary's id, which attach recorded on the remote's objects.
        Need::cluster("", "namespaces", &["get"]).named("kube-system"),
        Need::namespaced("", "secrets", MESH_NAMESPACE, &["list", "delete"]),
        Need::cluster(GROUP, "meshclusters", &["get", "delete"]),
    ];
    if strip_labels {
        // The webhook configuration records which labels are managed.
        needs.push(Need::cluster(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            &["get"],
        ));
    }
    needs
}

fn remote_needs(strip_labels: bool) -> Vec<Need> {
    const LD: &[&str] = &["get", "delete"];
    let mut namespaces = vec!["get", "delete"];
    if strip_labels {
        namespaces.extend(["list", "patch"]);
    }
    vec![
        Need::cluster("", "namespaces", &namespaces),
        Need::namespaced("", "serviceaccounts", MESH_NAMESPACE, LD),
        Need::namespaced("", "secrets", MESH_NAMESPACE, LD),
        Need::namespaced("rbac.authorization.k8s.io", "roles", MESH_NAMESPACE, LD),
        Need::namespaced(
            "rbac.authorization.k8s.io",
            "rolebindings",
            MESH_NAMESPACE,
            LD,
        ),
        Need::cluster("rbac.authorization.k8s.io", "clusterroles", LD),
        Need::cluster("rbac.authorization.k8s.io", "clusterrolebindings", LD),
        Need::cluster(
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            LD,
        ),
        Need::cluster(
            "admissionregistration.k8s.io",
            "validatingadmissionpolicybindings",
            LD,
        ),
    ]
}

/// The cluster's Secrets on the primary: its stored kubeconfig and its Istio remote secret.
async fn labelled_secrets(primary: &Client, name: &str) -> Result<Vec<Secret>, kube::Error> {
    let lp = ListParams::default().labels(&setup::selector(name));
    let mut out = Vec::new();
    let api: Api<Secret> = Api::namespaced(primary.clone(), MESH_NAMESPACE);
    out.extend(api.list(&lp).await?.items);
    // A caller without rights in istio-system leaves the Istio remote secret to the
    // garbage collector: it is owned by the MeshCluster.
    let api: Api<Secret> = Api::namespaced(primary.clone(), setup::ISTIO_NAMESPACE);
    match api.list(&lp).await {
        Ok(list) => out.extend(list.items),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Finds credentials for the remote and checks them: reachable, the right cluster, enough
/// rights. Without --force every problem is a refusal; with it, a skipped remote.
async fn resolve_remote(
    name: &str,
    mc: Option<&MeshCluster>,
    primary_kc: &Kubeconfig,
    file: Option<&PathBuf>,
    context: Option<&str>,
    strip_labels: bool,
    force: bool,
) -> Result<RemoteAccess> {
    let server_hint = mc.map(|m| m.spec.server.clone()).unwrap_or_default();
    let refuse_or_skip = |what: String, hint: String| -> Result<RemoteAccess> {
        if force {
            Ok(RemoteAccess::Skipped { why: what })
        } else {
            Err(Error::Refused {
                what,
                hint: format!(
                    "{hint}; or pass --force to detach from the primary only and leave the \
                     remote's objects behind"
                ),
            })
        }
    };
    // Which kubeconfig and context, and whether the user named them (then a cluster
    // mismatch is their mistake, not a reason to skip).
    let (kc, kc_context, where_configured, explicit) = match file {
        Some(path) => {
            let kc = kubeconfig::read_remote(path, context)
                .map_err(|e| remote_kubeconfig_error(path, e))?;
            (
                kc,
                None,
                format!("the server address in {}", path.display()),
                true,
            )
        }
        None => {
            let recorded = context
                .map(str::to_owned)
                .or_else(|| mc.and_then(setup::remote_context).map(str::to_owned));
            let usable = recorded.filter(|c| primary_kc.contexts.iter().any(|n| n.name == *c));
            match usable {
                Some(c) => (
                    primary_kc.clone(),
                    Some(c.clone()),
                    format!("the server of context {c} in your kubeconfig"),
                    context.is_some(),
                ),
                None => {
                    return refuse_or_skip(
                        format!(
                            "no credentials for remote cluster {name}{}: detach needs an admin \
                             kubeconfig of it to delete what attach created there",
                            if server_hint.is_empty() {
                                String::new()
                            } else {
                                format!(" ({server_hint})")
                            }
                        ),
                        "pass --remote-kubeconfig FILE (and --remote-context if it is not the \
                         current one)"
                            .into(),
                    );
                }
            }
        }
    };
    let server = kubeconfig::select(&kc, kc_context.as_deref())?
        .server()?
        .to_owned();
    let target = Target {
        label: format!("remote cluster {name}"),
        server,
        where_configured,
    };
    let client = access::client(kc, kc_context.as_deref()).await?;
    let missing = match access::missing(&client, &remote_needs(strip_labels)).await {
        Ok(m) => m,
        Err(e) => {
            let err = access::request_error(&target, "check rights", e);
            let hint = err.hint();
            return refuse_or_skip(err.what(), hint);
        }
    };
    if let Some(mc) = mc {
        let id = match access::cluster_id(&client).await {
            Ok(id) => id,
            Err(e) => {
                let err = access::request_error(&target, "read kube-system", e);
                let hint = err.hint();
                return refuse_or_skip(err.what(), hint);
            }
        };
        if id != mc.spec.cluster_id {
            let what = format!(
                "the remote kubeconfig reaches cluster id {id} at {}, but {name} is cluster id \
                 {} at {}",
                target.server, mc.spec.cluster_id, mc.spec.server
            );
            if explicit {
                return Err(Error::Refused {
                    what,
                    hint: format!("pass the kubeconfig of {name} with --remote-kubeconfig"),
                });
            }
            return refuse_or_skip(
                what,
                "pass the remote's kubeconfig with --remote-kubeconfig".into(),
            );
        }
    }
    if !missing.is_empty() {
        return refuse_or_skip(
            format!(
                "missing permissions on remote cluster {name} ({}): {}",
                target.server,
                missing.join(", ")
            ),
            "use an admin kubeconfig of the remote".into(),
        );
    }
    Ok(RemoteAccess::Ready { client, target })
}

/// Which remote objects a detach deletes: attach's for this cluster, from this primary.
#[derive(Clone, Copy)]
struct Ours<'a> {
    cluster: &'a str,
    /// UID of the primary's kube-system namespace.
    primary: &'a str,
}

/// Deletes the remote's objects of cluster `name`, in the order the module explains; with
/// `strip`, also the labels that rule manages.
async fn clean_remote(
    client: &Client,
    target: &Target,
    ours: Ours<'_>,
    mc: Option<&MeshCluster>,
    strip: Option<&SyncRule>,
    timeout: Duration,
    progress: Progress,
) -> Result<()> {
    let Ours {
        cluster: name,
        primary,
    } = ours;
    let fail = |doing: &str| {
        let doing = doing.to_owned();
        move |e: kube::Error| access::request_error(target, &doing, e)
    };
    let remove = Remover {
        client,
        target,
        ours,
        progress,
    };

    remove
        .cluster::<ValidatingAdmissionPolicyBinding>(setup::GUARD, "delete the guard")
        .await?;
    remove
        .cluster::<ValidatingAdmissionPolicy>(setup::GUARD, "delete the guard")
        .await?;
    // With the standbys an interrupted `rotate` may have left.
    let standbys = super::rotate::standby_secrets();
    for secret in [
        setup::TOKEN_SECRET,
        setup::ISTIO_READER_TOKEN_SECRET,
        setup::VIEW_TOKEN_SECRET,
    ]
    .into_iter()
    .chain(standbys.iter().map(String::as_str))
    {
        remove
            .in_mesh_namespace::<Secret>(secret, "delete the token Secrets")
            .await?;
    }
    // The sync account's right to renew a time-bound token (`attach --token-ttl`).
    let renewal = "delete the token renewal rights";
    remove
        .in_mesh_namespace::<RoleBinding>(setup::TOKEN_RENEWAL, renewal)
        .await?;
    remove
        .in_mesh_namespace::<Role>(setup::TOKEN_RENEWAL, renewal)
        .await?;

    if let Some(rule) = strip {
        strip_managed_labels(client, target, rule, name, timeout, progress).await?;
    }

    // The sync scope outlives the token it confines.
    remove
        .cluster::<ValidatingAdmissionPolicyBinding>(setup::SYNC_SCOPE, "delete the sync scope")
        .await?;
    remove
        .cluster::<ValidatingAdmissionPolicy>(setup::SYNC_SCOPE, "delete the sync scope")
        .await?;
    for account in [
        setup::SYNC_ACCOUNT,
        setup::ISTIO_READER,
        setup::VIEW_ACCOUNT,
    ] {
        remove
            .cluster::<ClusterRoleBinding>(account, "delete ClusterRoleBindings")
            .await?;
        remove
            .cluster::<ClusterRole>(account, "delete ClusterRoles")
            .await?;
        remove
            .in_mesh_namespace::<ServiceAccount>(account, "delete ServiceAccounts")
            .await?;
    }

    // The namespace: only if attach created it. The MeshCluster says so; without one (a
    // re-run after the primary side is done), the namespace's own labels do, as attach
    // labels only a namespace it creates.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = namespaces
        .get_opt(MESH_NAMESPACE)
        .await
        .map_err(fail("read the mesh namespace"))?
    else {
        return Ok(());
    };
    let created = mc
        .and_then(setup::remote_namespace_created)
        .unwrap_or_else(|| setup::is_ours_from(&ns.metadata, name, primary));
    if !created {
        progress.info(format!(
            "{name}: Namespace {MESH_NAMESPACE} kept (it existed before attach)"
        ));
        return Ok(());
    }
    let deleted = remove_namespace_if_unused(
        client,
        MESH_NAMESPACE,
        name,
        Some((name, primary)),
        progress,
    )
    .await
    .map_err(fail("delete the mesh namespace"))?;
    if deleted {
        wait_namespace_gone(client, MESH_NAMESPACE, timeout).await?;
    }
    Ok(())
}

/// Deletes by name what attach created on one remote for one primary ([`delete_ours`]); a
/// refused request says what was being done.
struct Remover<'a> {
    client: &'a Client,
    target: &'a Target,
    ours: Ours<'a>,
    progress: Progress,
}

impl Remover<'_> {
    /// The cluster-scoped `object` of kind `K`.
    async fn cluster<K>(&self, object: &str, doing: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = ClusterResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.delete(Api::<K>::all(self.client.clone()), object, doing)
            .await
    }

    /// The `object` of kind `K` in the mesh namespace.
    async fn in_mesh_namespace<K>(&self, object: &str, doing: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = Api::<K>::namespaced(self.client.clone(), MESH_NAMESPACE);
        self.delete(api, object, doing).await
    }

    async fn delete<K>(&self, api: Api<K>, object: &str, doing: &str) -> Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let Ours { cluster, primary } = self.ours;
        delete_ours(api, object, cluster, primary, self.progress)
            .await
            .map_err(|e| access::request_error(self.target, doing, e))
    }
}

/// Deletes the object `object` when attach created it for cluster `name`; one that is not
/// (another cluster's, or not kubectl-mesh's) is kept and said so. By name, never by
/// selector: labels are anyone's to copy.
async fn delete_ours<K>(
    api: Api<K>,
    object: &str,
    name: &str,
    primary: &str,
    progress: Progress,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(found) = api.get_opt(object).await? else {
        return Ok(());
    };
    if !setup::is_ours_from(found.meta(), name, primary) {
        let kind = K::kind(&());
        let why = match setup::primary_of(found.meta()) {
            Some(other) if setup::is_ours(found.meta(), name) => {
                format!("another primary (kube-system uid {other}) attached this cluster since")
            }
            _ => "attach did not create it for this cluster".to_owned(),
        };
        progress.info(format!("{name}: {kind} {object} kept: {why}"));
        return Ok(());
    }
    delete(&api, object, name, progress).await
}

/// Deletes one object; one already gone is fine (re-runs).
async fn delete<K>(
    api: &Api<K>,
    name: &str,
    side: &str,
    progress: Progress,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let what = match api.namespace() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            progress.ok(format!("{side}: {what} deleted"));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes namespace `ns` if it holds nothing but what every namespace gets (the `default`
/// ServiceAccount, the `kube-root-ca.crt` ConfigMap); otherwise keeps it and says why.
/// `owner`: the cluster whose label the namespace must carry and the primary it must be
/// recorded for, or `None` for a namespace shared by clusters (istio-system), which only
/// needs the managed-by label. Returns whether it was deleted.
async fn remove_namespace_if_unused(
    client: &Client,
    ns: &str,
    side: &str,
    owner: Option<(&str, &str)>,
    progress: Progress,
) -> Result<bool, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(found) = namespaces.get_opt(ns).await? else {
        return Ok(false);
    };
    let ours = match owner {
        Some((cluster, primary)) => setup::is_ours_from(&found.metadata, cluster, primary),
        None => {
            found
                .labels()
                .get(setup::MANAGED_BY_LABEL)
                .map(String::as_str)
                == Some(mesh_core::MANAGER)
        }
    };
    if !ours || found.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let others = foreign_objects(client, ns, owner.map(|(_, primary)| primary)).await?;
    if !others.is_empty() {
        progress.warn(format!(
            "{side}: Namespace {ns} kept: it holds objects kubectl-mesh did not create ({})",
            others.join(", ")
        ));
        return Ok(false);
    }
    delete(&namespaces, ns, side, progress).await?;
    Ok(true)
}

/// Objects in `ns` that neither kubectl-mesh (from `primary`, when given) nor Kubernetes put
/// there.
async fn foreign_objects(
    client: &Client,
    ns: &str,
    primary: Option<&str>,
) -> Result<Vec<String>, kube::Error> {
    let lp = ListParams::default();
    let mut out = Vec::new();
    let keep = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let labels = meta.labels.as_ref();
        labels
            .and_then(|l| l.get(setup::MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(mesh_core::MANAGER)
            && primary.is_none_or(|p| setup::primary_of(meta).is_none_or(|o| o == p))
    };
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        if !keep(&s.metadata) {
            out.push(format!("Secret {}", s.name_any()));
        }
    }
    for sa in Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        if sa.name_any() != "default" && !keep(&sa.metadata) {
            out.push(format!("ServiceAccount {}", sa.name_any()));
        }
    }
    for cm in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        if cm.name_any() != "kube-root-ca.crt" && !keep(&cm.metadata) {
            out.push(format!("ConfigMap {}", cm.name_any()));
        }
    }
    for p in Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(format!("Pod {}", p.name_any()));
    }
    for s in Api::<Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(format!("Service {}", s.name_any()));
    }
    Ok(out)
}

/// Removes the managed labels of every remote namespace the rule covers: a sync against an
/// empty primary, through the engine and writer the reconciler uses. The guard deleted just
/// before may still be enforced for a moment (the apiserver unloads policies asynchronously),
/// so namespaces it refused are tried again until `timeout`.
async fn strip_managed_labels(
    client: &Client,
    target: &Target,
    rule: &SyncRule,
    name: &str,
    timeout: Duration,
    progress: Progress,
) -> Result<()> {
    let no_primary = BTreeMap::<String, Namespace>::new();
    let deadline = Instant::now() + timeout;
    let mut stripped = 0;
    loop {
        let report = sync_remote(rule, &no_primary, client, SyncMode::Apply)
            .await
            .map_err(|error| match error {
                sync::Error::ListNamespaces(e) | sync::Error::ListPrimary(e) => {
                    access::request_error(target, "remove managed labels", e)
                }
            })?;
        for change in report.applied() {
            stripped += 1;
            let removed: Vec<&str> = change.diff.remove.iter().map(String::as_str).collect();
            progress.ok(format!(
                "{name}: Namespace {}: removed {}",
                change.diff.namespace,
                removed.join(", ")
            ));
        }
        let Some(error) = report.errors.first() else {
            break;
        };
        let only_guard = report
            .errors
            .iter()
            .all(|e| e.failure == Failure::Forbidden && e.message.contains(setup::GUARD));
        if !(only_guard && Instant::now() < deadline) {
            return Err(Error::Refused {
                what: format!(
                    "cannot remove managed labels of namespace {} on {}: {}",
                    error.namespace, target.label, error.message
                ),
                hint: "check the remote's admission policies and your rights there, then re-run \
                       detach --strip-labels"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if stripped == 0 {
        progress.info(format!("{name}: no namespace carried managed labels"));
    }
    Ok(())
}

/// What stays on a remote that detach could not reach, as far as the primary knows.
fn left_on_remote(mc: Option<&MeshCluster>, istio: bool, view: bool) -> Vec<String> {
    let mut left = Vec::new();
    if mc.is_none_or(|m| m.spec.remote_guard != RemoteGuard::Off) {
        left.push(format!(
            "ValidatingAdmissionPolicyBinding and ValidatingAdmissionPolicy {}",
            setup::GUARD
        ));
    }
    left.push(format!(
        "ClusterRoleBinding, ClusterRole and ServiceAccount {MESH_NAMESPACE}/{0}, Secret \
         {MESH_NAMESPACE}/{1}, ValidatingAdmissionPolicyBinding and ValidatingAdmissionPolicy \
         {2}",
        setup::SYNC_ACCOUNT,
        setup::TOKEN_SECRET,
        setup::SYNC_SCOPE
    ));
    for (used, account) in [(istio, setup::ISTIO_READER), (view, setup::VIEW_ACCOUNT)] {
        if used {
            left.push(format!("the same for {account}"));
        }
    }
    if mc.and_then(setup::remote_namespace_created) != Some(false) {
        left.push(format!("Namespace {MESH_NAMESPACE}"));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_follow_the_record() {
        let mut mc = setup::mesh_cluster(&setup::ClusterRecord {
            name: "east".into(),
            cluster_id: "id".into(),
            server: "https://e".into(),
            guard: RemoteGuard::Off,
            primary_name: "main".into(),
            remote_namespace_created: false,
            remote_context: "east".into(),
            scope: Default::default(),
        });
        let left = left_on_remote(Some(&mc), false, false);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("ClusterRole"));
        mc.spec.remote_guard = RemoteGuard::Deny;
        let left = left_on_remote(Some(&mc), true, true);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left[0].contains(setup::GUARD));
        assert!(left[3].contains(setup::VIEW_ACCOUNT), "{left:?}");
        let left = left_on_remote(None, false, false);
        assert!(left.iter().any(|l| l.contains("Namespace")), "{left:?}");
    }

    #[test]
    fn strip_labels_needs_list_and_patch() {
        let needs = remote_needs(true);
        assert!(needs[0].verbs.contains(&"patch") && needs[0].verbs.contains(&"list"));
        assert!(!remote_needs(false)[0].verbs.contains(&"patch"));
    }

    #[test]
    fn strip_labels_reads_the_recorded_rule_on_the_primary() {
        let reads_rule = |needs: Vec<Need>| {
            needs
                .iter()
                .any(|n| n.resource == "mutatingwebhookconfigurations")
        };
        assert!(reads_rule(primary_needs(true)));
        assert!(!reads_rule(primary_needs(false)));
    }
}
