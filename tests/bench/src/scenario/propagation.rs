//! `propagation`: a managed-label change on the primary until every remote's watch shows it.
//!
//! For each remote count, in one environment and interleaved so that the machine's load hits
//! both alike:
//! - the floor: one direct PATCH of a remote namespace, issued until the event on that remote's
//!   watch (an unmanaged label, so the reconciler never reverts it);
//! - the webhook path: PATCH of `istio-injection` on the primary, until the event on every
//!   remote (the webhook pushes it before the primary's apiserver answers);
//! - with several remotes, the parallel floor too: one direct PATCH to every remote at once,
//!   until every remote's event. The webhook writes to all remotes at once, and on a small
//!   machine their apiservers compete for the same cores: this shows how much of the gap to the
//!   single floor that competition is.
//!
//! Then the webhook configuration is deleted and the same changes run again, interleaved with
//! the floor: the local webhook process keeps reconciling from its watch of the primary
//! (reconcile-only mode). Which path delivered is checked in the webhook's metrics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use mesh_testenv::mesh::MeshOptions;

use crate::bed::{Bed, BedOptions, set_label};
use crate::https::sample;
use crate::stats::{Row, Summary, latency_table, ms, ratio};
use crate::watch::NamespaceWatch;

const SCENARIO: &str = "propagation";
/// Unmanaged label the floor writes on remotes.
const FLOOR_LABEL: &str = "mesh-bench/floor";
const MANAGED_LABEL: &str = "istio-injection";
/// One change not visible by then is a failure, not a figure.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Target: webhook-path p50 at most this many times the floor's.
const TARGET_RATIO: f64 = 1.5;
/// A resync during the measurement would only add noise: the changes are driven by the
/// webhook and by the reconciler's watch of the primary.
const RESYNC_PERIOD: Duration = Duration::from_secs(600);

pub struct Config {
    pub changes: usize,
    pub warmup: usize,
    pub remotes: Vec<usize>,
    pub namespaces: usize,
    pub pause: Duration,
    /// Run a real istiod beside the mesh (remotes attached with `--istio-remote-secret`).
    pub istio: bool,
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: &dyn Fn(&str) -> Option<PathBuf>,
) -> anyhow::Result<String> {
    let mut out = format!(
        "## propagation{}\n\n{} sequential changes of `{MANAGED_LABEL}` (alternating enabled/disabled over {} namespaces) per mode, {} unmeasured first, {:?} apart; each interleaved with one floor sample (and one parallel-floor sample with several remotes). Latency = request issued -> watch event received (on every remote for the primary's changes).\n\n",
        if config.istio { " (with istiod)" } else { "" },
        config.changes,
        config.namespaces,
        config.warmup,
        config.pause
    );
    if config.istio {
        out.push_str("A real istiod runs for the primary throughout, every remote attached with `--istio-remote-secret` and synced by it before the first change: its informers watch every apiserver (pods, services, endpoint slices, namespaces, config maps, Istio's resources) as in production.\n\n");
    }
    let mut verdicts = Vec::new();
    for &remotes in &config.remotes {
        eprintln!("[bench] propagation with {remotes} remote(s)");
        let figure = one_count(
            options,
            config,
            remotes,
            dir(&format!("propagation-{remotes}")),
        )
        .await?;
        out.push_str(&figure.markdown);
        verdicts.push(figure.verdict);
    }
    out.push_str(&format!(
        "**Target: webhook-path p50 <= {TARGET_RATIO}x the floor's p50.**\n\n"
    ));
    for verdict in verdicts {
        out.push_str(&format!("- {verdict}\n"));
    }
    Ok(out)
}

struct Figure {
    markdown: String,
    verdict: String,
}

/// Latencies of one mode.
#[derive(Default)]
struct Samples {
    floor: Vec<Duration>,
    /// Empty with one remote.
    floor_all: Vec<Duration>,
    all_remotes: Vec<Duration>,
    first_remote: Vec<Duration>,
    answered: Vec<Duration>,
}

/// The summaries of one mode's [`Samples`].
struct Summaries {
    floor: Summary,
    /// `None` with one remote.
    floor_all: Option<Summary>,
    all_remotes: Summary,
    first_remote: Summary,
    answered: Summary,
}

