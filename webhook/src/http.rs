//! The HTTP handlers of the webhook, served by [`crate::listen`] on two ports: the webhook
//! port has `POST /mutate` (the admission webhook) and `GET /healthz` ([`router`]); the
//! metrics port `GET /healthz`, `GET /readyz`, `GET /metrics`, and `PUT /log-level` (accepted
//! only from loopback, i.e. through `kubectl port-forward` or `exec`) ([`ops_router`]). The
//! handler of `/mutate` only converts the AdmissionReview and calls
//! [`admission::review`], [`fan_out_timed_from`] and [`admission::complete`]; a body it cannot
//! read is answered 400 (413 past 1 MiB) with `{"error": ...}`, never a panic. Its bodies are
//! read under the process's [`BodyBudget`]: one that would pass it is answered 503 at once.

mod body_budget;
mod review_body;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Client,
    core::admission::{AdmissionRequest, Operation},
    runtime::events::Reporter,
};
use serde_json::json;
use tokio::sync::Semaphore;

pub use self::body_budget::BodyBudget;
use self::body_budget::{Held, Refused};
pub use self::review_body::parse_review;
use crate::{
    admission::{self, Decision},
    events,
    listen::PeerAddr,
    metrics::{self, ReviewOutcome},
    propagate::fan_out_timed_from,
    push_outcome::{PushIntent, PushOutcome, PushResult},
    push_queue::{PushQueue, Turn},
    shared_state::SharedState,
};

use mesh_core::{labels::Labels, remote::Snapshot};

/// Largest AdmissionReview accepted. A Namespace review is a few KiB; the apiserver's own
/// limit on objects is far above this, but nothing this webhook reads needs more.
pub const BODY_LIMIT: usize = 1 << 20;

/// Bytes of `/mutate` bodies, and of the reviews parsed from them, held at once by the whole
/// process, by default (`--review-body-budget-mib`; its use is on `/metrics`): some 500 real
/// reviews (a few KiB each, and [`PARSED_BYTES_PER_BODY_BYTE`] times that parsed: far more
/// than an apiserver sends at once), or three at [`BODY_LIMIT`], and a quarter of the 256 MiB
/// the Deployment allows the pod.
pub const BODY_BUDGET: usize = 64 << 20;

/// Bytes of memory a parsed review may take for each byte of its body, at the worst a stranger
/// can shape it: only its labels are kept whole ([`parse_review`]), some 9 bytes for each of
/// theirs (`tests/parse_memory.rs` measures it). Charged to the budget before the body is
/// parsed, held until the review is answered.
pub const PARSED_BYTES_PER_BODY_BYTE: usize = 16;

/// The most of the budget one review may hold: a body of [`BODY_LIMIT`], parsed.
pub const REVIEW_MEMORY_LIMIT: usize = BODY_LIMIT * (1 + PARSED_BYTES_PER_BODY_BYTE);

/// `/mutate` requests handled at once, bodies not yet arrived included: headers alone hold no
/// budget, and each HTTP/2 stream is a handler of its own. Past it, 503 at once.
pub const REVIEWS_IN_PROGRESS: usize = 1024;

/// The most a log filter may be (`PUT /log-level`): a few directives, never a megabyte.
const LOG_FILTER_LIMIT: usize = 4 << 10;

/// Changes the log filter at run time; returns why a filter was refused.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: SharedState,
    push_deadline: Duration,
    log_level: Option<LogLevelSetter>,
    events: Option<events::Publisher>,
    push_queue: PushQueue,
    body_budget: Arc<BodyBudget>,
    in_progress: Arc<Semaphore>,
}

impl AppState {
    pub fn new(shared: SharedState, push_deadline: Duration) -> Self {
        Self {
            shared,
            push_deadline,
            log_level: None,
            events: None,
            push_queue: PushQueue::default(),
            body_budget: Arc::new(BodyBudget::new(BODY_BUDGET)),
            in_progress: Arc::new(Semaphore::new(REVIEWS_IN_PROGRESS)),
        }
    }

