//! `kubectl mesh attach`: join a remote cluster to the mesh.
//!
//! Three phases:
//! 1. Preflight ([`preflight`]), read-only: both kubeconfigs load, both clusters answer, the
//!    caller has every right attach needs on both sides (SelfSubjectAccessReviews, reported
//!    together), the remote serves ValidatingAdmissionPolicy (Kubernetes 1.30 or later), the
//!    mesh is installed, the remote is neither the primary nor attached under
//!    another name, the kubeconfig it would store passes the rule of stored kubeconfigs, and
//!    no object attach would write belongs to someone else (nor, without `--force`, to this
//!    cluster from another primary). A refusal here changes nothing anywhere and prints one
//!    line.
//! 2. Steps ([`Step`], in [`steps`]), each printing a progress line: the remote's objects (each
//!    recording this primary), the sync scope, the token (stored only once the remote enforces
//!    the scope on it), the guard, then the primary's Secret(s) and MeshCluster. Every object this run
//!    creates is recorded; if a step fails, they are deleted in reverse order and the command
//!    fails with one line. Objects that already existed (a re-run) are updated, never deleted.
//! 3. With `--wait`, waiting for the webhook's reconciler to report the first sync ([`waits`]).
//!
//! `--dry-run` stops after preflight and prints what the steps would write ([`dry_run`]).
//! Test hooks (cargo feature `test-hooks`, see [`hooks`]) make a step fail or stall on demand.

mod adopt;
mod confirm;
mod dry_run;
pub mod hooks;
mod objects;
mod plan;
mod preflight;
mod requirements;
mod step;
mod steps;
mod undo;
mod waits;

use std::path::PathBuf;
use std::time::Duration;

use crate::{
    Context, Error, Result, interrupt,
    output::{self, OutputFormat},
};

pub use step::Step;
pub(crate) use waits::wait_namespace_gone;

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
    /// Also create a read-only identity on the remote (services, endpointslices, pods) for
    /// what `status -o wide` and `check` show of workloads. Kept on a re-run without it.
    #[arg(long)]
    pub services_view: bool,
    /// What happens to managed-label edits made directly on the remote [default: warn for a
    /// new cluster; an attached one keeps its guard].
    #[arg(long, value_enum, value_name = "MODE")]
    pub remote_guard: Option<RemoteGuardArg>,
    /// Name of the primary in the remote guard's messages [default: the primary's context for
    /// a new cluster; an attached one keeps its recorded name].
    #[arg(long, value_name = "NAME")]
    pub primary_name: Option<String>,
    /// Take over a remote whose kubectl-mesh objects another primary attached (that primary's
    /// tokens for it are revoked, and what it made there that this run does not write deleted).
    #[arg(long)]
    pub force: bool,
    /// Remote namespaces kubectl-mesh never writes (comma-separated), e.g. a gateway labelled
    /// on the remote itself. Replaces the recorded scope; `kubectl mesh scope` changes it later.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub exclude_namespaces: Vec<String>,
    /// Only remote namespaces whose own labels match are written, as `kubectl get -l` takes
    /// it (e.g. 'team!=platform'). Replaces the recorded scope.
    #[arg(long, value_name = "SELECTOR")]
    pub namespace_selector: Option<String>,
    /// Before the first sync, copy the remote's managed labels to the primary for namespaces
    /// on both sides that have none on the primary.
    #[arg(long)]
    pub adopt_remote_labels: bool,
    /// Do not ask before a first sync that removes or changes labels on the remote.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Store a time-bound token of the sync account valid this long (at least 10m), which
    /// the webhook renews before it expires, instead of a long-lived one.
    #[arg(long, value_parser = crate::parse_duration, value_name = "DURATION")]
    pub token_ttl: Option<Duration>,
    /// How long to wait for the remote's token, with --wait for the first sync, and for a
    /// rollback after a failure.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `--remote-guard`: the flag form of [`mesh_core::cluster::RemoteGuard`].
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

