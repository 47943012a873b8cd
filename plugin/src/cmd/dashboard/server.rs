//! The dashboard's HTTP server: plain HTTP/1.1 on a loopback port, GET only, a handful of
//! fixed paths. Loopback alone does not keep other sites out: a page the user visits can
//! make its own host name resolve to 127.0.0.1 (DNS rebinding) and read the answers as
//! same-origin. Every request whose Host is not this server's loopback address is refused.
//! Loopback does not keep other local users out either: every request for data must carry
//! this run's [`Token`], which only the URL printed (and opened) holds. Any local user can
//! still connect: connections, event streams and the time a client may take to ask or to
//! read are bounded ([`Limits`]), so that sockets left open cannot take the file descriptors
//! the plugin's own cluster connections need.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{live, snapshot};

/// The page, embedded: nothing is fetched from anywhere else.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

type Body = BoxBody<Bytes, Infallible>;

/// Whether `host` (the Host header) names this server: `127.0.0.1:<port>` or
/// `localhost:<port>` (without the port only on port 80, where browsers leave it out).
pub fn allowed_host(host: Option<&str>, port: u16) -> bool {
    let Some(host) = host else { return false };
    let host = host.to_ascii_lowercase();
    let (name, host_port) = match host.rsplit_once(':') {
        Some((name, p)) => (name, p.parse::<u16>().ok()),
        None => (host.as_str(), Some(80)),
    };
    host_port == Some(port) && matches!(name, "127.0.0.1" | "localhost")
}

/// The secret every request for data carries (`?token=`): 256 random bits, as hex. The page
/// and its script and stylesheet carry no data and are served without it.
#[derive(Clone)]
pub struct Token(std::sync::Arc<str>);

impl Token {
    /// A new token from the operating system's random source.
    pub fn generate() -> Result<Self, rustls::crypto::GetRandomFailed> {
        Ok(Self(random_hex(32)?.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token. Every byte is compared whatever differs first: the time
    /// an answer takes tells nothing of how much of a guess was right.
    pub fn admits(&self, given: &str) -> bool {
        let (expected, given) = (self.0.as_bytes(), given.as_bytes());
        let differ = expected
            .iter()
            .zip(given)
            .fold(0u8, |differ, (a, b)| std::hint::black_box(differ | (a ^ b)));
        expected.len() == given.len() && differ == 0
    }
}

/// `bytes` bytes of the operating system's random source (through ring, as rustls reads
/// it), as hex.
pub fn random_hex(bytes: usize) -> Result<String, rustls::crypto::GetRandomFailed> {
    let mut random = vec![0u8; bytes];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut random)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// Rows one `/services.json` answer carries at most.
pub const MAX_PAGE: usize = 1000;

/// What one client may take of the server. A page uses one event stream and a few
/// connections; a browser opens at most six per host.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub connections: usize,
    /// `/events` streams open at once; one more is answered 503.
    pub event_streams: usize,
    /// How long a client may take to send a request's headers, and an idle connection may
    /// stay open between requests.
    pub header_read: Duration,
    /// How long a client may leave what it was sent unread before it is dropped, and with it
    /// the snapshots queued for it.
    pub write_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 64,
            event_streams: 16,
            header_read: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
        }
    }
}

/// What every request is answered from.
struct Site {
    port: u16,
    feed: live::Feed,
    token: Token,
    /// A permit per `/events` stream open.
    event_streams: Arc<Semaphore>,
}

/// Serves until the task is dropped. `feed` holds the latest snapshot (empty until the
/// first one) and answers for pages of services, to requests that carry `token`.
pub async fn serve(listener: TcpListener, feed: live::Feed, token: Token, limits: Limits) {
    let site = Arc::new(Site {
        port: listener.local_addr().map(|a| a.port()).unwrap_or_default(),
        feed,
        token,
        event_streams: Arc::new(Semaphore::new(limits.event_streams)),
    });
    let connections = Arc::new(Semaphore::new(limits.connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Past the limit, closed at once: accepting goes on, so the backlog never fills.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(&req, &site);
                async move { Ok::<_, Infallible>(answer) }
            });
            // Without a timer hyper keeps no header read timeout at all. A client that goes
            // away mid-answer, or is dropped, is nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(
                    TokioIo::new(WriteStall::new(stream, limits.write_stall)),
                    service,
                )
                .await;
            drop(permit);
        });
    }
}

