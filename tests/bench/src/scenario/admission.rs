//! `admission-overhead`: what the webhook's registration costs primary namespace updates that
//! touch no managed label. Its matchConditions should keep the apiserver from calling it, so
//! such a PATCH should take as long as with no webhook registered at all.
//!
//! Modes alternate in blocks within one environment, so that drift in the machine's load hits
//! every mode alike: registered as installed, not registered (the configuration deleted), and
//! registered without the `managed-label-changed` matchCondition (the webhook is called for
//! every update and answers "no push": what the matchCondition saves). The webhook's own
//! counter of admission reviews says whether it was called.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use mesh_testenv::mesh::MeshOptions;

use crate::bed::{Bed, BedOptions, MANAGED_LABEL_CONDITION, set_label};
use crate::https::sample;
use crate::stats::{Row, Summary, latency_table, ms};

const SCENARIO: &str = "admission";
const NAMESPACE: &str = "adm-0";
/// The unmanaged label every PATCH changes.
const TOUCH_LABEL: &str = "mesh-bench/touch";
/// Between two PATCHes: enough for the apiserver's own follow-ups (watch fan-out) to finish.
const PAUSE: Duration = Duration::from_millis(20);
/// Target: at most this much added at p99.
const TARGET_ADDED: Duration = Duration::from_millis(2);

pub struct Config {
    pub changes: usize,
    pub warmup: usize,
    pub cycles: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Registered,
    Unregistered,
    NoMatchConditions,
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    eprintln!("[bench] admission-overhead");
    let bed =
        Bed::start(BedOptions::new(options, 1, Duration::from_secs(600), dir).attached()).await?;
    bed.namespace_everywhere(NAMESPACE, SCENARIO).await?;
    let primary: Api<Namespace> = Api::all(bed.primary().await?);
    let installed = bed.webhook_configuration().await?;
    let mut unconditional = installed.clone();
    for webhook in &mut unconditional.webhooks.iter_mut().flatten() {
        if let Some(conditions) = &mut webhook.match_conditions {
            conditions.retain(|c| c.name != MANAGED_LABEL_CONDITION);
        }
    }

    let cycles = config.cycles.max(1);
    let per_block = config.changes.max(1).div_ceil(cycles);
    let mut step = 0usize;
    for _ in 0..config.warmup {
        step += 1;
        set_label(&primary, NAMESPACE, TOUCH_LABEL, Some(&step.to_string())).await?;
    }
    let mut samples: Vec<(Mode, Vec<Duration>, f64)> = vec![
        (Mode::Unregistered, Vec::new(), 0.0),
        (Mode::Registered, Vec::new(), 0.0),
        (Mode::NoMatchConditions, Vec::new(), 0.0),
    ];
    let mut current = Mode::Registered;
    for cycle in 0..cycles {
        for mode in [
            Mode::Registered,
            Mode::Unregistered,
            Mode::NoMatchConditions,
            Mode::Unregistered,
        ] {
            switch(&bed, &mut current, mode, &installed, &unconditional).await?;
            eprintln!("[bench]   cycle {}: {mode:?}", cycle + 1);
            let calls_before = reviews(&bed).await?;
            // Both unregistered blocks of a cycle share the block size of the others.
            let count = if mode == Mode::Unregistered {
                per_block.div_ceil(2)
            } else {
                per_block
            };
            let mut block = Vec::with_capacity(count);
            for _ in 0..count {
                step += 1;
                let issued = Instant::now();
                set_label(&primary, NAMESPACE, TOUCH_LABEL, Some(&step.to_string())).await?;
                block.push(issued.elapsed());
                tokio::time::sleep(PAUSE).await;
            }
            let calls = reviews(&bed).await? - calls_before;
            let entry = samples
                .iter_mut()
                .find(|(m, _, _)| *m == mode)
                .context("every mode has an entry")?;
            entry.1.extend(block);
            entry.2 += calls;
        }
    }

    let summary = |mode: Mode| -> anyhow::Result<(Summary, f64)> {
        let (_, v, calls) = samples
            .iter()
            .find(|(m, _, _)| *m == mode)
            .context("every mode has an entry")?;
        Ok((Summary::of(v).context("no samples")?, *calls))
    };
    let (off, off_calls) = summary(Mode::Unregistered)?;
    let (on, on_calls) = summary(Mode::Registered)?;
    let (bare, bare_calls) = summary(Mode::NoMatchConditions)?;
    let rows = [
        Row::baseline("not registered (configuration deleted)", off),
        Row::against("**registered as installed (matchConditions)**", on, &off),
        Row::against(
            "registered without the managed-label-changed matchCondition",
            bare,
            &off,
        ),
    ];
    let added = |a: Duration, b: Duration| {
        let delta = a.as_secs_f64() - b.as_secs_f64();
        format!("{:+.2}", delta * 1000.0)
    };
    let added_p99 = on.p99.saturating_sub(off.p99);
    Ok(format!(
        "## admission-overhead\n\nPATCH of an unmanaged label (`{TOUCH_LABEL}`) on a primary namespace, client-side latency (kube client, keep-alive), {per_block} per block, {cycles} cycle(s) of registered / not / without matchCondition / not, {PAUSE:?} apart; one remote attached.\n\n{}\n\
         | added vs not registered | p50 ms | p95 ms | p99 ms | webhook calls |\n|---|---:|---:|---:|---:|\n\
         | registered as installed | {} | {} | {} | {on_calls:.0} |\n\
         | without the matchCondition | {} | {} | {} | {bare_calls:.0} |\n\
         | (not registered) | | | | {off_calls:.0} |\n\n\
         **Target: p99 added <= {} ms: {} ms added: {}.** Webhook calls counted by its `admission_reviews_total`.\n",
        latency_table(&rows),
        added(on.p50, off.p50),
        added(on.p95, off.p95),
        added(on.p99, off.p99),
        added(bare.p50, off.p50),
        added(bare.p95, off.p95),
        added(bare.p99, off.p99),
        ms(TARGET_ADDED),
        added(on.p99, off.p99),
        crate::verdict(added_p99 <= TARGET_ADDED),
    ))
}

/// Every admission review the webhook answered so far.
async fn reviews(bed: &Bed) -> anyhow::Result<f64> {
    Ok(sample(
        &bed.metrics().await?,
        "admission_reviews_total",
        &[],
    ))
}

async fn switch(
    bed: &Bed,
    current: &mut Mode,
    to: Mode,
    installed: &MutatingWebhookConfiguration,
    unconditional: &MutatingWebhookConfiguration,
) -> anyhow::Result<()> {
    if *current == to {
        return Ok(());
    }
    if *current != Mode::Unregistered {
        bed.unregister_webhook().await?;
    }
    match to {
        Mode::Registered => bed.register_webhook(installed).await?,
        Mode::NoMatchConditions => bed.register_webhook(unconditional).await?,
        Mode::Unregistered => {}
    }
    *current = to;
    Ok(())
}
