//! Namespace watches on the clusters under test: when a change becomes visible is the moment
//! its watch event reaches this process, as it would reach any controller on that cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// A namespace as one watch event showed it.
#[derive(Debug)]
pub struct Seen {
    /// Index of the watched cluster, in the order given to [`NamespaceWatch::start`].
    pub cluster: usize,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// When the event arrived here.
    pub at: Instant,
}

/// Watches of the namespaces matching one label selector on several clusters, merged.
pub struct NamespaceWatch {
    events: mpsc::UnboundedReceiver<Seen>,
    tasks: JoinSet<()>,
}

impl NamespaceWatch {
    /// Starts one watcher per client and returns once every one has listed its namespaces:
    /// events after that are changes.
    pub async fn start(clients: Vec<kube::Client>, selector: &str) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let mut ready = Vec::new();
        for (cluster, client) in clients.into_iter().enumerate() {
            let (listed, is_listed) = oneshot::channel();
            ready.push(is_listed);
            let config = watcher::Config::default().labels(selector);
            let tx = tx.clone();
            tasks.spawn(async move {
                let mut listed = Some(listed);
                let mut stream = std::pin::pin!(watcher(Api::<Namespace>::all(client), config));
                while let Some(event) = stream.next().await {
                    let at = Instant::now();
                    match event {
                        Ok(watcher::Event::Apply(ns)) => {
                            let seen = Seen {
                                cluster,
                                name: ns.name_any(),
                                labels: ns.metadata.labels.unwrap_or_default(),
                                at,
                            };
                            if tx.send(seen).is_err() {
                                return;
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(listed) = listed.take() {
                                let _ = listed.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(error) => eprintln!("[bench] watch of cluster {cluster}: {error}"),
                    }
                }
            });
        }
        for is_listed in ready {
            tokio::time::timeout(Duration::from_secs(60), is_listed)
                .await
                .context("a namespace watch did not list within 60s")?
                .context("a namespace watch ended")?;
        }
        Ok(Self { events, tasks })
    }

    /// The next event, or `None` once `deadline` passes.
    pub async fn next_until(&mut self, deadline: Instant) -> anyhow::Result<Option<Seen>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.events.recv()).await {
            Ok(Some(seen)) => Ok(Some(seen)),
            Ok(None) => bail!("every namespace watch ended"),
            Err(_) => Ok(None),
        }
    }

    /// Waits until each of `clusters` shows `namespace` with `label=value` and returns when
    /// each did, in the order of `clusters`. Other events are dropped.
    pub async fn wait_label(
        &mut self,
        clusters: &[usize],
        namespace: &str,
        (label, value): (&str, &str),
        timeout: Duration,
    ) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        let mut at: Vec<Option<Instant>> = vec![None; clusters.len()];
        while at.iter().any(Option::is_none) {
            let Some(seen) = self.next_until(deadline).await? else {
                let missing: Vec<usize> = clusters
                    .iter()
                    .zip(&at)
                    .filter(|(_, a)| a.is_none())
                    .map(|(c, _)| *c)
                    .collect();
                bail!(
                    "{namespace}: {label}={value} not seen within {timeout:?} on watched cluster(s) {missing:?}"
                );
            };
            if seen.name != namespace || seen.labels.get(label).map(String::as_str) != Some(value) {
                continue;
            }
            if let Some(index) = clusters.iter().position(|&c| c == seen.cluster) {
                at[index].get_or_insert(seen.at);
            }
        }
        Ok(at.into_iter().flatten().collect())
    }

    /// Drops every event received so far.
    pub fn drain(&mut self) -> usize {
        let mut dropped = 0;
        while self.events.try_recv().is_ok() {
            dropped += 1;
        }
        dropped
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}
