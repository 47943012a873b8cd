//! `resync` and `footprint`: many namespaces on the primary and on several remotes, half of
//! them labelled on the primary, then the remotes attached one after the other with the real
//! `kubectl-mesh attach`.
//!
//! Measured by watching: per remote, attach started -> its MeshCluster reports Synced=True,
//! and MeshCluster created -> the remote's namespace watch shows every labelled namespace;
//! writes counted three ways (events on the remote's watch, MeshCluster `lastSyncWrites`, the
//! webhook's `drift_corrections_total`). Then one more periodic resync of the converged
//! remotes, which must write nothing. Baseline: the same number of label writes made directly
//! by a plain client with the reconciler's concurrency, plus one LIST.
//!
//! The webhook's resident memory is sampled throughout (`/proc/<pid>/status`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, future::try_join_all};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use mesh_core::cluster::{CONDITION_SYNCED, MeshCluster, MeshClusterStatus};
use mesh_testenv::mesh::MeshOptions;
use tokio::sync::mpsc;

use crate::bed::{
    BENCH_LABEL, Bed, BedOptions, create_namespaces, half_labelled, set_label_on_all,
};
use crate::https::sample;
use crate::procfs::{Memory, mib};
use crate::watch::NamespaceWatch;

const SCENARIO: &str = "resync";
pub(crate) const MANAGED_LABEL: &str = "istio-injection";
pub(crate) const FLOOR_LABEL: &str = "mesh-bench/floor";
/// The reconciler's write concurrency (`WRITE_CONCURRENCY` in webhook/src/sync.rs), for a
/// floor that writes the same way.
pub(crate) const WRITE_CONCURRENCY: usize = 8;
/// Namespaces created concurrently per cluster while setting up.
const CREATE_CONCURRENCY: usize = 16;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(900);
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// Targets.
const TARGET_COLD: Duration = Duration::from_secs(10);
const TARGET_RSS_KIB: u64 = 50 * 1024;

pub struct Config {
    pub namespaces: usize,
    pub remotes: usize,
    pub resync_period: Duration,
}

/// What was observed of one remote.
#[derive(Default)]
pub(crate) struct Remote {
    pub(crate) name: String,
    /// Bench namespaces carrying the managed label on the remote now.
    pub(crate) labelled: HashSet<String>,
    /// Watch events of bench namespaces since the counter was last reset.
    pub(crate) writes: u64,
    /// `writes` when the remote converged after its attach: the cold sync's writes.
    pub(crate) writes_at_convergence: u64,
    pub(crate) attach_started: Option<Instant>,
    pub(crate) attach_returned: Option<Instant>,
    pub(crate) created: Option<Instant>,
    pub(crate) converged: Option<Instant>,
    pub(crate) synced: Option<Instant>,
    pub(crate) synced_status: Option<MeshClusterStatus>,
    pub(crate) status: Option<MeshClusterStatus>,
    /// The webhook's RSS once this remote converged.
    pub(crate) rss_after_kib: u64,
}

