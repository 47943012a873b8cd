//! `kubectl mesh status`: managed labels of namespaces across the mesh, read live.
//!
//! Every remote is read now (in parallel, each under a deadline), then the primary, as a sync
//! reads them, and every cell is judged by the sync rule itself ([`SyncRule::desired`] and
//! [`SyncRule::diff`]): a cell shows drift exactly when a sync would write to it. Where the
//! labels ask for sidecars, the remote's MutatingWebhookConfigurations say whether an Istio
//! injector acts on them ([`mesh_core::injection`]). With `-o wide`, `json` or `yaml`, the
//! remote's pods are read too, with the cluster's view credentials ([`crate::view`]), and
//! those whose sidecar contradicts their namespace's labels are counted
//! ([`injection::contrary_pods`]): they keep their old state until restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Namespace, Pod},
};
use kube::ResourceExt;
use mesh_core::cluster::NamespaceScope;
use mesh_core::injection::{self, Readiness};
use mesh_core::labels::{Labels, SyncRule};
use mesh_core::printable::few;
use serde::Serialize;

use crate::{
    Context, Error, Result, access,
    mesh_state::{self, DEFAULT_REMOTE_TIMEOUT},
    output::{self, OutputFormat, plural},
    view,
};

mod read;
mod summary;

pub use summary::Totals;

use read::read_view;

/// Exit status of `status --exit-code` when a namespace drifted (like `git diff --exit-code`,
/// but distinct from 1, which means the command itself failed).
pub const DRIFT_EXIT_CODE: u8 = 3;

/// Show the managed labels of namespaces on the primary and every remote.
///
/// Reads every cluster now. A cell marked `(drift)` differs from the primary and will be
/// corrected by the webhook's reconciler or by `kubectl mesh sync` (not on a cluster being
/// detached: nothing syncs it, and its drift does not count for --exit-code); `(missing)` means the
/// namespace carries managed labels on the primary but does not exist on that remote
/// (kubectl-mesh never creates namespaces); `(absent)` that it does not exist there and
/// nothing is owed there. With `-o wide`, `(no injector)` marks a namespace whose labels ask
/// for sidecars that no Istio injector of that cluster adds, `(injector: NAME)` the
/// MutatingWebhookConfiguration that does, and `(N pods need restart)` the running pods whose
/// istio-proxy contradicts the labels (read with the view credentials of `attach
/// --services-view`, or istiod's reader's).
#[derive(Debug, clap::Args)]
pub struct Status {
    /// Namespaces to show [default: every namespace with a managed label].
    #[arg(value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Exit with status 1 when a remote could not be read (its drift is unknown), else 3 when
    /// any namespace differs from the primary; clusters being detached do not count.
    #[arg(long)]
    pub exit_code: bool,
    /// How long each call to a remote may take, its answer included.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REMOTE_TIMEOUT, value_parser = crate::parse_duration)]
    pub remote_timeout: Duration,
}

impl Status {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            namespaces,
            exit_code,
            remote_timeout,
        } = self;
        let (client, user_kubeconfig) = ctx.client_and_kubeconfig().await?;
        let clusters = mesh_state::clusters(&client).await?;
        // Pods are many: only the detailed outputs read them.
        let with_pods = ctx.output != OutputFormat::Table;
        let (rule, remotes) = tokio::join!(mesh_state::rule(&client), async {
            crate::cmd::attach::hooks::stall_status(ctx.progress).await;
            mesh_state::for_each(&clusters, |c| {
                read_view(&client, c, remote_timeout, with_pods)
            })
            .await
        });
        let rule = rule?;
        // After the remotes, as a sync reads them: a label changed on the primary meanwhile
        // has been pushed to them by then, and is no drift.
        let primary = mesh_state::primary_namespaces(&client).await?;
        let report = StatusReport::compute(&rule, &primary, &remotes, &namespaces);

        if clusters.is_empty() {
            ctx.progress.info(mesh_state::NO_CLUSTERS);
        }
        for line in report
            .clusters
            .iter()
            .filter_map(ClusterColumn::unread_line)
        {
            ctx.progress.warn(line);
        }
        match ctx.output {
            OutputFormat::Table | OutputFormat::Wide => {
                if report.namespaces.is_empty() {
                    ctx.progress.info(format!(
                        "No namespace carries a managed label ({}) on the primary or any remote.",
                        rule.managed_keys().collect::<Vec<_>>().join(", ")
                    ));
                } else {
                    output::print_stdout(&report.table(ctx.output == OutputFormat::Wide))?;
                }
            }
            format => {
                output::print_stdout(&output::render_value(format, &report)?)?;
            }
        }
        for (warn, line) in report.summary() {
            if warn {
                ctx.progress.warn(line);
            } else {
                ctx.progress.info(line);
            }
        }
        for line in report.injection_summary() {
            ctx.progress.warn(line);
        }
        if ctx.output == OutputFormat::Wide {
            let expiries = super::list::token_expiries(&client, &clusters).await?;
            for (warn, line) in super::list::token_lines(&expiries, jiff::Timestamp::now()) {
                if warn {
                    ctx.progress.warn(line);
                } else {
                    ctx.progress.info(line);
                }
            }
        }
        let contexts: BTreeMap<String, String> = clusters
            .iter()
            .filter_map(|c| {
                let context = access::remote_context_in(&user_kubeconfig, c)?;
                Some((c.name_any(), context.to_owned()))
            })
            .collect();
        for (warn, line) in report.pods_summary(&contexts) {
            if warn {
                ctx.progress.warn(line);
            } else {
                ctx.progress.info(line);
            }
        }
        if exit_code {
            return report.exit_status();
        }
        Ok(())
    }
}

/// A remote's pods, as read for `status`.
#[derive(Clone, Debug)]
pub enum PodsRead {
    /// Not read (the default table).
    NotAsked,
    /// The cluster has no view credentials; why its Istio remote secret was not read, when
    /// the caller was refused it ([`view::Lookup::istio_unread`]).
    NoCredentials { istio_unread: Option<String> },
    /// Every pod, by namespace, and whose credentials read them.
    Read {
        source: view::Source,
        pods: BTreeMap<String, Vec<Pod>>,
    },
    /// The view credentials could not read them.
    Failed { source: view::Source, error: String },
}

