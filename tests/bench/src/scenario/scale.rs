//! `scale`: many remotes and many namespaces on one machine.
//!
//! A primary and `remotes` remotes (20 by default, one shared etcd), each with `namespaces`
//! namespaces (10,000 by default), half of them labelled `istio-injection=enabled` on the
//! primary. The controller-manager's per-namespace controllers (default ServiceAccount,
//! `kube-root-ca.crt`) are left out: they would triple the writes of creating 210,000
//! namespaces and kubectl-mesh needs neither.
//!
//! Measured, each beside a baseline from the same run:
//! - cold convergence: every remote attached with the real `kubectl-mesh attach`, a few at a
//!   time, until every MeshCluster reports Synced=True and every remote's watch shows every
//!   labelled namespace; beside the parallel floor: the same number of PATCHes written directly
//!   to every remote at once, with the reconciler's concurrency, plus one LIST each;
//! - converged resync: the remote apiservers' own request counters over at least two resync
//!   periods, per remote and period, and the writes the watches see (0 expected);
//! - the webhook's resident memory throughout, and per (remote x namespace), before and after
//!   a further quarter of the namespaces is labelled;
//! - propagation of one label change to every remote, beside the same change written to every
//!   remote in parallel by a plain client;
//! - the same with one remote's apiserver frozen (SIGSTOP): the other remotes and the primary's
//!   answer, against the webhook's push deadline; then the frozen remote resumed and converged.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, future::try_join_all, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use mesh_core::cluster::{CONDITION_SYNCED, MeshCluster};
use mesh_testenv::Options;
use mesh_testenv::mesh::MeshOptions;
use tokio::sync::mpsc;

use crate::bed::{BENCH_LABEL, Bed, create_namespaces, half_labelled, set_label};
use crate::https::sample;
use crate::procfs::{Memory, mib};
use crate::scenario::resync::{
    FLOOR_LABEL, MANAGED_LABEL, Remote, WRITE_CONCURRENCY, observe, watch_clusters,
};
use crate::stats::{Row, Summary, latency_table, ms, ratio};
use crate::watch::NamespaceWatch;

const SCENARIO: &str = "scale";
/// Namespaces created concurrently per cluster while setting up (every cluster at once).
const CREATE_CONCURRENCY: usize = 8;
/// `kubectl-mesh attach` processes run at once.
const ATTACH_CONCURRENCY: usize = 4;
/// Page size of the reconciler's full LIST (`LIST_PAGE` in webhook/core/src/sync.rs).
const LIST_PAGE: usize = 500;
/// mesh-webhook's `--push-deadline` default (webhook/src/args.rs), which the bed runs with.
const PUSH_DEADLINE: Duration = Duration::from_secs(2);
/// Namespaces the propagation changes rotate over.
const ROTATING: usize = 8;
/// Unmeasured changes before each measured series.
const WARMUP: usize = 3;
/// Quiet time between two measured changes (the reconciler's follow-up sync is debounced
/// 100 ms).
const PAUSE: Duration = Duration::from_millis(150);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1200);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const RESUME_TIMEOUT: Duration = Duration::from_secs(180);
/// Targets.
const TARGET_COLD: Duration = Duration::from_secs(30);
const TARGET_RSS_KIB: u64 = 64 * 1024;
/// Bytes per (remote x namespace) may vary this much when more namespaces are labelled
/// before it counts as growing with them (the allocator's noise).
const GROWTH_TOLERANCE: f64 = 1.10;

pub struct Config {
    pub remotes: usize,
    pub namespaces: usize,
    pub resync_period: Duration,
    pub changes: usize,
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    eprintln!(
        "[bench] scale: {} remotes x {} namespaces",
        config.remotes, config.namespaces
    );
    let r = config.remotes.max(2);
    let n = config.namespaces.max(4);
    let started = Instant::now();
    let bed = Bed::start_env(
        Options {
            remotes: r,
            dir,
            per_namespace_controllers: false,
            ..Options::default()
        },
        options,
        false,
        config.resync_period,
        false,
    )
    .await?;
    let bed_up = started.elapsed();
    eprintln!(
        "[bench]   {} clusters and the mesh up in {bed_up:.1?}",
        r + 1
    );
    let pid = bed.webhook_pid;
    let sampler = Sampler::start(pid);
    let idle = Memory::of(pid)?;

