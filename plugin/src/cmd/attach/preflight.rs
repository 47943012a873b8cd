//! Preflight: every check attach makes before it creates anything. A refusal here changes
//! nothing anywhere and prints one line.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{Namespace, Secret},
    rbac::v1::ClusterRole,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams},
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{MeshCluster, NamespaceScope, RemoteGuard},
    labels::SyncRule,
    list,
};

use super::objects::{Side, describe, dyn_api, known_remote_objects, remote_objects, same_object};
use super::plan::{IstioPlan, NamespaceState, Plan, ViewPlan};
use super::requirements::{
    ADMISSION_POLICY_VERSION, being_deleted, primary_needs, refuse_reserved_name,
    refuse_without_admission_policies, remote_needs, takeover_needs,
};
use crate::{
    Context, Error, Result,
    access::{self, Need, Target},
    kubeconfig, mesh_state, namespace_scope,
    preview::Preview,
    remote_setup::{self as setup, Guard, ReaderRole},
    render::Manifest,
    sync_scope::{self, Recorded},
};

/// The flags preflight looks at.
pub(super) struct Args {
    pub(super) remote_kubeconfig: PathBuf,
    pub(super) remote_context: Option<String>,
    pub(super) name: Option<String>,
    pub(super) istio: bool,
    pub(super) services_view: bool,
    /// `--remote-guard` and `--primary-name`, when given; otherwise an attached cluster
    /// keeps its guard ([`guard_settings`]).
    pub(super) guard: Option<RemoteGuard>,
    pub(super) primary_name: Option<String>,
    pub(super) force: bool,
    /// `--exclude-namespaces` and `--namespace-selector`, when either was given; otherwise
    /// an attached cluster keeps its scope.
    pub(super) scope: Option<(Vec<String>, Option<String>)>,
    /// `--adopt-remote-labels`.
    pub(super) adopt: bool,
    /// `--token-ttl`.
    pub(super) token_ttl: Option<Duration>,
}

/// Whether an identity attach may create on request (`asked`, by its flag) is written:
/// asked, else kept when the primary holds its stored credentials from an earlier attach of
/// cluster `name` (`stored`, the Secret they are in).
fn kept_or_asked(asked: bool, stored: Option<&Secret>, name: &str) -> ViewPlan {
    match stored {
        _ if asked => ViewPlan::Asked,
        Some(s) if setup::is_ours(&s.metadata, name) => ViewPlan::Kept,
        _ => ViewPlan::None,
    }
}

/// A Secret an earlier attach may have stored, as read: there or not, or unknown to a caller
/// who may not read it.
#[derive(Debug)]
enum Stored {
    Known(Option<Box<Secret>>),
    /// What to warn of: one there keeps reaching the old server and CA.
    Unknown(String),
}

impl Stored {
    /// The Secret; none when unknown, whose warning goes to `warnings`.
    fn or_warn(self, warnings: &mut Vec<String>) -> Option<Secret> {
        match self {
            Self::Known(secret) => secret.map(|s| *s),
            Self::Unknown(warning) => {
                warnings.push(warning);
                None
            }
        }
    }
}

/// What the read of Secret `namespace`/`secret`, where an earlier attach of `cluster` with
/// `flag` stored credentials, tells. Refused, the run goes on without them, and says so: a
/// refused read was taken for no Secret, and the credentials went on reaching the old server
/// and CA unsaid. Any other failure ends the run, nothing changed yet.
fn known_stored(
    read: kube::Result<Option<Secret>>,
    flag: &str,
    namespace: &str,
    secret: &str,
    cluster: &str,
) -> Result<Stored> {
    match read {
        Ok(found) => Ok(Stored::Known(found.map(Box::new))),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Stored::Unknown(format!(
            "you may not read Secret {namespace}/{secret}: if an earlier attach of {cluster} \
             with {flag} stored it, it is not refreshed and keeps the server and CA it had; \
             re-run attach with {flag} to refresh it"
        ))),
        Err(e) => Err(Error::kube(format!(
            "cannot read Secret {namespace}/{secret}"
        ))(e)),
    }
}