impl Remote {
    /// One per remote of `env`, nothing observed yet.
    pub(crate) fn each_of(env: &mesh_testenv::TestEnv) -> Vec<Self> {
        env.remotes()
            .iter()
            .map(|remote| Self {
                name: remote.name.clone(),
                ..Self::default()
            })
            .collect()
    }
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    eprintln!("[bench] resync and footprint");
    let bed = Bed::start(BedOptions::new(
        options,
        config.remotes.max(1),
        config.resync_period,
        dir,
    ))
    .await?;
    let pid = bed.webhook_pid;
    let idle = Memory::of(pid)?;
    let peak = Arc::new(AtomicU64::new(idle.rss_kib));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(memory) = Memory::of(pid) {
                peak.fetch_max(memory.rss_kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let n = config.namespaces.max(2);
    let labelled_target = n.div_ceil(2);
    let names: Vec<String> = (0..n).map(|i| format!("rs-{i:05}")).collect();
    let started = Instant::now();
    let mut creations = Vec::new();
    for (index, cluster) in bed.env.clusters().iter().enumerate() {
        let namespaces = half_labelled(&names, SCENARIO, index == 0, MANAGED_LABEL);
        let client = cluster.client().await?;
        creations
            .push(async move { create_namespaces(&client, namespaces, CREATE_CONCURRENCY).await });
    }
    eprintln!(
        "[bench]   creating {n} namespaces on each of {} clusters",
        bed.env.clusters().len()
    );
    try_join_all(creations).await?;
    eprintln!(
        "[bench]   created in {:.1?}; waiting for the controllers",
        started.elapsed()
    );
    for cluster in bed.env.clusters() {
        wait_settled(&cluster.client().await?, n).await?;
    }
    eprintln!("[bench]   settled after {:.1?}", started.elapsed());
    let loaded = Memory::of(pid)?;

    let remote_clients = bed.remote_clients().await?;
    let mut watch =
        NamespaceWatch::start(remote_clients.clone(), &format!("{BENCH_LABEL}={SCENARIO}")).await?;
    let mut remotes: Vec<Remote> = Remote::each_of(&bed.env);

    // The floor, on the last remote: what the writes of a sync cost by themselves.
    let floor_client = remote_clients.last().context("no remote")?;
    let to_write: Vec<String> = names.iter().step_by(2).cloned().collect();
    let floor = write_floor(floor_client, &to_write).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.drain();

    let (mc_tx, mut mc_events) = mpsc::unbounded_channel();
    let mc_watch = tokio::spawn(watch_clusters(bed.primary().await?, mc_tx));

    for index in 0..remotes.len() {
        let remote = &bed.env.remotes()[index];
        eprintln!("[bench]   attaching {}", remote.name);
        remotes[index].attach_started = Some(Instant::now());
        remotes[index].writes = 0;
        bed.mesh.attach(remote).await?;
        remotes[index].attach_returned = Some(Instant::now());
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while remotes[index].converged.is_none() || remotes[index].synced.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "{} not converged and Synced within {SYNC_TIMEOUT:?} of its attach ({} of {labelled_target} labelled)",
                    remote.name,
                    remotes[index].labelled.len()
                );
            }
            observe(&mut watch, &mut mc_events, &mut remotes, labelled_target).await?;
        }
        remotes[index].rss_after_kib = Memory::of(pid)?.rss_kib;
        eprintln!("[bench]   {} converged", remote.name);
    }
    let all_converged = Instant::now();

    // One more resync of every converged remote: it must write nothing.
    let before = bed.metrics().await?;
    let ok_syncs = |text: &str, name: &str| {
        sample(text, "syncs_total", &[("cluster", name), ("result", "ok")])
    };
    let corrections =
        |text: &str, name: &str| sample(text, "drift_corrections_total", &[("cluster", name)]);
    for remote in &mut remotes {
        remote.writes = 0;
    }
    let resync_started = Instant::now();
    let deadline = resync_started + config.resync_period * 3 + Duration::from_secs(60);
    let after = loop {
        observe(&mut watch, &mut mc_events, &mut remotes, labelled_target).await?;
        let now = bed.metrics().await?;
        if remotes
            .iter()
            .all(|r| ok_syncs(&now, &r.name) > ok_syncs(&before, &r.name))
        {
            break now;
        }
        if Instant::now() > deadline {
            bail!(
                "no periodic resync of every remote within {:?}",
                deadline - resync_started
            );
        }
    };
    let resync_seen = resync_started.elapsed();
    // Writes of that resync, if any, reach the watches within moments.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        observe(&mut watch, &mut mc_events, &mut remotes, labelled_target).await?;
    }
    mc_watch.abort();
    sampler.abort();
    let end = Memory::of(pid)?;
    let peak_rss = peak.load(Ordering::Relaxed).max(end.rss_kib);

    // Figures.
    let mut out = format!(
        "## resync\n\n{n} namespaces on the primary ({labelled_target} labelled `{MANAGED_LABEL}=enabled`) and {n} unlabelled on each of {} remotes; remotes attached one after the other with `kubectl-mesh attach`; resync period {:?}. Times observed by watches (MeshClusters on the primary, namespaces on each remote).\n\n\
         | remote | attach -> Synced=True s | attach command s | MeshCluster created -> remote converged s | writes seen on the remote | lastSyncWrites | drift_corrections_total |\n|---|---:|---:|---:|---:|---:|---:|\n",
        remotes.len(),
        config.resync_period,
    );
    let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
    let mut worst = Duration::ZERO;
    for remote in &remotes {
        let attach = remote.attach_started.context("attach time")?;
        let synced = remote.synced.context("synced time")? - attach;
        let converged = remote.converged.context("converged time")?;
        let sync_time = converged - remote.created.unwrap_or(attach);
        worst = worst.max(synced).max(converged - attach);
        let writes = remote
            .synced_status
            .as_ref()
            .map_or(0, |s| s.last_sync_writes);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} (expected {labelled_target}) | {} | {:.0} |\n",
            remote.name,
            secs(synced),
            secs(remote.attach_returned.context("attach return")? - attach),
            secs(sync_time),
            remote.writes_at_convergence,
            writes,
            corrections(&before, &remote.name),
        ));
    }
    let first_attach = remotes
        .iter()
        .filter_map(|r| r.attach_started)
        .min()
        .context("no attach")?;
    let slowest_sync = remotes
        .iter()
        .filter_map(|r| Some(r.converged? - r.created?))
        .max()
        .unwrap_or_default();
    out.push_str(&format!(
        "\nBaseline (floor): one LIST of the {n} namespaces of a remote ({} s) and {} label PATCHes at concurrency {WRITE_CONCURRENCY} by a plain client ({} s): {} s; the slowest cold sync (MeshCluster created -> converged) is {:.2}x that. All {} remotes, first attach started -> last converged: {} s.\n\n",
        secs(floor.list),
        to_write.len(),
        secs(floor.writes),
        secs(floor.list + floor.writes),
        slowest_sync.as_secs_f64() / (floor.list + floor.writes).as_secs_f64(),
        remotes.len(),
        secs(all_converged - first_attach),
    ));
    out.push_str(&format!(
        "Converged resync (one more periodic sync of every remote, seen {} s after convergence):\n\n| remote | writes seen on the remote | drift_corrections_total added | lastSyncWrites |\n|---|---:|---:|---:|\n",
        secs(resync_seen)
    ));
    let mut resync_writes = 0u64;
    for remote in &remotes {
        let added = corrections(&after, &remote.name) - corrections(&before, &remote.name);
        resync_writes += remote.writes + added as u64;
        let status = remote.status.as_ref().map_or(0, |s| s.last_sync_writes);
        out.push_str(&format!(
            "| {} | {} | {added:.0} | {status} |\n",
            remote.name, remote.writes
        ));
    }
    out.push_str(&format!(
        "\n**Target: cold sync <= {} s (attach -> Synced=True and converged, slowest remote): {} s: {}.** Converged resync writes 0: {}.\n\n",
        TARGET_COLD.as_secs(),
        secs(worst),
        crate::verdict(worst <= TARGET_COLD),
        crate::verdict(resync_writes == 0),
    ));
    out.push_str(&format!(
        "## footprint\n\nmesh-webhook resident memory (`/proc/<pid>/status`, sampled every 50 ms) during the resync scenario above.\n\n\
         | moment | RSS MiB | ratio to idle |\n|---|---:|---:|\n\
         | idle: mesh installed, no namespaces, nothing attached (baseline) | {} | - |\n\
         | {n} primary namespaces watched, {} created on the remotes | {} | {:.2}x |\n\
         {}\
         | peak sampled, attaches and syncs included | {} | {:.2}x |\n\
         | after the converged resync | {} | {:.2}x |\n\
         | VmHWM (peak resident set of the process) | {} | {:.2}x |\n\n\
         **Target: <= 50 MiB: VmHWM {} MiB: {}.**\n",
        mib(idle.rss_kib),
        n * remotes.len(),
        mib(loaded.rss_kib),
        loaded.rss_kib as f64 / idle.rss_kib as f64,
        remotes
            .iter()
            .enumerate()
            .map(|(i, r)| format!(
                "| {} attached and converged ({} of {}) | {} | {:.2}x |\n",
                r.name,
                i + 1,
                remotes.len(),
                mib(r.rss_after_kib),
                r.rss_after_kib as f64 / idle.rss_kib as f64
            ))
            .collect::<String>(),
        mib(peak_rss),
        peak_rss as f64 / idle.rss_kib as f64,
        mib(end.rss_kib),
        end.rss_kib as f64 / idle.rss_kib as f64,
        mib(end.hwm_kib),
        end.hwm_kib as f64 / idle.rss_kib as f64,
        mib(end.hwm_kib),
        crate::verdict(end.hwm_kib <= TARGET_RSS_KIB),
    ));
    Ok(out)
}

