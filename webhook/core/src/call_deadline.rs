//! A deadline on each whole call to a remote, its answer's body included.
//!
//! The connect and read timeouts of a client bound each wait for the next bytes, not the call:
//! a remote (or a network in between) that sends its answer a few bytes at a time never trips
//! them, and a sync waiting on it would hold its worker, and one of the reconciler's permits,
//! for as long as it pleases. Under this layer such a call fails as timed out once its
//! deadline passes, whatever has arrived by then.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// Wraps a client's service so that each call, body included, ends within `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct CallDeadlineLayer {
    deadline: Duration,
}

impl CallDeadlineLayer {
    pub fn new(deadline: Duration) -> Self {
        Self { deadline }
    }
}

impl<S> Layer<S> for CallDeadlineLayer {
    type Service = CallDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallDeadline {
            inner,
            deadline: self.deadline,
        }
    }
}

/// See [`CallDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct CallDeadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, RequestBody, AnswerBody> Service<Request<RequestBody>> for CallDeadline<S>
where
    S: Service<Request<RequestBody>, Response = Response<AnswerBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<DeadlineBody<AnswerBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let deadline = self.deadline;
        let until = Instant::now() + deadline;
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(until, call).await {
                Ok(Ok(answer)) => Ok(answer.map(|body| DeadlineBody {
                    body,
                    expires: Box::pin(tokio::time::sleep_until(until)),
                    deadline,
                })),
                Ok(Err(error)) => Err(error.into()),
                Err(_) => Err(elapsed(deadline)),
            }
        })
    }
}

/// An answer's body that fails once its call's deadline has passed.
#[derive(Debug)]
pub struct DeadlineBody<B> {
    body: B,
    expires: Pin<Box<Sleep>>,
    deadline: Duration,
}

impl<B> Body for DeadlineBody<B>
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
        if self.expires.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(elapsed(self.deadline))));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A timed-out I/O error, so that [`crate::remote::Failure::of`] classifies it as one.
fn elapsed(deadline: Duration) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("call timed out: the whole answer did not arrive within {deadline:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Failure;
    use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{Api, Client};

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
            .with_layer(&CallDeadlineLayer::new(deadline))
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
            CallDeadlineLayer::new(Duration::from_millis(100)).layer(tower::service_fn(
                |_: Request<()>| async { Ok::<_, BoxError>(trickling(Duration::from_millis(30))) },
            ));
        let answer = service.call(Request::new(())).await.expect("headers");
        let error = answer.into_body().collect().await.expect_err("cut short");
        let io = error.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    }
}
