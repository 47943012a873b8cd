//! `mesh-bench soak`: random operations on the primary and random faults of every part, on a
//! real environment (a primary, remotes with their guards, two webhook replicas electing a
//! leader), all recorded; then a checker over the recorded history.
//!
//! - `workload`: the operations, planned from the seed, run with kubectl;
//! - `faults`: the faults, planned from the seed, injected and healed;
//! - `recorder`: the watches of every cluster's namespaces and of the Lease, the replicas'
//!   logged writes, the final listing;
//! - `history`: what was recorded; `checker`: the judge, pure; `report`: the markdown.

pub mod checker;
pub mod faults;
pub mod history;
pub mod recorder;
pub mod report;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::future::join_all;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use mesh_testenv::mesh::{Mesh, MeshOptions, WEBHOOK_PROCESS};
use mesh_testenv::proxy::Proxy;
use mesh_testenv::{Options, TestEnv};

use history::{History, Ms, Snapshot};

/// Milliseconds since the run started, and the wall clock it started at (to place the
/// replicas' log lines on the same axis).
#[derive(Clone, Debug)]
pub struct Clock {
    start: Instant,
    unix_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// A clock whose zero is this Unix time (tests).
    pub fn at_unix_ms(unix_ms: u64) -> Self {
        Self {
            start: Instant::now(),
            unix_ms,
        }
    }

    /// The wall clock (Unix ms) at its zero.
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// The (UTC) year at its zero.
    pub fn year(&self) -> i64 {
        // Civil from days (Howard Hinnant's algorithm).
        let z = (self.unix_ms / 86_400_000) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        yoe + era * 400 + i64::from(month <= 2)
    }

    pub fn now(&self) -> Ms {
        self.start.elapsed().as_millis() as Ms
    }

    /// When `Instant` offset `ms` comes.
    pub fn instant(&self, ms: Ms) -> tokio::time::Instant {
        (self.start + Duration::from_millis(ms)).into()
    }

    /// An RFC 3339 UTC timestamp (`2026-12-01T08:00:01.5Z`) on this clock; `None` before its
    /// zero or when it does not parse.
    pub fn from_rfc3339(&self, text: &str) -> Option<Ms> {
        let text = text.strip_suffix('Z')?;
        let (date, time) = text.split_once('T')?;
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
        let (h, min, s) = (t.next()??, t.next()??, t.next()??);
        let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let unix = ((days * 24 + h) * 60 + min) * 60 + s;
        let unix_ms = unix * 1000 + millis;
        u64::try_from(unix_ms - self.unix_ms as i64).ok()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub seed: u64,
    pub duration: Duration,
    /// Operations per second.
    pub rate: f64,
    /// Mean gap between faults.
    pub fault_every: Duration,
    pub remotes: usize,
    pub namespaces: usize,
    pub resync_period: Duration,
    pub backoff_max: Duration,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Where the environment, the history and the logs go (a temporary directory if unset).
    pub dir: Option<PathBuf>,
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            duration: Duration::from_secs(60),
            rate: 2.0,
            fault_every: Duration::from_secs(4),
            remotes: 3,
            namespaces: 8,
            resync_period: Duration::from_secs(5),
            backoff_max: Duration::from_secs(4),
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            dir: None,
        }
    }
}

/// What a run produced.
pub struct Soak {
    pub history: History,
    pub verdict: checker::Verdict,
    pub report: String,
}

/// The second replica's identity and process name.
const SECOND: &str = "replica-b";
/// The registered replica's identity (see `Mesh::webhook_command`).
const FIRST: &str = "local-mesh-webhook";
/// The primary's policy that refuses some managed-label values.
const REFUSE_POLICY: &str = "soak-refuse";