/// Applies whatever the watches have to say within the next 200 ms.
pub(crate) async fn observe(
    watch: &mut NamespaceWatch,
    clusters: &mut mpsc::UnboundedReceiver<(String, Option<MeshClusterStatus>, Instant)>,
    remotes: &mut [Remote],
    labelled_target: usize,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        tokio::select! {
            seen = watch.next_until(until) => {
                let Some(seen) = seen? else { return Ok(()) };
                let remote = &mut remotes[seen.cluster];
                remote.writes += 1;
                if seen.labels.get(MANAGED_LABEL).is_some_and(|v| v == "enabled") {
                    remote.labelled.insert(seen.name);
                } else {
                    remote.labelled.remove(&seen.name);
                }
                if remote.converged.is_none() && remote.labelled.len() == labelled_target {
                    remote.converged = Some(seen.at);
                    remote.writes_at_convergence = remote.writes;
                }
            }
            event = clusters.recv() => {
                let Some((name, status, at)) = event else { bail!("the MeshCluster watch ended") };
                let Some(remote) = remotes.iter_mut().find(|r| r.name == name) else { continue };
                remote.created.get_or_insert(at);
                let synced = status.as_ref().is_some_and(|s| s.is_true(CONDITION_SYNCED));
                if synced && remote.synced.is_none() {
                    remote.synced = Some(at);
                    remote.synced_status = status.clone();
                }
                remote.status = status;
            }
        }
    }
}