impl Samples {
    /// Every series summed up: an error where one has no sample (but the parallel floor,
    /// which one remote does not have).
    fn summaries(&self) -> anyhow::Result<Summaries> {
        let summary = |v: &[Duration]| Summary::of(v).context("no samples");
        Ok(Summaries {
            floor: summary(&self.floor)?,
            floor_all: Summary::of(&self.floor_all),
            all_remotes: summary(&self.all_remotes)?,
            first_remote: summary(&self.first_remote)?,
            answered: summary(&self.answered)?,
        })
    }
}

async fn one_count(
    options: &MeshOptions,
    config: &Config,
    remotes: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<Figure> {
    let bed = Bed::start(BedOptions {
        istio: config.istio,
        ..BedOptions::new(options, remotes, RESYNC_PERIOD, dir).attached()
    })
    .await?;
    let names: Vec<String> = (0..config.namespaces.max(1))
        .map(|i| format!("prop-{i}"))
        .collect();
    for name in &names {
        bed.namespace_everywhere(name, SCENARIO).await?;
    }
    let remote_clients = bed.remote_clients().await?;
    let remote_apis: Vec<Api<Namespace>> =
        remote_clients.iter().map(|c| Api::all(c.clone())).collect();
    let primary: Api<Namespace> = Api::all(bed.primary().await?);
    let mut watch = NamespaceWatch::start(
        remote_clients,
        &format!("{}={SCENARIO}", crate::bed::BENCH_LABEL),
    )
    .await?;
    let mut run = Run {
        primary,
        remote_apis,
        watch: &mut watch,
        names,
        enabled: vec![false; config.namespaces.max(1)],
        step: 0,
        pause: config.pause,
    };

    let before = bed.metrics().await?;
    let webhook = run.measure(config.warmup, config.changes).await?;
    let middle = bed.metrics().await?;
    eprintln!("[bench] deleting the webhook configuration: reconcile-only mode");
    bed.unregister_webhook().await?;
    let middle_after_probe = bed.metrics().await?;
    let reconcile = run.measure(config.warmup, config.changes).await?;
    let after = bed.metrics().await?;

    let pushed = |text: &str| sample(text, "pushes_total", &[("result", "applied")]);
    let corrected = |text: &str| sample(text, "drift_corrections_total", &[]);
    let total = (config.warmup + config.changes) as f64;

    let (webhook, reconcile) = (webhook.summaries()?, reconcile.summaries()?);
    let mut rows = vec![
        Row::baseline(
            "floor: direct PATCH on a remote -> its watch event (webhook phase)",
            webhook.floor,
        ),
        Row::against(
            format!("**webhook path: primary PATCH -> all {remotes} remote(s)**"),
            webhook.all_remotes,
            &webhook.floor,
        ),
    ];
    if remotes > 1 {
        rows.push(Row::against(
            "webhook path: primary PATCH -> first remote",
            webhook.first_remote,
            &webhook.floor,
        ));
    }
    if let Some(floor_all) = &webhook.floor_all {
        rows.push(Row::against(format!(
                "parallel floor: one direct PATCH to each of the {remotes} remotes at once -> all their watch events"
            ), *floor_all, &webhook.floor));
        rows.push(Row::against(
            format!("webhook path -> all {remotes} remotes, against the parallel floor"),
            webhook.all_remotes,
            floor_all,
        ));
    }
    rows.extend([
        Row::baseline("floor (reconcile-only phase)", reconcile.floor),
        Row::against(
            format!("reconcile-only: primary PATCH -> all {remotes} remote(s)"),
            reconcile.all_remotes,
            &reconcile.floor,
        ),
        Row::baseline(
            "primary PATCH answered, no webhook registered",
            reconcile.answered,
        ),
        Row::against(
            "primary PATCH answered, webhook pushing",
            webhook.answered,
            &reconcile.answered,
        ),
    ]);
    let p50_ratio = webhook.all_remotes.p50.as_secs_f64() / webhook.floor.p50.as_secs_f64();
    let parallel = webhook.floor_all.map_or(String::new(), |f| {
        format!(
            " (and {} the parallel floor's {} ms)",
            ratio(webhook.all_remotes.p50, f.p50),
            ms(f.p50)
        )
    });
    let verdict = format!(
        "{remotes} remote(s): webhook p50 {} ms = {} the floor's {} ms{parallel}: {}",
        ms(webhook.all_remotes.p50),
        ratio(webhook.all_remotes.p50, webhook.floor.p50),
        ms(webhook.floor.p50),
        crate::verdict(p50_ratio <= TARGET_RATIO),
    );
    let markdown = format!(
        "### {remotes} remote(s)\n\n{}\nDelivered by: webhook phase {:.0} pushes applied, {:.0} reconciler corrections (expected {:.0} and 0); reconcile-only phase {:.0} pushes, {:.0} corrections (expected 0 and {:.0}).\n\n",
        latency_table(&rows),
        pushed(&middle) - pushed(&before),
        corrected(&middle) - corrected(&before),
        total * remotes as f64,
        pushed(&after) - pushed(&middle_after_probe),
        corrected(&after) - corrected(&middle_after_probe),
        total * remotes as f64,
    );
    Ok(Figure { markdown, verdict })
}

struct Run<'a> {
    primary: Api<Namespace>,
    remote_apis: Vec<Api<Namespace>>,
    watch: &'a mut NamespaceWatch,
    names: Vec<String>,
    /// The value each namespace's managed label has now.
    enabled: Vec<bool>,
    step: usize,
    pause: Duration,
}