/// A connection whose writes fail once the client has taken nothing for `limit`.
struct WriteStall {
    stream: TcpStream,
    limit: Duration,
    /// Set while a write waits for the client; cleared when one goes through.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteStall {
    fn new(stream: TcpStream, limit: Duration) -> Self {
        Self {
            stream,
            limit,
            deadline: None,
        }
    }

    /// `result` of a write, or an error if it has been waiting for longer than the limit.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.deadline = None;
            return result;
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.timed(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The answer to one request.
fn handle(req: &Request<Incoming>, site: &Site) -> Response<Body> {
    let Site {
        port,
        feed,
        token,
        event_streams,
    } = site;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !allowed_host(host, *port) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: this dashboard answers only requests for its own loopback address\n",
        );
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n");
    }
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    let data = matches!(path, "/state.json" | "/services.json" | "/events");
    if data && !query_value(query, "token").is_some_and(|given| token.admits(&given)) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: open the URL the dashboard printed, with its #token\n",
        );
    }
    match path {
        "/" => asset(
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX_HTML.as_bytes()),
        ),
        "/app.js" => asset(
            "text/javascript; charset=utf-8",
            Bytes::from_static(APP_JS.as_bytes()),
        ),
        "/style.css" => asset(
            "text/css; charset=utf-8",
            Bytes::from_static(STYLE_CSS.as_bytes()),
        ),
        "/state.json" => {
            let json = snapshot::json_of(&feed.snapshots().borrow());
            if json.is_empty() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "not read yet\n");
            }
            asset("application/json", json)
        }
        "/services.json" => {
            let query = ServicesQuery::parse(query);
            match feed.services_json(&query.filter, query.offset, query.limit) {
                Some(json) => asset("application/json", json),
                None => text(StatusCode::SERVICE_UNAVAILABLE, "not read yet\n"),
            }
        }
        "/events" => match event_streams.clone().try_acquire_owned() {
            Ok(permit) => events(feed.snapshots(), permit),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many pages open; close one\n",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What `/services.json?filter=shop/&offset=500&limit=500` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct ServicesQuery {
    /// Rows whose `namespace/name` contains it; every row when empty.
    pub filter: String,
    pub offset: usize,
    /// At most [`MAX_PAGE`]; [`snapshot::SNAPSHOT_ROWS`] when not given.
    pub limit: usize,
}

impl ServicesQuery {
    /// Reads a query string; what it cannot read is left at its default.
    pub fn parse(query: &str) -> Self {
        let mut parsed = Self {
            filter: String::new(),
            offset: 0,
            limit: snapshot::SNAPSHOT_ROWS,
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "filter" => parsed.filter = value.trim().to_owned(),
                "offset" => parsed.offset = value.parse().unwrap_or(0),
                "limit" => {
                    parsed.limit = value
                        .parse()
                        .unwrap_or(snapshot::SNAPSHOT_ROWS)
                        .min(MAX_PAGE);
                }
                _ => {}
            }
        }
        parsed
    }
}

/// The value of `key` in a query string, decoded; the first if it is there more than once.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, value) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(value))
    })
}

/// A query string's value as text: `%XX` escapes and `+` for a space (as a form or
/// `URLSearchParams` writes it); invalid escapes are kept as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Server-sent events: the current snapshot, then each new one, as event `state`, each after
/// a [`clock_event`]. `permit` is given back when the stream ends.
fn events(snapshots: watch::Receiver<Bytes>, permit: OwnedSemaphorePermit) -> Response<Body> {
    let each = futures::stream::unfold((snapshots, permit), |(mut rx, permit)| async move {
        // The first snapshot, or the next one: mark what is sent as seen.
        let wait = rx.borrow().is_empty() || !rx.has_changed().unwrap_or(true);
        if wait && rx.changed().await.is_err() {
            return None;
        }
        // Already framed: every page shares the buffer.
        let snapshot = rx.borrow_and_update().clone();
        let frames =
            [clock_event(Timestamp::now()), snapshot].map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Some((futures::stream::iter(frames), (rx, permit)))
    });
    let stream = futures::StreamExt::flatten(each);
    respond("text/event-stream", StreamBody::new(stream).boxed())
}

