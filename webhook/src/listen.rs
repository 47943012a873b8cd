//! The listener: the bound port, TLS termination with rustls (1.2 and 1.3 only) and hyper's
//! serving loop, with a graceful drain on shutdown. A plain HTTP request to the port fails the
//! handshake and is never served. What is served is any axum [`Router`]: this module knows no
//! route.
//!
//! A hostile network cannot exhaust it: at most [`Limits::max_connections`] are open (past it,
//! a new connection takes the place of the one idle longest, see [`eviction`]; accepting waits
//! only while every connection has a request in progress), each must finish its handshake, its
//! first request's headers, its headers and its request bodies in bounded time, and a
//! connection without a request in progress is closed after the idle timeout (HTTP/2 ones also
//! when they stop answering pings). What hyper itself holds of a connection's bodies before a
//! handler reads them is bounded by its HTTP/2 flow control windows and HTTP/1.1 read buffer
//! ([`Limits`]); what the bodies of all those requests may hold once read is the handler's to
//! bound (see [`crate::http::BodyBudget`]): this module knows no route, nor what a body is
//! worth.
//!
//! hyper drives the connections directly (not axum-server): it measured faster here.

mod activity;
mod body_deadline;
mod eviction;
mod limits;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, http::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use self::body_deadline::{BodyTimedOut, DeadlineBody};
use self::eviction::{Admission, Admitted, Eviction, Open};
use self::limits::HTTP1_MIN_BUF_SIZE;
pub use self::limits::Limits;
use crate::{client_auth, tls};

/// Time a client gets to finish the TLS handshake. A real one (the apiserver, the kubelet, a
/// Prometheus) takes a round trip or two on the cluster network, milliseconds; 3 s leaves room
/// for a loaded node and a lost packet's retransmission (1 s), and a stranger that sends no
/// ClientHello is closed well within the apiserver's 5 s webhook timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection limit that stays reached (or evicts) is logged.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// Time an idle connection gets to close in order (an HTTP/2 GOAWAY) before it is dropped:
/// one that never finished its HTTP/2 handshake would otherwise wait for it for ever.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    ClientCa(#[from] client_auth::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Address of the peer of the connection a request came on, in the request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Binds `addr`; returns the listener and the address it got (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let bind_error = |source| Error::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}

/// When a server stops: `drain` first, `close` later (the same token: at once).
///
/// From `drain` on, the connections open until then are told to go (HTTP/2 GOAWAY, which a
/// client answers by retrying unprocessed requests on a new connection; HTTP/1.1 closed after
/// the response in progress), while new connections are still accepted and served without
/// keep-alive: a Service's endpoints take a moment to drop a replica that stops, and its
/// clients' connections stay pinned to it until it ends them, at a time of its choosing rather
/// than in the middle of a call. At `close` the listener stops accepting and in-flight
/// requests get a grace period.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    pub drain: CancellationToken,
    pub close: CancellationToken,
}

impl Stop {
    /// Draining and closing at once.
    pub fn at_once(token: CancellationToken) -> Self {
        Self {
            drain: token.clone(),
            close: token,
        }
    }
}

/// Serves `app` over TLS on `listener` within `limits` until `stop` closes it, then lets
/// in-flight requests finish (up to a grace period).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: Limits,
    stop: Stop,
) {
    let shutdown = stop.close.clone();
    let acceptor = TlsAcceptor::from(tls);
    let builder = http_builder(&limits);
    let open = Open::new(limits.max_connections);
    let mut connections = JoinSet::new();
    let mut warned_full: Option<tokio::time::Instant> = None;
    let mut warn_full = |message: &str| {
        // Once a minute at most: under a flood this is hit on every accept.
        if warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
            warned_full = Some(tokio::time::Instant::now());
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached: {message}"
            );
        }
    };
    loop {
        if !open.has_room() {
            warn_full("every connection has a request in progress: not accepting until one ends");
        }
        tokio::select! {
            () = open.room() => {}
            () = shutdown.cancelled() => break,
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: pause instead of spinning.
                    tracing::warn!(error = %error, "cannot accept connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // The room seen before accepting may have been taken since by a request starting.
        let admitted = loop {
            match open.admit() {
                Admission::Admitted(admitted) => break Some(admitted),
                Admission::Evicted(admitted) => {
                    warn_full("closing the connections idle longest to make room");
                    break Some(admitted);
                }
                Admission::Full => tokio::select! {
                    () = open.room() => {}
                    () = shutdown.cancelled() => break None,
                },
            }
        };
        let Some(admitted) = admitted else { break };
        // Admission answers are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let stop = stop.clone();
        let connection = Connection {
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            app: app.clone(),
            limits,
            peer,
        };
        connections.spawn(connection.serve(tcp, stop, admitted));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing connections still open after the grace period"
        );
        connections.abort_all();
    }
}