/// One remote as read now: its namespaces, or why they could not be read.
#[derive(Clone, Debug)]
pub struct RemoteView {
    /// Name of the MeshCluster.
    pub name: String,
    /// Every namespace of the remote.
    pub namespaces: std::result::Result<Vec<Namespace>, Unread>,
    /// Its MutatingWebhookConfigurations, or why they could not be read; `None` when they were
    /// not read (nor is whether an injector acts known).
    pub injectors: Option<std::result::Result<Vec<MutatingWebhookConfiguration>, InjectorsUnread>>,
    /// Its pods.
    pub pods: PodsRead,
    /// Its namespace scope (see [`SyncRule::within`]).
    pub scope: NamespaceScope,
    /// Whether it is being detached ([`mesh_state::is_being_detached`]).
    pub detaching: bool,
}

/// Why a remote's namespaces were not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unread {
    /// The error, on one line.
    pub error: String,
    /// Whether the remote never answered (no connection, no answer in time). Otherwise it was
    /// not the network's fault: the stored credentials could not be read on the primary or
    /// used, or the remote refused them.
    pub unanswered: bool,
}

impl Unread {
    /// Why `error` stopped the read, and whether the remote never answered
    /// ([`mesh_state::RemoteError::unanswered`]).
    pub fn of(error: &mesh_state::RemoteError) -> Self {
        Self {
            error: error.to_string(),
            unanswered: error.unanswered(),
        }
    }
}

impl RemoteView {
    /// Its MutatingWebhookConfigurations, when they were read.
    fn known_injectors(&self) -> Option<&[MutatingWebhookConfiguration]> {
        self.injectors.as_ref()?.as_deref().ok()
    }
}

/// Why a remote's MutatingWebhookConfigurations could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InjectorsUnread {
    /// Whether the stored credentials were refused them (401/403), as those of a cluster
    /// attached by an older kubectl-mesh are; anything else (no answer, a server error) may
    /// pass by itself, and a new attach would not help.
    pub forbidden: bool,
    /// Why, in one line.
    pub error: String,
}

impl InjectorsUnread {
    fn of(error: &mesh_state::RemoteError) -> Self {
        Self {
            forbidden: error.is_forbidden(),
            error: error.to_string(),
        }
    }
}

/// The namespace x cluster matrix, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The columns after the primary's, in name order.
    pub clusters: Vec<ClusterColumn>,
    /// The rows.
    pub namespaces: Vec<NamespaceRow>,
    /// What the rows add up to.
    #[serde(flatten)]
    pub totals: Totals,
}

/// One remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterColumn {
    /// Name of the MeshCluster.
    pub name: String,
    /// Whether its namespaces could be read with the stored credentials (as the webhook's
    /// `Reachable`: it answered them); `error` says why not.
    pub reachable: bool,
    /// Whether it is being detached ([`mesh_state::is_being_detached`]): nothing syncs it, so
    /// its drift is not reported as a sync's to converge, nor by `--exit-code`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub detaching: bool,
    /// Whether its MutatingWebhookConfigurations could be read.
    pub injectors_known: bool,
    /// Why they could not, when reading them failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injectors_unread: Option<InjectorsUnread>,
    /// Why its namespaces were not read, or not judged (its scope cannot be used).
    #[serde(flatten)]
    pub unread: Option<ColumnUnread>,
    /// Whether its pods were read; absent when they were not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsColumn>,
}

/// Why a remote's namespaces were not read, or not judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnUnread {
    /// Why, in one line.
    pub error: String,
    /// Whether it did not answer at all (no connection, no answer in time), rather than its
    /// stored credentials could not be read or used.
    #[serde(skip)]
    pub unanswered: bool,
    /// Whether `error` is its scope's ([`CellState::ScopeInvalid`]).
    #[serde(skip)]
    pub scope_invalid: bool,
}

impl ColumnUnread {
    /// Why `remote`'s namespaces are not judged: `scope_error`, else why they were not read.
    fn of(remote: &RemoteView, scope_error: Option<&str>) -> Option<Self> {
        let unread = remote.namespaces.as_ref().err();
        let error = scope_error
            .map(str::to_owned)
            .or_else(|| unread.map(|u| u.error.clone()))?;
        Some(Self {
            error,
            unanswered: unread.is_some_and(|u| u.unanswered),
            scope_invalid: scope_error.is_some(),
        })
    }
}

impl ClusterColumn {
    /// What status warns of a cluster whose namespaces were not read, if any.
    fn unread_line(&self) -> Option<String> {
        let unread = self.unread.as_ref()?;
        let error = &unread.error;
        Some(if unread.unanswered {
            format!("{} unreachable: {error}", self.name)
        } else if unread.scope_invalid {
            // Its scope's error names the cluster.
            error.clone()
        } else {
            format!("{} not read: {error}", self.name)
        })
    }
}

/// Whether a remote's pods could be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum PodsColumn {
    /// Read with these credentials (`view` or `istio-reader`).
    Read { credentials: String },
    /// The cluster has no view credentials; `enable` says what gives it some, `error` why its
    /// Istio remote secret was not read, when the caller was refused it (as `services` says).
    NoCredentials {
        enable: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The view credentials could not read them.
    Failed { credentials: String, error: String },
}

/// One namespace across the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceRow {
    /// Its name, the same on every cluster.
    pub name: String,
    /// On the primary.
    pub primary: PrimaryCell,
    /// On each remote, by cluster name.
    pub clusters: BTreeMap<String, RemoteCell>,
}

/// A namespace on the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrimaryCell {
    /// Whether it exists there.
    pub exists: bool,
    /// Its managed labels.
    pub labels: Labels,
}

/// A namespace on one remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteCell {
    /// How it compares with the primary.
    pub state: CellState,
    /// Its managed labels, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// What a sync would set.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub set: Labels,
    /// What a sync would remove.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub remove: BTreeSet<String>,
    /// Whether pods get sidecars there, once synced (as the labels are, on a cluster being
    /// detached: [`judged_labels`]); absent when the labels ask for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionCell>,
    /// Pods there whose sidecar contradicts the labels (once synced, or as they are on a
    /// cluster being detached), by name: they need a restart. Absent when the cluster's pods
    /// were not read.
    #[serde(rename = "contraryPods", skip_serializing_if = "Option::is_none")]
    pub contrary_pods: Option<Vec<String>>,
}

