//! The soak's faults: planned from the seed (which kind, which target, when, for how long),
//! injected into the real processes and healed again. Which replica "the leader" is gets
//! decided when the fault starts, from the Lease as last seen.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt as _};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use super::history::{Fault, FaultKind, Ms};
use super::workload::{VALUES, exponential, namespace};

/// The remote identity whose rights an RBAC fault removes (ClusterRoleBinding of the same
/// name, as `attach` creates it).
pub const SYNC_BINDING: &str = "kubectl-mesh-sync";

/// What a planned fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A remote's apiserver, or its identity: cluster index (1-based).
    Remote(usize),
    Primary,
    /// The replica holding the Lease when the fault starts.
    Leader,
    /// The other one.
    Follower,
    /// The registered replica's connection to the primary.
    Proxy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    pub at: Ms,
    pub kind: FaultKind,
    pub target: Target,
    /// How long it lasts before it is healed.
    pub hold: Ms,
}

#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub duration: Duration,
    /// Mean gap between two faults' starts.
    pub every: Duration,
    pub remotes: usize,
    pub namespaces: usize,
}

/// The kinds a plan cycles through once (in a seeded order) before drawing at random: a short
/// run still has every one.
const KINDS: [(&str, u32); 10] = [
    ("remote-pause", 3),
    ("remote-kill", 3),
    ("primary-pause", 1),
    ("primary-kill", 1),
    ("replica-pause", 2),
    ("replica-kill", 2),
    ("proxy-freeze", 1),
    ("proxy-slow", 1),
    ("rbac", 2),
    ("drift", 3),
];

/// The faults of a run, from its seed; faults of one target never overlap.
pub fn plan(seed: u64, config: &FaultConfig) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4641_554c_5453);
    let end = config.duration.as_millis() as Ms;
    let mut first: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    // Fisher-Yates with the run's generator.
    for i in (1..first.len()).rev() {
        first.swap(i, rng.random_range(0..=i));
    }
    let total: u32 = KINDS.iter().map(|(_, w)| w).sum();
    let mut busy: Vec<(String, Ms)> = Vec::new();
    let mut out = Vec::new();
    let mut at = 1_000.0;
    let mut serial = 0usize;
    loop {
        // The first cycle evenly spaced, so that it fits a short run; then at random.
        let cycle_gap = (config.every.as_millis() as f64)
            .min((end as f64 - 10_000.0).max(0.0) / first.len() as f64);
        at += match serial < first.len() {
            true => cycle_gap,
            false => exponential(&mut rng, config.every.as_millis() as f64),
        };
        let kind = if serial < first.len() {
            first[serial]
        } else {
            let mut pick = rng.random_range(0..total);
            KINDS
                .iter()
                .find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .map_or("drift", |(k, _)| *k)
        };
        serial += 1;
        let remote = 1 + rng.random_range(0..config.remotes.max(1));
        let hold = rng.random_range(1_000..=5_000u64);
        // The first cycle's replica faults hit the leader; later ones either replica.
        let leader = rng.random_bool(0.5) || serial <= first.len();
        let (fault, target, key) = match kind {
            "remote-pause" => (
                FaultKind::Pause,
                Target::Remote(remote),
                format!("api-{remote}"),
            ),
            "remote-kill" => (
                FaultKind::Kill,
                Target::Remote(remote),
                format!("api-{remote}"),
            ),
            "primary-pause" => (FaultKind::Pause, Target::Primary, "api-0".into()),
            "primary-kill" => (FaultKind::Kill, Target::Primary, "api-0".into()),
            "replica-pause" | "replica-kill" => (
                if kind == "replica-pause" {
                    FaultKind::Pause
                } else {
                    FaultKind::Kill
                },
                if leader {
                    Target::Leader
                } else {
                    Target::Follower
                },
                "replicas".into(),
            ),
            "proxy-freeze" => (FaultKind::Freeze, Target::Proxy, "proxy".into()),
            "proxy-slow" => (FaultKind::Slow, Target::Proxy, "proxy".into()),
            "rbac" => (
                FaultKind::Rbac,
                Target::Remote(remote),
                format!("rbac-{remote}"),
            ),
            _ => {
                let (key, values) = VALUES[rng.random_range(0..VALUES.len())];
                let value = match rng.random_bool(0.5) {
                    true => format!("drift-{serial}"),
                    false => values[rng.random_range(0..values.len())].to_owned(),
                };
                (
                    FaultKind::Drift {
                        namespace: namespace(rng.random_range(0..config.namespaces.max(1))),
                        key: key.to_owned(),
                        value,
                    },
                    Target::Remote(remote),
                    format!("drift-{serial}"),
                )
            }
        };
        let hold = match (&fault, &target) {
            (FaultKind::Drift { .. }, _) => 0,
            // Long enough, at times, for the Lease to change hands (a paused leader) or for
            // the other replica to take it (a killed one).
            (_, Target::Leader | Target::Follower) => rng.random_range(2_000..=8_000u64),
            _ => hold,
        };
        let mut start = at as Ms;
        if let Some((_, until)) = busy.iter().find(|(k, _)| *k == key) {
            start = start.max(until + 500);
        }
        if start + hold >= end {
            if at as Ms >= end {
                out.sort_by_key(|f: &PlannedFault| f.at);
                return out;
            }
            continue;
        }
        busy.retain(|(k, _)| *k != key);
        // A restart takes its time on top of the hold: leave room for it.
        busy.push((key, start + hold + 3_000));
        out.push(PlannedFault {
            at: start,
            kind: fault,
            target,
            hold,
        });
    }
}