    // Namespaces on every cluster at once; on the primary, every other one labelled.
    let names: Vec<String> = (0..n).map(|i| format!("sc-{i:05}")).collect();
    let labelled_target = n.div_ceil(2);
    let step = Instant::now();
    let mut creations = Vec::new();
    for (index, cluster) in bed.env.clusters().iter().enumerate() {
        let namespaces = half_labelled(&names, SCENARIO, index == 0, MANAGED_LABEL);
        let client = cluster.client().await?;
        let name = cluster.name.clone();
        creations.push(async move {
            let started = Instant::now();
            create_namespaces(&client, namespaces, CREATE_CONCURRENCY).await?;
            eprintln!(
                "[bench]   {name}: {n} namespaces created in {:.1?}",
                started.elapsed()
            );
            anyhow::Ok(())
        });
    }
    eprintln!(
        "[bench]   creating {n} namespaces on each of {} clusters, {CREATE_CONCURRENCY} at a time per cluster",
        r + 1
    );
    try_join_all(creations).await?;
    let created = step.elapsed();
    eprintln!(
        "[bench]   {} namespaces created in {created:.1?} ({:.0}/s)",
        n * (r + 1),
        (n * (r + 1)) as f64 / created.as_secs_f64()
    );
    let step = Instant::now();
    let mut clusters_total = 0;
    for cluster in bed.env.clusters() {
        clusters_total = wait_active(&cluster.client().await?, n).await?;
    }
    let settled = step.elapsed();
    eprintln!("[bench]   every namespace Active; checked in {settled:.1?}");
    let loaded = Memory::of(pid)?;

    let remote_clients = bed.remote_clients().await?;
    let step = Instant::now();
    let mut watch =
        NamespaceWatch::start(remote_clients.clone(), &format!("{BENCH_LABEL}={SCENARIO}")).await?;
    eprintln!("[bench]   remote watches listed in {:.1?}", step.elapsed());
    let mut remotes: Vec<Remote> = bed
        .env
        .remotes()
        .iter()
        .map(|c| Remote {
            name: c.name.clone(),
            ..Remote::default()
        })
        .collect();

    // The parallel floor of the cold sync.
    eprintln!("[bench]   parallel floor: LIST + {labelled_target} PATCHes on every remote");
    let to_write: Vec<String> = names.iter().step_by(2).cloned().collect();
    let floor = cold_floor(&remote_clients, &to_write, &mut watch).await?;
    eprintln!(
        "[bench]   parallel floor: writes returned {:.1?}, seen {:.1?}",
        floor.returned, floor.seen
    );
    watch.drain();
    let before_attach = Memory::of(pid)?;

    // Cold convergence.
    let (mc_tx, mut mc_events) = mpsc::unbounded_channel();
    let mc_watch = tokio::spawn(watch_clusters(bed.primary().await?, mc_tx));
    let times: AttachTimes = Arc::new(Mutex::new(vec![(None, None); r]));
    let attach_started = Instant::now();
    eprintln!("[bench]   attaching {r} remotes, {ATTACH_CONCURRENCY} at a time");
    let mut attaches = Some(tokio::spawn(attach_all(
        bed.mesh.clone(),
        bed.env.remotes().to_vec(),
        times.clone(),
    )));
    let deadline = attach_started + CONVERGE_TIMEOUT;
    loop {
        observe(&mut watch, &mut mc_events, &mut remotes, labelled_target).await?;
        if let Some(handle) = attaches.take_if(|h| h.is_finished()) {
            handle.await.context("the attach task")??;
            eprintln!(
                "[bench]   every attach returned after {:.1?}",
                attach_started.elapsed()
            );
        }
        if attaches.is_none()
            && remotes
                .iter()
                .all(|r| r.converged.is_some() && r.synced.is_some())
        {
            break;
        }
        if Instant::now() > deadline {
            let pending: Vec<String> = remotes
                .iter()
                .filter(|r| r.converged.is_none() || r.synced.is_none())
                .map(|r| format!("{} ({} of {labelled_target})", r.name, r.labelled.len()))
                .collect();
            bail!(
                "not converged and Synced within {CONVERGE_TIMEOUT:?} of the first attach: {pending:?}"
            );
        }
    }
    for (remote, (started, returned)) in remotes.iter_mut().zip(lock(&times).iter()) {
        remote.attach_started = *started;
        remote.attach_returned = *returned;
    }
    let cold_end = remotes
        .iter()
        .filter_map(|r| Some(r.converged?.max(r.synced?)))
        .max()
        .context("no remote converged")?;
    let cold = cold_end - attach_started;
    let converged = Memory::of(pid)?;
    let cold_peak = sampler.peak_between(attach_started, Instant::now());
    eprintln!("[bench]   cold convergence {cold:.1?}");

