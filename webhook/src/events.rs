//! Kubernetes Events on the primary: what the reconciler corrected or could not, a cluster
//! becoming (un)reachable or unwritable, and the pushes of the admission path that failed. Best effort: an
//! Event that cannot be published is logged at debug level and never stops a sync or an answer.
//!
//! Repeats are held back ([`Throttle`]): a remote controller that fights a label, or a script
//! relabelling namespaces while clusters are dark, would otherwise write an Event per sync or
//! per review and per cluster to the primary. The first of a (cluster, namespace) is published
//! at once; the next one after the window says how many were held (an Event the primary did not
//! take among them), unless none came for ten windows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{
    Client, Resource, ResourceExt,
    core::admission::AdmissionRequest,
    runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter},
};

use mesh_core::{
    cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, MeshCluster, MeshClusterStatus},
    failure::error_chain,
    sync::{NamespaceChange, PrimaryView, SyncReport},
};

mod repeats;

use repeats::{Offer, PushFailures, Throttle, Verdict};

use crate::{
    cluster_status::{Attempt, MAX_MESSAGE},
    metrics::Metrics,
    push_outcome::{Miss, PushIntent, PushOutcome, summary},
};

/// Event reason: the reconciler rewrote a remote namespace's managed labels.
pub const REASON_CORRECTED: &str = "RemoteLabelsCorrected";
/// Event reason: a remote namespace could not be given the primary's labels.
pub const REASON_FAILED: &str = "PropagationFailed";
/// Event reasons on the `MeshCluster` when its reachability flips.
pub const REASON_UNREACHABLE: &str = "ClusterUnreachable";
pub const REASON_REACHABLE: &str = "ClusterReachable";
/// Event reason on the `MeshCluster`: its time-bound token could not be renewed.
pub const REASON_RENEWAL_FAILED: &str = "TokenRenewalFailed";

/// Past this many corrections in one sync, one summary Event replaces the per-namespace ones:
/// attaching a cluster with hundreds of drifted namespaces must not flood the primary.
const MAX_EVENTS_PER_SYNC: usize = 20;
const _: () = assert!(MAX_EVENTS_PER_SYNC <= mesh_core::sync::KEPT_CHANGES);

/// How long repeated corrections of one (cluster, namespace) make no new Event or log line: a
/// remote controller that fights a label is corrected every few seconds.
const CORRECTION_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long repeated push failures of one (cluster, namespace) make no new Event: each review
/// already warned its user, and the cluster's reachability has its own Events.
const PUSH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A namespace a remote keeps refusing makes at most one `PropagationFailed` Event per this
/// window from the reconciler: every wake-up of its worker writes the namespace again.
const SYNC_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Push failure Events waiting for the one task that publishes them; past this, a failure is
/// dropped and counted (`events_dropped_total`): the primary is slower than failures arrive.
const PUSH_FAILURE_QUEUE: usize = 256;

/// Bound of one Event's write. The primary client's read timeout is as long as its watches
/// need: an Event on a connection gone half-open would hold the one task publishing push
/// failures (and a sync's Events) that long.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a correction is: its cluster and namespace, or `None` for a sync's summary Event.
type CorrectionKey = (String, Option<String>);
/// What a push failure is: its cluster and namespace.
type PushFailureKey = (String, String);

/// How a repeated Event is recorded.
#[derive(Clone, Copy, Debug)]
enum Series {
    /// A repeat of the same note bumps the count of the first one's Event (a failure that
    /// repeats every retry); another note is an Event of its own ([`SeriesByNote`]).
    Aggregate,
    /// Every one is an Event of its own (corrections, whose notes say what changed each time).
    Distinct,
}

/// kube's [`Recorder`] folds Events with the same reason on the same objects into one series
/// and keeps the first one's note: a repeat with another note (another cause, a count held)
/// would only bump that count, and be lost. So one Recorder per note, forgotten when kube's
/// would have let its Event go.
#[derive(Clone, Default)]
struct SeriesByNote(Arc<Mutex<HashMap<String, (Recorder, Instant)>>>);

/// How long kube's [`Recorder`] keeps an Event to fold repeats into.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

impl SeriesByNote {
    /// The Recorder of `event`'s reason and note.
    fn recorder(&self, primary: &Client, reporter: &Reporter, event: &KubeEvent) -> Recorder {
        let now = now();
        let mut by_note = lock(&self.0);
        by_note.retain(|_, (_, used)| now.duration_since(*used) < SERIES_TTL);
        let note = event.note.as_deref().unwrap_or_default();
        let (recorder, used) = by_note
            .entry(format!("{}\n{note}", event.reason))
            .or_insert_with(|| (Recorder::new(primary.clone(), reporter.clone()), now));
        *used = now;
        recorder.clone()
    }
}

