//! What the dashboard's watches keep of each object, and how a watch is applied to it: the
//! reducers, small on purpose (thousands of objects per cluster are kept).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::watcher};
use mesh_core::{failure, labels::SyncRule};

use serde::Serialize;

use crate::cmd::services::{
    self, Key, Names, ObjectKey, Records, ServiceFacts, SliceFacts, name_hash, wire,
};
use crate::cmd::status::Unread;
use crate::mesh_state::RemoteError;

/// The controller name the webhook records its Events with.
pub(super) const WEBHOOK_CONTROLLER: &str = "mesh-webhook";

/// (namespace, name) of an Event.
pub(super) type EventKey = (String, String);

/// A webhook Event, as the page lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub time: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    /// `Namespace shop`, `MeshCluster remote-1`.
    pub object: String,
    pub note: String,
    pub count: i32,
}

/// A watch event, as the reducers see it.
pub(super) enum Change<K> {
    /// A relist starts: what it does not list again is gone.
    Restart,
    Apply(K),
    Delete(K),
    /// The relist ended.
    Listed,
    Failed(Unread),
}

impl<K> Change<K> {
    /// The watch failed with `error`: why, and whether the cluster never answered, as
    /// `status` tells a read's failure ([`RemoteError::unanswered`]).
    pub(super) fn failed(error: watcher::Error) -> Self {
        let text = failure::error_chain(&error);
        let unanswered = match error {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => RemoteError::Call(e).unanswered(),
            // The apiserver's own error in the stream, or a list without a version: answered.
            _ => false,
        };
        Self::Failed(Unread {
            error: text,
            unanswered,
        })
    }

    /// What it says of whether the cluster answers: it failed (why), it answered (an object,
    /// or the end of a list), or nothing: a relist that starts has asked nothing yet.
    pub(super) fn answered(&self) -> Option<Result<(), &Unread>> {
        match self {
            Self::Restart => None,
            Self::Apply(_) | Self::Delete(_) | Self::Listed => Some(Ok(())),
            Self::Failed(e) => Some(Err(e)),
        }
    }
}

/// Keeps `error`, why a watch fails now, as `change` says: set by a failure, cleared once the
/// cluster answers again.
pub(super) fn note_failure<K>(error: &mut Option<Unread>, change: &Change<K>) {
    match change.answered() {
        Some(Err(e)) => *error = Some(e.clone()),
        Some(Ok(())) => *error = None,
        None => {}
    }
}

/// What a reducer makes of an object: its key (`None`: an object without a name, nothing to
/// do) and what is kept of it under that key (`None`: nothing, and what was kept goes; a pod
/// that finished no longer counts). The key is there either way: without it, an object that
/// became one of those nothing is kept of would leave its earlier value behind for ever.
pub(super) type Reduced<Q, V> = Option<(Q, Option<V>)>;

/// A map kept equal to a watched collection: keys not listed again after a restart go.
pub(super) struct Relist<Q> {
    seen: Option<BTreeSet<Q>>,
}

impl<Q> Default for Relist<Q> {
    fn default() -> Self {
        Self { seen: None }
    }
}

impl<Q: Ord + Clone> Relist<Q> {
    pub(super) fn apply<V, K: kube::Resource>(
        &mut self,
        map: &mut Records<Q, V>,
        change: Change<K>,
        mut reduce: impl FnMut(&K) -> Reduced<Q, V>,
    ) {
        match change {
            // Into an empty map (the first list) nothing can be stale: no keys are kept
            // aside, tens of thousands of them.
            Change::Restart => self.seen = (!map.is_empty()).then(BTreeSet::new),
            Change::Apply(o) => match reduce(&o) {
                Some((key, Some(value))) => {
                    if let Some(seen) = &mut self.seen {
                        seen.insert(key.clone());
                    }
                    map.insert(key, value);
                }
                Some((key, None)) => drop(map.remove(&key)),
                None => {}
            },
            Change::Delete(o) => {
                if let Some((key, _)) = reduce(&o) {
                    map.remove(&key);
                }
            }
            Change::Listed => {
                if let Some(seen) = self.seen.take() {
                    map.retain(|k, _| seen.contains(k));
                }
            }
            Change::Failed(_) => {}
        }
    }
}

