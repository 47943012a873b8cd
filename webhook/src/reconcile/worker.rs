//! One attached cluster's worker: when to sync it, the sync itself with its status, Events
//! and metrics, and the watch of the remote's namespaces it reads while this replica leads.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::runtime::reflector::ObjectRef;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Shared;
use crate::primary_write::to_primary;
use crate::{
    backoff::Backoff,
    cluster_status::{
        Attempt, TOKEN_EXPIRED, next_status, status_needs_write, with_token_expiry, write_status,
    },
    leader::Leadership,
    primary_view::StoreView,
    remote_watch::{SeenNamespaces, watch_for_drift},
    renewal::{Renewal, renew_token},
};

use mesh_core::{
    failure::{Failure, error_chain},
    labels::scope_remedy,
    remote::{self, Remote, RemoteState},
    sync::{self, PrimaryView, Refusals, SyncMode, SyncReport, sync_listed, sync_watched},
    token::Claims,
};

pub(super) struct Worker {
    name: String,
    shared: Arc<Shared>,
    primary_changed: watch::Receiver<u64>,
    is_leader: Leadership,
    pub(super) kick: Arc<Notify>,
    pub(super) cancel: CancellationToken,
    backoff: Backoff,
    /// Delays of the retries of namespaces the remote refused to write while it answers: it
    /// is not failing, so the wake-ups stay on.
    refused: Backoff,
    /// The writes the remote refused for good, not sent again by the syncs of other wake-ups
    /// until [`Worker::retry_refused_at`].
    refusals: Refusals,
    /// When the refused writes are sent again, whatever wakes the worker meanwhile: not
    /// pushed back by the syncs in between.
    retry_refused_at: Instant,
    /// Woken by the watch of the remote's namespaces when they drift from the primary.
    drift: Arc<Notify>,
    watching: Option<RemoteWatch>,
    /// No token renewal is tried before this: one try per resync period, whatever wakes the
    /// worker. A failing renewal is not retried every second, and a successful one is not
    /// repeated before the registry holds the new token.
    renewal_not_before: Option<Instant>,
    /// The stored token last seen, and when this worker first saw it (see [`Claims::renew_at`]).
    token_seen: Option<(Claims, Timestamp)>,
}

/// The drift watch of one remote, for the client it was started with.
pub(super) struct RemoteWatch {
    pub(super) remote: Arc<Remote>,
    pub(super) cancel: CancellationToken,
    /// What the drift watch keeps of the remote's namespaces; none for the injector watches.
    pub(super) seen: Option<SeenNamespaces>,
}

impl Drop for RemoteWatch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// How a sync ended, for when the next one is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Ran to its end and wrote every namespace that differed.
    Synced,
    /// Ran to its end, the remote refused some writes (an admission policy, a conflict): it
    /// answers, so what wakes a worker still does, and the next sync, at the latest after
    /// [`Worker::refused`]'s delay, writes them again.
    Refused,
    /// The remote did not answer, refused the credentials, stopped answering mid-sync, or
    /// answered none of the writes it was sent: retried with [`Worker::backoff`] alone.
    Failed,
    /// Not tried: the registry holds no entry for the MeshCluster the store shows now. Tried
    /// again after [`UNBUILT_RETRY`], in case the supervisor's kick came before this sync
    /// looked; no status, and neither backoff changes.
    Unbuilt,
}

impl Worker {
    pub(super) fn new(
        name: String,
        shared: Arc<Shared>,
        primary_changed: watch::Receiver<u64>,
        is_leader: Leadership,
        cancel: CancellationToken,
    ) -> Self {
        let backoff = shared.settings.backoff;
        Self {
            name,
            shared,
            primary_changed,
            is_leader,
            kick: Arc::new(Notify::new()),
            cancel,
            backoff: Backoff::new(backoff),
            refused: Backoff::new(backoff),
            refusals: Refusals::default(),
            retry_refused_at: Instant::now(),
            drift: Arc::new(Notify::new()),
            watching: None,
            renewal_not_before: None,
            token_seen: None,
        }
    }

    /// Works until cancelled (the cluster detached, or shutdown), then forgets the cluster's
    /// gauges: a sync under way is dropped first, so that nothing sets them again, nor writes
    /// the status or Events of a cluster that is gone.
    pub(super) async fn run(mut self) {
        self.work().await;
        self.shared.state.metrics.forget_cluster(&self.name);
    }