/// Publishes the Events of one replica on the primary. Cheap to clone; clones share what
/// they held back.
#[derive(Clone)]
pub struct Publisher {
    primary: Client,
    reporter: Reporter,
    /// The Recorders of [`Series::Aggregate`] Events, so that repeats fold into one series.
    aggregate: SeriesByNote,
    /// The corrections Events told, and apart, those the reconciler's log told (each asks
    /// once per sync, so neither may take the other's turn).
    corrections: Arc<Mutex<Throttle<CorrectionKey>>>,
    correction_logs: Arc<Mutex<Throttle<CorrectionKey>>>,
    /// The reconciler's failed writes told, by cluster and namespace.
    sync_failures: Arc<Mutex<Throttle<CorrectionKey>>>,
    push_failures: Arc<Mutex<PushFailures<PushFailureKey, PushFailureEvent>>>,
    /// Counts the push failure Events dropped.
    metrics: Arc<Metrics>,
}

/// A push failure Event waiting to be published; `held` repeats of `key` came before it.
struct PushFailureEvent {
    key: PushFailureKey,
    held: u32,
    event: KubeEvent,
    regarding: ObjectReference,
}

impl Publisher {
    pub fn new(primary: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            aggregate: SeriesByNote::default(),
            primary,
            reporter,
            corrections: Arc::new(Mutex::new(Throttle::new(CORRECTION_WINDOW))),
            correction_logs: Arc::new(Mutex::new(Throttle::new(CORRECTION_WINDOW))),
            sync_failures: Arc::new(Mutex::new(Throttle::new(SYNC_FAILURE_WINDOW))),
            push_failures: Arc::new(Mutex::new(PushFailures::new(
                PUSH_FAILURE_WINDOW,
                PUSH_FAILURE_QUEUE,
            ))),
        }
    }

    /// Whether the reconciler's line about this sync of `cluster` tells something new: an
    /// error, or a correction not logged in the last [`CORRECTION_WINDOW`]. Ask once per sync.
    pub fn sync_is_news(&self, cluster: &str, report: &SyncReport) -> bool {
        sync_is_news(&mut lock(&self.correction_logs), cluster, report, now())
    }

    /// The corrections and failures of one sync of `cluster`: on the primary namespace,
    /// related to the MeshCluster; on the MeshCluster when the namespace does not exist on
    /// the primary (its labels were removed from the remote).
    pub(crate) async fn sync_report(
        &self,
        cluster: &MeshCluster,
        primary: &impl PrimaryView,
        report: &SyncReport,
    ) {
        let cluster_name = cluster.name_any();
        let cluster_ref = cluster.object_ref(&());
        let regarding = |namespace: &str| match primary.namespace(namespace) {
            Some(ns) => (ns.object_ref(&()), Some(cluster_ref.clone())),
            None => (cluster_ref.clone(), None),
        };
        let corrections =
            throttled_corrections(&mut lock(&self.corrections), &cluster_name, report, now());
        let mut unsent = Unsent {
            throttle: &self.corrections,
            keys: corrections
                .iter()
                .map(|c| (c.key.clone(), c.held))
                .collect(),
        };
        for Correction { key, change, held } in corrections {
            let subject = format!("cluster {cluster_name}{}", held_since_last(held));
            // None: the report keeps a few of the changes written, and counts them all.
            let (note, (object, related)) = match change {
                None => (
                    format!(
                        "{subject}: corrected the managed labels of {} namespaces",
                        report.writes
                    ),
                    (cluster_ref.clone(), None),
                ),
                Some(change) => (
                    format!("{subject}: {}", change.diff.describe()),
                    regarding(&change.diff.namespace),
                ),
            };
            let event = sync_event(EventType::Normal, REASON_CORRECTED, note, related);
            if self.publish(&event, &object, Series::Distinct).await {
                unsent.sent(&key);
            }
        }
        drop(unsent);
        // The write a sync stopped at is the cluster's failure, told by its reachability Event.
        let stopped_at = report.stopped_at().map(|stop| stop.namespace.as_str());
        let errors = report
            .errors
            .iter()
            .filter(|error| Some(error.namespace.as_str()) != stopped_at);
        for error in errors.take(MAX_EVENTS_PER_SYNC) {
            let key = (cluster_name.clone(), Some(error.namespace.clone()));
            let held = match lock(&self.sync_failures).check(key.clone(), now()) {
                Verdict::Report { held } => held,
                Verdict::Hold => continue,
            };
            let note = format!(
                "cluster {cluster_name}{}: cannot apply {}: {}",
                held_since_last(held),
                error.diff.describe(),
                error.message
            );
            let (object, related) = regarding(&error.namespace);
            let event = sync_event(EventType::Warning, REASON_FAILED, note, related);
            let mut unsent = Unsent {
                throttle: &self.sync_failures,
                keys: vec![(key.clone(), held)],
            };
            if self.publish(&event, &object, Series::Aggregate).await {
                unsent.sent(&key);
            }
        }
    }

    /// An Event on the MeshCluster when its reachability changed (see [`reachability_event`]).
    pub(crate) async fn reachability(
        &self,
        cluster: &MeshCluster,
        prev: Option<&MeshClusterStatus>,
        next: &MeshClusterStatus,
        reachable: bool,
    ) {
        if let Some(event) = reachability_event(prev, next, reachable) {
            self.publish(&event, &cluster.object_ref(&()), Series::Aggregate)
                .await;
        }
    }

    /// A Warning on the MeshCluster when its sync stops for a reason of its own spec (see
    /// [`unwritable_event`]).
    pub(crate) async fn unwritable(
        &self,
        cluster: &MeshCluster,
        prev: Option<&MeshClusterStatus>,
        attempt: &Attempt<'_>,
    ) {
        if let Some(event) = unwritable_event(prev, attempt) {
            self.publish(&event, &cluster.object_ref(&()), Series::Aggregate)
                .await;
        }
    }

    /// A Warning on the MeshCluster: its token could not be renewed (retried every sync).
    pub(crate) async fn token_renewal_failed(&self, cluster: &MeshCluster, message: &str) {
        let note = format!(
            "cluster {}: cannot renew the stored token: {message}",
            cluster.name_any()
        );
        let event = sync_event(EventType::Warning, REASON_RENEWAL_FAILED, note, None);
        self.publish(&event, &cluster.object_ref(&()), Series::Aggregate)
            .await;
    }

    /// Records the failed pushes of an admission request as Events on the primary namespace,
    /// in the background: the admission answer must not wait for them. The warnings already
    /// told the user; the Event is for whoever looks later. One task at a time publishes them,
    /// from a bounded queue ([`PushFailures`]).
    pub(crate) fn spawn_push_failures(
        &self,
        request: &AdmissionRequest<Namespace>,
        intent: &PushIntent,
        outcomes: &[PushOutcome],
    ) {
        let failed = failed_pushes(outcomes);
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
            summary(&intent.labels)
        };
        let now = now();
        let (mut start, mut dropped) = (false, 0);
        {
            let mut queue = lock(&self.push_failures);
            for (cluster, miss) in failed {
                let key = (cluster.to_owned(), intent.namespace.clone());
                let offer = queue.offer(key.clone(), now, |held| PushFailureEvent {
                    key,
                    held,
                    event: KubeEvent {
                        type_: EventType::Warning,
                        reason: REASON_FAILED.to_owned(),
                        note: Some(push_failure_note(cluster, held, &change, &miss)),
                        action: "Push".to_owned(),
                        secondary: Some(ObjectReference {
                            api_version: Some(MeshCluster::api_version(&()).into_owned()),
                            kind: Some(MeshCluster::kind(&()).into_owned()),
                            name: Some(cluster.to_owned()),
                            ..ObjectReference::default()
                        }),
                    },
                    regarding: regarding.clone(),
                });
                match offer {
                    Offer::Queued { start_task } => start |= start_task,
                    Offer::Held => {}
                    Offer::Dropped => dropped += 1,
                }
            }
        }
        if dropped > 0 {
            self.metrics.events_dropped(REASON_FAILED, dropped);
            tracing::debug!(dropped, "push failure events dropped: the primary is slow");
        }
        if start {
            let publisher = self.clone();
            tokio::spawn(async move { publisher.publish_push_failures().await });
        }
    }

    /// Publishes the queued push failures until none is left (see [`PushFailures::next`]).
    async fn publish_push_failures(self) {
        loop {
            // Its own statement: the lock must not be held across the publishing.
            let next = lock(&self.push_failures).next();
            let Some(PushFailureEvent {
                key,
                held,
                event,
                regarding,
            }) = next
            else {
                return;
            };
            // Distinct: each note names another cluster and why.
            if !self.publish(&event, &regarding, Series::Distinct).await {
                lock(&self.push_failures).unpublished(key, held, now());
            }
        }
    }

    /// Publishes `event`; whether it was.
    async fn publish(
        &self,
        event: &KubeEvent,
        regarding: &ObjectReference,
        series: Series,
    ) -> bool {
        let publishing = async {
            match series {
                Series::Aggregate => {
                    let recorder = self
                        .aggregate
                        .recorder(&self.primary, &self.reporter, event);
                    recorder.publish(event, regarding).await
                }
                Series::Distinct => {
                    Recorder::new(self.primary.clone(), self.reporter.clone())
                        .publish(event, regarding)
                        .await
                }
            }
        };
        let error = match tokio::time::timeout(PUBLISH_TIMEOUT, publishing).await {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => error_chain(&error),
            Err(_) => format!("no answer within {PUBLISH_TIMEOUT:?}"),
        };
        tracing::debug!(
            error = %error,
            reason = %event.reason,
            regarding = regarding.name.as_deref().unwrap_or_default(),
            "cannot publish event"
        );
        false
    }
}

