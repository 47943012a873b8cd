//! `throughput`: the webhook alone. No-op AdmissionReviews (a namespace UPDATE that changes
//! no managed label) POSTed over TLS keep-alive connections by a load generator in this
//! process, against the local mesh-webhook process the mesh runs. Reported: reviews per
//! second, client-side latency, and CPU time per review of the webhook process (from
//! `/proc/<pid>/stat`) and of the load generator (which shares the machine's cores).
//!
//! Baseline in the same run: `GET /healthz` over the same connections, i.e. TLS and HTTP with
//! an empty handler: what the transport alone costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use mesh_testenv::mesh::MeshOptions;
use serde_json::{Value, json};

use crate::bed::{Bed, BedOptions};
use crate::https::{self, sample};
use crate::procfs;
use crate::stats::{Summary, ms};

const WARMUP: Duration = Duration::from_secs(1);
/// Target: reviews per second on this machine, load generator included.
const TARGET: f64 = 20_000.0;

pub struct Config {
    pub connections: Vec<usize>,
    pub duration: Duration,
    /// Worker threads of the load generator.
    pub threads: usize,
}

/// One load run.
struct Load {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    webhook_cpu: Duration,
    /// The whole mesh-bench process: mostly the load generator (the control-plane watches of
    /// the tool are idle meanwhile).
    loadgen_cpu: Duration,
    /// Every core of the machine.
    machine_busy: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_request(cpu: Duration, requests: u64) -> String {
        if requests == 0 {
            return "-".to_owned();
        }
        format!("{:.1}", cpu.as_secs_f64() * 1e6 / requests as f64)
    }
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    eprintln!("[bench] throughput");
    let bed = Bed::start(BedOptions::new(options, 0, Duration::from_secs(600), dir)).await?;
    let addr = bed.mesh.listen_address().to_owned();
    let review = Bytes::from(serde_json::to_vec(&no_op_review())?);
    check_answer(&addr, &bed, &review).await?;

    let mut out = format!(
        "## throughput\n\nNo-op AdmissionReview (namespace UPDATE changing only an unmanaged label, {} bytes, with managedFields like the apiserver sends) POSTed to `/mutate` of the local mesh-webhook process over TLS 1.3 keep-alive, by a tokio/hyper/rustls load generator in the mesh-bench process ({} worker thread(s)), {:?} per run after {WARMUP:?} of warm-up. Baseline: `GET /healthz` on the same connections. The load generator, the webhook and an idle primary control plane share the machine's {} cores: **this is the whole machine's capacity, not the webhook's alone.** CPU columns in cores are CPU seconds per second of the run; \"machine\" is every process and the kernel (`/proc/stat`), so machine minus webhook minus load generator is what everything else took.\n\n\
         | endpoint | connections | req/s | ratio to healthz | p50 ms | p99 ms | webhook CPU us/req | load generator CPU us/req | webhook cores | load generator cores | machine cores |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        review.len(),
        config.threads,
        config.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut best = 0.0f64;
    for &connections in &config.connections {
        let connections = connections.max(1);
        eprintln!("[bench]   {connections} connection(s): /healthz");
        let shape = (connections, config.threads);
        let health = load(&bed, &addr, None, shape, config.duration).await?;
        eprintln!("[bench]   {connections} connection(s): /mutate");
        let reviews_before = sample(&bed.metrics().await?, "admission_reviews_total", &[]);
        let mutate = load(&bed, &addr, Some(review.clone()), shape, config.duration).await?;
        let answered =
            sample(&bed.metrics().await?, "admission_reviews_total", &[]) - reviews_before;
        // Warm-up requests are answered too, but not counted in `requests`.
        if answered < mutate.requests as f64 {
            bail!(
                "the webhook counted {answered} reviews for {} requests",
                mutate.requests
            );
        }
        best = best.max(mutate.rate());
        for (endpoint, run, baseline) in [
            ("/healthz", &health, None),
            ("**/mutate**", &mutate, Some(health.rate())),
        ] {
            let summary = Summary::of(&run.latencies).context("no requests completed")?;
            let ratio = baseline.map_or("-".to_owned(), |b| format!("{:.2}x", run.rate() / b));
            let cores = |cpu: Duration| cpu.as_secs_f64() / run.elapsed.as_secs_f64();
            out.push_str(&format!(
                "| {endpoint} | {connections} | {:.0} | {ratio} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
                run.rate(),
                ms(summary.p50),
                ms(summary.p99),
                Load::cpu_per_request(run.webhook_cpu, run.requests),
                Load::cpu_per_request(run.loadgen_cpu, run.requests),
                cores(run.webhook_cpu),
                cores(run.loadgen_cpu),
                cores(run.machine_busy),
            ));
        }
    }
    out.push_str(&format!(
        "\n**Target: >= {TARGET:.0} reviews/s: best {best:.0}/s: {}.**\n",
        crate::verdict(best >= TARGET)
    ));
    Ok(out)
}

/// A namespace UPDATE whose managed labels are the same before and after.
pub fn no_op_review() -> Value {
    let namespace = |team: &str, resource_version: &str| {
        json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": "shop",
                "uid": "0f6a1c52-3d4e-4b7a-9c8d-1e2f3a4b5c6d",
                "resourceVersion": resource_version,
                "creationTimestamp": "2025-11-03T09:14:27Z",
                "labels": {
                    "istio-injection": "enabled",
                    "kubernetes.io/metadata.name": "shop",
                    "team": team
                },
                "annotations": {
                    "kubectl-mesh.io/propagation": "{\"remote-1\":\"applied\"}"
                },
                "managedFields": [
                    {
                        "manager": "kubectl-create",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2025-11-03T09:14:27Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:istio-injection": {}, "f:kubernetes.io/metadata.name": {}}}}
                    },
                    {
                        "manager": "mesh-webhook",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2025-11-03T09:14:27Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl-mesh.io/propagation": {}}}}
                    },
                    {
                        "manager": "kubectl-label",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2025-11-04T16:02:51Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}
                    }
                ]
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        })
    };
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "a7d0c9e4-51b2-4f3e-8a66-0c1d2e3f4a5b",
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "requestKind": {"group": "", "version": "v1", "kind": "Namespace"},
            "requestResource": {"group": "", "version": "v1", "resource": "namespaces"},
            "name": "shop",
            "operation": "UPDATE",
            "userInfo": {
                "username": "kubernetes-admin",
                "groups": ["kubeadm:cluster-admins", "system:authenticated"]
            },
            "object": namespace("checkout", "48214"),
            "oldObject": namespace("payments", "48213"),
            "dryRun": false,
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-label"}
        }
    })
}

