//! The real server, bound on 127.0.0.1:0 in-process, seen from the network: TLS 1.2 and 1.3
//! only, no plain HTTP, body limit and malformed JSON answered with JSON errors, a
//! certificate rotated on disk served without a restart, and each port's connection cap.
//!
//! Certificates are generated at run time with rcgen (a throwaway CA and two leaves). The
//! primary cluster is a fake apiserver behind `kube::Client::new`: lists are empty and watches
//! never send anything, which is all the reconciler needs to start and stop.
//!
//! TLS 1.0/1.1 are offered with ClientHello records written byte by byte (rustls cannot speak
//! those versions), and the refusal must be the server's fatal `protocol_version` alert.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::http::{Request, StatusCode};
use mesh_core::fake_apiserver;
use mesh_webhook::{app::Webhook, http::BODY_LIMIT, listen::Limits};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    ClientConfig, ProtocolVersion, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, ServerName},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// How long anything that should happen at once may take (generous for loaded CI machines).
const DEADLINE: Duration = Duration::from_secs(20);

/// A throwaway CA and leaves it signs for `localhost` and 127.0.0.1.
struct Pki {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf: PEM for the server's files, DER to recognize it on the wire.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh-webhook test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).expect("CA");
        Self {
            ca: ca.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        roots
    }
}

/// A primary apiserver with nothing in it: every list is empty, every watch stays silent,
/// anything else is 404.
fn empty_primary() -> kube::Client {
    let service = tower::service_fn(|request: Request<kube::client::Body>| async move {
        let query = request.uri().query().unwrap_or_default();
        if query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
        {
            // A watch that never sends an event; dropped when the reconciler stops.
            std::future::pending::<()>().await;
        }
        let (status, body) = if request.method() == axum::http::Method::GET {
            let list = json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": "1"}, "items": [],
            });
            (StatusCode::OK, list)
        } else {
            fake_apiserver::status(StatusCode::NOT_FOUND, "NotFound", "not found")
        };
        Ok::<_, Infallible>(fake_apiserver::json_response(status, &body))
    });
    kube::Client::new(service, "default")
}

/// The webhook process, serving on free ports of 127.0.0.1.
struct Server {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    pki: Pki,
    first: Leaf,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: JoinHandle<mesh_webhook::listen::Result<()>>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|webhook| webhook).await
    }

    /// [`Server::start`], the webhook's settings changed by `configure` first.
    async fn start_with(configure: impl FnOnce(Webhook) -> Webhook) -> Self {
        let pki = Pki::new();
        let first = pki.leaf("first");
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomically(&dir.path().join("tls.crt"), &first.cert_pem);
        write_atomically(&dir.path().join("tls.key"), &first.key_pem);
        let bound = configure(Webhook {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_name: None,
            identity: "tls-test".to_owned(),
            ..Webhook::new(
                empty_primary(),
                dir.path().join("tls.crt"),
                dir.path().join("tls.key"),
            )
        })
        .bind()
        .await
        .expect("bind");
        let addr = bound.local_addr();
        let metrics_addr = bound.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Self {
            addr,
            metrics_addr,
            pki,
            first,
            dir,
            shutdown,
            task,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// A client of this server's CA offering exactly `versions`.
    fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(self.pki.roots())
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connect_to(self.addr, versions).await
    }

    async fn connect_to(
        &self,
        addr: SocketAddr,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        self.client(versions).connect(name, tcp).await
    }

    /// One HTTP/1.1 request to the webhook port over TLS 1.3 or 1.2; the parsed answer.
    async fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.request_at(self.addr, method, path, body).await
    }

    /// [`Server::request`] to `addr`, one of the server's ports.
    async fn request_at(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> HttpResponse {
        let mut tls = tokio::time::timeout(DEADLINE, self.connect_to(addr, rustls::ALL_VERSIONS))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (mut reader, mut writer) = tokio::io::split(&mut tls);
        // Written while the answer is read: the server may answer (413) before reading the
        // body, and then stops reading it.
        let write = async {
            let _ = writer.write_all(head.as_bytes()).await;
            let _ = writer.write_all(body).await;
            let _ = writer.flush().await;
        };
        let read = async {
            let mut raw = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                if let Some(response) = HttpResponse::parse(&raw) {
                    return response;
                }
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&chunk[..n]),
                }
            }
            HttpResponse::parse(&raw).unwrap_or_else(|| {
                panic!(
                    "incomplete answer to {method} {path}: {:?}",
                    String::from_utf8_lossy(&raw)
                )
            })
        };
        let ((), response) = tokio::time::timeout(DEADLINE, async { tokio::join!(write, read) })
            .await
            .expect("answer in time");
        response
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops in time")
            .expect("join");
        result.expect("run");
    }
}

