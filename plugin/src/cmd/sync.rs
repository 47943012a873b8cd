//! `kubectl mesh sync`: converge remotes on the primary's labels now.
//!
//! Runs the webhook's own sync engine ([`mesh_core::sync::sync_from_primary`]) once per cluster
//! from this machine: the same plan, the same conditional patches, the same zero writes when a
//! remote is converged, the primary read after each remote. It needs no running webhook.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::ResourceExt;
use mesh_core::labels::{LabelDiff, Labels};
use mesh_core::printable::{few, one_line};
use mesh_core::sync::{ChangeStatus, SyncMode, SyncReport, sync_from_primary};
use serde::Serialize;

use crate::output::plural;
use crate::{
    Context, Error, Result,
    mesh_state::{self, DEFAULT_REMOTE_TIMEOUT},
    output,
};

/// Make every remote's managed labels equal the primary's, now.
///
/// Prints each change as `<cluster>  <namespace>  +label=value -label`, then a summary line
/// per cluster. Exits non-zero when any cluster could not be synced.
#[derive(Debug, clap::Args)]
pub struct Sync {
    /// Print the changes and make none.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub targets: Targets,
}

/// The clusters a sync (or its plan) covers, and how long it may wait on each.
#[derive(Debug, clap::Args)]
pub struct Targets {
    /// Only this cluster (repeatable) [default: all].
    #[arg(long, value_name = "NAME")]
    pub cluster: Vec<String>,
    /// How long each call to a remote may take, its answer included.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REMOTE_TIMEOUT, value_parser = crate::parse_duration)]
    pub remote_timeout: Duration,
}

impl Targets {
    /// Whether one cluster was asked for by name: its answer is that cluster's alone.
    pub fn one_asked(&self) -> bool {
        self.cluster.len() == 1
    }

    /// What a sync of these clusters compares; `None`, said on the progress line, when there
    /// is no cluster to sync.
    pub async fn inputs(&self, ctx: &Context) -> Result<Option<mesh_state::SyncInputs>> {
        mesh_state::sync_inputs(ctx.client().await?, &self.cluster, ctx.progress).await
    }
}

impl Sync {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self { dry_run, targets } = self;
        let Some(inputs) = targets.inputs(ctx).await? else {
            return output::print_empty(ctx.output);
        };
        let remote_timeout = targets.remote_timeout;
        let mode = if dry_run {
            SyncMode::DryRun
        } else {
            SyncMode::Apply
        };
        let results = mesh_state::for_each(&inputs.clusters, |c| {
            let inputs = &inputs;
            async move {
                let name = c.name_any();
                let (rule, remote) = match inputs.open(c, remote_timeout).await {
                    Ok(opened) => opened,
                    Err(line) => return ClusterSync::failed(name, dry_run, line),
                };
                match sync_from_primary(&rule, &inputs.primary, &remote, mode).await {
                    Ok(report) => ClusterSync::from_report(name, &report),
                    Err(e) => ClusterSync::failed(name, dry_run, e.to_string()),
                }
            }
        })
        .await;

        let text = output::render_items(ctx.output, &results, targets.one_asked(), render_text)?;
        output::print_stdout(&text)?;

        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.is_failed())
            .map(|r| r.cluster.as_str())
            .collect();
        if !failed.is_empty() {
            return Err(Error::Refused {
                what: format!(
                    "sync failed on {} of {} clusters: {}",
                    failed.len(),
                    results.len(),
                    failed.join(", ")
                ),
                hint: "see the lines above; `kubectl mesh check` diagnoses a cluster".into(),
            });
        }
        Ok(())
    }
}

/// The result of syncing one cluster, as printed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSync {
    /// Name of the MeshCluster.
    pub cluster: String,
    /// Whether nothing was written on purpose.
    pub dry_run: bool,
    /// Why the remote could not be synced at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Namespaces changed (or that would be), in name order.
    pub changes: Vec<Change>,
    /// The namespaces it had nothing to write on.
    #[serde(flatten)]
    pub untouched: Untouched,
    /// Namespaces that could not be written.
    pub failures: Vec<Failure>,
    /// The namespace whose write the remote did not answer (also in `failures`): the remote
    /// stopped answering mid-sync, and nothing more was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// Namespaces that differed and were not written because the sync stopped there.
    #[serde(skip_serializing_if = "is_zero")]
    pub unwritten: usize,
    /// Write requests made.
    pub writes: u32,
}

/// The namespaces a sync has nothing to write on, by why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Untouched {
    /// Namespaces whose labels already equalled the primary's.
    pub in_sync: usize,
    /// Primary namespaces with managed labels absent on the remote (never created).
    pub missing: Vec<String>,
    /// Remote namespaces the cluster's scope (`kubectl mesh scope`) leaves alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub out_of_scope: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One namespace's change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The namespace.
    pub namespace: String,
    /// Labels set.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub set: Labels,
    /// Labels removed.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub remove: BTreeSet<String>,
    /// `applied`, or `planned` on a dry run.
    pub status: &'static str,
}

