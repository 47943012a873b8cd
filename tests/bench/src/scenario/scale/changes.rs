//! Label changes on the primary timed to every remote, beside the parallel floor, and the
//! wait for a resumed remote.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use mesh_core::cluster::{CONDITION_SYNCED, MeshCluster};

use super::{CHANGE_TIMEOUT, PAUSE, RESUME_TIMEOUT, SCENARIO, WARMUP};
use crate::bed::{BENCH_LABEL, set_label};
use crate::scenario::resync::{FLOOR_LABEL, MANAGED_LABEL};
use crate::stats::Summary;
use crate::watch::NamespaceWatch;

/// Latencies of one series of changes.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) floor: Vec<Duration>,
    pub(super) all: Vec<Duration>,
    pub(super) answered: Vec<Duration>,
}

/// The summaries of one series' [`Samples`].
pub(super) struct Summaries {
    pub(super) floor: Summary,
    pub(super) all: Summary,
    pub(super) answered: Summary,
}

impl Samples {
    /// Every series summed up: an error where one has no sample.
    pub(super) fn summaries(&self) -> anyhow::Result<Summaries> {
        let summary = |v: &[Duration]| Summary::of(v).context("no samples");
        Ok(Summaries {
            floor: summary(&self.floor)?,
            all: summary(&self.all)?,
            answered: summary(&self.answered)?,
        })
    }
}

/// Label changes on the primary, each until the watches of the first `active` remotes show it,
/// interleaved with the parallel floor.
pub(super) struct Changes<'a> {
    pub(super) primary: Api<Namespace>,
    pub(super) remote_apis: Vec<Api<Namespace>>,
    pub(super) watch: &'a mut NamespaceWatch,
    pub(super) names: &'a [String],
    /// The managed label's value of every namespace on the primary.
    pub(super) expected: &'a mut Vec<Option<&'static str>>,
    pub(super) rotating: Vec<usize>,
    pub(super) step: usize,
}

impl Changes<'_> {
    pub(super) async fn measure(
        &mut self,
        active: usize,
        changes: usize,
    ) -> anyhow::Result<Samples> {
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
pub(super) async fn wait_converged(
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
