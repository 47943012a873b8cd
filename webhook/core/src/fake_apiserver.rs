//! An in-memory apiserver serving only namespaces: enough to drive the push and sync logic
//! through a real `kube::Client`, including JSON patch `test` failures, and the watches of
//! the reconciler's workers.
//! Pure logic is what it tests: the rule and the writer's retries, not Kubernetes itself,
//! which the e2e tests cover with real apiservers.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use kube::Client;
use serde_json::{Value, json};

/// An apiserver's answer: `body` as JSON, with `code`.
pub fn json_response(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// An apiserver's failure: `code` and the Status object that says it.
pub fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code.as_u16(), "reason": reason, "message": message,
    });
    (code, body)
}

/// A client of a stand-in apiserver that answers each request with `answer(method, path)`,
/// for the reads and writes of kinds [`FakeApiserver`] does not serve; [`Requests`] holds
/// what it was asked.
pub fn answering<F>(answer: F) -> (Client, Requests)
where
    F: Fn(&Method, &str) -> (StatusCode, Value) + Clone + Send + Sync + 'static,
{
    let requests = Requests::default();
    let seen = requests.clone();
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let path = request.uri().path().to_owned();
        lock(&seen.0).push(format!("{} {path}", request.method()));
        let (code, body) = answer(request.method(), &path);
        async move { Ok::<_, std::convert::Infallible>(json_response(code, &body)) }
    });
    (Client::new(service, "default"), requests)
}

/// What an [`answering`] apiserver was asked, as `METHOD path`, in order.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<String>>>);

