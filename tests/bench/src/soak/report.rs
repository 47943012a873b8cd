//! The soak's report, as markdown: the seed, what ran (operations by kind and outcome, faults
//! by kind), every violation with the history that shows it, and how long the remotes took to
//! equal the primary again after each fault.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::checker::Verdict;
use super::history::{FaultKind, History, OpKind, Outcome, PRIMARY};

/// The name of an operation's kind in the report.
pub fn op_kind(history: &History, op: &super::history::Op) -> String {
    let on = if op.cluster == PRIMARY {
        String::new()
    } else {
        " (remote)".to_owned()
    };
    let kind = match &op.kind {
        OpKind::Label { set, remove } if remove.is_empty() => "label",
        OpKind::Label { set, .. } if set.is_empty() => "remove",
        OpKind::Label { .. } => "switch",
        OpKind::DryRun { .. } => "dry run",
        OpKind::Refused { .. } => "refused value",
        OpKind::Unmanaged {
            annotation: true, ..
        } => "unmanaged annotation",
        OpKind::Unmanaged { .. } => "unmanaged label",
        OpKind::Create => "create namespace",
        OpKind::Delete => "delete namespace",
    };
    let _ = history;
    format!("{kind}{on}")
}

/// The name of a fault's kind in the report.
pub fn fault_kind(history: &History, fault: &super::history::Fault) -> String {
    let what = match &fault.kind {
        FaultKind::Pause => "SIGSTOP/SIGCONT",
        FaultKind::Kill => "kill -9 and restart",
        FaultKind::Freeze => "connection to the primary frozen",
        FaultKind::Slow => "connection to the primary slowed",
        FaultKind::Rbac => "RBAC of the sync identity removed and restored",
        FaultKind::Drift { .. } => "label edited on the remote",
    };
    let target = if fault.target == history.cluster_name(PRIMARY) {
        "primary apiserver".to_owned()
    } else if history.cluster_ix(&fault.target).is_some() {
        match fault.kind {
            FaultKind::Pause | FaultKind::Kill => "remote apiserver".to_owned(),
            _ => "remote".to_owned(),
        }
    } else if fault.target == "proxy" {
        "registered replica".to_owned()
    } else if fault.was_leader {
        "replica (leader)".to_owned()
    } else {
        "replica (follower)".to_owned()
    };
    format!("{what}: {target}")
}

pub fn render(history: &History, verdict: &Verdict, settings: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Soak\n");
    let _ = writeln!(
        out,
        "- seed: **{}** (`--seed {}` repeats this schedule)",
        history.seed, history.seed
    );
    let _ = writeln!(out, "- {settings}");
    let _ = writeln!(
        out,
        "- clusters: {}; faults stopped at {:.1} s",
        history.clusters.join(", "),
        history.faults_stopped as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "- recorded: {} operations, {} faults, {} watch events, {} Lease holders, {} reconciler writes\n",
        history.ops.len(),
        history.faults.len(),
        history.recorded.events.len(),
        history.recorded.leases.len(),
        history.recorded.writes.len()
    );

    let mut ops: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    for op in &history.ops {
        let row = ops.entry(op_kind(history, op)).or_default();
        row[match op.outcome {
            Outcome::Ok => 0,
            Outcome::Refused => 1,
            Outcome::Benign => 2,
            Outcome::Failed => 3,
        }] += 1;
    }
    let _ = writeln!(
        out,
        "| operation | ok | refused by policy | not found / exists | failed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (kind, [ok, refused, benign, failed]) in &ops {
        let _ = writeln!(out, "| {kind} | {ok} | {refused} | {benign} | {failed} |");
    }

    let times: BTreeMap<usize, Option<u64>> = verdict
        .convergence
        .iter()
        .map(|c| (c.fault, c.after))
        .collect();
    let mut faults: BTreeMap<String, (usize, usize, Vec<u64>, usize)> = BTreeMap::new();
    for fault in &history.faults {
        let row = faults.entry(fault_kind(history, fault)).or_default();
        row.0 += 1;
        row.1 += usize::from(fault.error.is_some());
        match times.get(&fault.id).copied().flatten() {
            Some(after) => row.2.push(after),
            None => row.3 += 1,
        }
    }
    let _ = writeln!(
        out,
        "\n| fault | count | errors | converged after: p50 | p99 | max | only by the final listing |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for (kind, (count, errors, after, never)) in &mut faults {
        all.extend(after.iter().copied());
        let _ = writeln!(
            out,
            "| {kind} | {count} | {errors} | {} | {never} |",
            percentiles(after)
        );
    }
    let never: usize = faults.values().map(|r| r.3).sum();
    let _ = writeln!(
        out,
        "| **all** | {} | {} | {} | {never} |",
        history.faults.len(),
        history.faults.iter().filter(|f| f.error.is_some()).count(),
        percentiles(&mut all)
    );
    let errors: Vec<_> = history
        .faults
        .iter()
        .filter(|f| f.error.is_some())
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nFaults that could not be injected or healed:\n");
        for fault in errors.iter().take(10) {
            let _ = writeln!(out, "- {}", super::history::describe_fault(fault));
        }
    }

    let _ = writeln!(out, "\n### Violations: {}\n", verdict.violations.len());
    for v in verdict.violations.iter().take(20) {
        let _ = writeln!(
            out,
            "- **{:?}** at {} ms: {}\n\n  ```",
            v.kind, v.at, v.message
        );
        for line in &v.excerpt {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  ```");
    }
    if verdict.violations.len() > 20 {
        let _ = writeln!(out, "- ... and {} more", verdict.violations.len() - 20);
    }
    out
}

/// `p50 ms | p99 ms | max ms` of `values` (sorted in place), or dashes.
fn percentiles(values: &mut [u64]) -> String {
    if values.is_empty() {
        return "- | - | -".to_owned();
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} ms | {} ms | {} ms",
        at(0.5),
        at(0.99),
        values[values.len() - 1]
    )
}
