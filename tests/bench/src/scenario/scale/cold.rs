//! The cold phase: namespaces settled, the parallel floor of the cold sync, and the attaches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, future::try_join_all, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::sampler::lock;
use super::{ATTACH_CONCURRENCY, CONVERGE_TIMEOUT, LIST_PAGE, SCENARIO, SETTLE_TIMEOUT};
use crate::bed::{BENCH_LABEL, set_label_on_all};
use crate::scenario::resync::{FLOOR_LABEL, WRITE_CONCURRENCY};
use crate::stats::Summary;
use crate::watch::NamespaceWatch;

/// Waits until `namespaces` bench namespaces are listed Active; returns how many namespaces
/// the cluster has in all.
pub(super) async fn wait_active(client: &kube::Client, namespaces: usize) -> anyhow::Result<usize> {
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

pub(super) struct ColdFloor {
    /// Start -> the last PATCH returned.
    pub(super) returned: Duration,
    /// Start -> every remote's watch showed every PATCH.
    pub(super) seen: Duration,
    /// p50 of the LISTs.
    pub(super) list_p50: Duration,
}

/// On every remote at once: one LIST, then an unmanaged-label PATCH of each of `namespaces`,
/// `WRITE_CONCURRENCY` at a time; timed until the watches showed every one.
pub(super) async fn cold_floor(
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
                    let label = (FLOOR_LABEL, Some("1"));
                    set_label_on_all(&api, namespaces, label, WRITE_CONCURRENCY).await?;
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
    // With nothing to write, the LISTs are the whole floor.
    let seen = if namespaces.is_empty() {
        returned
    } else {
        seen
    };
    let lists: Vec<Duration> = results.iter().map(|(list, _)| *list).collect();
    Ok(ColdFloor {
        returned,
        seen,
        list_p50: Summary::of(&lists).map(|s| s.p50).unwrap_or_default(),
    })
}

/// When each remote's `kubectl-mesh attach` started and returned.
pub(super) type AttachTimes = Arc<Mutex<Vec<(Option<Instant>, Option<Instant>)>>>;

/// Attaches every remote with `kubectl-mesh attach`, `ATTACH_CONCURRENCY` at a time, noting
/// when each started and returned.
pub(super) async fn attach_all(
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
