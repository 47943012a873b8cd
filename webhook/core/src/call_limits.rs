//! The bounds of each call to a remote: a deadline on the whole call, its answer included, and
//! the most bytes an answer may bring without a line break.
//!
//! The connect and read timeouts of a client bound each wait for the next bytes, not the call:
//! a remote (or a network in between) that sends its answer a few bytes at a time never trips
//! them, and a sync waiting on it would hold its worker, and one of the reconciler's turns, for
//! as long as it pleases. Under the deadline such a call fails as timed out once it passes,
//! whatever has arrived by then.
//!
//! kube-client reads a whole answer into memory before it parses it, and a watch's answer one
//! line (one event) at a time, with no bound on either. A remote that sends an endless answer
//! (a compromised apiserver, or whatever server a stored kubeconfig points at) would grow the
//! webhook's memory until it is killed, and with it the sync of every other remote. Under the
//! bound such an answer fails once it runs past it: a watch's event by event (its line), any
//! other answer as a whole (JSON allows line breaks anywhere, so lines alone do not bound a
//! list). An apiserver ends every JSON answer and every watch event with a line break, and the
//! largest answers the webhook asks for (pages of namespaces) are a few MiB. What a watch's
//! events add up to is bounded by what its keeper keeps of them (`remote_watch`, `injectors`),
//! as what a list's pages add up to is by [`crate::list`].
//!
//! Bytes alone do not bound what parsing makes of them: a label `"a":"",` is 7 bytes and two
//! Strings in a map, about 130 bytes parsed (measured: 11 MB of such labels took 122 MiB).
//! So an answer (a watch's event) may also hold only so many JSON elements, counted by the
//! bytes that open or separate them (`{`, `[`, `:`, `,`, inside strings too: counted high,
//! never low), each of which parses to at most about 64 bytes.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// The plugin's bound of an answer's bytes.
pub const DEFAULT_MAX_ANSWER_LINE: usize = 64 * 1024 * 1024;

/// [`crate::remote::RemoteOptions::max_answer_line`] by default, the webhook's: kube-client
/// holds an answer's bytes twice while it parses them, so an answer takes up to three times
/// its size, within a memory limit of 256 MiB; a page of 500 namespaces is a few MiB.
pub const WEBHOOK_MAX_ANSWER_LINE: usize = 16 * 1024 * 1024;

/// [`crate::remote::RemoteOptions::max_answer_elements`] by default: a page of 500 namespaces
/// holds about 30,000; this many parse to about 16 MiB at the most.
pub const DEFAULT_MAX_ANSWER_ELEMENTS: usize = 250_000;

/// The error of an answer that ran past its bound: one answer's bytes, or a list's objects
/// over all its pages ([`crate::list`]).
#[derive(Debug, thiserror::Error)]
pub enum AnswerTooLarge {
    #[error("the answer ran past {} MiB without a line break, and was refused", .0 / MIB)]
    Line(usize),
    #[error("the answer ran past {} MiB, and was refused", .0 / MIB)]
    Whole(usize),
    #[error("the answer ran past {0} JSON elements, and was refused")]
    Elements(usize),
    #[error("the list ran past {0} objects, and was refused")]
    Objects(usize),
    #[error("the list ran past {0} pages, and was refused")]
    Pages(usize),
}

const MIB: usize = 1024 * 1024;

/// Wraps a client's service so that each call, answer included, ends within `deadline`, and
/// no answer brings more than `max_line` bytes without a line break, nor in all unless it is a
/// watch; `None` bounds nothing.
#[derive(Clone, Debug)]
pub struct CallLimitsLayer {
    deadline: Option<Duration>,
    max_line: Option<usize>,
    /// The most JSON elements an answer (a watch's event) may hold.
    max_elements: Option<usize>,
    /// A watch's answer lasts as long as the watch: the deadline bounds only its start.
    watches_last: bool,
    late: LateError,
}

impl CallLimitsLayer {
    pub fn new(deadline: Option<Duration>, max_line: Option<usize>) -> Self {
        Self {
            deadline,
            max_line,
            max_elements: None,
            watches_last: false,
            late: LateError(Arc::new(elapsed)),
        }
    }

