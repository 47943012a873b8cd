//! `kubectl mesh detach`: remove a cluster from the mesh.
//!
//! Deletes what attach created and nothing else: on the remote, the objects attach creates,
//! by name, each only when its labels say kubectl-mesh created it for this cluster and its
//! annotation says from this primary (another primary may have attached it since; and the
//! mesh namespace only when attach created it and it holds nothing else); on the primary,
//! the cluster's Secrets and its MeshCluster. The MeshCluster goes last, so a detach that
//! fails halfway can be re-run: it still knows the cluster. A re-run after the MeshCluster is
//! gone, or its CRD with it (`uninstall --force --crd`), still cleans a remote given with
//! --remote-kubeconfig or --remote-context.
//!
//! Order on the remote, and why:
//! 1. the guard (ValidatingAdmissionPolicy and binding), so that a deny guard cannot refuse
//!    the label removals of step 3;
//! 2. the token Secrets, then the identities' ClusterRoleBindings: deleting a token Secret
//!    revokes the token, but the apiserver may accept it from its cache for a few seconds
//!    more, while RBAC takes its rights away at once; so the webhook's reconciler (still
//!    running for this cluster until its MeshCluster goes) can no longer write labels;
//! 3. with --strip-labels, the managed labels of the remote's namespaces (not before 2, or the
//!    reconciler would put them back);
//! 4. the sync scope (policy and binding), only now that no token may do anything for it to
//!    confine;
//! 5. ClusterRoles, ServiceAccounts, then the namespace.
//!
//! Interrupted (Ctrl-C, SIGTERM, SIGHUP), detach finishes the stage under way, then stops,
//! saying what is done and what is not: every stage boundary is a state a re-run finishes
//! from ([`stages`]).
//!
//! Detach needs admin rights on the remote: the stored token may only patch namespaces. It
//! uses --remote-kubeconfig, or else the context attach recorded, looked up in the user's
//! kubeconfig. When the remote cannot be reached (or no credentials are at hand), detach
//! refuses; --force detaches from the primary anyway and lists what stays on the remote.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, api::ListParams, config::Kubeconfig};
use mesh_core::{
    GROUP, MESH_NAMESPACE,
    cluster::{MeshCluster, RemoteGuard},
    labels::SyncRule,
};

mod remote;
mod stages;

use crate::{
    Context, Error, Result,
    access::{self, Need, RemoteAdminFlags, Target},
    cmd::attach::hooks::TestHooks,
    interrupt::Rerun,
    mesh_state, namespace_contents, remote_setup as setup,
    sync_scope::{self, Recorded},
};
use remote::{Ours, clean_remote, delete};
use stages::{Stage, Stages};

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
    #[command(flatten)]
    pub remote_admin: RemoteAdminFlags,
    /// How long to wait for the remote's mesh namespace to be deleted, and, with
    /// --strip-labels, to retry the label removals the deleted guard still refuses.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `--timeout` when not given.
const DEFAULT_TIMEOUT: &str = "60s";

/// How detach reaches the remote, or why it does not.
enum RemoteAccess {
    Ready { client: Client, target: Target },
    Skipped { why: String },
}

impl Detach {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let rerun = self.rerun(ctx);
        let Self {
            name,
            force,
            strip_labels,
            remote_admin,
            timeout,
        } = self;
        let progress = ctx.progress;
        let hooks = TestHooks::from_env()?;
        let (primary_kc, primary_target, primary) = ctx.primary_client().await?;

