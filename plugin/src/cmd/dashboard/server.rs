//! The dashboard's HTTP server: plain HTTP/1.1 on a loopback port, GET only, a handful of
//! fixed paths. Loopback alone does not keep other sites out: a page the user visits can
//! make its own host name resolve to 127.0.0.1 (DNS rebinding) and read the answers as
//! same-origin. Every request whose Host is not this server's loopback address is refused.
//! Loopback does not keep other local users out either: every request for data must carry
//! this run's [`Token`], which only the URL printed (and opened) holds.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// Serves until the task is dropped. `feed` holds the latest snapshot (empty until the
/// first one) and answers for pages of services, to requests that carry `token`.
pub async fn serve(listener: TcpListener, feed: live::Feed, token: Token) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or the like: wait a little rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (feed, token) = (feed.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(&req, port, &feed, &token);
                async move { Ok::<_, Infallible>(answer) }
            });
            // A client that goes away mid-answer is nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one request.
fn handle(req: &Request<Incoming>, port: u16, feed: &live::Feed, token: &Token) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !allowed_host(host, port) {
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
        "/events" => events(feed.snapshots()),
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

/// Server-sent events: the current snapshot, then each new one, as event `state`.
fn events(snapshots: watch::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(snapshots, |mut rx| async move {
        // The first snapshot, or the next one: mark what is sent as seen.
        let wait = rx.borrow().is_empty() || !rx.has_changed().unwrap_or(true);
        if wait && rx.changed().await.is_err() {
            return None;
        }
        // Already framed: every page shares the buffer.
        let frame = Frame::data(rx.borrow_and_update().clone());
        Some((Ok::<_, Infallible>(frame), rx))
    });
    respond("text/event-stream", StreamBody::new(stream).boxed())
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
    use std::time::Duration;

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

    /// Serves an empty mesh on a free loopback port; its port and token.
    async fn serving() -> (u16, Token, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (feed, _) = live::Feed::of_empty_mesh();
        let token = Token::generate().unwrap();
        let server = tokio::spawn(serve(listener, feed, token.clone()));
        (port, token, server)
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
        let (port, token, server) = serving().await;
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
        server.abort();
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
