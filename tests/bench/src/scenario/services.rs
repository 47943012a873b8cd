//! `services`: `kubectl mesh services -A` and the dashboard over a large mesh: a primary and
//! `remotes` remotes (attached with `--services-view`), each with `namespaces` namespaces of
//! `services` Services and one EndpointSlice per Service (two ready endpoints). Services are
//! headless: the test environment's service range (a /24) has no address for thousands.
//!
//! Measured: the wall time of `kubectl-mesh services -A` (JSON and the table) beside the
//! floor, plain `kubectl get services,endpointslices -A -o json` of every cluster at once
//! (what the command must read at least); and the dashboard's peak resident memory (VmHWM)
//! once its page state holds every service of every cluster, with a page connected.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _, future::try_join_all, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::Api;
use kube::api::PostParams;
use mesh_testenv::mesh::MeshOptions;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::bed::{BENCH_LABEL, Bed, BedOptions, create_namespaces};
use crate::procfs::{Memory, mib};
use crate::stats::Summary;

const SCENARIO: &str = "services";
/// Objects created concurrently per cluster while setting up.
const CREATE_CONCURRENCY: usize = 32;
/// Timed runs of each command.
const RUNS: usize = 5;
/// Targets.
const TARGET_SERVICES: Duration = Duration::from_secs(2);
/// 30 MB (the unit), 28.6 MiB.
const TARGET_DASHBOARD_KIB: u64 = 30_000_000 / 1024;

pub struct Config {
    pub namespaces: usize,
    pub services: usize,
    pub remotes: usize,
}