        let mc = match mesh_state::cluster_record(&primary, &primary_target, &name).await? {
            mesh_state::Record::Cluster(mc) => mc.map(|mc| *mc),
            mesh_state::Record::NotInstalled => {
                // The remote's objects outlive an `uninstall --force --crd`: a remote given
                // is cleaned as after a forced detach.
                go_on_unrecorded(&name, false, &remote_admin)?;
                None
            }
        };
        access::require(
            &primary,
            &primary_target,
            &primary_needs(strip_labels),
            access::ASK_AN_ADMIN,
        )
        .await?;
        // What attach recorded on the remote's objects: only this primary's are deleted.
        let primary_id = access::cluster_id(&primary)
            .await
            .map_err(|e| access::request_error(&primary_target, "read kube-system", e))?;
        let primary_secrets = labelled_secrets(&primary, &name)
            .await
            .map_err(|e| access::request_error(&primary_target, "list Secrets", e))?;
        // The Istio remote secret is found only where the caller may list istio-system; once
        // found, it is deleted, and istio-system too when attach created it and it is empty
        // then: rights asked now, before the remote is cleaned, not found missing after. A
        // MeshCluster gone (deleted, or its CRD) took its Istio remote secret along (an owner
        // reference): the istio-system attach created may be left empty behind it.
        // A name nothing is recorded for is said so first, not refused for rights it would
        // not use.
        if mc.is_none() && primary_secrets.is_empty() {
            go_on_unrecorded(&name, true, &remote_admin)?;
        }
        let istio_secret = primary_secrets
            .iter()
            .any(|s| s.namespace().as_deref() == Some(setup::ISTIO_NAMESPACE));
        let mut tidy_istio_namespace = false;
        if istio_secret || mc.is_none() {
            let created = namespace_contents::istio_namespace_created(&primary)
                .await
                .map_err(|e| access::request_error(&primary_target, "read istio-system", e))?;
            tidy_istio_namespace = istio_secret || created;
            if tidy_istio_namespace {
                let needs = istio_needs(istio_secret, created);
                access::require(&primary, &primary_target, &needs, access::ASK_AN_ADMIN).await?;
            }
        }

        // The labels to strip are the ones the installed webhook manages, read before anything
        // is deleted so that a refusal leaves everything in place.
        let rule = if strip_labels {
            Some(mesh_state::rule_of(&primary, &primary_target).await?)
        } else {
            None
        };

        let remote = resolve_remote(
            &name,
            mc.as_ref(),
            &primary_kc,
            &remote_admin,
            strip_labels,
            force,
        )
        .await?;
        // Within the cluster's scope: a namespace left out of it was never written, and its
        // labels are the remote's own. Without the MeshCluster, the scope recorded on the
        // remote's sync scope policy says which. Not at all once another primary has taken the
        // cluster over: the labels are that primary's now.
        let ours = Ours {
            cluster: &name,
            primary: &primary_id,
        };
        let strip = match (rule, &remote) {
            (Some(rule), RemoteAccess::Ready { client, target }) => {
                let on_remote = sync_scope::recorded(client, &name, &primary_id)
                    .await
                    .map_err(|e| access::request_error(target, "read the sync scope", e))?;
                let strip = strip_rule(&rule, mc.as_ref(), on_remote, ours)?;
                if strip.is_none() {
                    progress.warn(format!(
                        "{name}: managed labels kept: another primary attached {name} since, \
                         and manages them now"
                    ));
                }
                strip
            }
            _ => None,
        };

