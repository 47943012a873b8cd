//! A measurement, not a test (ignored): the peak memory (VmHWM) of a real `mesh-webhook`
//! process while one client floods its metrics port, which any pod may reach, with TLS
//! connections that each send part of a request head and then wait: what hyper and rustls hold
//! of a connection, times the connections the port keeps. Run it against the binary under
//! test and, for a baseline in the same run, another one (`MESH_WEBHOOK_BIN`):
//!
//!     cargo test -p mesh-webhook --test metrics_flood -- --ignored --nocapture
//!     MESH_WEBHOOK_BIN=/path/to/old/mesh-webhook cargo test ... (the same)
//!
//! Both processes get a header read timeout of 300 s: it stands in for a flooder fast enough
//! to open the connections within the default 10 s (4096 of them, a few hundred a second),
//! which a client in debug build on a loaded machine is not. The primary is unreachable (no
//! leader election, the reconciler retrying): serving does not depend on it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Connections the flood opens: the webhook port's cap, which the metrics port had too.
const FLOOD: usize = 4096;
/// Connections opening at once.
const CONCURRENCY: usize = 64;
/// How long anything that should happen at once may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// Peak memory that has not grown for this long is taken as the flood's.
const SETTLED: Duration = Duration::from_secs(3);

/// A throwaway CA and a leaf it signed for `localhost`: the client's roots, and the files of
/// the server's certificate and key in `dir`.
fn certificate(dir: &Path) -> (RootCertStore, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, leaf.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("root");
    (roots, cert_path, key_path)
}

/// The binary measured: `MESH_WEBHOOK_BIN`, else this package's.
fn binary() -> PathBuf {
    std::env::var_os("MESH_WEBHOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_mesh-webhook").into())
}

/// A `mesh-webhook` process and the address of its metrics port.
struct Process {
    child: Child,
    metrics_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Process {
    async fn start(cert: &Path, key: &Path, dir: tempfile::TempDir) -> Self {
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: p\n\
             contexts: [{name: p, context: {cluster: p, user: p}}]\n\
             clusters: [{name: p, cluster: {server: 'https://127.0.0.1:1'}}]\n\
             users: [{name: p, user: {token: t}}]\n",
        )
        .expect("write");
        let mut child = Command::new(binary())
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "--listen=127.0.0.1:0",
                "--metrics-listen=127.0.0.1:0",
                "--lease-name=",
                "--header-read-timeout=300s",
                "--log-format=json",
            ])
            // The line naming the ports, and warnings.
            .env("RUST_LOG", "warn,mesh_webhook::app=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mesh-webhook");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let metrics_addr = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read the log") {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(addr) = entry["metrics_addr"].as_str() {
                    return addr.parse().expect("metrics_addr");
                }
            }
            panic!("mesh-webhook ended before serving");
        })
        .await
        .expect("serving in time");
        // Drained, so that logging never blocks the process.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            metrics_addr,
            _dir: dir,
        }
    }

    /// VmHWM (the peak resident memory) and VmRSS, in KiB.
    fn memory(&self) -> (u64, u64) {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// The peak once it has stopped growing for [`SETTLED`].
    async fn settled_peak(&self) -> u64 {
        let started = Instant::now();
        let (mut peak, _) = self.memory();
        let mut since = Instant::now();
        while since.elapsed() < SETTLED {
            assert!(started.elapsed() < DEADLINE, "the peak kept growing");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (now, _) = self.memory();
            if now != peak {
                (peak, since) = (now, Instant::now());
            }
        }
        peak
    }
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

/// Status of `GET /healthz` on a new connection, and how long it took.
async fn healthz(connector: &TlsConnector, addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut tls = connect(connector, addr).await.expect("handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (status, started.elapsed())
}

/// [`FLOOD`] connections to `addr`, each sending `head_bytes` of a request head that never
/// ends, all kept open on this side.
async fn flood(
    connector: &TlsConnector,
    addr: SocketAddr,
    head_bytes: usize,
) -> Vec<TlsStream<TcpStream>> {
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: ".to_vec();
    head.resize(head_bytes, b'x');
    let head = &head;
    futures::stream::iter(0..FLOOD)
        .map(|_| async move {
            let mut tls = connect(connector, addr).await.ok()?;
            // The server may have closed it already to make room.
            let _ = tls.write_all(head).await;
            let _ = tls.flush().await;
            Some(tls)
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|tls| async move { tls })
        .collect()
        .await
}

/// Prints one markdown row per flood: the binary, the head each connection sent, the peak
/// before and under the flood, and `/healthz` during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn peak_memory_under_a_flood_of_the_metrics_port() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    mesh_webhook::fd_limit::raise().expect("open-files limit");
    println!(
        "| binary | head sent | VmHWM before | VmHWM under the flood | VmRSS then | /healthz then |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    // A head that fits the metrics port's 8 KiB buffer, and one that fits only a 64 KiB one.
    for head_bytes in [7 << 10, 60 << 10] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (roots, cert, key) = certificate(dir.path());
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(client));
        let process = Process::start(&cert, &key, dir).await;
        let addr = process.metrics_addr;
        let (status, _) = healthz(&connector, addr).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let before = process.settled_peak().await;

        let held = tokio::time::timeout(10 * DEADLINE, flood(&connector, addr, head_bytes))
            .await
            .expect("flooded in time");
        let peak = process.settled_peak().await;
        let (_, rss) = process.memory();
        let (status, took) = healthz(&connector, addr).await;
        drop(held);
        println!(
            "| {} | {} KiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {status} in {} ms |",
            binary().display(),
            head_bytes >> 10,
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0,
            took.as_millis(),
        );
    }
}
