//! `scale`: many remotes and many namespaces on one machine.
//!
//! A primary and `remotes` remotes (20 by default, one shared etcd), each with `namespaces`
//! namespaces (10,000 by default), half of them labelled `istio-injection=enabled` on the
//! primary, and on the remotes too with `labelled_remotes` (a mesh adopted where the labels were
//! already set by hand: the cold sync reads and writes nothing). The controller-manager's per-namespace controllers (default ServiceAccount,
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

mod changes;
mod cold;
mod requests;
mod sampler;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use mesh_testenv::mesh::MeshOptions;
use tokio::sync::mpsc;

use self::changes::{Changes, wait_converged};
use self::cold::{AttachTimes, attach_all, cold_floor, wait_active};
use self::requests::{VERBS, converged_resync, median_max};
use self::sampler::{Sampler, lock};
use crate::bed::{
    BENCH_LABEL, Bed, BedOptions, create_namespaces, half_labelled, set_label_on_all,
};
use crate::procfs::{Memory, mib};
use crate::scenario::resync::{MANAGED_LABEL, Remote, WRITE_CONCURRENCY, observe, watch_clusters};
use crate::stats::{Row, Summary, latency_table, ms, ratio};
use crate::watch::NamespaceWatch;

const SCENARIO: &str = "scale";
/// Namespaces created concurrently per cluster while setting up (every cluster at once).
const CREATE_CONCURRENCY: usize = 8;
/// `kubectl-mesh attach` processes run at once.
const ATTACH_CONCURRENCY: usize = 4;
/// Page size of the reconciler's full LIST.
const LIST_PAGE: usize = mesh_core::list::PAGE as usize;
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
    /// The remotes start with the primary's labels instead of none.
    pub labelled_remotes: bool,
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
    let mut bed_options = BedOptions::new(options, r, config.resync_period, dir);
    bed_options.env.per_namespace_controllers = false;
    let bed = Bed::start(bed_options).await?;
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
        let namespaces = half_labelled(
            &names,
            SCENARIO,
            index == 0 || config.labelled_remotes,
            MANAGED_LABEL,
        );
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
    let mut remotes: Vec<Remote> = Remote::each_of(&bed.env);

    // The parallel floor of the cold sync: what the sync must write, after one LIST.
    let to_write: Vec<String> = if config.labelled_remotes {
        Vec::new()
    } else {
        names.iter().step_by(2).cloned().collect()
    };
    eprintln!(
        "[bench]   parallel floor: LIST + {} PATCHes on every remote",
        to_write.len()
    );
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
    if config.labelled_remotes {
        // Already showing the primary's labels: only Synced=True is awaited.
        for remote in &mut remotes {
            remote.labelled = names.iter().step_by(2).cloned().collect();
            remote.converged = Some(attach_started);
        }
    }
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
    let cold_writes: u64 = if config.labelled_remotes {
        remotes.iter().map(|r| r.writes).sum()
    } else {
        remotes.iter().map(|r| r.writes_at_convergence).sum()
    };
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
            let label = (MANAGED_LABEL, Some("enabled"));
            set_label_on_all(&primary, more, label, WRITE_CONCURRENCY).await?;
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
        "## scale\n\n{n} namespaces on the primary ({labelled_target} labelled `{MANAGED_LABEL}=enabled`) and {n} {} on each of {r} remotes ({} namespaces in all, {clusters_total} per cluster with the system ones); one shared etcd; the controller-manager without its per-namespace controllers (no default ServiceAccount, no `kube-root-ca.crt`). Resync period {:?}, push deadline {:?}. Times observed by watches (MeshClusters on the primary, bench namespaces on each remote).\n\n\
         Setup: {} clusters and the mesh up in {} s; {} namespaces created in {} s ({:.0}/s, {CREATE_CONCURRENCY} at a time per cluster, every cluster at once); all Active, checked in {} s.\n\n",
        if config.labelled_remotes {
            "labelled as on the primary"
        } else {
            "unlabelled"
        },
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
        .filter_map(|r| Some(r.converged?.max(r.synced?) - r.created?))
        .collect();
    let attach_summary = Summary::of(&attach_times).context("no attach time")?;
    let attaches_done = remotes
        .iter()
        .filter_map(|r| r.attach_returned)
        .max()
        .context("no attach returned")?
        - attach_started;
    let sync_summary = Summary::of(&syncs).context("no sync time")?;
    out.push_str(&format!(
        "### Cold convergence\n\n\
         | series | s | vs parallel floor |\n|---|---:|---:|\n\
         | parallel floor: one LIST and {} label PATCHes per remote ({WRITE_CONCURRENCY} at a time), all {r} remotes at once, until every watch showed them (baseline) | {} | - |\n\
         | parallel floor: until the last PATCH returned | {} | {} |\n\
         | **first attach started -> every MeshCluster Synced=True and every remote showing all {labelled_target} labelled** | **{}** | **{}** |\n\
         | `kubectl-mesh attach` command ({ATTACH_CONCURRENCY} at a time), p50 / max | {} / {} | - |\n\
         | every `kubectl-mesh attach` ({ATTACH_CONCURRENCY} at a time): first started -> last returned | {} | {} |\n\
         | MeshCluster created -> that remote converged and Synced=True, p50 / max | {} / {} | {} (max) |\n\n\
         The floor's LIST took {} s p50 across remotes. Label writes seen on the remotes' watches during the cold sync: {cold_writes} (expected {}).\n\n\
         **Target: cold convergence <= {} s on 2 cores: {} s: {}.**\n\n",
        to_write.len(),
        secs(floor.seen),
        secs(floor.returned),
        ratio(floor.returned, floor.seen),
        secs(cold),
        ratio(cold, floor.seen),
        secs(attach_summary.p50),
        secs(attach_summary.max),
        secs(attaches_done),
        ratio(attaches_done, floor.seen),
        secs(sync_summary.p50),
        secs(sync_summary.max),
        ratio(sync_summary.max, floor.seen),
        secs(floor.list_p50),
        r * to_write.len(),
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
    let (healthy, frozen) = (healthy.summaries()?, frozen.summaries()?);
    out.push_str(&format!(
        "### Propagation to {r} remotes\n\n{} sequential changes of `{MANAGED_LABEL}` (enabled/disabled, rotating over {} namespaces), {WARMUP} unmeasured first, {PAUSE:?} apart, each interleaved with one parallel-floor sample: an unmanaged label written directly to every remote at once by a plain client. Latency = request issued -> watch event received on every remote.\n\n",
        config.changes,
        ROTATING.min(n),
    ));
    out.push_str(&latency_table(&[
        Row::baseline(format!("parallel floor: one PATCH to each of the {r} remotes at once -> all their watch events"), healthy.floor),
        Row::against(format!("**webhook path: primary PATCH -> all {r} remotes**"), healthy.all, &healthy.floor),
        Row::against("primary PATCH answered (the webhook pushes before it answers)", healthy.answered, &healthy.floor),
    ]));
    out.push_str(&format!(
        "\n### One remote frozen\n\n{frozen_name}'s apiserver stopped (SIGSTOP) for the same {} changes; times to the other {}.\n\n",
        config.changes,
        r - 1
    ));
    out.push_str(&latency_table(&[
        Row::baseline(format!("parallel floor: one PATCH to each of the {} others at once -> all their watch events", r - 1), frozen.floor),
        Row::against(format!("**webhook path: primary PATCH -> the {} others**", r - 1), frozen.all, &frozen.floor),
        Row::against("webhook path, healthy (above), for comparison", healthy.all, &frozen.floor),
        Row::against("**primary PATCH answered, one remote frozen**", frozen.answered, &healthy.answered),
    ]));
    let others_ok = frozen.all.p99 <= healthy.all.p99 + PUSH_DEADLINE;
    let answer_ok = frozen.answered.max <= PUSH_DEADLINE + healthy.answered.p99;
    out.push_str(&format!(
        "\n{frozen_name} resumed: it showed the primary's labels on every namespace {} s later.\n\n\
         **Target: propagation to the other {} unaffected beyond the push deadline ({} s): p99 {} ms with one frozen, {} ms healthy (allowed: healthy p99 + push deadline): {}. Target: the primary's PATCH answers within the push deadline (allowed: push deadline + the healthy PATCH's p99, the apiserver's own work): max {} ms: {}.**\n",
        secs(resume_converged),
        r - 1,
        secs(PUSH_DEADLINE),
        ms(frozen.all.p99),
        ms(healthy.all.p99),
        crate::verdict(others_ok),
        ms(frozen.answered.max),
        crate::verdict(answer_ok),
    ));
    Ok(out)
}