/// Whether an Istio injector acts on a namespace's labels on one remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum InjectionCell {
    /// These MutatingWebhookConfigurations inject sidecars there.
    Served { injectors: Vec<String> },
    /// What the labels ask for (`revision canary`), which no injector there provides.
    Unserved { requested: String },
    /// The remote's injectors could not be read.
    Unknown,
}

/// How a remote namespace compares with the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellState {
    /// Its managed labels equal the primary's.
    InSync,
    /// They differ; a sync would write.
    Drifted,
    /// The namespace carries managed labels on the primary and does not exist on the remote
    /// (what the rule reports as missing).
    Missing,
    /// The namespace does not exist on the remote and none of its managed labels are owed
    /// there: absent on the primary too, being deleted there, without managed labels, or
    /// excluded.
    Absent,
    /// The remote could not be reached, or did not answer in time.
    Unreachable,
    /// The remote answered, but its namespaces were not read: the stored credentials could
    /// not be read on the primary or used, or the remote refused them.
    NotRead,
    /// The cluster's scope cannot be used: nothing is judged by a rule that does not hold.
    ScopeInvalid,
    /// The namespace is never synced.
    Excluded,
    /// The cluster's scope leaves the namespace alone there.
    OutOfScope,
}

impl StatusReport {
    /// `status --exit-code`: 1 (an error) when a remote could not be read, as nothing can be
    /// said of its drift; else [`DRIFT_EXIT_CODE`] when a namespace drifted. Clusters being
    /// detached do not count: nothing syncs them.
    pub fn exit_status(&self) -> Result<()> {
        let unread: Vec<&str> = self
            .clusters
            .iter()
            .filter(|c| c.unread.is_some() && !c.detaching)
            .map(|c| c.name.as_str())
            .collect();
        if !unread.is_empty() {
            return Err(Error::Refused {
                what: format!("cannot tell whether {} drifted", few(&unread)),
                hint: "see the lines above; `kubectl mesh check` diagnoses a cluster".into(),
            });
        }
        if !self.synced_cells_in(CellState::Drifted).is_empty() {
            return Err(Error::Exit(DRIFT_EXIT_CODE));
        }
        Ok(())
    }

    /// Compares every remote with the primary. `requested` names the rows; empty means every
    /// namespace that carries a managed label on the primary or on a readable remote (excluded
    /// namespaces left out).
    pub fn compute(
        rule: &SyncRule,
        primary: &BTreeMap<String, Namespace>,
        remotes: &[RemoteView],
        requested: &[String],
    ) -> Self {
        // A cluster whose scope cannot be used is shown unread: nothing is judged by a rule
        // that does not hold.
        let scope_errors: Vec<Option<String>> = remotes
            .iter()
            .map(|r| {
                rule.within(&r.scope)
                    .err()
                    .map(|e| mesh_state::scope_error(&r.name, &e))
            })
            .collect();
        let remote_maps: Vec<Option<BTreeMap<String, &Namespace>>> = remotes
            .iter()
            .zip(&scope_errors)
            .map(|(r, scope_error)| {
                let namespaces = r.namespaces.as_ref().ok().filter(|_| scope_error.is_none());
                namespaces.map(|list| list.iter().map(|ns| (ns.name_any(), ns)).collect())
            })
            .collect();
        let scoped_rules: Vec<SyncRule> = remotes
            .iter()
            .map(|r| rule.within(&r.scope).unwrap_or_else(|_| rule.clone()))
            .collect();
        let carries = |ns: &Namespace| !rule.managed_of(ns.metadata.labels.as_ref()).is_empty();
        let names: Vec<String> = if requested.is_empty() {
            let mut names: BTreeSet<String> = primary
                .iter()
                .filter(|(_, ns)| carries(ns))
                .map(|(name, _)| name.clone())
                .collect();
            for map in remote_maps.iter().flatten() {
                names.extend(
                    map.iter()
                        .filter(|(_, ns)| carries(ns))
                        .map(|(name, _)| name.clone()),
                );
            }
            names.retain(|n| !rule.is_excluded(n));
            names.into_iter().collect()
        } else {
            let mut seen = BTreeSet::new();
            requested
                .iter()
                .filter(|n| seen.insert(n.as_str()))
                .cloned()
                .collect()
        };

        let mut report = Self {
            clusters: remotes
                .iter()
                .zip(&scope_errors)
                .map(|(r, scope_error)| ClusterColumn {
                    name: r.name.clone(),
                    reachable: r.namespaces.is_ok(),
                    detaching: r.detaching,
                    injectors_known: matches!(r.injectors, Some(Ok(_))),
                    injectors_unread: r.injectors.clone().and_then(|read| read.err()),
                    unread: ColumnUnread::of(r, scope_error.as_deref()),
                    pods: match &r.pods {
                        PodsRead::NotAsked => None,
                        PodsRead::NoCredentials { istio_unread } => {
                            Some(PodsColumn::NoCredentials {
                                enable: view::enable_command(&r.name),
                                error: istio_unread.clone(),
                            })
                        }
                        PodsRead::Read { source, .. } => Some(PodsColumn::Read {
                            credentials: source.to_string(),
                        }),
                        PodsRead::Failed { source, error } => Some(PodsColumn::Failed {
                            credentials: source.to_string(),
                            error: error.clone(),
                        }),
                    },
                })
                .collect(),
            namespaces: Vec::new(),
            totals: Totals::default(),
        };
        for name in names {
            let on_primary = primary.get(&name);
            let desired = rule.desired(on_primary);
            let mut row = NamespaceRow {
                name: name.clone(),
                primary: PrimaryCell {
                    exists: on_primary.is_some(),
                    labels: rule.managed_of(on_primary.and_then(|ns| ns.metadata.labels.as_ref())),
                },
                clusters: BTreeMap::new(),
            };
            for ((remote, map), scoped) in remotes.iter().zip(&remote_maps).zip(&scoped_rules) {
                let cell = match map {
                    None => RemoteCell::bare(
                        match &remote.namespaces {
                            Ok(_) => CellState::ScopeInvalid,
                            Err(unread) if unread.unanswered => CellState::Unreachable,
                            Err(_) => CellState::NotRead,
                        },
                        None,
                    ),
                    Some(map) => match map.get(&name) {
                        // Missing exactly as the rule's plan says: a gap only where the
                        // primary has managed labels to give.
                        None if !desired.is_empty() && !scoped.is_excluded(&name) => {
                            RemoteCell::bare(CellState::Missing, None)
                        }
                        None => RemoteCell::bare(CellState::Absent, None),
                        Some(ns) => {
                            let labels = rule.managed_of(ns.metadata.labels.as_ref());
                            if rule.is_excluded(&name) {
                                RemoteCell::bare(CellState::Excluded, Some(labels))
                            } else if !scoped.covers(ns) {
                                RemoteCell::bare(CellState::OutOfScope, Some(labels))
                            } else {
                                // THE rule decides: drift is what a sync would write.
                                let diff = rule.diff(&desired, ns);
                                let mut cell = if diff.is_empty() {
                                    RemoteCell::bare(CellState::InSync, Some(labels))
                                } else {
                                    RemoteCell {
                                        state: CellState::Drifted,
                                        labels: Some(labels),
                                        set: diff.set,
                                        remove: diff.remove,
                                        injection: None,
                                        contrary_pods: None,
                                    }
                                };
                                let judged = judged_labels(rule, &desired, ns, remote.detaching);
                                cell.injection =
                                    injection_cell(&name, &judged, remote.known_injectors());
                                if matches!(cell.injection, Some(InjectionCell::Unserved { .. })) {
                                    report.totals.uninjected += 1;
                                }
                                if let PodsRead::Read { pods, .. } = &remote.pods {
                                    let here = pods.get(&name).map_or(&[][..], Vec::as_slice);
                                    let contrary: Vec<String> = injection::contrary_pods(
                                        &name,
                                        &judged,
                                        remote.known_injectors(),
                                        here,
                                    )
                                    .into_iter()
                                    .map(ResourceExt::name_any)
                                    .collect();
                                    report.totals.contrary_pods += contrary.len();
                                    cell.contrary_pods = Some(contrary);
                                }
                                cell
                            }
                        }
                    },
                };
                row.clusters.insert(remote.name.clone(), cell);
            }
            report.namespaces.push(row);
        }
        let synced_cells = |state| report.synced_cells_in(state).values().map(Vec::len).sum();
        (report.totals.drifted, report.totals.missing) = (
            synced_cells(CellState::Drifted),
            synced_cells(CellState::Missing),
        );
        report
    }