    /// The deadline bounds a watch until its answer starts, not the answer: for a client whose
    /// watches are waits (a command's), not reads that must end.
    pub fn watches_last(mut self) -> Self {
        self.watches_last = true;
        self
    }

    /// No answer (no event of a watch) may hold more than `max` JSON elements: what parsing
    /// makes of an answer is bounded by them, not by its bytes.
    pub fn max_elements(mut self, max: usize) -> Self {
        self.max_elements = Some(max);
        self
    }

    /// `late` makes the error of a call past its deadline, from the deadline: one its caller
    /// can tell from every other failure (a command's, which says which flag to raise).
    pub fn late_error(
        mut self,
        late: impl Fn(Duration) -> BoxError + Send + Sync + 'static,
    ) -> Self {
        self.late = LateError(Arc::new(late));
        self
    }
}

/// Makes the error of a call past its deadline ([`CallLimitsLayer::late_error`]).
#[derive(Clone)]
struct LateError(Arc<dyn Fn(Duration) -> BoxError + Send + Sync>);

impl fmt::Debug for LateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LateError")
    }
}

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimits {
            inner,
            limits: self.clone(),
        }
    }
}

/// See [`CallLimitsLayer`].
#[derive(Clone, Debug)]
pub struct CallLimits<S> {
    inner: S,
    limits: CallLimitsLayer,
}

impl<S, RequestBody, AnswerBody> Service<Request<RequestBody>> for CallLimits<S>
where
    S: Service<Request<RequestBody>, Response = Response<AnswerBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<LimitedBody<AnswerBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let CallLimitsLayer {
            deadline,
            max_line,
            max_elements,
            watches_last,
            late,
        } = self.limits.clone();
        let watch = is_watch(request.uri());
        let max_whole = max_line.filter(|_| !watch);
        // A deadline past what the clock counts to is none.
        let until =
            deadline.and_then(|deadline| Some((Instant::now().checked_add(deadline)?, deadline)));
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = match until {
                Some((at, deadline)) => match tokio::time::timeout_at(at, call).await {
                    Ok(answer) => answer,
                    Err(_) => return Err((late.0)(deadline)),
                },
                None => call.await,
            };
            let answer = answer.map_err(Into::into)?;
            let expires = until
                .filter(|_| !(watch && watches_last))
                .map(|(at, deadline)| (Box::pin(tokio::time::sleep_until(at)), deadline));
            Ok(answer.map(|body| LimitedBody {
                body,
                expires,
                late,
                max_line,
                line: 0,
                max_whole,
                whole: 0,
                max_elements,
                elements: 0,
                watch,
            }))
        })
    }
}