/// Checks everything that can be checked without changing anything.
pub(super) async fn preflight(args: &Args, ctx: &Context) -> Result<Plan> {
    let file = &args.remote_kubeconfig;
    let remote_kc = kubeconfig::read_remote(file, args.remote_context.as_deref())
        .map_err(|e| access::remote_kubeconfig_error(file, e))?;
    let sel = kubeconfig::select(&remote_kc, None)
        .map_err(|e| access::remote_kubeconfig_error(file, e))?;
    let remote_context = sel.context.to_owned();
    let remote_server = sel
        .server()
        .map_err(|e| access::remote_kubeconfig_error(file, e))?
        .to_owned();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => setup::default_cluster_name(&remote_context),
    };
    kubeconfig::validate_cluster_name(&name)?;
    // The stored kubeconfig must pass the rule the webhook reads it with: known now, before
    // anything is written anywhere (the token is the only part still to come).
    let sanitized =
        kubeconfig::sanitize(&remote_kc, &name, setup::REDACTED).map_err(|e| Error::Refused {
            what: format!("{} cannot be attached: {e}", file.display()),
            hint: "the primary keeps only a bearer token, the server (https) and inline \
               certificate-authority-data; attach with a kubeconfig whose cluster has them"
                .into(),
        })?;
    // What the MeshCluster records of the stored kubeconfigs' trust: it is this one's.
    let ca_fingerprint = mesh_core::recorded::ca_fingerprint(&sanitized);
    let tls_server_name = mesh_core::recorded::tls_server_name(&sanitized);

    let (primary_kc, primary_context, primary_target) = ctx.primary_target()?;
    let remote_target = Target {
        label: format!("remote cluster {name}"),
        server: remote_server,
        where_configured: format!("the server address in {}", file.display()),
    };
    let primary = ctx
        .primary_client_of(primary_kc, &primary_context, &primary_target)
        .await?;
    let remote = access::client(remote_kc.clone(), None).await?;

    // A view identity or Istio remote secret an earlier attach stored is kept, and refreshed
    // (a new server or CA reaches it too).
    let stored = |namespace: &'static str, secret: String, flag: &'static str| {
        let secrets = Api::<Secret>::namespaced(primary.clone(), namespace);
        let name = &name;
        async move {
            let read = secrets.get_opt(&secret).await;
            known_stored(read, flag, namespace, &secret, name)
        }
    };
    let (view_stored, istio_stored) = futures::join!(
        stored(
            MESH_NAMESPACE,
            setup::view_secret_name(&name),
            "--services-view"
        ),
        stored(
            setup::ISTIO_NAMESPACE,
            setup::istio_secret_name(&name),
            "--istio-remote-secret"
        ),
    );
    let mut unknown_stored = Vec::new();
    let view_stored = view_stored?.or_warn(&mut unknown_stored);
    let istio_stored = istio_stored?.or_warn(&mut unknown_stored);
    let view = kept_or_asked(args.services_view, view_stored.as_ref(), &name);
    let istio_plan = kept_or_asked(args.istio, istio_stored.as_ref(), &name);

    // Istio's own reader role, where its remote profile installed it, is the one that
    // matches the Istio version running; ours is for remotes without it. Either way, what
    // istiod's reader is granted is asked of the caller below.
    let reader_role = if istio_plan.wanted() {
        let roles: Api<ClusterRole> = Api::all(remote.clone());
        Some(match roles.get_opt(&setup::istio_own_reader_role()).await {
            Ok(Some(_)) => ReaderRole::Istio,
            // Without the right to read it, the rights check below tells what is missing.
            Ok(None) | Err(kube::Error::Api(_)) => ReaderRole::Own,
            Err(e) => {
                return Err(access::request_error(
                    &remote_target,
                    "read ClusterRoles",
                    e,
                ));
            }
        })
    } else {
        None
    };

    // Reachability and rights, both sides at once, and whether the remote serves the
    // admission policies attach writes. The first review doubles as the reachability check:
    // every authenticated user may create one.
    let (primary_wants, remote_wants) = (
        primary_needs(istio_plan.wanted(), args.adopt),
        remote_needs(
            view.wanted(),
            args.token_ttl.is_some(),
            reader_role.as_ref(),
            args.force,
        ),
    );
    let (primary_missing, remote_missing, remote_policies) = futures::join!(
        access::missing(&primary, &primary_wants),
        access::missing(&remote, &remote_wants),
        remote.list_api_group_resources(ADMISSION_POLICY_VERSION),
    );
    let mut primary_missing =
        primary_missing.map_err(|e| access::request_error(&primary_target, "check rights", e))?;
    let remote_missing =
        remote_missing.map_err(|e| access::request_error(&remote_target, "check rights", e))?;
    let remote_policies = match remote_policies {
        Ok(list) => Some(list),
        // The group-version is not served at all.
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => {
            return Err(access::request_error(
                &remote_target,
                &format!("read its discovery of {ADMISSION_POLICY_VERSION}"),
                e,
            ));
        }
    };
    refuse_without_admission_policies(&remote_target, remote_policies.as_ref())?;

    let clusters: Api<MeshCluster> = Api::all(primary.clone());
    let attached = match clusters.list(&ListParams::default()).await {
        Ok(list) => Some(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(mesh_state::not_installed());
        }
        // Reported with the other missing rights below.
        Err(kube::Error::Api(s)) if s.code == 403 => None,
        Err(e) => {
            return Err(access::request_error(
                &primary_target,
                "list MeshClusters",
                e,
            ));
        }
    };

    let istio = if let Some(reader_role) = reader_role {
        let namespaces: Api<Namespace> = Api::all(primary.clone());
        let exists = namespaces
            .get_opt(setup::ISTIO_NAMESPACE)
            .await
            .map_err(|e| access::request_error(&primary_target, "read namespaces", e))?
            .is_some();
        if !exists {
            let extra = access::missing(
                &primary,
                // Created by a server-side apply, which RBAC checks as `patch` too.
                &[Need::cluster(
                    "",
                    "namespaces",
                    &["create", "patch", "delete"],
                )],
            )
            .await
            .map_err(|e| access::request_error(&primary_target, "check rights", e))?;
            primary_missing.extend(extra);
        }
        Some(IstioPlan {
            namespace_exists: exists,
            reader_role,
            kept: istio_plan == ViewPlan::Kept,
        })
    } else {
        None
    };

    if !primary_missing.is_empty() || !remote_missing.is_empty() {
        let mut parts = Vec::new();
        if !primary_missing.is_empty() {
            parts.push(format!(
                "on the primary ({}): {}",
                primary_target.server,
                primary_missing.join(", ")
            ));
        }
        if !remote_missing.is_empty() {
            parts.push(format!(
                "on remote cluster {name} ({}): {}",
                remote_target.server,
                remote_missing.join(", ")
            ));
        }
        return Err(Error::Refused {
            what: format!("missing permissions {}", parts.join("; ")),
            hint: "attach needs them as the users of both kubeconfigs; use admin contexts or \
                   ask a cluster admin (`kubectl auth can-i --list` shows yours)"
                .into(),
        });
    }
    let attached = attached.unwrap_or_default();
    let rule = mesh_state::rule_of(&primary, &primary_target).await?;

    let (primary_id, cluster_id) =
        futures::join!(access::cluster_id(&primary), access::cluster_id(&remote));
    let primary_id =
        primary_id.map_err(|e| access::request_error(&primary_target, "read kube-system", e))?;
    let cluster_id =
        cluster_id.map_err(|e| access::request_error(&remote_target, "read kube-system", e))?;
    if cluster_id.is_empty() {
        return Err(Error::Refused {
            what: format!("remote cluster {name} has a kube-system namespace without a uid"),
            hint: "check the remote's apiserver; its identity is the uid of kube-system".into(),
        });
    }
    if cluster_id == primary_id {
        return Err(Error::Refused {
            what: format!(
                "{} points at the primary itself (kube-system uid {cluster_id})",
                file.display()
            ),
            hint: "pass the kubeconfig of a remote cluster; the primary is part of the mesh \
                   already"
                .into(),
        });
    }
    let mut existing = None;
    for mc in attached {
        let mc_name = mc.name_any();
        if mc.spec.cluster_id == cluster_id && mc_name != name {
            return Err(Error::Refused {
                what: format!(
                    "the cluster at {} is already attached as {mc_name:?} (cluster id \
                     {cluster_id})",
                    remote_target.server
                ),
                hint: format!(
                    "a cluster joins once; re-run with --name {mc_name} to update it, or \
                     `kubectl mesh detach {mc_name}` first"
                ),
            });
        }
        if mc_name == name {
            if mc.spec.cluster_id != cluster_id {
                return Err(Error::Refused {
                    what: format!(
                        "the name {name:?} is taken by another cluster ({}, cluster id {})",
                        mc.spec.server, mc.spec.cluster_id
                    ),
                    hint: "choose another with --name, or detach that one first".into(),
                });
            }
            if mc.metadata.deletion_timestamp.is_some() {
                return Err(being_deleted(&mc));
            }
            existing = Some(mc);
        }
    }
    refuse_reserved_name(&name, existing.is_some())?;
    // Only an earlier attach, recorded by the MeshCluster, stores those Secrets (owned by
    // it, they go with it): before the first there is nothing unknown to warn of.
    let warnings = if existing.is_some() {
        unknown_stored
    } else {
        Vec::new()
    };

    let namespaces: Api<Namespace> = Api::all(remote.clone());
    let remote_namespace = match namespaces
        .get_opt(MESH_NAMESPACE)
        .await
        .map_err(|e| access::request_error(&remote_target, "read namespaces", e))?
    {
        None => NamespaceState::Absent,
        Some(ns) if ns.metadata.deletion_timestamp.is_some() => NamespaceState::Terminating,
        Some(ns) if setup::is_ours(&ns.metadata, &name) => NamespaceState::Ours,
        Some(_) => NamespaceState::Foreign,
    };

    let scope = match &args.scope {
        Some((exclude, selector)) => {
            namespace_scope::from_flags(&rule, exclude, selector.as_deref())?
        }
        None => match &existing {
            Some(mc) => mc.spec.scope.clone(),
            // Attached before and detached with --force: the remote still records the scope.
            None => match sync_scope::recorded(&remote, &name, &primary_id).await {
                Ok(Recorded::Ours(Some(scope))) => scope,
                Ok(_) => NamespaceScope::default(),
                Err(e) => {
                    return Err(access::request_error(
                        &remote_target,
                        "read the sync scope",
                        e,
                    ));
                }
            },
        },
    };
    let scoped = rule.within(&scope).map_err(|error| Error::Refused {
        what: format!("the recorded scope of {name} cannot be used: {error}"),
        hint: "give the scope again with --exclude-namespaces and --namespace-selector".into(),
    })?;
    let recorded_guard = match &existing {
        Some(mc) => Some((mc.spec.remote_guard, mc.spec.primary_name.clone())),
        // Attached before and detached with --force: the remote still has the guard.
        None => guard_left_on(&remote, &name, &primary_id)
            .await
            .map_err(|e| access::request_error(&remote_target, "read the guard", e))?,
    };
    let (mode, primary_name) = guard_settings(
        args.guard,
        args.primary_name.as_deref(),
        recorded_guard
            .as_ref()
            .map(|(mode, name)| (*mode, name.as_deref())),
        &primary_context,
    );
    let guard = Guard::new(mode, &primary_name, &primary_context)
        .with_rule(&scoped)
        .with_scope(&scope);
    let preview = first_sync(
        &name,
        &scoped,
        &primary,
        &primary_target,
        &remote,
        &remote_target,
        args.adopt,
    )
    .await?;

    let plan = Plan {
        name,
        primary,
        remote,
        remote_target,
        remote_kc,
        ca_fingerprint,
        tls_server_name,
        remote_context,
        cluster_id,
        primary_id,
        takeover: None,
        rule,
        scoped,
        guard,
        existing,
        remote_namespace,
        istio,
        view,
        scope,
        preview,
        token_ttl: args.token_ttl,
        warnings,
    };
    let (takeover, leftovers) = check_ownership(&plan, &primary_target, args.force).await?;
    // Deleting them is recorded, and a rollback creates them again: asked now.
    let needs: Vec<Need> = leftovers
        .iter()
        .flat_map(|(m, role_ref)| takeover_needs(&m.resource.kind, &m.name, role_ref.as_deref()))
        .collect();
    if !needs.is_empty() {
        let missing = access::missing(&plan.remote, &needs)
            .await
            .map_err(|e| access::request_error(&plan.remote_target, "check rights", e))?;
        if !missing.is_empty() {
            return Err(Error::Refused {
                what: format!(
                    "missing permissions on remote cluster {} ({}): {}, to take over what \
                     another primary attached there",
                    plan.name,
                    plan.remote_target.server,
                    missing.join(", ")
                ),
                hint: "attach needs them as the users of both kubeconfigs; use admin contexts \
                       or ask a cluster admin (`kubectl auth can-i --list` shows yours)"
                    .into(),
            });
        }
    }
    let leftovers = leftovers.into_iter().map(|(m, _)| m).collect();
    Ok(Plan {
        takeover: takeover.then_some(leftovers),
        ..plan
    })
}