    /// The matrix as a kubectl-like table: NAMESPACE, PRIMARY, then one column per remote;
    /// `wide` adds whether an injector acts on each remote cell's labels.
    pub fn table(&self, wide: bool) -> String {
        let mut headers = vec!["namespace".to_owned(), output::PRIMARY.to_owned()];
        headers.extend(self.clusters.iter().map(|c| c.name.clone()));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let rows = self.namespaces.iter().map(|row| {
            let mut cells = vec![
                row.name.clone(),
                if row.primary.exists {
                    labels_text(&row.primary.labels)
                } else {
                    "(absent)".to_owned()
                },
            ];
            cells.extend(self.clusters.iter().map(|c| {
                row.clusters
                    .get(&c.name)
                    .map_or_else(|| "(unreachable)".to_owned(), |cell| cell.text(wide))
            }));
            cells
        });
        output::table(&headers, rows)
    }

    /// The namespaces in `state`, by cluster, on the clusters that are synced: those being
    /// detached left out, as nothing syncs them.
    fn synced_cells_in(&self, state: CellState) -> BTreeMap<&str, Vec<&str>> {
        let mut by_cluster: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for cluster in self.clusters.iter().filter(|c| !c.detaching) {
            for row in &self.namespaces {
                if row.clusters.get(&cluster.name).map(|cell| cell.state) == Some(state) {
                    by_cluster.entry(&cluster.name).or_default().push(&row.name);
                }
            }
        }
        by_cluster
    }

    /// Lines worth saying after the table, each with whether it is a warning: where drift is
    /// and how to fix it ([`CellState::Drifted`]), what is missing ([`CellState::Missing`]),
    /// and which clusters are being detached (neither is said of those: nothing syncs them).
    pub fn summary(&self) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        for state in [CellState::Drifted, CellState::Missing] {
            for (cluster, names) in self.synced_cells_in(state) {
                let one = names.len() == 1;
                let line = match state {
                    CellState::Drifted => format!(
                        "{} on {cluster} {} from the primary: {}; `kubectl mesh sync --cluster \
                         {cluster}` converges {} now",
                        plural(names.len(), "namespace"),
                        if one { "differs" } else { "differ" },
                        names.join(", "),
                        if one { "it" } else { "them" },
                    ),
                    _ => format!(
                        "{} with managed labels {} absent on {cluster}: {} (kubectl-mesh never \
                         creates namespaces)",
                        plural(names.len(), "namespace"),
                        if one { "is" } else { "are" },
                        names.join(", ")
                    ),
                };
                lines.push((state == CellState::Drifted, line));
            }
        }
        for cluster in self.clusters.iter().filter(|c| c.detaching) {
            lines.push((
                false,
                format!(
                    "{} is being detached; its namespaces are not synced any more",
                    cluster.name
                ),
            ));
        }
        lines
    }
}

/// The labels a remote namespace `ns` is judged on for injection and pods: those it will carry
/// once synced to `desired`, or, on a cluster being detached, which nothing syncs, those it
/// carries now (its pods will get no other).
fn judged_labels(rule: &SyncRule, desired: &Labels, ns: &Namespace, detaching: bool) -> Labels {
    if detaching {
        ns.metadata.labels.clone().unwrap_or_default()
    } else {
        rule.after_sync(desired, ns)
    }
}