    // Converged resync.
    eprintln!(
        "[bench]   converged resync: at least 2 periods of {:?}",
        config.resync_period
    );
    let resync = converged_resync(
        &bed,
        &remote_clients,
        &mut watch,
        &mut mc_events,
        &mut remotes,
        labelled_target,
        config.resync_period,
    )
    .await?;
    let after_resync = Memory::of(pid)?;

    // More namespaces labelled: does the memory per (remote x namespace) grow with them?
    let primary_client = bed.primary().await?;
    let primary: Api<Namespace> = Api::all(primary_client.clone());
    let more: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 1)
        .map(|(_, name)| name.clone())
        .collect();
    let grown_target = labelled_target + more.len();
    eprintln!(
        "[bench]   labelling {} more namespaces on the primary",
        more.len()
    );
    let step = Instant::now();
    let labelling = {
        let primary = primary.clone();
        let more = more.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            stream::iter(more)
                .map(|name| {
                    let api = primary.clone();
                    async move { set_label(&api, &name, MANAGED_LABEL, Some("enabled")).await }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .try_for_each(|()| async { Ok(()) })
                .await?;
            anyhow::Ok(started.elapsed())
        })
    };
    let deadline = step + CONVERGE_TIMEOUT;
    while remotes.iter().any(|r| r.labelled.len() < grown_target) {
        if Instant::now() > deadline {
            bail!(
                "the {} more labelled namespaces not on every remote within {CONVERGE_TIMEOUT:?}",
                more.len()
            );
        }
        observe(&mut watch, &mut mc_events, &mut remotes, labelled_target).await?;
    }
    let grown_in = step.elapsed();
    let labelled_in = labelling.await.context("the labelling task")??;
    mc_watch.abort();
    let grown = Memory::of(pid)?;
    eprintln!("[bench]   every remote shows {grown_target} labelled after {grown_in:.1?}");

    // Propagation, then with the last remote frozen.
    let mut expected: Vec<Option<&'static str>> = (0..n)
        .map(|i| (i % 2 == 0 || i % 4 == 1).then_some("enabled"))
        .collect();
    let rotating: Vec<usize> = (0..ROTATING.min(n))
        .map(|k| k * (n / ROTATING.min(n)))
        .collect();
    let remote_apis: Vec<Api<Namespace>> =
        remote_clients.iter().map(|c| Api::all(c.clone())).collect();
    let mut changes = Changes {
        primary: primary.clone(),
        remote_apis,
        watch: &mut watch,
        names: &names,
        expected: &mut expected,
        rotating,
        step: 0,
    };
    eprintln!("[bench]   propagation: {} changes", config.changes);
    let healthy = changes.measure(r, config.changes).await?;
    let frozen_name = bed.env.remotes()[r - 1].name.clone();
    eprintln!("[bench]   freezing {frozen_name}'s apiserver (SIGSTOP)");
    bed.env.pause_apiserver(&frozen_name)?;
    let frozen = changes.measure(r - 1, config.changes).await;
    let resumed_at = Instant::now();
    bed.env.resume_apiserver(&frozen_name).await?;
    let frozen = frozen?;
    eprintln!("[bench]   {frozen_name} resumed; waiting for it to converge");
    let resume = wait_converged(
        &remote_clients[r - 1],
        &primary_client,
        &frozen_name,
        &names,
        changes.expected,
    )
    .await?;
    let resume_converged = resume - resumed_at;
    let end = Memory::of(pid)?;
    let samples = sampler.stop();
    let peak_all = samples.iter().map(|s| s.1).max().unwrap_or(0);

    // Figures.
    let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
    let mut out = format!(
        "## scale\n\n{n} namespaces on the primary ({labelled_target} labelled `{MANAGED_LABEL}=enabled`) and {n} unlabelled on each of {r} remotes ({} namespaces in all, {clusters_total} per cluster with the system ones); one shared etcd; the controller-manager without its per-namespace controllers (no default ServiceAccount, no `kube-root-ca.crt`). Resync period {:?}, push deadline {:?}. Times observed by watches (MeshClusters on the primary, bench namespaces on each remote).\n\n\
         Setup: {} clusters and the mesh up in {} s; {} namespaces created in {} s ({:.0}/s, {CREATE_CONCURRENCY} at a time per cluster, every cluster at once); all Active, checked in {} s.\n\n",
        n * (r + 1),
        config.resync_period,
        PUSH_DEADLINE,
        r + 1,
        secs(bed_up),
        n * (r + 1),
        secs(created),
        (n * (r + 1)) as f64 / created.as_secs_f64(),
        secs(settled),
    );

    // Cold convergence.
    let attach_times: Vec<Duration> = remotes
        .iter()
        .filter_map(|r| Some(r.attach_returned? - r.attach_started?))
        .collect();
    let syncs: Vec<Duration> = remotes
        .iter()
        .filter_map(|r| Some(r.converged? - r.created?))
        .collect();
    let attach_summary = Summary::of(&attach_times).context("no attach time")?;
    let sync_summary = Summary::of(&syncs).context("no sync time")?;
    let cold_writes: u64 = remotes.iter().map(|r| r.writes_at_convergence).sum();
    out.push_str(&format!(
        "### Cold convergence\n\n\
         | series | s | vs parallel floor |\n|---|---:|---:|\n\
         | parallel floor: one LIST and {labelled_target} label PATCHes per remote ({WRITE_CONCURRENCY} at a time), all {r} remotes at once, until every watch showed them (baseline) | {} | - |\n\
         | parallel floor: until the last PATCH returned | {} | {} |\n\
         | **first attach started -> every MeshCluster Synced=True and every remote showing all {labelled_target} labelled** | **{}** | **{}** |\n\
         | `kubectl-mesh attach` command ({ATTACH_CONCURRENCY} at a time), p50 / max | {} / {} | - |\n\
         | MeshCluster created -> that remote converged, p50 / max | {} / {} | {} (max) |\n\n\
         The floor's LIST took {} s p50 across remotes. Label writes seen on the remotes' watches during the cold sync: {cold_writes} (expected {}).\n\n\
         **Target: cold convergence <= {} s on 2 cores: {} s: {}.**\n\n",
        secs(floor.seen),
        secs(floor.returned),
        ratio(floor.returned, floor.seen),
        secs(cold),
        ratio(cold, floor.seen),
        secs(attach_summary.p50),
        secs(attach_summary.max),
        secs(sync_summary.p50),
        secs(sync_summary.max),
        ratio(sync_summary.max, floor.seen),
        secs(floor.list_p50),
        r * labelled_target,
        TARGET_COLD.as_secs(),
        secs(cold),
        crate::verdict(cold <= TARGET_COLD),
    ));

    // Converged resync.
    let pages = clusters_total.div_ceil(LIST_PAGE);
    out.push_str(&format!(
        "### Converged resync\n\n{} s after convergence, over {} s ({:.1} resync periods; every remote's `syncs_total{{result=\"ok\"}}` rose by {} to {}). Namespace requests each remote's apiserver counted (`apiserver_request_total{{resource=\"namespaces\"}}`, every client: the webhook's, the controller-manager's, this tool's watch), per remote and resync period:\n\n\
         | verb | p50 | max | all remotes, whole window |\n|---|---:|---:|---:|\n",
        secs(resync.after_convergence),
        secs(resync.window),
        resync.periods,
        resync.syncs_min,
        resync.syncs_max,
    ));
    let mut list_max = 0.0f64;
    for verb in VERBS {
        let per_period: Vec<f64> = resync
            .requests
            .iter()
            .map(|counts| counts.get(verb) / resync.periods)
            .collect();
        let total: f64 = resync.requests.iter().map(|c| c.get(verb)).sum();
        let (p50, max) = median_max(&per_period);
        if *verb == "LIST" {
            list_max = max;
        }
        out.push_str(&format!("| {verb} | {p50:.1} | {max:.1} | {total:.0} |\n"));
    }
    out.push_str(&format!(
        "\nOne full LIST of a remote's {clusters_total} namespaces is {pages} LIST requests (pages of {LIST_PAGE}). Baseline: a reconciler that lists every remote once per period makes {pages} LIST requests per remote and period.\n\n\
         **Target: 0 writes: {} seen by the watches, {:.0} `drift_corrections_total` added: {}. Target: no full LIST per period with the remote watch healthy: at most {list_max:.1} LIST per remote and period (a full list is {pages}): {}.**\n\n",
        resync.writes,
        resync.corrections,
        crate::verdict(resync.writes == 0 && resync.corrections == 0.0),
        crate::verdict(list_max < pages as f64),
    ));

    // Memory.
    let per_pair =
        |rss: u64| (rss.saturating_sub(before_attach.rss_kib) * 1024) as f64 / (r * n) as f64;
    let bytes_converged = per_pair(converged.rss_kib);
    let bytes_grown = per_pair(grown.rss_kib);
    let row = |what: String, kib: u64| {
        format!(
            "| {what} | {} | {:.2}x |\n",
            mib(kib),
            kib as f64 / idle.rss_kib as f64
        )
    };
    out.push_str("### Memory of mesh-webhook\n\nResident memory (`/proc/<pid>/status`, sampled every 50 ms).\n\n| moment | RSS MiB | ratio to idle |\n|---|---:|---:|\n");
    out.push_str(&row(
        "idle: mesh installed, nothing attached (baseline)".into(),
        idle.rss_kib,
    ));
    out.push_str(&row(
        format!("{n} namespaces on the primary ({labelled_target} labelled)"),
        loaded.rss_kib,
    ));
    out.push_str(&row(
        "before attaching (floor written)".into(),
        before_attach.rss_kib,
    ));
    out.push_str(&row(
        "peak sampled during the cold convergence".into(),
        cold_peak,
    ));
    out.push_str(&row(format!("{r} remotes converged"), converged.rss_kib));
    out.push_str(&row(
        "after the converged resync".into(),
        after_resync.rss_kib,
    ));
    out.push_str(&row(
        format!("{grown_target} labelled, on every remote"),
        grown.rss_kib,
    ));
    out.push_str(&row(
        "at the end (propagation and frozen remote done)".into(),
        end.rss_kib,
    ));
    out.push_str(&row("peak sampled, whole run".into(), peak_all));
    out.push_str(&row(
        "VmHWM (peak resident set of the process)".into(),
        end.hwm_kib,
    ));
    out.push_str(&format!(
        "\nBytes per (remote x namespace), (RSS - RSS before attaching) / ({r} x {n}): {bytes_converged:.1} with {labelled_target} labelled, {bytes_grown:.1} with {grown_target} labelled ({} more labelled on the primary, {} s until every remote showed them; the PATCHes on the primary, {WRITE_CONCURRENCY} at a time, took {} s).\n\n\
         **Target: VmHWM <= 64 MiB: {} MiB: {}. Target: the bytes per (remote x namespace) do not grow with the namespaces labelled (within {:.0}%): {:.2}x: {}.**\n\n",
        more.len(),
        secs(grown_in),
        secs(labelled_in),
        mib(end.hwm_kib),
        crate::verdict(end.hwm_kib <= TARGET_RSS_KIB),
        (GROWTH_TOLERANCE - 1.0) * 100.0,
        if bytes_converged > 0.0 { bytes_grown / bytes_converged } else { f64::NAN },
        crate::verdict(bytes_grown <= bytes_converged * GROWTH_TOLERANCE),
    ));

    // Propagation.
    let summary = |v: &[Duration]| Summary::of(v).context("no samples");
    let h_floor = summary(&healthy.floor)?;
    let h_all = summary(&healthy.all)?;
    let h_answer = summary(&healthy.answered)?;
    let f_floor = summary(&frozen.floor)?;
    let f_all = summary(&frozen.all)?;
    let f_answer = summary(&frozen.answered)?;
    out.push_str(&format!(
        "### Propagation to {r} remotes\n\n{} sequential changes of `{MANAGED_LABEL}` (enabled/disabled, rotating over {} namespaces), {WARMUP} unmeasured first, {PAUSE:?} apart, each interleaved with one parallel-floor sample: an unmanaged label written directly to every remote at once by a plain client. Latency = request issued -> watch event received on every remote.\n\n",
        config.changes,
        ROTATING.min(n),
    ));
    out.push_str(&latency_table(&[
        Row {
            name: format!("parallel floor: one PATCH to each of the {r} remotes at once -> all their watch events"),
            summary: h_floor,
            baseline: None,
        },
        Row {
            name: format!("**webhook path: primary PATCH -> all {r} remotes**"),
            summary: h_all,
            baseline: Some(&h_floor),
        },
        Row {
            name: "primary PATCH answered (the webhook pushes before it answers)".into(),
            summary: h_answer,
            baseline: Some(&h_floor),
        },
    ]));
    out.push_str(&format!(
        "\n### One remote frozen\n\n{frozen_name}'s apiserver stopped (SIGSTOP) for the same {} changes; times to the other {}.\n\n",
        config.changes,
        r - 1
    ));
    out.push_str(&latency_table(&[
        Row {
            name: format!("parallel floor: one PATCH to each of the {} others at once -> all their watch events", r - 1),
            summary: f_floor,
            baseline: None,
        },
        Row {
            name: format!("**webhook path: primary PATCH -> the {} others**", r - 1),
            summary: f_all,
            baseline: Some(&f_floor),
        },
        Row {
            name: "webhook path, healthy (above), for comparison".into(),
            summary: h_all,
            baseline: Some(&f_floor),
        },
        Row {
            name: "**primary PATCH answered, one remote frozen**".into(),
            summary: f_answer,
            baseline: Some(&h_answer),
        },
    ]));
    let others_ok = f_all.p99 <= h_all.p99 + PUSH_DEADLINE;
    let answer_ok = f_answer.max <= PUSH_DEADLINE + h_answer.p99;
    out.push_str(&format!(
        "\n{frozen_name} resumed: it showed the primary's labels on every namespace {} s later.\n\n\
         **Target: propagation to the other {} unaffected beyond the push deadline ({} s): p99 {} ms with one frozen, {} ms healthy (allowed: healthy p99 + push deadline): {}. Target: the primary's PATCH answers within the push deadline (allowed: push deadline + the healthy PATCH's p99, the apiserver's own work): max {} ms: {}.**\n",
        secs(resume_converged),
        r - 1,
        secs(PUSH_DEADLINE),
        ms(f_all.p99),
        ms(h_all.p99),
        crate::verdict(others_ok),
        ms(f_answer.max),
        crate::verdict(answer_ok),
    ));
    Ok(out)
}