        // From the first deletion on, an interruption stops detach between two stages.
        let reaches_remote = matches!(remote, RemoteAccess::Ready { .. });
        let planned = planned_stages(
            reaches_remote,
            strip.is_some(),
            mc.as_ref(),
            !primary_secrets.is_empty() || tidy_istio_namespace,
        );
        let mut stages = Stages::start(&name, rerun, planned, hooks, progress);
        let stall = stages.stall();
        let mut left = Vec::new();
        match &remote {
            RemoteAccess::Ready { client, target } => {
                clean_remote(client, target, ours, strip.as_ref(), timeout, &mut stages).await?;
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
                    strip_labels,
                );
                progress.warn(format!("skipping remote cluster {name} (--force): {why}"));
            }
        }

        // The primary: Secrets, the namespace istio-system if attach created it and it is
        // empty now, and the MeshCluster last.
        if !primary_secrets.is_empty() || tidy_istio_namespace {
            let stall = &stall;
            let deleted = async {
                for (i, secret) in primary_secrets.iter().enumerate() {
                    let ns = secret.namespace().unwrap_or_default();
                    let api: Api<Secret> = Api::namespaced(primary.clone(), &ns);
                    delete(&api, &secret.name_any(), "primary", progress)
                        .await
                        .map_err(|e| access::request_error(&primary_target, "delete Secrets", e))?;
                    let deleted = || format!("primary: Secret {ns}/{} deleted", secret.name_any());
                    stall.after_nth(i, Stage::PrimarySecrets, deleted).await;
                }
                if tidy_istio_namespace {
                    namespace_contents::remove_namespace_if_unused(
                        &primary,
                        setup::ISTIO_NAMESPACE,
                        "primary",
                        None,
                        progress,
                    )
                    .await
                    .map_err(|e| {
                        access::request_error(&primary_target, "delete istio-system", e)
                    })?;
                }
                Ok(())
            };
            stages.run(Stage::PrimarySecrets, deleted).await?;
        }
        if mc.is_some() {
            let stall = &stall;
            let deleted = async {
                let clusters: Api<MeshCluster> = Api::all(primary.clone());
                delete(&clusters, &name, "primary", progress)
                    .await
                    .map_err(|e| {
                        access::request_error(&primary_target, "delete the MeshCluster", e)
                    })?;
                let deleted = || format!("primary: MeshCluster {name} deleted");
                stall.after(Stage::MeshCluster, deleted).await;
                Ok(())
            };
            stages.run(Stage::MeshCluster, deleted).await?;
        }

        if left.is_empty() {
            progress.ok(format!("{name} detached"));
        } else {
            progress.warn(format!(
                "{name} detached from the primary; left on the remote: {}",
                left.join(", ")
            ));
            progress.info(format!(
                "once it is reachable, `{}` removes them (it finds them by name and their \
                 label {}={name})",
                cleanup_command(&name, strip_labels, ctx),
                mesh_core::cluster::CLUSTER_LABEL
            ));
        }
        Ok(())
    }
}

/// The stages a detach goes through: on the remote when it `reaches_remote`, stripping labels
/// with `strip`; the remote's namespace unless the MeshCluster `mc` records that attach did
/// not create it; the primary's Secrets when it has `primary_secrets` (or an istio-system to
/// tidy), and the MeshCluster when there is one.
fn planned_stages(
    reaches_remote: bool,
    strip: bool,
    mc: Option<&MeshCluster>,
    primary_secrets: bool,
) -> Vec<Stage> {
    let mut planned = Vec::new();
    if reaches_remote {
        planned.extend([Stage::Guard, Stage::Tokens]);
        if strip {
            planned.push(Stage::Labels);
        }
        planned.extend([Stage::SyncScope, Stage::Identities]);
        if mc.and_then(setup::remote_namespace_created) != Some(false) {
            planned.push(Stage::RemoteNamespace);
        }
    }
    if primary_secrets {
        planned.push(Stage::PrimarySecrets);
    }
    if mc.is_some() {
        planned.push(Stage::MeshCluster);
    }
    planned
}

impl Detach {
    /// The detach that finishes an interrupted one, run with `ctx`: every flag that decides
    /// what it does and what it reaches. Without the remote's kubeconfig or context, a re-run
    /// would not reach the remote (or, with --force, skip it, and delete the MeshCluster that
    /// names what is left there).
    fn rerun(&self, ctx: &Context) -> String {
        Rerun::new("detach")
            .word(&self.name)
            .flag("--strip-labels", self.strip_labels)
            .flag("--force", self.force)
            .remote_admin(&self.remote_admin)
            .timeout(self.timeout, DEFAULT_TIMEOUT)
            .primary(ctx)
            .line()
    }
}