/// The event `clock`: the server's time `now`, in milliseconds since the epoch. The page
/// reckons the ages it shows from the server's clock, which a browser elsewhere (through a
/// tunnel) may not share; a snapshot's own time would not do, as one sent to a page that
/// just opened may be minutes old.
fn clock_event(now: Timestamp) -> Bytes {
    Bytes::from(format!("event: clock\ndata: {}\n\n", now.as_millisecond()))
}

fn asset(content_type: &'static str, body: Bytes) -> Response<Body> {
    respond(content_type, Full::new(body).boxed())
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = asset(
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    );
    *response.status_mut() = status;
    response
}

/// A response of `content_type`, with the headers of [`secure`].
fn respond(content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    response
}

/// The page runs only its own script and is never framed or cached.
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_own_loopback_host_is_allowed() {
        assert!(allowed_host(Some("127.0.0.1:8123"), 8123));
        assert!(allowed_host(Some("LOCALHOST:8123"), 8123));
        assert!(allowed_host(Some("localhost"), 80));
        assert!(!allowed_host(Some("127.0.0.1:8124"), 8123));
        assert!(!allowed_host(Some("attacker.example:8123"), 8123));
        assert!(!allowed_host(Some("127.0.0.1.attacker.example:8123"), 8123));
        assert!(!allowed_host(Some("localhost"), 8123));
        assert!(!allowed_host(None, 8123));
    }

    #[test]
    fn services_queries_are_read() {
        assert_eq!(
            ServicesQuery::parse("filter=sv-01%2Fsvc+1&offset=500&limit=20"),
            ServicesQuery {
                filter: "sv-01/svc 1".into(),
                offset: 500,
                limit: 20
            }
        );
        assert_eq!(
            ServicesQuery::parse("limit=99999&offset=x&other"),
            ServicesQuery {
                filter: String::new(),
                offset: 0,
                limit: MAX_PAGE
            }
        );
        assert_eq!(ServicesQuery::parse("").limit, snapshot::SNAPSHOT_ROWS);
        assert_eq!(percent_decode("caf%C3%A9%2"), "café%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    /// A server of an empty mesh on a free loopback port, stopped on drop.
    struct Serving {
        port: u16,
        token: Token,
        /// Sends the pages new snapshots.
        snapshots: watch::Sender<Bytes>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serving(limits: Limits) -> Serving {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (feed, snapshots) = live::Feed::of_empty_mesh();
        let token = Token::generate().unwrap();
        let task = tokio::spawn(serve(listener, feed, token.clone(), limits));
        Serving {
            port,
            token,
            snapshots,
            task,
        }
    }

    async fn connect(port: u16) -> TcpStream {
        TcpStream::connect(("127.0.0.1", port)).await.unwrap()
    }

    /// Writes a request for `target` on `stream`, kept alive.
    async fn ask(stream: &mut TcpStream, port: u16, target: &str) {
        use tokio::io::AsyncWriteExt as _;
        let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
    }

    /// Reads `stream` up to the end of `until`; what was read, or `None` if the server closed
    /// it first or nothing came within 10 s.
    async fn read_until(stream: &mut TcpStream, until: &str) -> Option<String> {
        use tokio::io::AsyncReadExt as _;
        let mut answer = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&answer);
                if text.contains(until) {
                    return Some(text.into_owned());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .ok()
            .flatten()
    }

    /// Whether the server closes `stream` within `within`; what it sends meanwhile is read.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 1 << 20];
        let drained = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, drained).await.is_ok()
    }

    /// An `/events` stream, its first snapshot read.
    async fn open_events(server: &Serving) -> TcpStream {
        let mut stream = connect(server.port).await;
        let target = format!("/events?token={}", server.token.as_str());
        ask(&mut stream, server.port, &target).await;
        let answer = read_until(&mut stream, "event: state\ndata: {").await;
        let answer = answer.expect("an event stream");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        stream
    }

    /// What a test opens up to its limit.
    #[derive(Clone, Copy)]
    enum Filled {
        Connections,
        EventStreams,
    }

    /// A server with the default limits but at most `limit` connections or event streams,
    /// and that many open.
    async fn filled(what: Filled, limit: usize) -> (Serving, Vec<TcpStream>) {
        let defaults = Limits::default();
        let server = serving(match what {
            Filled::Connections => Limits {
                connections: limit,
                ..defaults
            },
            Filled::EventStreams => Limits {
                event_streams: limit,
                ..defaults
            },
        })
        .await;
        let mut open = Vec::with_capacity(limit);
        for _ in 0..limit {
            open.push(match what {
                Filled::Connections => connect(server.port).await,
                Filled::EventStreams => open_events(&server).await,
            });
        }
        (server, open)
    }

    /// What the server answers to `GET target` on `port`, naming its own host, up to the end
    /// of `until` (the whole answer when the server closes first).
    async fn get(port: u16, target: &str, until: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || String::from_utf8_lossy(&answer).contains(until) {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("{target}: no {until:?} within 10s"));
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn data_needs_the_token_and_the_page_does_not() {
        let server = serving(Limits::default()).await;
        let (port, token) = (server.port, &server.token);
        let wrong = Token::generate().unwrap();
        for path in ["/state.json", "/services.json", "/events"] {
            for target in [
                path.to_owned(),
                format!("{path}?token="),
                format!("{path}?token={}", wrong.as_str()),
                format!("{path}?token={}", &token.as_str()[..32]),
                format!("{path}?filter=x&token={}0", token.as_str()),
            ] {
                let answer = get(port, &target, "\r\n\r\n").await;
                assert!(answer.starts_with("HTTP/1.1 403 "), "{target}: {answer}");
                assert!(!answer.contains("clusters"), "{target}: {answer}");
            }
        }
        let state = get(port, &format!("/state.json?token={}", token.as_str()), "}").await;
        assert!(state.starts_with("HTTP/1.1 200 "), "{state}");
        assert!(state.contains("\"clusters\""), "{state}");
        let services = format!("/services.json?filter=x&token={}", token.as_str());
        let services = get(port, &services, "}").await;
        assert!(services.starts_with("HTTP/1.1 200 "), "{services}");
        let events = format!("/events?token={}", token.as_str());
        let events = get(port, &events, "event: state\ndata: {").await;
        assert!(events.starts_with("HTTP/1.1 200 "), "{events}");
        for asset in ["/", "/app.js", "/style.css"] {
            let answer = get(port, asset, "\r\n\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{asset}: {answer}");
        }
    }

    /// The page reckons ages from the server's clock: each snapshot comes after the server's
    /// time as it is sent, the first one (made before the page asked) too.
    #[tokio::test]
    async fn each_snapshot_comes_after_the_servers_time() {
        let server = serving(Limits::default()).await;
        let mut stream = connect(server.port).await;
        let target = format!("/events?token={}", server.token.as_str());
        let clock_before = |text: &str| -> i64 {
            let (before, _) = text.rsplit_once("event: state\ndata: ").unwrap();
            let (_, ms) = before.rsplit_once("event: clock\ndata: ").unwrap();
            let ms = ms.split_once("\n\n").unwrap().0;
            ms.parse().unwrap_or_else(|_| panic!("{ms:?} in {text}"))
        };
        for sent in ["", "event: state\ndata: {\"next\":1}\n\n"] {
            let asked = Timestamp::now().as_millisecond();
            if sent.is_empty() {
                ask(&mut stream, server.port, &target).await;
            } else {
                server
                    .snapshots
                    .send(Bytes::from_static(sent.as_bytes()))
                    .unwrap();
            }
            let answer = read_until(&mut stream, "event: state\ndata: {")
                .await
                .unwrap();
            let clock = clock_before(&answer);
            let read = Timestamp::now().as_millisecond();
            assert!(
                (asked..=read).contains(&clock),
                "{asked} <= {clock} <= {read}"
            );
        }
    }

    /// Short limits, real time: hyper's timer is tokio's, but paused time would also jump
    /// over the sockets' own waits.
    const QUICK: Limits = Limits {
        connections: 64,
        event_streams: 16,
        header_read: Duration::from_millis(300),
        write_stall: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn a_client_that_does_not_ask_is_dropped() {
        assert!(Limits::default().header_read <= Duration::from_secs(10));
        let server = serving(QUICK).await;
        let mut silent = connect(server.port).await;
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        // Half a request, then nothing.
        let mut slow = connect(server.port).await;
        tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: ")
            .await
            .unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
        // Answered, then idle: kept alive no longer than a request may take to come.
        let mut idle = connect(server.port).await;
        ask(&mut idle, server.port, "/style.css").await;
        let answer = read_until(&mut idle, "}").await.expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once() {
        assert!(Limits::default().connections <= 64);
        let (server, mut open) = filled(Filled::Connections, 3).await;
        let mut extra = connect(server.port).await;
        assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
        // Those within the limit are served.
        for stream in &mut open {
            ask(stream, server.port, "/style.css").await;
            let answer = read_until(stream, "}").await.expect("an answer");
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        }
        // One closed, another is served in its place.
        drop(open.pop());
        served_again("a connection served once another closed", || async {
            let mut stream = connect(server.port).await;
            ask(&mut stream, server.port, "/style.css").await;
            read_until(&mut stream, "}").await.is_some()
        })
        .await;
    }

    /// Tries `served` every 50 ms until it says yes, within 5 s: a place freed by a closed
    /// connection is given back once the server sees it closed.
    async fn served_again<F: Future<Output = bool>>(what: &str, mut served: impl FnMut() -> F) {
        let tries = async {
            while !served().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), tries)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 5 s"));
    }

    #[tokio::test]
    async fn event_streams_past_the_limit_are_refused() {
        assert!(Limits::default().event_streams <= 16);
        let (server, mut open) = filled(Filled::EventStreams, 2).await;
        let target = format!("/events?token={}", server.token.as_str());
        let refused = get(server.port, &target, "\r\n\r\n").await;
        assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
        // The page and the other data are still served.
        let state = format!("/state.json?token={}", server.token.as_str());
        assert!(
            get(server.port, &state, "}")
                .await
                .starts_with("HTTP/1.1 200 ")
        );
        // A page closed, another may open its stream.
        drop(open.pop());
        served_again("an event stream once another closed", || async {
            let answer = get(server.port, &target, "\r\n\r\n").await;
            answer.starts_with("HTTP/1.1 200 ")
        })
        .await;
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_dropped() {
        assert!(Limits::default().write_stall <= Duration::from_secs(30));
        let limits = Limits {
            event_streams: 2,
            ..QUICK
        };
        let server = serving(limits).await;
        let mut stalled = open_events(&server).await;
        let mut reading = open_events(&server).await;
        // More than the sockets' buffers hold.
        let big = 32 << 20;
        let mut snapshot = b"event: state\ndata: ".to_vec();
        snapshot.resize(big, b'x');
        snapshot.extend_from_slice(b"\n\nend");
        server.snapshots.send(Bytes::from(snapshot)).unwrap();
        // A page that reads gets it whole, however long that takes it.
        let whole = async {
            use tokio::io::AsyncReadExt as _;
            let (mut buf, mut got) = (vec![0u8; 1 << 20], Vec::new());
            // Chunked: the chunk's CRLF follows.
            while !got.ends_with(b"\n\nend\r\n") {
                let n = reading.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "closed after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
            got.len()
        };
        let got = tokio::time::timeout(Duration::from_secs(20), whole).await;
        assert!(got.as_ref().is_ok_and(|&got| got > big), "{got:?}");
        // The other, left unread for longer than the limit, is dropped (reading it sooner
        // would be reading it).
        tokio::time::sleep(limits.write_stall * 5).await;
        assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
        // And the stream it held is given back.
        server
            .snapshots
            .send(Bytes::from_static(b"event: state\ndata: {}\n\n"))
            .unwrap();
        let _another = open_events(&server).await;
    }

    #[test]
    fn a_token_admits_itself_alone() {
        let token = Token::generate().unwrap();
        assert_eq!(token.as_str().len(), 64, "256 bits as hex");
        assert!(token.admits(token.as_str()));
        assert!(!token.admits(""));
        assert!(!token.admits(&token.as_str()[..63]));
        assert!(!token.admits(&format!("{}0", token.as_str())));
        assert!(!token.admits(&token.as_str().to_uppercase()));
        assert_ne!(token.as_str(), Token::generate().unwrap().as_str());
        assert_eq!(
            query_value("filter=a&token=b%20c&token=d", "token").as_deref(),
            Some("b c")
        );
        assert_eq!(query_value("filter=a", "token"), None);
    }

    #[test]
    fn assets_are_self_contained() {
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        assert!(INDEX_HTML.contains("/app.js") && INDEX_HTML.contains("/style.css"));
    }
}