pub async fn run(
    options: &MeshOptions,
    config: &Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    eprintln!("[bench] services");
    let mut options = options.clone();
    options.attach_args.push("--services-view".to_owned());
    let bed = Bed::start(
        BedOptions::new(
            &options,
            config.remotes.max(1),
            Duration::from_secs(60),
            dir,
        )
        .attached(),
    )
    .await?;
    let names: Vec<String> = (0..config.namespaces)
        .map(|i| format!("sv-{i:05}"))
        .collect();
    let started = Instant::now();
    let mut creations = Vec::new();
    for (index, cluster) in bed.env.clusters().iter().enumerate() {
        let client = cluster.client().await?;
        let names = names.clone();
        let services = config.services;
        creations.push(async move {
            let namespaces = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let mut labels =
                        BTreeMap::from([(BENCH_LABEL.to_owned(), SCENARIO.to_owned())]);
                    if index == 0 && i % 2 == 0 {
                        labels.insert("istio-injection".to_owned(), "enabled".to_owned());
                    }
                    (name.clone(), labels)
                })
                .collect();
            create_namespaces(&client, namespaces, CREATE_CONCURRENCY).await?;
            create_services(&client, &names, services).await
        });
    }
    eprintln!(
        "[bench]   creating {} namespaces x {} services (and their EndpointSlices) on each of {} clusters",
        config.namespaces,
        config.services,
        bed.env.clusters().len()
    );
    try_join_all(creations).await?;
    eprintln!("[bench]   created in {:.1?}", started.elapsed());
    let total = config.namespaces * config.services;
    if let Some(path) = std::env::var_os("MESH_BENCH_SERVICES_HOLD") {
        hold(&bed, PathBuf::from(path).as_path()).await?;
    }

    // The floor: plain kubectl reading the same objects of every cluster at once.
    let mut floor = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        try_join_all(bed.env.clusters().iter().map(|cluster| {
            let mut cmd = bed.env.kubectl(cluster);
            cmd.args(["get", "services,endpointslices", "-A", "-o", "json"]);
            quiet(tokio::process::Command::from(cmd))
        }))
        .await?;
        floor.push(start.elapsed());
    }
    let mut json_runs = Vec::new();
    let mut table_runs = Vec::new();
    for _ in 0..RUNS {
        for (output, runs) in [("json", &mut json_runs), ("table", &mut table_runs)] {
            let mut cmd = tokio::process::Command::from(bed.mesh.plugin());
            cmd.args(["services", "-A", "-o", output]);
            let start = Instant::now();
            let stdout = quiet(cmd).await?;
            runs.push(start.elapsed());
            if output == "json" {
                let report: serde_json::Value = serde_json::from_slice(&stdout)?;
                let rows = report["services"].as_array().map_or(0, Vec::len);
                let read = clusters_read(&report);
                if rows < total || read != bed.env.clusters().len() {
                    bail!(
                        "services -A listed {rows} services (want {total}) and read {read} clusters"
                    );
                }
            }
        }
    }

    eprintln!(
        "[bench]   floor {floor:.2?}; services -A -o json {json_runs:.2?}; table {table_runs:.2?}"
    );

    // The dashboard: peak memory once its state holds everything, a page connected.
    let dashboard = bed.mesh.dashboard(Stdio::null()).await?;
    let (pid, port, token) = (
        dashboard.process.id().context("dashboard pid")?,
        dashboard.port,
        dashboard.token.clone(),
    );
    let dashboard_started = Instant::now();
    let page = tokio::spawn(read_events(port, token.clone()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let complete = loop {
        if holds_every_service(port, &token, total, bed.env.clusters().len())
            .await
            .unwrap_or(false)
        {
            break dashboard_started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the dashboard's state did not hold every service within 300s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A few more snapshots' worth of time with the page connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let memory = Memory::of(pid)?;
    eprintln!("[bench]   dashboard complete after {complete:.1?}: {memory:?}");
    let pushed = page.is_finished();
    page.abort();
    drop(dashboard);

    let floor = Summary::of(&floor).context("no floor run")?;
    let json = Summary::of(&json_runs).context("no json run")?;
    let table = Summary::of(&table_runs).context("no table run")?;
    let mut md = String::new();
    md.push_str(&format!(
        "## services\n\n{} clusters x {} namespaces x {} services ({} Services and as many \
         EndpointSlices per cluster); {RUNS} runs each.\n\n",
        bed.env.clusters().len(),
        config.namespaces,
        config.services,
        total
    ));
    md.push_str("| command | p50 | max | vs floor (p50) |\n|---|---|---|---|\n");
    md.push_str(&format!(
        "| floor: `kubectl get services,endpointslices -A -o json`, every cluster at once | {:.2?} | {:.2?} | 1.00x |\n",
        floor.p50, floor.max
    ));
    for (name, s) in [
        ("`kubectl mesh services -A -o json`", &json),
        ("`kubectl mesh services -A`", &table),
    ] {
        md.push_str(&format!(
            "| {name} | {:.2?} | {:.2?} | {:.2}x |\n",
            s.p50,
            s.max,
            s.p50.as_secs_f64() / floor.p50.as_secs_f64()
        ));
    }
    md.push_str(&format!(
        "\n- target: `services -A` under {TARGET_SERVICES:?}: {} (max of both outputs {:.2?})\n",
        crate::verdict(json.max.max(table.max) < TARGET_SERVICES),
        json.max.max(table.max)
    ));
    md.push_str(&format!(
        "- dashboard: state complete {:.1?} after start; peak resident memory (VmHWM) {} MiB, \
         resident now {} MiB, a page connected{}\n",
        complete,
        mib(memory.hwm_kib),
        mib(memory.rss_kib),
        if pushed {
            " (its stream ended early)"
        } else {
            ""
        }
    ));
    md.push_str(&format!(
        "- target: dashboard under 30 MB ({} MiB): {}\n",
        mib(TARGET_DASHBOARD_KIB),
        crate::verdict(memory.hwm_kib < TARGET_DASHBOARD_KIB)
    ));
    Ok(md)
}

/// Creates `per_namespace` headless Services in every namespace, each with one EndpointSlice
/// of two ready endpoints.
async fn create_services(
    client: &kube::Client,
    namespaces: &[String],
    per_namespace: usize,
) -> anyhow::Result<()> {
    let work: Vec<(String, usize)> = namespaces
        .iter()
        .flat_map(|ns| (0..per_namespace).map(move |i| (ns.clone(), i)))
        .collect();
    stream::iter(work)
        .map(|(ns, i)| {
            let client = client.clone();
            async move {
                let name = format!("svc-{i}");
                let service: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}],
                             "selector": {"app": name}},
                }))?;
                Api::<Service>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &service)
                    .await
                    .with_context(|| format!("creating Service {ns}/{name}"))?;
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-a"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [
                        {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                        {"addresses": ["10.1.0.2"], "conditions": {"ready": true}},
                    ],
                }))?;
                Api::<EndpointSlice>::namespaced(client, &ns)
                    .create(&PostParams::default(), &slice)
                    .await
                    .with_context(|| format!("creating EndpointSlice {ns}/{name}-a"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Runs a command to its end; its stdout, or an error with its stderr.
async fn quiet(mut cmd: tokio::process::Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Whether the dashboard holds every service of every cluster (`clusters` read, at least
/// `total` rows, each of the bench's services with its two ready endpoints on every cluster),
/// read a page at a time as the page reads them.
async fn holds_every_service(
    port: u16,
    token: &str,
    total: usize,
    clusters: usize,
) -> anyhow::Result<bool> {
    // As many as the page asks for at once.
    const PAGE: usize = 500;
    let mut rows = 0;
    loop {
        let path = format!("/services.json?offset={rows}&limit={PAGE}&token={token}");
        let (_, body) = mesh_testenv::http::get(port, &format!("127.0.0.1:{port}"), &path).await?;
        let page: serde_json::Value = serde_json::from_str(&body)?;
        let read = clusters_read(&page);
        let services = page["services"].as_array().context("no services")?;
        // The bench's services: `default/kubernetes` has no ready endpoint here.
        let ready = services
            .iter()
            .filter(|r| {
                r["namespace"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("sv-"))
            })
            .all(|r| {
                r["clusters"]
                    .as_object()
                    .is_some_and(|c| c.values().all(|cell| cell["readyEndpoints"] == 2))
            });
        if read != clusters || !ready {
            return Ok(false);
        }
        rows += services.len();
        if services.len() < PAGE {
            return Ok(rows >= total);
        }
    }
}

/// How many clusters a services report (of `services -o json` or a dashboard page) says it
/// read.
fn clusters_read(report: &serde_json::Value) -> usize {
    report["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "read")
        .count()
}

/// A page's event stream, read and dropped until it ends.
async fn read_events(port: u16, token: String) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET /events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0; 64 * 1024];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// For profiling by hand: writes a shell script that runs the plugin against this
/// environment (`sh <path> dashboard --no-browser`) to `path`, and waits until it is removed.
async fn hold(bed: &Bed, path: &std::path::Path) -> anyhow::Result<()> {
    let plugin = bed.mesh.plugin();
    let mut script = String::from("#!/bin/sh\n");
    for (key, value) in plugin.get_envs() {
        if let Some(value) = value {
            script.push_str(&format!(
                "export {}='{}'\n",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    script.push_str(&format!(
        "exec ${{WRAP:-}} '{}'",
        plugin.get_program().to_string_lossy()
    ));
    for arg in plugin.get_args() {
        script.push_str(&format!(" '{}'", arg.to_string_lossy()));
    }
    script.push_str(" \"$@\"\n");
    std::fs::write(path, script)?;
    eprintln!(
        "[bench]   holding the environment until {} is removed",
        path.display()
    );
    while path.exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
