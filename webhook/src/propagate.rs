//! Fan-out of one namespace's managed labels to every remote, in parallel, under a deadline.
//!
//! This is the fast path of the admission webhook: it tries once per remote and reports what
//! happened. Anything it cannot finish in time is left to the reconciler, which is what
//! guarantees convergence; the webhook only makes it quick in the common case.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::{
    admission::{PushIntent, PushOutcome, PushResult},
    labels::SyncRule,
    remote::{Failure, Remote, RemoteState, error_chain},
};

/// Field manager of every write kubectl-mesh makes on a remote.
pub const FIELD_MANAGER: &str = crate::MANAGER;

/// The outcome of one push and how long it took, for the latency histogram.
#[derive(Debug)]
pub struct TimedOutcome {
    pub outcome: PushOutcome,
    pub elapsed: Duration,
}

/// Pushes `intent` to every remote in parallel and returns one outcome per remote, in the order
/// of `remotes`. A remote not done when `deadline` elapses is reported as
/// [`PushResult::TimedOut`].
pub async fn fan_out(
    remotes: &[Arc<Remote>],
    rule: &SyncRule,
    intent: &PushIntent,
    deadline: Duration,
) -> Vec<PushOutcome> {
    fan_out_timed(remotes, rule, intent, deadline)
        .await
        .into_iter()
        .map(|timed| timed.outcome)
        .collect()
}

/// [`fan_out`], with the time each remote took.
pub async fn fan_out_timed(
    remotes: &[Arc<Remote>],
    rule: &SyncRule,
    intent: &PushIntent,
    deadline: Duration,
) -> Vec<TimedOutcome> {
    let deadline = tokio::time::Instant::now() + deadline;
    join_all(remotes.iter().map(|remote| async move {
        let started = Instant::now();
        let result = match remote.state() {
            RemoteState::Ready(client) => {
                tokio::time::timeout_at(deadline, push(client, rule, intent))
                    .await
                    .unwrap_or(PushResult::TimedOut)
            }
            RemoteState::Unavailable { message, .. } => PushResult::Unreachable(message.clone()),
        };
        let elapsed = started.elapsed();
        log_outcome(remote.name(), &intent.namespace, &result, elapsed);
        TimedOutcome {
            outcome: PushOutcome {
                cluster: remote.name().to_owned(),
                result,
            },
            elapsed,
        }
    }))
    .await
}

fn log_outcome(cluster: &str, namespace: &str, result: &PushResult, elapsed: Duration) {
    let elapsed_ms = elapsed.as_millis();
    let outcome = result.metric_label();
    match result {
        PushResult::Applied | PushResult::AlreadyInSync | PushResult::NamespaceMissing => {
            tracing::info!(%cluster, %namespace, %outcome, elapsed_ms, "push done");
        }
        PushResult::Unreachable(error)
        | PushResult::Forbidden(error)
        | PushResult::Failed(error) => {
            tracing::warn!(%cluster, %namespace, %outcome, %error, elapsed_ms, "push failed");
        }
        PushResult::TimedOut => {
            tracing::warn!(%cluster, %namespace, %outcome, elapsed_ms, "push timed out");
        }
    }
}