/// Whether an injector of `injectors` (`None`: not known) acts on `labels` of `namespace`;
/// `None` when the labels ask for no sidecars.
fn injection_cell(
    namespace: &str,
    labels: &Labels,
    injectors: Option<&[MutatingWebhookConfiguration]>,
) -> Option<InjectionCell> {
    let Some(injectors) = injectors else {
        let requested = injection::requested(labels).injection;
        return (requested != injection::Injection::None).then_some(InjectionCell::Unknown);
    };
    match injection::readiness(namespace, labels, injectors) {
        Readiness::NotRequested => None,
        Readiness::Served(injectors) => Some(InjectionCell::Served { injectors }),
        Readiness::Unserved(requested) => Some(InjectionCell::Unserved {
            requested: requested.to_string(),
        }),
    }
}

impl InjectionCell {
    /// `(injector: istio-sidecar-injector)`, `(no injector)`, `(injector unknown)`.
    fn marker(&self) -> String {
        match self {
            Self::Served { injectors } => format!("(injector: {})", injectors.join(",")),
            Self::Unserved { .. } => "(no injector)".to_owned(),
            Self::Unknown => "(injector unknown)".to_owned(),
        }
    }
}

impl RemoteCell {
    fn bare(state: CellState, labels: Option<Labels>) -> Self {
        Self {
            state,
            labels,
            set: Labels::new(),
            remove: BTreeSet::new(),
            injection: None,
            contrary_pods: None,
        }
    }

    /// The table cell: the labels, with a marker when they are not simply in sync and, when
    /// `wide`, whether an injector acts on them.
    pub fn text(&self, wide: bool) -> String {
        let labels = || {
            let mut text = labels_text(self.labels.as_ref().unwrap_or(&Labels::new()));
            if let Some(injection) = self.injection.as_ref().filter(|_| wide) {
                text = format!("{text} {}", injection.marker());
            }
            match self.contrary_pods.as_ref().filter(|_| wide) {
                Some(pods) if !pods.is_empty() => {
                    let verb = if pods.len() == 1 { "needs" } else { "need" };
                    format!("{text} ({} {verb} restart)", plural(pods.len(), "pod"))
                }
                _ => text,
            }
        };
        match self.state {
            CellState::InSync => labels(),
            CellState::Drifted => format!("{} (drift)", labels()),
            CellState::Missing => "(missing)".to_owned(),
            CellState::Absent => "(absent)".to_owned(),
            CellState::Unreachable => "(unreachable)".to_owned(),
            CellState::NotRead => "(not read)".to_owned(),
            CellState::ScopeInvalid => "(scope invalid)".to_owned(),
            CellState::Excluded => format!("{} (excluded)", labels()),
            CellState::OutOfScope => format!("{} (out of scope)", labels()),
        }
    }
}

