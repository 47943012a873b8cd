//! Clients that retry a call only when the apiserver asks for it, as kubectl does.
//!
//! kube-client retries every answer 429, 503 or 504 on its own, up to 15 times with a
//! doubling wait: minutes in all. An apiserver whose extension API has no backend, or a load
//! balancer without backends, answers 503 without asking for a retry; `kubectl mesh status`
//! then sat silent for minutes where kubectl reports the error at once, and a push spent its
//! deadline on one remote. An apiserver that is briefly busy (its storage of a new resource
//! still starting, its flow control shedding load) answers 429 with `Retry-After`, and that
//! call must be tried again. client-go's rule tells the two apart: retry an answer 429 or 5xx
//! only when it carries `Retry-After` in whole seconds, after that wait, at most
//! [`MAX_RETRIES`] times.

use std::{future::Future, pin::Pin, time::Duration};

use http::{Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder, DynBody};
use tower::{
    BoxError, Layer, Service, ServiceBuilder, buffer::BufferLayer, layer::layer_fn, retry::Policy,
    retry::RetryLayer, util::BoxService,
};

use crate::call_limits::{CallLimitsLayer, LimitedBody};

/// How many times one call is tried again at the server's request (client-go's number).
pub const MAX_RETRIES: u32 = 10;

/// Calls waiting for the client's dispatcher; a caller past this many waits its turn.
const PENDING_CALLS: usize = 1024;

/// The service under every client: kube's stack, boxed.
pub type ClientService = RetriedService<Box<DynBody>>;

/// A client's service retried at the server's request, answering bodies of type `B`.
pub type RetriedService<B> = BoxService<Request<Body>, Response<B>, BoxError>;

/// A client builder for `config` whose calls are retried only at the server's request; the
/// caller may add layers (limits of each call) before it builds.
pub fn client_builder(mut config: kube::Config) -> kube::Result<ClientBuilder<ClientService>> {
    config.default_retry = false;
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer_fn(retried_when_asked)))
}

/// [`client_builder`] with `each_try` under the retries: its deadline bounds each try, not
/// the tries and the waits between them together (as kubectl's `--request-timeout` does).
pub fn client_builder_each_try(
    mut config: kube::Config,
    each_try: &CallLimitsLayer,
) -> kube::Result<ClientBuilder<RetriedService<LimitedBody<Box<DynBody>>>>> {
    config.default_retry = false;
    let stack = layer_fn(|inner| retried_each_try(inner, each_try));
    Ok(ClientBuilder::try_from(config)?.with_layer(&stack))
}

/// `inner` under `each_try`, the whole retried at the server's request ([`retried_when_asked`]).
pub fn retried_each_try<S, L, B>(inner: S, each_try: &L) -> RetriedService<B>
where
    L: Layer<S>,
    L::Service: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError> + Send + Sync,
    B: Send + 'static,
{
    retried_when_asked(each_try.layer(inner))
}

/// A client for `config` whose calls are retried only at the server's request.
pub fn client(config: kube::Config) -> kube::Result<kube::Client> {
    Ok(client_builder(config)?.build())
}

/// How long the server asked to wait before `response`'s call is tried again: an answer 429
/// or 5xx that carries `Retry-After` in whole seconds.
pub fn asked_wait<B>(response: &Response<B>) -> Option<Duration> {
    let status = response.status();
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let seconds = response.headers().get(http::header::RETRY_AFTER)?;
    seconds
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// `inner` with each call tried again when the server asks, at most [`MAX_RETRIES`] times.
/// Retrying needs a service it can call again; the buffer makes one of any.
pub fn retried_when_asked<S, B>(inner: S) -> BoxService<Request<Body>, Response<B>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + Sync,
    B: Send + 'static,
{
    BoxService::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(RetryWhenAsked {
                retries_left: MAX_RETRIES,
            }))
            .layer(BufferLayer::new(PENDING_CALLS))
            .service(inner),
    )
}

/// The retry policy of one call: [`asked_wait`], while retries are left.
#[derive(Clone, Copy, Debug)]
struct RetryWhenAsked {
    retries_left: u32,
}

