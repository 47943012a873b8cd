//! What the remote apiservers counted of namespace requests, and the converged resync
//! measured with those counters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::try_join_all;
use tokio::sync::mpsc;

use crate::bed::Bed;
use crate::https::sample;
use crate::scenario::resync::{Remote, observe};
use crate::watch::NamespaceWatch;

/// Namespace verbs reported from the apiservers' counters.
pub(super) const VERBS: &[&str] = &["LIST", "GET", "WATCH", "PATCH", "UPDATE", "CREATE"];

/// p50 (nearest rank) and max.
pub(super) fn median_max(values: &[f64]) -> (f64, f64) {
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

/// Namespace requests one apiserver counted, by verb.
#[derive(Clone, Default)]
pub(super) struct Requests(BTreeMap<String, f64>);

impl Requests {
    pub(super) fn get(&self, verb: &str) -> f64 {
        self.0.get(verb).copied().unwrap_or(0.0)
    }

    pub(super) fn minus(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(verb, count)| (verb.clone(), count - before.get(verb)))
                .collect(),
        )
    }
}

/// `apiserver_request_total{resource="namespaces"}` of every apiserver, summed per verb.
pub(super) async fn apiserver_requests(clients: &[kube::Client]) -> anyhow::Result<Vec<Requests>> {
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

pub(super) struct Resync {
    pub(super) after_convergence: Duration,
    pub(super) window: Duration,
    pub(super) periods: f64,
    pub(super) syncs_min: f64,
    pub(super) syncs_max: f64,
    /// Per remote.
    pub(super) requests: Vec<Requests>,
    /// Events on the remotes' watches.
    pub(super) writes: u64,
    pub(super) corrections: f64,
}

/// Counts every remote's namespace requests over at least two resync periods, and the
/// writes of the syncs in them.
pub(super) async fn converged_resync(
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