/// The guard's mode and the primary's name in its messages: the flags where given (`flag`,
/// `primary_name`); otherwise what an earlier attach of the cluster recorded (`recorded`: its
/// MeshCluster, or the guard it left on the remote), and for a new cluster warn and the
/// primary's context.
fn guard_settings(
    flag: Option<RemoteGuard>,
    primary_name: Option<&str>,
    recorded: Option<(RemoteGuard, Option<&str>)>,
    primary_context: &str,
) -> (RemoteGuard, String) {
    let mode = flag.or(recorded.map(|(mode, _)| mode)).unwrap_or_default();
    let primary_name = primary_name
        .or(recorded.and_then(|(_, name)| name))
        .unwrap_or(primary_context);
    (mode, primary_name.to_owned())
}

/// The guard an attach of `cluster` from the primary whose id is `primary` left on the remote
/// ([`setup::left_guard`]).
async fn guard_left_on(
    remote: &Client,
    cluster: &str,
    primary: &str,
) -> std::result::Result<Option<(RemoteGuard, Option<String>)>, kube::Error> {
    let policy = Api::<ValidatingAdmissionPolicy>::all(remote.clone())
        .get_opt(setup::GUARD)
        .await?;
    let Some(policy) = policy else {
        return Ok(None);
    };
    let binding = Api::<ValidatingAdmissionPolicyBinding>::all(remote.clone())
        .get_opt(setup::GUARD)
        .await?;
    Ok(binding.and_then(|binding| setup::left_guard(&policy, &binding, cluster, primary)))
}