/// Replaces a file in one step, as the kubelet does when a mounted Secret changes.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    /// The response in `raw` once it is complete (`Content-Length` bodies only).
    fn parse(raw: &[u8]) -> Option<Self> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")?
            .1
            .parse()
            .ok()?;
        let body = raw.get(end + 4..end + 4 + length)?.to_vec();
        Some(Self {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON `{"error": "<non-empty>"}`, asserted.
    fn json_error(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{self:?}"
        );
        let value: Value = serde_json::from_slice(&self.body).expect("JSON body");
        let error = value["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.trim().is_empty(), "{value}");
        error
    }
}

fn served_certificate(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gets_no_http_answer() {
    let server = Server::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    // The server refuses the "handshake" at once: closed, with at most a TLS alert.
    let (read, answer) = get_healthz(&mut tcp).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("HTTP/"), "plain HTTP was answered: {text:?}");
    if read.is_ok() && !answer.is_empty() {
        // A TLS record of type alert (21).
        assert_eq!(answer[0], 0x15, "not a TLS alert: {answer:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_are_served() {
    let server = Server::start().await;
    for (versions, expected) in [
        (&[&rustls::version::TLS12][..], ProtocolVersion::TLSv1_2),
        (&[&rustls::version::TLS13][..], ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = tokio::time::timeout(DEADLINE, server.connect(versions))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("{expected:?} handshake: {e}"));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(served_certificate(&tls), server.first.der);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{expected:?}: {answer}");
    }
    // The fake primary is enough for the reconciler's first sync: the process becomes ready.
    tokio::time::timeout(DEADLINE, async {
        while server
            .request_at(server.metrics_addr, "GET", "/readyz", b"")
            .await
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("ready in time");
    server.stop().await;
}

/// TLS record content types and alert values (RFC 5246 6.2.1, 7.2).
const HANDSHAKE_RECORD: u8 = 22;
const ALERT_RECORD: u8 = 21;
const FATAL: u8 = 2;
const PROTOCOL_VERSION_ALERT: u8 = 70;
const SERVER_HELLO: u8 = 2;

const TLS10: [u8; 2] = [3, 1];
const TLS11: [u8; 2] = [3, 2];
const TLS12: [u8; 2] = [3, 3];

/// A ClientHello record offering `version` and nothing newer (no supported_versions
/// extension), written byte by byte: rustls cannot speak TLS 1.0/1.1 and an external client
/// may refuse them itself (OpenSSL 3 does at its default security level), which would pass for
/// the server's refusal. Everything but the version is what a TLS 1.2 server accepts, so the
/// version is the only thing the server can object to.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits in u16").to_be_bytes()
    }
    fn with_len16(body: &[u8]) -> Vec<u8> {
        [&u16_be(body.len())[..], body].concat()
    }
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        [&kind.to_be_bytes()[..], &with_len16(data)].concat()
    }
    let u16_list = |items: &[u16]| {
        with_len16(
            &items
                .iter()
                .flat_map(|i| i.to_be_bytes())
                .collect::<Vec<_>>(),
        )
    };
    let host_name = [&[0u8][..], &with_len16(b"localhost")].concat();
    let extensions = [
        extension(0x0000, &with_len16(&host_name)), // server_name
        // supported_groups: x25519, secp256r1
        extension(0x000a, &u16_list(&[0x001d, 0x0017])),
        extension(0x000b, &[1, 0]), // ec_point_formats: uncompressed
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
        extension(0x000d, &u16_list(&[0x0403, 0x0804, 0x0401])),
    ]
    .concat();
    // ECDHE-ECDSA/RSA with AES-GCM (TLS 1.2) and AES-CBC (TLS 1.0), then plain RSA AES-CBC.
    let suites = u16_list(&[0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x0035]);
    let hello = [
        &version[..],
        &[0x5a; 32], // random: any bytes do
        &[0],        // no session id
        &suites,     // cipher suites
        &[1, 0],     // compression methods: null only
        &with_len16(&extensions),
    ]
    .concat();
    let length = u32::try_from(hello.len()).expect("fits").to_be_bytes();
    let handshake = [&[1u8][..], &length[1..], &hello].concat(); // client_hello, u24 length
    // The record layer says TLS 1.0 whatever the hello offers, as clients do on a first flight.
    [&[HANDSHAKE_RECORD][..], &TLS10, &with_len16(&handshake)].concat()
}

/// The first TLS record the server sent back, as far as these tests care.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Alert {
        level: u8,
        description: u8,
    },
    /// A handshake record: the type of its first message and, for a ServerHello, the version
    /// the server chose.
    Handshake {
        message: u8,
        version: Option<[u8; 2]>,
    },
    Other {
        content_type: u8,
    },
    /// The connection ended before one whole record came; what came.
    Closed(Vec<u8>),
}

