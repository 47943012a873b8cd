//! The soak's operations: planned from the seed before the run (the same seed, the same
//! operations at the same offsets), then run with the real kubectl against the clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use super::history::{ClusterIx, Ms, Op, OpKind, Outcome, PRIMARY};

/// The managed labels the workload changes and the values it sets.
pub const VALUES: [(&str, &[&str]); 3] = [
    ("istio-injection", &["enabled", "disabled"]),
    ("istio.io/rev", &["stable", "canary", "1-31"]),
    ("istio.io/dataplane-mode", &["ambient", "none"]),
];

/// Values the primary's admission policy refuses start with this.
pub const REFUSED_PREFIX: &str = "refused-";

/// Name of the namespace numbered `i` of the pool.
pub fn namespace(i: usize) -> String {
    format!("soak-{i}")
}

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub duration: Duration,
    /// Operations per second, on average (their gaps are exponentially distributed).
    pub rate: f64,
    /// Size of the namespace pool the operations pick from.
    pub namespaces: usize,
    pub remotes: usize,
}

/// One operation to run `at` ms after the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOp {
    pub at: Ms,
    pub cluster: ClusterIx,
    pub namespace: String,
    pub kind: OpKind,
}

/// The operations of a run, from its seed.
pub fn plan(seed: u64, config: &WorkloadConfig) -> Vec<PlannedOp> {
    // A stream of its own, so that the fault plan does not shift when this one changes.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x574f_524b_4c4f_4144);
    let end = config.duration.as_millis() as f64;
    let mut at = 0.0;
    let mut out = Vec::new();
    let mut serial = 0usize;
    loop {
        at += exponential(&mut rng, 1000.0 / config.rate.max(0.001));
        if at >= end {
            return out;
        }
        serial += 1;
        let namespace = namespace(rng.random_range(0..config.namespaces.max(1)));
        let (cluster, kind) = match rng.random_range(0..100u32) {
            0..30 => {
                let (key, values) = VALUES[rng.random_range(0..VALUES.len())];
                let value = values[rng.random_range(0..values.len())];
                (PRIMARY, label(&[(key, value)], &[]))
            }
            30..38 => {
                let (key, _) = VALUES[rng.random_range(0..VALUES.len())];
                (PRIMARY, label(&[], &[key]))
            }
            38..46 => match rng.random_bool(0.5) {
                true => (
                    PRIMARY,
                    label(&[("istio-injection", "enabled")], &["istio.io/rev"]),
                ),
                false => (
                    PRIMARY,
                    label(&[("istio.io/rev", "canary")], &["istio-injection"]),
                ),
            },
            46..54 => {
                let (key, _) = VALUES[rng.random_range(0..VALUES.len())];
                (
                    PRIMARY,
                    OpKind::DryRun {
                        set: labels(&[(key, &format!("dry-{serial}"))]),
                    },
                )
            }
            54..62 => (
                PRIMARY,
                OpKind::Unmanaged {
                    key: if rng.random_bool(0.5) {
                        "team"
                    } else {
                        "soak/note"
                    }
                    .to_owned(),
                    value: format!("v{serial}"),
                    annotation: rng.random_bool(0.5),
                },
            ),
            62..70 => {
                let (key, _) = VALUES[rng.random_range(0..2)];
                (
                    PRIMARY,
                    OpKind::Refused {
                        set: labels(&[(key, &format!("{REFUSED_PREFIX}{serial}"))]),
                    },
                )
            }
            70..77 => (PRIMARY, OpKind::Create),
            77..85 => (PRIMARY, OpKind::Delete),
            85..93 => (
                1 + rng.random_range(0..config.remotes.max(1)),
                OpKind::Create,
            ),
            _ => (
                1 + rng.random_range(0..config.remotes.max(1)),
                OpKind::Delete,
            ),
        };
        out.push(PlannedOp {
            at: at as Ms,
            cluster,
            namespace,
            kind,
        });
    }
}