impl Requests {
    pub fn all(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often a watch with nothing to show looks again.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The value of `key` in a request's query.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

#[derive(Default)]
pub struct State {
    pub namespaces: BTreeMap<String, Value>,
    pub version: u64,
    /// Method, path and query of every request as it arrives (before [`State::delay`]),
    /// e.g. `GET /api/v1/namespaces?&limit=500`.
    pub received: Vec<String>,
    /// Number of GET requests of one namespace received.
    pub gets: usize,
    /// Number of LIST requests (pages) received.
    pub lists: usize,
    /// Number of PATCH requests received.
    pub patches: usize,
    /// Number of PATCH requests applied.
    pub writes: usize,
    /// Label written by a concurrent writer just before the next N patches are applied.
    pub interfere: Vec<(String, String)>,
    /// Answer every request with 403.
    pub forbidden: bool,
    /// Answer a PATCH of these namespaces with 403 (an admission policy of the remote).
    pub forbidden_namespaces: BTreeSet<String>,
    /// Answer a PATCH of these namespaces with 422, as an admission policy whose validation
    /// sets no reason does (real ones do in the e2e tests; here, to count the writer's calls).
    pub invalid_namespaces: BTreeSet<String>,
    /// Answer a PATCH of these namespaces with 504, as an apiserver whose admission webhook
    /// for them hangs (a timeout no real apiserver gives on demand).
    pub timed_out_namespaces: BTreeSet<String>,
    /// Once this many PATCH requests were applied, refuse every connection: a remote that goes
    /// dark mid-sync, which a real apiserver cannot be made to do on demand.
    pub dark_after_writes: Option<usize>,
    /// Number of requests refused while dark.
    pub refused: usize,
    /// Answer every LIST of namespaces with its first page again and a continue token for
    /// one more: a remote whose list never ends, which no real apiserver can be made to be.
    pub endless_list: bool,
    /// Delay every answer.
    pub delay: Option<std::time::Duration>,
    /// Run once, before the next LIST of namespaces is answered: what others do between a
    /// client's reads of two clusters (e.g. a label set on the primary and pushed here).
    pub before_next_list: Option<Box<dyn FnOnce() + Send>>,
    /// Run once, before the next PATCH is answered: what others write between a client's read
    /// and its write (e.g. a newer label set on the primary and pushed here).
    pub before_next_patch: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Clone, Default)]
pub struct FakeApiserver(pub Arc<Mutex<State>>);

impl FakeApiserver {
    pub fn with_namespace(self, name: &str, labels: &[(&str, &str)]) -> Self {
        {
            let mut state = self.0.lock().expect("lock");
            state.version += 1;
            let labels: serde_json::Map<String, Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            let version = state.version.to_string();
            state.namespaces.insert(
                name.to_owned(),
                json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {
                        "name": name, "uid": format!("uid-{name}"),
                        "resourceVersion": version, "labels": labels,
                    },
                }),
            );
        }
        self
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("lock")
    }

    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        self.state().namespaces[name]["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.clone().service(), "default")
    }

    /// A client whose every call is bounded by `deadline`, its answer included, as a remote's
    /// client is ([`crate::call_limits`]).
    pub fn client_with_deadline(&self, deadline: std::time::Duration) -> Client {
        let limits = crate::call_limits::CallLimitsLayer::new(Some(deadline), None);
        Client::new(
            tower::Layer::layer(&limits, self.clone().service()),
            "default",
        )
    }

    fn service(
        self,
    ) -> impl tower::Service<
        Request<kube::client::Body>,
        Response = Response<Full<Bytes>>,
        Error = io::Error,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, io::Error>> + Send,
    > + Send
    + Clone
    + 'static {
        let this = self;
        tower::service_fn(move |req: Request<kube::client::Body>| {
            let this = this.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let delay = {
                    let mut state = this.state();
                    state
                        .received
                        .push(format!("{} {}", parts.method, parts.uri));
                    state.delay
                };
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if this.is_dark() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ));
                }
                let query = parts.uri.query().unwrap_or_default();
                if parts.method == Method::GET
                    && parts.uri.path() == "/api/v1/namespaces"
                    && param(query, "watch").is_some_and(|watch| watch != "false")
                {
                    return Ok(this.watch(query).await);
                }
                // Taken first: it may edit this very server.
                let before = match parts.method {
                    Method::GET if parts.uri.path() == "/api/v1/namespaces" => {
                        this.state().before_next_list.take()
                    }
                    Method::PATCH => this.state().before_next_patch.take(),
                    _ => None,
                };
                if let Some(before) = before {
                    before();
                }
                let (code, value) = this.handle(&parts.method, parts.uri.path(), query, &body);
                Ok(json_response(code, &value))
            }
        })
    }

    /// Changes namespace `name` as a writer other than the tested code would: `edit` gets its
    /// object, which is then stored with a new resourceVersion (and shown to watches).
    pub fn edit(&self, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        state.version += 1;
        let version = state.version.to_string();
        let ns = state.namespaces.get_mut(name).expect("namespace to edit");
        edit(ns);
        ns["metadata"]["resourceVersion"] = json!(version);
    }

    /// A watch of namespaces from `resourceVersion`: answers the namespaces changed since then
    /// (each once, as it is now) as soon as there are any, or nothing once `timeoutSeconds`
    /// have passed; the watcher then watches again from the last version it saw. Deletions
    /// are not shown.
    async fn watch(&self, query: &str) -> Response<Full<Bytes>> {
        let since: u64 = param(query, "resourceVersion")
            .and_then(|version| version.parse().ok())
            .unwrap_or_default();
        let timeout = param(query, "timeoutSeconds")
            .and_then(|seconds| seconds.parse().ok())
            .map_or(std::time::Duration::MAX, std::time::Duration::from_secs);
        let until = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let lines = {
                let state = self.state();
                if state.forbidden {
                    let (code, body) = status(StatusCode::FORBIDDEN, "Forbidden", "no");
                    return json_response(code, &body);
                }
                let version = |ns: &Value| {
                    ns["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|version| version.parse::<u64>().ok())
                        .unwrap_or_default()
                };
                let mut changed: Vec<&Value> = (state.namespaces.values())
                    .filter(|ns| version(ns) > since)
                    .collect();
                changed.sort_by_key(|ns| version(ns));
                changed
                    .into_iter()
                    .map(|ns| format!("{}\n", json!({"type": "MODIFIED", "object": ns})))
                    .collect::<String>()
            };
            let timed_out = until.is_some_and(|until| tokio::time::Instant::now() >= until);
            if !lines.is_empty() || timed_out {
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(lines)))
                    .expect("response");
            }
            // Edits through `state()` notify no one: looked for at this pace.
            tokio::time::sleep(WATCH_POLL).await;
        }
    }

    /// Whether it stopped answering ([`State::dark_after_writes`]); counts the refusal.
    fn is_dark(&self) -> bool {
        let mut state = self.state();
        let dark = state
            .dark_after_writes
            .is_some_and(|after| state.writes >= after);
        state.refused += usize::from(dark);
        dark
    }

    fn handle(&self, method: &Method, path: &str, query: &str, body: &[u8]) -> (StatusCode, Value) {
        let mut state = self.state();
        if state.forbidden {
            return status(StatusCode::FORBIDDEN, "Forbidden", "no");
        }
        let name = path.strip_prefix("/api/v1/namespaces/").map(str::to_owned);
        match (method, name) {
            (&Method::GET, None) if path == "/api/v1/namespaces" => {
                state.lists += 1;
                // Pages like the apiserver: `limit` items, then a continue token (here
                // the last name served) for the rest.
                let limit = param(query, "limit")
                    .and_then(|limit| limit.parse().ok())
                    .unwrap_or(usize::MAX);
                let after = if state.endless_list {
                    String::new()
                } else {
                    param(query, "continue").unwrap_or_default()
                };
                let mut rest = state
                    .namespaces
                    .iter()
                    .filter(|(name, _)| after.is_empty() || name.as_str() > after.as_str());
                let items: Vec<Value> = rest
                    .by_ref()
                    .take(limit)
                    .map(|(_, ns)| ns.clone())
                    .collect();
                let token = match rest.next() {
                    _ if state.endless_list => json!("again"),
                    Some(_) => items
                        .last()
                        .map(|ns| ns["metadata"]["name"].clone())
                        .unwrap_or_default(),
                    None => json!(""),
                };
                let version = state.version.to_string();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "NamespaceList",
                           "metadata": {"resourceVersion": version, "continue": token},
                           "items": items}),
                )
            }
            (&Method::GET, Some(name)) => {
                state.gets += 1;
                match state.namespaces.get(&name) {
                    Some(ns) => (StatusCode::OK, ns.clone()),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
                }
            }
            (&Method::PATCH, Some(name)) => {
                state.patches += 1;
                if state.forbidden_namespaces.contains(&name) {
                    return status(StatusCode::FORBIDDEN, "Forbidden", "denied by a policy");
                }
                if state.invalid_namespaces.contains(&name) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "refused by a policy",
                    );
                }
                if state.timed_out_namespaces.contains(&name) {
                    return status(StatusCode::GATEWAY_TIMEOUT, "Timeout", "webhook timed out");
                }
                if !state.interfere.is_empty() {
                    let (k, v) = state.interfere.remove(0);
                    state.version += 1;
                    let version = state.version.to_string();
                    if let Some(ns) = state.namespaces.get_mut(&name) {
                        ns["metadata"]["labels"][k] = json!(v);
                        ns["metadata"]["resourceVersion"] = json!(version);
                    }
                }
                let Some(current) = state.namespaces.get(&name).cloned() else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                let patch: json_patch::Patch = match serde_json::from_slice(body) {
                    Ok(patch) => patch,
                    Err(e) => {
                        return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
                    }
                };
                let mut next = current;
                if let Err(e) = json_patch::patch(&mut next, &patch) {
                    // What the apiserver answers when a `test` op fails.
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "", &e.to_string());
                }
                state.version += 1;
                state.writes += 1;
                next["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.namespaces.insert(name, next.clone());
                (StatusCode::OK, next)
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound", "no route"),
        }
    }
}