pub async fn run(options: &MeshOptions, config: &SoakConfig) -> anyhow::Result<Soak> {
    let workload_config = workload::WorkloadConfig {
        duration: config.duration,
        rate: config.rate,
        namespaces: config.namespaces,
        remotes: config.remotes,
    };
    let ops_plan = workload::plan(config.seed, &workload_config);
    let faults_plan = faults::plan(
        config.seed,
        &faults::FaultConfig {
            duration: config.duration,
            every: config.fault_every,
            remotes: config.remotes,
            namespaces: config.namespaces,
        },
    );
    eprintln!(
        "[soak] seed {}: {} operations and {} faults planned over {:?}",
        config.seed,
        ops_plan.len(),
        faults_plan.len(),
        config.duration
    );

    let env = TestEnv::start(Options {
        remotes: config.remotes,
        dir: config.dir.clone(),
        ..Options::default()
    })
    .await?;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut webhook_args = vec!["--log-format".to_owned(), "json".to_owned()];
    for (flag, value) in [
        ("--lease-duration", config.lease_duration),
        ("--renew-deadline", config.renew_deadline),
        ("--retry-period", config.retry_period),
        ("--backoff-max", config.backoff_max),
    ] {
        webhook_args.extend([flag.to_owned(), ms(value)]);
    }
    let mesh = Mesh::start(
        &env,
        MeshOptions {
            resync_period: config.resync_period,
            attach_remotes: true,
            webhook_args,
            ..options.clone()
        },
    )
    .await?;
    // The registered replica again, reaching the primary through a proxy the faults can
    // freeze or slow (same identity: it takes its own Lease back at once).
    let proxy = Proxy::start(env.primary()).await?;
    let proxied = env.dir().join("mesh-webhook-through-proxy.kubeconfig");
    proxy.kubeconfig(mesh.webhook_kubeconfig(), &env.primary().server, &proxied)?;
    mesh.stop_webhook(&env)?;
    let registered = mesh.with_webhook_kubeconfig(proxied);
    registered.start_webhook(&env).await?;
    registered.wait_webhook_effective(&env).await?;
    mesh.start_replica(&env, SECOND).await?;
    install_refuse_policy(&env).await?;
    let timeout = webhook_timeout(&env).await?;

    let clients = {
        let mut c = Vec::new();
        for cluster in env.clusters() {
            c.push(cluster.client().await?);
        }
        c
    };
    for i in 0..config.namespaces {
        for client in &clients {
            crate::bed::create_namespaces(
                client,
                vec![(workload::namespace(i), Default::default())],
                1,
            )
            .await?;
        }
    }
    let clock = Clock::new();
    let recorder =
        recorder::Recorder::start(clients.clone(), "mesh-webhook", clock.clone()).await?;
    recorder.mark_started();
    eprintln!(
        "[soak] environment ready; running for {:?}",
        config.duration
    );

    // The operations and faults, each at its planned offset.
    let kubectl = env.binaries().kubectl();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(4));
    let ops = join_all(ops_plan.iter().enumerate().map(|(id, planned)| {
        let semaphore = semaphore.clone();
        let kubectl = kubectl.clone();
        let clock = &clock;
        let kubeconfig = &env.clusters()[planned.cluster].kubeconfig;
        async move {
            tokio::time::sleep_until(clock.instant(planned.at)).await;
            let _permit = semaphore.acquire().await;
            workload::run(&kubectl, kubeconfig, id, planned, clock).await
        }
    }));
    let targets = faults::Targets {
        env: &env,
        registered: &registered,
        mesh: &mesh,
        proxy: &proxy,
        replicas: [(FIRST, WEBHOOK_PROCESS), (SECOND, SECOND)],
        clock: &clock,
        holder: &recorder.holder,
        locks: faults::Locks::default(),
    };
    let faults = join_all(faults_plan.iter().enumerate().map(|(id, planned)| {
        let (clock, targets) = (&clock, &targets);
        async move {
            tokio::time::sleep_until(clock.instant(planned.at)).await;
            eprintln!(
                "[soak] {:>6} ms fault #{id}: {:?} {:?}",
                clock.now(),
                planned.kind,
                planned.target
            );
            targets.run(id, planned).await
        }
    }));
    let (ops, faults) = tokio::join!(ops, faults);
    let faults_stopped = clock.now();
    eprintln!("[soak] faults stopped at {faults_stopped} ms; waiting for convergence");

    // One resync period plus the backoff cap, and a Lease's handover, for the remotes to equal
    // the primary; then a listing of every cluster.
    let mut draft = History {
        seed: config.seed,
        start_unix_ms: clock.unix_ms(),
        clusters: env.clusters().iter().map(|c| c.name.clone()).collect(),
        rule: history::Rule {
            managed: mesh_core::labels::SyncRule::default()
                .managed_keys()
                .map(str::to_owned)
                .collect(),
            excluded: mesh_core::labels::SyncRule::default()
                .excluded_namespaces()
                .map(str::to_owned)
                .collect(),
        },
        webhook_timeout_ms: timeout.as_millis() as Ms,
        faults_stopped,
        ops,
        faults,
        ..History::default()
    };
    let allowed =
        config.resync_period + config.backoff_max + config.lease_duration + Duration::from_secs(5);
    let deadline = Instant::now() + allowed;
    let snapshot = loop {
        let listed = recorder::list_all(&clients, clock.now()).await;
        if let Ok(clusters) = listed {
            let snapshot = Snapshot {
                at: clock.now(),
                clusters,
            };
            draft.snapshot = Some(snapshot.clone());
            let converged = !checker::check(&draft, &checker::CheckConfig::default())
                .violations
                .iter()
                .any(|v| v.kind == checker::ViolationKind::NotConverged);
            if converged || Instant::now() > deadline {
                break Some(snapshot);
            }
        } else if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The watches' last events of what the listing showed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (events, leases) = recorder.finish();
    // Both replicas' logs, merged in time.
    let logged = |read: fn(&Path, &str, &Clock) -> Vec<history::ReplicaWrite>| {
        let mut all: Vec<_> = [(WEBHOOK_PROCESS, FIRST), (SECOND, SECOND)]
            .into_iter()
            .flat_map(|(process, identity)| {
                read(&env.dir().join(format!("{process}.log")), identity, &clock)
            })
            .collect();
        all.sort_by_key(|w| w.at);
        all
    };
    let writes = logged(recorder::replica_writes);
    let pushes = logged(recorder::replica_pushes);
    let fail_opens = recorder::fail_opens(&env.primary().apiserver_log(), &clock);
    let history = History {
        recorded: history::Recorded {
            events,
            leases,
            writes,
            pushes,
            fail_opens,
        },
        snapshot,
        ..draft
    };
    let verdict = checker::check(&history, &checker::CheckConfig::default());
    let settings = format!(
        "duration {:?}, {} operations/s, a fault every {:?} on average, {} remotes, {} namespaces, resync {:?}, backoff cap {:?}, Lease {:?}/{:?}/{:?}, webhook timeout {:?}; convergence allowed {:?} after the faults stopped",
        config.duration,
        config.rate,
        config.fault_every,
        config.remotes,
        config.namespaces,
        config.resync_period,
        config.backoff_max,
        config.lease_duration,
        config.renew_deadline,
        config.retry_period,
        timeout,
        allowed
    );
    let report = report::render(&history, &verdict, &settings);
    let path = env.dir().join("soak-history.json");
    if let Ok(json) = serde_json::to_string(&history) {
        let _ = std::fs::write(&path, json);
        eprintln!("[soak] history written to {}", path.display());
    }
    Ok(Soak {
        history,
        verdict,
        report,
    })
}

