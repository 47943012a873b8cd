//! Fan-out of one namespace's managed labels to every remote, in parallel, under a deadline.
//!
//! This is the fast path of the admission webhook: it tries once per remote and reports what
//! happened. Anything it cannot finish in time is left to the reconciler, which is what
//! guarantees convergence; the webhook only makes it quick in the common case.
//!
//! The common case is a converged remote: it carries the managed labels the primary had before
//! the change. [`push_from`] bets on that and sends one JSON patch that tests those labels and
//! applies the change, one round trip instead of a read and a write; a remote in any other state
//! fails the test and gets the read-diff-write of [`push`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{Api, Client};

use mesh_core::{
    failure::{Failure, error_chain},
    labels::{Labels, SyncRule},
    remote::{self, Remote, RemoteState, Snapshot},
    token::Claims,
    write::{Known, Written, write_managed_labels},
};

use crate::push_outcome::{PushIntent, PushOutcome, PushResult};

impl PushResult {
    /// How a write ended, through a remote whose stored token has `token`'s claims.
    fn written(written: Written, token: Option<Claims>) -> Self {
        match written {
            Written::Applied { .. } => Self::Applied,
            Written::AlreadyInSync => Self::AlreadyInSync,
            Written::Missing => Self::NamespaceMissing,
            Written::OutOfScope => Self::OutOfScope,
            Written::Failed {
                failure, message, ..
            } => Self::failed(failure, message, token),
        }
    }

    /// A call to the remote that failed this way, its stored token having `token`'s claims.
    fn failed(failure: Failure, message: String, token: Option<Claims>) -> Self {
        match failure {
            Failure::Unauthorized => Self::CredentialsRefused {
                message,
                expired_at: token.and_then(|claims| claims.expired_at(Timestamp::now())),
            },
            Failure::Unreachable => Self::Unreachable(message),
            Failure::TimedOut => Self::TimedOut,
            Failure::Forbidden => Self::Forbidden(message),
            Failure::NotFound => Self::NamespaceMissing,
            Failure::Conflict | Failure::Other => Self::Failed(message),
        }
    }

    /// Not pushed: the remote's server could not be shown to be its cluster
    /// ([`Remote::verify`]). A failed call says what failed, as any call of a push does (what
    /// it was for would fill a warning before the cause); a 404 there is of its kube-system,
    /// not of the namespace pushed; a server that is another cluster is credentials to
    /// repair, which no retry fixes.
    fn unverified(error: &remote::Error, token: Option<Claims>) -> Self {
        let Some(call) = error.failed_call() else {
            return Self::CredentialsUnusable(error.to_string());
        };
        let (failure, cause) = (Failure::of(call), error_chain(call));
        match failure {
            Failure::NotFound => Self::Failed(format!(
                "{cause} (its kube-system namespace, read to tell which cluster it is)"
            )),
            _ => Self::failed(failure, cause, token),
        }
    }
}

/// The outcome of one push and how long it took, for the latency histogram.
#[derive(Debug)]
pub struct TimedOutcome {
    pub outcome: PushOutcome,
    /// How long the push took; `None` when no request was made (a remote not waited for,
    /// without usable credentials or scope), or when a deadline cut short before the push
    /// began ran out: its time would tell nothing of propagation.
    pub elapsed: Option<Duration>,
    /// The one-patch bet of [`push_from`] did not land and the remote was read first (also when
    /// the deadline then cut the push short).
    pub read_first: bool,
}

/// How long pushes do not wait for a remote after one ran out its deadline, unless it answers
/// before (to the reconciler's sync, see [`Remote::answered`]).
pub const SILENCE: Duration = Duration::from_secs(10);

/// Pushes `intent` to every remote in parallel and returns one outcome per remote, in the order
/// of `remotes`. A remote not done when `deadline` elapses is reported as
/// [`PushResult::TimedOut`].
pub async fn fan_out(
    remotes: &[Arc<Remote>],
    rule: &SyncRule,
    intent: &PushIntent,
    deadline: Duration,
) -> Vec<PushOutcome> {
    fan_out_timed_from(&attached(remotes), rule, intent, None, deadline, true)
        .await
        .into_iter()
        .map(|timed| timed.outcome)
        .collect()
}

/// `remotes`, none being rebuilt, as a snapshot of the registry.
fn attached(remotes: &[Arc<Remote>]) -> Snapshot {
    Snapshot {
        current: remotes.to_vec(),
        rebuilding: Vec::new(),
    }
}

