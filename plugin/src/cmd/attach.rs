//! `kubectl mesh attach`: join a remote cluster to the mesh.
//!
//! Three phases:
//! 1. Preflight, read-only: both kubeconfigs load, both clusters answer, the caller has every
//!    right attach needs on both sides (SelfSubjectAccessReviews, reported together), the
//!    mesh is installed, the remote is neither the primary nor attached under another name,
//!    and no object attach would write belongs to someone else. A refusal here changes
//!    nothing anywhere and prints one line.
//! 2. Steps ([`Step`]), each printing a progress line: the remote's objects, its token, the
//!    guard, then the primary's Secret(s) and MeshCluster. Every object this run creates is
//!    recorded; if a step fails, they are deleted in reverse order and the command fails
//!    with one line. Objects that already existed (a re-run) are updated, never deleted.
//! 3. With `--wait`, waiting for the webhook's reconciler to report the first sync.
//!
//! Test hook: `KUBECTL_MESH_FAIL_AFTER=<step>` ([`FAIL_AFTER_ENV`]) makes attach fail right
//! after that step, so that tests can check the rollback of every stage. It names a step of
//! [`Step::ALL`]; any other value is refused before anything is done.
//! `KUBECTL_MESH_STALL_IN=<step>` ([`STALL_IN_ENV`]) makes the first object that step creates
//! look like a request still waiting for its answer once the apiserver has stored it, so that
//! tests can interrupt attach (Ctrl-C) exactly there. It names a step that creates objects
//! ([`Step::creates`]); a step that creates nothing is refused, as it could never stall.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    config::Kubeconfig,
};
use mesh::{
    GROUP, MESH_NAMESPACE,
    cluster::{CONDITION_SYNCED, MeshCluster, MeshClusterStatus},
};

use super::apply;
use crate::{
    Context, Error, Result,
    access::{self, Need, Target},
    kubeconfig,
    output::{self, OutputFormat, Progress},
    remote_setup::{self as setup, ClusterRecord, Guard},
    render::{FIELD_MANAGER, Manifest},
};

/// Attach a remote cluster to the mesh.
///
/// Creates a service account with the rights label sync needs on the remote, stores a
/// kubeconfig holding only its token on the primary, and records a MeshCluster. Safe to
/// re-run: an attached cluster is updated. If a step fails, what this run created is removed.
#[derive(Debug, clap::Args)]
pub struct Attach {
    /// Kubeconfig of the remote cluster (only its chosen context is used).
    // Not named `kubeconfig`: that id belongs to the global --kubeconfig of the primary.
    #[arg(value_name = "KUBECONFIG")]
    pub remote_kubeconfig: PathBuf,
    /// Context of the remote's kubeconfig [default: its current context].
    #[arg(long, value_name = "CONTEXT")]
    pub remote_context: Option<String>,
    /// Name of the cluster in the mesh [default: the remote context's name, made a DNS label].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print what would be created and change nothing (-o yaml unless -o json).
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the remote is reachable and in sync.
    #[arg(long)]
    pub wait: bool,
    /// Also create the Istio remote secret, so istiod discovers the cluster's endpoints.
    #[arg(long)]
    pub istio_remote_secret: bool,
    /// What happens to managed-label edits made directly on the remote.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub remote_guard: RemoteGuardArg,
    /// Name of the primary in the remote guard's messages [default: the primary's context].
    #[arg(long, value_name = "NAME")]
    pub primary_name: Option<String>,
    /// How long to wait for the remote's token and, with --wait, for the first sync.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `--remote-guard`: the flag form of [`mesh::cluster::RemoteGuard`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemoteGuardArg {
    /// Allow the edit and warn that the primary will undo it.
    #[default]
    Warn,
    /// Refuse the edit.
    Deny,
    /// Install no guard.
    Off,
}

impl From<RemoteGuardArg> for mesh::cluster::RemoteGuard {
    fn from(g: RemoteGuardArg) -> Self {
        match g {
            RemoteGuardArg::Warn => Self::Warn,
            RemoteGuardArg::Deny => Self::Deny,
            RemoteGuardArg::Off => Self::Off,
        }
    }
}

/// Environment variable of the failure-injection test hook: attach fails right after the
/// step it names (see [`Step::name`]) and rolls back. Meant for tests only.
pub const FAIL_AFTER_ENV: &str = "KUBECTL_MESH_FAIL_AFTER";

/// Environment variable of the interruption test hook: the first object the named step
/// creates is stored, then attach waits as if the answer had not come (see the module
/// documentation). Meant for tests only.
pub const STALL_IN_ENV: &str = "KUBECTL_MESH_STALL_IN";