/// The webhook allows the review, patches nothing and says nothing.
async fn check_answer(addr: &str, bed: &Bed, review: &Bytes) -> anyhow::Result<()> {
    let mut sender = https::connect(addr, bed.tls()).await?;
    let body = https::call(
        &mut sender,
        https::request(addr, "/mutate", Some(review.clone())),
    )
    .await?;
    let answer: Value = serde_json::from_slice(&body).context("the answer is not JSON")?;
    let response = &answer["response"];
    if response["allowed"] != true
        || response.get("patch").is_some()
        || response.get("warnings").is_some_and(|w| !w.is_null())
    {
        bail!("unexpected answer to a no-op review: {answer}");
    }
    Ok(())
}

/// `connections` clients sending back to back for `duration` after a warm-up, on a runtime of
/// their own with `threads` workers (like `wrk -t`): the load generator's share of the cores is
/// chosen, not whatever the tool's main runtime happens to have.
async fn load(
    bed: &Bed,
    addr: &str,
    review: Option<Bytes>,
    (connections, threads): (usize, usize),
    duration: Duration,
) -> anyhow::Result<Load> {
    let path = if review.is_some() {
        "/mutate"
    } else {
        "/healthz"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("load-generator")
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let start = Instant::now() + WARMUP;
    let end = start + duration;
    let tls = bed.tls();
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, review, tls) = (addr.to_owned(), review.clone(), tls.clone());
            runtime.spawn(async move {
                // Connected on this runtime, so that its reactor drives the socket.
                let mut sender = https::connect(&addr, tls).await?;
                let mut latencies = Vec::new();
                loop {
                    let issued = Instant::now();
                    if issued >= end {
                        break;
                    }
                    https::call(&mut sender, https::request(&addr, path, review.clone())).await?;
                    if issued >= start {
                        latencies.push(issued.elapsed());
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    // CPU counters at the edges of the measured window.
    let (pid, me) = (bed.webhook_pid, std::process::id());
    tokio::time::sleep_until(start.into()).await;
    let before = (
        procfs::cpu_time(pid)?,
        procfs::cpu_time(me)?,
        procfs::machine_busy()?,
    );
    let began = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let elapsed = began.elapsed();
    let after = (
        procfs::cpu_time(pid)?,
        procfs::cpu_time(me)?,
        procfs::machine_busy()?,
    );
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.context("a load task panicked")??);
    }
    // Dropping a runtime may block; not allowed from async code.
    runtime.shutdown_background();
    Ok(Load {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        webhook_cpu: after.0.saturating_sub(before.0),
        loadgen_cpu: after.1.saturating_sub(before.1),
        machine_busy: after.2.saturating_sub(before.2),
    })
}