    /// Holds at most `bytes` of `/mutate` bodies at once (default [`BODY_BUDGET`]).
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        self.body_budget = Arc::new(BodyBudget::new(bytes));
        self
    }

    /// Handles at most `reviews` `/mutate` requests at once (default [`REVIEWS_IN_PROGRESS`]).
    #[cfg(test)]
    fn with_reviews_in_progress(mut self, reviews: usize) -> Self {
        self.in_progress = Arc::new(Semaphore::new(reviews));
        self
    }

    /// The budget of `/mutate` bodies, shared by every clone of this state.
    pub fn body_budget(&self) -> &BodyBudget {
        &self.body_budget
    }

    /// Publish a `PropagationFailed` Event on the namespace when a push fails.
    pub fn with_events(mut self, primary: Client, reporter: Reporter) -> Self {
        let metrics = self.shared.metrics.clone();
        self.events = Some(events::Publisher::new(primary, reporter, metrics));
        self
    }

    pub fn with_log_level(mut self, setter: LogLevelSetter) -> Self {
        self.log_level = Some(setter);
        self
    }

    /// Pushes `intent`, a change from the managed labels `expected` that converged remotes
    /// carry (the primary's before the change), made to version `based_on` of the primary's
    /// namespace.
    async fn push(
        &self,
        intent: &PushIntent,
        expected: &Labels,
        based_on: Option<&str>,
    ) -> Vec<PushOutcome> {
        let deadline = tokio::time::Instant::now() + self.push_deadline;
        let attached = self.shared.remotes.snapshot();
        // A push not made is counted too, never timed: no remote took part in it.
        let not_made = |result: PushResult| {
            let outcomes = every_cluster(&attached, result);
            for outcome in &outcomes {
                self.shared
                    .metrics
                    .count_push(&outcome.cluster, &outcome.result);
            }
            outcomes
        };
        let _ticket = match self.push_queue.turn(&intent.namespace, deadline).await {
            Turn::Go(ticket) => ticket,
            Turn::Superseded => return not_made(PushResult::Superseded),
            Turn::TimedOut => return not_made(PushResult::Queued),
        };
        // Before the first write lands: a sync that reads a remote after this push must also
        // find the push in the primary it compares with, or it would revert it.
        self.shared
            .in_flight
            .record(&intent.namespace, intent.labels.clone(), expected, based_on);
        // Waiting for its turn may have used most of the deadline: a remote that then runs
        // out what is left is not taken for silent unless it had at least half of it.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let blame_timeouts = left >= self.push_deadline / 2;
        let timed = fan_out_timed_from(
            &attached,
            &self.shared.rule,
            intent,
            Some(expected),
            left,
            blame_timeouts,
        )
        .await;
        timed
            .into_iter()
            .map(|timed| {
                let outcome = timed.outcome;
                let metrics = &self.shared.metrics;
                match timed.elapsed {
                    Some(elapsed) => {
                        metrics.observe_push(&outcome.cluster, &outcome.result, elapsed)
                    }
                    None => metrics.count_push(&outcome.cluster, &outcome.result),
                }
                if timed.read_first {
                    self.shared.metrics.push_read_first(&outcome.cluster);
                }
                outcome
            })
            .collect()
    }
}

/// The same `result` for every attached cluster, for a push that was not made.
fn every_cluster(attached: &Snapshot, result: PushResult) -> Vec<PushOutcome> {
    let current = attached.current.iter().map(|remote| remote.name());
    current
        .chain(attached.rebuilding.iter().map(String::as_str))
        .map(|cluster| PushOutcome {
            cluster: cluster.to_owned(),
            result: result.clone(),
        })
        .collect()
}