/// MeshCluster events with their arrival time.
pub(crate) async fn watch_clusters(
    primary: kube::Client,
    tx: mpsc::UnboundedSender<(String, Option<MeshClusterStatus>, Instant)>,
) {
    let mut stream = std::pin::pin!(watcher(
        Api::<MeshCluster>::all(primary),
        watcher::Config::default()
    ));
    while let Some(event) = stream.next().await {
        let at = Instant::now();
        match event {
            Ok(watcher::Event::Apply(mc) | watcher::Event::InitApply(mc)) => {
                if tx.send((mc.name_any(), mc.status, at)).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => eprintln!("[bench] MeshCluster watch: {error}"),
        }
    }
}

struct Floor {
    list: Duration,
    writes: Duration,
}

/// One LIST and one unmanaged-label PATCH per namespace, `WRITE_CONCURRENCY` at a time.
async fn write_floor(client: &kube::Client, namespaces: &[String]) -> anyhow::Result<Floor> {
    let api: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    api.list(&ListParams::default()).await?;
    let list = started.elapsed();
    let started = Instant::now();
    set_label_on_all(
        &api,
        namespaces,
        (FLOOR_LABEL, Some("1")),
        WRITE_CONCURRENCY,
    )
    .await?;
    Ok(Floor {
        list,
        writes: started.elapsed(),
    })
}

/// Waits until the controller-manager has given every bench namespace its `default`
/// ServiceAccount: the burst of work that namespace creation sets off is over, and does not
/// compete with what is measured next.
async fn wait_settled(client: &kube::Client, namespaces: usize) -> anyhow::Result<()> {
    let api: Api<ServiceAccount> = Api::all(client.clone());
    let params = ListParams::default().fields("metadata.name=default");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let accounts = api.list(&params).await?;
        let done = accounts
            .items
            .iter()
            .filter(|sa| sa.namespace().is_some_and(|ns| ns.starts_with("rs-")))
            .count();
        if done >= namespaces {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {namespaces} namespaces got their ServiceAccount within {SETTLE_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