impl From<RemoteGuardArg> for mesh_core::cluster::RemoteGuard {
    fn from(g: RemoteGuardArg) -> Self {
        match g {
            RemoteGuardArg::Warn => Self::Warn,
            RemoteGuardArg::Deny => Self::Deny,
            RemoteGuardArg::Off => Self::Off,
        }
    }
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
            services_view,
            remote_guard,
            primary_name,
            force,
            exclude_namespaces,
            namespace_selector,
            adopt_remote_labels,
            yes,
            token_ttl,
            timeout,
        } = self;
        // The TokenRequest API's minimum.
        if token_ttl.is_some_and(|ttl| ttl < Duration::from_secs(600)) {
            return Err(Error::Refused {
                what: "--token-ttl is shorter than 10m, the least a remote issues".into(),
                hint: "pass --token-ttl 10m or more, e.g. --token-ttl 24h".into(),
            });
        }
        let hooks = hooks::TestHooks::from_env()?;
        let args = preflight::Args {
            remote_kubeconfig,
            remote_context,
            name,
            istio: istio_remote_secret,
            services_view,
            guard: remote_guard.map(Into::into),
            primary_name,
            force,
            scope: (!exclude_namespaces.is_empty() || namespace_selector.is_some())
                .then_some((exclude_namespaces, namespace_selector)),
            adopt: adopt_remote_labels,
            token_ttl,
        };
        let plan = preflight::preflight(&args, ctx).await?;
        for warning in &plan.warnings {
            ctx.progress.warn(warning);
        }
        if dry_run {
            return output::print_stdout(&dry_run::dry_run_output(&plan, ctx.output)?);
        }
        let progress = ctx.progress;
        for line in plan.preview.lines() {
            progress.info(format!("first sync: {line}"));
        }
        if !yes {
            confirm::first_sync(&plan.preview)?;
        }
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

        let mut run = steps::Run::new(&plan, progress, hooks, timeout);
        // One listener for the steps and the wait. Once it listens, Ctrl-C (and SIGTERM,
        // SIGHUP) no longer ends the process, for as long as the process runs: whatever waits
        // must select on it; one received between the steps and the wait is kept for the wait.
        let interrupt = interrupt::signalled();
        tokio::pin!(interrupt);
        // Ctrl-C midway rolls back like any failure.
        let (result, interrupted) = tokio::select! {
            result = run.steps() => (result, false),
            () = &mut interrupt => (
                Err(Error::Refused {
                    what: "interrupted".into(),
                    hint: "re-run attach when you are ready".into(),
                }),
                true,
            ),
        };
        let mc = match result {
            Ok(mc) => mc,
            Err(err) => {
                if interrupted {
                    // The rollback may wait long (for a namespace to go, for an answer).
                    progress.info(
                        "interrupted: rolling back what this run changed; Ctrl-C is ignored \
                         until the rollback is done (within --timeout)",
                    );
                }
                return Err(run.roll_back(err).await);
            }
        };
        progress.ok(format!(
            "{} attached (cluster id {}, remote guard {}); the webhook keeps its namespaces' \
             labels in sync from now on",
            plan.name,
            plan.cluster_id,
            format!("{:?}", plan.guard.mode).to_lowercase()
        ));

        let mc = if wait {
            let mc = tokio::select! {
                mc = waits::wait_synced(&plan.primary, &plan.name, timeout) => mc?,
                () = &mut interrupt => {
                    return Err(Error::Refused {
                        what: format!(
                            "{} is attached; stopped waiting for its first sync (interrupted)",
                            plan.name
                        ),
                        hint: "`kubectl mesh list` shows its sync".into(),
                    });
                }
            };
            let status = mc.status.clone().unwrap_or_default();
            progress.ok(waits::sync_summary(&plan.name, &status));
            mc
        } else {
            progress.info(format!(
                "`kubectl mesh list` shows the sync of {}; `--wait` waits for it",
                plan.name
            ));
            mc
        };
        match ctx.output {
            OutputFormat::Json | OutputFormat::Yaml => {
                output::print_stdout(&output::render_value(ctx.output, &mc)?)
            }
            OutputFormat::Table | OutputFormat::Wide => Ok(()),
        }
    }
}
