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
use crate::{
    backoff::Backoff,
    cluster_status::{Attempt, next_status, status_needs_write, with_token_expiry, write_status},
    leader::Leadership,
    primary_view::StoreView,
    remote_watch::{SeenNamespaces, watch_for_drift},
    renewal::renew_token,
};

use mesh_core::{
    failure::error_chain,
    remote::{Remote, RemoteState},
    sync::{PrimaryView, SyncMode, sync_remote, sync_watched},
};

pub(super) struct Worker {
    pub(super) name: String,
    pub(super) shared: Arc<Shared>,
    pub(super) primary_changed: watch::Receiver<u64>,
    pub(super) is_leader: Leadership,
    pub(super) kick: Arc<Notify>,
    pub(super) cancel: CancellationToken,
    pub(super) backoff: Backoff,
    /// Woken by the watch of the remote's namespaces when they drift from the primary.
    pub(super) drift: Arc<Notify>,
    pub(super) watching: Option<RemoteWatch>,
    /// No token renewal is tried before this: one try per resync period, whatever wakes the
    /// worker. A failing renewal is not retried every second, and a successful one is not
    /// repeated before the registry holds the new token.
    pub(super) renewal_not_before: Option<Instant>,
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

impl Worker {
    pub(super) async fn run(mut self) {
        let mut term: Option<CancellationToken> = None;
        let mut due = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let now = self.is_leader.borrow_and_update().clone();
            // A term seen cancelled and a new one since: leadership was lost and won back.
            if now.is_some() && term.as_ref().is_none_or(CancellationToken::is_cancelled) {
                // Whoever led before may have died mid-sync: start with a full one.
                due = Instant::now();
            }
            term = now;
            let leading = term.is_some();
            self.watch_remote(leading);
            if !leading {
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
                    // New credentials or spec: worth trying now even while backing off.
                    self.backoff.reset();
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
            // The term ends before another replica may lead: from then on this replica's
            // view of the primary may be stale, so the sync stops where it is and no write
            // of it starts (the future is never polled again). A request already sent is
            // left to its remote timeout.
            let ok = tokio::select! {
                biased;
                () = term.cancelled() => {
                    tracing::info!("leadership lost, sync abandoned");
                    continue;
                }
                ok = self.sync_once() => ok,
            };
            last_sync = Instant::now();
            due = if ok {
                self.backoff.reset();
                let next = Instant::now() + self.shared.settings.resync_period;
                self.renewal_due().map_or(next, |renewal| renewal.min(next))
            } else {
                let delay = self.backoff.next_delay();
                tracing::debug!(retry_in_ms = delay.as_millis(), "sync failed, backing off");
                Instant::now() + delay
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
    fn renewal_due(&self) -> Option<Instant> {
        let remote = self.shared.state.remotes.get(&self.name)?;
        let at = remote
            .token()?
            .renew_at(self.shared.settings.token_renew_fraction)?;
        let wait = at.duration_since(Timestamp::now());
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        Some(renewal_time(wait, self.renewal_not_before, Instant::now()))
    }

    /// One full sync, its status, Events and metrics. `false` when the remote failed, or a
    /// write to one of its namespaces did: then it is retried with the backoff.
    async fn sync_once(&mut self) -> bool {
        let shared = &self.shared;
        let cluster_name = self.name.as_str();
        let Some(cluster) = shared.clusters.get(&ObjectRef::new(cluster_name)) else {
            // Deleted; the supervisor stops this worker.
            return true;
        };
        let primary = StoreView {
            namespaces: &shared.state.primary,
            in_flight: &shared.state.in_flight,
            rule: &shared.state.rule,
        };
        let remote = shared.state.remotes.get(cluster_name);
        let scoped = remote
            .as_deref()
            .map(|r| shared.state.rule.within(r.scope()));
        // Nothing is written through credentials that reach another cluster.
        let unverified = match remote.as_deref() {
            Some(remote) => remote.verify().await.err(),
            None => None,
        };
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
                let synced = match seen {
                    Some(seen) => {
                        sync_watched(&scoped, &primary, client, seen, SyncMode::Reconcile).await
                    }
                    None => {
                        shared.state.metrics.remote_listed(cluster_name);
                        sync_remote(&scoped, &primary, client, SyncMode::Reconcile).await
                    }
                };
                synced.map_err(|error| Attempt::failed(error.failure(), error.to_string()))
            }
            // Nothing is written where the scope cannot say what may be.
            (Some(RemoteState::Ready(_)), Some(Err(error))) => Err(Attempt::Failed {
                reason: "ScopeInvalid",
                message: format!(
                    "spec.scope cannot be used: {error}; correct it with kubectl mesh scope {cluster_name}"
                ),
                answered: false,
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
        let mut next = next_status(prev.as_ref(), &attempt, cluster.metadata.generation, now);
        if ok && let Some(remote) = remote.as_deref() {
            // It answers again: pushes wait for it.
            remote.answered();
        }
        if ok {
            // These credentials work: `kubectl mesh rotate` waits for this before it revokes
            // the ones they replaced.
            next.observed_credentials = remote
                .as_deref()
                .and_then(|r| r.fingerprint().secret_version.clone());
        }
        shared.state.metrics.set_token_expiry(
            cluster_name,
            token
                .and_then(|t| t.expires_at)
                .map(|exp| exp.duration_since(now).as_secs()),
        );

        let reachable = attempt.reachable();
        shared.state.metrics.set_reachable(cluster_name, reachable);
        match &attempt {
            Attempt::Synced(_) => shared.state.metrics.sync_finished(cluster_name, "ok"),
            Attempt::Failed {
                reason, message, ..
            } => {
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
        let renewal_due = token
            .and_then(|t| t.renew_at(shared.settings.token_renew_fraction))
            .is_some_and(|at| at <= now);
        let renewal_allowed = self
            .renewal_not_before
            .is_none_or(|not_before| not_before <= Instant::now());
        if ok
            && renewal_due
            && renewal_allowed
            && let Some(client) = remote.as_deref().and_then(Remote::client)
        {
            self.renewal_not_before = Some(Instant::now() + shared.settings.resync_period);
            match to_primary(
                "token",
                renew_token(
                    &shared.primary,
                    &shared.settings.mesh_namespace,
                    &cluster,
                    client,
                ),
            )
            .await
            {
                Some(Ok(())) => tracing::info!("stored token renewed"),
                Some(Err(message)) => {
                    tracing::warn!(error = %message, "cannot renew the stored token");
                    to_primary(
                        "events",
                        shared.events.token_renewal_failed(&cluster, &message),
                    )
                    .await;
                }
                None => {}
            }
        }
        if status_needs_write(prev.as_ref(), &next, shared.settings.status_refresh)
            && let Some(Err(error)) =
                to_primary("status", write_status(&shared.primary, cluster_name, &next)).await
        {
            tracing::warn!(error = %error_chain(&error), "cannot write cluster status");
        }
        // Nothing else wakes this worker for a namespace whose write failed (the remote did
        // not change, nor did the primary): at the resync period it would wait an hour.
        ok && result.is_ok_and(|report| report.errors.is_empty())
    }
}

/// How long a sync waits for a new drift watch's first list rather than list the remote itself:
/// at attach, and when this replica starts leading, every remote would otherwise be listed
/// twice at once (a few seconds' work each with thousands of namespaces).
const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);

/// Bound of one write to the primary after a sync (status, Events). The primary client's read
/// timeout is long enough for its watches (`WATCH_READ_TIMEOUT`): a write on a connection gone
/// half-open would hold the worker that long.
const PRIMARY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn to_primary<T>(
    what: &'static str,
    write: impl std::future::Future<Output = T>,
) -> Option<T> {
    let done = tokio::time::timeout(PRIMARY_WRITE_TIMEOUT, write)
        .await
        .ok();
    if done.is_none() {
        tracing::warn!(write = what, "no answer from the primary in time, given up");
    }
    done
}
/// When to renew a token due in `wait`: not before a second from `now` (no spinning), nor
/// before `not_before` (the last try's pacing).
fn renewal_time(wait: Duration, not_before: Option<Instant>, now: Instant) -> Instant {
    let at = now + wait.max(Duration::from_secs(1));
    not_before.map_or(at, |not_before| at.max(not_before))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
