//! The HTTPS server of the webhook and [`Webhook`], the whole process assembled.
//!
//! Routes: `POST /mutate` (the admission webhook), `GET /healthz`, `GET /readyz`,
//! `GET /metrics`, and `PUT /log-level` (accepted only from loopback, i.e. through
//! `kubectl port-forward` or `exec`). The handler of `/mutate` only converts the
//! AdmissionReview and calls [`admission::review`], [`fan_out_timed_from`] and
//! [`admission::complete`]; a body it cannot read is answered 400 (413 past 1 MiB) with
//! `{"error": ...}`, never a panic.
//!
//! TLS is terminated here with rustls (1.2 and 1.3 only); a plain HTTP request to the port
//! fails the handshake and is never served.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{
    Client, Resource,
    core::admission::{AdmissionRequest, AdmissionReview},
    runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    admission::{self, Decision},
    in_flight::InFlight,
    leader::{self, LeaseSettings},
    metrics::{self, Metrics, ReviewOutcome},
    propagate::fan_out_timed_from,
    propagate::{PushIntent, PushOutcome, PushResult},
    reconcile::{self, BackoffSettings, Reconciler},
    tls::{self, CertResolver},
};

use mesh_core::{
    cluster::MeshCluster,
    labels::{Labels, SyncRule},
    remote::{RemoteOptions, Remotes},
};

/// Largest AdmissionReview accepted. A Namespace review is a few KiB; the apiserver's own
/// limit on objects is far above this, but nothing this webhook reads needs more.
pub const BODY_LIMIT: usize = 1 << 20;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Tls(error) => error.metric_label(),
            Self::Bind { .. } => "bind",
        }
    }
}

/// What `/readyz` waits for: a serving certificate, and the primary's Namespaces,
/// MeshClusters and Secrets listed once (which proves the primary client works and fills the
/// registry the webhook pushes to).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadyFlags>);

#[derive(Debug, Default)]
struct ReadyFlags {
    tls: AtomicBool,
    primary: AtomicBool,
}

impl Readiness {
    pub fn set_tls_loaded(&self) {
        self.0.tls.store(true, Ordering::Release);
    }

    pub fn set_primary_synced(&self) {
        self.0.primary.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.tls.load(Ordering::Acquire) && self.0.primary.load(Ordering::Acquire)
    }

    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.0.tls.load(Ordering::Acquire) {
            missing.push("serving certificate");
        }
        if !self.0.primary.load(Ordering::Acquire) {
            missing.push("primary cluster state");
        }
        missing
    }
}

/// Changes the log filter at run time; returns why a filter was refused.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Address of the peer of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// What the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    rule: Arc<SyncRule>,
    remotes: Remotes,
    metrics: Arc<Metrics>,
    push_deadline: Duration,
    readiness: Readiness,
    log_level: Option<LogLevelSetter>,
    events: Option<(Client, Reporter)>,
    in_flight: InFlight,
}

impl AppState {
    pub fn new(
        rule: Arc<SyncRule>,
        remotes: Remotes,
        metrics: Arc<Metrics>,
        push_deadline: Duration,
    ) -> Self {
        Self {
            rule,
            remotes,
            metrics,
            push_deadline,
            readiness: Readiness::default(),
            log_level: None,
            events: None,
            in_flight: InFlight::default(),
        }
    }

    /// Shares pushed-but-not-yet-persisted changes with the reconciler.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// Publish a `PropagationFailed` Event on the namespace when a push fails.
    pub fn with_events(mut self, primary: Client, reporter: Reporter) -> Self {
        self.events = Some((primary, reporter));
        self
    }

    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn with_log_level(mut self, setter: LogLevelSetter) -> Self {
        self.log_level = Some(setter);
        self
    }