/// A namespace that could not be written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The namespace.
    pub namespace: String,
    /// The change attempted, as in [`change_text`].
    pub change: String,
    /// Why it failed.
    pub message: String,
}

impl ClusterSync {
    /// A cluster that could not be read.
    pub fn failed(cluster: String, dry_run: bool, error: String) -> Self {
        Self {
            cluster,
            dry_run,
            error: Some(error),
            ..Self::default()
        }
    }

    /// What the sync engine reported.
    pub fn from_report(cluster: String, report: &SyncReport) -> Self {
        Self {
            cluster,
            dry_run: report.mode == SyncMode::DryRun,
            error: None,
            changes: report
                .changes
                .iter()
                .map(|c| Change {
                    namespace: c.diff.namespace.clone(),
                    set: c.diff.set.clone(),
                    remove: c.diff.remove.clone(),
                    status: match c.status {
                        ChangeStatus::Applied => "applied",
                        ChangeStatus::Planned => "planned",
                    },
                })
                .collect(),
            untouched: Untouched {
                in_sync: report.in_sync,
                missing: report.missing.clone(),
                out_of_scope: report.out_of_scope.clone(),
            },
            failures: report
                .errors
                .iter()
                .map(|e| Failure {
                    namespace: e.namespace.clone(),
                    change: change_text(&e.diff),
                    message: e.message.clone(),
                })
                .collect(),
            stopped_at: report.stopped_at().map(|e| e.namespace.clone()),
            unwritten: report.unwritten,
            writes: report.writes,
        }
    }

    /// Whether the cluster or one of its namespaces failed.
    pub fn is_failed(&self) -> bool {
        self.error.is_some() || !self.failures.is_empty()
    }

    /// `east: 2 namespaces corrected, 5 in sync, 1 missing (payments), 1 out of scope
    /// (istio-system), 2 writes`; a remote that stopped answering mid-sync adds `1 failed,
    /// 6 not written (the remote stopped answering at shop)`.
    pub fn summary(&self) -> String {
        if let Some(error) = &self.error {
            return format!("{}: failed: {error}", self.cluster);
        }
        let mut parts = Vec::new();
        if !self.changes.is_empty() {
            let verb = if self.dry_run {
                "would change"
            } else {
                "corrected"
            };
            parts.push(format!(
                "{} {verb}",
                plural(self.changes.len(), "namespace")
            ));
        }
        if !self.failures.is_empty() {
            parts.push(format!("{} failed", self.failures.len()));
        }
        match &self.stopped_at {
            Some(namespace) => parts.push(format!(
                "{} not written (the remote stopped answering at {namespace})",
                self.unwritten
            )),
            None if self.unwritten > 0 => {
                parts.push(format!("{} not written", self.unwritten));
            }
            None => {}
        }
        let untouched = &self.untouched;
        parts.push(format!("{} in sync", untouched.in_sync));
        for (names, why) in [
            (&untouched.missing, "missing"),
            (&untouched.out_of_scope, "out of scope"),
        ] {
            if !names.is_empty() {
                parts.push(format!("{} {why} ({})", names.len(), few(names)));
            }
        }
        if self.dry_run {
            parts.push("dry run, nothing written".to_owned());
        } else {
            parts.push(plural(self.writes as usize, "write"));
        }
        format!("{}: {}", self.cluster, parts.join(", "))
    }
}

/// `+istio-injection=enabled -istio.io/rev`.
pub fn change_text(diff: &LabelDiff) -> String {
    labels_change(&diff.set, &diff.remove)
}