/// [`fan_out`] to the `attached` clusters of a change from `expected` (the managed labels the
/// primary had before it), with the time each remote took: each remote first gets
/// [`push_from`]. `None` reads every remote first ([`push`]). With `blame_timeouts` false a
/// remote that runs out the deadline is not taken for silent: the deadline was cut short before
/// the push began (it waited its turn behind another push of the namespace), and the remote is
/// not to blame. The clusters being rebuilt come last, as [`PushResult::Reconfiguring`].
pub async fn fan_out_timed_from(
    attached: &Snapshot,
    rule: &SyncRule,
    intent: &PushIntent,
    expected: Option<&Labels>,
    deadline: Duration,
    blame_timeouts: bool,
) -> Vec<TimedOutcome> {
    let deadline = tokio::time::Instant::now() + deadline;
    let mut timed = join_all(attached.current.iter().map(|remote| async move {
        let started = Instant::now();
        let read_first = AtomicBool::new(false);
        let scoped = rule.within(remote.scope());
        let mut asked = false;
        let result = match (remote.state(), &scoped) {
            (_, Err(error)) => PushResult::ScopeUnusable(error.to_string()),
            (RemoteState::Ready(_), Ok(_)) if remote.is_silent() => PushResult::NotWaited,
            (RemoteState::Ready(client), Ok(rule)) => {
                asked = true;
                let pushed = async {
                    if let Err(error) = remote.verify().await {
                        return PushResult::unverified(&error, remote.token());
                    }
                    let known = match expected {
                        Some(labels) => Known::Expecting {
                            labels,
                            refused: &read_first,
                        },
                        None => Known::Nothing,
                    };
                    push_knowing(client, rule, intent, known, remote.token()).await
                };
                let result = tokio::time::timeout_at(deadline, pushed)
                    .await
                    .unwrap_or(PushResult::TimedOut);
                match result {
                    PushResult::TimedOut if blame_timeouts => remote.went_silent(SILENCE),
                    PushResult::TimedOut => asked = false,
                    PushResult::Unreachable(_) => {}
                    _ => remote.answered(),
                }
                result
            }
            (RemoteState::Unavailable { message, .. }, Ok(_)) => {
                PushResult::CredentialsUnusable(message.clone())
            }
        };
        let elapsed = started.elapsed();
        log_outcome(remote.name(), &intent.namespace, &result, elapsed);
        TimedOutcome {
            outcome: PushOutcome {
                cluster: remote.name().to_owned(),
                result,
            },
            elapsed: asked.then_some(elapsed),
            read_first: read_first.load(Ordering::Relaxed),
        }
    }))
    .await;
    timed.extend(attached.rebuilding.iter().map(|cluster| {
        let result = PushResult::Reconfiguring;
        log_outcome(cluster, &intent.namespace, &result, Duration::ZERO);
        TimedOutcome {
            outcome: PushOutcome {
                cluster: cluster.clone(),
                result,
            },
            elapsed: None,
            read_first: false,
        }
    }));
    timed
}

/// One line per push, its words from [`PushResult::miss`]; the messages stay few and fixed, for
/// whoever counts them.
fn log_outcome(cluster: &str, namespace: &str, result: &PushResult, elapsed: Duration) {
    let elapsed_ms = elapsed.as_millis();
    let outcome = result.metric_label();
    let miss = result.miss();
    let why = miss
        .as_ref()
        .map(|miss| miss.what.as_str())
        .unwrap_or_default();
    let error = miss
        .as_ref()
        .and_then(|miss| miss.detail)
        .unwrap_or_default();
    match result {
        PushResult::Applied
        | PushResult::AlreadyInSync
        | PushResult::NamespaceMissing
        | PushResult::OutOfScope
        | PushResult::Superseded => {
            tracing::info!(%cluster, %namespace, %outcome, elapsed_ms, "push done");
        }
        PushResult::TimedOut => {
            tracing::warn!(%cluster, %namespace, %outcome, elapsed_ms, "push timed out");
        }
        // Nothing is wrong: the next sync brings the change.
        PushResult::Reconfiguring => {
            tracing::info!(%cluster, %namespace, %outcome, %why, "push not tried");
        }
        PushResult::CredentialsUnusable(_)
        | PushResult::ScopeUnusable(_)
        | PushResult::NotWaited
        | PushResult::Queued => {
            tracing::warn!(%cluster, %namespace, %outcome, %why, %error, "push not tried");
        }
        PushResult::Unreachable(_)
        | PushResult::CredentialsRefused { .. }
        | PushResult::Forbidden(_)
        | PushResult::Failed(_) => {
            tracing::warn!(%cluster, %namespace, %outcome, %why, %error, elapsed_ms, "push failed");
        }
    }
}