/// The routes of the webhook port, where the apiserver calls (with a client certificate when
/// one is required): `/mutate`, and `/healthz` so that a caller can tell this port itself
/// serves (and measure it against `/mutate` on the same connections, as the benchmark does).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// The routes of the metrics port, which asks for no client certificate: the kubelet's probes
/// and Prometheus present none.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/log-level", put(set_log_level))
        .with_state(state)
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn mutate(State(state): State<AppState>, body: Body) -> Response {
    let Ok(_in_progress) = state.in_progress.try_acquire() else {
        return busy(&state, "the webhook is handling too many reviews at once");
    };
    // Held until the answer is built, with the memory of the parsed review.
    let (request, _held) = match read_review(&state, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    // review() alone decides whether to push: never on a dry run (sideEffects NoneOnDryRun).
    // Only a create asks (one lock of the primary's view), not every review.
    let exists =
        request.operation == Operation::Create && state.shared.primary.holds(&request.name);
    let Decision {
        response,
        push,
        previous,
    } = admission::review(&state.shared.rule, &request, exists);
    let (response, outcome) = match push {
        Some(intent) => {
            let based_on = request
                .old_object
                .as_ref()
                .and_then(|old| old.metadata.resource_version.as_deref());
            let outcomes = state.push(&intent, &previous, based_on).await;
            if let Some(events) = &state.events {
                events.spawn_push_failures(&request, &intent, &outcomes);
            }
            let readiness = state
                .shared
                .injectors
                .readiness(&intent.namespace, &intent.labels);
            let response = admission::complete(response, &request, &intent, &outcomes, &readiness);
            (response, ReviewOutcome::Pushed)
        }
        None if response.allowed => (response, ReviewOutcome::NoPush),
        None => (response, ReviewOutcome::Denied),
    };
    state.shared.metrics.admission_review(outcome);
    tracing::debug!(
        uid = %request.uid,
        namespace = %request.name,
        operation = ?request.operation,
        outcome = outcome.as_str(),
        "admission review answered"
    );
    Json(response.into_review()).into_response()
}

/// Reads the review of `body` within the budget; the answer to give when it cannot.
async fn read_review(
    state: &AppState,
    body: Body,
) -> Result<(AdmissionRequest<Namespace>, Held<'_>), Response> {
    let invalid = |status: StatusCode, message: String| {
        state
            .shared
            .metrics
            .admission_review(ReviewOutcome::Invalid);
        tracing::warn!(status = status.as_u16(), error = %message, "unreadable admission request");
        error_response(status, message)
    };
    let over_budget = || busy(state, &Refused::OverBudget.to_string());
    let (body, mut held) = match state.body_budget.read(body, BODY_LIMIT).await {
        Ok(read) => read,
        Err(Refused::OverBudget) => return Err(over_budget()),
        Err(refused @ Refused::TooLarge(_)) => {
            return Err(invalid(StatusCode::PAYLOAD_TOO_LARGE, refused.to_string()));
        }
        Err(refused @ Refused::Unreadable(_)) => {
            return Err(invalid(StatusCode::BAD_REQUEST, refused.to_string()));
        }
    };
    held.also(body.len().saturating_mul(PARSED_BYTES_PER_BODY_BYTE))
        .map_err(|_| over_budget())?;
    let request = parse_review(&body).map_err(|e| invalid(StatusCode::BAD_REQUEST, e))?;
    Ok((request, held))
}

/// The answer to a review the webhook has no room for now: 503 at once, logged once a minute
/// (under a flood, every review is refused). The apiserver fails open, and the reconciler
/// converges the remotes.
fn busy(state: &AppState, why: &str) -> Response {
    state.shared.metrics.admission_review(ReviewOutcome::Busy);
    if state.body_budget.warning_due() {
        tracing::warn!(
            budget = state.body_budget.capacity(),
            in_progress_limit = REVIEWS_IN_PROGRESS,
            "{why}: answering 503 (the apiserver fails open, the reconciler converges the remotes)"
        );
    }
    error_response(StatusCode::SERVICE_UNAVAILABLE, why)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let missing = state.shared.readiness.missing();
    if missing.is_empty() {
        "ok".into_response()
    } else {
        let message = format!("waiting for {}", missing.join(" and "));
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    state
        .shared
        .metrics
        .set_pushes_in_flight(state.shared.in_flight.len());
    state
        .shared
        .metrics
        .set_body_budget(state.body_budget.capacity(), state.body_budget.in_use());
    match state.shared.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
    }
}

async fn set_log_level(
    State(state): State<AppState>,
    peer: Option<axum::Extension<PeerAddr>>,
    body: axum::body::Body,
) -> Response {
    // The metrics port is reachable from the whole cluster; changing what it logs is for
    // operators who can port-forward or exec into the pod. Asked before the body is read: any
    // pod could otherwise make the webhook hold a body per connection.
    if !peer.is_some_and(|axum::Extension(PeerAddr(addr))| addr.ip().is_loopback()) {
        return error_response(StatusCode::FORBIDDEN, "only accepted from loopback");
    }
    let Some(setter) = &state.log_level else {
        return error_response(StatusCode::NOT_FOUND, "the log level is not reloadable");
    };
    let Ok(body) = axum::body::to_bytes(body, LOG_FILTER_LIMIT).await else {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a log filter is at most {LOG_FILTER_LIMIT} bytes"),
        );
    };
    let Ok(filter) = std::str::from_utf8(&body) else {
        return error_response(StatusCode::BAD_REQUEST, "the filter is not UTF-8");
    };
    match setter(filter.trim()) {
        Ok(()) => {
            tracing::info!(filter = %filter.trim(), "log filter changed");
            "ok".into_response()
        }
        Err(error) => error_response(StatusCode::BAD_REQUEST, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{
        body::{Body, Bytes},
        http::Request,
    };
    use k8s_openapi::jiff::Timestamp;
    use mesh_core::fake_apiserver::{answering, status};
    use mesh_core::fixtures::{TOKEN_KUBECONFIG, mesh_cluster, stored_credentials};
    use mesh_core::remote::Remote;
    use mesh_core::token::Claims;
    use std::io;
    use tower::ServiceExt;

    /// Longer than any answer given at once may take.
    const DEADLINE: Duration = Duration::from_secs(5);

    const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");
    const DRY_RUN: &str = include_str!("../tests/fixtures/namespace-update-dry-run.json");

    fn state() -> AppState {
        AppState::new(SharedState::default(), Duration::from_millis(500))
    }

    async fn call(app: Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = mesh_core::fixtures::body_bytes(response).await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        (status, value)
    }

    fn post_mutate(body: impl Into<Body>) -> Request<Body> {
        Request::post("/mutate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("request")
    }

    #[tokio::test]
    async fn answers_a_review_with_the_same_uid() {
        let request: serde_json::Value = serde_json::from_str(UPDATE).expect("fixture");
        let (status, body) = call(router(state()), post_mutate(UPDATE)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], request["request"]["uid"]);
        assert_eq!(body["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn dry_run_never_pushes() {
        let remote = mesh_core::fake_apiserver::FakeApiserver::default();
        let state = state();
        state
            .shared
            .remotes
            .insert(mesh_core::remote::Remote::new("east", remote.client()));
        let (status, body) = call(router(state.clone()), post_mutate(DRY_RUN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(remote.state().patches, 0);
        let text = state.shared.metrics.encode().expect("metrics");
        assert!(!text.contains("pushes_total{"), "{text}");
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_with_a_json_error() {
        for body in [
            "".to_owned(),
            "{not json".to_owned(),
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_owned(),
            UPDATE.replace(r#""kind": "Namespace""#, r#""kind": "Pod""#),
            UPDATE.replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1"),
            UPDATE.replacen(
                r#""version": "v1", "kind": "Namespace""#,
                r#""version": "v1", "kind": "Pod""#,
                1,
            ),
        ] {
            let (status, value) = call(router(state()), post_mutate(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {value}");
            assert!(value["error"].is_string(), "{value}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(BODY_LIMIT + 1));
        let (status, value) = call(router(state()), post_mutate(big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
        assert!(value["error"].is_string(), "{value}");
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let state = state();
        let app = ops_router(state.clone());
        let get = |path: &str| Request::get(path).body(Body::empty()).expect("request");
        assert_eq!(call(app.clone(), get("/healthz")).await.0, StatusCode::OK);
        assert_eq!(
            call(app.clone(), get("/readyz")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.shared.readiness.set_tls_loaded();
        state.shared.readiness.set_primary_synced();
        assert_eq!(call(app.clone(), get("/readyz")).await.0, StatusCode::OK);
        let (_, _) = call(router(state.clone()), post_mutate("{")).await;
        // What an unauthenticated caller may read is on the metrics port only.
        assert_eq!(
            call(router(state.clone()), get("/metrics")).await.0,
            StatusCode::NOT_FOUND
        );
        let (status, body) = call(app.clone(), get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.as_str()
                .is_some_and(|t| t.contains(r#"admission_reviews_total{outcome="invalid"} 1"#)),
            "{body}"
        );

        // The bytes of a body being read show while it is held, and are gone once answered.
        let scrape = || async {
            let (status, body) = call(app.clone(), get("/metrics")).await;
            assert_eq!(status, StatusCode::OK);
            body.as_str().expect("text").to_owned()
        };
        let has_line = |text: &str, line: &str| text.lines().any(|l| l == line);
        let (sender, chunks) = futures::channel::mpsc::unbounded::<Result<Bytes, io::Error>>();
        let held = post_mutate(Body::from_stream(chunks));
        let holder = tokio::spawn(call(router(state.clone()), held));
        let part = UPDATE.len() / 2;
        sender
            .unbounded_send(Ok(Bytes::from_static(&UPDATE.as_bytes()[..part])))
            .expect("send");
        state.body_budget.until_in_use(part).await;
        let text = scrape().await;
        let budget = format!("admission_body_budget_bytes {BODY_BUDGET}");
        assert!(has_line(&text, &budget), "{budget} missing from {text}");
        let in_use = format!("admission_body_in_use_bytes {part}");
        assert!(has_line(&text, &in_use), "{in_use} missing from {text}");
        let rest = Bytes::from_static(&UPDATE.as_bytes()[part..]);
        sender.unbounded_send(Ok(rest)).expect("send");
        drop(sender);
        assert_eq!(holder.await.expect("join").0, StatusCode::OK);
        let text = scrape().await;
        assert!(has_line(&text, "admission_body_in_use_bytes 0"), "{text}");
    }

    #[tokio::test]
    async fn log_level_only_from_loopback() {
        let setter: LogLevelSetter = Arc::new(|filter| {
            if filter == "debug" {
                Ok(())
            } else {
                Err("bad filter".to_owned())
            }
        });
        let app = ops_router(state().with_log_level(setter));
        let put = |peer: &str, body: &str| {
            let mut request = Request::put("/log-level")
                .body(Body::from(body.to_owned()))
                .expect("request");
            request
                .extensions_mut()
                .insert(PeerAddr(peer.parse().expect("addr")));
            request
        };
        assert_eq!(
            call(app.clone(), put("10.0.0.1:5000", "debug")).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(app.clone(), put("127.0.0.1:5000", "debug")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(app.clone(), put("127.0.0.1:5000", "nope")).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(app, put("127.0.0.1:5000", &"x".repeat(5000))).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    /// How a request holding part of the budget ends.
    #[derive(Clone, Copy, Debug)]
    enum Ending {
        Completes,
        Fails,
        TimesOut,
        ClientLeaves,
    }

    /// While bodies hold the budget, a review it cannot cover is answered 503 at once, whether
    /// its length is announced or its bytes just arrive; however the holder ends (answered,
    /// its body failing or late, its client gone), the budget is given back and reviews are
    /// served again.
    #[tokio::test]
    async fn past_the_body_budget_reviews_are_503_at_once_until_it_is_given_back() {
        let whole = UPDATE.len();
        let part = whole / 2 + 1;
        // One review, parsed, and less than half another.
        let state = state().with_body_budget((1 + PARSED_BYTES_PER_BODY_BYTE) * whole + whole / 2);
        let app = router(state.clone());
        let budget = state.body_budget.clone();
        let mut busy = 0;
        for ending in [
            Ending::Completes,
            Ending::Fails,
            Ending::TimesOut,
            Ending::ClientLeaves,
        ] {
            let (sender, chunks) = futures::channel::mpsc::unbounded::<Result<Bytes, io::Error>>();
            let held = match ending {
                Ending::TimesOut => Body::new(crate::listen::DeadlineBody::new(
                    Body::from_stream(chunks),
                    Duration::from_millis(300),
                )),
                _ => Body::from_stream(chunks),
            };
            let holder = tokio::spawn(call(app.clone(), post_mutate(held)));
            sender
                .unbounded_send(Ok(Bytes::from_static(&UPDATE.as_bytes()[..part])))
                .expect("send");
            budget.until_in_use(part).await;

            // What is left is a byte short of a review: announced, or arriving unannounced.
            let unannounced = Body::from_stream(futures::stream::iter([Ok::<_, io::Error>(
                Bytes::from_static(UPDATE.as_bytes()),
            )]));
            for body in [Body::from(UPDATE), unannounced] {
                let answered = tokio::time::timeout(DEADLINE, call(app.clone(), post_mutate(body)));
                let (status, value) = answered.await.expect("answered at once");
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{ending:?}: {value}"
                );
                assert!(
                    value["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("too many reviews at once")),
                    "{value}"
                );
                busy += 1;
                assert_eq!(budget.in_use(), part, "{ending:?}");
            }

            match ending {
                Ending::Completes => {
                    let rest = Bytes::from_static(&UPDATE.as_bytes()[part..]);
                    sender.unbounded_send(Ok(rest)).expect("send");
                    drop(sender);
                    let (status, value) = holder.await.expect("join");
                    assert_eq!(status, StatusCode::OK, "{value}");
                }
                Ending::Fails => {
                    let error = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
                    sender.unbounded_send(Err(error)).expect("send");
                    assert_eq!(holder.await.expect("join").0, StatusCode::BAD_REQUEST);
                }
                Ending::TimesOut => {
                    assert_eq!(holder.await.expect("join").0, StatusCode::BAD_REQUEST);
                    drop(sender);
                }
                Ending::ClientLeaves => {
                    holder.abort();
                    assert!(holder.await.expect_err("aborted").is_cancelled());
                    drop(sender);
                }
            }
            budget.until_in_use(0).await;
            let (status, value) = call(app.clone(), post_mutate(UPDATE)).await;
            assert_eq!(status, StatusCode::OK, "{ending:?}: {value}");
        }
        let text = state.shared.metrics.encode().expect("metrics");
        let line = format!(r#"admission_reviews_total{{outcome="busy"}} {busy}"#);
        assert!(text.contains(&line), "{line} missing from {text}");
    }

    /// A body announcing `length` bytes that never sends one; says so once it is first read.
    struct Silent {
        length: u64,
        read: Option<futures::channel::oneshot::Sender<()>>,
    }

    impl hyper::body::Body for Silent {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
            if let Some(read) = self.read.take() {
                let _ = read.send(());
            }
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.length)
        }
    }

    /// Headers announcing the largest body, with no byte of it sent, hold none of the budget:
    /// however many such requests wait, a review is still read and answered.
    #[tokio::test]
    async fn announced_lengths_hold_no_budget_until_their_bytes_arrive() {
        let state = state().with_body_budget(4 * BODY_LIMIT);
        let app = router(state.clone());
        let mut silent = Vec::new();
        for _ in 0..4 {
            let (read, being_read) = futures::channel::oneshot::channel();
            let body = Body::new(Silent {
                length: BODY_LIMIT as u64,
                read: Some(read),
            });
            silent.push(tokio::spawn(call(app.clone(), post_mutate(body))));
            being_read.await.expect("the body is read");
        }
        let (status, value) = call(app.clone(), post_mutate(UPDATE)).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(state.body_budget.in_use(), 0);
        for request in silent {
            assert!(!request.is_finished(), "a silent body was answered");
            request.abort();
        }
    }

    /// Each HTTP/2 stream is a handler, and headers alone hold no budget: requests whose body
    /// never comes were limited only by the connections' streams (hundreds of thousands).
    /// Past the reviews in progress, the next is answered 503 at once; once they end, reviews
    /// are served again.
    #[tokio::test]
    async fn past_the_reviews_in_progress_the_next_is_503_at_once() {
        let state = state().with_reviews_in_progress(2);
        let app = router(state.clone());
        let mut silent = Vec::new();
        for _ in 0..2 {
            let (read, being_read) = futures::channel::oneshot::channel();
            let body = Body::new(Silent {
                length: 16,
                read: Some(read),
            });
            silent.push(tokio::spawn(call(app.clone(), post_mutate(body))));
            being_read.await.expect("the body is read");
        }
        let answered = tokio::time::timeout(DEADLINE, call(app.clone(), post_mutate(UPDATE)));
        let (status, value) = answered.await.expect("answered at once");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
        assert!(
            value["error"]
                .as_str()
                .is_some_and(|e| e.contains("handling too many reviews at once")),
            "{value}"
        );
        for request in silent {
            request.abort();
            assert!(request.await.expect_err("aborted").is_cancelled());
        }
        let (status, value) = call(app.clone(), post_mutate(UPDATE)).await;
        assert_eq!(status, StatusCode::OK, "{value}");
    }

    /// The warnings of the answer to [`UPDATE`] (`istio.io/rev=1-25` on `shop`).
    async fn warnings_of_update(state: &AppState) -> Vec<String> {
        let (status, body) = call(router(state.clone()), post_mutate(UPDATE)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body["response"]["warnings"].clone()).expect("warnings")
    }

    /// A push to a client just built first reads which cluster it reaches: a remote down then
    /// was said unreachable with a warning cut before the cause ("cannot read which cluster
    /// the kubeconfig in secret cluster-remote-1 reaches (…"), which blamed the kubeconfig.
    #[tokio::test]
    async fn a_remote_down_when_its_identity_is_read_says_why() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = state();
        let cluster = mesh_cluster("remote-1", "uid-remote-1");
        let secret = stored_credentials("remote-1", TOKEN_KUBECONFIG);
        state
            .shared
            .remotes
            .refresh(&cluster, "kubectl-mesh", Some(&secret))
            .await
            .expect("built");
        let warnings = warnings_of_update(&state).await;
        let [warning] = &warnings[..] else {
            panic!("{warnings:?}");
        };
        assert!(
            warning.starts_with("kubectl-mesh: remote-1 unreachable (")
                && warning.to_lowercase().contains("connection refused")
                && warning.ends_with("); the reconciler will retry"),
            "{warning}"
        );
    }

    /// A remote that refuses the stored token (401) when asked which cluster it is: retrying
    /// mends nothing, and the token expired is renewed by `rotate`. It was said to forbid the
    /// change, and that the reconciler would retry.
    #[tokio::test]
    async fn a_remote_refusing_the_stored_token_names_the_repair() {
        let at = |second| Timestamp::from_second(second).expect("timestamp");
        let expired = Claims {
            issued_at: Some(at(1_000)),
            expires_at: Some(at(2_000)),
        };
        let cases = [
            (
                None,
                "kubectl-mesh: remote-1 not pushed: it refuses the stored credentials (401 \
                 Unauthorized); `kubectl mesh check` says how to repair them",
            ),
            (
                Some(expired),
                "kubectl-mesh: remote-1 not pushed: its stored token expired at \
                 1970-01-01T00:33:20Z; `kubectl mesh rotate remote-1` issues a new one",
            ),
        ];
        for (token, said) in cases {
            let (client, asked) =
                answering(|_, _| status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
            let mut remote = Remote::new("remote-1", client)
                .with_identity(&mesh_cluster("remote-1", "uid-remote-1"));
            if let Some(claims) = token {
                remote = remote.with_token(claims);
            }
            let state = state();
            state.shared.remotes.insert(remote);
            assert_eq!(warnings_of_update(&state).await, [said]);
            assert_eq!(
                asked.all(),
                ["GET /api/v1/namespaces/kube-system"],
                "nothing written"
            );
        }
    }

    /// A MeshCluster changed a moment ago: its entry is not handed out until rebuilt. The push
    /// passed over it, and with no other cluster said that none is attached.
    #[tokio::test]
    async fn a_cluster_being_rebuilt_is_said_to_be_not_pushed_yet() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = state();
        let remotes = &state.shared.remotes;
        let mut cluster = mesh_cluster("remote-1", "uid-remote-1");
        cluster.metadata.uid = Some("uid-mc".to_owned());
        cluster.metadata.generation = Some(1);
        remotes.observe([&cluster]);
        let secret = stored_credentials("remote-1", TOKEN_KUBECONFIG);
        remotes
            .refresh(&cluster, "kubectl-mesh", Some(&secret))
            .await
            .expect("built");
        cluster.metadata.generation = Some(2);
        remotes.observe([&cluster]);

        assert_eq!(
            warnings_of_update(&state).await,
            [
                "kubectl-mesh: remote-1 not pushed yet: attached or changed a moment ago, its \
                 client is being built; the reconciler brings the change"
            ]
        );
        let metrics = state.shared.metrics.encode().expect("metrics");
        assert!(
            metrics.contains(r#"pushes_total{cluster="remote-1",result="reconfiguring"} 1"#),
            "{metrics}"
        );
    }

    /// Refused before its body is read: a body that never ends gets its answer at once.
    #[tokio::test]
    async fn log_level_from_elsewhere_is_refused_without_reading_the_body() {
        let app = ops_router(state().with_log_level(Arc::new(|_| Ok(()))));
        let endless = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut request = Request::put("/log-level")
            .body(Body::from_stream(endless))
            .expect("request");
        request
            .extensions_mut()
            .insert(PeerAddr("10.0.0.1:5000".parse().expect("addr")));
        let answered = tokio::time::timeout(Duration::from_secs(5), call(app, request)).await;
        assert_eq!(answered.expect("answered at once").0, StatusCode::FORBIDDEN);
    }
}