    /// Records failed pushes as Events on the primary namespace, in the background: the
    /// admission answer must not wait for them. The warnings already told the user; the Event
    /// is for whoever looks later.
    fn publish_failures(
        &self,
        request: &AdmissionRequest<Namespace>,
        intent: &PushIntent,
        outcomes: &[PushOutcome],
    ) {
        let Some((primary, reporter)) = &self.events else {
            return;
        };
        let failed: Vec<(String, String)> = outcomes
            .iter()
            .filter_map(|outcome| {
                let why = match &outcome.result {
                    PushResult::Unreachable(error) => format!("unreachable: {error}"),
                    PushResult::Forbidden(error) => format!("forbidden: {error}"),
                    PushResult::Failed(error) => error.clone(),
                    PushResult::TimedOut => "no answer before the deadline".to_owned(),
                    PushResult::Applied
                    | PushResult::AlreadyInSync
                    | PushResult::NamespaceMissing => return None,
                };
                Some((outcome.cluster.clone(), why))
            })
            .collect();
        if failed.is_empty() {
            return;
        }
        // Not yet created on CREATE: the reference then has no UID, which Events allow.
        let uid = request
            .object
            .as_ref()
            .or(request.old_object.as_ref())
            .and_then(|ns| ns.metadata.uid.clone());
        let regarding = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Namespace".to_owned()),
            name: Some(intent.namespace.clone()),
            uid,
            ..ObjectReference::default()
        };
        let change = if intent.labels.is_empty() {
            "removal of the managed labels".to_owned()
        } else {
            intent
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (primary, reporter) = (primary.clone(), reporter.clone());
        tokio::spawn(async move {
            for (cluster, why) in failed {
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: reconcile::REASON_FAILED.to_owned(),
                    note: Some(format!(
                        "cluster {cluster}: {change} not applied ({why}); the reconciler will retry"
                    )),
                    action: "Push".to_owned(),
                    secondary: Some(ObjectReference {
                        api_version: Some(MeshCluster::api_version(&()).into_owned()),
                        kind: Some(MeshCluster::kind(&()).into_owned()),
                        name: Some(cluster.clone()),
                        ..ObjectReference::default()
                    }),
                };
                // One recorder per Event: kube's would fold them into a series with the first
                // note, and each of these says something different.
                let recorder = Recorder::new(primary.clone(), reporter.clone());
                if let Err(error) = recorder.publish(&event, &regarding).await {
                    tracing::debug!(%cluster, error = %mesh_core::remote::error_chain(&error), "cannot publish event");
                }
            }
        });
    }

    /// Pushes `intent`, a change from the managed labels `expected` that converged remotes
    /// carry (the primary's before the change).
    async fn push(&self, intent: &PushIntent, expected: &Labels) -> Vec<PushOutcome> {
        let remotes = self.remotes.snapshot();
        // Before the first write lands: a sync that reads a remote after this push must also
        // find the push in the primary it compares with, or it would revert it.
        self.in_flight
            .record(&intent.namespace, intent.labels.clone());
        let timed = fan_out_timed_from(
            &remotes,
            &self.rule,
            intent,
            Some(expected),
            self.push_deadline,
        )
        .await;
        timed
            .into_iter()
            .map(|timed| {
                let outcome = timed.outcome;
                self.metrics
                    .observe_push(&outcome.cluster, &outcome.result, timed.elapsed);
                if timed.read_first {
                    self.metrics.push_read_first(&outcome.cluster);
                }
                outcome
            })
            .collect()
    }
}

/// The routes, with their body limit.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/log-level", put(set_log_level))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn mutate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let request = body
        .map_err(|rejection| (rejection.status(), rejection.body_text()))
        .and_then(|body| parse_review(&body).map_err(|e| (StatusCode::BAD_REQUEST, e)));
    let request = match request {
        Ok(request) => request,
        Err((status, message)) => {
            state.metrics.admission_review(ReviewOutcome::Invalid);
            tracing::warn!(status = status.as_u16(), error = %message, "unreadable admission request");
            return error_response(status, message);
        }
    };
    let Decision { response, push } = admission::review(&state.rule, &request);
    let (response, outcome) = match push {
        // The webhook declares sideEffects NoneOnDryRun: a dry run must never reach a remote,
        // whatever review() decided.
        Some(_) if request.dry_run => (response, ReviewOutcome::DryRun),
        Some(intent) => {
            let expected = state.rule.desired(request.old_object.as_ref());
            let outcomes = state.push(&intent, &expected).await;
            state.publish_failures(&request, &intent, &outcomes);
            let response = admission::complete(response, &request, &intent, &outcomes);
            (response, ReviewOutcome::Pushed)
        }
        None if response.allowed => (response, ReviewOutcome::NoPush),
        None => (response, ReviewOutcome::Denied),
    };
    state.metrics.admission_review(outcome);
    tracing::debug!(
        uid = %request.uid,
        namespace = %request.name,
        operation = ?request.operation,
        outcome = outcome.as_str(),
        "admission review answered"
    );
    Json(response.into_review()).into_response()
}

/// Reads a v1 AdmissionReview of a core Namespace.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<Namespace>, String> {
    let review: AdmissionReview<Namespace> = serde_json::from_slice(body)
        .map_err(|e| format!("not an AdmissionReview of a Namespace: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected admission.k8s.io/v1 AdmissionReview, got {} {}",
            review.types.api_version, review.types.kind
        ));
    }
    let request: AdmissionRequest<Namespace> = review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())?;
    if !request.kind.group.is_empty() || request.kind.kind != "Namespace" {
        return Err(format!(
            "expected a core Namespace, got {}/{} {}",
            request.kind.group, request.kind.version, request.kind.kind
        ));
    }
    Ok(request)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let missing = state.readiness.missing();
    if missing.is_empty() {
        "ok".into_response()
    } else {
        let message = format!("waiting for {}", missing.join(" and "));
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
    }
}