/// Now, by the runtime's clock: tests that pause it cross the throttles' windows at once.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // What is held back is counts; a panic mid-update leaves nothing worth refusing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One correction Event to publish: of one namespace, or `None` for the summary of a sync with
/// more than [`MAX_EVENTS_PER_SYNC`]; `held` repeats of it were not published.
#[derive(Debug)]
struct Correction<'r> {
    key: CorrectionKey,
    change: Option<&'r NamespaceChange>,
    held: u32,
}

/// The throttle's keys of Events let through and not published: refused by the primary, or
/// never sent when the sync's bound on its Events ran out mid-batch (the future dropped). Each
/// is counted as held when this goes, so that the next Event says so.
struct Unsent<'t> {
    throttle: &'t Mutex<Throttle<CorrectionKey>>,
    /// Keys and the repeats held before them, in the order they are published.
    keys: Vec<(CorrectionKey, u32)>,
}

impl Unsent<'_> {
    fn sent(&mut self, key: &CorrectionKey) {
        self.keys.retain(|(unsent, _)| unsent != key);
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        let mut throttle = lock(self.throttle);
        for (key, held) in self.keys.drain(..) {
            throttle.unpublished(key, held, now());
        }
    }
}

/// The corrections of `report` that `throttle` lets through now.
fn throttled_corrections<'r>(
    throttle: &mut Throttle<CorrectionKey>,
    cluster: &str,
    report: &'r SyncReport,
    now: Instant,
) -> Vec<Correction<'r>> {
    let candidates: Vec<Option<&NamespaceChange>> = if report.writes as usize > MAX_EVENTS_PER_SYNC
    {
        vec![None]
    } else {
        report.applied().map(Some).collect()
    };
    candidates
        .into_iter()
        .filter_map(|change| {
            let key = (cluster.to_owned(), change.map(|c| c.diff.namespace.clone()));
            match throttle.check(key.clone(), now) {
                Verdict::Report { held } => Some(Correction { key, change, held }),
                Verdict::Hold => None,
            }
        })
        .collect()
}