/// The steps of an attach, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The mesh namespace on the remote (created only when absent).
    RemoteNamespace,
    /// The sync ServiceAccount.
    ServiceAccount,
    /// Its ClusterRole.
    ClusterRole,
    /// Its ClusterRoleBinding.
    ClusterRoleBinding,
    /// Its token Secret.
    TokenSecret,
    /// Waiting for kube-controller-manager to fill the token.
    Token,
    /// The guard's ValidatingAdmissionPolicy.
    GuardPolicy,
    /// The guard's binding.
    GuardBinding,
    /// With --istio-remote-secret: istiod's reader account and its token, on the remote.
    IstioReader,
    /// The stored kubeconfig on the primary.
    PrimarySecret,
    /// With --istio-remote-secret: the Istio remote secret on the primary.
    IstioRemoteSecret,
    /// The MeshCluster.
    MeshCluster,
    /// The primary's Secrets made owned by the MeshCluster.
    OwnerReferences,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Self; 13] = [
        Self::RemoteNamespace,
        Self::ServiceAccount,
        Self::ClusterRole,
        Self::ClusterRoleBinding,
        Self::TokenSecret,
        Self::Token,
        Self::GuardPolicy,
        Self::GuardBinding,
        Self::IstioReader,
        Self::PrimarySecret,
        Self::IstioRemoteSecret,
        Self::MeshCluster,
        Self::OwnerReferences,
    ];

    /// The name `KUBECTL_MESH_FAIL_AFTER` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::RemoteNamespace => "remote-namespace",
            Self::ServiceAccount => "service-account",
            Self::ClusterRole => "cluster-role",
            Self::ClusterRoleBinding => "cluster-role-binding",
            Self::TokenSecret => "token-secret",
            Self::Token => "token",
            Self::GuardPolicy => "guard-policy",
            Self::GuardBinding => "guard-binding",
            Self::IstioReader => "istio-reader",
            Self::PrimarySecret => "primary-secret",
            Self::IstioRemoteSecret => "istio-remote-secret",
            Self::MeshCluster => "mesh-cluster",
            Self::OwnerReferences => "owner-references",
        }
    }

    /// The step named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the step may create objects: what an interruption during it may leave
    /// behind, and so what `KUBECTL_MESH_STALL_IN` can name. Waiting for the token and
    /// making the Secrets owned only read or update.
    pub fn creates(self) -> bool {
        match self {
            Self::Token | Self::OwnerReferences => false,
            Self::RemoteNamespace
            | Self::ServiceAccount
            | Self::ClusterRole
            | Self::ClusterRoleBinding
            | Self::TokenSecret
            | Self::GuardPolicy
            | Self::GuardBinding
            | Self::IstioReader
            | Self::PrimarySecret
            | Self::IstioRemoteSecret
            | Self::MeshCluster => true,
        }
    }
}

/// Reads a test hook; an unknown step name is an error, so a typo cannot make a test pass.
fn step_from_env(variable: &str) -> Result<Option<Step>> {
    let Some(value) = std::env::var_os(variable) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    if value.is_empty() {
        return Ok(None);
    }
    Step::parse(&value).map(Some).ok_or_else(|| Error::Refused {
        what: format!("{variable}={value} names no step of attach"),
        hint: format!(
            "use one of: {}, or unset it (it is a test hook)",
            Step::ALL.map(Step::name).join(", ")
        ),
    })
}

/// The `what` of an error's line, without its hint.
pub(crate) fn what_of(err: &Error) -> String {
    let line = err.line();
    let hint = format!("; {}", err.hint());
    line.strip_suffix(&hint).unwrap_or(&line).to_owned()
}

