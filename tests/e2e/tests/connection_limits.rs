//! A hostile network cannot starve the webhook: 2,000 idle connections that completed the
//! handshake with the apiserver's client certificate (the worst case: each holds a full TLS
//! session) and 50 senders stalling mid-body, while the real apiserver's reviews are answered
//! in time, the stalled bodies are cut at the body deadline, the idle connections are closed
//! by the server after the idle timeout, and the webhook's memory stays under the Deployment's
//! limit.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, stream};
use mesh_e2e::{Caller, create_everywhere, label_on_primary, own_mesh_with, webhook_tls_client};
use mesh_testenv::mesh::MeshOptions;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;

const IDLE_CONNECTIONS: usize = 2_000;
const SLOW_SENDERS: usize = 50;
const LABEL_EDITS: usize = 20;
/// The webhook configuration's timeoutSeconds: past it the apiserver gives up on the webhook.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
) -> anyhow::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(connector.connect(name, tcp).await?)
}

/// Resolves when the server closes `stream` (end of stream or reset); what it sent first.
async fn server_closes(mut stream: TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Resident memory of process `pid` in bytes (VmRSS).
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .context("no VmRSS")?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The webhook container's memory limit in the shipped Deployment, in bytes.
fn deployment_memory_limit() -> anyhow::Result<u64> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/deployment.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // The file holds the Deployment and its PodDisruptionBudget.
    let doc = text
        .split("\n---\n")
        .map(serde_yaml::from_str::<serde_yaml::Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|doc| doc["kind"] == "Deployment")
        .with_context(|| format!("no Deployment in {}", path.display()))?;
    let limit = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .context("no memory limit in the Deployment")?;
    let (number, unit) = limit.split_at(
        limit
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(limit.len()),
    );
    let factor = match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => anyhow::bail!("unexpected memory unit {other:?} in {limit:?}"),
    };
    Ok(number.parse::<u64>()? * factor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_connections_neither_starve_the_apiserver_nor_stay_open()
-> anyhow::Result<()> {
    // 2,000 sockets here too.
    mesh_webhook::fd_limit::raise()?;
    let memory_limit = deployment_memory_limit()?;
    let mut options = MeshOptions::from_workspace()?;
    options.webhook_args = vec![
        "--idle-timeout".into(),
        format!("{}s", IDLE_TIMEOUT.as_secs()),
        "--body-timeout".into(),
        format!("{}s", BODY_TIMEOUT.as_secs()),
        // Longer than the idle timeout: what closes the idle connections is the idle timeout.
        "--header-read-timeout".into(),
        "300s".into(),
    ];
    let (env, mesh) = own_mesh_with(1, options).await?;
    let ns = create_everywhere(&env, "crowded").await?;
    let connector = webhook_tls_client(&mesh, Caller::Apiserver)?;
    let addr = mesh.listen_address().to_owned();

    // The idle crowd: handshakes completed, then silence.
    let opened = Instant::now();
    let idle: Vec<_> = stream::iter(0..IDLE_CONNECTIONS)
        .map(|_| async {
            let connection = connect(&connector, &addr).await?;
            anyhow::Ok((connection, Instant::now()))
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("opening the idle connections")?;
    eprintln!(
        "{IDLE_CONNECTIONS} idle connections open in {:.1?}",
        opened.elapsed()
    );
    let last_opened = Instant::now();
    let idle_closed: Vec<_> = idle
        .into_iter()
        .map(|(connection, opened)| {
            tokio::spawn(async move { (server_closes(connection).await, opened.elapsed()) })
        })
        .collect();

    // The stalled senders: headers and a few bytes of a promised 4 KiB body.
    let mut stalled = Vec::new();
    for _ in 0..SLOW_SENDERS {
        let mut tls = connect(&connector, &addr).await?;
        tls.write_all(
            format!(
                "POST /mutate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: 4096\r\n\r\n{{\"apiVersion\""
            )
            .as_bytes(),
        )
        .await?;
        let started = Instant::now();
        stalled.push(tokio::spawn(async move {
            (server_closes(tls).await, started.elapsed())
        }));
    }

    // The real apiserver's reviews: answered by the webhook (its warning says where the
    // change landed; failurePolicy Ignore would let an unanswered edit through silently).
    let mut latencies = Vec::new();
    let mut peak_rss = rss(mesh.webhook_pid())?;
    for edit in 0..LABEL_EDITS {
        let value = if edit % 2 == 0 { "enabled" } else { "disabled" };
        let started = Instant::now();
        let warnings = label_on_primary(&env, &ns, &[&format!("istio-injection={value}")]).await?;
        latencies.push(started.elapsed());
        // Either the push wrote the change or found it written: the reconciler, woken by the
        // remote's watch while the edits flip, may apply the pushed value a moment first.
        assert!(
            warnings.contains(&format!("istio-injection={value} applied on remote-1"))
                || warnings.contains("remote-1 already in sync"),
            "edit {edit} was not answered by the webhook: {warnings}"
        );
        peak_rss = peak_rss.max(rss(mesh.webhook_pid())?);
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "label edits through the webhook: p50 {:.0?}, p99 {p99:.0?}",
        latencies[latencies.len() / 2]
    );
    assert!(
        p99 < WEBHOOK_TIMEOUT,
        "p99 {p99:?} of the apiserver's edits is not under the webhook timeout"
    );
    eprintln!(
        "webhook RSS with {IDLE_CONNECTIONS} idle and {SLOW_SENDERS} stalled connections: {} MiB (limit {} MiB)",
        peak_rss >> 20,
        memory_limit >> 20
    );
    assert!(
        peak_rss < memory_limit,
        "the webhook's RSS {peak_rss} is over the Deployment's limit {memory_limit}"
    );

    // The stalled bodies are cut at the body deadline, with an answer.
    for sender in stalled {
        let (answer, after) = tokio::time::timeout(BODY_TIMEOUT * 4, sender)
            .await
            .context("a stalled sender was not cut off")??;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            after + Duration::from_secs(1) >= BODY_TIMEOUT,
            "cut after {after:?}"
        );
    }

    // The idle crowd is closed by the server, not before the idle timeout.
    for connection in idle_closed {
        let (sent, open_for) =
            tokio::time::timeout_at((last_opened + IDLE_TIMEOUT * 3).into(), connection)
                .await
                .context("an idle connection was still open long after the idle timeout")??;
        assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
        assert!(
            open_for + Duration::from_secs(1) >= IDLE_TIMEOUT,
            "closed {open_for:?} after its handshake"
        );
    }
    Ok(())
}
