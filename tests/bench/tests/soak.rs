//! The soak, short, with a fixed seed, as part of the test suite: a minute of random
//! operations and faults of every kind on a real mesh (a primary, three remotes with their
//! guards, two webhook replicas electing a leader), then the checker. Longer runs are
//! benchmarks (`mesh-bench soak --duration 30m`, figures in benchmarks.md).

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_bench::soak::history::{FaultKind, OpKind, Outcome, PRIMARY};
use mesh_bench::soak::{self, SoakConfig, report};
use mesh_testenv::mesh::MeshOptions;

/// The seed of the suite's run: its schedule has every kind of operation and fault.
const SEED: u64 = 20_261_201;

/// Asserts that every kind in `expected` is among those `seen` of `what`; a failure lists the
/// kinds missing and those seen.
fn assert_every_kind(what: &str, seen: impl Iterator<Item = String>, expected: &[&str]) {
    let seen: BTreeSet<String> = seen.collect();
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|kind| !seen.contains(*kind))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: none of the kinds {missing:?}, only {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_random_faults_leaves_no_violation() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = SoakConfig {
        seed: SEED,
        duration: Duration::from_secs(60),
        ..SoakConfig::default()
    };
    let run = soak::run(&MeshOptions::from_workspace()?, &config).await?;
    eprintln!("{}", run.report);
    let history = &run.history;

    // What was planned happened: every kind of operation was run, and the primary accepted
    // or refused (by its policy) some of each kind that changes it.
    let op_kinds = history.ops.iter().map(|op| report::op_kind(history, op));
    let every_op_kind = [
        "label",
        "remove",
        "switch",
        "dry run",
        "refused value",
        "unmanaged label",
        "unmanaged annotation",
        "create namespace",
        "delete namespace",
        "create namespace (remote)",
        "delete namespace (remote)",
    ];
    assert_every_kind("operations run", op_kinds, &every_op_kind);
    let ok = |f: &dyn Fn(&OpKind) -> bool| {
        history
            .ops
            .iter()
            .any(|op| op.cluster == PRIMARY && op.outcome == Outcome::Ok && f(&op.kind))
    };
    assert!(
        ok(&|k| matches!(k, OpKind::Label { .. })),
        "no label change took"
    );
    assert!(
        ok(&|k| matches!(k, OpKind::DryRun { .. })),
        "no dry run took"
    );
    assert!(
        history
            .ops
            .iter()
            .any(|op| matches!(op.kind, OpKind::Refused { .. }) && op.outcome == Outcome::Refused),
        "the primary's policy refused nothing"
    );

    // Every kind of fault was injected and healed.
    let fault_kinds = history
        .faults
        .iter()
        .filter(|f| f.error.is_none())
        .map(|f| report::fault_kind(history, f));
    let every_fault_kind = [
        "SIGSTOP/SIGCONT: remote apiserver",
        "kill -9 and restart: remote apiserver",
        "SIGSTOP/SIGCONT: primary apiserver",
        "kill -9 and restart: primary apiserver",
        "connection to the primary frozen: registered replica",
        "connection to the primary slowed: registered replica",
        "RBAC of the sync identity removed and restored: remote",
        "label edited on the remote: remote",
    ];
    assert_every_kind("faults injected and healed", fault_kinds, &every_fault_kind);
    let replica_faults = history
        .faults
        .iter()
        .filter(|f| f.error.is_none() && matches!(f.kind, FaultKind::Pause | FaultKind::Kill))
        .filter(|f| history.cluster_ix(&f.target).is_none())
        .count();
    assert!(replica_faults >= 2, "{replica_faults} replica faults");
    assert!(
        history.faults.iter().any(|f| f.was_leader),
        "no fault hit the leader"
    );
    let errors: Vec<_> = history
        .faults
        .iter()
        .filter(|f| f.error.is_some() && !matches!(f.kind, FaultKind::Drift { .. }))
        .collect();
    assert!(
        errors.is_empty(),
        "faults not injected or healed: {errors:#?}"
    );
    assert!(!history.recorded.events.is_empty() && history.snapshot.is_some());

    assert!(
        run.verdict.violations.is_empty(),
        "{} violation(s); see the report above",
        run.verdict.violations.len()
    );
    Ok(())
}