impl Run<'_> {
    /// `warmup + changes` rounds of one floor sample and one primary change; the first
    /// `warmup` are not kept.
    async fn measure(&mut self, warmup: usize, changes: usize) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for round in 0..warmup + changes.max(1) {
            let floor = self.floor_once().await?;
            tokio::time::sleep(self.pause).await;
            let floor_all = if self.remote_apis.len() > 1 {
                let sample = self.floor_all_once().await?;
                tokio::time::sleep(self.pause).await;
                Some(sample)
            } else {
                None
            };
            let (all, first, answered) = self.change_once().await?;
            tokio::time::sleep(self.pause).await;
            if round >= warmup {
                samples.floor.push(floor);
                samples.floor_all.extend(floor_all);
                samples.all_remotes.push(all);
                samples.first_remote.push(first);
                samples.answered.push(answered);
            }
            if (round + 1) % 50 == 0 {
                eprintln!("[bench]   {} rounds", round + 1);
            }
        }
        Ok(samples)
    }

    /// One direct PATCH on one remote (round robin) until its watch shows it.
    async fn floor_once(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let remote = self.step % self.remote_apis.len();
        let namespace = &self.names[self.step % self.names.len()];
        let value = self.step.to_string();
        let issued = Instant::now();
        set_label(
            &self.remote_apis[remote],
            namespace,
            FLOOR_LABEL,
            Some(&value),
        )
        .await?;
        let seen = self
            .watch
            .wait_label(&[remote], namespace, (FLOOR_LABEL, &value), CHANGE_TIMEOUT)
            .await?;
        Ok(seen[0] - issued)
    }

    /// One direct PATCH on every remote at once until every remote's watch shows it.
    async fn floor_all_once(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let namespace = &self.names[self.step % self.names.len()];
        let value = self.step.to_string();
        let all: Vec<usize> = (0..self.remote_apis.len()).collect();
        let issued = Instant::now();
        futures::future::try_join_all(
            self.remote_apis
                .iter()
                .map(|api| set_label(api, namespace, FLOOR_LABEL, Some(&value))),
        )
        .await?;
        let seen = self
            .watch
            .wait_label(&all, namespace, (FLOOR_LABEL, &value), CHANGE_TIMEOUT)
            .await?;
        Ok(seen.iter().max().copied().unwrap_or(issued) - issued)
    }

    /// One managed-label change on the primary until every remote's watch shows it. Returns
    /// (all remotes, first remote, primary PATCH answered).
    async fn change_once(&mut self) -> anyhow::Result<(Duration, Duration, Duration)> {
        self.step += 1;
        let index = self.step % self.names.len();
        let namespace = &self.names[index];
        self.enabled[index] = !self.enabled[index];
        let value = if self.enabled[index] {
            "enabled"
        } else {
            "disabled"
        };
        let all: Vec<usize> = (0..self.remote_apis.len()).collect();
        let issued = Instant::now();
        set_label(&self.primary, namespace, MANAGED_LABEL, Some(value)).await?;
        let answered = issued.elapsed();
        let seen = self
            .watch
            .wait_label(&all, namespace, (MANAGED_LABEL, value), CHANGE_TIMEOUT)
            .await?;
        let last = seen.iter().max().copied().unwrap_or(issued);
        let first = seen.iter().min().copied().unwrap_or(issued);
        Ok((last - issued, first - issued, answered))
    }
}