impl Attach {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            remote_kubeconfig,
            remote_context,
            name,
            dry_run,
            wait,
            istio_remote_secret,
            remote_guard,
            primary_name,
            timeout,
        } = self;
        let fail_after = step_from_env(FAIL_AFTER_ENV)?;
        let stall_in = step_from_env(STALL_IN_ENV)?;
        if let Some(step) = stall_in.filter(|s| !s.creates()) {
            // It could never stall, and a test relying on it would pass without a stall.
            return Err(Error::Refused {
                what: format!(
                    "{STALL_IN_ENV}={} names a step that creates nothing",
                    step.name()
                ),
                hint: format!(
                    "use one of: {}, or unset it (it is a test hook)",
                    Step::ALL
                        .into_iter()
                        .filter(|s| s.creates())
                        .map(Step::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let args = Args {
            remote_kubeconfig,
            remote_context,
            name,
            istio: istio_remote_secret,
            guard: remote_guard.into(),
            primary_name,
        };
        let plan = preflight(&args, ctx).await?;
        if dry_run {
            return output::print_stdout(&dry_run_output(&plan, ctx.output)?);
        }
        let progress = ctx.progress;
        progress.ok(format!(
            "preflight: {} ({}) is cluster {}; {}",
            plan.name,
            plan.remote_target.server,
            plan.cluster_id,
            if plan.existing.is_some() {
                "already attached, updating"
            } else {
                "not attached yet"
            }
        ));

        let mut run = Run {
            plan: &plan,
            progress,
            fail_after,
            stall_in,
            timeout,
            created: Vec::new(),
            step: None,
        };
        // Ctrl-C midway rolls back like any failure.
        let result = tokio::select! {
            result = run.steps() => result,
            _ = tokio::signal::ctrl_c() => Err(Error::Refused {
                what: "interrupted".into(),
                hint: "re-run attach when you are ready".into(),
            }),
        };
        let mc = match result {
            Ok(mc) => mc,
            Err(err) => return Err(run.roll_back(err).await),
        };
        progress.ok(format!(
            "{} attached (cluster id {}, remote guard {}); the webhook keeps its namespaces' \
             labels in sync from now on",
            plan.name,
            plan.cluster_id,
            format!("{:?}", plan.guard.mode).to_lowercase()
        ));

        let mc = if wait {
            let mc = wait_synced(&plan.primary, &plan.name, timeout).await?;
            let status = mc.status.clone().unwrap_or_default();
            progress.ok(sync_summary(&plan.name, &status));
            mc
        } else {
            progress.info(format!(
                "`kubectl mesh status {}` shows its sync; `--wait` waits for it",
                plan.name
            ));
            mc
        };
        match ctx.output {
            OutputFormat::Json | OutputFormat::Yaml => {
                let value = serde_json::to_value(&mc).map_err(|source| Error::Serialize {
                    format: "JSON",
                    source: Box::new(source),
                })?;
                output::print_stdout(&output::render_values(ctx.output, &[value])?)
            }
            OutputFormat::Table | OutputFormat::Wide => Ok(()),
        }
    }
}

/// The flags preflight looks at.
struct Args {
    remote_kubeconfig: PathBuf,
    remote_context: Option<String>,
    name: Option<String>,
    istio: bool,
    guard: mesh::cluster::RemoteGuard,
    primary_name: Option<String>,
}

/// What preflight found out: everything the steps need.
struct Plan {
    name: String,
    primary: Client,
    remote: Client,
    remote_target: Target,
    /// The remote's kubeconfig, reduced to the chosen context (for the stored one).
    remote_kc: Kubeconfig,
    remote_context: String,
    cluster_id: String,
    guard: Guard,
    existing: Option<MeshCluster>,
    remote_namespace: NamespaceState,
    istio: Option<IstioPlan>,
}

/// With --istio-remote-secret: whether istio-system exists on the primary.
struct IstioPlan {
    namespace_exists: bool,
}

/// The mesh namespace on the remote, before attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NamespaceState {
    /// Absent: attach creates it.
    Absent,
    /// Being deleted (a detach or rollback a moment ago): attach waits, then creates it.
    Terminating,
    /// Created by an earlier attach of this cluster.
    Ours,
    /// Created by someone else: used as is, never labelled or deleted.
    Foreign,
}

impl NamespaceState {
    fn created_by_attach(self) -> bool {
        !matches!(self, Self::Foreign)
    }
}

/// Which cluster an object goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Remote,
    Primary,
}

/// The remote's kubeconfig file could not be used: same error, hints about that file.
pub(crate) fn remote_kubeconfig_error(path: &Path, err: kubeconfig::Error) -> Error {
    if let kubeconfig::Error::Load { source, .. } = &err {
        // The parser's message quotes the offending lines, which may hold a credential:
        // keep the first line of each cause only.
        let mut what = format!("cannot load kubeconfig {}", path.display());
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(c) = cause {
            let text = c.to_string();
            let first = text.lines().next().unwrap_or_default().trim();
            if !first.is_empty() && !what.contains(first) {
                what = format!("{what}: {first}");
            }
            cause = c.source();
        }
        return Error::Refused {
            what,
            hint: format!(
                "check the file with `kubectl --kubeconfig {} config view`",
                path.display()
            ),
        };
    }
    let hint = match &err {
        kubeconfig::Error::ContextNotFound { available, .. } if !available.is_empty() => {
            format!(
                "pass --remote-context with one of: {}",
                available.join(", ")
            )
        }
        kubeconfig::Error::Read { .. } => "check the path of the remote's kubeconfig".into(),
        kubeconfig::Error::NoCurrentContext => {
            "pass --remote-context, or set current-context in that file".into()
        }
        kubeconfig::Error::ContextNotFound { .. } => {
            "the file defines no context; check that it is a kubeconfig".into()
        }
        kubeconfig::Error::Load { .. } | kubeconfig::Error::Yaml(_) => format!(
            "check the file with `kubectl --kubeconfig {} config view`",
            path.display()
        ),
        other => other.hint(),
    };
    let mut what = what_of(&Error::from(err));
    let in_file = format!("in {}", path.display());
    if what.contains("in the kubeconfig") {
        what = what.replace("in the kubeconfig", &in_file);
    } else if !what.contains(&path.display().to_string()) {
        what = format!("{what} ({in_file})");
    }
    Error::Refused { what, hint }
}

fn remote_needs(guard: &Guard) -> Vec<Need> {
    const RW: &[&str] = &["get", "create", "patch", "delete"];
    let mut needs = vec![
        // get/list/watch/patch too: RBAC lets a user grant only rights they hold.
        Need::cluster(
            "",
            "namespaces",
            &["get", "list", "watch", "patch", "create", "delete"],
        ),
        Need::namespaced("", "serviceaccounts", MESH_NAMESPACE, RW),
        Need::namespaced("", "secrets", MESH_NAMESPACE, RW),
        Need::cluster("rbac.authorization.k8s.io", "clusterroles", RW),
        Need::cluster("rbac.authorization.k8s.io", "clusterrolebindings", RW),
    ];
    // The guard's objects: written unless the guard is off; read in any case, as the sync
    // account's ClusterRole grants `get` on them (and RBAC lets a user grant only that).
    let guard_verbs: &[&str] = if guard.action().is_some() {
        RW
    } else {
        &["get"]
    };
    for resource in setup::GUARD_RESOURCES {
        needs.push(Need::cluster(setup::ADMISSION_GROUP, resource, guard_verbs));
    }
    needs
}

fn primary_needs(istio: bool) -> Vec<Need> {
    const RW: &[&str] = &["get", "create", "patch", "delete"];
    let mut needs = vec![
        Need::cluster("", "namespaces", &["get"]),
        Need::namespaced("", "secrets", MESH_NAMESPACE, RW),
        Need::cluster(
            GROUP,
            "meshclusters",
            &["get", "list", "create", "patch", "delete"],
        ),
    ];
    if istio {
        needs.push(Need::namespaced("", "secrets", setup::ISTIO_NAMESPACE, RW));
    }
    needs
}

/// Checks everything that can be checked without changing anything.
async fn preflight(args: &Args, ctx: &Context) -> Result<Plan> {
    let file = &args.remote_kubeconfig;
    let remote_kc = kubeconfig::read_remote(file, args.remote_context.as_deref())
        .map_err(|e| remote_kubeconfig_error(file, e))?;
    let sel = kubeconfig::select(&remote_kc, None).map_err(|e| remote_kubeconfig_error(file, e))?;
    let remote_context = sel.context.to_owned();
    let remote_server = sel
        .server()
        .map_err(|e| remote_kubeconfig_error(file, e))?
        .to_owned();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => setup::default_cluster_name(&remote_context),
    };
    kubeconfig::validate_cluster_name(&name)?;

    let primary_kc = ctx.load_kubeconfig()?;
    let psel = kubeconfig::select(&primary_kc, ctx.context.as_deref())?;
    let primary_context = psel.context.to_owned();
    let primary_target = Target {
        label: "the primary".into(),
        server: psel.server()?.to_owned(),
        where_configured: format!("the server of context {primary_context} in your kubeconfig"),
    };
    let remote_target = Target {
        label: format!("remote cluster {name}"),
        server: remote_server,
        where_configured: format!("the server address in {}", file.display()),
    };
    let guard = Guard::new(
        args.guard,
        args.primary_name.as_deref().unwrap_or(&primary_context),
        &primary_context,
    );
    let primary = access::client(primary_kc, Some(&primary_context)).await?;
    let remote = access::client(remote_kc.clone(), None).await?;

    // Reachability and rights, both sides at once. The first review doubles as the
    // reachability check: every authenticated user may create one.
    let (primary_wants, remote_wants) = (primary_needs(args.istio), remote_needs(&guard));
    let (primary_missing, remote_missing) = futures::join!(
        access::missing(&primary, &primary_wants),
        access::missing(&remote, &remote_wants),
    );
    let mut primary_missing =
        primary_missing.map_err(|e| access::request_error(&primary_target, "check rights", e))?;
    let remote_missing =
        remote_missing.map_err(|e| access::request_error(&remote_target, "check rights", e))?;

    let clusters: Api<MeshCluster> = Api::all(primary.clone());
    let attached = match clusters.list(&ListParams::default()).await {
        Ok(list) => Some(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Error::Refused {
                what: "kubectl-mesh is not installed on the primary (it has no MeshCluster \
                       resource)"
                    .into(),
                hint: "run kubectl mesh install first".into(),
            });
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

    let istio = if args.istio {
        let namespaces: Api<Namespace> = Api::all(primary.clone());
        let exists = namespaces
            .get_opt(setup::ISTIO_NAMESPACE)
            .await
            .map_err(|e| access::request_error(&primary_target, "read namespaces", e))?
            .is_some();
        if !exists {
            let extra = access::missing(
                &primary,
                &[Need::cluster("", "namespaces", &["create", "delete"])],
            )
            .await
            .map_err(|e| access::request_error(&primary_target, "check rights", e))?;
            primary_missing.extend(extra);
        }
        Some(IstioPlan {
            namespace_exists: exists,
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
            existing = Some(mc);
        }
    }

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

    let plan = Plan {
        name,
        primary,
        remote,
        remote_target,
        remote_kc,
        remote_context,
        cluster_id,
        guard,
        existing,
        remote_namespace,
        istio,
    };
    check_ownership(&plan, &primary_target).await?;
    Ok(plan)
}

/// Every object attach writes must be absent or made by attach for this very cluster: attach
/// never takes over objects it did not create, nor another cluster's.
async fn check_ownership(plan: &Plan, primary_target: &Target) -> Result<()> {
    let placeholder = "";
    let mut objects: Vec<(Side, Manifest)> = remote_objects(plan)?
        .into_iter()
        .map(|m| (Side::Remote, m))
        .collect();
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
    for (side, m) in objects {
        if m.resource.kind == "Namespace" {
            continue;
        }
        let (client, target) = match side {
            Side::Remote => (&plan.remote, &plan.remote_target),
            Side::Primary => (&plan.primary, primary_target),
        };
        let found = dyn_api(client, &m)
            .get_opt(&m.name)
            .await
            .map_err(|e| access::request_error(target, &format!("read {}", describe(&m)), e))?;
        let Some(found) = found else { continue };
        match setup::owner_cluster(&found.metadata) {
            Some(c) if c == plan.name => {}
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
                        mesh::cluster::CLUSTER_LABEL
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
    Ok(())
}

/// The remote objects of this attach that do not depend on a token, in creation order.
fn remote_objects(plan: &Plan) -> Result<Vec<Manifest>> {
    let name = &plan.name;
    let mut out = vec![
        Manifest::new(&setup::remote_namespace(name))?,
        Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, name))?,
        Manifest::new(&setup::sync_cluster_role(name))?,
        Manifest::new(&setup::cluster_role_binding(setup::SYNC_ACCOUNT, name))?,
        Manifest::new(&setup::token_secret(
            setup::TOKEN_SECRET,
            setup::SYNC_ACCOUNT,
            name,
        ))?,
    ];
    if plan.guard.action().is_some() {
        out.push(Manifest::new(&setup::guard_policy(name, &plan.guard))?);
        out.push(Manifest::new(&setup::guard_binding(name, &plan.guard))?);
    }
    if plan.istio.is_some() {
        out.extend(istio_reader_objects(name)?);
    }
    Ok(out)
}

fn istio_reader_objects(name: &str) -> Result<Vec<Manifest>> {
    Ok(vec![
        Manifest::new(&setup::service_account(setup::ISTIO_READER, name))?,
        Manifest::new(&setup::istio_reader_cluster_role(name))?,
        Manifest::new(&setup::cluster_role_binding(setup::ISTIO_READER, name))?,
        Manifest::new(&setup::token_secret(
            setup::ISTIO_READER_TOKEN_SECRET,
            setup::ISTIO_READER,
            name,
        ))?,
    ])
}

fn dyn_api(client: &Client, m: &Manifest) -> Api<DynamicObject> {
    match &m.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &m.resource),
        None => Api::all_with(client.clone(), &m.resource),
    }
}

