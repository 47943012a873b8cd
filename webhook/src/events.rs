//! Kubernetes Events on the primary: what the reconciler corrected or could not, a cluster
//! becoming (un)reachable, and the pushes of the admission path that failed. Best effort: an
//! Event that cannot be published is logged at debug level and never stops a sync or an answer.

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{
    Client, Resource, ResourceExt,
    core::admission::AdmissionRequest,
    runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter},
};

use mesh_core::{
    cluster::{CONDITION_REACHABLE, MeshCluster, MeshClusterStatus},
    failure::error_chain,
    sync::{PrimaryView, SyncReport},
};

use crate::{
    cluster_status::MAX_MESSAGE,
    propagate::{PushIntent, PushOutcome, PushResult},
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

/// How a repeated Event is recorded. kube's [`Recorder`] folds events with the same reason
/// on the same object into one series and keeps the first note: right for a failure that
/// repeats every retry, wrong for corrections whose notes say what changed each time.
#[derive(Clone, Copy, Debug)]
enum Series {
    Aggregate,
    Distinct,
}

/// Publishes the Events of one replica on the primary. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    primary: Client,
    reporter: Reporter,
    /// Shared by every [`Series::Aggregate`] Event, so that repeats fold into one series.
    aggregate: Recorder,
}

impl Publisher {
    pub fn new(primary: Client, reporter: Reporter) -> Self {
        Self {
            aggregate: Recorder::new(primary.clone(), reporter.clone()),
            primary,
            reporter,
        }
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
        // The report keeps a few of the changes written, and counts them all.
        if report.writes as usize > MAX_EVENTS_PER_SYNC {
            let note = format!(
                "cluster {cluster_name}: corrected the managed labels of {} namespaces",
                report.writes
            );
            let event = sync_event(EventType::Normal, REASON_CORRECTED, note, None);
            self.publish(&event, &cluster_ref, Series::Distinct).await;
        } else {
            for change in report.applied() {
                let note = format!("cluster {cluster_name}: {}", change.diff.describe());
                let (object, related) = regarding(&change.diff.namespace);
                let event = sync_event(EventType::Normal, REASON_CORRECTED, note, related);
                self.publish(&event, &object, Series::Distinct).await;
            }
        }
        for error in report.errors.iter().take(MAX_EVENTS_PER_SYNC) {
            let note = format!(
                "cluster {cluster_name}: cannot apply {}: {}",
                error.diff.describe(),
                error.message
            );
            let (object, related) = regarding(&error.namespace);
            let event = sync_event(EventType::Warning, REASON_FAILED, note, related);
            self.publish(&event, &object, Series::Aggregate).await;
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
    /// told the user; the Event is for whoever looks later.
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
            intent
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let publisher = self.clone();
        tokio::spawn(async move {
            for (cluster, why) in failed {
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: REASON_FAILED.to_owned(),
                    note: Some(push_failure_note(&cluster, &change, &why)),
                    action: "Push".to_owned(),
                    secondary: Some(ObjectReference {
                        api_version: Some(MeshCluster::api_version(&()).into_owned()),
                        kind: Some(MeshCluster::kind(&()).into_owned()),
                        name: Some(cluster),
                        ..ObjectReference::default()
                    }),
                };
                // Distinct: each note names another cluster and why.
                publisher
                    .publish(&event, &regarding, Series::Distinct)
                    .await;
            }
        });
    }

    async fn publish(&self, event: &KubeEvent, regarding: &ObjectReference, series: Series) {
        let result = match series {
            Series::Aggregate => self.aggregate.publish(event, regarding).await,
            Series::Distinct => {
                Recorder::new(self.primary.clone(), self.reporter.clone())
                    .publish(event, regarding)
                    .await
            }
        };
        if let Err(error) = result {
            tracing::debug!(
                error = %error_chain(&error),
                reason = %event.reason,
                regarding = regarding.name.as_deref().unwrap_or_default(),
                "cannot publish event"
            );
        }
    }
}

/// The clusters a push did not reach, with why, in the words of the Event.
fn failed_pushes(outcomes: &[PushOutcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|outcome| {
            let why = match &outcome.result {
                PushResult::Unreachable(error) => format!("unreachable: {error}"),
                PushResult::Forbidden(error) => format!("forbidden: {error}"),
                PushResult::Failed(error) => error.clone(),
                PushResult::TimedOut => "no answer before the deadline".to_owned(),
                PushResult::NotWaited => {
                    "not tried: no answer to the last push before its deadline".to_owned()
                }
                PushResult::Applied
                | PushResult::AlreadyInSync
                | PushResult::NamespaceMissing
                | PushResult::OutOfScope
                | PushResult::Superseded => {
                    return None;
                }
            };
            Some((outcome.cluster.clone(), why))
        })
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

/// The note of a push that failed on `cluster`, cut to [`MAX_MESSAGE`]: `why` may quote what
/// the remote answered, and the apiserver refuses an Event whose note runs past 1 KiB.
fn push_failure_note(cluster: &str, change: &str, why: &str) -> String {
    mesh_core::printable::cut(
        format!("cluster {cluster}: {change} not applied ({why}); the reconciler will retry"),
        MAX_MESSAGE,
    )
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
    use super::*;
    use crate::cluster_status::{Attempt, next_status};
    use k8s_openapi::jiff::Timestamp;
    use mesh_core::failure::Failure;

    fn status_after(prev: Option<&MeshClusterStatus>, attempt: &Attempt<'_>) -> MeshClusterStatus {
        next_status(prev, attempt, None, Timestamp::UNIX_EPOCH)
    }

    fn reason(event: Option<KubeEvent>) -> Option<String> {
        event.map(|e| e.reason)
    }

    #[test]
    fn a_push_failure_note_fits_an_event() {
        let short = push_failure_note("east", "istio-injection=enabled", "timed out");
        assert_eq!(
            short,
            "cluster east: istio-injection=enabled not applied (timed out); the reconciler will retry"
        );
        let long = push_failure_note("east", "istio-injection=enabled", &"x".repeat(4000));
        assert_eq!(long.len(), MAX_MESSAGE, "{long}");
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
        ];
        let failed = failed_pushes(&outcomes);
        let failed: Vec<(&str, &str)> = failed
            .iter()
            .map(|(cluster, why)| (cluster.as_str(), why.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                ("down", "unreachable: refused"),
                ("denied", "forbidden: rbac"),
                ("broken", "500"),
                ("slow", "no answer before the deadline"),
            ]
        );
    }
}
