//! The primary's namespaces as the reconciler keeps them: a watch's store trimmed to what the
//! rule reads, the webhook's pushes not yet persisted laid over it, and a signal when the
//! managed labels a remote should carry change.

use std::{collections::HashMap, sync::Arc};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use mesh_core::{
    labels::{Labels, SyncRule},
    sync::PrimaryView,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::in_flight::InFlight;

/// Trims a primary namespace to its identity, deletion mark and managed labels before it is
/// stored: each sync copies the whole store, and managedFields, annotations (kubectl's
/// last-applied configuration) and other labels are most of a Namespace's bytes while nothing
/// here reads them.
pub fn keep_what_the_rule_reads(rule: &SyncRule, ns: &mut Namespace) {
    let meta = &mut ns.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|key, _| rule.is_managed(key));
    }
    ns.spec = None;
    ns.status = None;
}

/// The primary as the reconciler sees it: the watch's store, with the webhook's pushes that
/// are not persisted yet laid over it ([`InFlight`]). Read afresh each time it is asked.
pub struct StoreView<'a> {
    pub namespaces: &'a Store<Namespace>,
    pub in_flight: &'a InFlight,
    pub rule: &'a SyncRule,
}

impl PrimaryView for StoreView<'_> {
    fn namespace(&self, name: &str) -> Option<Namespace> {
        let stored = self
            .namespaces
            .get(&ObjectRef::new(name))
            .map(|ns| ns.as_ref().clone());
        self.in_flight.overlay_one(self.rule, name, stored)
    }

    fn labelled(&self, rule: &SyncRule) -> Vec<String> {
        // A push in flight stands for its namespace's managed labels, whatever the store says.
        let pushed: HashMap<String, Labels> = self.in_flight.pushed().into_iter().collect();
        let stored = self
            .namespaces
            .state()
            .into_iter()
            .filter(|ns| !rule.desired(Some(ns)).is_empty())
            .map(|ns| ns.name_any())
            .filter(|name| !pushed.contains_key(name));
        let pushed = pushed
            .iter()
            .filter(|(_, labels)| labels.keys().any(|key| rule.is_managed(key)))
            .map(|(name, _)| name.clone());
        stored.chain(pushed).collect()
    }
}

/// Feeds the namespace store and bumps `changed` whenever the managed labels a remote should
/// carry change on the primary: other edits (annotations, status, other labels) cost nothing.
pub async fn watch_namespaces(
    events: impl Stream<Item = Result<watcher::Event<Namespace>, watcher::Error>>,
    rule: Arc<SyncRule>,
    in_flight: InFlight,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut desired: HashMap<String, Labels> = HashMap::new();
    let mut relisted: HashMap<String, Labels> = HashMap::new();
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        let bump = match event {
            Ok(watcher::Event::Apply(ns)) => {
                let labels = rule.desired(Some(&ns));
                let name = ns.name_any();
                in_flight.settle(&name, &labels, ns.metadata.resource_version.as_deref());
                let old = if labels.is_empty() {
                    desired.remove(&name)
                } else {
                    desired.insert(name, labels.clone())
                };
                old.unwrap_or_default() != labels
            }
            Ok(watcher::Event::Delete(ns)) => desired
                .remove(&ns.name_any())
                .is_some_and(|old| !old.is_empty()),
            Ok(watcher::Event::Init) => {
                relisted.clear();
                false
            }
            Ok(watcher::Event::InitApply(ns)) => {
                let labels = rule.desired(Some(&ns));
                if !labels.is_empty() {
                    relisted.insert(ns.name_any(), labels);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let bump = relisted != desired;
                desired = std::mem::take(&mut relisted);
                bump
            }
            Err(error) => {
                tracing::warn!(error = %error, "namespace watch failed, retrying");
                false
            }
        };
        if bump {
            changed.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_primary_namespaces_keep_what_the_rule_and_events_read() {
        use mesh_core::fixtures::{NamespaceExt, ns};

        let rule = SyncRule::default();
        for original in [
            ns("web")
                .label("istio-injection", "enabled")
                .label("istio.io/rev", "1-25")
                .label("team", "web")
                .annotation("kubectl.kubernetes.io/last-applied-configuration", "{}")
                .rv("42"),
            ns("going").label("istio-injection", "enabled").deleting(),
            ns("plain").label("team", "x"),
        ] {
            let mut stored = original.clone();
            stored.metadata.uid = Some("uid-1".to_owned());
            keep_what_the_rule_reads(&rule, &mut stored);
            assert_eq!(rule.desired(Some(&stored)), rule.desired(Some(&original)));
            assert_eq!(stored.metadata.name, original.metadata.name);
            assert_eq!(
                stored.metadata.resource_version,
                original.metadata.resource_version
            );
            assert_eq!(stored.metadata.uid.as_deref(), Some("uid-1"));
            assert_eq!(stored.metadata.annotations, None);
            let kept: Vec<&String> = stored
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            assert!(kept.iter().all(|key| rule.is_managed(key)), "{kept:?}");
        }
    }

    #[tokio::test]
    async fn only_managed_label_changes_wake_the_workers() {
        use mesh_core::fixtures::{NamespaceExt, ns};
        use watcher::Event;

        let events = vec![
            Event::Init,
            Event::InitApply(ns("a").label("istio-injection", "enabled")),
            Event::InitApply(ns("b").label("team", "x")),
            Event::InitDone, // 1
            Event::Apply(
                ns("a")
                    .label("istio-injection", "enabled")
                    .annotation("x", "y"),
            ),
            Event::Apply(ns("b").label("team", "y")),
            Event::Apply(ns("a").label("istio-injection", "disabled")), // 2
            Event::Apply(ns("c").label("istio.io/rev", "1-25")),        // 3
            Event::Apply(ns("c").label("istio.io/rev", "1-25").deleting()), // 4
            Event::Delete(ns("c")),
            Event::Delete(ns("b")),
            Event::Delete(ns("a").label("istio-injection", "disabled")), // 5
            // A relist finding what we already know changes nothing.
            Event::Init,
            Event::InitApply(ns("b").label("team", "y")),
            Event::InitDone,
        ];
        let (changed, seen) = watch::channel(0u64);
        watch_namespaces(
            futures::stream::iter(events.into_iter().map(Ok)),
            Arc::new(SyncRule::default()),
            crate::in_flight::InFlight::default(),
            changed,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(*seen.borrow(), 5);
    }
}