/// `istio-injection=enabled,istio.io/rev=1-24`, or `-` for none.
pub fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use mesh_core::fixtures::{PodExt, istio_injector, pod};
    use mesh_core::fixtures::{by_name, labelled};

    fn primary() -> BTreeMap<String, Namespace> {
        by_name([
            labelled("bookinfo", &[("istio-injection", "enabled"), ("team", "a")]),
            labelled("payments", &[("istio.io/rev", "1-24")]),
            labelled("ambient", &[("istio.io/dataplane-mode", "ambient")]),
            labelled("plain", &[("team", "b")]),
            labelled("kube-system", &[]),
        ])
    }

    /// A remote read as `namespaces` (or not, with the error), without pods or scope.
    fn remote(
        name: &str,
        injectors: Option<Vec<MutatingWebhookConfiguration>>,
        namespaces: std::result::Result<Vec<Namespace>, Unread>,
    ) -> RemoteView {
        RemoteView {
            name: name.into(),
            namespaces,
            injectors: injectors.map(Ok),
            pods: PodsRead::NotAsked,
            scope: Default::default(),
            detaching: false,
        }
    }

    fn remotes() -> Vec<RemoteView> {
        vec![
            remote(
                "east",
                // Only the default revision: nothing injects revision 1-24.
                Some(vec![istio_injector("default")]),
                Ok(vec![
                    labelled("bookinfo", &[("istio-injection", "enabled")]),
                    labelled("payments", &[("istio.io/rev", "1-23")]),
                    labelled("plain", &[]),
                    labelled("legacy", &[("istio-injection", "enabled")]),
                    labelled("kube-system", &[("istio-injection", "disabled")]),
                ]),
            ),
            remote(
                "west",
                Some(vec![istio_injector("default"), istio_injector("1-24")]),
                Ok(vec![
                    labelled("bookinfo", &[("istio-injection", "enabled"), ("app", "x")]),
                    labelled("payments", &[("istio.io/rev", "1-24")]),
                    labelled("ambient", &[("istio.io/dataplane-mode", "ambient")]),
                ]),
            ),
            remote(
                "north",
                None,
                Err(Unread {
                    error: "no answer within 5s".into(),
                    unanswered: true,
                }),
            ),
        ]
    }

    fn report() -> StatusReport {
        StatusReport::compute(&SyncRule::default(), &primary(), &remotes(), &[])
    }

    #[test]
    fn the_exit_status_says_drift_only_when_every_remote_was_read() {
        let unread = report().exit_status().unwrap_err();
        assert_eq!(unread.to_string(), "cannot tell whether north drifted");
        let mut read = remotes();
        read.pop();
        let drifted = StatusReport::compute(&SyncRule::default(), &primary(), &read, &[]);
        assert!(matches!(
            drifted.exit_status(),
            Err(Error::Exit(DRIFT_EXIT_CODE))
        ));
        let none: Vec<RemoteView> = Vec::new();
        let alone = StatusReport::compute(&SyncRule::default(), &primary(), &none, &[]);
        assert!(alone.exit_status().is_ok());
    }

    /// A remote whose stored credentials could not be read on the primary (or were refused)
    /// was said to be unreachable, which sent its admin after the network.
    #[test]
    fn credentials_that_cannot_be_used_are_not_unreachable() {
        let mut views = remotes();
        views[0].namespaces = Err(Unread {
            error: "cannot read secret kubectl-mesh/cluster-east: forbidden".into(),
            unanswered: false,
        });
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &views, &[]);
        let east = &r.clusters[0];
        assert!(!east.reachable, "{east:?}");
        assert!(
            east.unread.as_ref().is_some_and(|u| !u.unanswered),
            "{east:?}"
        );
        assert_eq!(
            east.unread_line().as_deref(),
            Some("east not read: cannot read secret kubectl-mesh/cluster-east: forbidden")
        );
        assert_eq!(r.namespaces[0].clusters["east"].state, CellState::NotRead);
        assert!(r.table(false).contains("(not read)"));
        let north = &r.clusters[2];
        assert_eq!(
            north.unread_line().as_deref(),
            Some("north unreachable: no answer within 5s")
        );
        assert!(r.exit_status().is_err());
    }

    /// A cluster whose scope cannot be used answered all the same: it was said to be
    /// unreachable, which sent its admin after the network.
    #[test]
    fn a_scope_that_cannot_be_used_is_not_unreachable_nor_judged() {
        let mut east = remotes().swap_remove(0);
        east.scope.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "istio-injection".to_owned(),
                "enabled".to_owned(),
            )])),
            ..LabelSelector::default()
        });
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &[east], &[]);
        let column = &r.clusters[0];
        assert!(column.reachable, "{column:?}");
        let error = column.unread.as_ref().map_or("", |u| u.error.as_str());
        assert!(
            error.contains("the scope of east cannot be used"),
            "{error}"
        );
        assert_eq!(
            r.namespaces[0].clusters["east"].state,
            CellState::ScopeInvalid
        );
        assert!(r.table(false).contains("(scope invalid)"));
        let unread = r.exit_status().unwrap_err();
        assert_eq!(unread.to_string(), "cannot tell whether east drifted");
    }

    /// A cluster being detached was said to be converged by `sync --cluster east`, which
    /// refuses it, and its drift made `--exit-code` exit 3. Its drift and missing namespaces
    /// were then still counted in `drifted` and `missing` of `-o json`, which said otherwise
    /// than the summary and `--exit-code`.
    #[test]
    fn a_cluster_being_detached_is_not_for_sync_nor_the_exit_code() {
        let mut views = remotes();
        views.truncate(1);
        let synced = StatusReport::compute(&SyncRule::default(), &primary(), &views, &[]);
        assert_eq!((synced.totals.drifted, synced.totals.missing), (2, 1));
        views[0].detaching = true;
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &views, &[]);
        // Injection is judged on other labels there: see the test below.
        let differs = |r: &StatusReport| -> Vec<_> {
            (r.namespaces.iter().flat_map(|row| row.clusters.values()))
                .map(|c| (c.state, c.labels.clone(), c.set.clone(), c.remove.clone()))
                .collect()
        };
        assert_eq!(
            differs(&r),
            differs(&synced),
            "its cells still show what differs"
        );
        assert_eq!((r.totals.drifted, r.totals.missing), (0, 0));
        assert!(r.exit_status().is_ok());
        let summary: Vec<String> = r.summary().into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            summary,
            ["east is being detached; its namespaces are not synced any more"]
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap()["clusters"][0]["detaching"],
            true
        );
    }

    /// A cluster being detached, which nothing syncs, was judged for injection and pods on the
    /// labels a sync would give it: `(no injector)`, `uninjected` and `contraryPods` spoke of
    /// labels it will never get, while `drifted` and `missing` left it out. It is judged on the
    /// labels it carries, alike in the table and in JSON.
    #[test]
    fn a_cluster_being_detached_is_judged_on_the_labels_it_carries() {
        let mut views = remotes();
        views.truncate(1);
        // legacy: istio-injection=enabled on east, absent on the primary (a sync would remove
        // it); payments: revision 1-23 on east, 1-24 on the primary.
        views[0].pods = PodsRead::Read {
            source: view::Source::View,
            pods: BTreeMap::from([(
                "legacy".to_owned(),
                vec![pod("bare"), pod("proxied").sidecar()],
            )]),
        };
        views[0].detaching = true;
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &views, &[]);
        let cell = |namespace: &str| {
            let row = r.namespaces.iter().find(|n| n.name == namespace);
            row.expect("row").clusters["east"].clone()
        };
        assert_eq!(
            cell("legacy").injection,
            Some(InjectionCell::Served {
                injectors: vec!["istio-sidecar-injector".into()]
            })
        );
        assert_eq!(
            cell("payments").injection,
            Some(InjectionCell::Unserved {
                requested: "revision 1-23".into()
            })
        );
        assert_eq!(cell("legacy").contrary_pods, Some(vec!["bare".to_owned()]));
        assert_eq!((r.totals.uninjected, r.totals.contrary_pods), (1, 1));
        assert_eq!(
            cell("legacy").text(true),
            "istio-injection=enabled (injector: istio-sidecar-injector) (1 pod needs restart) \
             (drift)"
        );
        let unserved = "east: no injector for payments (revision 1-23): their pods will not get \
                        sidecars there";
        assert_eq!(r.injection_summary(), [unserved]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["uninjected"], 1);
        assert_eq!(v["contraryPods"], 1);
        let legacy = &v["namespaces"][2]["clusters"]["east"];
        assert_eq!(legacy["contraryPods"], serde_json::json!(["bare"]));
        assert_eq!(legacy["injection"]["state"], "served");

        // The same cluster, synced: judged on what the sync gives it.
        views[0].detaching = false;
        let synced = StatusReport::compute(&SyncRule::default(), &primary(), &views, &[]);
        let legacy = &synced.namespaces[2].clusters["east"];
        assert_eq!(legacy.injection, None);
        assert_eq!(legacy.contrary_pods, Some(vec!["proxied".to_owned()]));
    }

    #[test]
    fn table_snapshot() {
        insta::assert_snapshot!("status_table", report().table(false));
        insta::assert_snapshot!("status_table_wide", report().table(true));
    }

    #[test]
    fn drift_and_missing_follow_the_rule() {
        let r = report();
        let names: Vec<&str> = r.namespaces.iter().map(|n| n.name.as_str()).collect();
        // kube-system is excluded; plain carries no managed label anywhere.
        assert_eq!(names, ["ambient", "bookinfo", "legacy", "payments"]);
        // payments on east (wrong revision) and legacy on east (absent on the primary).
        assert_eq!(r.totals.drifted, 2);
        // ambient is absent on east.
        assert_eq!(r.totals.missing, 1);
        let legacy = &r.namespaces[2].clusters["east"];
        assert_eq!(legacy.state, CellState::Drifted);
        assert_eq!(
            legacy.remove,
            BTreeSet::from(["istio-injection".to_owned()])
        );
        let payments = &r.namespaces[3].clusters["east"];
        assert_eq!(payments.set["istio.io/rev"], "1-24");
        assert_eq!(
            r.namespaces[1].clusters["west"].state,
            CellState::InSync,
            "unmanaged labels never count"
        );
        assert_eq!(
            r.namespaces[0].clusters["north"].state,
            CellState::Unreachable
        );
        let summary: Vec<String> = r.summary().into_iter().map(|(_, l)| l).collect();
        insta::assert_snapshot!("status_summary", summary.join("\n"));
    }

    #[test]
    fn requested_namespaces_are_shown_as_asked() {
        let r = StatusReport::compute(
            &SyncRule::default(),
            &primary(),
            &remotes()[..1],
            &["kube-system".into(), "nowhere".into(), "kube-system".into()],
        );
        let names: Vec<&str> = r.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["kube-system", "nowhere"]);
        assert_eq!(r.namespaces[0].clusters["east"].state, CellState::Excluded);
        assert_eq!(r.namespaces[1].clusters["east"].state, CellState::Absent);
        assert_eq!((r.totals.drifted, r.totals.missing), (0, 0));
        assert_eq!(
            r.table(false),
            "NAMESPACE     PRIMARY    EAST\n\
             kube-system   -          istio-injection=disabled (excluded)\n\
             nowhere       (absent)   (absent)\n"
        );
    }

    #[test]
    fn missing_only_where_the_rule_reports_it() {
        let mut primary = primary();
        let mut leaving = labelled("leaving", &[("istio-injection", "enabled")]);
        leaving.metadata.deletion_timestamp = "2026-01-01T00:00:00Z".parse().ok().map(Time);
        primary.insert("leaving".into(), leaving);
        let r = StatusReport::compute(
            &SyncRule::default(),
            &primary,
            &remotes()[..2],
            &[
                "ambient".into(),
                "legacy".into(),
                "plain".into(),
                "leaving".into(),
                "nowhere".into(),
            ],
        );
        let cell = |namespace: &str, cluster: &str| {
            let row = r.namespaces.iter().find(|n| n.name == namespace);
            let cell = &row.expect("row").clusters[cluster];
            let state = serde_json::to_value(cell).expect("serializes")["state"].clone();
            (
                cell.text(false),
                state.as_str().unwrap_or_default().to_owned(),
            )
        };
        let missing = ("(missing)".to_owned(), "missing".to_owned());
        let absent = ("(absent)".to_owned(), "absent".to_owned());
        // Managed labels on the primary, no namespace on east: the one real gap.
        assert_eq!(cell("ambient", "east"), missing);
        // Absent on the primary as well: nothing is owed there.
        assert_eq!(cell("legacy", "west"), absent);
        assert_eq!(cell("nowhere", "east"), absent);
        // On the primary without a managed label, or being deleted there: a sync would write
        // nothing there either.
        assert_eq!(cell("plain", "west"), absent);
        assert_eq!(cell("leaving", "west"), absent);
        assert_eq!(r.totals.missing, 1);
        let summary: Vec<String> = r.summary().into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            summary,
            [
                "1 namespace on east differs from the primary: legacy; `kubectl mesh sync \
                 --cluster east` converges it now",
                "1 namespace with managed labels is absent on east: ambient (kubectl-mesh never \
                 creates namespaces)",
            ]
        );
    }

    #[test]
    fn injection_is_judged_on_the_labels_after_sync() {
        let r = report();
        let cell = |namespace: &str, cluster: &str| {
            let row = r.namespaces.iter().find(|n| n.name == namespace);
            row.expect("row").clusters[cluster].injection.clone()
        };
        let served = |names: &[&str]| {
            Some(InjectionCell::Served {
                injectors: names.iter().map(|n| n.to_string()).collect(),
            })
        };
        assert_eq!(
            cell("bookinfo", "east"),
            served(&["istio-sidecar-injector"])
        );
        // East carries 1-23 now and will carry 1-24, which it has no injector for.
        assert_eq!(
            cell("payments", "east"),
            Some(InjectionCell::Unserved {
                requested: "revision 1-24".into()
            })
        );
        assert_eq!(
            cell("payments", "west"),
            served(&["istio-sidecar-injector-1-24"])
        );
        // No sidecars asked for, or the namespace is not there.
        assert_eq!(cell("ambient", "west"), None);
        assert_eq!(cell("legacy", "east"), None);
        assert_eq!(r.totals.uninjected, 1);
        assert_eq!(
            r.namespaces[3].clusters["east"].text(true),
            "istio.io/rev=1-23 (no injector) (drift)"
        );

        // Injectors the stored credentials may not read: said once, for the cluster.
        let mut blind = remotes();
        let forbidden = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let forbidden = mesh_state::RemoteError::Call(kube::Error::Api(forbidden.boxed()));
        blind[1].injectors = Some(Err(InjectorsUnread::of(&forbidden)));
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &blind, &[]);
        assert_eq!(
            r.namespaces[1].clusters["west"].injection,
            Some(InjectionCell::Unknown)
        );
        assert_eq!(
            r.injection_summary(),
            [
                "east: no injector for payments (revision 1-24): their pods will not get \
                 sidecars there",
                "west: its injectors cannot be read with the stored credentials; re-run \
                 `kubectl mesh attach` for west to see whether pods get sidecars there",
            ]
        );
    }

    /// A remote too slow to list its injectors was told to re-run attach, as if its stored
    /// credentials lacked the right to read them.
    #[test]
    fn injectors_that_did_not_answer_are_said_so_without_advice_to_attach() {
        let mut slow = remotes();
        let timed_out = mesh_state::RemoteError::TimedOut(Duration::from_secs(5));
        slow[1].injectors = Some(Err(InjectorsUnread::of(&timed_out)));
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &slow, &[]);
        assert_eq!(
            r.injection_summary()[1..],
            ["west: cannot read injectors: no answer within 5s"]
        );
        assert_eq!(
            r.clusters[1].injectors_unread.as_ref().map(|u| u.forbidden),
            Some(false)
        );
    }

    #[test]
    fn pods_contrary_to_their_namespace_are_counted_where_read() {
        let mut remotes = remotes();
        let pods = BTreeMap::from([(
            "bookinfo".to_owned(),
            vec![pod("a"), pod("b").sidecar(), pod("c")],
        )]);
        remotes[0].pods = PodsRead::Read {
            source: view::Source::View,
            pods,
        };
        remotes[1].pods = PodsRead::NoCredentials { istio_unread: None };
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &remotes, &[]);
        let bookinfo = &r.namespaces[1].clusters;
        assert_eq!(
            bookinfo["east"].contrary_pods.as_deref(),
            Some(&["a".to_owned(), "c".to_owned()][..])
        );
        assert_eq!(bookinfo["west"].contrary_pods, None);
        assert_eq!(r.totals.contrary_pods, 2);
        assert_eq!(
            bookinfo["east"].text(true),
            "istio-injection=enabled (injector: istio-sidecar-injector) (2 pods need restart)"
        );
        assert_eq!(bookinfo["east"].text(false), "istio-injection=enabled");
        let contexts = BTreeMap::from([("east".to_owned(), "admin@east".to_owned())]);
        let lines: Vec<String> = (r.pods_summary(&contexts).into_iter())
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            lines,
            [
                "east: 2 pods in bookinfo lack or carry istio-proxy contrary to the namespace's \
                 labels; restart their workloads (`kubectl --context admin@east rollout restart \
                 deployment -n bookinfo`)",
                "west: pods not read (no view credentials); `kubectl mesh attach <kubeconfig> \
                 --name west --services-view` lets status and check count those that need a \
                 restart",
            ]
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["contraryPods"], 2);
        assert_eq!(v["clusters"][0]["pods"]["credentials"], "view");
        assert_eq!(v["clusters"][1]["pods"]["state"], "no-credentials");
        assert_eq!(
            v["namespaces"][1]["clusters"]["east"]["contraryPods"],
            serde_json::json!(["a", "c"])
        );
    }

    /// The restart advice named the first namespace alone, and no cluster: pasted on the
    /// primary's context (the user's usual one) it restarted the primary's deployments. It now
    /// restarts every namespace, through the context attach recorded for the remote, and
    /// without one says where it must run.
    #[test]
    fn the_restart_advice_is_for_the_remote_and_every_namespace() {
        let mut remotes = remotes();
        remotes.truncate(1);
        remotes[0]
            .namespaces
            .as_mut()
            .expect("read")
            .push(labelled("shop", &[("istio-injection", "enabled")]));
        let mut primary = primary();
        primary.insert(
            "shop".into(),
            labelled("shop", &[("istio-injection", "enabled")]),
        );
        remotes[0].pods = PodsRead::Read {
            source: view::Source::View,
            pods: BTreeMap::from([
                ("bookinfo".to_owned(), vec![pod("a")]),
                ("shop".to_owned(), vec![pod("b"), pod("c")]),
            ]),
        };
        let r = StatusReport::compute(&SyncRule::default(), &primary, &remotes, &[]);
        let advice = |contexts: &[(&str, &str)]| {
            let contexts = (contexts.iter())
                .map(|(c, x)| (c.to_string(), x.to_string()))
                .collect();
            let lines = r.pods_summary(&contexts);
            assert_eq!(lines.len(), 1, "{lines:?}");
            lines[0].1.clone()
        };
        let said = "east: 3 pods in bookinfo, shop lack or carry istio-proxy contrary to the \
                    namespace's labels; ";
        assert_eq!(
            advice(&[("east", "admin@east"), ("west", "admin@west")]),
            format!(
                "{said}restart their workloads (`for ns in bookinfo shop; do kubectl --context \
                 admin@east rollout restart deployment -n \"$ns\"; done`)"
            )
        );
        // A context name a shell would read otherwise is quoted.
        assert!(
            advice(&[("east", "ops east")]).contains("kubectl --context 'ops east' rollout"),
            "{}",
            advice(&[("east", "ops east")])
        );
        assert_eq!(
            advice(&[]),
            format!(
                "{said}restart their workloads on east, in each of these namespaces (`kubectl \
                 rollout restart deployment -n <namespace>` with a context of east, not the \
                 primary's)"
            )
        );
    }

    /// No view Secret and an Istio remote secret the caller may not read: `-o wide` said only
    /// "no view credentials", where `services` and `check` say the secret was refused.
    #[test]
    fn no_credentials_says_when_the_istio_secret_was_refused() {
        let mut remotes = remotes();
        let refused = "cannot read Secret istio-system/istio-remote-secret-west: forbidden";
        remotes[1].pods = PodsRead::NoCredentials {
            istio_unread: Some(refused.into()),
        };
        let r = StatusReport::compute(&SyncRule::default(), &primary(), &remotes, &[]);
        assert_eq!(
            r.pods_summary(&BTreeMap::new()),
            [(
                true,
                format!(
                    "west: pods not read (no view credentials, and {refused}); `kubectl mesh \
                     attach <kubeconfig> --name west --services-view` lets status and check \
                     count those that need a restart"
                )
            )]
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["clusters"][1]["pods"]["state"], "no-credentials");
        assert_eq!(v["clusters"][1]["pods"]["error"], refused);
    }

    #[test]
    fn json_is_structured() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["drifted"], 2);
        assert_eq!(v["clusters"][2]["reachable"], false);
        assert_eq!(v["clusters"][2]["error"], "no answer within 5s");
        let payments = &v["namespaces"][3];
        // Under the name of the primary's column, which no remote may take.
        assert_eq!(payments[output::PRIMARY]["labels"]["istio.io/rev"], "1-24");
        assert_eq!(payments["clusters"]["east"]["state"], "drifted");
        assert_eq!(payments["clusters"]["east"]["set"]["istio.io/rev"], "1-24");
        assert_eq!(payments["clusters"]["west"]["state"], "in-sync");
        assert!(payments["clusters"]["west"].get("set").is_none());
    }
}