/// Namespace verbs reported from the apiservers' counters.
const VERBS: &[&str] = &["LIST", "GET", "WATCH", "PATCH", "UPDATE", "CREATE"];

/// p50 (nearest rank) and max.
fn median_max(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return (0.0, 0.0);
    }
    let rank = (sorted.len() as f64 * 0.5).ceil() as usize;
    (
        sorted[rank.clamp(1, sorted.len()) - 1],
        sorted[sorted.len() - 1],
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The webhook's RSS every 50 ms.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                while let Ok(memory) = Memory::of(pid) {
                    lock(&samples).push((Instant::now(), memory.rss_kib));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self { samples, task }
    }

    fn peak_between(&self, from: Instant, to: Instant) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    }

    fn stop(self) -> Vec<(Instant, u64)> {
        self.task.abort();
        std::mem::take(&mut *lock(&self.samples))
    }
}

/// Waits until `namespaces` bench namespaces are listed Active; returns how many namespaces
/// the cluster has in all.
async fn wait_active(client: &kube::Client, namespaces: usize) -> anyhow::Result<usize> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let active = list
            .items
            .iter()
            .filter(|ns| ns.labels().get(BENCH_LABEL).is_some_and(|v| v == SCENARIO))
            .filter(|ns| {
                ns.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Active")
            })
            .count();
        if active >= namespaces {
            return Ok(list.items.len());
        }
        if Instant::now() > deadline {
            bail!("only {active} of {namespaces} namespaces Active within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct ColdFloor {
    /// Start -> the last PATCH returned.
    returned: Duration,
    /// Start -> every remote's watch showed every PATCH.
    seen: Duration,
    /// p50 of the LISTs.
    list_p50: Duration,
}

/// On every remote at once: one LIST, then an unmanaged-label PATCH of each of `namespaces`,
/// `WRITE_CONCURRENCY` at a time; timed until the watches showed every one.
async fn cold_floor(
    clients: &[kube::Client],
    namespaces: &[String],
    watch: &mut NamespaceWatch,
) -> anyhow::Result<ColdFloor> {
    let started = Instant::now();
    let writers = tokio::spawn({
        let clients = clients.to_vec();
        let namespaces = namespaces.to_vec();
        async move {
            try_join_all(clients.into_iter().map(|client| {
                let namespaces = namespaces.clone();
                async move {
                    let api: Api<Namespace> = Api::all(client);
                    let listing = Instant::now();
                    api.list(&ListParams::default().limit(LIST_PAGE as u32))
                        .await?;
                    let list = listing.elapsed();
                    stream::iter(namespaces)
                        .map(|name| {
                            let api = api.clone();
                            async move { set_label(&api, &name, FLOOR_LABEL, Some("1")).await }
                        })
                        .buffer_unordered(WRITE_CONCURRENCY)
                        .try_for_each(|()| async { Ok(()) })
                        .await?;
                    anyhow::Ok((list, Instant::now()))
                }
            }))
            .await
        }
    });
    let deadline = started + CONVERGE_TIMEOUT;
    let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); clients.len()];
    while seen.iter().any(|s| s.len() < namespaces.len()) {
        let Some(event) = watch.next_until(deadline).await? else {
            bail!(
                "the parallel floor's writes not all seen within {CONVERGE_TIMEOUT:?}: {:?} of {}",
                seen.iter().map(HashSet::len).collect::<Vec<_>>(),
                namespaces.len()
            );
        };
        if event.labels.get(FLOOR_LABEL).is_some_and(|v| v == "1") {
            seen[event.cluster].insert(event.name);
        }
    }
    let seen = started.elapsed();
    let results = writers.await.context("the floor's writers")??;
    let returned = results
        .iter()
        .map(|(_, done)| *done - started)
        .max()
        .unwrap_or_default();
    let lists: Vec<Duration> = results.iter().map(|(list, _)| *list).collect();
    Ok(ColdFloor {
        returned,
        seen,
        list_p50: Summary::of(&lists).map(|s| s.p50).unwrap_or_default(),
    })
}