async fn set_log_level(
    State(state): State<AppState>,
    peer: Option<axum::Extension<PeerAddr>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The webhook port is reachable from the whole cluster; changing what it logs is for
    // operators who can port-forward or exec into the pod.
    if !peer.is_some_and(|axum::Extension(PeerAddr(addr))| addr.ip().is_loopback()) {
        return error_response(StatusCode::FORBIDDEN, "only accepted from loopback");
    }
    let Some(setter) = &state.log_level else {
        return error_response(StatusCode::NOT_FOUND, "the log level is not reloadable");
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
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

/// Serves `app` over TLS on `listener` until `shutdown`, then lets in-flight requests finish
/// (up to a grace period).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
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
        // Admission answers are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        connections.spawn(serve_connection(
            acceptor.clone(),
            tcp,
            peer,
            app.clone(),
            shutdown.clone(),
        ));
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

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, error = %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        app.clone().oneshot(request)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight, refuse new ones on this connection.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, error = %error, "connection ended with an error");
    }
}

/// The whole `mesh-webhook` process: HTTPS server, leader election, reconciler and registry.
/// Usable in-process (tests, demos): build, [`Webhook::bind`], then [`BoundWebhook::run`].
pub struct Webhook {
    primary: Client,
    listen: SocketAddr,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    rule: Arc<SyncRule>,
    mesh_namespace: String,
    resync_period: Duration,
    push_deadline: Duration,
    backoff: BackoffSettings,
    remote_options: RemoteOptions,
    lease_name: Option<String>,
    identity: String,
    metrics: Arc<Metrics>,
    log_level: Option<LogLevelSetter>,
}

impl Webhook {
    /// A webhook with the defaults of the command line.
    pub fn new(primary: Client, tls_cert: impl Into<PathBuf>, tls_key: impl Into<PathBuf>) -> Self {
        Self {
            primary,
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls_cert: tls_cert.into(),
            tls_key: tls_key.into(),
            rule: Arc::new(SyncRule::default()),
            mesh_namespace: mesh_core::MESH_NAMESPACE.to_owned(),
            resync_period: Duration::from_secs(60),
            push_deadline: Duration::from_secs(2),
            backoff: BackoffSettings::default(),
            remote_options: RemoteOptions::default(),
            lease_name: Some("mesh-webhook".to_owned()),
            identity: leader::default_identity(),
            metrics: Arc::new(Metrics::new()),
            log_level: None,
        }
    }

    /// Address to listen on; port 0 picks a free one (see [`BoundWebhook::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn rule(mut self, rule: SyncRule) -> Self {
        self.rule = Arc::new(rule);
        self
    }

    pub fn mesh_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.mesh_namespace = namespace.into();
        self
    }

    pub fn resync_period(mut self, period: Duration) -> Self {
        self.resync_period = period;
        self
    }

    pub fn push_deadline(mut self, deadline: Duration) -> Self {
        self.push_deadline = deadline;
        self
    }

    /// How long the reconciler waits before retrying a remote that keeps failing.
    pub fn backoff(mut self, backoff: BackoffSettings) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn remote_options(mut self, options: RemoteOptions) -> Self {
        self.remote_options = options;
        self
    }

    /// Name of the Lease to elect a leader with; `None` makes this process always lead (a
    /// single replica, or a test).
    pub fn lease_name(mut self, name: Option<String>) -> Self {
        self.lease_name = name;
        self
    }

    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn log_level_setter(mut self, setter: LogLevelSetter) -> Self {
        self.log_level = Some(setter);
        self
    }

    /// Loads the serving certificate and binds the port: what can fail at startup fails here.
    pub async fn bind(self) -> Result<BoundWebhook> {
        let resolver = CertResolver::load(&self.tls_cert, &self.tls_key)?;
        let tls = tls::server_config(resolver.clone())?;
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: self.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: self.listen,
            source,
        })?;
        let readiness = Readiness::default();
        readiness.set_tls_loaded();
        Ok(BoundWebhook {
            remotes: Remotes::new(self.remote_options),
            webhook: self,
            listener,
            local_addr,
            resolver,
            tls,
            readiness,
        })
    }
}