/// The checker and the report over a history recorded earlier (`soak-history.json`).
pub fn recheck(path: &std::path::Path) -> anyhow::Result<Soak> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let history: History = serde_json::from_str(&text).context("parsing the history")?;
    let verdict = checker::check(&history, &checker::CheckConfig::default());
    let report = report::render(
        &history,
        &verdict,
        &format!("checked again from {}", path.display()),
    );
    Ok(Soak {
        history,
        verdict,
        report,
    })
}

/// A ValidatingAdmissionPolicy on the primary that refuses managed-label values starting with
/// `refused-`: it runs after the mutating webhook, which has pushed the value by then.
async fn install_refuse_policy(env: &TestEnv) -> anyhow::Result<()> {
    let manifest = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {REFUSE_POLICY}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["namespaces"]
  validations:
  - expression: "!has(object.metadata.labels) || !object.metadata.labels.exists(k, object.metadata.labels[k].startsWith('{prefix}'))"
    message: "values starting with {prefix} are refused"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {REFUSE_POLICY}
spec:
  policyName: {REFUSE_POLICY}
  validationActions: [Deny]
"#,
        prefix = workload::REFUSED_PREFIX
    );
    let path = env.dir().join("soak-refuse-policy.yaml");
    std::fs::write(&path, manifest)?;
    let mut apply = env.kubectl(env.primary());
    apply.arg("apply").arg("-f").arg(&path);
    mesh_testenv::mesh::run(apply).await?;
    // The apiserver loads policies asynchronously: wait until a dry run is refused.
    let probe = format!("soak-probe={}probe", workload::REFUSED_PREFIX);
    anyhow::ensure!(
        mesh_testenv::mesh::dry_run_label_until(env, &probe, "ValidatingAdmissionPolicy").await?,
        "the primary did not enforce {REFUSE_POLICY} within 60s"
    );
    Ok(())
}

/// The timeout of the installed webhook configuration.
async fn webhook_timeout(env: &TestEnv) -> anyhow::Result<Duration> {
    let configs = kube::Api::<MutatingWebhookConfiguration>::all(env.primary().client().await?);
    let config = configs.get(crate::bed::WEBHOOK_CONFIGURATION).await?;
    let seconds = config
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.timeout_seconds)
        .context("the webhook configuration sets no timeout")?;
    Ok(Duration::from_secs(u64::try_from(seconds)?))
}
