//! A bound on how much of a remote's answer may arrive without a line break.
//!
//! kube-client reads a whole answer into memory before it parses it, and a watch's answer one
//! line (one event) at a time, with no bound on either. A remote apiserver that sends an endless
//! answer (a compromised one, or whatever server a stored kubeconfig points at) would grow the
//! webhook's memory until it is killed, and with it the sync of every other remote. Under this
//! layer such an answer fails once it runs past the limit. An apiserver ends every JSON answer
//! and every watch event with a line break, and the largest answers the webhook asks for (pages
//! of namespaces) are a few MiB.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Layer, Service};

/// [`crate::remote::RemoteOptions::max_answer_line`] by default.
pub const DEFAULT_MAX_ANSWER_LINE: usize = 64 * 1024 * 1024;

/// The error of an answer that ran past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the answer ran past {} MiB without a line break, and was refused", .max / (1024 * 1024))]
pub struct AnswerTooLarge {
    max: usize,
}

/// Wraps a client's service so that no answer brings more than `max` bytes without a line
/// break.
#[derive(Clone, Copy, Debug)]
pub struct AnswerLimitLayer {
    max: usize,
}

impl AnswerLimitLayer {
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for AnswerLimitLayer {
    type Service = AnswerLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerLimit {
            inner,
            max: self.max,
        }
    }
}

/// See [`AnswerLimitLayer`].
#[derive(Clone, Debug)]
pub struct AnswerLimit<S> {
    inner: S,
    max: usize,
}

impl<S, RequestBody, AnswerBody> Service<Request<RequestBody>> for AnswerLimit<S>
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
        let max = self.max;
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = call.await.map_err(Into::into)?;
            Ok(answer.map(|body| LimitedBody { body, max, line: 0 }))
        })
    }
}

/// An answer's body that fails once `max` bytes arrived without a line break.
#[derive(Debug)]
pub struct LimitedBody<B> {
    body: B,
    max: usize,
    /// Bytes since the last line break.
    line: usize,
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
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.line = match data.iter().rposition(|&b| b == b'\n') {
                Some(at) => data.len() - at - 1,
                None => self.line.saturating_add(data.len()),
            };
            if self.line > self.max {
                let max = self.max;
                return Poll::Ready(Some(Err(Box::new(AnswerTooLarge { max }))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{Failure, error_chain};
    use futures::StreamExt as _;
    use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{Api, Client, api::WatchParams, core::WatchEvent};

    const MAX: usize = 1024 * 1024;

    /// An answer of `lines` sent in pieces of 64 KiB. A test double: no apiserver can be made
    /// to send an endless answer on demand.
    fn answer(lines: Vec<String>) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
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

    fn client(lines: Vec<String>) -> Client {
        let service = tower::service_fn(move |_: Request<kube::client::Body>| {
            let lines = lines.clone();
            async move { Ok::<_, BoxError>(answer(lines)) }
        });
        kube::client::ClientBuilder::new(service, "default")
            .with_layer(&AnswerLimitLayer::new(MAX))
            .build()
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

    #[tokio::test]
    async fn an_answer_within_the_limit_is_read() {
        let api: Api<Namespace> = Api::all(client(vec![list_of(MAX / 2)]));
        let list = api.list(&Default::default()).await.expect("listed");
        assert_eq!(list.items.len(), 1);
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused_and_says_why() {
        let api: Api<Namespace> = Api::all(client(vec![list_of(2 * MAX)]));
        let error = api.list(&Default::default()).await.expect_err("refused");
        assert_eq!(Failure::of(&error), Failure::Other, "{error}");
        let chain = error_chain(&error);
        assert!(
            chain.ends_with("the answer ran past 1 MiB without a line break, and was refused"),
            "{chain}"
        );
    }

    /// A watch may bring more than the limit in all, never in one event.
    #[tokio::test]
    async fn a_watch_is_bounded_by_each_event() {
        let events = vec![event_of(MAX / 2), event_of(MAX / 2), event_of(MAX / 2)];
        let api: Api<Namespace> = Api::all(client(events));
        let stream = api
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch");
        let read: Vec<_> = stream.collect().await;
        assert_eq!(read.len(), 3, "three events of half the limit each");
        assert!(read.iter().all(|e| matches!(e, Ok(WatchEvent::Added(_)))));

        let api: Api<Namespace> = Api::all(client(vec![event_of(MAX / 2), event_of(2 * MAX)]));
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