/// Sends `hello` on a fresh connection to `addr` and reads one record back.
async fn first_reply(addr: SocketAddr, hello: &[u8]) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(hello).await.expect("send the ClientHello");
    let read = async {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if raw.len() >= 5 {
                let length = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
                if raw.len() >= 5 + length {
                    let body = &raw[5..5 + length];
                    return match raw[0] {
                        ALERT_RECORD if length == 2 => Reply::Alert {
                            level: body[0],
                            description: body[1],
                        },
                        HANDSHAKE_RECORD if !body.is_empty() => Reply::Handshake {
                            message: body[0],
                            version: (body[0] == SERVER_HELLO && body.len() >= 6)
                                .then(|| [body[4], body[5]]),
                        },
                        content_type => Reply::Other { content_type },
                    };
                }
            }
            match tcp.read(&mut chunk).await {
                // A reset after the server's close ends the reply like an orderly close.
                Ok(0) | Err(_) => return Reply::Closed(raw),
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the server answers or closes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls10_and_tls11_are_refused_with_a_protocol_version_alert() {
    let server = Server::start().await;
    // The control: the same hello offering TLS 1.2 is answered with a ServerHello, so what
    // the server objects to below is the version and nothing else in the message.
    assert_eq!(
        first_reply(server.addr, &client_hello(TLS12)).await,
        Reply::Handshake {
            message: SERVER_HELLO,
            version: Some(TLS12),
        }
    );
    for (name, version) in [("TLS 1.0", TLS10), ("TLS 1.1", TLS11)] {
        assert_eq!(
            first_reply(server.addr, &client_hello(version)).await,
            Reply::Alert {
                level: FATAL,
                description: PROTOCOL_VERSION_ALERT,
            },
            "{name} must be refused with a fatal protocol_version alert"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_get_json_errors() {
    let server = Server::start().await;

    let big = vec![b' '; BODY_LIMIT + 1];
    let response = server.request("POST", "/mutate", &big).await;
    assert_eq!(response.status, 413, "{response:?}");
    response.json_error();

    let response = server.request("POST", "/mutate", b"{not json").await;
    assert_eq!(response.status, 400, "{response:?}");
    response.json_error();

    let response = server
        .request(
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1"}"#,
        )
        .await;
    assert_eq!(response.status, 400, "{response:?}");
    response.json_error();

    // A body right at the limit is read (and then refused for what it is, not its size).
    let mut at_limit = br#"{"pad":""#.to_vec();
    at_limit.resize(BODY_LIMIT - 2, b'x');
    at_limit.extend_from_slice(br#""}"#);
    assert_eq!(at_limit.len(), BODY_LIMIT);
    let response = server.request("POST", "/mutate", &at_limit).await;
    assert_eq!(response.status, 400, "{response:?}");
    response.json_error();

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_is_served_without_restart() {
    let server = Server::start().await;
    let tls = server
        .connect(&[&rustls::version::TLS13])
        .await
        .expect("handshake");
    assert_eq!(served_certificate(&tls), server.first.der);
    drop(tls);

    // The key first, as a rotation in progress would: the mismatched pair must not be served
    // (the old one keeps serving), the complete one must be.
    let second = server.pki.leaf("second");
    write_atomically(&server.key_path(), &second.key_pem);
    write_atomically(&server.cert_path(), &second.cert_pem);
    let served = tokio::time::timeout(DEADLINE, async {
        loop {
            let tls = server
                .connect(&[&rustls::version::TLS13])
                .await
                .expect("handshake during rotation");
            let served = served_certificate(&tls);
            if served != server.first.der {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the new certificate is served within the deadline");
    assert_eq!(served, second.der);

    // And it is used for real traffic over TLS 1.2 too.
    let tls = server
        .connect(&[&rustls::version::TLS12])
        .await
        .expect("handshake");
    assert_eq!(served_certificate(&tls), second.der);
    drop(tls);
    server.stop().await;
}

/// A `GET /healthz` on `tls`, which the server then closes; the answer's status.
async fn healthz_status(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> u16 {
    // A close without close_notify ends the answer too.
    let (_, raw) = get_healthz(tls).await;
    let response = HttpResponse::parse(&raw)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&raw)));
    response.status
}

/// Sends `GET /healthz` (asking to close after it) on `stream` and reads until the server
/// closes it, which must be before [`DEADLINE`]: how the read ended, and what came.
async fn get_healthz(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> (std::io::Result<usize>, Vec<u8>) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes, or closes, in time");
    (read, answer)
}

/// Any pod may reach the metrics port, so a flood of idle connections there is held to a cap
/// of its own, far under the webhook port's (whose buffers would take hundreds of MiB): past
/// it the connections idle longest are closed, and probes are still answered. The webhook port
/// keeps its own cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_evicts_idle_connections_past_a_cap_of_its_own() {
    // Nothing but an eviction closes a connection while the test runs: one that makes no
    // request would otherwise be closed after the header read timeout.
    let patient = |limits: Limits| Limits {
        header_read_timeout: Duration::from_secs(300),
        ..limits
    };
    let server = Server::start_with(|webhook| Webhook {
        limits: patient(webhook.limits),
        metrics_limits: patient(webhook.metrics_limits),
        ..webhook
    })
    .await;
    let cap = Limits::metrics_port().max_connections;
    assert!(cap <= 64, "{cap}");
    let connect = |addr| {
        let server = &server;
        async move {
            tokio::time::timeout(DEADLINE, server.connect_to(addr, rustls::ALL_VERSIONS))
                .await
                .expect("handshake in time")
                .expect("handshake")
        }
    };

    // Two more idle connections than the cap: the two oldest are closed to make room.
    let mut idle = Vec::new();
    for _ in 0..cap + 2 {
        idle.push(connect(server.metrics_addr).await);
    }
    for oldest in &mut idle[..2] {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, oldest.read_to_end(&mut sink))
            .await
            .expect("evicted in time");
    }
    // The newer ones are still open, and a probe on a new connection is answered.
    assert_eq!(healthz_status(&mut idle[2]).await, 200);
    let probe = server
        .request_at(server.metrics_addr, "GET", "/healthz", b"")
        .await;
    assert_eq!(probe.status, 200, "{probe:?}");

    // As many connections to the webhook port leave its oldest open.
    let mut webhook = Vec::new();
    for _ in 0..cap + 2 {
        webhook.push(connect(server.addr).await);
    }
    assert_eq!(healthz_status(&mut webhook[0]).await, 200);
    server.stop().await;
}