/// The detach that cleans the remote a forced one left, once it is reachable: the labels too
/// when they were to go (the re-run finds their scope on the remote), through the same
/// primary, and the remote's kubeconfig the user has to name.
fn cleanup_command(name: &str, strip_labels: bool, ctx: &Context) -> String {
    let detach = Rerun::new("detach")
        .word(name)
        .flag("--strip-labels", strip_labels)
        .primary(ctx)
        .line();
    format!("{detach} --remote-kubeconfig <file>")
}

/// Whether detach goes on for cluster `name` with nothing of it on the primary (`installed`:
/// whether kubectl-mesh's CRD is there at all): only to clean a remote named by `flags`, a
/// kubeconfig or a context of the user's kubeconfig, which a forced detach or uninstall left
/// behind. Otherwise the cluster is not attached, or this is not the primary.
fn go_on_unrecorded(name: &str, installed: bool, flags: &RemoteAdminFlags) -> Result<()> {
    if flags.remote_kubeconfig.is_some() || flags.remote_context.is_some() {
        return Ok(());
    }
    if !installed {
        return Err(mesh_state::not_installed());
    }
    Err(Error::Refused {
        what: format!("cluster {name:?} is not attached"),
        hint: "`kubectl mesh list` shows the attached clusters; to clean up a remote that a \
               forced detach left behind, pass --remote-kubeconfig (or --remote-context)"
            .into(),
    })
}