/// What faults act on.
pub struct Targets<'a> {
    pub env: &'a mesh_testenv::TestEnv,
    /// The registered replica's mesh (reaching the primary through the proxy).
    pub registered: &'a mesh_testenv::mesh::Mesh,
    /// The mesh the second replica starts from.
    pub mesh: &'a mesh_testenv::mesh::Mesh,
    pub proxy: &'a mesh_testenv::proxy::Proxy,
    /// (identity, process name) of the registered replica, then of the second one.
    pub replicas: [(&'a str, &'a str); 2],
    pub clock: &'a super::Clock,
    /// The Lease's holder as last seen.
    pub holder: &'a std::sync::Mutex<Option<String>>,
    /// One lock per target: a fault waits until the previous one of its target is healed (a
    /// restart can take longer than the plan left room for).
    pub locks: Locks,
}

/// The per-target locks of [`Targets`].
#[derive(Default)]
pub struct Locks(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
);

impl Locks {
    fn of(&self, key: String) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone()
    }
}

/// What a fault must have to itself: the apiserver, identity, replicas or proxy it acts on.
fn lock_key(planned: &PlannedFault) -> String {
    match (&planned.kind, &planned.target) {
        (FaultKind::Rbac, Target::Remote(i)) => format!("rbac-{i}"),
        (_, Target::Remote(i)) => format!("api-{i}"),
        (_, Target::Primary) => "api-0".to_owned(),
        (_, Target::Leader | Target::Follower) => "replicas".to_owned(),
        (_, Target::Proxy) => "proxy".to_owned(),
    }
}