/// hyper's settings for every connection; the protocol is then fixed by ALPN.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper panics below its minimum: a smaller setting means the minimum.
        .max_buf_size(limits.http1_max_buf_size.max(HTTP1_MIN_BUF_SIZE));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .initial_stream_window_size(limits.http2_stream_window)
        .initial_connection_window_size(limits.http2_connection_window)
        // Adaptive windows would grow past the configured ones with the bandwidth measured.
        .adaptive_window(false)
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    builder
}

/// One accepted socket and what serving it needs.
struct Connection {
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    limits: Limits,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, tcp: tokio::net::TcpStream, stop: Stop, admitted: Admitted) {
        // Accepted while draining: served to the end, one request per HTTP/1.1 connection.
        let late = stop.drain.is_cancelled();
        let Self {
            acceptor,
            builder,
            app,
            limits,
            peer,
        } = self;
        // Its place is given back when this returns.
        let Admitted {
            activity,
            evicted,
            place: _place,
        } = admitted;
        let evicted = async {
            match evicted.await {
                Ok(how) => how,
                // The listener is gone: never evicted.
                Err(_) => std::future::pending().await,
            }
        };
        let mut evicted = std::pin::pin!(evicted);
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
        let stream = tokio::select! {
            handshake = handshake => match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, error = %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = evicted.as_mut() => {
                tracing::debug!(%peer, "closing a connection still in its handshake to make room");
                return;
            }
        };
        // The protocol was agreed in the handshake: no sniffing of the first bytes, which
        // hyper would wait for without any timeout.
        let mut builder = builder;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            builder = builder.http2_only();
        } else {
            builder = builder.http1_only();
            builder.http1().keep_alive(!late);
        }
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let in_progress = activity.start();
                let mut request = request.map(|body| DeadlineBody::new(body, limits.body_timeout));
                request.extensions_mut().insert(PeerAddr(peer));
                let response = app.clone().oneshot(request);
                async move {
                    let response = response.await;
                    drop(in_progress);
                    response
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let drain = async {
            if late {
                std::future::pending::<()>().await;
            }
            stop.drain.cancelled().await;
        };
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = drain => {
                // The in-flight requests finish; the client sends the next ones elsewhere.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = stop.close.cancelled() => {
                // Finish the request in flight, refuse new ones on this connection.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = activity.idle_for(limits.header_read_timeout, limits.idle_timeout) => {
                tracing::debug!(%peer, "closing idle connection");
                connection.as_mut().graceful_shutdown();
                // Past the grace, dropping the connection closes the socket.
                tokio::time::timeout(IDLE_CLOSE_GRACE, connection)
                    .await
                    .unwrap_or(Ok(()))
            }
            how = evicted.as_mut() => match how {
                Eviction::Now => {
                    tracing::debug!(%peer, "closing an idle connection to make room");
                    Ok(())
                }
                Eviction::InOrder(closing) => {
                    tracing::debug!(%peer, "closing an idle connection to make room, in order");
                    connection.as_mut().graceful_shutdown();
                    let closed = tokio::time::timeout(IDLE_CLOSE_GRACE, connection)
                        .await
                        .unwrap_or(Ok(()));
                    drop(closing);
                    closed
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, error = %error, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client_auth::ClientCa, tls::CertResolver};
    use axum::{body::Bytes, routing::get, routing::post};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A client CA and a client certificate it signed, generated for the test.
    struct ClientPki {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    }

    impl ClientPki {
        fn new(ca_name: &str) -> Self {
            let (ca_pem, cert_pem, key_pem) = crate::tls::testdata::client_pki(ca_name);
            Self {
                ca_pem,
                cert_pem,
                key_pem,
            }
        }
    }

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: crate::tls::testdata::tempdir::TempDir,
    }

    impl Server {
        async fn start(client_ca: Option<&str>, limits: Limits) -> Self {
            let app = Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/echo", post(|body: Bytes| async move { body }));
            Self::serving(app, client_ca, limits).await
        }

        async fn serving(app: Router, client_ca: Option<&str>, limits: Limits) -> Self {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let (dir, cert, key) = crate::tls::testdata::dir();
            let resolver = CertResolver::load(&cert, &key).expect("load");
            let client_ca = client_ca.map(|pem| {
                let path = dir.path().join("client-ca.crt");
                std::fs::write(&path, pem).expect("write");
                ClientCa::load(path, resolver.provider()).expect("client CA")
            });
            let config = tls::server_config(resolver, client_ca).expect("config");
            let (listener, addr) = bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(
                listener,
                config,
                app,
                limits,
                Stop::at_once(shutdown.clone()),
            ));
            Self {
                addr,
                shutdown,
                task,
                _dir: dir,
            }
        }

        async fn connect(
            &self,
            identity: Option<&ClientPki>,
        ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
            connect(self.addr, identity).await
        }

        /// A plain TCP connection to the server, nothing sent on it yet.
        async fn connect_tcp(&self) -> tokio::net::TcpStream {
            tokio::net::TcpStream::connect(self.addr)
                .await
                .expect("connect")
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(15), self.task)
                .await
                .expect("drains")
                .expect("join");
        }
    }

    /// A TLS connection to `addr` trusting the test CA, presenting `identity` if given.
    async fn connect(
        addr: SocketAddr,
        identity: Option<&ClientPki>,
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        connect_with_alpn(addr, identity, b"http/1.1").await
    }

    /// [`connect`] offering only `protocol` over ALPN.
    async fn connect_with_alpn(
        addr: SocketAddr,
        identity: Option<&ClientPki>,
        protocol: &[u8],
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(crate::tls::testdata::CA.as_bytes()) {
            roots.add(der.expect("pem")).expect("root");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let client = match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("cert"),
                    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        let mut client = client;
        client.alpn_protocols = vec![protocol.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await
    }

    /// `GET /healthz` over a new connection; the whole answer, or the error that ended it.
    async fn get_healthz(server: &Server, identity: Option<&ClientPki>) -> io::Result<String> {
        let mut tls = server.connect(identity).await?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// What the server sends until it closes the connection (an error ends it too).
    async fn answer_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Reads until the server closes the connection; how long that took.
    async fn closed_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Duration {
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink))
            .await
            .expect("the server closes the connection in time")
            .ok();
        started.elapsed()
    }

    /// Limits closing connections idle for `timeout`. The header read timeout, which hyper also
    /// applies to idle HTTP/1.1 connections, is a minute: the idle timeout is what closes them.
    fn idle_timeout(timeout: Duration) -> Limits {
        Limits {
            idle_timeout: timeout,
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    /// Limits giving a request's head and its body `timeout` each to arrive. Idle connections
    /// are kept a minute: the read timeouts are what close them.
    fn read_timeouts(timeout: Duration) -> Limits {
        Limits {
            header_read_timeout: timeout,
            body_timeout: timeout,
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn serves_https_and_refuses_plain_http() {
        let server = Server::start(None, Limits::default()).await;

        // Plain HTTP: the handshake fails and nothing HTTP comes back.
        let mut plain = server.connect_tcp().await;
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
            "{answer:?}"
        );

        // HTTPS with the test CA: served.
        let answer = get_healthz(&server, None).await.expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
        let trusted = ClientPki::new("trusted client CA");
        let server = Server::start(Some(&trusted.ca_pem), Limits::default()).await;

        let answer = get_healthz(&server, Some(&trusted)).await.expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // No certificate, or one of another CA: the handshake is refused, nothing is served
        // (with TLS 1.3 the client learns it on its first read).
        let stranger = ClientPki::new("another CA");
        for identity in [None, Some(&stranger)] {
            let error = get_healthz(&server, identity)
                .await
                .expect_err("refused without a trusted client certificate");
            let tls_error = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .unwrap_or_else(|| panic!("not a TLS refusal: {error}"));
            assert!(
                matches!(
                    tls_error,
                    rustls::Error::AlertReceived(
                        rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::BadCertificate
                    )
                ),
                "{tls_error:?}"
            );
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let server = Server::start(None, idle_timeout(Duration::from_millis(500))).await;

        // Idle after a request on a keep-alive connection: closed after the idle time, not
        // before.
        let mut kept = server.connect(None).await.expect("handshake");
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 12];
        kept.read_exact(&mut head).await.expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
        let waited = closed_after(&mut kept).await;
        assert!(waited >= Duration::from_millis(400), "{waited:?}");

        server.stop().await;
    }

    /// A connection that has made no request yet is held to the header read timeout, not to
    /// the idle timeout a client that made requests keeps its connection for.
    #[tokio::test]
    async fn connections_without_a_request_are_closed_after_the_header_read_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let server = Server::start(None, limits).await;

        // Never a request: closed after the header read time, not before.
        let mut silent = server.connect(None).await.expect("handshake");
        let waited = closed_after(&mut silent).await;
        assert!(waited >= Duration::from_millis(400), "{waited:?}");

        // HTTP/2 agreed, then not even the connection preface: closed too.
        let mut h2 = connect_with_alpn(server.addr, None, b"h2")
            .await
            .expect("handshake");
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let waited = closed_after(&mut h2).await;
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        server.stop().await;
    }

    /// A TCP connection that never sends a ClientHello is closed after the handshake timeout,
    /// well within the apiserver's 5 s webhook timeout.
    #[tokio::test]
    async fn connections_without_a_client_hello_are_closed_after_the_handshake_timeout() {
        let server = Server::start(None, Limits::default()).await;
        let mut tcp = server.connect_tcp().await;
        let waited = closed_after(&mut tcp).await;
        assert!(
            waited >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
            "{waited:?}"
        );
        assert!(waited < HANDSHAKE_TIMEOUT + IDLE_CLOSE_GRACE, "{waited:?}");
        server.stop().await;
    }

    /// Under this a caller is answered while strangers fill every place: well under the
    /// handshake and header read timeouts that would end the strangers' connections anyway.
    const PROMPTLY: Duration = Duration::from_secs(2);

    /// Connections that complete TLS (and agree on HTTP/2) and send nothing more fill every
    /// place: a caller's connection takes the place of the oldest and is served at once.
    #[tokio::test]
    async fn silent_connections_do_not_keep_callers_out() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let server = Server::start(None, limits).await;
        let mut oldest = connect_with_alpn(server.addr, None, b"h2")
            .await
            .expect("handshake");
        let _newer = connect_with_alpn(server.addr, None, b"h2")
            .await
            .expect("handshake");
        for _ in 0..3 {
            let answer = tokio::time::timeout(PROMPTLY, get_healthz(&server, None))
                .await
                .expect("answered promptly")
                .expect("served");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        // The oldest was closed to make room.
        let waited = closed_after(&mut oldest).await;
        assert!(waited < PROMPTLY, "{waited:?}");

        // HTTP/2 requests too.
        let client = h2_client(&server).await;
        tokio::time::timeout(PROMPTLY, h2_healthz(&client))
            .await
            .expect("answered promptly");
        server.stop().await;
    }

    /// Connections that never send a ClientHello need no client certificate to fill every
    /// place, even with a client CA: a caller's connection takes the place of the oldest.
    #[tokio::test]
    async fn connections_without_a_client_hello_do_not_keep_callers_out() {
        let trusted = ClientPki::new("trusted client CA");
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let server = Server::start(Some(&trusted.ca_pem), limits).await;
        let mut strangers = Vec::new();
        for _ in 0..2 {
            strangers.push(server.connect_tcp().await);
        }
        let answer = tokio::time::timeout(PROMPTLY, get_healthz(&server, Some(&trusted)))
            .await
            .expect("answered promptly")
            .expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let waited = closed_after(&mut strangers[0]).await;
        assert!(waited < PROMPTLY, "{waited:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn headers_and_bodies_must_arrive_in_time() {
        let server = Server::start(None, read_timeouts(Duration::from_millis(500))).await;

        // Half a request head, then nothing: closed.
        let mut slow_head = server.connect(None).await.expect("handshake");
        slow_head
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
            .await
            .expect("write");
        closed_after(&mut slow_head).await;

        // Headers and a few bytes of a promised body, then nothing: the body read fails and
        // the request is answered with an error.
        let mut slow_body = server.connect(None).await.expect("handshake");
        slow_body
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"a\"",
            )
            .await
            .expect("write");
        let answer = answer_until_closed(&mut slow_body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        server.stop().await;
    }

    /// Without a client CA, connections that each send part of a larger body they announce
    /// fill the webhook's budget of bodies with the bytes they sent: the next review is
    /// answered 503 at once rather than read, and once those clients leave mid-body, the
    /// budget is all given back and reviews are served again.
    #[tokio::test]
    async fn bodies_held_open_by_strangers_are_bounded_by_the_review_budget() {
        const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");
        const ANNOUNCED: usize = 64 << 10;
        const SENT: usize = 16 << 10;
        let state = crate::http::AppState::new(Default::default(), Duration::from_millis(500))
            .with_body_budget(4 * SENT);
        let app = crate::http::router(state.clone());
        let server = Server::serving(app, None, Limits::default()).await;
        let head = |length: usize| {
            format!(
                "POST /mutate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            )
        };
        let review = || async {
            let mut tls = server.connect(None).await.expect("handshake");
            tls.write_all(format!("{}{UPDATE}", head(UPDATE.len())).as_bytes())
                .await
                .expect("write");
            answer_until_closed(&mut tls).await
        };
        let mut holders = Vec::new();
        for _ in 0..4 {
            let mut tls = server.connect(None).await.expect("handshake");
            let mut sent = head(ANNOUNCED).into_bytes();
            sent.resize(sent.len() + SENT, b' ');
            tls.write_all(&sent).await.expect("write");
            holders.push(tls);
        }
        state.body_budget().until_in_use(4 * SENT).await;

        let answer = review().await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too many reviews at once"), "{answer}");

        drop(holders);
        state.body_budget().until_in_use(0).await;
        let answer = review().await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.stop().await;
    }

    /// An HTTP/2 client of `server` (TLS, ALPN h2) whose own send buffer is larger than any
    /// window the server may grant, so that what it may send is what the server allows.
    async fn h2_client(server: &Server) -> h2::client::SendRequest<Bytes> {
        let tls = connect_with_alpn(server.addr, None, b"h2")
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, connection) = h2::client::Builder::new()
            .max_send_buffer_size(4 * crate::http::BODY_LIMIT)
            .handshake(tls)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Sends a request on `client` once it may open a stream.
    async fn h2_send(
        client: &h2::client::SendRequest<Bytes>,
        request: Request<()>,
        end_of_stream: bool,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut ready = client.clone().ready().await.expect("ready");
        ready.send_request(request, end_of_stream).expect("sent")
    }

    /// `GET /healthz` on `client`, answered: every frame the server sent before its answer
    /// (its settings, its connection window, ...) has been received and applied.
    async fn h2_healthz(client: &h2::client::SendRequest<Bytes>) {
        let request = Request::get("https://localhost/healthz")
            .body(())
            .expect("request");
        let (response, _) = h2_send(client, request, true).await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(response.status(), 200);
    }

    /// Sends `data` on `stream` as flow control allows, then ends it; how many grants of
    /// capacity it took.
    async fn h2_send_all(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> usize {
        let mut grants = 0;
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .expect("the stream stays open")
                .expect("capacity");
            grants += 1;
            let chunk = data.split_to(granted.min(data.len()));
            stream.send_data(chunk, data.is_empty()).expect("sent");
        }
        grants
    }

    /// What an HTTP/2 client may send ahead of the handlers is the configured windows, far
    /// under hyper's defaults (1 MiB per stream and per connection), the metrics port's smaller
    /// ones too: streams whose bodies the server does not read are granted the stream window
    /// each, until the connection window is spent.
    #[tokio::test]
    async fn http2_clients_may_send_only_the_configured_windows_ahead() {
        for limits in [Limits::default(), Limits::metrics_port()] {
            let stream_window = limits.http2_stream_window as usize;
            let connection_window = limits.http2_connection_window as usize;
            assert!(stream_window < connection_window);
            assert!(connection_window < crate::http::BODY_LIMIT);
            let release = CancellationToken::new();
            let hold = {
                let release = release.clone();
                // Holds its body unread until released.
                move |body: axum::body::Body| async move {
                    release.cancelled().await;
                    drop(body);
                    "released"
                }
            };
            let app = Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/hold", post(hold));
            let server = Server::serving(app, None, limits).await;
            let client = h2_client(&server).await;
            h2_healthz(&client).await;

            // One stream more than the connection window has room for, or as many as may be
            // open at once beside the request that follows.
            let streams = (connection_window / stream_window + 1)
                .min(limits.http2_max_concurrent_streams as usize - 1);
            let mut held = Vec::new();
            for _ in 0..streams {
                let request = Request::post("https://localhost/hold")
                    .body(())
                    .expect("request");
                let (response, mut body) = h2_send(&client, request, false).await;
                body.reserve_capacity(crate::http::BODY_LIMIT);
                held.push((response, body));
            }
            // Streams open in order, each granted what the windows allow as it opens: once a
            // later request is answered, that is all they get until the server reads their
            // bodies.
            h2_healthz(&client).await;
            let granted: Vec<usize> = held.iter().map(|(_, body)| body.capacity()).collect();
            let mut left = connection_window;
            let expected: Vec<usize> = held
                .iter()
                .map(|_| {
                    let grant = stream_window.min(left);
                    left -= grant;
                    grant
                })
                .collect();
            assert_eq!(granted, expected);

            release.cancel();
            drop(held);
            drop(client);
            server.stop().await;
        }
    }

    /// The largest review the webhook takes still goes through HTTP/2's small windows: it only
    /// takes more window updates.
    #[tokio::test]
    async fn a_review_of_the_body_limit_goes_through_http2() {
        const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");
        let limits = Limits::default();
        let state = crate::http::AppState::new(Default::default(), Duration::from_millis(500));
        let server = Server::serving(crate::http::router(state.clone()), None, limits).await;
        let client = h2_client(&server).await;
        let mut review = UPDATE.as_bytes().to_vec();
        review.resize(crate::http::BODY_LIMIT, b' ');
        let request = Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        let (response, mut body) = h2_send(&client, request, false).await;
        let grants = tokio::time::timeout(DEADLINE, h2_send_all(&mut body, review.into()))
            .await
            .expect("sent in time");
        assert!(
            grants >= crate::http::BODY_LIMIT / limits.http2_stream_window as usize,
            "{grants} grants"
        );
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(response.status(), 200);
        let mut answer = response.into_body();
        let mut text = Vec::new();
        while let Some(data) = answer.data().await {
            let data = data.expect("data");
            let _ = answer.flow_control().release_capacity(data.len());
            text.extend_from_slice(&data);
        }
        let answer: serde_json::Value = serde_json::from_slice(&text).expect("json");
        let request: serde_json::Value = serde_json::from_str(UPDATE).expect("fixture");
        assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        drop(client);
        server.stop().await;
    }

    /// An HTTP/1.1 request head must fit the configured read buffer (hyper's default would
    /// take ~400 KiB), the metrics port's smaller one too: past it the request is refused with
    /// 431, within it served. hyper checks the buffer between reads, so a head may pass it by
    /// one read: twice it never fits.
    #[tokio::test]
    async fn http1_request_heads_must_fit_the_read_buffer() {
        for limits in [Limits::default(), Limits::metrics_port()] {
            let server = Server::start(None, limits).await;
            let request = |padding: usize| {
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                     X-Padding: {}\r\n\r\n",
                    "x".repeat(padding)
                )
            };
            for (padding, status) in [
                (limits.http1_max_buf_size / 2, "HTTP/1.1 200"),
                (2 * limits.http1_max_buf_size, "HTTP/1.1 431"),
            ] {
                let mut tls = server.connect(None).await.expect("handshake");
                tls.write_all(request(padding).as_bytes())
                    .await
                    .expect("write");
                let answer = answer_until_closed(&mut tls).await;
                assert!(answer.starts_with(status), "{padding}: {answer}");
            }
            server.stop().await;
        }
    }

    /// Past the limit, accepting waits while every connection has a request in progress (none
    /// is cut to make room), and takes the place of the first to become idle.
    #[tokio::test]
    async fn past_the_connection_limit_accepting_waits_while_every_connection_is_busy() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (entered, mut entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let hold = {
            let release = release.clone();
            // Answers once released, one request per permit.
            move || async move {
                let _ = entered.send(());
                release.acquire().await.expect("open").forget();
                "released"
            }
        };
        let app = Router::new().route("/hold", get(hold));
        let server = Server::serving(app, None, limits).await;
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut tls = server.connect(None).await.expect("handshake");
            tls.write_all(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("write");
            tokio::time::timeout(DEADLINE, entered_rx.recv())
                .await
                .expect("in progress in time")
                .expect("entered");
            busy.push(tls);
        }
        // The kernel queues the third; the server does not take it while both are busy.
        let addr = server.addr;
        let third = tokio::spawn(async move { connect(addr, None).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!third.is_finished(), "a third connection was served");

        // One request ends: the third takes that connection's place.
        release.add_permits(1);
        let mut head = [0u8; 12];
        tokio::time::timeout(DEADLINE, busy[0].read_exact(&mut head))
            .await
            .expect("answered in time")
            .expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
        tokio::time::timeout(DEADLINE, third)
            .await
            .expect("served once a connection was idle")
            .expect("join")
            .expect("handshake");

        // The request still in progress was not cut.
        release.add_permits(1);
        tokio::time::timeout(DEADLINE, busy[1].read_exact(&mut head))
            .await
            .expect("answered in time")
            .expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
        server.stop().await;
    }
}