/// A map shown only once its first list ended, `None` until then: a list is read a page at a
/// time, and a map shown half listed says that what the list has not reached yet is not
/// there. Once shown, it is kept by [`Relist`]: a relist leaves it whole until it ends.
pub(super) struct Staged<Q, V> {
    relist: Relist<Q>,
    /// The first list, as far as it went: a list started again (the watch failed) goes on
    /// from it, [`Relist`] dropping what it does not list again.
    first: Records<Q, V>,
}

impl<Q, V> Default for Staged<Q, V> {
    fn default() -> Self {
        Self {
            relist: Relist::default(),
            first: Records::default(),
        }
    }
}

impl<Q: Ord + Clone, V> Staged<Q, V> {
    /// Applies `change` to `shown`, or to the first list until it ends.
    pub(super) fn apply<K: kube::Resource>(
        &mut self,
        shown: &mut Option<Records<Q, V>>,
        change: Change<K>,
        reduce: impl FnMut(&K) -> Reduced<Q, V>,
    ) {
        if let Some(map) = shown {
            return self.relist.apply(map, change, reduce);
        }
        let listed = matches!(change, Change::Listed);
        self.relist.apply(&mut self.first, change, reduce);
        if listed {
            *shown = Some(std::mem::take(&mut self.first));
        }
    }
}

/// The label the apiserver sets on every namespace to its name: not kept, put back.
pub(super) const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace as kept: its labels but [`NAME_LABEL`], and whether it is being deleted; what
/// the sync rule reads, in tens of bytes where a Namespace object takes hundreds. Thousands
/// of namespaces per cluster are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct NsFacts {
    pub(super) labels: Box<[(String, String)]>,
    deleting: bool,
}

impl NsFacts {
    /// Whether it carries a label the rule manages.
    pub(super) fn carries(&self, rule: &SyncRule) -> bool {
        self.labels
            .iter()
            .any(|(k, _)| rule.managed_keys().any(|m| m == k))
    }

    /// The Namespace the judges read.
    pub(super) fn namespace(&self, name: &str) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.to_owned());
        let mut labels: BTreeMap<String, String> = self.labels.iter().cloned().collect();
        labels.insert(NAME_LABEL.to_owned(), name.to_owned());
        ns.metadata.labels = Some(labels);
        if self.deleting {
            ns.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        }
        ns
    }
}