    async fn work(&mut self) {
        let mut term: Option<CancellationToken> = None;
        let mut due = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let now = self.is_leader.borrow_and_update().clone();
            // A term seen cancelled and a new one since: leadership was lost and won back.
            if now.is_some() && term.as_ref().is_none_or(CancellationToken::is_cancelled) {
                // Whoever led before may have died mid-sync: start with a full one.
                due = Instant::now();
                self.retry_refused_at = due;
            }
            term = now;
            let leading = term.is_some();
            self.watch_remote(leading);
            if !leading {
                self.shared.state.metrics.forget_observations(&self.name);
                tokio::select! {
                    changed = self.is_leader.changed() => if changed.is_err() { return },
                    () = self.cancel.cancelled() => return,
                }
                continue;
            }
            let failing = self.backoff.is_failing();
            let debounce = self.shared.settings.debounce;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                changed = self.is_leader.changed() => {
                    if changed.is_err() { return }
                    continue;
                }
                () = self.kick.notified() => {
                    // New credentials or spec: worth trying now even while backing off, and
                    // what the remote refused may pass now.
                    self.backoff.reset();
                    self.retry_refused_at = Instant::now();
                    tokio::time::sleep(debounce).await;
                }
                // While the remote fails, the backoff timer alone decides when to try again.
                changed = self.primary_changed.changed(), if !failing => {
                    if changed.is_err() { return }
                    // The webhook pushed the change already; this sync only catches what a
                    // push missed. Paced, so that a stream of edits on the primary does not
                    // become a stream of full syncs of every remote competing with the pushes.
                    let paced = last_sync + self.shared.settings.primary_sync_interval;
                    tokio::select! {
                        () = tokio::time::sleep_until(paced.max(Instant::now() + debounce)) => {}
                        () = self.cancel.cancelled() => return,
                    }
                }
                () = self.drift.notified(), if !failing => {
                    // Seconds long, unlike the debounce: shutdown must not wait for it.
                    tokio::select! {
                        () = tokio::time::sleep(self.shared.settings.drift_settle) => {}
                        () = self.cancel.cancelled() => return,
                    }
                }
                () = tokio::time::sleep_until(due) => {}
            }
            // Everything changed so far is in the store this sync reads.
            self.primary_changed.borrow_and_update();
            let Some(term) = self.is_leader.borrow().clone() else {
                continue;
            };
            // New credentials or spec (a kick) rebuilt the registry entry: the sync reads
            // the list of a watch of the new one, not a LIST of its own before that watch lists.
            self.watch_remote(true);
            // The term ends before another replica may lead: from then on this replica's
            // view of the primary may be stale, so the sync stops where it is and no write
            // of it starts (the future is never polled again). A request already sent is
            // left to its remote timeout. Detached, it stops the same way.
            let retry_refused = Instant::now() >= self.retry_refused_at;
            if retry_refused {
                self.refusals = Refusals::default();
            }
            let cancel = self.cancel.clone();
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = term.cancelled() => {
                    tracing::info!("leadership lost, sync abandoned");
                    continue;
                }
                outcome = self.sync_once() => outcome,
            };
            last_sync = Instant::now();
            due = if outcome == Outcome::Unbuilt {
                Instant::now() + UNBUILT_RETRY
            } else if outcome == Outcome::Failed {
                let delay = self.backoff.next_delay();
                tracing::debug!(retry_in_ms = delay.as_millis(), "sync failed, backing off");
                Instant::now() + delay
            } else {
                self.backoff.reset();
                let resync = self.shared.settings.resync_period;
                let mut next = Instant::now() + resync;
                if outcome == Outcome::Refused {
                    // Nothing else wakes this worker for a namespace the remote refused (it
                    // did not change, nor did the primary): at the resync period it would
                    // wait an hour.
                    if retry_refused {
                        let delay = self.refused.next_delay().min(resync);
                        self.retry_refused_at = Instant::now() + delay;
                    }
                    next = next.min(self.retry_refused_at);
                } else {
                    self.refused.reset();
                }
                self.renewal_due().map_or(next, |renewal| renewal.min(next))
            };
        }
    }

    /// Keeps one drift watch running on the remote's current client while leading; none
    /// otherwise. New credentials rebuild the client, and the watch with it.
    fn watch_remote(&mut self, leading: bool) {
        let remote = self
            .shared
            .state
            .remotes
            .get(&self.name)
            .filter(|remote| leading && remote.client().is_some());
        let current = self.watching.as_ref().map(|watch| &watch.remote);
        let unchanged = match (current, &remote) {
            (Some(current), Some(remote)) => Arc::ptr_eq(current, remote),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        // Dropping the old watch stops it.
        self.watching = None;
        let Some(remote) = remote else { return };
        if remote.watch_client().is_none() {
            return;
        }
        let cancel = self.cancel.child_token();
        let shared = self.shared.clone();
        // An unusable scope is reported by the sync; no write happens without one.
        let Ok(scoped) = shared.state.rule.within(remote.scope()) else {
            return;
        };
        let scoped_keys = scoped.keys_read();
        let is_drifted = move |seen: &Namespace| {
            let Some(name) = seen.metadata.name.as_deref() else {
                return false;
            };
            if !scoped.covers(seen) {
                return false;
            }
            let primary = StoreView {
                namespaces: &shared.state.primary,
                in_flight: &shared.state.in_flight,
                rule: &shared.state.rule,
            };
            let desired = shared.state.rule.desired(primary.namespace(name).as_ref());
            !shared.state.rule.diff(&desired, seen).is_empty()
        };
        let seen = SeenNamespaces::new(scoped_keys, self.shared.state.primary.interner().clone());
        tokio::spawn(
            watch_for_drift(
                remote.clone(),
                is_drifted,
                self.drift.clone(),
                seen.clone(),
                cancel.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        self.watching = Some(RemoteWatch {
            remote,
            cancel,
            seen: Some(seen),
        });
    }

    /// When the stored token is due for renewal, if it is time-bound.
    fn renewal_due(&mut self) -> Option<Instant> {
        let remote = self.shared.state.remotes.get(&self.name)?;
        let now = Timestamp::now();
        let fraction = self.shared.settings.token_renew_fraction;
        let at = renew_at(&mut self.token_seen, remote.token()?, fraction, now)?;
        let wait = at.duration_since(now);
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        Some(renewal_time(wait, self.renewal_not_before, Instant::now()))
    }

    /// One full sync, its status, Events and metrics.
    async fn sync_once(&mut self) -> Outcome {
        let shared = &self.shared;
        let cluster_name = self.name.as_str();
        let Some(cluster) = shared.clusters.get(&ObjectRef::new(cluster_name)) else {
            // Deleted; the supervisor stops this worker.
            return Outcome::Synced;
        };
        let primary = StoreView {
            namespaces: &shared.state.primary,
            in_flight: &shared.state.in_flight,
            rule: &shared.state.rule,
        };
        let remote = shared.state.remotes.get(cluster_name);
        if remote.is_none() {
            // Built for a MeshCluster that changed or is gone: the supervisor rebuilds the
            // entry and kicks this worker, or stops it.
            return Outcome::Unbuilt;
        }
        let scoped = remote
            .as_deref()
            .map(|r| shared.state.rule.within(r.scope()));
        // Nothing is written through credentials that reach another cluster.
        let unverified = match remote.as_deref() {
            Some(remote) => remote.verify().await.err(),
            None => None,
        };
        // A token is renewed only through a remote shown to be the cluster attached.
        let verified = unverified.is_none();
        let mut credentials_refused = false;
        let result = match (remote.as_deref().map(|r| r.state()), scoped) {
            _ if let Some(error) = unverified => Err(Attempt::unverified(&error)),
            (Some(RemoteState::Ready(client)), Some(Ok(scoped))) => {
                // The drift watch of these very credentials and scope, when current, has
                // what a LIST would read.
                let watched = self
                    .watching
                    .as_ref()
                    .filter(|watch| {
                        remote
                            .as_ref()
                            .is_some_and(|r| Arc::ptr_eq(&watch.remote, r))
                    })
                    .and_then(|watch| watch.seen.clone());
                if let Some(watched) = &watched {
                    watched.heard(FIRST_LIST_PATIENCE).await;
                }
                // Never closed: the semaphore lives as long as `shared`. Taken before the
                // watch's namespaces are read, so that they are not held while waiting.
                // A remote whose last sync failed retries in turns of its own
                // ([`Shared::retry_permits`]).
                let permits = if self.backoff.is_failing() {
                    &shared.retry_permits
                } else {
                    &shared.sync_permits
                };
                let _permit = permits.acquire().await;
                let seen = watched.and_then(|watched| watched.current());
                let mode = SyncMode::Reconcile;
                let synced = match seen {
                    Some(seen) => {
                        let refusals = &mut self.refusals;
                        sync_watched(&scoped, &primary, client, seen, mode, refusals).await
                    }
                    None => {
                        shared.state.metrics.remote_listed(cluster_name);
                        sync_listed(&scoped, &primary, client, mode, &mut self.refusals).await
                    }
                };
                synced.map_err(|error| {
                    credentials_refused = refused_credentials(&error);
                    Attempt::failed(error.failure(), error.to_string())
                })
            }
            // Nothing is written where the scope cannot say what may be.
            (Some(RemoteState::Ready(_)), Some(Err(error))) => Err(Attempt::Unwritable {
                reason: SCOPE_INVALID,
                message: format!(
                    "spec.scope cannot be used: {error}; {}",
                    scope_remedy(cluster_name)
                ),
            }),
            (Some(RemoteState::Unavailable { reason, message }), _) => Err(Attempt::Failed {
                reason,
                message: message.clone(),
                answered: false,
            }),
            (None, _) | (Some(RemoteState::Ready(_)), None) => Err(Attempt::Failed {
                reason: "CredentialsMissing",
                message: "no client built yet".to_owned(),
                answered: false,
            }),
        };
        let now = Timestamp::now();
        let token = remote.as_deref().and_then(Remote::token);
        let result = result.map_err(|failed| with_token_expiry(failed, token, cluster_name, now));
        let attempt = match &result {
            Ok(report) => Attempt::synced(report),
            Err(failed) => failed.clone(),
        };
        // A sync the remote stopped answering part-way failed, though it wrote some.
        let ok = matches!(attempt, Attempt::Synced(_));
        let prev = cluster.status.clone();
        // The spec this sync used is the one its remote entry was built from: the store may
        // hold a newer one already, which the supervisor has not built an entry of yet. An
        // entry of an object deleted and created again under this name used none of the new
        // object's spec: what that status observed stays.
        let generation = match remote.as_deref().map(|r| r.fingerprint()) {
            Some(built) if built.cluster_uid != cluster.metadata.uid => {
                prev.as_ref().and_then(|status| status.observed_generation)
            }
            built => built
                .and_then(|built| built.cluster_generation)
                .or(cluster.metadata.generation),
        };
        let mut next = next_status(prev.as_ref(), &attempt, generation, now);
        let outcome = outcome_of(ok, result.as_ref().ok());
        if outcome != Outcome::Failed
            && let Some(remote) = remote.as_deref()
        {
            // It answers again: pushes wait for it.
            remote.answered();
        }
        // The last credentials that worked: `kubectl mesh rotate` waits for its new ones
        // before it revokes those they replaced.
        next.observed_credentials = if ok {
            remote
                .as_deref()
                .and_then(|r| r.fingerprint().secret_version.clone())
        } else {
            prev.as_ref().and_then(|s| s.observed_credentials.clone())
        };
        shared.state.metrics.set_token_expiry(
            cluster_name,
            token
                .and_then(|t| t.expires_at)
                .map(|exp| exp.duration_since(now).as_secs()),
        );

        let reachable = attempt.reachable();
        shared.state.metrics.set_reachable(cluster_name, reachable);
        match attempt.failure_reason() {
            None => shared.state.metrics.sync_finished(cluster_name, "ok"),
            Some((reason, message)) => {
                shared.state.metrics.sync_finished(cluster_name, reason);
                tracing::warn!(%reason, error = %message, "cannot sync remote");
            }
        }
        // Also when the remote stopped answering part-way: what it wrote before is news.
        if let Ok(report) = &result {
            let corrected = report.writes;
            shared
                .state
                .metrics
                .drift_corrected(cluster_name, u64::from(corrected));
            if report.is_converged() {
                tracing::debug!(
                    in_sync = report.in_sync,
                    missing = report.missing.len(),
                    "remote in sync"
                );
            } else if !ok {
                // Stopped part-way: the warning above says what it wrote and why it stopped.
            } else if shared.events.sync_is_news(cluster_name, report) {
                tracing::info!(
                    in_sync = report.in_sync_after(),
                    corrected,
                    missing = report.missing.len(),
                    errors = report.errors.len(),
                    writes = report.writes,
                    "remote synced"
                );
            } else {
                // A label fought over by a remote controller: told once per window.
                tracing::debug!(
                    writes = report.writes,
                    "remote synced, corrections repeated"
                );
            }
            to_primary(
                "events",
                shared.events.sync_report(&cluster, &primary, report),
            )
            .await;
        }
        let reachability = shared
            .events
            .reachability(&cluster, prev.as_ref(), &next, reachable);
        to_primary("events", reachability).await;
        let unwritable = shared.events.unwritable(&cluster, prev.as_ref(), &attempt);
        to_primary("events", unwritable).await;
        let fraction = shared.settings.token_renew_fraction;
        let renewal_due = token
            .and_then(|t| renew_at(&mut self.token_seen, t, fraction, now))
            .is_some_and(|at| at <= now);
        let renewal_allowed = self
            .renewal_not_before
            .is_none_or(|not_before| not_before <= Instant::now());
        if verified
            && renewal_wanted(&attempt, credentials_refused, renewal_due, renewal_allowed)
            && let Some(remote) = remote.as_deref()
            && let Some(client) = remote.client()
            && let Some(stored) = token
        {
            let left = stored
                .expires_at
                .map(|exp| Duration::try_from(exp.duration_since(now)).unwrap_or(Duration::ZERO));
            let pacing = renewal_pacing(shared.settings.resync_period, left);
            self.renewal_not_before = Some(Instant::now() + pacing);
            // Not under `to_primary` as a whole: the remote's TokenRequest is bounded, and
            // told, as the remote's.
            let renewal = renew_token(
                &shared.primary,
                &shared.settings.mesh_namespace,
                &cluster,
                client,
                remote.fingerprint(),
                stored,
            );
            match renewal.await {
                Ok(Renewal::Renewed) => tracing::info!("stored token renewed"),
                Ok(Renewal::Stale) => tracing::warn!(
                    "stored token not renewed: its Secret changed since the client was built \
                     (the next try renews from the rebuilt one)"
                ),
                // Logged by `to_primary`; an Event would go to that same primary.
                Ok(Renewal::PrimarySilent) => {}
                Err(message) => {
                    tracing::warn!(error = %message, "cannot renew the stored token");
                    to_primary(
                        "events",
                        shared.events.token_renewal_failed(&cluster, &message),
                    )
                    .await;
                }
            }
        }
        if status_needs_write(prev.as_ref(), &next, shared.settings.status_refresh)
            && let Some(Err(error)) =
                to_primary("status", write_status(&shared.primary, &cluster, &next)).await
        {
            tracing::warn!(error = %error_chain(&error), "cannot write cluster status");
        }
        outcome
    }
}

/// Whether to try renewing the stored token after a sync that ended with `attempt`, when it
/// is `due` and the pacing `allowed`s a try: also after a failure the credentials have no part
/// in (a scope that cannot be used, a write refused, a 403: an RBAC incident on the remote,
/// which leaves the renewal's own Role be), which would otherwise let a time-bound token
/// expire unrenewed; not when the remote refused the credentials (`credentials_refused`, a
/// 401) or showed they reach another cluster, nor when it did not answer (the renewal asks the
/// same remote, and a failed try holds the next one back for a resync period).
fn renewal_wanted(
    attempt: &Attempt<'_>,
    credentials_refused: bool,
    due: bool,
    allowed: bool,
) -> bool {
    let usable = match attempt {
        _ if credentials_refused => false,
        Attempt::Synced(_) | Attempt::Unwritable { .. } => true,
        Attempt::Failed { reason, .. } => ![
            TOKEN_EXPIRED,
            remote::CLUSTER_MISMATCH,
            remote::CREDENTIALS_MISMATCH,
            remote::INVALID_CREDENTIALS,
            remote::CREDENTIALS_MISSING,
            remote::SECRET_UNREADABLE,
            Failure::Unreachable.reason(),
            Failure::TimedOut.reason(),
        ]
        .contains(reason),
    };
    usable && due && allowed
}

/// Whether the sync failed with `error` because the remote refused the credentials themselves
/// (401), not what they may do (403).
fn refused_credentials(error: &sync::Error) -> bool {
    Failure::of(&error.call) == Failure::Unauthorized
}

/// How a sync ended, from whether it ran to its end (`ok`) and its report. One in which the
/// remote answered no write (every write it was sent went unanswered while its reads answer:
/// an admission webhook that hangs) failed: pushes still do not wait for that remote (it would
/// hold every primary edit for the push deadline), and it retries with the backoff, in the
/// turns of the remotes that fail, not as one that answers.
fn outcome_of(ok: bool, report: Option<&SyncReport>) -> Outcome {
    match report {
        _ if !ok => Outcome::Failed,
        Some(report) if !report.errors.is_empty() => {
            let no_write_answered =
                report.writes == 0 && report.errors.iter().all(|error| !error.failure.answered());
            if no_write_answered {
                Outcome::Failed
            } else {
                Outcome::Refused
            }
        }
        _ => Outcome::Synced,
    }
}

/// When `token` is due for renewal ([`Claims::renew_at`]), counted from when it was first seen:
/// `seen` holds the last token seen and when, `now` if `token` is another one.
fn renew_at(
    seen: &mut Option<(Claims, Timestamp)>,
    token: Claims,
    fraction: f64,
    now: Timestamp,
) -> Option<Timestamp> {
    let first_seen = match *seen {
        Some((known, at)) if known == token => at,
        _ => {
            *seen = Some((token, now));
            now
        }
    };
    token.renew_at(fraction, first_seen)
}

/// How long a sync waits for a new drift watch's first list rather than list the remote itself:
/// at attach, and when this replica starts leading, every remote would otherwise be listed
/// twice at once (a few seconds' work each with thousands of namespaces).
const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);

/// When a sync that found no registry entry for its cluster is tried again: the supervisor
/// rebuilds one within its debounce, and its kick may have come before the sync looked.
const UNBUILT_RETRY: Duration = Duration::from_secs(1);

/// Reason of `Synced=False` when the MeshCluster's `spec.scope` cannot be used.
const SCOPE_INVALID: &str = "ScopeInvalid";

/// The least time between two tries at renewing a token: the first try comes after
/// [`DEFAULT_TOKEN_RENEW_FRACTION`] of its life, and a resync period may be longer than what
/// is left then (`--resync-period 5m` with a 10-minute token): a failed try is retried after a
/// third of the time left (at least [`RENEWAL_RETRY_FLOOR`]), so that it is retried before the
/// token expires.
///
/// [`DEFAULT_TOKEN_RENEW_FRACTION`]: super::DEFAULT_TOKEN_RENEW_FRACTION
fn renewal_pacing(resync: Duration, left: Option<Duration>) -> Duration {
    let Some(left) = left else {
        return resync;
    };
    resync.min((left / 3).max(RENEWAL_RETRY_FLOOR))
}

/// The shortest pacing of renewal tries ([`renewal_pacing`]): a remote that refuses them is
/// asked a few times a minute, not in a loop.
const RENEWAL_RETRY_FLOOR: Duration = Duration::from_secs(10);

/// When to renew a token due in `wait`: not before a second from `now` (no spinning), nor
/// before `not_before` (the last try's pacing).
fn renewal_time(wait: Duration, not_before: Option<Instant>, now: Instant) -> Instant {
    let at = now + wait.max(Duration::from_secs(1));
    not_before.map_or(at, |not_before| at.max(not_before))
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Mutex, PoisonError},
    };

    use http_body_util::BodyExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::{reflector, watcher};
    use mesh_core::{
        cluster::MeshCluster,
        fake_apiserver::{FakeApiserver, json_response, status},
        fixtures::{MetadataExt, mesh_cluster, ns, stored_credentials},
        remote::Remotes,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        backoff::BackoffSettings, events::Publisher, primary_view::watch_namespaces,
        reconcile::Settings, shared_state::SharedState,
    };

    /// A primary that keeps every request the worker sends it ("METHOD path" and body) and
    /// refuses it: what was written, not what became of it, is what these tests look at.
    #[derive(Clone, Default)]
    struct Primary(Arc<Mutex<Vec<(String, Value)>>>);

    impl Primary {
        fn client(&self) -> kube::Client {
            let this = self.clone();
            let service = tower::service_fn(move |request: hyper::Request<kube::client::Body>| {
                let this = this.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.expect("body").to_bytes();
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    this.requests()
                        .push((format!("{} {}", parts.method, parts.uri.path()), body));
                    let (code, body) = status(hyper::StatusCode::INTERNAL_SERVER_ERROR, "", "no");
                    Ok::<_, Infallible>(json_response(code, &body))
                }
            });
            kube::Client::new(service, "default")
        }

        fn requests(&self) -> std::sync::MutexGuard<'_, Vec<(String, Value)>> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// The statuses written for MeshCluster east (each a JSON Patch whose last operation
        /// puts the whole status).
        fn status_writes(&self) -> Vec<Value> {
            let requests = self.requests();
            let writes = requests
                .iter()
                .filter(|(call, _)| call.ends_with("/east/status"));
            let status = |body: &Value| body.as_array()?.last()?.get("value").cloned();
            writes.filter_map(|(_, body)| status(body)).collect()
        }
    }

    /// One worker of cluster east, leading, with its primary and registry.
    struct Running {
        shared: Arc<Shared>,
        kick: Arc<Notify>,
        primary: Primary,
        cancel: CancellationToken,
        worker: tokio::task::JoinHandle<()>,
        /// Its leadership, held from the start.
        leader: watch::Sender<Option<CancellationToken>>,
        // Dropped, it would read as the primary's watch gone, which stops the worker.
        _primary_changed: watch::Sender<u64>,
    }

    /// Starts the worker of `cluster` (as the store holds it) with the registry `remotes`, over
    /// a primary holding `namespaces`.
    async fn start(
        cluster: MeshCluster,
        remotes: Remotes,
        namespaces: Vec<Namespace>,
        settings: Settings,
    ) -> Running {
        let state = SharedState::new(Arc::default(), remotes);
        let listed = [watcher::Event::Init]
            .into_iter()
            .chain(namespaces.into_iter().map(watcher::Event::InitApply))
            .chain([watcher::Event::InitDone]);
        watch_namespaces(
            futures::stream::iter(listed.map(Ok)),
            state.primary.clone(),
            state.in_flight.clone(),
            watch::channel(0).0,
            CancellationToken::new(),
        )
        .await;
        let (clusters, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(cluster));
        let primary = Primary::default();
        let shared = Arc::new(Shared {
            primary: primary.client(),
            events: Publisher::new(
                primary.client(),
                settings.reporter.clone(),
                state.metrics.clone(),
            ),
            state,
            clusters,
            sync_permits: tokio::sync::Semaphore::new(settings.concurrent_syncs),
            retry_permits: tokio::sync::Semaphore::new(settings.concurrent_syncs),
            settings,
        });
        let (primary_changed, changes) = watch::channel(0);
        let cancel = CancellationToken::new();
        let (leader, leadership) = watch::channel(Some(CancellationToken::new()));
        let worker = Worker::new(
            "east".to_owned(),
            shared.clone(),
            changes,
            leadership,
            cancel.clone(),
        );
        Running {
            kick: worker.kick.clone(),
            worker: tokio::spawn(worker.run()),
            shared,
            primary,
            cancel,
            leader,
            _primary_changed: primary_changed,
        }
    }

    impl Running {
        fn metrics(&self) -> String {
            self.shared.state.metrics.encode().expect("metrics")
        }
    }

    /// Waits until `done`, failing the test after `within` (tokio's time: paused in these tests).
    async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Remote east served by `api`, as a test builds it (no identity to prove).
    fn served_by(api: &FakeApiserver) -> Remotes {
        let remotes = Remotes::default();
        remotes.insert(Remote::new("east", api.client()));
        remotes
    }

    fn enabled(name: &str) -> Namespace {
        ns(name).label("istio-injection", "enabled")
    }

    fn settings() -> Settings {
        let mut settings = Settings::new("mesh", "test");
        // Retries far apart, so that only a wake-up can sync soon.
        let apart = Duration::from_secs(30);
        settings.backoff = BackoffSettings {
            initial: apart,
            max: apart,
        };
        settings
    }

    /// Starts the worker of east, served by `api`, over a primary holding `namespaces`
    /// (injection enabled).
    async fn start_east(api: &FakeApiserver, namespaces: &[&str]) -> Running {
        let namespaces = namespaces.iter().map(|name| enabled(name)).collect();
        start(
            mesh_cluster("east", "uid-east"),
            served_by(api),
            namespaces,
            settings(),
        )
        .await
    }

    /// The worker of east over a remote and a primary holding web, injection enabled on both.
    async fn start_east_serving_web() -> (FakeApiserver, Running) {
        let api = FakeApiserver::default().with_namespace("web", &[("istio-injection", "enabled")]);
        let running = start_east(&api, &["web"]).await;
        (api, running)
    }

    /// Waits until `running` has written a status of east, failing the test after `within`.
    async fn wait_status_written(running: &Running, within: Duration) {
        wait_until("status written", within, || {
            !running.primary.status_writes().is_empty()
        })
        .await;
    }

    /// Waits until the first sync of `running` has written app to `api` (once) and the status.
    async fn wait_first_sync_wrote_app(api: &FakeApiserver, running: &Running) {
        let within = Duration::from_secs(10);
        wait_until("app written", within, || patches_of(api, "app") == 1).await;
        wait_status_written(running, within).await;
    }

    /// The worker of a remote whose admission policy refuses `app`'s labels, as Kyverno or
    /// Gatekeeper would (the fake apiserver refuses it on demand; a real one cannot be made
    /// to), once its first sync has tried `app` and written the status.
    async fn refusing_app() -> (FakeApiserver, Running) {
        let api = FakeApiserver::default()
            .with_namespace("app", &[])
            .with_namespace("web", &[("istio-injection", "enabled")]);
        api.state().forbidden_namespaces.insert("app".to_owned());
        let running = start_east(&api, &["app", "web"]).await;
        wait_first_sync_wrote_app(&api, &running).await;
        (api, running)
    }

    fn patches_of(api: &FakeApiserver, name: &str) -> usize {
        let path = format!("PATCH /api/v1/namespaces/{name}");
        let calls = api.state().received.clone();
        let of_name = |call: &&String| call.split('?').next() == Some(path.as_str());
        calls.iter().filter(of_name).count()
    }

    /// The remote answers but refuses one namespace: it is not failing, so a hand edit of
    /// another namespace is corrected at the drift wake-up, not at the next retry.
    #[tokio::test(start_paused = true)]
    async fn a_refused_namespace_leaves_the_wake_ups_on() {
        let (api, running) = refusing_app().await;
        api.edit("web", |ns| {
            ns["metadata"]["labels"]["istio-injection"] = json!("disabled");
        });
        let settle = running.shared.settings.drift_settle;
        wait_until("web corrected", settle + Duration::from_secs(2), || {
            api.labels("web")["istio-injection"] == "enabled"
        })
        .await;
        running.cancel.cancel();
    }

    /// The syncs other namespaces wake do not send again what the remote refused, unless
    /// the refused namespace changed since; its retries still do.
    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_not_repeated_at_other_wake_ups() {
        let (api, running) = refusing_app().await;
        let settle = running.shared.settings.drift_settle + Duration::from_secs(2);
        // Each time another value: the fake's watch may show only the last of the edit and
        // its correction, and a namespace whose labels look unchanged wakes nothing.
        let web_edited_and_corrected = async |value: &str| {
            api.edit("web", |ns| {
                ns["metadata"]["labels"]["istio-injection"] = json!(value);
            });
            wait_until("web corrected", settle, || {
                api.labels("web")["istio-injection"] == "enabled"
            })
            .await;
        };
        for value in ["disabled", "off", "no"] {
            web_edited_and_corrected(value).await;
        }
        assert_eq!(patches_of(&api, "app"), 1, "app written again unchanged");
        api.edit("app", |ns| {
            ns["metadata"]["annotations"] = json!({"edited": "yes"});
        });
        web_edited_and_corrected("disabled").await;
        assert_eq!(patches_of(&api, "app"), 2, "app changed since its refusal");
        // The retry, a refused delay (30 s) after the first sync, whatever woke it since.
        wait_until("app retried", Duration::from_secs(30), || {
            patches_of(&api, "app") == 3
        })
        .await;
        running.cancel.cancel();
    }

    /// A controller of the remote that keeps editing a namespace the remote refuses to
    /// correct (an annotation, as Rancher's do) does not make a sync of each edit: the
    /// refused namespace is written again at the retries only.
    #[tokio::test(start_paused = true)]
    async fn a_refused_namespace_edited_elsewhere_is_retried_at_its_pace() {
        let (api, running) = refusing_app().await;
        let minute = Duration::from_secs(60);
        let end = Instant::now() + minute;
        let mut edits = 0;
        while Instant::now() < end {
            edits += 1;
            api.edit("app", |ns| {
                ns["metadata"]["annotations"] = json!({"heartbeat": edits.to_string()});
            });
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // A retry every 24 to 30 s.
        let retries = patches_of(&api, "app") - 1;
        assert!(
            retries <= 3,
            "{retries} writes of app for {edits} edits of it"
        );
        running.cancel.cancel();
    }

    /// A remote whose reads answer while its writes of a namespace time out (an admission
    /// webhook of it that hangs): its syncs do not tell pushes that it answers again, so a
    /// push that ran out its deadline leaves it silent, and each primary edit does not wait
    /// the push deadline again.
    #[tokio::test(start_paused = true)]
    async fn a_remote_whose_writes_time_out_stays_silent_after_a_sync() {
        let api = FakeApiserver::default().with_namespace("app", &[]);
        api.state().timed_out_namespaces.insert("app".to_owned());
        let running = start_east(&api, &["app"]).await;
        wait_first_sync_wrote_app(&api, &running).await;
        // A push ran out its deadline.
        let remote = running.shared.state.remotes.get("east").expect("entry");
        remote.went_silent(Duration::from_secs(3600));
        // The retry (a minute at the latest) writes app again and is not answered either.
        let syncs = |running: &Running| -> f64 {
            let metrics = running.metrics();
            let lines = metrics
                .lines()
                .filter(|line| line.contains("syncs_total{") && line.contains(r#"cluster="east""#));
            let counts = lines.filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
            counts.sum()
        };
        let before = syncs(&running);
        wait_until("app written again", Duration::from_secs(60), || {
            patches_of(&api, "app") == 2 && syncs(&running) > before
        })
        .await;
        assert!(remote.is_silent(), "the sync lifted the push silence");
        running.cancel.cancel();
    }

    /// A sync that finds no registry entry for its cluster (being rebuilt) writes no status
    /// and tries again soon: the supervisor's kick may have come before it looked.
    #[tokio::test(start_paused = true)]
    async fn a_sync_without_a_registry_entry_is_tried_again_soon() {
        let api = FakeApiserver::default().with_namespace("app", &[]);
        let (cluster, namespaces) = (mesh_cluster("east", "uid-east"), vec![enabled("app")]);
        let running = start(cluster, Remotes::default(), namespaces, settings()).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(running.primary.status_writes().is_empty(), "nothing tried");
        running
            .shared
            .state
            .remotes
            .insert(Remote::new("east", api.client()));
        let soon = Duration::from_secs(5);
        wait_until("app written", soon, || patches_of(&api, "app") == 1).await;
        running.cancel.cancel();
    }

    #[test]
    fn a_sync_whose_writes_all_went_unanswered_failed() {
        let error = |failure| mesh_core::sync::NamespaceError {
            namespace: "app".to_owned(),
            diff: mesh_core::labels::LabelDiff::default(),
            failure,
            message: String::new(),
        };
        let report = |writes, errors| SyncReport {
            writes,
            errors,
            ..SyncReport::default()
        };
        let timed_out = || error(mesh_core::failure::Failure::TimedOut);
        let refused = || error(mesh_core::failure::Failure::Other);
        let cases = [
            (report(0, vec![]), Outcome::Synced),
            (report(0, vec![timed_out()]), Outcome::Failed),
            (report(0, vec![timed_out(), refused()]), Outcome::Refused),
            (report(1, vec![timed_out()]), Outcome::Refused),
            (report(0, vec![refused()]), Outcome::Refused),
        ];
        for (report, outcome) in cases {
            assert_eq!(outcome_of(true, Some(&report)), outcome, "{report:?}");
        }
        assert_eq!(outcome_of(false, Some(&report(1, vec![]))), Outcome::Failed);
        assert_eq!(outcome_of(false, None), Outcome::Failed);
    }

    /// Full LISTs of the remote's namespaces received (a watch's, a sync's), not the reads of one
    /// namespace that tell a sync from a watch's list that the remote still answers.
    fn full_lists(api: &FakeApiserver) -> usize {
        let calls = api.state().received.clone();
        let full_list = |call: &&String| {
            let (path, query) = call.split_once('?').unwrap_or((call.as_str(), ""));
            path == "GET /api/v1/namespaces"
                && !query
                    .split('&')
                    .any(|p| p == "limit=1" || p.starts_with("watch="))
        };
        calls.iter().filter(full_list).count()
    }

    /// New credentials (a registry entry built again) kick the worker: its sync reads the
    /// list of the new entry's watch, and the remote is listed once, not by the sync and then
    /// by the watch started after it.
    #[tokio::test(start_paused = true)]
    async fn a_kick_after_new_credentials_lists_the_remote_once() {
        let (api, running) = start_east_serving_web().await;
        let metrics = running.shared.state.metrics.clone();
        let synced = || {
            let metrics = metrics.encode().expect("metrics");
            let line = metrics
                .lines()
                .find(|line| line.contains("syncs_total{") && line.contains(r#"result="ok""#));
            line.and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        wait_until("first sync", Duration::from_secs(20), || synced() > 0.0).await;
        // Settled: the first watch listed, the first sync read its list.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = full_lists(&api);
        let synced_before = synced();
        // As the supervisor does with a new Secret version.
        running
            .shared
            .state
            .remotes
            .insert(Remote::new("east", api.client()));
        running.kick.notify_one();
        wait_until("synced after the kick", Duration::from_secs(20), || {
            synced() > synced_before
        })
        .await;
        // Whatever the loop does after the sync, too.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(full_lists(&api) - before, 1, "{:#?}", api.state().received);
        running.cancel.cancel();
    }

    /// The gauge of east's reachability, as `/metrics` shows it.
    const EAST_REACHABLE: &str = r#"cluster_reachable{cluster="east"}"#;

    /// [`start_east_serving_web`], once its first sync has set the gauge of east's reachability.
    async fn east_reachable() -> (FakeApiserver, Running) {
        let (api, running) = start_east_serving_web().await;
        wait_until("first sync", Duration::from_secs(10), || {
            running.metrics().contains(EAST_REACHABLE)
        })
        .await;
        (api, running)
    }

    /// A cluster detached while its sync waits for the remote: the sync stops, nothing is
    /// written to the primary after, and the cluster's gauges are gone.
    #[tokio::test(start_paused = true)]
    async fn a_detached_cluster_writes_nothing_more_and_its_gauges_go() {
        let (api, running) = east_reachable().await;

        // The next sync, woken by a hand edit, waits a minute for the remote's answer to its
        // first read.
        api.state().delay = Some(Duration::from_secs(60));
        let before = api.state().received.len();
        api.edit("web", |ns| ns["metadata"]["labels"] = json!({}));
        wait_until("the sync reads the remote", Duration::from_secs(10), || {
            let state = api.state();
            let since = &state.received[before..];
            since.iter().any(|call| call.ends_with("limit=1"))
        })
        .await;
        // As the supervisor does when the MeshCluster is gone.
        let mut running = running;
        let written = running.primary.requests().len();
        running.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), &mut running.worker)
            .await
            .expect("the worker outlived its cancel")
            .expect("the worker ends");
        assert_eq!(running.primary.requests().len(), written, "written after");
        assert!(
            !running.metrics().contains(EAST_REACHABLE),
            "{}",
            running.metrics()
        );
    }

    /// A replica that stopped leading kept exporting its last reachability and token expiry of
    /// east, which nothing updated any more: an alert on them fired, or never cleared, whatever
    /// the leader saw.
    #[tokio::test(start_paused = true)]
    async fn a_replica_that_stops_leading_forgets_what_its_syncs_observed() {
        let (_api, running) = east_reachable().await;
        // As the leader election does when the term ends.
        if let Some(term) = running.leader.send_replace(None) {
            term.cancel();
        }
        wait_until("the gauge gone", Duration::from_secs(10), || {
            !running.metrics().contains(EAST_REACHABLE)
        })
        .await;
        running.cancel.cancel();
    }

    /// A Secret of cluster east whose kubeconfig reaches nothing (port 1).
    fn unreachable_credentials() -> Secret {
        let kubeconfig = "{apiVersion: v1, kind: Config, current-context: east, \
            clusters: [{name: east, cluster: {server: 'https://127.0.0.1:1', \
            certificate-authority-data: ''}}], \
            users: [{name: east, user: {token: t}}], \
            contexts: [{name: east, context: {cluster: east, user: east}}]}";
        stored_credentials("east", kubeconfig)
    }

    /// The MeshCluster was edited (generation 2) and the registry still holds the entry built
    /// from generation 1 (the supervisor builds it after its debounce): the status says the
    /// sync used generation 1.
    #[tokio::test(start_paused = true)]
    async fn the_status_observes_the_generation_the_sync_used() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // (built from: uid, generation), (stored: uid, generation), observed.
        let cases = [
            (("uid-mc", 1), ("uid-mc", 2), Some(1)),
            // Deleted and created again: the entry of the old object used none of its spec.
            (("uid-old", 5), ("uid-new", 1), None),
        ];
        for ((built_uid, built_generation), (uid, generation), observed) in cases {
            let with = |uid: &str, generation| {
                let mut cluster = mesh_cluster("east", "uid-east");
                cluster.metadata.uid = Some(uid.to_owned());
                cluster.metadata.generation = Some(generation);
                cluster
            };
            let remotes = Remotes::default();
            let secret = unreachable_credentials();
            let built_from = with(built_uid, built_generation);
            remotes
                .refresh(&built_from, "mesh", Some(&secret))
                .await
                .expect("built");
            let stored = with(uid, generation);
            let running = start(stored, remotes, vec![enabled("web")], settings()).await;
            wait_status_written(&running, Duration::from_secs(60)).await;
            let written = running.primary.status_writes();
            assert_eq!(
                written[0]["observedGeneration"],
                json!(observed),
                "built from {built_uid}/{built_generation}, stored {uid}/{generation}"
            );
            running.cancel.cancel();
        }
    }

    #[test]
    fn a_renewal_is_tried_after_a_failure_the_credentials_have_no_part_in() {
        let failed = |reason| Attempt::Failed {
            reason,
            message: String::new(),
            answered: false,
        };
        let report = SyncReport::default();
        let scope_invalid = Attempt::Unwritable {
            reason: SCOPE_INVALID,
            message: String::new(),
        };
        for attempt in [
            Attempt::synced(&report),
            scope_invalid,
            failed("SyncFailed"),
        ] {
            assert!(renewal_wanted(&attempt, false, true, true), "{attempt:?}");
            assert!(
                !renewal_wanted(&attempt, false, false, true),
                "not due: {attempt:?}"
            );
            assert!(
                !renewal_wanted(&attempt, false, true, false),
                "paced: {attempt:?}"
            );
        }
        for reason in [
            TOKEN_EXPIRED,
            "ClusterMismatch",
            "CredentialsMismatch",
            "Unreachable",
            "TimedOut",
        ] {
            assert!(
                !renewal_wanted(&failed(reason), false, true, true),
                "{reason}"
            );
        }
    }

    /// A sync whose list of the remote's namespaces was answered `code` with `reason`, as the
    /// worker judges it: its attempt, and whether the credentials themselves were refused.
    fn list_answered(code: u16, reason: &str) -> (Attempt<'static>, bool) {
        let status = kube::core::Status::failure("no", reason).with_code(code);
        let error = sync::Error::remote(kube::Error::Api(status.boxed()));
        let credentials_refused = refused_credentials(&error);
        (
            Attempt::failed(error.failure(), error.to_string()),
            credentials_refused,
        )
    }

    /// A 403 refuses what the credentials may do (an RBAC incident on the remote), not the
    /// renewal, whose Role is another: skipped, the token would expire before the RBAC is
    /// mended. A 401 refuses the token itself, which no renewal through it can mend.
    #[test]
    fn a_renewal_is_tried_after_a_403_not_after_a_401() {
        let wanted = |(attempt, credentials_refused): (Attempt<'_>, bool)| {
            renewal_wanted(&attempt, credentials_refused, true, true)
        };
        assert!(wanted(list_answered(403, "Forbidden")), "an RBAC incident");
        assert!(
            !wanted(list_answered(401, "Unauthorized")),
            "the token refused"
        );
    }

    #[test]
    fn a_renewal_is_tried_once_per_pacing_not_every_second() {
        let now = Instant::now();
        let soon = now + Duration::from_secs(1);
        // Overdue and never tried: in a second.
        assert_eq!(renewal_time(Duration::ZERO, None, now), soon);
        // Overdue, tried (and failed) a moment ago: not before the next try is due.
        let next_try = now + Duration::from_secs(60);
        assert_eq!(renewal_time(Duration::ZERO, Some(next_try), now), next_try);
        // Due later than that: when it is due.
        let later = Duration::from_secs(3600);
        assert_eq!(renewal_time(later, Some(next_try), now), now + later);
    }

    /// `--resync-period 5m` and a 10-minute token: renewed after 6 minutes, a failed try was
    /// retried 5 minutes later, once the token had expired.
    #[test]
    fn a_failed_renewal_is_retried_before_the_token_expires() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let resync = minutes(5);
        let mut left = minutes(4);
        let mut tries = 1;
        while left > Duration::ZERO {
            let pacing = renewal_pacing(resync, Some(left));
            assert!(pacing >= RENEWAL_RETRY_FLOOR, "{pacing:?}");
            left = left.saturating_sub(pacing);
            tries += 1;
        }
        assert!(tries >= 5, "{tries} tries before it expired");
        // Far from expiring, or not time-bound: once per resync period.
        assert_eq!(renewal_pacing(resync, Some(minutes(60))), resync);
        assert_eq!(renewal_pacing(resync, None), resync);
    }

    #[test]
    fn a_token_is_counted_from_when_it_was_first_seen() {
        let at = |s| Timestamp::from_second(s).unwrap();
        let token = |iat| Claims {
            issued_at: Some(at(iat)),
            expires_at: Some(at(iat + 1_000)),
        };
        let mut seen = None;
        // Issued by a remote clock 900 s ahead, seen at 100: due 500 s later by the local one.
        assert_eq!(
            renew_at(&mut seen, token(1_000), 0.5, at(100)),
            Some(at(600))
        );
        // Seen again later: still counted from 100.
        assert_eq!(
            renew_at(&mut seen, token(1_000), 0.5, at(550)),
            Some(at(600))
        );
        // Renewed: the new token counts from when it is seen.
        assert_eq!(
            renew_at(&mut seen, token(1_700), 0.5, at(800)),
            Some(at(1_300))
        );
    }
}