/// See [`Publisher::sync_is_news`].
fn sync_is_news(
    throttle: &mut Throttle<CorrectionKey>,
    cluster: &str,
    report: &SyncReport,
    now: Instant,
) -> bool {
    // First, so that the corrections are counted whatever else the sync holds.
    let corrections = throttled_corrections(throttle, cluster, report, now);
    !corrections.is_empty() || !report.errors.is_empty()
}

/// The clusters a push did not reach, with how it missed.
fn failed_pushes(outcomes: &[PushOutcome]) -> Vec<(&str, Miss<'_>)> {
    outcomes
        .iter()
        .filter_map(|outcome| Some((outcome.cluster.as_str(), outcome.result.miss()?)))
        .collect()
}

/// The Event when a cluster's reachability flips from `prev` to `next`, or when it is
/// unreachable from its first sync on (a first success says nothing new).
fn reachability_event(
    prev: Option<&MeshClusterStatus>,
    next: &MeshClusterStatus,
    reachable: bool,
) -> Option<KubeEvent> {
    let was_reachable = prev
        .and_then(|s| s.condition(CONDITION_REACHABLE))
        .map(|c| c.status == "True");
    if was_reachable == Some(reachable) || (was_reachable.is_none() && reachable) {
        return None;
    }
    let (type_, reason) = if reachable {
        (EventType::Normal, REASON_REACHABLE)
    } else {
        (EventType::Warning, REASON_UNREACHABLE)
    };
    let note = next
        .condition(CONDITION_REACHABLE)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    Some(sync_event(type_, reason, note, None))
}

/// The Event when a cluster's sync stops for a reason of its own MeshCluster (a scope that
/// cannot be used), as the condition's reason: the remote answers, so no reachability Event
/// tells it. Said when it starts, not at every sync.
fn unwritable_event(prev: Option<&MeshClusterStatus>, attempt: &Attempt<'_>) -> Option<KubeEvent> {
    let Attempt::Unwritable { reason, message } = attempt else {
        return None;
    };
    let already = prev
        .and_then(|s| s.condition(CONDITION_SYNCED))
        .is_some_and(|c| c.reason == *reason);
    (!already).then(|| sync_event(EventType::Warning, reason, message.clone(), None))
}