pub(super) fn reduce_namespace(ns: &wire::Namespace) -> Reduced<String, NsFacts> {
    let labels = ns
        .labels()
        .iter()
        .filter(|(k, _)| *k != NAME_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some((
        ns.metadata.name.clone()?,
        Some(NsFacts {
            labels,
            deleting: ns.metadata.deletion_timestamp.is_some(),
        }),
    ))
}

/// A Service as `services` keeps it: every Service with a name is kept.
pub(super) fn reduce_service(
    names: &mut Names,
    service: &wire::Service,
) -> Reduced<Key, ServiceFacts> {
    keyed(services::extract_service(names, service), || None)
}

/// An EndpointSlice as `services` keeps it: nothing of one that belongs to no Service.
pub(super) fn reduce_slice(
    names: &mut Names,
    slice: &wire::EndpointSlice,
) -> Reduced<ObjectKey, SliceFacts> {
    let extracted = services::extract_slice(names, slice);
    keyed(extracted, || object_key(names, slice))
}

/// A pod as `services` keeps it: nothing of one that finished, which no longer serves.
pub(super) fn reduce_pod(names: &mut Names, pod: &wire::Pod) -> Reduced<ObjectKey, bool> {
    let extracted = services::extract_pod(names, pod);
    keyed(extracted, || object_key(names, pod))
}

/// What `services` extracted of an object, else its key alone (`key`), with nothing kept.
fn keyed<Q, V>(extracted: Option<(Q, V)>, key: impl FnOnce() -> Option<Q>) -> Reduced<Q, V> {
    match extracted {
        Some((key, value)) => Some((key, Some(value))),
        None => key().map(|key| (key, None)),
    }
}

/// The key `services` keeps an EndpointSlice or a pod under ([`ObjectKey`]), for one it keeps
/// nothing of: made as its extractors make it (a finished pod's is tested to be the key it was
/// kept under while it ran).
fn object_key(names: &mut Names, object: &impl kube::Resource) -> Option<ObjectKey> {
    let meta = object.meta();
    Some((
        names.name(meta.namespace.as_deref()?),
        name_hash(meta.name.as_deref()?),
    ))
}

/// Where the webhook's Events are: it reports on namespaces and MeshClusters, cluster-scoped
/// objects, whose Events kube's recorder writes to `default`.
pub(super) const WEBHOOK_EVENTS_NAMESPACE: &str = "default";

/// The kinds the webhook's Events are about.
const WEBHOOK_EVENT_KINDS: [&str; 2] = ["Namespace", "MeshCluster"];

/// A webhook Event; nothing kept of anyone else's. The reporting controller is any writer's to
/// choose: an Event elsewhere, or about another kind, is not the webhook's whatever it says.
pub(super) fn reduce_event(event: &Event) -> Reduced<EventKey, EventRow> {
    let key = (event.namespace()?, event.metadata.name.clone()?);
    let regarding_kind = event.regarding.as_ref().and_then(|r| r.kind.as_deref());
    let webhooks = event.reporting_controller.as_deref() == Some(WEBHOOK_CONTROLLER)
        && event.metadata.namespace.as_deref() == Some(WEBHOOK_EVENTS_NAMESPACE)
        && regarding_kind.is_some_and(|kind| WEBHOOK_EVENT_KINDS.contains(&kind));
    if !webhooks {
        return Some((key, None));
    }
    let time = event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0.to_string())
        .or_else(|| event.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            event
                .deprecated_last_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
        .unwrap_or_default();
    let regarding = event.regarding.as_ref();
    Some((
        key,
        Some(EventRow {
            time,
            type_: event.type_.clone().unwrap_or_default(),
            reason: event.reason.clone().unwrap_or_default(),
            object: format!(
                "{} {}",
                regarding.and_then(|r| r.kind.clone()).unwrap_or_default(),
                regarding.and_then(|r| r.name.clone()).unwrap_or_default()
            ),
            note: event.note.clone().unwrap_or_default(),
            count: event.series.as_ref().map_or(1, |s| s.count),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Event reported as the webhook's, in `namespace`, about an object of `kind`.
    fn reported(namespace: &str, kind: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e1", "namespace": namespace},
            "eventTime": "2026-12-04T10:00:00.000000Z",
            "reportingController": WEBHOOK_CONTROLLER,
            "reportingInstance": "mesh-webhook-0",
            "action": "Sync",
            "reason": "Corrected",
            "type": "Normal",
            "regarding": {"kind": kind, "name": "shop"},
            "note": "cluster east: corrected shop",
        }))
        .expect("an Event")
    }

    #[test]
    fn only_the_webhooks_own_events_are_shown() {
        let row = |event| reduce_event(&event).and_then(|(_, row)| row);
        let shown = row(reported("default", "Namespace")).expect("the webhook's");
        assert_eq!(shown.object, "Namespace shop");
        assert!(row(reported("default", "MeshCluster")).is_some());
        // Anyone may name the webhook as reporter: not in its namespace, or not of its kinds.
        assert!(row(reported("team-a", "Namespace")).is_none());
        assert!(row(reported("default", "Pod")).is_none());
    }

    fn ns(name: &str) -> wire::Namespace {
        let mut ns = wire::Namespace::default();
        ns.metadata.name = Some(name.to_owned());
        ns
    }

    #[test]
    fn a_failure_holds_until_the_cluster_answers_not_while_a_relist_only_starts() {
        let timed_out = Unread {
            error: "timed out".into(),
            unanswered: true,
        };
        let mut error = None;
        note_failure(
            &mut error,
            &Change::<wire::Namespace>::Failed(timed_out.clone()),
        );
        assert_eq!(error.as_ref(), Some(&timed_out));
        // A relist starts before it asks anything.
        note_failure(&mut error, &Change::<wire::Namespace>::Restart);
        assert_eq!(error.as_ref(), Some(&timed_out));
        note_failure(&mut error, &Change::Apply(ns("a")));
        assert_eq!(error, None);
        for answered in [Change::Listed, Change::Delete(ns("a"))] {
            error = Some(timed_out.clone());
            note_failure(&mut error, &answered);
            assert_eq!(error, None);
        }
    }

    /// A watch refused its list (a revoked token) was shown as a cluster that does not
    /// answer: only one without an answer is.
    #[test]
    fn a_failed_watch_is_unanswered_only_when_nothing_answered() {
        let failed = |error| match Change::<wire::Namespace>::failed(error) {
            Change::Failed(unread) => unread,
            _ => unreachable!("a failure"),
        };
        let refused = kube::core::Status::failure("Unauthorized", "Unauthorized").with_code(401);
        let listed = failed(watcher::Error::InitialListFailed(kube::Error::Api(
            refused.boxed(),
        )));
        assert!(!listed.unanswered, "{listed:?}");
        assert!(listed.error.contains("Unauthorized"), "{listed:?}");
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let silent = failed(watcher::Error::WatchFailed(kube::Error::Service(Box::new(
            reset,
        ))));
        assert!(silent.unanswered, "{silent:?}");
    }

    /// A pod of `phase` in `shop`.
    fn pod(phase: &str) -> wire::Pod {
        let mut pod = wire::Pod::default();
        pod.metadata.namespace = Some("shop".to_owned());
        pod.metadata.name = Some("job-1".to_owned());
        pod.status = Some(wire::PodStatus {
            phase: Some(phase.to_owned()),
        });
        pod
    }

    /// A pod that finished (a Job's) was counted for ever: nothing was kept of it, so
    /// neither its change to Succeeded nor its deletion removed what was kept while it ran.
    #[test]
    fn a_finished_pod_is_no_longer_counted() {
        let mut names = Names::default();
        for last in [
            Change::Apply(pod("Succeeded")),
            Change::Delete(pod("Succeeded")),
        ] {
            let mut relist = Relist::default();
            let mut pods = Records::default();
            let changes = [
                Change::Restart,
                Change::Apply(pod("Running")),
                Change::Listed,
            ];
            for change in changes {
                relist.apply(&mut pods, change, |o| reduce_pod(&mut names, o));
            }
            assert_eq!(pods.len(), 1);
            relist.apply(&mut pods, last, |o| reduce_pod(&mut names, o));
            assert!(pods.is_empty(), "{pods:?}");
        }
    }

    #[test]
    fn a_map_is_shown_once_its_first_list_ended() {
        let mut staged = Staged::default();
        let mut shown = None;
        staged.apply(&mut shown, Change::Restart, reduce_namespace);
        staged.apply(&mut shown, Change::Apply(ns("a")), reduce_namespace);
        staged.apply(&mut shown, Change::Apply(ns("b")), reduce_namespace);
        assert!(shown.is_none(), "half a list");
        // The list started again (its watch failed), without `a` now.
        staged.apply(&mut shown, Change::Restart, reduce_namespace);
        staged.apply(&mut shown, Change::Apply(ns("b")), reduce_namespace);
        assert!(shown.is_none(), "half a list");
        staged.apply(&mut shown, Change::Listed, reduce_namespace);
        let keys = |shown: &Option<Records<String, NsFacts>>| -> Vec<String> {
            shown.iter().flat_map(Records::keys).cloned().collect()
        };
        assert_eq!(keys(&shown), ["b"]);
        // A relist leaves it whole until it ends.
        staged.apply(&mut shown, Change::Restart, reduce_namespace);
        staged.apply(&mut shown, Change::Apply(ns("c")), reduce_namespace);
        assert_eq!(keys(&shown), ["b", "c"]);
        staged.apply(&mut shown, Change::Listed, reduce_namespace);
        assert_eq!(keys(&shown), ["c"]);
    }

    #[test]
    fn a_relist_drops_what_it_does_not_list_again() {
        let mut relist = Relist::default();
        let mut map = Records::default();
        // The first list, into an empty map: no keys kept aside.
        relist.apply(&mut map, Change::Restart, reduce_namespace);
        assert!(relist.seen.is_none());
        for name in ["a", "b"] {
            relist.apply(&mut map, Change::Apply(ns(name)), reduce_namespace);
        }
        relist.apply(&mut map, Change::Listed, reduce_namespace);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
        // A relist that no longer lists `a`.
        relist.apply(&mut map, Change::Restart, reduce_namespace);
        relist.apply(&mut map, Change::Apply(ns("b")), reduce_namespace);
        relist.apply(&mut map, Change::Apply(ns("c")), reduce_namespace);
        assert_eq!(map.len(), 3, "nothing goes before the relist ends");
        relist.apply(&mut map, Change::Listed, reduce_namespace);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["b", "c"]);
        relist.apply(&mut map, Change::Delete(ns("b")), reduce_namespace);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["c"]);
    }
}