/// A gap of an exponential distribution with this mean.
pub fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    -u.ln() * mean
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn label(set: &[(&str, &str)], remove: &[&str]) -> OpKind {
    OpKind::Label {
        set: labels(set),
        remove: remove.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// kubectl's arguments (after `--kubeconfig`) for an operation.
pub fn kubectl_args(namespace: &str, kind: &OpKind) -> Vec<String> {
    let pairs = |set: &BTreeMap<String, String>| {
        set.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    let mut args: Vec<String> = match kind {
        OpKind::Label { set, remove } => {
            let mut a = vec!["label".into(), "namespace".into(), namespace.into()];
            a.extend(pairs(set));
            a.extend(remove.iter().map(|k| format!("{k}-")));
            a.push("--overwrite".into());
            a
        }
        OpKind::DryRun { set } => {
            let mut a = vec!["label".into(), "namespace".into(), namespace.into()];
            a.extend(pairs(set));
            a.extend(["--overwrite".into(), "--dry-run=server".into()]);
            a
        }
        OpKind::Refused { set } => {
            let mut a = vec!["label".into(), "namespace".into(), namespace.into()];
            a.extend(pairs(set));
            a.push("--overwrite".into());
            a
        }
        OpKind::Unmanaged {
            key,
            value,
            annotation,
        } => vec![
            if *annotation { "annotate" } else { "label" }.into(),
            "namespace".into(),
            namespace.into(),
            format!("{key}={value}"),
            "--overwrite".into(),
        ],
        OpKind::Create => vec!["create".into(), "namespace".into(), namespace.into()],
        OpKind::Delete => vec![
            "delete".into(),
            "namespace".into(),
            namespace.into(),
            "--wait=false".into(),
        ],
    };
    args.push("--request-timeout=30s".into());
    args
}

/// How an operation ended, from kubectl's exit and stderr.
pub fn outcome(success: bool, stderr: &str) -> Outcome {
    if success {
        return Outcome::Ok;
    }
    if stderr.contains("webhook") {
        return Outcome::Failed;
    }
    if stderr.contains("ValidatingAdmissionPolicy") {
        return Outcome::Refused;
    }
    let benign = [
        "NotFound",
        "not found",
        "AlreadyExists",
        "already exists",
        "being terminated",
        "is terminating",
        "the object has been modified",
    ];
    if benign.iter().any(|b| stderr.contains(b)) {
        Outcome::Benign
    } else {
        Outcome::Failed
    }
}

/// Runs one planned operation with kubectl against `kubeconfig`.
pub async fn run(
    kubectl: &std::path::Path,
    kubeconfig: &std::path::Path,
    id: usize,
    planned: &PlannedOp,
    clock: &super::Clock,
) -> Op {
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(kubectl_args(&planned.namespace, &planned.kind))
        .kill_on_drop(true);
    let start = clock.now();
    let result = tokio::time::timeout(Duration::from_secs(45), cmd.output()).await;
    let end = clock.now();
    let (outcome, detail) = match result {
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            (outcome(output.status.success(), &stderr), stderr)
        }
        Ok(Err(error)) => (Outcome::Failed, format!("running kubectl: {error}")),
        Err(_) => (Outcome::Failed, "kubectl did not return within 45s".into()),
    };
    Op {
        id,
        start,
        end,
        cluster: planned.cluster,
        namespace: planned.namespace.clone(),
        kind: planned.kind.clone(),
        outcome,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkloadConfig {
        WorkloadConfig {
            duration: Duration::from_secs(600),
            rate: 2.0,
            namespaces: 8,
            remotes: 3,
        }
    }

    #[test]
    fn the_same_seed_plans_the_same_operations() {
        assert_eq!(plan(7, &config()), plan(7, &config()));
        assert_ne!(plan(7, &config()), plan(8, &config()));
    }

    #[test]
    fn a_plan_has_every_kind_at_about_the_rate() {
        let ops = plan(1, &config());
        assert!((1000..1400).contains(&ops.len()), "{}", ops.len());
        let has = |f: &dyn Fn(&PlannedOp) -> bool| ops.iter().any(f);
        assert!(has(
            &|o| matches!(&o.kind, OpKind::Label { remove, .. } if remove.is_empty())
        ));
        assert!(has(
            &|o| matches!(&o.kind, OpKind::Label { set, .. } if set.is_empty())
        ));
        assert!(has(
            &|o| matches!(&o.kind, OpKind::Label { set, remove } if !set.is_empty() && !remove.is_empty())
        ));
        assert!(has(&|o| matches!(o.kind, OpKind::DryRun { .. })));
        assert!(has(&|o| matches!(o.kind, OpKind::Refused { .. })));
        assert!(has(&|o| matches!(
            o.kind,
            OpKind::Unmanaged {
                annotation: true,
                ..
            }
        )));
        assert!(has(&|o| matches!(
            o.kind,
            OpKind::Unmanaged {
                annotation: false,
                ..
            }
        )));
        for cluster in 0..=3 {
            assert!(has(&|o| o.cluster == cluster && o.kind == OpKind::Create));
            assert!(has(&|o| o.cluster == cluster && o.kind == OpKind::Delete));
        }
        assert!(ops.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn outcomes_tell_the_policy_and_the_webhook_apart() {
        assert_eq!(outcome(true, ""), Outcome::Ok);
        assert_eq!(
            outcome(
                false,
                "namespaces \"soak-1\" is forbidden: ValidatingAdmissionPolicy 'soak-refuse' with binding 'soak-refuse' denied request"
            ),
            Outcome::Refused
        );
        assert_eq!(
            outcome(
                false,
                "Error from server (NotFound): namespaces \"soak-1\" not found"
            ),
            Outcome::Benign
        );
        assert_eq!(
            outcome(
                false,
                "Internal error occurred: failed calling webhook \"kubectl-mesh\": not found"
            ),
            Outcome::Failed
        );
        assert_eq!(outcome(false, "connection refused"), Outcome::Failed);
    }
}