impl<B> Policy<Request<Body>, Response<B>, BoxError> for RetryWhenAsked {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let wait = asked_wait(result.as_ref().ok()?)?;
        self.retries_left = self.retries_left.checked_sub(1)?;
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, request: &Request<Body>) -> Option<Request<Body>> {
        // A streamed body cannot be sent twice; kube streams none of the calls made here.
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::{json_response, status};
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    fn answer(code: u16, retry_after: Option<&str>) -> Response<()> {
        let mut response = Response::builder().status(code);
        if let Some(seconds) = retry_after {
            response = response.header("Retry-After", seconds);
        }
        response.body(()).expect("response")
    }

    #[test]
    fn only_a_busy_or_failing_server_that_names_its_wait_in_seconds_is_asked_again() {
        for (code, retry_after, wait) in [
            (429, Some("1"), Some(1)),
            (503, Some(" 2 "), Some(2)),
            (500, Some("0"), Some(0)),
            (503, None, None),
            (504, None, None),
            (429, Some("Wed, 21 Oct 2026 07:28:00 GMT"), None),
            (404, Some("1"), None),
            (409, Some("1"), None),
        ] {
            assert_eq!(
                asked_wait(&answer(code, retry_after)),
                wait.map(Duration::from_secs),
                "{code} {retry_after:?}"
            );
        }
    }

    /// A client over a server that answers the first `failures` calls `code`, asking for a
    /// wait of one second when `retry_after`, then lists no namespaces; the calls it
    /// received, and the bodies of those calls. No real apiserver answers 429 or 503 on demand.
    fn client_over(
        failures: usize,
        code: http::StatusCode,
        retry_after: bool,
    ) -> (
        kube::Client,
        Arc<AtomicUsize>,
        Arc<Mutex<Vec<bytes::Bytes>>>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (seen, kept) = (calls.clone(), bodies.clone());
        let server = tower::service_fn(move |request: Request<Body>| {
            let call = seen.fetch_add(1, Ordering::SeqCst);
            let kept = kept.clone();
            async move {
                let body = request.into_body().collect_bytes().await?;
                kept.lock().expect("lock").push(body);
                let mut response = if call < failures {
                    let (code, body) = status(code, "Busy", "try again");
                    json_response(code, &body)
                } else {
                    let list = serde_json::json!({
                        "apiVersion": "v1", "kind": "NamespaceList",
                        "metadata": {"resourceVersion": "1"}, "items": [],
                    });
                    json_response(http::StatusCode::OK, &list)
                };
                if retry_after && call < failures {
                    let wait = http::HeaderValue::from_static("1");
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, wait);
                }
                Ok::<_, BoxError>(response)
            }
        });
        let client = kube::Client::new(retried_when_asked(server), "default");
        (client, calls, bodies)
    }

    fn namespaces(client: kube::Client) -> kube::Api<k8s_openapi::api::core::v1::Namespace> {
        kube::Api::all(client)
    }

    /// The code of the API error a list of namespaces through `client` ends with.
    async fn failed_list(client: kube::Client) -> u16 {
        match namespaces(client).list(&Default::default()).await {
            Err(kube::Error::Api(status)) => status.code,
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_asks_for_a_wait_gets_the_call_again_after_it() {
        let (client, calls, _) = client_over(2, http::StatusCode::TOO_MANY_REQUESTS, true);
        let started = tokio::time::Instant::now();
        let listed = namespaces(client).list(&Default::default()).await;
        assert!(listed.is_ok(), "{listed:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_of_each_try_does_not_count_the_waits_between_tries() {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = tower::service_fn(move |_: Request<Body>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let (code, body) = status(http::StatusCode::TOO_MANY_REQUESTS, "Busy", "wait");
                let mut response = json_response(code, &body);
                if call < 2 {
                    let wait = http::HeaderValue::from_static("1");
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, wait);
                } else {
                    response = json_response(
                        http::StatusCode::OK,
                        &serde_json::json!({
                            "apiVersion": "v1", "kind": "NamespaceList",
                            "metadata": {"resourceVersion": "1"}, "items": [],
                        }),
                    );
                }
                Ok::<_, BoxError>(response)
            }
        });
        // Two waits of a second, each try at once: within a limit of 1.5 s a try.
        let each_try =
            crate::call_limits::CallLimitsLayer::new(Some(Duration::from_millis(1500)), None);
        let client = kube::Client::new(retried_each_try(server, &each_try), "default");
        let listed = namespaces(client).list(&Default::default()).await;
        assert!(listed.is_ok(), "{listed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_server_that_asks_nothing_is_reported_at_its_first_answer() {
        let (client, calls, _) = client_over(1, http::StatusCode::SERVICE_UNAVAILABLE, false);
        assert_eq!(failed_list(client).await, 503);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_keeps_asking_gets_the_call_a_bounded_number_of_times() {
        let (client, calls, _) = client_over(usize::MAX, http::StatusCode::TOO_MANY_REQUESTS, true);
        assert_eq!(failed_list(client).await, 429);
        assert_eq!(calls.load(Ordering::SeqCst), MAX_RETRIES as usize + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_tried_again_sends_the_same_body() {
        let (client, calls, bodies) = client_over(1, http::StatusCode::TOO_MANY_REQUESTS, true);
        let patch =
            kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"a": "b"}}}));
        // The answer is a list, not a namespace: only what was sent matters here.
        let _ = namespaces(client)
            .patch("east", &Default::default(), &patch)
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let bodies = bodies.lock().expect("lock");
        assert!(!bodies[0].is_empty());
        assert_eq!(bodies[0], bodies[1]);
    }
}