/// `Kind name` or `Kind namespace/name`.
fn describe(m: &Manifest) -> String {
    match &m.namespace {
        Some(ns) => format!("{} {ns}/{}", m.resource.kind, m.name),
        None => format!("{} {}", m.resource.kind, m.name),
    }
}

/// One attach in progress: what it created so far, for the rollback.
struct Run<'a> {
    plan: &'a Plan,
    progress: Progress,
    fail_after: Option<Step>,
    stall_in: Option<Step>,
    timeout: Duration,
    created: Vec<(Side, Manifest)>,
    /// The step under way (for the error line).
    step: Option<Step>,
}

impl Run<'_> {
    fn client(&self, side: Side) -> &Client {
        match side {
            Side::Remote => &self.plan.remote,
            Side::Primary => &self.plan.primary,
        }
    }

    fn side_label(&self, side: Side) -> &str {
        match side {
            Side::Remote => &self.plan.name,
            Side::Primary => "primary",
        }
    }

    fn begin(&mut self, step: Step) {
        self.step = Some(step);
    }

    /// Marks `step` done; fails here when the test hook names it.
    fn done(&mut self, step: Step) -> Result<()> {
        if self.fail_after == Some(step) {
            return Err(Error::Refused {
                what: format!(
                    "injected failure after step {} ({FAIL_AFTER_ENV})",
                    step.name()
                ),
                hint: format!("unset {FAIL_AFTER_ENV}: it is a test hook"),
            });
        }
        self.step = None;
        Ok(())
    }

    /// Creates `m` or, if it exists, updates it (server-side apply); records a creation.
    async fn ensure(&mut self, side: Side, m: Manifest) -> Result<DynamicObject> {
        let api = dyn_api(self.client(side), &m);
        let before = api
            .get_opt(&m.name)
            .await
            .map_err(Error::kube(format!("cannot read {}", describe(&m))))?;
        // Recorded before the request: if Ctrl-C drops this future while the create is in
        // flight, the rollback still deletes what the apiserver may have stored.
        if before.is_none() {
            // The interruption tests cover the steps that say they create.
            debug_assert!(
                self.step.is_some_and(Step::creates),
                "step {:?} creates {} but Step::creates says it creates nothing",
                self.step,
                describe(&m)
            );
            self.created.push((side, m.clone()));
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api
            .patch(&m.name, &params, &Patch::Apply(&m.object))
            .await
            .map_err(Error::kube(format!(
                "cannot apply {} on {}",
                describe(&m),
                self.side_label(side)
            )));
        let obj = match applied {
            Ok(obj) => obj,
            Err(err) => {
                // Refused, so nothing was created.
                if before.is_none() {
                    self.created.pop();
                }
                return Err(err);
            }
        };
        if before.is_none() && self.stall_in.is_some() && self.stall_in == self.step {
            self.progress.info(format!(
                "{}: {} stored; stalling as if its answer had not come ({STALL_IN_ENV})",
                self.side_label(side),
                describe(&m)
            ));
            std::future::pending::<()>().await;
        }
        let verb = match &before {
            None => "created",
            Some(b) if b.metadata.resource_version == obj.metadata.resource_version => "unchanged",
            Some(_) => "updated",
        };
        self.progress.ok(format!(
            "{}: {} {verb}",
            self.side_label(side),
            describe(&m)
        ));
        Ok(obj)
    }

    /// Runs every step; returns the MeshCluster as stored.
    async fn steps(&mut self) -> Result<MeshCluster> {
        let plan = self.plan;
        let name = plan.name.clone();

        self.begin(Step::RemoteNamespace);
        match plan.remote_namespace {
            NamespaceState::Absent => {
                self.ensure(
                    Side::Remote,
                    Manifest::new(&setup::remote_namespace(&name))?,
                )
                .await?;
            }
            NamespaceState::Terminating => {
                self.progress.info(format!(
                    "{name}: Namespace {MESH_NAMESPACE} is being deleted; waiting for it to go"
                ));
                wait_namespace_gone(&plan.remote, MESH_NAMESPACE, self.timeout).await?;
                self.ensure(
                    Side::Remote,
                    Manifest::new(&setup::remote_namespace(&name))?,
                )
                .await?;
            }
            NamespaceState::Ours => self.progress.ok(format!(
                "{name}: Namespace {MESH_NAMESPACE} exists (created by an earlier attach)"
            )),
            NamespaceState::Foreign => self.progress.ok(format!(
                "{name}: Namespace {MESH_NAMESPACE} exists; used as is (detach will keep it)"
            )),
        }
        self.done(Step::RemoteNamespace)?;

        let remote_steps = [
            (
                Step::ServiceAccount,
                Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, &name))?,
            ),
            (
                Step::ClusterRole,
                Manifest::new(&setup::sync_cluster_role(&name))?,
            ),
            (
                Step::ClusterRoleBinding,
                Manifest::new(&setup::cluster_role_binding(setup::SYNC_ACCOUNT, &name))?,
            ),
            (
                Step::TokenSecret,
                Manifest::new(&setup::token_secret(
                    setup::TOKEN_SECRET,
                    setup::SYNC_ACCOUNT,
                    &name,
                ))?,
            ),
        ];
        for (step, m) in remote_steps {
            self.begin(step);
            self.ensure(Side::Remote, m).await?;
            self.done(step)?;
        }

        self.begin(Step::Token);
        let token = wait_token(&plan.remote, &name, setup::TOKEN_SECRET, self.timeout).await?;
        self.progress.ok(format!(
            "{name}: token of ServiceAccount {MESH_NAMESPACE}/{} issued",
            setup::SYNC_ACCOUNT
        ));
        self.done(Step::Token)?;

        self.begin(Step::GuardPolicy);
        if plan.guard.action().is_some() {
            self.ensure(
                Side::Remote,
                Manifest::new(&setup::guard_policy(&name, &plan.guard))?,
            )
            .await?;
        }
        self.done(Step::GuardPolicy)?;
        self.begin(Step::GuardBinding);
        if plan.guard.action().is_some() {
            self.ensure(
                Side::Remote,
                Manifest::new(&setup::guard_binding(&name, &plan.guard))?,
            )
            .await?;
        } else {
            self.remove_guard().await?;
        }
        self.done(Step::GuardBinding)?;

        self.begin(Step::IstioReader);
        let reader_token = if plan.istio.is_some() {
            for m in istio_reader_objects(&name)? {
                self.ensure(Side::Remote, m).await?;
            }
            let token = wait_token(
                &plan.remote,
                &name,
                setup::ISTIO_READER_TOKEN_SECRET,
                self.timeout,
            )
            .await?;
            self.progress.ok(format!(
                "{name}: token of ServiceAccount {MESH_NAMESPACE}/{} issued",
                setup::ISTIO_READER
            ));
            Some(token)
        } else {
            None
        };
        self.done(Step::IstioReader)?;

        self.begin(Step::PrimarySecret);
        let stored = stored_kubeconfig(&plan.remote_kc, &name, &token)?;
        // On a re-run the MeshCluster exists: keep the Secrets' ownerReference in place
        // rather than drop it until the last step.
        let known_owner = plan.existing.as_ref().and_then(setup::owner_reference);
        let owned = |mut secret: Secret| {
            secret.metadata.owner_references = known_owner.clone().map(|o| vec![o]);
            secret
        };
        self.ensure(
            Side::Primary,
            Manifest::new(&owned(setup::cluster_secret(&name, &stored)))?,
        )
        .await?;
        self.done(Step::PrimarySecret)?;

        self.begin(Step::IstioRemoteSecret);
        let istio_kubeconfig = match (&plan.istio, &reader_token) {
            (Some(istio), Some(reader_token)) => {
                if !istio.namespace_exists {
                    self.ensure(Side::Primary, Manifest::new(&setup::istio_namespace())?)
                        .await?;
                }
                let kc = stored_kubeconfig(&plan.remote_kc, &name, reader_token)?;
                self.ensure(
                    Side::Primary,
                    Manifest::new(&owned(setup::istio_remote_secret(&name, &kc)))?,
                )
                .await?;
                Some(kc)
            }
            _ => None,
        };
        self.done(Step::IstioRemoteSecret)?;

        self.begin(Step::MeshCluster);
        let record = ClusterRecord {
            name: name.clone(),
            cluster_id: plan.cluster_id.clone(),
            server: plan.remote_target.server.clone(),
            guard: plan.guard.mode,
            primary_name: plan.guard.primary_name.clone(),
            remote_namespace_created: plan.remote_namespace.created_by_attach(),
            remote_context: plan.remote_context.clone(),
        };
        self.ensure(Side::Primary, Manifest::new(&setup::mesh_cluster(&record))?)
            .await?;
        let clusters: Api<MeshCluster> = Api::all(plan.primary.clone());
        let mc = clusters
            .get(&name)
            .await
            .map_err(Error::kube(format!("cannot read MeshCluster {name}")))?;
        self.done(Step::MeshCluster)?;

        self.begin(Step::OwnerReferences);
        if let Some(owner) = setup::owner_reference(&mc) {
            let mut secrets = vec![setup::cluster_secret(&name, &stored)];
            if let Some(kc) = &istio_kubeconfig {
                secrets.push(setup::istio_remote_secret(&name, kc));
            }
            for mut secret in secrets {
                secret.metadata.owner_references = Some(vec![owner.clone()]);
                let m = Manifest::new(&secret)?;
                dyn_api(&plan.primary, &m)
                    .patch(
                        &m.name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&m.object),
                    )
                    .await
                    .map_err(Error::kube(format!("cannot apply {}", describe(&m))))?;
                self.progress.ok(format!(
                    "primary: {} owned by MeshCluster {name}",
                    describe(&m)
                ));
            }
        }
        self.done(Step::OwnerReferences)?;
        Ok(mc)
    }

    /// `--remote-guard=off` on a re-run: the guard of an earlier attach of this cluster goes
    /// (binding first, so that no policy is left bound). Objects of that name that attach did
    /// not create for this cluster stay. Preflight made sure the caller may read them; should
    /// a read still be refused, that is said and the run goes on (`check` tells what is left).
    async fn remove_guard(&mut self) -> Result<()> {
        let name = self.plan.name.clone();
        let guard = Guard::new(mesh::cluster::RemoteGuard::Warn, "", "");
        for m in [
            Manifest::new(&setup::guard_binding(&name, &guard))?,
            Manifest::new(&setup::guard_policy(&name, &guard))?,
        ] {
            let found = match dyn_api(&self.plan.remote, &m).get_opt(&m.name).await {
                Ok(found) => found,
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    self.progress.warn(format!(
                        "{name}: may not read {} to remove an earlier guard; `kubectl mesh \
                         check` tells whether one is left",
                        describe(&m)
                    ));
                    continue;
                }
                Err(e) => return Err(Error::kube(format!("cannot read {}", describe(&m)))(e)),
            };
            let Some(found) = found else { continue };
            if !setup::is_ours(&found.metadata, &name) {
                self.progress.warn(format!(
                    "{name}: {} kept: attach did not create it for this cluster",
                    describe(&m)
                ));
                continue;
            }
            if apply::delete(&self.plan.remote, &m).await? == apply::Deleted::Deleted {
                self.progress.ok(format!(
                    "{name}: {} deleted (--remote-guard=off)",
                    describe(&m)
                ));
            }
        }
        Ok(())
    }

    /// Deletes what this run created, newest first, and turns `err` into the one line the
    /// command fails with.
    async fn roll_back(&mut self, err: Error) -> Error {
        let step = self.step.map_or("preparation", Step::name);
        let progress = self.progress;
        progress.fail(format!("step {step} failed: {}", what_of(&err)));
        let undo = if self.created.is_empty() {
            "had created nothing, so nothing was rolled back"
        } else {
            "was rolled back"
        };
        let mut left = Vec::new();
        while let Some((side, m)) = self.created.pop() {
            let label = self.side_label(side).to_owned();
            let client = self.client(side).clone();
            match apply::delete(&client, &m).await {
                // Its create was interrupted before the apiserver stored it.
                Ok(apply::Deleted::NotFound) => {}
                Ok(apply::Deleted::Deleted) => {
                    if m.resource.kind == "Namespace" {
                        // Gone for real before the next attach, which would otherwise find
                        // it terminating.
                        if let Err(e) = wait_namespace_gone(&client, &m.name, self.timeout).await {
                            progress.warn(format!("rolled back: {label}: {}", what_of(&e)));
                        }
                    }
                    progress.warn(format!("rolled back: {label}: {} deleted", describe(&m)));
                }
                Err(e) => {
                    progress.fail(format!("rollback: {label}: {}", what_of(&e)));
                    left.push(format!("{label}: {}", describe(&m)));
                }
            }
        }
        let what = format!(
            "attaching {} failed at step {step} and {undo}: {}",
            self.plan.name,
            what_of(&err)
        );
        let hint = if left.is_empty() {
            if err.hint().contains("re-run attach") {
                err.hint()
            } else {
                format!("{}; then re-run attach", err.hint())
            }
        } else {
            format!(
                "{}; the rollback left {} behind: delete them by hand, then re-run attach",
                err.hint(),
                left.join(", ")
            )
        };
        Error::Refused { what, hint }
    }
}