/// When each remote's `kubectl-mesh attach` started and returned.
type AttachTimes = Arc<Mutex<Vec<(Option<Instant>, Option<Instant>)>>>;

/// Attaches every remote with `kubectl-mesh attach`, `ATTACH_CONCURRENCY` at a time, noting
/// when each started and returned.
async fn attach_all(
    mesh: mesh_testenv::mesh::Mesh,
    remotes: Vec<mesh_testenv::Cluster>,
    times: AttachTimes,
) -> anyhow::Result<()> {
    stream::iter(remotes.into_iter().enumerate())
        .map(|(index, remote)| {
            let mesh = mesh.clone();
            let times = times.clone();
            async move {
                lock(&times)[index].0 = Some(Instant::now());
                mesh.attach(&remote)
                    .await
                    .with_context(|| format!("attaching {}", remote.name))?;
                lock(&times)[index].1 = Some(Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(ATTACH_CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Namespace requests one apiserver counted, by verb.
#[derive(Clone, Default)]
struct Requests(BTreeMap<String, f64>);

impl Requests {
    fn get(&self, verb: &str) -> f64 {
        self.0.get(verb).copied().unwrap_or(0.0)
    }

    fn minus(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(verb, count)| (verb.clone(), count - before.get(verb)))
                .collect(),
        )
    }
}

/// `apiserver_request_total{resource="namespaces"}` of every apiserver, summed per verb.
async fn apiserver_requests(clients: &[kube::Client]) -> anyhow::Result<Vec<Requests>> {
    try_join_all(clients.iter().map(|client| async move {
        let request = hyper::Request::get("/metrics").body(Vec::new())?;
        let text = client
            .request_text(request)
            .await
            .context("reading an apiserver's /metrics")?;
        Ok(Requests(
            VERBS
                .iter()
                .map(|verb| {
                    let count = sample(
                        &text,
                        "apiserver_request_total",
                        &[("resource", "namespaces"), ("verb", verb)],
                    );
                    ((*verb).to_owned(), count)
                })
                .collect(),
        ))
    }))
    .await
}

struct Resync {
    after_convergence: Duration,
    window: Duration,
    periods: f64,
    syncs_min: f64,
    syncs_max: f64,
    /// Per remote.
    requests: Vec<Requests>,
    /// Events on the remotes' watches.
    writes: u64,
    corrections: f64,
}

/// Counts every remote's namespace requests over at least two resync periods, and the
/// writes of the syncs in them.
async fn converged_resync(
    bed: &Bed,
    clients: &[kube::Client],
    watch: &mut NamespaceWatch,
    mc_events: &mut mpsc::UnboundedReceiver<(
        String,
        Option<mesh_core::cluster::MeshClusterStatus>,
        Instant,
    )>,
    remotes: &mut [Remote],
    labelled_target: usize,
    period: Duration,
) -> anyhow::Result<Resync> {
    let converged_at = Instant::now();
    let ok = |text: &str, name: &str| {
        sample(text, "syncs_total", &[("cluster", name), ("result", "ok")])
    };
    let corrections = |text: &str| sample(text, "drift_corrections_total", &[]);
    let webhook_before = bed.metrics().await?;
    let before = apiserver_requests(clients).await?;
    for remote in remotes.iter_mut() {
        remote.writes = 0;
    }
    let started = Instant::now();
    let deadline = started + period * 4 + Duration::from_secs(120);
    let webhook_after = loop {
        observe(watch, mc_events, remotes, labelled_target).await?;
        if started.elapsed() >= period * 2 {
            let now = bed.metrics().await?;
            if remotes
                .iter()
                .all(|r| ok(&now, &r.name) - ok(&webhook_before, &r.name) >= 2.0)
            {
                break now;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "not every remote resynced twice within {:?}",
                deadline - started
            );
        }
    };
    // Writes of the last sync, if any, reach the watches within moments.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        observe(watch, mc_events, remotes, labelled_target).await?;
    }
    let after = apiserver_requests(clients).await?;
    let window = started.elapsed();
    let syncs: Vec<f64> = remotes
        .iter()
        .map(|r| ok(&webhook_after, &r.name) - ok(&webhook_before, &r.name))
        .collect();
    Ok(Resync {
        after_convergence: started - converged_at,
        window,
        periods: window.as_secs_f64() / period.as_secs_f64(),
        syncs_min: syncs.iter().copied().fold(f64::INFINITY, f64::min),
        syncs_max: syncs.iter().copied().fold(0.0, f64::max),
        requests: after.iter().zip(&before).map(|(a, b)| a.minus(b)).collect(),
        writes: remotes.iter().map(|r| r.writes).sum(),
        corrections: corrections(&webhook_after) - corrections(&webhook_before),
    })
}

/// Latencies of one series of changes.
#[derive(Default)]
struct Samples {
    floor: Vec<Duration>,
    all: Vec<Duration>,
    answered: Vec<Duration>,
}

/// Label changes on the primary, each until the watches of the first `active` remotes show it,
/// interleaved with the parallel floor.
struct Changes<'a> {
    primary: Api<Namespace>,
    remote_apis: Vec<Api<Namespace>>,
    watch: &'a mut NamespaceWatch,
    names: &'a [String],
    /// The managed label's value of every namespace on the primary.
    expected: &'a mut Vec<Option<&'static str>>,
    rotating: Vec<usize>,
    step: usize,
}

impl Changes<'_> {
    async fn measure(&mut self, active: usize, changes: usize) -> anyhow::Result<Samples> {
        let clusters: Vec<usize> = (0..active).collect();
        let mut samples = Samples::default();
        for i in 0..WARMUP + changes {
            let index = self.rotating[self.step % self.rotating.len()];
            self.step += 1;
            let name = self.names[index].clone();

            // The parallel floor: an unmanaged label on every active remote at once.
            let value = format!("v{}", self.step);
            let started = Instant::now();
            try_join_all(
                self.remote_apis[..active]
                    .iter()
                    .map(|api| set_label(api, &name, FLOOR_LABEL, Some(&value))),
            )
            .await?;
            let at = self
                .watch
                .wait_label(&clusters, &name, (FLOOR_LABEL, &value), CHANGE_TIMEOUT)
                .await?;
            let floor = at.iter().max().copied().unwrap_or(started) - started;
            tokio::time::sleep(PAUSE).await;

            // The webhook path.
            let value = match self.expected[index] {
                Some("enabled") => "disabled",
                _ => "enabled",
            };
            let started = Instant::now();
            set_label(&self.primary, &name, MANAGED_LABEL, Some(value)).await?;
            let answered = started.elapsed();
            self.expected[index] = Some(value);
            let at = self
                .watch
                .wait_label(&clusters, &name, (MANAGED_LABEL, value), CHANGE_TIMEOUT)
                .await?;
            let all = at.iter().max().copied().unwrap_or(started) - started;
            tokio::time::sleep(PAUSE).await;
            if i >= WARMUP {
                samples.floor.push(floor);
                samples.all.push(all);
                samples.answered.push(answered);
            }
        }
        Ok(samples)
    }
}

/// Waits until the remote shows every bench namespace with the managed label the primary has
/// and its MeshCluster reports Synced=True; returns when.
async fn wait_converged(
    remote: &kube::Client,
    primary: &kube::Client,
    name: &str,
    names: &[String],
    expected: &[Option<&'static str>],
) -> anyhow::Result<Instant> {
    let api: Api<Namespace> = Api::all(remote.clone());
    let clusters: Api<MeshCluster> = Api::all(primary.clone());
    let params = ListParams::default().labels(&format!("{BENCH_LABEL}={SCENARIO}"));
    let want: BTreeMap<&str, Option<&str>> = names
        .iter()
        .map(String::as_str)
        .zip(expected.iter().copied())
        .collect();
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        let list = api.list(&params).await;
        let wrong = match &list {
            Ok(list) => list
                .items
                .iter()
                .filter(|ns| {
                    let name = ns.name_any();
                    want.get(name.as_str()).is_some_and(|want| {
                        ns.labels().get(MANAGED_LABEL).map(String::as_str) != *want
                    })
                })
                .count(),
            Err(_) => usize::MAX,
        };
        let synced = clusters.get(name).await.is_ok_and(|mc| {
            mc.status
                .as_ref()
                .is_some_and(|s| s.is_true(CONDITION_SYNCED))
        });
        if wrong == 0 && synced {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "{name} not converged within {RESUME_TIMEOUT:?} of its resume ({wrong} namespaces differ, Synced={synced})"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