/// The note of a push that missed `cluster`, after `held` misses of it without an Event. What
/// the remote said is cut first, so that what to do survives; the whole to [`MAX_MESSAGE`]
/// (the apiserver refuses an Event whose note runs past 1 KiB), for a long change.
fn push_failure_note(cluster: &str, held: u32, change: &str, miss: &Miss<'_>) -> String {
    let held = held_since_last(held);
    let line = miss.line(cluster, MAX_PUSH_DETAIL);
    mesh_core::printable::cut(format!("{change} not applied{held}: {line}"), MAX_MESSAGE)
}

/// Bytes of what the remote said that a push failure's Event quotes: room for the rest.
const MAX_PUSH_DETAIL: usize = 512;

/// How an Event's note tells the repeats held before it, early: the rest may be cut.
fn held_since_last(held: u32) -> String {
    match held {
        0 => String::new(),
        held => format!(" ({held} more since the last Event)"),
    }
}

/// An Event of the reconciler, its note cut to [`MAX_MESSAGE`].
fn sync_event(
    type_: EventType,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) -> KubeEvent {
    KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(mesh_core::printable::cut(note, MAX_MESSAGE)),
        action: "Sync".to_owned(),
        secondary: related,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::{
        cluster_status::{Attempt, next_status},
        http::parse_review,
        push_outcome::PushResult,
    };
    use http_body_util::BodyExt;
    use hyper::StatusCode;
    use k8s_openapi::jiff::Timestamp;
    use mesh_core::{
        failure::Failure,
        fake_apiserver::{json_response, status},
        fixtures::{by_name, labels, mesh_cluster, ns},
        labels::LabelDiff,
        sync::{ChangeStatus, NamespaceChange, NamespaceError},
    };

    const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");

    fn status_after(prev: Option<&MeshClusterStatus>, attempt: &Attempt<'_>) -> MeshClusterStatus {
        next_status(prev, attempt, None, Timestamp::UNIX_EPOCH)
    }

    fn reason(event: Option<KubeEvent>) -> Option<String> {
        event.map(|e| e.reason)
    }

    /// A primary that counts the Event writes it receives and keeps their notes: it answers
    /// each with a failure at once, or with `hang` never (a primary too slow to answer while
    /// the test looks).
    #[derive(Clone, Default)]
    struct RecordingPrimary {
        writes: Arc<AtomicUsize>,
        notes: Arc<Mutex<Vec<String>>>,
        hang: bool,
        metrics: Arc<Metrics>,
    }

    impl RecordingPrimary {
        /// A primary that never answers an Event write.
        fn hanging() -> Self {
            Self {
                hang: true,
                ..Self::default()
            }
        }

        fn publisher(&self) -> Publisher {
            let this = self.clone();
            let service = tower::service_fn(move |request: hyper::Request<kube::client::Body>| {
                let this = this.clone();
                async move {
                    this.writes.fetch_add(1, Ordering::SeqCst);
                    let body = request.into_body().collect().await.expect("body");
                    let event: serde_json::Value =
                        serde_json::from_slice(&body.to_bytes()).expect("an Event");
                    let note = event["note"].as_str().unwrap_or_default().to_owned();
                    lock(&this.notes).push(note);
                    if this.hang {
                        std::future::pending::<()>().await;
                    }
                    let (code, body) = status(StatusCode::INTERNAL_SERVER_ERROR, "", "refused");
                    Ok::<_, Infallible>(json_response(code, &body))
                }
            });
            let reporter = Reporter {
                controller: "test".to_owned(),
                instance: None,
            };
            Publisher::new(
                Client::new(service, "default"),
                reporter,
                self.metrics.clone(),
            )
        }

        fn writes(&self) -> usize {
            self.writes.load(Ordering::SeqCst)
        }

        fn last_note(&self) -> String {
            lock(&self.notes).last().cloned().unwrap_or_default()
        }
    }

    /// kube's Recorder folded every `TokenRenewalFailed` of a cluster into the first one's
    /// Event, whose note then told a cause long gone: a repeat of the same note bumps that
    /// Event's count, another note is an Event of its own. A stand-in apiserver: a real
    /// renewal failing for one cause then another is not at hand on demand.
    #[tokio::test]
    async fn a_repeat_with_another_note_is_an_event_of_its_own() {
        let stored = serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "east", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
        });
        let (primary, requests) =
            mesh_core::fake_apiserver::answering(move |_, _| (StatusCode::OK, stored.clone()));
        let reporter = Reporter {
            controller: "test".to_owned(),
            instance: None,
        };
        let publisher = Publisher::new(primary, reporter, Arc::default());
        let east = mesh_cluster("east", "uid-of-east");
        for cause in ["401 Unauthorized", "401 Unauthorized", "403 Forbidden"] {
            publisher.token_renewal_failed(&east, cause).await;
        }
        let methods: Vec<String> = (requests.all().iter())
            .filter(|r| r.contains("/apis/events.k8s.io/v1/namespaces/default/events"))
            .map(|r| r.split(' ').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(methods, ["POST", "PATCH", "POST"]);
    }

    /// Runs every other task of the (paused, single-threaded) test runtime until all wait:
    /// its clock moves on only then.
    async fn until_idle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    fn timed_out(clusters: usize) -> Vec<PushOutcome> {
        (0..clusters)
            .map(|i| PushOutcome {
                cluster: format!("dark-{i}"),
                result: PushResult::TimedOut,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_primary_gets_one_push_failure_event_at_a_time() {
        let primary = RecordingPrimary::hanging();
        let events = primary.publisher();
        let request = parse_review(UPDATE.as_bytes()).expect("fixture");
        let (reviews, dark) = (20, timed_out(30));
        for review in 0..reviews {
            let intent = PushIntent {
                namespace: format!("ns-{review}"),
                labels: labels(&[("istio-injection", "enabled")]),
            };
            events.spawn_push_failures(&request, &intent, &dark);
        }
        until_idle().await;
        assert_eq!(primary.writes(), 1);
        // Every failure is news (its own namespace): what the queue cannot hold is counted.
        let dropped = reviews * dark.len() - PUSH_FAILURE_QUEUE;
        let metrics = primary.metrics.encode().expect("encode");
        let line = format!("events_dropped_total{{reason=\"PropagationFailed\"}} {dropped}");
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }

    /// Publishes the reports of syncs of east over a primary holding `namespaces` (which refuses
    /// every Event), `report` giving a sync's report of one namespace: shop's three times,
    /// cart's once, then shop's again after `window`. Checks that one Event is written for
    /// shop's three syncs, one for cart's at once (another namespace is news), and one for shop
    /// after the window, whose note says `3 more since the last Event` and goes on with `then`.
    async fn one_event_per_window(
        window: Duration,
        namespaces: &[&str],
        report: impl Fn(&str) -> SyncReport,
        then: &str,
    ) {
        let primary = RecordingPrimary::default();
        let events = primary.publisher();
        let cluster = mesh_cluster("east", "uid-east");
        let namespaces = by_name(namespaces.iter().map(|name| ns(name)));
        let mut writes = [0; 3];
        for _ in 0..3 {
            events
                .sync_report(&cluster, &namespaces, &report("shop"))
                .await;
        }
        writes[0] = primary.writes();
        events
            .sync_report(&cluster, &namespaces, &report("cart"))
            .await;
        writes[1] = primary.writes();
        tokio::time::advance(window).await;
        events
            .sync_report(&cluster, &namespaces, &report("shop"))
            .await;
        writes[2] = primary.writes();
        assert_eq!(writes, [1, 2, 3], "Event writes after each step");
        let note = primary.last_note();
        let counted = format!("cluster east (3 more since the last Event): {then}");
        assert!(note.starts_with(&counted), "{note}");
    }

    /// Refused Events too, as a primary whose Event quota or RBAC says no: the next Event
    /// after the window counts what they would have said.
    #[tokio::test(start_paused = true)]
    async fn a_contested_namespace_makes_one_correction_event_per_window() {
        let fought = |namespace: &str| corrected(&[namespace]);
        one_event_per_window(CORRECTION_WINDOW, &["shop"], fought, "").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_failure_event_not_published_is_counted_in_the_next() {
        let primary = RecordingPrimary::default();
        let events = primary.publisher();
        let request = parse_review(UPDATE.as_bytes()).expect("fixture");
        let intent = PushIntent {
            namespace: "shop".to_owned(),
            labels: labels(&[("istio-injection", "enabled")]),
        };
        for _ in 0..2 {
            events.spawn_push_failures(&request, &intent, &timed_out(1));
            until_idle().await;
        }
        tokio::time::advance(PUSH_FAILURE_WINDOW).await;
        events.spawn_push_failures(&request, &intent, &timed_out(1));
        until_idle().await;
        assert_eq!(primary.writes(), 2);
        let note = primary.last_note();
        assert!(
            note.starts_with(
                "istio-injection=enabled not applied (2 more since the last Event): dark-0 "
            ),
            "{note}"
        );
    }

    /// A namespace the remote refuses is written again at each wake-up of its worker: one
    /// Event a window, the next counting the syncs held.
    #[tokio::test(start_paused = true)]
    async fn a_refused_namespace_makes_one_failure_event_per_window() {
        let refused = |namespace: &str| SyncReport {
            errors: vec![NamespaceError {
                namespace: namespace.to_owned(),
                diff: LabelDiff::default(),
                failure: Failure::Forbidden,
                message: "denied by policy".to_owned(),
            }],
            ..SyncReport::default()
        };
        // The recording primary refuses every Event: the first one's count carries on too.
        one_event_per_window(
            SYNC_FAILURE_WINDOW,
            &["shop", "cart"],
            refused,
            "cannot apply",
        )
        .await;
    }

    /// A sync's Events cut short by its bound (a primary too slow to take them) were counted
    /// as published: their repeats were held a window, and the next Event did not count them.
    #[tokio::test(start_paused = true)]
    async fn events_cut_short_count_as_held() {
        let primary = RecordingPrimary::hanging();
        let events = primary.publisher();
        let cluster = mesh_cluster("east", "uid-east");
        let report = corrected(&["cart", "shop"]);
        let namespaces = by_name([ns("cart"), ns("shop")]);
        let publishing = events.sync_report(&cluster, &namespaces, &report);
        let cut = tokio::time::timeout(Duration::from_secs(1), publishing).await;
        assert!(cut.is_err(), "the primary took the Events");
        assert_eq!(primary.writes(), 1, "the second was never sent");
        let later = now() + CORRECTION_WINDOW;
        let next: Vec<u32> =
            throttled_corrections(&mut lock(&events.corrections), "east", &report, later)
                .iter()
                .map(|c| c.held)
                .collect();
        assert_eq!(next, [1, 1], "each next Event says one was held");
    }

    #[tokio::test]
    async fn the_write_a_sync_stopped_at_is_no_namespace_event() {
        let primary = RecordingPrimary::default();
        let events = primary.publisher();
        let cluster = mesh_cluster("east", "uid-east");
        let mut stopped = SyncReport::default();
        for (namespace, failure) in [("cart", Failure::Forbidden), ("shop", Failure::Unreachable)] {
            stopped.errors.push(NamespaceError {
                namespace: namespace.to_owned(),
                diff: LabelDiff::default(),
                failure,
                message: "no".to_owned(),
            });
        }
        stopped.stopped_in = Some("shop".to_owned());
        let namespaces = by_name([ns("cart"), ns("shop")]);
        events.sync_report(&cluster, &namespaces, &stopped).await;
        // The refusal of cart is its own; the remote going dark is the cluster's Event.
        assert_eq!(primary.writes(), 1);
    }

    #[test]
    fn a_contested_namespace_is_reported_and_logged_once_per_window() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let (mut events, mut logs) = (
            Throttle::new(CORRECTION_WINDOW),
            Throttle::new(CORRECTION_WINDOW),
        );
        // What one sync reports as Events, by namespace ("*": the summary) and repeats held,
        // and whether it is logged.
        let mut cycle = |report: &SyncReport, now| {
            let reported: Vec<(String, u32)> =
                throttled_corrections(&mut events, "east", report, now)
                    .into_iter()
                    .map(|c| {
                        (
                            c.change.map_or("*".into(), |c| c.diff.namespace.clone()),
                            c.held,
                        )
                    })
                    .collect();
            (reported, sync_is_news(&mut logs, "east", report, now))
        };
        let fought = corrected(&["shop"]);
        assert_eq!(cycle(&fought, at(0)), (vec![("shop".to_owned(), 0)], true));
        assert_eq!(cycle(&fought, at(3)), (vec![], false));
        // Another namespace in the same sync is news at once; the fought one is not.
        let both = corrected(&["cart", "shop"]);
        assert_eq!(cycle(&both, at(6)), (vec![("cart".to_owned(), 0)], true));
        assert_eq!(
            cycle(&fought, at(300)),
            (vec![("shop".to_owned(), 2)], true)
        );
        // A sync with too many to name has one summary, held the same way.
        let many: Vec<String> = (0..=MAX_EVENTS_PER_SYNC)
            .map(|i| format!("ns-{i}"))
            .collect();
        let many = corrected(&many.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(cycle(&many, at(301)), (vec![("*".to_owned(), 0)], true));
        assert_eq!(cycle(&many, at(304)), (vec![], false));
        // A failure is always news.
        let mut failing = corrected(&["shop"]);
        failing.errors.push(NamespaceError {
            namespace: "cart".to_owned(),
            diff: LabelDiff::default(),
            failure: Failure::Forbidden,
            message: "forbidden".to_owned(),
        });
        assert!(cycle(&failing, at(305)).1);
    }

    /// A sync that corrected `namespaces`.
    fn corrected(namespaces: &[&str]) -> SyncReport {
        SyncReport {
            changes: namespaces
                .iter()
                .map(|namespace| NamespaceChange {
                    diff: LabelDiff {
                        namespace: (*namespace).to_owned(),
                        set: labels(&[("istio-injection", "enabled")]),
                        ..LabelDiff::default()
                    },
                    status: ChangeStatus::Applied,
                })
                .collect(),
            writes: u32::try_from(namespaces.len()).expect("few"),
            ..SyncReport::default()
        }
    }

    #[test]
    fn a_push_failure_note_says_what_brings_the_change() {
        let note = |result: PushResult| {
            let miss = result.miss().expect("a miss");
            push_failure_note("east", 0, "istio-injection=enabled", &miss)
        };
        assert_eq!(
            note(PushResult::Unreachable("connection refused".to_owned())),
            "istio-injection=enabled not applied: east unreachable (connection refused); the \
             reconciler will retry"
        );
        // No retry mends refused credentials: the note says what does.
        assert_eq!(
            note(PushResult::CredentialsRefused {
                message: "401 Unauthorized".to_owned(),
                expired_at: None,
            }),
            "istio-injection=enabled not applied: east not pushed: it refuses the stored \
             credentials (401 Unauthorized); `kubectl mesh check` says how to repair them"
        );
    }

    #[test]
    fn a_push_failure_note_fits_an_event_and_keeps_what_to_do() {
        let miss = PushResult::ScopeUnusable("x".repeat(4000));
        let miss = miss.miss().expect("a miss");
        let note = push_failure_note("east", 3, "istio-injection=enabled", &miss);
        assert!(note.len() <= MAX_MESSAGE, "{note}");
        assert!(
            note.starts_with("istio-injection=enabled not applied (3 more since the last Event)"),
            "{note}"
        );
        assert!(note.ends_with("--clear`"), "{note}");
    }

    #[test]
    fn reachability_events_only_when_it_flips() {
        let down = Attempt::failed(Failure::Unreachable, "connection refused".to_owned());
        let unreachable = status_after(None, &down);
        let report = SyncReport::default();
        let reachable = status_after(Some(&unreachable), &Attempt::Synced(&report));

        // A first sync that works says nothing; one that fails does.
        assert_eq!(reason(reachability_event(None, &reachable, true)), None);
        let first_failure = reachability_event(None, &unreachable, false).expect("event");
        assert_eq!(first_failure.reason, REASON_UNREACHABLE);
        assert_eq!(first_failure.note.as_deref(), Some("connection refused"));
        assert_eq!(
            reason(reachability_event(Some(&unreachable), &reachable, true)),
            Some(REASON_REACHABLE.to_owned())
        );
        assert_eq!(
            reason(reachability_event(Some(&unreachable), &unreachable, false)),
            None
        );
        assert_eq!(
            reason(reachability_event(Some(&reachable), &reachable, true)),
            None
        );
    }

    /// A scope that cannot be used stopped every sync of its cluster with no Event: the
    /// remote answers, so no reachability Event said so either.
    #[test]
    fn an_unwritable_cluster_is_told_once_when_it_starts() {
        let unwritable = Attempt::Unwritable {
            reason: "ScopeInvalid",
            message: "spec.scope cannot be used: ...".to_owned(),
        };
        let event = unwritable_event(None, &unwritable).expect("event");
        assert_eq!(event.reason, "ScopeInvalid");
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(
            event.note.as_deref(),
            Some("spec.scope cannot be used: ...")
        );
        let report = SyncReport::default();
        let synced = status_after(None, &Attempt::Synced(&report));
        assert!(unwritable_event(Some(&synced), &unwritable).is_some());
        let stopped = status_after(Some(&synced), &unwritable);
        assert_eq!(reason(unwritable_event(Some(&stopped), &unwritable)), None);
        assert_eq!(
            reason(unwritable_event(Some(&stopped), &Attempt::Synced(&report))),
            None
        );
    }

    #[test]
    fn only_pushes_that_did_not_land_are_failures() {
        let outcome = |cluster: &str, result| PushOutcome {
            cluster: cluster.to_owned(),
            result,
        };
        let outcomes = [
            outcome("applied", PushResult::Applied),
            outcome("in-sync", PushResult::AlreadyInSync),
            outcome("missing", PushResult::NamespaceMissing),
            outcome("down", PushResult::Unreachable("refused".to_owned())),
            outcome("denied", PushResult::Forbidden("rbac".to_owned())),
            outcome("broken", PushResult::Failed("500".to_owned())),
            outcome("slow", PushResult::TimedOut),
            outcome("queued", PushResult::Queued),
        ];
        let failed: Vec<&str> = failed_pushes(&outcomes)
            .iter()
            .map(|(cluster, _)| *cluster)
            .collect();
        assert_eq!(failed, ["down", "denied", "broken", "slow", "queued"]);
    }
}