/// The stored kubeconfig for `token`, as YAML.
fn stored_kubeconfig(remote_kc: &Kubeconfig, name: &str, token: &str) -> Result<String> {
    let kc = kubeconfig::sanitize(remote_kc, name, token)?;
    Ok(kubeconfig::to_yaml(&kc)?)
}

/// Waits until kube-controller-manager has put a token into the Secret `secret`.
async fn wait_token(
    remote: &Client,
    cluster: &str,
    secret: &str,
    timeout: Duration,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(remote.clone(), MESH_NAMESPACE);
    let deadline = Instant::now() + timeout;
    loop {
        let found = api.get_opt(secret).await.map_err(Error::kube(format!(
            "cannot read Secret {MESH_NAMESPACE}/{secret} on {cluster}"
        )))?;
        let Some(found) = found else {
            return Err(Error::Refused {
                what: format!(
                    "Secret {MESH_NAMESPACE}/{secret} on {cluster} disappeared before its token \
                     was issued (kube-controller-manager deletes token Secrets whose \
                     ServiceAccount was replaced)"
                ),
                hint: "re-run attach".into(),
            });
        };
        let token = found
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .and_then(|t| String::from_utf8(t.0.clone()).ok())
            .filter(|t| !t.is_empty());
        if let Some(token) = token {
            return Ok(token);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "a token in Secret {MESH_NAMESPACE}/{secret} on {cluster} (it is filled by \
                     kube-controller-manager)"
                ),
                after: format!("{}s", timeout.as_secs()),
                hint: format!(
                    "check that the remote's kube-controller-manager runs its \
                     serviceaccount-token controller: `kubectl -n {MESH_NAMESPACE} describe \
                     secret {secret}` on {cluster}"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the namespace `name` is gone.
pub(crate) async fn wait_namespace_gone(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let found = api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("cannot read Namespace {name}")))?;
        if found.is_none() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("Namespace {name} to be deleted"),
                after: format!("{}s", timeout.as_secs()),
                hint: format!(
                    "`kubectl get ns {name} -o yaml` shows what holds it (its conditions)"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the reconciler reports the cluster Synced.
async fn wait_synced(primary: &Client, name: &str, timeout: Duration) -> Result<MeshCluster> {
    let api: Api<MeshCluster> = Api::all(primary.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let mc = api
            .get(name)
            .await
            .map_err(Error::kube(format!("cannot read MeshCluster {name}")))?;
        let status = mc.status.clone().unwrap_or_default();
        if status.is_true(CONDITION_SYNCED) {
            return Ok(mc);
        }
        if Instant::now() >= deadline {
            let last = status
                .condition(CONDITION_SYNCED)
                .map(|c| format!(" (last: {} {}: {})", c.status, c.reason, c.message))
                .unwrap_or_else(|| " (no status was ever written: no reconciler runs)".into());
            return Err(Error::Timeout {
                what: format!("the first sync of {name}, which is attached{last}"),
                after: format!("{}s", timeout.as_secs()),
                hint: format!(
                    "check that mesh-webhook runs (`kubectl -n {MESH_NAMESPACE} get pods`), or \
                     sync once from here: `kubectl mesh sync --cluster {name}`"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line about a sync's result, from the MeshCluster's status.
fn sync_summary(name: &str, status: &MeshClusterStatus) -> String {
    let mut line = format!(
        "{name} in sync: {} namespaces carry the primary's labels, {} drifted and corrected",
        status.namespaces_in_sync, status.namespaces_drifted
    );
    if status.missing_namespaces.is_empty() {
        line.push_str(", none missing");
    } else {
        line.push_str(&format!(
            ", missing on the remote: {}",
            status.missing_namespaces.join(", ")
        ));
    }
    line
}

/// What `--dry-run` prints: every object attach would write, each YAML document preceded by
/// a comment naming its cluster; tokens redacted. `-o json` gives a List.
fn dry_run_output(plan: &Plan, format: OutputFormat) -> Result<String> {
    let name = &plan.name;
    let mut docs: Vec<(String, serde_json::Value)> = Vec::new();
    for m in remote_objects(plan)? {
        if m.resource.kind == "Namespace" && !plan.remote_namespace.created_by_attach() {
            continue;
        }
        docs.push((format!("remote cluster {name}"), m.object));
    }
    let stored = stored_kubeconfig(&plan.remote_kc, name, setup::REDACTED)?;
    let mut secrets = vec![setup::cluster_secret(name, &stored)];
    if let Some(istio) = &plan.istio {
        if !istio.namespace_exists {
            docs.push((
                "primary".into(),
                Manifest::new(&setup::istio_namespace())?.object,
            ));
        }
        secrets.push(setup::istio_remote_secret(name, &stored));
    }
    for mut secret in secrets {
        // Readable, and as appliable: the kubeconfig as text, its token redacted.
        secret.string_data = secret.data.take().map(|data| {
            data.into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        });
        docs.push(("primary".into(), Manifest::new(&secret)?.object));
    }
    let record = ClusterRecord {
        name: name.clone(),
        cluster_id: plan.cluster_id.clone(),
        server: plan.remote_target.server.clone(),
        guard: plan.guard.mode,
        primary_name: plan.guard.primary_name.clone(),
        remote_namespace_created: plan.remote_namespace.created_by_attach(),
        remote_context: plan.remote_context.clone(),
    };
    docs.push((
        "primary".into(),
        Manifest::new(&setup::mesh_cluster(&record))?.object,
    ));

    if format == OutputFormat::Json {
        let values: Vec<_> = docs.into_iter().map(|(_, v)| v).collect();
        return output::render_values(format, &values);
    }
    let mut text = String::new();
    for (i, (side, value)) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&format!("# on {side}\n"));
        text.push_str(&output::yaml_documents(std::slice::from_ref(value))?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.name()), Some(step));
        }
        assert_eq!(Step::parse("nope"), None);
    }

    #[test]
    fn remote_needs_cover_what_the_sync_role_grants() {
        use mesh::cluster::RemoteGuard;
        for mode in [RemoteGuard::Warn, RemoteGuard::Deny, RemoteGuard::Off] {
            let needs = remote_needs(&Guard::new(mode, "p", "p"));
            for rule in setup::sync_cluster_role("east").rules.unwrap_or_default() {
                let group = rule.api_groups.unwrap_or_default();
                for resource in rule.resources.unwrap_or_default() {
                    for verb in &rule.verbs {
                        assert!(
                            needs.iter().any(|n| group.contains(&n.group.to_owned())
                                && n.resource == resource
                                && n.verbs.contains(&verb.as_str())),
                            "{mode:?}: {resource} {verb} is granted but not checked"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn what_of_drops_the_hint() {
        let err = Error::Refused {
            what: "a".into(),
            hint: "b".into(),
        };
        assert_eq!(what_of(&err), "a");
    }

    #[test]
    fn summary_names_missing_namespaces() {
        let status = MeshClusterStatus {
            namespaces_in_sync: 3,
            namespaces_drifted: 1,
            missing_namespaces: vec!["shop".into()],
            ..Default::default()
        };
        assert_eq!(
            sync_summary("east", &status),
            "east in sync: 3 namespaces carry the primary's labels, 1 drifted and corrected, \
             missing on the remote: shop"
        );
    }

    #[test]
    fn remote_kubeconfig_errors_point_at_the_remote_flags() {
        let err = remote_kubeconfig_error(
            Path::new("east.yaml"),
            kubeconfig::Error::ContextNotFound {
                context: "nope".into(),
                available: vec!["a".into(), "b".into()],
            },
        );
        assert_eq!(
            err.line(),
            "context \"nope\" not found in east.yaml; pass --remote-context with one of: a, b"
        );
    }
}