/// What the first sync will do on the remote: the preview of both sides' namespaces as they
/// are now, read with the caller's credentials.
async fn first_sync(
    name: &str,
    rule: &SyncRule,
    primary: &Client,
    primary_target: &Target,
    remote: &Client,
    remote_target: &Target,
    adopt: bool,
) -> Result<Preview> {
    let params = ListParams::default();
    let (primary_api, remote_api) = (
        Api::<Namespace>::all(primary.clone()),
        Api::<Namespace>::all(remote.clone()),
    );
    let (on_primary, on_remote) = futures::join!(
        list::in_pages(&primary_api, &params, |ns| (ns.name_any(), ns)),
        list::all(&remote_api, &params)
    );
    let on_primary = on_primary
        .map_err(|e| access::request_error(primary_target, "list namespaces", e))?
        .into_iter()
        .collect();
    let on_remote =
        on_remote.map_err(|e| access::request_error(remote_target, "list namespaces", e))?;
    Ok(Preview::compute(name, rule, &on_primary, &on_remote, adopt))
}

/// Every object attach writes must be absent or made by attach for this very cluster: attach
/// never takes over objects it did not create, nor another cluster's. Those made for this
/// cluster from another primary are taken over with `force` only; returns whether any are.
/// So is every other object attach knows for the cluster ([`known_remote_objects`]: a standby
/// an interrupted rotation left, an identity not asked for again, the token renewal rights,
/// the guard when off): a takeover revokes another primary's tokens among them, and deletes
/// the rest of its own; returned with the ClusterRole a binding among them binds.
async fn check_ownership(
    plan: &Plan,
    primary_target: &Target,
    force: bool,
) -> Result<(bool, Vec<(Manifest, Option<String>)>)> {
    let mut takeover = false;
    let mut leftovers = Vec::new();
    let placeholder = "";
    let mut objects: Vec<(Side, Manifest)> = remote_objects(plan)?
        .into_iter()
        .map(|m| (Side::Remote, m))
        .collect();
    let written = objects.len();
    for m in known_remote_objects(&plan.name)? {
        if !objects[..written].iter().any(|(_, o)| same_object(o, &m)) {
            objects.push((Side::Remote, m));
        }
    }
    let unwritten = written..objects.len();
    objects.push((
        Side::Primary,
        Manifest::new(&setup::cluster_secret(&plan.name, placeholder))?,
    ));
    if plan.istio.is_some() {
        objects.push((
            Side::Primary,
            Manifest::new(&setup::istio_remote_secret(&plan.name, placeholder))?,
        ));
    }
    if plan.view.wanted() {
        objects.push((
            Side::Primary,
            Manifest::new(&setup::view_secret(&plan.name, placeholder))?,
        ));
    }
    for (i, (side, m)) in objects.into_iter().enumerate() {
        // The namespace is checked as the other objects are only for its primary: attach
        // uses one it did not create as it is; so are the token Secrets it does not write.
        let namespace = m.resource.kind == "Namespace";
        let only_its_primary = namespace || unwritten.contains(&i);
        if namespace && plan.remote_namespace != NamespaceState::Ours {
            continue;
        }
        let (client, target) = match side {
            Side::Remote => (&plan.remote, &plan.remote_target),
            Side::Primary => (&plan.primary, primary_target),
        };
        let found = match dyn_api(client, &m).get_opt(&m.name).await {
            Ok(found) => found,
            // Without --force, one this run does not write is read only to refuse a takeover,
            // and the caller's rights for it are not asked (its other objects tell).
            Err(kube::Error::Api(s)) if s.code == 403 && only_its_primary && !force => continue,
            Err(e) => {
                return Err(access::request_error(
                    target,
                    &format!("read {}", describe(&m)),
                    e,
                ));
            }
        };
        let Some(found) = found else { continue };
        match setup::owner_cluster(&found.metadata) {
            Some(c) if c == plan.name => {
                let other = setup::other_primary(&found.metadata, &plan.name, &plan.primary_id);
                match other {
                    None => refuse_other_token_kind(plan, &m, &found)?,
                    Some(_) if force => {
                        takeover = true;
                        // Token Secrets are revoked on their own; the rest goes with them.
                        if unwritten.contains(&i) && m.resource.kind != "Secret" {
                            let role_ref = found
                                .data
                                .pointer("/roleRef/name")
                                .and_then(serde_json::Value::as_str)
                                .map(str::to_owned);
                            leftovers.push((m, role_ref));
                        }
                    }
                    Some(other) => {
                        return Err(Error::Refused {
                            what: format!(
                                "{} holds {} of cluster {:?} attached from another primary \
                                 (kube-system uid {other}), not from this one ({})",
                                target.label,
                                describe(&m),
                                plan.name,
                                plan.primary_id
                            ),
                            hint: "detach it from that primary first, or pass --force to take \
                                   it over (that primary's tokens for it are revoked, and what \
                                   it made there that this run does not write deleted)"
                                .into(),
                        });
                    }
                }
            }
            _ if only_its_primary => {}
            Some(other) => {
                return Err(Error::Refused {
                    what: format!(
                        "{} already holds {} of cluster {other:?}",
                        target.label,
                        describe(&m)
                    ),
                    hint: format!(
                        "that cluster is attached as {other:?} to another primary, or was \
                         left behind by `detach --force`; run `kubectl mesh detach {other}` \
                         there, or delete what is labelled {}={other} on it",
                        mesh_core::cluster::CLUSTER_LABEL
                    ),
                });
            }
            None => {
                return Err(Error::Refused {
                    what: format!(
                        "{} on {} exists and was not created by kubectl-mesh",
                        describe(&m),
                        target.label
                    ),
                    hint: "rename or delete it; attach does not take over objects it did not \
                           create"
                        .into(),
                });
            }
        }
    }
    Ok((takeover, leftovers))
}