/// Pushes `intent` to one remote: read the namespace, write only the managed labels that
/// differ with a patch conditional on the read's resourceVersion, and on a conflict read and
/// try exactly once more.
pub async fn push(client: &Client, rule: &SyncRule, intent: &PushIntent) -> PushResult {
    let api: Api<Namespace> = Api::all(client.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let mut retried = false;
    loop {
        let current = match api.get_opt(&intent.namespace).await {
            Ok(Some(namespace)) => namespace,
            Ok(None) => return PushResult::NamespaceMissing,
            Err(error) => return result_of(&error),
        };
        let diff = rule.diff(&intent.labels, &current);
        if diff.is_empty() {
            return PushResult::AlreadyInSync;
        }
        let patch = diff.to_json_patch(&current);
        match api
            .patch(&intent.namespace, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return PushResult::Applied,
            Err(error) if !retried && Failure::of(&error) == Failure::Conflict => {
                tracing::debug!(namespace = %intent.namespace, "remote namespace changed under us, retrying");
                retried = true;
            }
            Err(error) => return result_of(&error),
        }
    }
}

/// Maps an error of a call to a remote to the result reported to the admission response.
pub fn result_of(error: &kube::Error) -> PushResult {
    let message = error_chain(error);
    match Failure::of(error) {
        Failure::Unreachable => PushResult::Unreachable(message),
        Failure::TimedOut => PushResult::TimedOut,
        Failure::Forbidden => PushResult::Forbidden(message),
        // The namespace went away between our read and our write.
        Failure::NotFound => PushResult::NamespaceMissing,
        Failure::Conflict | Failure::Other => PushResult::Failed(message),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::labels::Labels;
    use fake::FakeApiserver;

    /// An in-memory apiserver serving only namespaces: enough to drive the push and sync logic
    /// through a real `kube::Client`, including JSON patch `test` failures.
    pub(crate) mod fake {
        use std::{
            collections::BTreeMap,
            sync::{Arc, Mutex},
        };

        use axum::http::{Method, Request, Response, StatusCode};
        use bytes::Bytes;
        use http_body_util::Full;
        use kube::Client;
        use serde_json::{Value, json};

        #[derive(Default)]
        pub(crate) struct State {
            pub namespaces: BTreeMap<String, Value>,
            pub version: u64,
            /// Number of PATCH requests received.
            pub patches: usize,
            /// Number of PATCH requests applied.
            pub writes: usize,
            /// Label written by a concurrent writer just before the next N patches are applied.
            pub interfere: Vec<(String, String)>,
            /// Answer every request with 403.
            pub forbidden: bool,
            /// Delay every answer.
            pub delay: Option<std::time::Duration>,
        }

        #[derive(Clone, Default)]
        pub(crate) struct FakeApiserver(pub Arc<Mutex<State>>);

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
                            "metadata": {"name": name, "resourceVersion": version, "labels": labels},
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
                let this = self.clone();
                let service = tower::service_fn(move |req: Request<kube::client::Body>| {
                    let this = this.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect_bytes().await.unwrap_or_default();
                        let delay = this.state().delay;
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        let (code, value) = this.handle(&parts.method, parts.uri.path(), &body);
                        let response = Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(value.to_string())))
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                Client::new(service, "default")
            }

            fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
                let body = json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "code": code.as_u16(), "reason": reason, "message": message,
                });
                (code, body)
            }

            fn handle(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
                let mut state = self.state();
                if state.forbidden {
                    return Self::status(StatusCode::FORBIDDEN, "Forbidden", "no");
                }
                let name = path.strip_prefix("/api/v1/namespaces/").map(str::to_owned);
                match (method, name) {
                    (&Method::GET, None) if path == "/api/v1/namespaces" => {
                        let items: Vec<Value> = state.namespaces.values().cloned().collect();
                        let version = state.version.to_string();
                        (
                            StatusCode::OK,
                            json!({"apiVersion": "v1", "kind": "NamespaceList",
                                   "metadata": {"resourceVersion": version}, "items": items}),
                        )
                    }
                    (&Method::GET, Some(name)) => match state.namespaces.get(&name) {
                        Some(ns) => (StatusCode::OK, ns.clone()),
                        None => Self::status(StatusCode::NOT_FOUND, "NotFound", "not found"),
                    },
                    (&Method::PATCH, Some(name)) => {
                        state.patches += 1;
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
                            return Self::status(StatusCode::NOT_FOUND, "NotFound", "not found");
                        };
                        let patch: json_patch::Patch = match serde_json::from_slice(body) {
                            Ok(patch) => patch,
                            Err(e) => {
                                return Self::status(
                                    StatusCode::BAD_REQUEST,
                                    "BadRequest",
                                    &e.to_string(),
                                );
                            }
                        };
                        let mut next = current;
                        if let Err(e) = json_patch::patch(&mut next, &patch) {
                            // What the apiserver answers when a `test` op fails.
                            return Self::status(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "",
                                &e.to_string(),
                            );
                        }
                        state.version += 1;
                        state.writes += 1;
                        next["metadata"]["resourceVersion"] = json!(state.version.to_string());
                        state.namespaces.insert(name, next.clone());
                        (StatusCode::OK, next)
                    }
                    _ => Self::status(StatusCode::NOT_FOUND, "NotFound", "no route"),
                }
            }
        }
    }

    fn label(result: PushResult) -> &'static str {
        assert!(
            matches!(result, PushResult::Applied | PushResult::AlreadyInSync),
            "{result:?}"
        );
        result.metric_label()
    }

    fn intent(namespace: &str, labels: &[(&str, &str)]) -> PushIntent {
        PushIntent {
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Labels>(),
        }
    }

    #[tokio::test]
    async fn applies_then_reports_in_sync() {
        let api = FakeApiserver::default().with_namespace("app", &[("team", "a")]);
        let rule = SyncRule::default();
        let want = intent("app", &[("istio-injection", "enabled")]);
        assert_eq!(
            label(push(&api.client(), &rule, &want).await),
            PushResult::Applied.metric_label()
        );
        assert_eq!(api.labels("app")["istio-injection"], "enabled");
        assert_eq!(
            api.labels("app")["team"],
            "a",
            "unmanaged labels are left alone"
        );
        assert_eq!(
            label(push(&api.client(), &rule, &want).await),
            PushResult::AlreadyInSync.metric_label()
        );
        assert_eq!(api.state().writes, 1, "converged means zero writes");
    }

    #[tokio::test]
    async fn removes_managed_labels_the_primary_dropped() {
        let api = FakeApiserver::default().with_namespace("app", &[("istio.io/rev", "1-24")]);
        let rule = SyncRule::default();
        assert_eq!(
            label(push(&api.client(), &rule, &intent("app", &[])).await),
            PushResult::Applied.metric_label()
        );
        assert!(!api.labels("app").contains_key("istio.io/rev"));
    }

    #[tokio::test]
    async fn missing_namespace_is_not_created() {
        let api = FakeApiserver::default();
        let result = push(&api.client(), &SyncRule::default(), &intent("app", &[])).await;
        assert!(matches!(result, PushResult::NamespaceMissing), "{result:?}");
        assert!(api.state().namespaces.is_empty());
    }

    #[tokio::test]
    async fn conflict_is_retried_once() {
        let api = FakeApiserver::default().with_namespace("app", &[]);
        api.state().interfere = vec![("team".into(), "b".into())];
        let want = intent("app", &[("istio-injection", "enabled")]);
        assert_eq!(
            label(push(&api.client(), &SyncRule::default(), &want).await),
            PushResult::Applied.metric_label()
        );
        assert_eq!(api.state().patches, 2);
        assert_eq!(
            api.labels("app")["team"],
            "b",
            "the concurrent write survives"
        );

        let api = FakeApiserver::default().with_namespace("app", &[]);
        api.state().interfere = vec![("a".into(), "1".into()), ("b".into(), "2".into())];
        let result = push(&api.client(), &SyncRule::default(), &want).await;
        assert!(matches!(result, PushResult::Failed(_)), "{result:?}");
        assert_eq!(api.state().patches, 2, "only one retry");
    }

    #[tokio::test]
    async fn forbidden_and_deadline_are_reported_per_cluster() {
        let rule = SyncRule::default();
        let ok = FakeApiserver::default().with_namespace("app", &[]);
        let denied = FakeApiserver::default();
        denied.state().forbidden = true;
        let slow = FakeApiserver::default().with_namespace("app", &[]);
        slow.state().delay = Some(Duration::from_secs(5));
        let remotes = vec![
            Arc::new(Remote::new("a-ok", ok.client())),
            Arc::new(Remote::new("b-denied", denied.client())),
            Arc::new(Remote::new("c-slow", slow.client())),
        ];
        let want = intent("app", &[("istio-injection", "enabled")]);
        let started = Instant::now();
        let outcomes = fan_out(&remotes, &rule, &want, Duration::from_millis(300)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "deadline honoured"
        );
        let results: Vec<_> = outcomes
            .iter()
            .map(|o| (o.cluster.as_str(), o.result.metric_label()))
            .collect();
        assert_eq!(
            results,
            vec![
                ("a-ok", PushResult::Applied.metric_label()),
                (
                    "b-denied",
                    PushResult::Forbidden(String::new()).metric_label()
                ),
                ("c-slow", PushResult::TimedOut.metric_label()),
            ]
        );
    }

    #[tokio::test]
    async fn unavailable_remote_is_unreachable_without_a_call() {
        let error = crate::remote::Error::SecretMissing {
            namespace: "m".into(),
            name: "s".into(),
        };
        let remotes = vec![Arc::new(Remote::unavailable("east", &error))];
        let outcomes = fan_out(
            &remotes,
            &SyncRule::default(),
            &intent("app", &[]),
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(&outcomes[0].result, PushResult::Unreachable(m) if m.contains("not found")),
            "{:?}",
            outcomes[0].result
        );
    }
}
