//! What the dashboard's watches keep of each object, and how a watch is applied to it: the
//! reducers, small on purpose (thousands of objects per cluster are kept).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mesh_core::labels::SyncRule;

use super::live::{EventRow, WEBHOOK_CONTROLLER};
use crate::cmd::services::{Records, wire};

/// (namespace, name) of an Event.
pub(super) type EventKey = (String, String);

/// A watch event, as the reducers see it.
pub(super) enum Change<K> {
    /// A relist starts: what it does not list again is gone.
    Restart,
    Apply(K),
    Delete(K),
    /// The relist ended.
    Listed,
    Failed(String),
}

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
        mut reduce: impl FnMut(&K) -> Option<(Q, V)>,
    ) {
        match change {
            // Into an empty map (the first list) nothing can be stale: no keys are kept
            // aside, tens of thousands of them.
            Change::Restart => self.seen = (!map.is_empty()).then(BTreeSet::new),
            Change::Apply(o) => {
                if let Some((key, value)) = reduce(&o) {
                    if let Some(seen) = &mut self.seen {
                        seen.insert(key.clone());
                    }
                    map.insert(key, value);
                }
            }
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

pub(super) fn reduce_namespace(ns: &wire::Namespace) -> Option<(String, NsFacts)> {
    let labels = ns
        .labels()
        .iter()
        .filter(|(k, _)| *k != NAME_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some((
        ns.metadata.name.clone()?,
        NsFacts {
            labels,
            deleting: ns.metadata.deletion_timestamp.is_some(),
        },
    ))
}

/// A webhook Event, or `None` for anyone else's.
pub(super) fn reduce_event(event: &Event) -> Option<(EventKey, EventRow)> {
    if event.reporting_controller.as_deref() != Some(WEBHOOK_CONTROLLER) {
        return None;
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
        (event.namespace()?, event.metadata.name.clone()?),
        EventRow {
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
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> wire::Namespace {
        let mut ns = wire::Namespace::default();
        ns.metadata.name = Some(name.to_owned());
        ns
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