fn labels_change(set: &Labels, remove: &BTreeSet<String>) -> String {
    set.iter()
        .map(|(k, v)| format!("+{k}={v}"))
        .chain(remove.iter().map(|k| format!("-{k}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text output: one aligned line per change or failure, then one summary per cluster.
pub fn render_text(results: &[ClusterSync]) -> String {
    let mut lines: Vec<[String; 3]> = Vec::new();
    for r in results {
        for c in &r.changes {
            lines.push([
                r.cluster.clone(),
                c.namespace.clone(),
                labels_change(&c.set, &c.remove),
            ]);
        }
        for f in &r.failures {
            lines.push([
                r.cluster.clone(),
                f.namespace.clone(),
                format!("{} failed: {}", f.change, f.message),
            ]);
        }
    }
    // Namespace names and label values are what the remotes hold: shown, never obeyed.
    let mut lines: Vec<[String; 3]> = (lines.into_iter())
        .map(|line| line.map(|cell| one_line(&cell).into_owned()))
        .collect();
    // Failures sort with the changes of their namespace's cluster, by namespace.
    lines.sort_by(|a, b| (&a[0], &a[1]).cmp(&(&b[0], &b[1])));
    let width = |i: usize| {
        lines
            .iter()
            .map(|l| l[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::new();
    for [cluster, namespace, change] in &lines {
        out.push_str(&format!("{cluster:<w0$}   {namespace:<w1$}   {change}\n"));
    }
    let by_name: BTreeMap<&str, &ClusterSync> =
        results.iter().map(|r| (r.cluster.as_str(), r)).collect();
    for r in by_name.values() {
        out.push_str(&one_line(&r.summary()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The same three remotes synced for real and dry: west converged, east with changes, one
    /// namespace (`locked`) whose write the remote forbids and one missing, north unreadable.
    /// A dry run writes nothing, so no namespace can fail there: it lists `locked` as a change
    /// it would make. Only a remote that cannot be read fails either way.
    fn results(dry_run: bool) -> Vec<ClusterSync> {
        let status = if dry_run { "planned" } else { "applied" };
        let mut changes = vec![
            Change {
                namespace: "bookinfo".into(),
                set: labels(&[("istio-injection", "enabled")]),
                remove: BTreeSet::new(),
                status,
            },
            Change {
                namespace: "legacy-apps".into(),
                set: labels(&[("istio.io/rev", "1-24")]),
                remove: BTreeSet::from(["istio-injection".to_owned()]),
                status,
            },
        ];
        let mut failures = Vec::new();
        let locked = Change {
            namespace: "locked".into(),
            set: labels(&[("istio-injection", "enabled")]),
            remove: BTreeSet::new(),
            status,
        };
        if dry_run {
            changes.push(locked);
        } else {
            failures.push(Failure {
                namespace: locked.namespace,
                change: labels_change(&locked.set, &locked.remove),
                message: "namespaces \"locked\" is forbidden".into(),
            });
        }
        vec![
            ClusterSync {
                cluster: "west".into(),
                dry_run,
                error: None,
                untouched: Untouched {
                    in_sync: 7,
                    ..Untouched::default()
                },
                ..ClusterSync::default()
            },
            ClusterSync {
                cluster: "east".into(),
                dry_run,
                error: None,
                changes,
                untouched: Untouched {
                    in_sync: 12,
                    missing: vec!["payments".into()],
                    out_of_scope: vec!["istio-system".into()],
                },
                failures,
                writes: if dry_run { 0 } else { 2 },
                ..ClusterSync::default()
            },
            ClusterSync::failed(
                "north".into(),
                dry_run,
                "cannot list the remote's namespaces: connection refused".into(),
            ),
        ]
    }

    #[test]
    fn text_snapshot() {
        insta::assert_snapshot!("sync_text", render_text(&results(false)));
        insta::assert_snapshot!("sync_text_dry_run", render_text(&results(true)));
    }

    /// A remote that is not what it claims holds any namespace name and label value.
    #[test]
    fn what_a_remote_holds_is_shown_never_obeyed() {
        let mut results = results(false);
        results[1].changes[0].set = labels(&[("istio-injection", "on\x1b[2J")]);
        results[1].untouched.out_of_scope = vec!["kube\u{202e}metsys".into()];
        let text = render_text(&results);
        assert!(!text.contains(['\x1b', '\u{202e}']), "{text:?}");
        assert!(text.contains("istio-injection=on\\u{1b}[2J"), "{text}");
        assert!(text.contains("kube\\u{202e}metsys"), "{text}");
    }

    #[test]
    fn failures_are_failures() {
        let r = results(false);
        assert!(!r[0].is_failed());
        assert!(r[1].is_failed(), "a namespace failed");
        assert!(r[2].is_failed());
        assert_eq!(r[0].summary(), "west: 7 in sync, 0 writes");
        let dry = results(true);
        assert!(
            !dry[1].is_failed(),
            "a dry run writes nothing that could fail"
        );
        assert!(
            dry[2].is_failed(),
            "an unreadable remote fails a dry run too"
        );
    }

    /// The remote stopped answering at `locked`: what was not written after it is counted.
    fn stopped(results: &mut [ClusterSync]) {
        let east = &mut results[1];
        east.failures[0].message = "cannot patch namespace locked: operation timed out".into();
        east.stopped_at = Some("locked".into());
        east.unwritten = 6;
    }

    #[test]
    fn a_remote_that_stopped_answering_says_what_it_left_unwritten() {
        let mut results = results(false);
        stopped(&mut results);
        assert_eq!(
            results[1].summary(),
            "east: 2 namespaces corrected, 1 failed, 6 not written (the remote stopped \
             answering at locked), 12 in sync, 1 missing (payments), 1 out of scope \
             (istio-system), 2 writes"
        );
        assert!(results[1].is_failed());
        let v = serde_json::to_value(&results[1]).unwrap();
        assert_eq!(v["stoppedAt"], "locked");
        assert_eq!(v["unwritten"], 6);
        let converged = serde_json::to_value(&results[0]).unwrap();
        assert!(converged.get("stoppedAt").is_none(), "{converged}");
        assert!(converged.get("unwritten").is_none(), "{converged}");
    }

    #[test]
    fn json_is_structured() {
        let v = serde_json::to_value(&results(true)[1]).unwrap();
        assert_eq!(v["dryRun"], true);
        assert_eq!(v["changes"][1]["remove"][0], "istio-injection");
        assert_eq!(v["changes"][1]["status"], "planned");
        assert_eq!(v["inSync"], 12);
        assert_eq!(v["outOfScope"][0], "istio-system");
        assert!(v.get("error").is_none());
        let converged = serde_json::to_value(&results(true)[0]).unwrap();
        assert!(converged.get("outOfScope").is_none(), "{converged}");
    }
}