impl Targets<'_> {
    /// Injects `planned`, holds it, heals it; returns what happened.
    pub async fn run(&self, id: usize, planned: &PlannedFault) -> Fault {
        let lock = self.locks.of(lock_key(planned));
        let _held = lock.lock().await;
        let (target, was_leader) = self.resolve(&planned.target);
        let planned = &self.drift_where_it_can(planned, &target).await;
        let start = self.clock.now();
        let result = self.inject_and_heal(planned, &target).await;
        Fault {
            id,
            kind: planned.kind.clone(),
            target,
            was_leader,
            start,
            end: self.clock.now(),
            error: result.err().map(|e| format!("{e:#}")),
        }
    }

    /// A drift planned on a namespace the remote lacks now (the workload deleted it) goes to
    /// the first of the pool the remote has instead.
    async fn drift_where_it_can(&self, planned: &PlannedFault, remote: &str) -> PlannedFault {
        let FaultKind::Drift {
            namespace,
            key,
            value,
        } = &planned.kind
        else {
            return planned.clone();
        };
        let Ok(cluster) = self.env.cluster(remote) else {
            return planned.clone();
        };
        let Ok(client) = cluster.client().await else {
            return planned.clone();
        };
        let Ok(list) = Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
        else {
            return planned.clone();
        };
        let present: Vec<String> = list
            .items
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .map(|ns| ns.name_any())
            .filter(|name| name.starts_with("soak-"))
            .collect();
        if present.contains(namespace) {
            return planned.clone();
        }
        let Some(instead) = present.into_iter().min() else {
            return planned.clone();
        };
        PlannedFault {
            kind: FaultKind::Drift {
                namespace: instead,
                key: key.clone(),
                value: value.clone(),
            },
            ..planned.clone()
        }
    }

    fn resolve(&self, target: &Target) -> (String, bool) {
        let holder = self
            .holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let leads = |identity: &str| holder.as_deref() == Some(identity);
        match target {
            Target::Remote(i) => (self.env.clusters()[*i].name.clone(), false),
            Target::Primary => (self.env.primary().name.clone(), false),
            Target::Proxy => ("proxy".into(), false),
            Target::Leader | Target::Follower => {
                let want_leader = *target == Target::Leader;
                let (identity, _) = self
                    .replicas
                    .iter()
                    .find(|(id, _)| leads(id) == want_leader)
                    .unwrap_or(&self.replicas[0]);
                ((*identity).to_owned(), leads(identity))
            }
        }
    }

    async fn inject_and_heal(&self, planned: &PlannedFault, target: &str) -> anyhow::Result<()> {
        let hold = Duration::from_millis(planned.hold);
        let env = self.env;
        match (&planned.kind, &planned.target) {
            (FaultKind::Pause, Target::Remote(_) | Target::Primary) => {
                env.pause_apiserver(target)?;
                tokio::time::sleep(hold).await;
                env.resume_apiserver(target).await
            }
            (FaultKind::Kill, Target::Remote(_) | Target::Primary) => {
                env.stop_apiserver(target)?;
                tokio::time::sleep(hold).await;
                env.start_apiserver(target).await
            }
            (FaultKind::Pause, _) => {
                let process = self.process(target);
                env.pause_process(process)?;
                tokio::time::sleep(hold).await;
                env.resume_process(process)
            }
            (FaultKind::Kill, _) => {
                let process = self.process(target);
                env.stop_process(process)?;
                tokio::time::sleep(hold).await;
                if target == self.replicas[0].0 {
                    self.registered.start_webhook(env).await
                } else {
                    self.mesh.start_replica(env, process).await.map(|_| ())
                }
            }
            (FaultKind::Freeze, _) => {
                self.proxy.freeze();
                tokio::time::sleep(hold).await;
                self.proxy.thaw();
                Ok(())
            }
            (FaultKind::Slow, _) => {
                let until = tokio::time::Instant::now() + hold;
                while tokio::time::Instant::now() < until {
                    self.proxy.freeze();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    self.proxy.thaw();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.proxy.thaw();
                Ok(())
            }
            (FaultKind::Rbac, _) => self.revoke_rights(target, hold).await,
            (
                FaultKind::Drift {
                    namespace,
                    key,
                    value,
                },
                _,
            ) => {
                let mut cmd = tokio::process::Command::from(env.kubectl(env.cluster(target)?));
                cmd.args(["label", "namespace", namespace, &format!("{key}={value}")])
                    .args(["--overwrite", "--request-timeout=20s"]);
                let output = cmd.output().await.context("running kubectl")?;
                anyhow::ensure!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                Ok(())
            }
        }
    }

    fn process(&self, identity: &str) -> &str {
        self.replicas
            .iter()
            .find(|(id, _)| *id == identity)
            .map_or(self.replicas[0].1, |(_, p)| *p)
    }

    /// Deletes the remote sync identity's binding, holds, and creates it again (retried until
    /// it is back: a remote fault may overlap).
    async fn revoke_rights(&self, remote: &str, hold: Duration) -> anyhow::Result<()> {
        let client = self.env.cluster(remote)?.client().await?;
        let api: Api<ClusterRoleBinding> = Api::all(client);
        let binding = api.get(SYNC_BINDING).await.context("reading the binding")?;
        api.delete(SYNC_BINDING, &DeleteParams::default())
            .await
            .context("deleting the binding")?;
        tokio::time::sleep(hold).await;
        let restored = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: binding.metadata.name.clone(),
                labels: binding.metadata.labels.clone(),
                annotations: binding.metadata.annotations.clone(),
                ..ObjectMeta::default()
            },
            ..binding
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match api.create(&PostParams::default(), &restored).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(error).context("restoring the binding");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secs: u64) -> FaultConfig {
        FaultConfig {
            duration: Duration::from_secs(secs),
            every: Duration::from_secs(4),
            remotes: 3,
            namespaces: 8,
        }
    }

    #[test]
    fn the_same_seed_plans_the_same_faults() {
        assert_eq!(plan(3, &config(600)), plan(3, &config(600)));
        assert_ne!(plan(3, &config(600)), plan(4, &config(600)));
    }

    #[test]
    fn a_minute_has_every_kind_of_fault_and_no_target_twice_at_once() {
        for seed in 0..20 {
            let faults = plan(seed, &config(60));
            let has = |f: &dyn Fn(&PlannedFault) -> bool| faults.iter().any(f);
            assert!(
                has(&|f| f.kind == FaultKind::Pause && matches!(f.target, Target::Remote(_))),
                "seed {seed}"
            );
            assert!(
                has(&|f| f.kind == FaultKind::Kill && matches!(f.target, Target::Remote(_))),
                "seed {seed}"
            );
            assert!(
                has(&|f| f.kind == FaultKind::Pause && f.target == Target::Primary),
                "seed {seed}"
            );
            assert!(
                has(&|f| f.kind == FaultKind::Kill && f.target == Target::Primary),
                "seed {seed}"
            );
            assert!(
                has(&|f| f.kind == FaultKind::Pause
                    && matches!(f.target, Target::Leader | Target::Follower)),
                "seed {seed}"
            );
            assert!(
                has(&|f| f.kind == FaultKind::Kill
                    && matches!(f.target, Target::Leader | Target::Follower)),
                "seed {seed}"
            );
            assert!(has(&|f| f.kind == FaultKind::Freeze), "seed {seed}");
            assert!(has(&|f| f.kind == FaultKind::Slow), "seed {seed}");
            assert!(has(&|f| f.kind == FaultKind::Rbac), "seed {seed}");
            assert!(
                has(&|f| matches!(f.kind, FaultKind::Drift { .. })),
                "seed {seed}"
            );
            for (i, a) in faults.iter().enumerate() {
                for b in &faults[i + 1..] {
                    let same = a.target == b.target
                        && !matches!(a.kind, FaultKind::Drift { .. })
                        && !matches!(b.kind, FaultKind::Drift { .. })
                        && (a.kind == FaultKind::Rbac) == (b.kind == FaultKind::Rbac);
                    if same {
                        assert!(
                            b.at >= a.at + a.hold,
                            "seed {seed}: {a:?} and {b:?} overlap"
                        );
                    }
                }
            }
        }
    }
}