/// An answer's body that fails once its call's deadline has passed, or once `max_line` bytes
/// arrived without a line break.
#[derive(Debug)]
pub struct LimitedBody<B> {
    body: B,
    expires: Option<(Pin<Box<Sleep>>, Duration)>,
    late: LateError,
    max_line: Option<usize>,
    /// Bytes since the last line break.
    line: usize,
    /// The most bytes in all: set but for a watch, whose events come as long as it lasts.
    max_whole: Option<usize>,
    /// Bytes so far.
    whole: usize,
    max_elements: Option<usize>,
    /// Elements so far: of the event under way, in a watch.
    elements: usize,
    watch: bool,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The deadline first: a body that always has a few more bytes ready would otherwise
        // never let it be looked at.
        let this = &mut *self;
        if let Some((expires, deadline)) = &mut this.expires
            && expires.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err((this.late.0)(*deadline))));
        }
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        // Unbounded answers are not scanned at all.
        if let (Some(max), Some(data)) = (self.max_line, frame.data_ref()) {
            self.line = match data.iter().rposition(|&b| b == b'\n') {
                Some(at) => data.len() - at - 1,
                None => self.line.saturating_add(data.len()),
            };
            if self.line > max {
                let error = AnswerTooLarge::Line(max);
                return Poll::Ready(Some(Err(Box::new(error))));
            }
        }
        if let (Some(max), Some(data)) = (self.max_elements, frame.data_ref()) {
            // A watch's counted event by event (line by line), any other answer's in all.
            let watch = self.watch;
            let mut events = data.split(|&b| b == b'\n' && watch);
            let mut most = self
                .elements
                .saturating_add(elements(events.next().unwrap_or(&[])));
            self.elements = most;
            for event in events {
                self.elements = elements(event);
                most = most.max(self.elements);
            }
            if most > max {
                let error = AnswerTooLarge::Elements(max);
                return Poll::Ready(Some(Err(Box::new(error))));
            }
        }
        if let (Some(max), Some(data)) = (self.max_whole, frame.data_ref()) {
            self.whole = self.whole.saturating_add(data.len());
            if self.whole > max {
                let error = AnswerTooLarge::Whole(max);
                return Poll::Ready(Some(Err(Box::new(error))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The JSON elements `data` opens or separates, at the most.
fn elements(data: &[u8]) -> usize {
    data.iter()
        .filter(|&&b| matches!(b, b'{' | b'[' | b':' | b','))
        .count()
}

/// Whether a request asks for a watch (`?watch=true` or `?watch=1`).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

/// A timed-out I/O error, so that [`crate::failure::Failure::of`] classifies it as one.
fn elapsed(deadline: Duration) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("call timed out: the whole answer did not arrive within {deadline:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{Failure, error_chain};
    use crate::fixtures::assert_chain_ends_with;
    use futures::StreamExt as _;
    use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{Api, Client, api::WatchParams, core::WatchEvent};

    /// The line bound of the tests of answers that are too large.
    const MAX: usize = 1024 * 1024;

    /// A namespace list that arrives one byte every `pace` and takes about a second whole:
    /// each wait for the next bytes is short, the whole answer is not. A test double: the
    /// e2e tests drive a real apiserver through a proxy that trickles its answers
    /// (`hangs.rs`); here the layer alone is under test.
    fn trickling(pace: Duration) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        let text = r#"{"apiVersion":"v1","kind":"NamespaceList","metadata":{},"items":[]}"#;
        let bytes: Vec<u8> = text.bytes().collect();
        let frames = futures::stream::unfold(bytes.into_iter(), move |mut rest| async move {
            let byte = rest.next()?;
            tokio::time::sleep(pace).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(vec![byte]))),
                rest,
            ))
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .expect("response")
    }

    fn client(deadline: Duration, pace: Duration) -> Client {
        let service = tower::service_fn(move |_: Request<kube::client::Body>| async move {
            Ok::<_, BoxError>(trickling(pace))
        });
        kube::client::ClientBuilder::new(service, "default")
            .with_layer(&CallLimitsLayer::new(Some(deadline), None))
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_trickling_past_the_deadline_times_out() {
        let started = Instant::now();
        let api: Api<Namespace> = Api::all(client(
            Duration::from_millis(300),
            Duration::from_millis(15),
        ));
        let error = api.list(&Default::default()).await.expect_err("timed out");
        assert_eq!(Failure::of(&error), Failure::TimedOut, "{error}");
        assert!(
            error.to_string().contains("within 300ms"),
            "the error names the deadline: {error}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_whole_before_the_deadline_is_read() {
        let api: Api<Namespace> =
            Api::all(client(Duration::from_secs(5), Duration::from_millis(15)));
        let list = api.list(&Default::default()).await.expect("listed");
        assert!(list.items.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_by_hand_ends_with_the_deadline() {
        let mut service =
            CallLimitsLayer::new(Some(Duration::from_millis(100)), None).layer(tower::service_fn(
                |_: Request<()>| async { Ok::<_, BoxError>(trickling(Duration::from_millis(30))) },
            ));
        let answer = service.call(Request::new(())).await.expect("headers");
        let error = answer.into_body().collect().await.expect_err("cut short");
        let io = error.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    }

    /// A watch's answer is cut at the deadline too (a remote's watch is a read that must
    /// end), unless the layer lets watches last (a command's waits).
    #[tokio::test(start_paused = true)]
    async fn a_watch_answer_ends_with_the_deadline_unless_watches_last() {
        let deadline = Duration::from_millis(100);
        for (layer, cut) in [
            (CallLimitsLayer::new(Some(deadline), None), true),
            (
                CallLimitsLayer::new(Some(deadline), None).watches_last(),
                false,
            ),
        ] {
            let mut service = layer.layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, BoxError>(trickling(Duration::from_millis(30)))
            }));
            let watch = Request::get("/api/v1/namespaces?watch=true")
                .body(())
                .expect("request");
            let answer = service.call(watch).await.expect("headers");
            let read = answer.into_body().collect().await;
            assert_eq!(read.is_err(), cut, "watches_last: {}", !cut);
        }
    }

    /// An answer of `lines` sent in pieces of 64 KiB. A test double: no apiserver can be made
    /// to send an endless answer on demand.
    fn in_pieces(lines: Vec<String>) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        let bytes = Bytes::from(lines.concat());
        let pieces: Vec<Bytes> = (0..bytes.len())
            .step_by(64 * 1024)
            .map(|at| bytes.slice(at..(at + 64 * 1024).min(bytes.len())))
            .collect();
        let frames = futures::stream::iter(pieces).map(|piece| Ok(Frame::data(piece)));
        Response::builder()
            .header("content-type", "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .expect("response")
    }

    fn answering(lines: Vec<String>) -> Client {
        answering_within(lines, CallLimitsLayer::new(None, Some(MAX)))
    }

    fn answering_within(lines: Vec<String>, limits: CallLimitsLayer) -> Client {
        let service = tower::service_fn(move |_: Request<kube::client::Body>| {
            let lines = lines.clone();
            async move { Ok::<_, BoxError>(in_pieces(lines)) }
        });
        kube::client::ClientBuilder::new(service, "default")
            .with_layer(&limits)
            .build()
    }

    /// The element bound of the tests of answers that hold too many.
    const ELEMENTS: usize = 1000;

    /// [`answering`] within [`ELEMENTS`] too.
    fn answering_few_elements(lines: Vec<String>) -> Client {
        answering_within(
            lines,
            CallLimitsLayer::new(None, Some(MAX)).max_elements(ELEMENTS),
        )
    }

    /// `"l0":"","l1":"",...`: `count` labels, twice as many elements, a few bytes each.
    fn labels(count: usize) -> String {
        let labels: Vec<String> = (0..count).map(|i| format!(r#""l{i}":"""#)).collect();
        labels.join(",")
    }

    /// A namespace list whose one namespace carries an annotation of `size` bytes, on one line.
    fn list_of(size: usize) -> String {
        let note = "x".repeat(size);
        format!(
            r#"{{"apiVersion":"v1","kind":"NamespaceList","metadata":{{}},"items":[{{"metadata":{{"name":"big","annotations":{{"note":"{note}"}}}}}}]}}"#
        ) + "\n"
    }

    /// A watch event of a namespace whose annotation has `size` bytes.
    fn event_of(size: usize) -> String {
        let note = "x".repeat(size);
        format!(
            r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"big","resourceVersion":"1","annotations":{{"note":"{note}"}}}}}}}}"#
        ) + "\n"
    }

    /// Parsed, a few bytes a label take a hundred: an answer is bounded by its elements too.
    #[tokio::test]
    async fn an_answer_of_too_many_elements_is_refused_however_few_its_bytes() {
        let list = |count| {
            format!(
                r#"{{"apiVersion":"v1","kind":"NamespaceList","metadata":{{}},"items":[{{"metadata":{{"name":"many","labels":{{{}}}}}}}]}}"#,
                labels(count)
            ) + "\n"
        };
        let api: Api<Namespace> = Api::all(answering_few_elements(vec![list(ELEMENTS / 4)]));
        api.list(&Default::default()).await.expect("listed");
        let api: Api<Namespace> = Api::all(answering_few_elements(vec![list(ELEMENTS)]));
        let error = api.list(&Default::default()).await.expect_err("refused");
        assert_chain_ends_with(
            &error,
            "the answer ran past 1000 JSON elements, and was refused",
        );
    }

    /// A watch's events are bounded one by one: together they may hold any number.
    #[tokio::test]
    async fn a_watch_is_bounded_by_the_elements_of_each_event() {
        let event = |count| {
            format!(
                r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"many","resourceVersion":"1","labels":{{{}}}}}}}}}"#,
                labels(count)
            ) + "\n"
        };
        let watch = |events| async move {
            let api: Api<Namespace> = Api::all(answering_few_elements(events));
            let stream = api
                .watch(&WatchParams::default(), "0")
                .await
                .expect("watch");
            stream.collect::<Vec<_>>().await
        };
        // Three in one frame of the answer, together past the bound.
        let read = watch(vec![event(ELEMENTS / 4); 3]).await;
        assert!(
            read.iter().all(|e| matches!(e, Ok(WatchEvent::Added(_)))),
            "{read:?}"
        );
        // One frame here: the events before the one refused in it go with it.
        let read = watch(vec![event(ELEMENTS)]).await;
        let error = read
            .first()
            .expect("an event")
            .as_ref()
            .expect_err("refused");
        assert!(error_chain(error).contains("1000 JSON elements"), "{error}");
    }

    #[tokio::test]
    async fn an_answer_within_the_limit_is_read() {
        let api: Api<Namespace> = Api::all(answering(vec![list_of(MAX / 2)]));
        let list = api.list(&Default::default()).await.expect("listed");
        assert_eq!(list.items.len(), 1);
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused_and_says_why() {
        let api: Api<Namespace> = Api::all(answering(vec![list_of(2 * MAX)]));
        let error = api.list(&Default::default()).await.expect_err("refused");
        assert_eq!(Failure::of(&error), Failure::Other, "{error}");
        assert_chain_ends_with(
            &error,
            "the answer ran past 1 MiB without a line break, and was refused",
        );
    }

    /// JSON allows line breaks anywhere: a list of endless short lines is bounded as a whole.
    #[tokio::test]
    async fn a_list_of_short_lines_past_the_limit_is_refused_as_a_whole() {
        let mut lines = vec![
            r#"{"apiVersion":"v1","kind":"NamespaceList","metadata":{},"items":["#.to_owned()
                + "\n",
        ];
        lines.extend((0..2 * MAX / 1024).map(|_| " ".repeat(1023) + "\n"));
        lines.push("]}\n".to_owned());
        let api: Api<Namespace> = Api::all(answering(lines));
        let error = api.list(&Default::default()).await.expect_err("refused");
        assert_chain_ends_with(&error, "the answer ran past 1 MiB, and was refused");
    }

    #[test]
    fn watches_are_told_by_their_query() {
        let watch = |uri: &str| is_watch(&uri.parse().expect("uri"));
        assert!(watch("/api/v1/namespaces?watch=true&resourceVersion=1"));
        assert!(watch("/api/v1/namespaces?resourceVersion=1&watch=1"));
        assert!(!watch("/api/v1/namespaces?limit=500"));
        assert!(!watch("/api/v1/namespaces?watch=false"));
        assert!(!watch("/api/v1/namespaces"));
    }

    /// A watch may bring more than the limit in all, never in one event.
    #[tokio::test]
    async fn a_watch_is_bounded_by_each_event() {
        let events = vec![event_of(MAX / 2), event_of(MAX / 2), event_of(MAX / 2)];
        let api: Api<Namespace> = Api::all(answering(events));
        let stream = api
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch");
        let read: Vec<_> = stream.collect().await;
        assert_eq!(read.len(), 3, "three events of half the limit each");
        assert!(read.iter().all(|e| matches!(e, Ok(WatchEvent::Added(_)))));

        let api: Api<Namespace> = Api::all(answering(vec![event_of(MAX / 2), event_of(2 * MAX)]));
        let stream = api
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch");
        let read: Vec<_> = stream.collect().await;
        assert!(matches!(read.first(), Some(Ok(WatchEvent::Added(_)))));
        let error = read
            .get(1)
            .expect("the second event")
            .as_ref()
            .expect_err("refused");
        assert!(
            error_chain(error).contains("without a line break"),
            "{error}"
        );
    }
}