/// A [`Webhook`] with its port bound and certificate loaded.
pub struct BoundWebhook {
    webhook: Webhook,
    listener: TcpListener,
    local_addr: SocketAddr,
    resolver: Arc<CertResolver>,
    tls: Arc<ServerConfig>,
    remotes: Remotes,
    readiness: Readiness,
}

impl BoundWebhook {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry of remote clients the webhook pushes to.
    pub fn remotes(&self) -> Remotes {
        self.remotes.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.webhook.metrics.clone()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Runs until `shutdown`: stops accepting, drains in-flight requests, then stops the
    /// reconciler and hands the Lease over.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            webhook,
            listener,
            local_addr,
            resolver,
            tls,
            remotes,
            readiness,
        } = self;
        let Webhook {
            primary,
            listen: _,
            tls_cert: _,
            tls_key: _,
            rule,
            mesh_namespace,
            resync_period,
            push_deadline,
            backoff,
            remote_options: _,
            lease_name,
            identity,
            metrics,
            log_level,
        } = webhook;
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(resolver.watch(background.clone()));

        let is_leader = match lease_name {
            Some(name) => {
                let settings = LeaseSettings::new(&mesh_namespace, name, &identity);
                let (is_leader, election) =
                    leader::spawn(primary.clone(), settings, background.clone());
                tasks.spawn(async move {
                    let _ = election.await;
                });
                is_leader
            }
            None => leader::always_leader(),
        };
        let mut settings = reconcile::Settings::new(&mesh_namespace, &identity);
        settings.resync_period = resync_period;
        settings.drift_settle = push_deadline + Duration::from_secs(1);
        settings.backoff = backoff;
        let in_flight = InFlight::default();
        let reconciler = Reconciler::new(
            primary.clone(),
            rule.clone(),
            remotes.clone(),
            metrics.clone(),
            is_leader,
            readiness.clone(),
            settings,
        )
        .with_in_flight(in_flight.clone());
        tasks.spawn(reconciler.run(background.clone()));

        let reporter = Reporter {
            controller: "mesh-webhook".to_owned(),
            instance: Some(identity.clone()),
        };
        let mut state = AppState::new(rule, remotes, metrics, push_deadline)
            .with_in_flight(in_flight)
            .with_readiness(readiness)
            .with_events(primary.clone(), reporter);
        if let Some(setter) = log_level {
            state = state.with_log_level(setter);
        }
        tracing::info!(%local_addr, %identity, "serving admission webhook");
        serve(listener, tls, router(state), shutdown).await;
        tracing::info!("server drained, stopping reconciler");
        background.cancel();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;

    const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");
    const DRY_RUN: &str = include_str!("../tests/fixtures/namespace-update-dry-run.json");

    fn state() -> AppState {
        AppState::new(
            Arc::new(SyncRule::default()),
            Remotes::default(),
            Arc::new(Metrics::new()),
            Duration::from_millis(500),
        )
    }

    async fn call(app: Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
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
            .remotes
            .insert(mesh_core::remote::Remote::new("east", remote.client()));
        let (status, body) = call(router(state.clone()), post_mutate(DRY_RUN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(remote.state().patches, 0);
        let text = state.metrics.encode().expect("metrics");
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
        let app = router(state.clone());
        let get = |path: &str| Request::get(path).body(Body::empty()).expect("request");
        assert_eq!(call(app.clone(), get("/healthz")).await.0, StatusCode::OK);
        assert_eq!(
            call(app.clone(), get("/readyz")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set_tls_loaded();
        state.readiness.set_primary_synced();
        assert_eq!(call(app.clone(), get("/readyz")).await.0, StatusCode::OK);
        let (_, _) = call(app.clone(), post_mutate("{")).await;
        let (status, body) = call(app, get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.as_str()
                .is_some_and(|t| t.contains(r#"admission_reviews_total{outcome="invalid"} 1"#)),
            "{body}"
        );
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
        let app = router(state().with_log_level(setter));
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
            call(app, put("127.0.0.1:5000", "nope")).await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn serves_https_and_refuses_plain_http() {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_dir, cert, key) = crate::tls::testdata::dir();
        let resolver = CertResolver::load(&cert, &key).expect("load");
        let config = tls::server_config(resolver).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, config, router(state()), shutdown.clone()));

        // Plain HTTP: the handshake fails and nothing HTTP comes back.
        let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
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

        // HTTPS with the test CA: served, keep-alive by default.
        let mut roots = rustls::RootCertStore::empty();
        for der in
            rustls::pki_types::CertificateDer::pem_slice_iter(crate::tls::testdata::CA.as_bytes())
        {
            roots.add(der.expect("pem")).expect("root");
        }
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("drains")
            .expect("join");
    }
}