/// Pushes `intent` to one remote: read the namespace, then write only the managed labels that
/// differ ([`write_managed_labels`] from nothing known). Its stored token unknown, a refusal of
/// it is not told expired.
pub async fn push(client: &Client, rule: &SyncRule, intent: &PushIntent) -> PushResult {
    push_knowing(client, rule, intent, Known::Nothing, None).await
}

/// Pushes `intent` to a remote expected to carry `expected` (the primary's managed labels before
/// the change): one guarded JSON patch, and a read-diff-write only if the remote is not as
/// expected ([`Known::Expecting`]). Its stored token unknown, as for [`push`].
pub async fn push_from(
    client: &Client,
    rule: &SyncRule,
    intent: &PushIntent,
    expected: &Labels,
) -> PushResult {
    let read_first = AtomicBool::new(false);
    let known = Known::Expecting {
        labels: expected,
        refused: &read_first,
    };
    push_knowing(client, rule, intent, known, None).await
}

/// Pushes `intent` to one remote from what is `known` of it, whose stored token has `token`'s
/// claims.
async fn push_knowing(
    client: &Client,
    rule: &SyncRule,
    intent: &PushIntent,
    known: Known<'_>,
    token: Option<Claims>,
) -> PushResult {
    let api: Api<Namespace> = Api::all(client.clone());
    let desired = || intent.labels.clone();
    let written = write_managed_labels(&api, rule, &intent.namespace, desired, known).await;
    PushResult::written(written, token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use mesh_core::cluster::NamespaceScope;
    use mesh_core::fake_apiserver::FakeApiserver;
    use mesh_core::fixtures::{labels, mesh_cluster};
    use mesh_core::labels::Labels;

    fn label(result: PushResult) -> &'static str {
        assert!(
            matches!(result, PushResult::Applied | PushResult::AlreadyInSync),
            "{result:?}"
        );
        result.metric_label()
    }

    fn intent(namespace: &str, pairs: &[(&str, &str)]) -> PushIntent {
        PushIntent {
            namespace: namespace.to_owned(),
            labels: labels(pairs),
        }
    }

    /// The push most tests make: `istio-injection=enabled` on namespace `app`.
    fn enable_injection() -> PushIntent {
        intent("app", &[("istio-injection", "enabled")])
    }

    /// A remote's apiserver, with an unlabelled namespace `app`, answering each request only
    /// after `delay`.
    fn slow_apiserver(delay: Duration) -> FakeApiserver {
        let slow = FakeApiserver::default().with_namespace("app", &[]);
        slow.state().delay = Some(delay);
        slow
    }

    /// The one remote `slow`, behind a [`slow_apiserver`]; that apiserver too, to speed it up.
    fn slow_remote(delay: Duration) -> (FakeApiserver, Vec<Arc<Remote>>) {
        let slow = slow_apiserver(delay);
        let remotes = vec![Arc::new(Remote::new("slow", slow.client()))];
        (slow, remotes)
    }

    /// Fans [`enable_injection`] out to `remotes` under the default rule, each push within
    /// `deadline`.
    async fn push_injection(remotes: &[Arc<Remote>], deadline: Duration) -> Vec<PushOutcome> {
        fan_out(remotes, &SyncRule::default(), &enable_injection(), deadline).await
    }

    /// [`push_injection`] with the time each remote took, a remote that runs out `deadline`
    /// taken for silent only when `blame_timeouts` (see [`fan_out_timed_from`]).
    async fn push_injection_timed(
        remotes: &[Arc<Remote>],
        deadline: Duration,
        blame_timeouts: bool,
    ) -> Vec<TimedOutcome> {
        let (rule, intent) = (SyncRule::default(), enable_injection());
        fan_out_timed_from(
            &attached(remotes),
            &rule,
            &intent,
            None,
            deadline,
            blame_timeouts,
        )
        .await
    }

    #[tokio::test]
    async fn applies_then_reports_in_sync() {
        let api = FakeApiserver::default().with_namespace("app", &[("team", "a")]);
        let rule = SyncRule::default();
        let want = enable_injection();
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

    /// Pushes `wanted` to namespace `app` of a remote whose labels are `remote`, expecting the
    /// managed labels `before`, under the default rule.
    async fn push_to(
        remote: &[(&str, &str)],
        wanted: &[(&str, &str)],
        before: &[(&str, &str)],
    ) -> (FakeApiserver, PushResult) {
        let api = FakeApiserver::default().with_namespace("app", remote);
        let result = push_from(
            &api.client(),
            &SyncRule::default(),
            &intent("app", wanted),
            &labels(before),
        )
        .await;
        (api, result)
    }

    #[tokio::test]
    async fn a_push_reads_the_remote_only_when_it_is_off_the_expected_state() {
        let rev = |value| [("istio.io/rev", value)];
        let injection = |value| [("istio-injection", value)];
        // (case, remote's labels, pushed, expected before, result, (GETs, PATCHes, PATCHes
        // applied), after)
        let cases: [(&str, &[_], &[_], &[_], _, _, &[_]); 4] = [
            (
                "as expected: one patch, no read",
                &[("istio-injection", "enabled"), ("team", "a")],
                &[("istio-injection", "disabled"), ("istio.io/rev", "1-25")],
                &injection("enabled"),
                PushResult::Applied,
                (0, 1, 1),
                &[
                    ("istio-injection", "disabled"),
                    ("istio.io/rev", "1-25"),
                    ("team", "a"),
                ],
            ),
            (
                "as expected, the last managed label removed beside a stray one: exactly the intent",
                &[
                    ("istio.io/rev", "1-25"),
                    ("istio.io/dataplane-mode", "stray"),
                ],
                &[],
                &rev("1-25"),
                PushResult::Applied,
                (0, 1, 1),
                &[],
            ),
            (
                // E.g. the reconciler was first.
                "already where the primary goes: read, nothing written",
                &injection("disabled"),
                &injection("disabled"),
                &injection("enabled"),
                PushResult::AlreadyInSync,
                (1, 1, 0),
                &injection("disabled"),
            ),
            (
                "drifted elsewhere: read, then the conditional write of the diff",
                &rev("old"),
                &rev("new"),
                &rev("older"),
                PushResult::Applied,
                (1, 2, 1),
                &rev("new"),
            ),
        ];
        for (case, remote, wanted, before, result, requests, after) in cases {
            let (api, pushed) = push_to(remote, wanted, before).await;
            assert_eq!(pushed, result, "{case}");
            let state = api.state();
            assert_eq!(
                (state.gets, state.patches, state.writes),
                requests,
                "{case}"
            );
            drop(state);
            assert_eq!(api.labels("app"), labels(after), "{case}");
        }
    }

    #[tokio::test]
    async fn a_push_tells_whether_its_remote_was_read_first() {
        let rule = SyncRule::default();
        let before = labels(&[("istio-injection", "enabled")]);
        let converged =
            FakeApiserver::default().with_namespace("app", &[("istio-injection", "enabled")]);
        let drifted =
            FakeApiserver::default().with_namespace("app", &[("istio-injection", "disabled")]);
        let remotes = vec![
            Arc::new(Remote::new("converged", converged.client())),
            Arc::new(Remote::new("drifted", drifted.client())),
        ];
        let want = intent(
            "app",
            &[("istio-injection", "enabled"), ("istio.io/rev", "1-25")],
        );
        let timed = fan_out_timed_from(
            &attached(&remotes),
            &rule,
            &want,
            Some(&before),
            Duration::from_secs(5),
            true,
        )
        .await;
        let seen: Vec<_> = timed
            .iter()
            .map(|t| (t.outcome.cluster.as_str(), t.read_first, &t.outcome.result))
            .collect();
        assert_eq!(
            seen,
            [
                ("converged", false, &PushResult::Applied),
                ("drifted", true, &PushResult::Applied),
            ]
        );
        assert_eq!(drifted.labels("app"), want.labels);
    }

    #[tokio::test]
    async fn the_one_patch_push_reports_like_the_read_first_one() {
        let rule = SyncRule::default();
        let want = enable_injection();
        let missing = FakeApiserver::default();
        let result = push_from(&missing.client(), &rule, &want, &Labels::new()).await;
        assert_eq!(result, PushResult::NamespaceMissing);
        assert!(missing.state().namespaces.is_empty(), "never created");

        let denied = FakeApiserver::default().with_namespace("app", &[]);
        denied.state().forbidden = true;
        let result = push_from(&denied.client(), &rule, &want, &Labels::new()).await;
        assert!(matches!(result, PushResult::Forbidden(_)), "{result:?}");
        assert_eq!(denied.state().gets, 0, "no pointless read");
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
        let want = enable_injection();
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
        let ok = FakeApiserver::default().with_namespace("app", &[]);
        let denied = FakeApiserver::default();
        denied.state().forbidden = true;
        let slow = slow_apiserver(Duration::from_secs(5));
        let remotes = vec![
            Arc::new(Remote::new("a-ok", ok.client())),
            Arc::new(Remote::new("b-denied", denied.client())),
            Arc::new(Remote::new("c-slow", slow.client())),
        ];
        let started = Instant::now();
        let outcomes = push_injection(&remotes, Duration::from_millis(300)).await;
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

    /// The remote `east` (uid-of-east, with `scope`) behind `apiserver`.
    fn east_behind(apiserver: &FakeApiserver, scope: NamespaceScope) -> [Arc<Remote>; 1] {
        let mut east = mesh_cluster("east", "uid-of-east");
        east.spec.scope = scope;
        [Arc::new(
            Remote::new("east", apiserver.client()).with_identity(&east),
        )]
    }

    /// Pushes [`enable_injection`] to `east` behind `apiserver`, which must be patched nothing;
    /// how the push ended.
    async fn unpatched_push(apiserver: &FakeApiserver) -> PushResult {
        let remotes = east_behind(apiserver, NamespaceScope::default());
        let outcomes = push_injection(&remotes, Duration::from_secs(5)).await;
        assert_eq!(apiserver.state().patches, 0, "{outcomes:?}");
        outcomes[0].result.clone()
    }

    #[tokio::test]
    async fn nothing_is_pushed_through_credentials_that_reach_another_cluster() {
        let other = FakeApiserver::default()
            .with_namespace("kube-system", &[])
            .with_namespace("app", &[]);
        let result = unpatched_push(&other).await;
        // Credentials to repair: no retry writes there (it said the reconciler would retry).
        assert!(
            matches!(&result, PushResult::CredentialsUnusable(message)
                if message.contains("reaches another cluster than east (id uid-kube-system, not uid-of-east)")),
            "{result:?}"
        );
    }

    /// A server answering 404 to everything (a proxy whose cluster went) was said to lack the
    /// namespace pushed, with no Event: the 404 was of its kube-system.
    #[tokio::test]
    async fn a_remote_whose_identity_is_not_found_is_not_missing_the_namespace() {
        let gone = FakeApiserver::default().with_namespace("app", &[]);
        let result = unpatched_push(&gone).await;
        assert!(
            matches!(&result, PushResult::Failed(message) if message.contains("its kube-system namespace")),
            "{result:?}"
        );
    }

    /// A 401 refuses the stored credentials, whichever call of the push meets it (the read of
    /// the identity after a rebuild, or a write once the token expired or was revoked), and is
    /// told from a 403 and, when the stored token's claims say it has expired, since when.
    #[tokio::test]
    async fn a_remote_refusing_the_stored_credentials_is_told_from_one_refusing_the_change() {
        use axum::http::StatusCode;
        use mesh_core::fake_apiserver::{answering, status};
        let refusing = |code: StatusCode| {
            let reason = code.canonical_reason().expect("a reason");
            answering(move |_, _| status(code, reason, reason)).0
        };
        let at = |second| Timestamp::from_second(second).expect("timestamp");
        let lasting_until = |second| Claims {
            issued_at: Some(at(1_000)),
            expires_at: Some(at(second)),
        };
        let (expired, valid) = (lasting_until(2_000), lasting_until(4_000_000_000));
        let refused = |expired_at| PushResult::CredentialsRefused {
            message: "401 Unauthorized".to_owned(),
            expired_at,
        };
        let unauthorized = || Remote::new("east", refusing(StatusCode::UNAUTHORIZED));
        let cases = [
            (
                "the identity's read, the token expired",
                unauthorized()
                    .with_identity(&mesh_cluster("east", "uid-east"))
                    .with_token(expired),
                refused(Some(at(2_000))),
            ),
            ("a write, the token unknown", unauthorized(), refused(None)),
            (
                "a write, the token valid",
                unauthorized().with_token(valid),
                refused(None),
            ),
            (
                "a write the remote's RBAC refuses",
                Remote::new("east", refusing(StatusCode::FORBIDDEN)).with_token(expired),
                PushResult::Forbidden("403 Forbidden".to_owned()),
            ),
        ];
        for (case, remote, result) in cases {
            let outcomes = push_injection(&[Arc::new(remote)], Duration::from_secs(5)).await;
            assert_eq!(outcomes[0].result, result, "{case}");
        }
    }

    /// A scope that cannot be used is to correct, not to retry: it was a failure "the
    /// reconciler will retry", which writes nothing there either.
    #[tokio::test]
    async fn a_remote_whose_scope_cannot_be_used_is_said_so() {
        let remote = FakeApiserver::default().with_namespace("app", &[]);
        let on_a_managed_key = NamespaceScope {
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("istio-injection".to_owned(), "enabled".to_owned())].into()),
                match_expressions: None,
            }),
            ..NamespaceScope::default()
        };
        let remotes = east_behind(&remote, on_a_managed_key);
        let timed = push_injection_timed(&remotes, Duration::from_secs(5), true).await;
        assert!(
            matches!(&timed[0].outcome.result, PushResult::ScopeUnusable(m) if m.contains("istio-injection")),
            "{timed:?}"
        );
        assert_eq!(timed[0].elapsed, None, "nothing asked");
        let state = remote.state();
        assert_eq!((state.gets, state.patches), (0, 0), "nothing asked");
    }

    /// A remote that cannot be frozen on demand in a unit test: the fake apiserver's delay
    /// stands for it (e2e `hangs.rs` freezes a real one).
    #[tokio::test]
    async fn a_remote_that_let_a_push_time_out_is_not_waited_for_until_it_answers() {
        let (slow, remotes) = slow_remote(Duration::from_secs(5));
        let deadline = Duration::from_millis(200);
        let first = push_injection(&remotes, deadline).await;
        assert_eq!(first[0].result, PushResult::TimedOut);
        let started = Instant::now();
        let second = push_injection(&remotes, deadline).await;
        assert_eq!(second[0].result, PushResult::NotWaited);
        assert!(started.elapsed() < deadline, "not waited for");

        // Once it answers (here: the reconciler's sync did), pushes go to it again.
        slow.state().delay = None;
        remotes[0].answered();
        let third = push_injection(&remotes, deadline).await;
        assert_eq!(third[0].result, PushResult::Applied);
    }

    /// A push that waited its turn starts with little of its deadline left: running it out
    /// does not make the remote silent for the pushes that follow.
    #[tokio::test]
    async fn a_timeout_of_a_push_cut_short_does_not_silence_the_remote() {
        let (_slow, remotes) = slow_remote(Duration::from_millis(500));
        let cut_short = Duration::from_millis(100);
        let first = push_injection_timed(&remotes, cut_short, false).await;
        assert_eq!(first[0].outcome.result, PushResult::TimedOut);
        assert!(!remotes[0].is_silent());
        // Nor is its time a propagation's: 100 ms timed out told of a fast one.
        assert_eq!(first[0].elapsed, None);
        let second = push_injection(&remotes, Duration::from_secs(5)).await;
        assert_eq!(second[0].result, PushResult::Applied);
    }

    /// A cluster whose stored credentials cannot be used was said to be unreachable, while
    /// its MeshCluster said why: the credentials.
    #[tokio::test]
    async fn a_remote_without_usable_credentials_is_not_called_unreachable() {
        let error = mesh_core::remote::Error::SecretMissing {
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
            matches!(&outcomes[0].result, PushResult::CredentialsUnusable(m) if m.contains("not found")),
            "{:?}",
            outcomes[0].result
        );
    }

    /// Pushes that asked nothing of their remote (not waited for, no usable credentials or
    /// scope) took no time worth a latency: timed, they made propagation look fastest while
    /// nothing reached the remotes.
    #[tokio::test]
    async fn only_a_push_that_asked_its_remote_is_timed() {
        let (_slow, mut remotes) = slow_remote(Duration::from_secs(5));
        let error = mesh_core::remote::Error::SecretMissing {
            namespace: "m".into(),
            name: "s".into(),
        };
        remotes.push(Arc::new(Remote::unavailable("west", &error)));
        let push = || push_injection_timed(&remotes, Duration::from_millis(200), true);
        let timed = |outcomes: Vec<TimedOutcome>| -> Vec<(PushResult, bool)> {
            let timed = |o: TimedOutcome| (o.outcome.result, o.elapsed.is_some());
            outcomes.into_iter().map(timed).collect()
        };
        let unreachable = |o: &TimedOutcome| o.outcome.result.clone();
        let first = push().await;
        let west = unreachable(&first[1]);
        assert_eq!(
            timed(first),
            [(PushResult::TimedOut, true), (west.clone(), false)]
        );
        assert_eq!(
            timed(push().await),
            [(PushResult::NotWaited, false), (west, false)]
        );
    }
}