/// The rule `--strip-labels` strips with: the installed `rule` within the cluster's scope, as
/// its MeshCluster `mc` holds it or, that gone, as the remote's sync scope records it; `None`
/// when another primary holds the cluster now. Refuses when the scope cannot be known: the
/// installed rule alone would reach namespaces the scope kept out.
fn strip_rule(
    rule: &SyncRule,
    mc: Option<&MeshCluster>,
    on_remote: Recorded,
    ours: Ours<'_>,
) -> Result<Option<SyncRule>> {
    let why = match (on_remote, mc) {
        (Recorded::Others, _) => return Ok(None),
        (_, Some(mc)) => return mesh_state::scoped_rule(rule, mc).map(Some),
        (Recorded::Ours(Some(scope)), None) => {
            return mesh_state::rule_within(rule, ours.cluster, &scope).map(Some);
        }
        (Recorded::Ours(None), None) => "its sync scope policy does not record it",
        (Recorded::Gone, None) => "its sync scope policy, which records it, is gone",
    };
    Err(Error::Refused {
        what: format!(
            "cannot tell which namespaces of {} the labels may be stripped from: its \
             MeshCluster is gone and {why}; nothing was changed",
            ours.cluster
        ),
        hint: "run detach without --strip-labels, then remove the labels you want gone with \
               `kubectl label namespace NAME KEY-` on the remote"
            .into(),
    })
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

/// What tidying the primary's istio-system takes: the Istio remote secret deleted when there
/// is one (`secret`), istio-system read to see whether it goes too, and deleted when `created`
/// (attach created it).
fn istio_needs(secret: bool, created: bool) -> Vec<Need> {
    let namespace: &[&str] = if created {
        &["get", "delete"]
    } else {
        &["get"]
    };
    let mut needs = vec![Need::cluster("", "namespaces", namespace).named(setup::ISTIO_NAMESPACE)];
    if secret {
        needs.push(Need::namespaced(
            "",
            "secrets",
            setup::ISTIO_NAMESPACE,
            &["delete"],
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

/// The cluster's Secrets on the primary: its stored kubeconfigs and its Istio remote secret.
/// By name as well as label: on a primary that is also another mesh's remote, the token
/// Secrets that mesh's attach put in [`MESH_NAMESPACE`] carry the same labels, and deleting
/// them would revoke that mesh's credentials.
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
    out.retain(|secret| setup::stored_credential_of(&secret.metadata) == Some(name));
    Ok(out)
}

/// Finds credentials for the remote and checks them: reachable, the right cluster, enough
/// rights. Without --force every problem is a refusal; with it, a skipped remote.
async fn resolve_remote(
    name: &str,
    mc: Option<&MeshCluster>,
    primary_kc: &Kubeconfig,
    flags: &RemoteAdminFlags,
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
    // Which kubeconfig and context.
    let Some(admin) = flags.find(mc, primary_kc)? else {
        return refuse_or_skip(
            format!(
                "no credentials for remote cluster {name}{}: detach needs an admin kubeconfig \
                 of it to delete what attach created there",
                if server_hint.is_empty() {
                    String::new()
                } else {
                    format!(" ({server_hint})")
                }
            ),
            "pass --remote-kubeconfig FILE (and --remote-context if it is not the current \
             one)"
                .into(),
        );
    };
    // Whether the user named them (then a cluster mismatch is their mistake, not a reason to
    // skip).
    let explicit = flags.remote_kubeconfig.is_some() || flags.remote_context.is_some();
    // A recorded context whose cluster or files are gone is one more way of not reaching it.
    let (client, target) = match admin.connect(name).await {
        Ok(connected) => connected,
        Err(err) if !explicit => {
            let hint = err.hint();
            return refuse_or_skip(err.what(), hint);
        }
        Err(err) => return Err(err),
    };
    let missing = match access::missing_on(&client, &target, &remote_needs(strip_labels)).await {
        Ok(missing) => missing,
        Err(err) => {
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
        if let Some(what) = access::other_cluster(&id, &target, mc) {
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
    if let Some(missing) = missing {
        return refuse_or_skip(
            format!("missing permissions {missing}"),
            access::USE_A_REMOTE_ADMIN.into(),
        );
    }
    Ok(RemoteAccess::Ready { client, target })
}

/// What stays on a remote that detach could not reach, as far as the primary knows: with
/// `strip`, the labels `--strip-labels` would have removed too.
fn left_on_remote(mc: Option<&MeshCluster>, istio: bool, view: bool, strip: bool) -> Vec<String> {
    let mut left = Vec::new();
    if mc.is_none_or(|m| m.spec.remote_guard != RemoteGuard::Off) {
        left.push(format!(
            "ValidatingAdmissionPolicyBinding and ValidatingAdmissionPolicy {}",
            setup::GUARD
        ));
    }
    left.push(format!(
        "ClusterRoleBinding, ClusterRole and ServiceAccount {MESH_NAMESPACE}/{0}, Secret \
         {MESH_NAMESPACE}/{1} (and a -standby one an interrupted rotate left), Role and \
         RoleBinding {MESH_NAMESPACE}/{2} (with --token-ttl), ValidatingAdmissionPolicyBinding \
         and ValidatingAdmissionPolicy {3}",
        setup::SYNC_ACCOUNT,
        setup::TOKEN_SECRET,
        setup::TOKEN_RENEWAL,
        setup::SYNC_SCOPE
    ));
    // The Istio reader may be bound to Istio's own ClusterRole, which detach never deletes.
    for (used, account) in [(istio, setup::ISTIO_READER), (view, setup::VIEW_ACCOUNT)] {
        if used {
            left.push(format!(
                "the ServiceAccount, token Secret, ClusterRoleBinding and own ClusterRole of \
                 {account}"
            ));
        }
    }
    if mc.and_then(setup::remote_namespace_created) != Some(false) {
        left.push(format!("Namespace {MESH_NAMESPACE}"));
    }
    if strip {
        left.push("the managed labels of its namespaces".to_owned());
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::cluster::NamespaceScope;

    #[test]
    fn leftovers_follow_the_record() {
        let mut mc = record_with_scope(NamespaceScope::default());
        let left = left_on_remote(Some(&mc), false, false, false);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("ClusterRole"));
        assert!(left[0].contains("-standby") && left[0].contains(setup::TOKEN_RENEWAL));
        mc.spec.remote_guard = RemoteGuard::Deny;
        let left = left_on_remote(Some(&mc), true, true, false);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left[0].contains(setup::GUARD));
        assert!(left[3].contains(setup::VIEW_ACCOUNT), "{left:?}");
        let left = left_on_remote(None, false, false, true);
        assert!(left.iter().any(|l| l.contains("Namespace")), "{left:?}");
        assert_eq!(
            left.last().map(String::as_str),
            Some("the managed labels of its namespaces")
        );
    }

    fn record_with_scope(scope: NamespaceScope) -> MeshCluster {
        setup::mesh_cluster(&setup::ClusterRecord {
            name: "east".into(),
            cluster_id: "id".into(),
            server: "https://e".into(),
            ca_fingerprint: None,
            tls_server_name: None,
            guard: RemoteGuard::Off,
            primary_name: "main".into(),
            remote_namespace_created: false,
            remote_context: "east".into(),
            scope,
        })
    }

    #[test]
    fn strip_rule_keeps_to_the_scope_the_cluster_was_attached_with() {
        let rule = SyncRule::default();
        let ours = Ours {
            cluster: "east",
            primary: "primary-id",
        };
        let not = |name: &str| NamespaceScope {
            exclude_namespaces: vec![name.into()],
            ..Default::default()
        };
        let strips = |on_remote, mc: Option<&MeshCluster>| {
            let stripped = strip_rule(&rule, mc, on_remote, ours).expect("a rule");
            stripped.map(|r| ["shop", "web"].map(|ns| !r.is_excluded(ns)))
        };
        // The MeshCluster's scope wins over what the remote records.
        let mc = record_with_scope(not("shop"));
        assert_eq!(
            strips(Recorded::Ours(Some(not("web"))), Some(&mc)),
            Some([false, true])
        );
        // MeshCluster gone: the remote's record.
        assert_eq!(
            strips(Recorded::Ours(Some(not("web"))), None),
            Some([true, false])
        );
        // Another primary holds the cluster now: nothing is stripped.
        assert_eq!(strips(Recorded::Others, Some(&mc)), None);
        // No scope known at all: refused, whatever the installed rule would cover.
        for unknown in [Recorded::Ours(None), Recorded::Gone] {
            let refused = strip_rule(&rule, None, unknown.clone(), ours).unwrap_err();
            assert!(
                refused.to_string().contains("nothing was changed"),
                "{unknown:?}"
            );
        }
    }

    /// With nothing of the cluster on the primary, detach goes on only to clean a remote the
    /// user names: by kubeconfig, or by a context of their own kubeconfig alone.
    #[test]
    fn a_cluster_the_primary_no_longer_knows_is_detached_only_from_a_named_remote() {
        let flags = |kubeconfig: Option<&str>, context: Option<&str>| RemoteAdminFlags {
            remote_kubeconfig: kubeconfig.map(Into::into),
            remote_context: context.map(Into::into),
        };
        let named = [
            flags(Some("east.yaml"), None),
            flags(None, Some("east")),
            flags(Some("east.yaml"), Some("east")),
        ];
        for installed in [true, false] {
            for remote in &named {
                assert!(
                    go_on_unrecorded("east", installed, remote).is_ok(),
                    "{installed} {remote:?}"
                );
            }
        }
        let refusal = |installed| {
            go_on_unrecorded("east", installed, &flags(None, None))
                .unwrap_err()
                .to_string()
        };
        assert!(
            refusal(true).starts_with("cluster \"east\" is not attached"),
            "{}",
            refusal(true)
        );
        assert_eq!(refusal(false), mesh_state::not_installed().to_string());
    }

    /// After a forced detach, the command said to clean the remote dropped the primary's
    /// `--kubeconfig` and `--context`: pasted, it reached another primary, if any.
    #[test]
    fn the_cleanup_after_a_forced_detach_goes_through_the_same_primary() {
        let args = [
            "--kubeconfig",
            "/tmp/p.yaml",
            "--context",
            "main",
            "detach",
            "east",
            "--force",
            "--strip-labels",
        ];
        let (global, _) = crate::interrupt::parsed(&args);
        assert_eq!(
            cleanup_command("east", true, &Context::new(global)),
            "kubectl mesh detach east --strip-labels --kubeconfig /tmp/p.yaml --context main \
             --remote-kubeconfig <file>"
        );
    }

    /// The detach an interruption says to run again, for `args`, checked to parse back.
    fn rerun_of(args: &[&str]) -> String {
        crate::interrupt::rerun_parsed_back(args, |command, ctx| {
            let crate::Command::Detach(detach) = command else {
                panic!("{args:?}: not a detach");
            };
            detach.rerun(ctx)
        })
    }

    /// An interrupted `detach east --remote-kubeconfig F --force` said to run `detach east
    /// --force`: that skips the remote and deletes the MeshCluster and Secrets, leaving the
    /// sync scope, identities and namespace behind on it; without --force, the re-run could not
    /// reach the remote. The command to run again is the same: every flag that decides what
    /// detach does or reaches, quoted, and the primary's; parsed, the same detach.
    #[test]
    fn the_detach_to_run_again_is_the_same_command() {
        let rerun = rerun_of(&[
            "detach",
            "east",
            "--remote-kubeconfig",
            "/tmp/my kubeconfigs/east's.yaml",
            "--force",
        ]);
        assert_eq!(
            rerun,
            "kubectl mesh detach east --force --remote-kubeconfig \
             '/tmp/my kubeconfigs/east'\\''s.yaml'"
        );
        let rerun = rerun_of(&[
            "--kubeconfig",
            "/home/me/primary.yaml",
            "detach",
            "east",
            "--remote-context",
            "east admin",
            "--strip-labels",
            "--timeout",
            "2m",
            "--context",
            "main",
        ]);
        assert_eq!(
            rerun,
            "kubectl mesh detach east --strip-labels --remote-context 'east admin' --timeout \
             120s --kubeconfig /home/me/primary.yaml --context main"
        );
        // The defaults, given or not, are left out; the longest timeout is kept as it is.
        for args in [
            &["detach", "east"][..],
            &["detach", "east", "--timeout", "60s"],
        ] {
            assert_eq!(rerun_of(args), "kubectl mesh detach east");
        }
        let rerun = rerun_of(&["detach", "east", "--timeout", "36500d"]);
        assert_eq!(rerun, "kubectl mesh detach east --timeout 3153600000s");
        let rerun = rerun_of(&["detach", "east", "--timeout", "250ms"]);
        assert_eq!(rerun, "kubectl mesh detach east --timeout 0.25s");
    }

    #[test]
    fn strip_labels_needs_list_and_patch() {
        let needs = remote_needs(true);
        assert!(needs[0].verbs.contains(&"patch") && needs[0].verbs.contains(&"list"));
        assert!(!remote_needs(false)[0].verbs.contains(&"patch"));
    }

    /// Every write detach makes on the primary is asked before the remote is cleaned: the
    /// Istio remote secret's deletion (and istio-system's, when attach created it) too.
    #[test]
    fn deleting_the_istio_secret_and_its_namespace_is_asked() {
        let asks = |needs: &[Need], resource: &str, verb: &str| {
            needs.iter().any(|n| {
                n.resource == resource
                    && n.namespace.as_deref().or(n.name) == Some(setup::ISTIO_NAMESPACE)
                    && n.verbs.contains(&verb)
            })
        };
        for (secret, created) in [(true, false), (true, true), (false, true)] {
            let needs = istio_needs(secret, created);
            // No secret there (its MeshCluster took it along): none to delete.
            assert_eq!(asks(&needs, "secrets", "delete"), secret, "{needs:?}");
            assert!(asks(&needs, "namespaces", "get"), "{needs:?}");
            assert_eq!(asks(&needs, "namespaces", "delete"), created, "{needs:?}");
        }
        // Never istio-system's on the primary's list asked of everyone: the Istio secret is
        // found only where the caller may list it.
        assert!(!asks(&primary_needs(true), "secrets", "delete"));
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