/// A re-run cannot turn a long-lived token Secret `found` into the anchor of a time-bound one
/// (`m`) or back: a Secret's type is immutable, and the stored token must not be quietly
/// revoked. Known before anything is written.
fn refuse_other_token_kind(plan: &Plan, m: &Manifest, found: &DynamicObject) -> Result<()> {
    if m.resource.kind != "Secret" || m.name != setup::TOKEN_SECRET {
        return Ok(());
    }
    let kind = |object: &serde_json::Value| {
        object
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    };
    let found_kind = kind(&found.data);
    if found_kind.is_none() || found_kind == kind(&m.object) {
        return Ok(());
    }
    let name = &plan.name;
    let (attached_with, rerun) = match plan.token_ttl {
        Some(_) => ("a long-lived", "without"),
        None => ("a time-bound (--token-ttl)", "with"),
    };
    Err(Error::Refused {
        what: format!("{name} is attached with {attached_with} sync token"),
        hint: format!(
            "re-run attach {rerun} --token-ttl, or `kubectl mesh detach {name}` first to switch"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::PolicyRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

    #[test]
    fn a_new_cluster_without_the_flags_gets_warn_named_after_the_primary_context() {
        assert_eq!(
            guard_settings(None, None, None, "main-ctx"),
            (RemoteGuard::Warn, "main-ctx".to_owned())
        );
    }

    #[test]
    fn a_new_cluster_gets_the_flags() {
        assert_eq!(
            guard_settings(Some(RemoteGuard::Deny), Some("main"), None, "main-ctx"),
            (RemoteGuard::Deny, "main".to_owned())
        );
    }

    #[test]
    fn a_re_run_without_the_flag_keeps_the_recorded_guard() {
        for guard in [RemoteGuard::Deny, RemoteGuard::Off, RemoteGuard::Warn] {
            assert_eq!(
                guard_settings(None, None, Some((guard, Some("main"))), "main-ctx"),
                (guard, "main".to_owned())
            );
        }
    }

    #[test]
    fn a_re_run_with_the_flags_replaces_the_recorded_guard() {
        let spec = Some((RemoteGuard::Deny, Some("main")));
        assert_eq!(
            guard_settings(Some(RemoteGuard::Warn), Some("other"), spec, "ctx"),
            (RemoteGuard::Warn, "other".to_owned())
        );
        // Each flag on its own: the other setting is kept.
        assert_eq!(
            guard_settings(Some(RemoteGuard::Off), None, spec, "ctx"),
            (RemoteGuard::Off, "main".to_owned())
        );
        assert_eq!(
            guard_settings(None, Some("other"), spec, "ctx"),
            (RemoteGuard::Deny, "other".to_owned())
        );
    }

    #[test]
    fn a_re_run_of_a_cluster_recording_no_primary_name_names_the_primary_context() {
        let spec = Some((RemoteGuard::Deny, None));
        assert_eq!(
            guard_settings(None, None, spec, "main-ctx"),
            (RemoteGuard::Deny, "main-ctx".to_owned())
        );
    }

    /// A read the caller may not make was taken for no Secret, and a stored Istio remote
    /// secret then kept reaching the old server and CA with nothing said.
    #[test]
    fn a_stored_secret_the_caller_may_not_read_is_said_unknown() {
        let answer = |code: u16| {
            let status = kube::core::Status::failure("no", "Reason").with_code(code);
            Err(kube::Error::Api(status.boxed()))
        };
        let known = |read| known_stored(read, "--istio-remote-secret", "istio-system", "s", "east");
        let Ok(Stored::Unknown(warning)) = known(answer(403)) else {
            panic!("a refused read is not unknown");
        };
        assert!(
            warning.starts_with("you may not read Secret istio-system/s: if an earlier attach")
                && warning.ends_with("re-run attach with --istio-remote-secret to refresh it"),
            "{warning}"
        );
        let refused = known(answer(500)).expect_err("a failed read goes on");
        assert!(
            refused
                .line()
                .starts_with("cannot read Secret istio-system/s"),
            "{refused:?}"
        );
        assert!(matches!(known(Ok(None)), Ok(Stored::Known(None))));
    }

    #[test]
    fn stored_credentials_of_this_cluster_keep_their_identity() {
        let ours = setup::istio_remote_secret("east", "kc");
        let theirs = setup::istio_remote_secret("west", "kc");
        let unlabelled = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(setup::istio_secret_name("east")),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(kept_or_asked(false, Some(&ours), "east"), ViewPlan::Kept);
        assert_eq!(kept_or_asked(true, Some(&ours), "east"), ViewPlan::Asked);
        assert_eq!(kept_or_asked(true, None, "east"), ViewPlan::Asked);
        for stored in [None, Some(&theirs), Some(&unlabelled)] {
            assert_eq!(kept_or_asked(false, stored, "east"), ViewPlan::None);
        }
        let kept = IstioPlan {
            namespace_exists: true,
            reader_role: ReaderRole::Own,
            kept: true,
        };
        assert_eq!(
            kept.notice("east").as_deref(),
            Some(
                "east: Istio remote secret kept and refreshed (attached with \
                 --istio-remote-secret before; `kubectl mesh detach east` removes it)"
            )
        );
        let asked = IstioPlan {
            kept: false,
            ..kept
        };
        assert_eq!(asked.notice("east"), None);
    }

    #[test]
    fn a_kept_view_identity_is_told_in_one_sentence() {
        assert_eq!(ViewPlan::Asked.notice("east"), None);
        assert_eq!(
            ViewPlan::Kept.notice("east").as_deref(),
            Some(
                "east: view identity kept (attached with --services-view before; \
                 `kubectl mesh detach east` removes it)"
            )
        );
    }

    /// Whether `needs` ask for every verb `rules` grant, on every group and resource.
    fn cover(needs: &[Need], rules: Vec<PolicyRule>) -> Vec<String> {
        let mut uncovered = Vec::new();
        for rule in rules {
            for group in rule.api_groups.unwrap_or_default() {
                for resource in rule.resources.as_deref().unwrap_or_default() {
                    for verb in &rule.verbs {
                        if !needs.iter().any(|n| {
                            n.group == group
                                && n.resource == resource
                                && n.name.is_none()
                                && n.verbs.contains(&verb.as_str())
                        }) {
                            uncovered.push(format!("{group}/{resource} {verb}"));
                        }
                    }
                }
            }
        }
        uncovered
    }

    #[test]
    fn remote_needs_with_istio_cover_what_its_reader_role_grants() {
        let own = setup::istio_reader_cluster_role("east")
            .rules
            .unwrap_or_default();
        assert!(!own.is_empty());
        for (view, token_ttl) in [(false, false), (true, true)] {
            let needs = remote_needs(view, token_ttl, Some(&ReaderRole::Own), false);
            let uncovered = cover(&needs, own.clone());
            assert!(
                uncovered.is_empty(),
                "granted to istiod's reader but not checked: {uncovered:?}"
            );
        }
        // Bound to Istio's own role: `bind` on it, by name.
        let needs = remote_needs(false, false, Some(&ReaderRole::Istio), false);
        assert!(needs.iter().any(|n| {
            (n.group, n.resource, n.name, n.verbs.as_slice())
                == (
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    Some("istio-reader-clusterrole-istio-system"),
                    &["bind"][..],
                )
        }));
        // Neither without --istio-remote-secret.
        let without = remote_needs(false, false, None, false);
        assert!(!cover(&without, own).is_empty());
        assert!(!without.iter().any(|n| n.verbs.contains(&"bind")));
    }

    #[test]
    fn remote_needs_cover_what_the_sync_role_grants() {
        let needs = remote_needs(true, true, None, false);
        let mut rules = setup::sync_cluster_role("east").rules.unwrap_or_default();
        rules.extend(setup::view_cluster_role("east").rules.unwrap_or_default());
        rules.extend(setup::token_renewal_role("east").rules.unwrap_or_default());
        for rule in rules {
            let group = rule.api_groups.unwrap_or_default();
            for resource in rule.resources.unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        needs.iter().any(|n| group.contains(&n.group.to_owned())
                            && n.resource == resource
                            && n.verbs.contains(&verb.as_str())),
                        "{resource} {verb} is granted but not checked"
                    );
                }
            }
        }
    }

    /// What a remote's discovery lists of admissionregistration.k8s.io/v1: `resources`.
    fn discovery(resources: &[&str]) -> APIResourceList {
        serde_json::from_value(serde_json::json!({
            "groupVersion": ADMISSION_POLICY_VERSION,
            "resources": resources.iter().map(|name| serde_json::json!({
                "name": name, "kind": "K", "namespaced": false, "singularName": "",
                "verbs": ["get"],
            })).collect::<Vec<_>>(),
        }))
        .expect("an APIResourceList")
    }

    #[test]
    fn a_remote_without_admission_policies_is_refused_in_one_line() {
        let east = Target {
            label: "remote cluster east".into(),
            server: "https://east.example:6443".into(),
            where_configured: "the server address in east.yaml".into(),
        };
        let webhooks = [
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ];
        let refused = [
            // Kubernetes before 1.30: webhooks only (the policies were v1beta1).
            Some(discovery(&webhooks)),
            // Not served at all.
            None,
            // One of the two, or a subresource only.
            Some(discovery(&["validatingadmissionpolicies"])),
            Some(discovery(&[
                "validatingadmissionpolicies/status",
                "validatingadmissionpolicybindings",
            ])),
        ];
        for served in refused {
            let err = refuse_without_admission_policies(&east, served.as_ref()).unwrap_err();
            assert_eq!(
                err.line(),
                "remote cluster east does not serve ValidatingAdmissionPolicy \
                 (admissionregistration.k8s.io/v1, Kubernetes 1.30 or later); upgrade it, \
                 then re-run attach"
            );
        }
        let mut served = webhooks.to_vec();
        served.extend(setup::GUARD_RESOURCES);
        served.push("validatingadmissionpolicies/status");
        assert!(refuse_without_admission_policies(&east, Some(&discovery(&served))).is_ok());
    }
}
