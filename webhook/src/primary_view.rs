//! The primary's namespaces as the reconciler keeps them: of each, what the rule and the
//! Events read; the webhook's pushes not yet persisted laid over them; and a signal when the
//! managed labels a remote should carry change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures::Stream;
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time};
use kube::{ResourceExt, api::ObjectMeta, runtime::watcher};
use mesh_core::{
    labels::{Labels, SyncRule},
    sync::PrimaryView,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    in_flight::{InFlight, Seen},
    remote_watch::{Interner, LabelSet, kept_namespace},
    watch_events::for_each_event,
};

/// The primary's namespaces, each kept as its uid, resourceVersion, deletion mark and managed
/// labels (what the rule and the Events read), its name and label set shared through an
/// [`Interner`]: under a hundred bytes each, where a whole Namespace object, even stripped of
/// its annotations and field records, took about a kilobyte. Cheap to clone; clones share
/// state.
#[derive(Clone)]
pub struct PrimaryNamespaces {
    rule: Arc<SyncRule>,
    interner: Interner,
    state: Arc<Mutex<Kept>>,
    listed: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Kept {
    namespaces: HashMap<Arc<str>, Entry>,
    /// The namespaces of a list under way; they replace `namespaces` when it is done.
    listing: Option<HashMap<Arc<str>, Entry>>,
}

/// One primary namespace as kept.
#[derive(Clone)]
struct Entry {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    deletion: Option<Time>,
    /// Its managed labels, sorted.
    labels: LabelSet,
}

impl PrimaryNamespaces {
    pub fn new(rule: Arc<SyncRule>, interner: Interner) -> Self {
        Self {
            rule,
            interner,
            state: Arc::default(),
            listed: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Waits until the watch has listed the primary once.
    pub async fn wait_listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// Namespace `name` as kept: its name, uid, resourceVersion, deletion mark and managed
    /// labels.
    pub fn get(&self, name: &str) -> Option<Namespace> {
        let state = self.lock();
        state
            .namespaces
            .get(name)
            .map(|entry| entry.to_namespace(name))
    }

    /// Whether namespace `name` is kept, terminating or not.
    pub fn holds(&self, name: &str) -> bool {
        self.lock().namespaces.contains_key(name)
    }

    /// Where names and label sets are held once: the remotes' stores share it.
    pub(crate) fn interner(&self) -> &Interner {
        &self.interner
    }

    /// The names of the namespaces whose namesakes `rule` would label.
    fn labelled(&self, rule: &SyncRule) -> Vec<String> {
        let state = self.lock();
        state
            .namespaces
            .iter()
            // Without managed labels, a namespace wants none on the remotes: no need to ask.
            .filter(|(_, entry)| !entry.labels.is_empty())
            .filter(|(name, entry)| !rule.desired(Some(&entry.to_namespace(name))).is_empty())
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Applies one watch event; whether the managed labels a remote should carry changed.
    fn apply(&self, event: &watcher::Event<Namespace>) -> bool {
        let changed = self.update(event);
        // Outside the state lock, which admission takes (`holds`).
        if matches!(event, watcher::Event::InitDone) {
            self.interner.forget_unused();
        } else {
            self.interner.forget_unused_if_grown();
        }
        changed
    }

    fn update(&self, event: &watcher::Event<Namespace>) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        match event {
            watcher::Event::Init => {
                state.listing = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(ns) => {
                let (name, entry) = self.keep(&ns.metadata);
                state.listing.get_or_insert_default().insert(name, entry);
                false
            }
            watcher::Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                let old = std::mem::replace(&mut state.namespaces, listed);
                self.listed.send_replace(true);
                let new = &state.namespaces;
                new.iter().any(|(name, entry)| {
                    self.desired(name, Some(entry)) != self.desired(name, old.get(name))
                }) || old.iter().any(|(name, entry)| {
                    !new.contains_key(name) && !self.desired(name, Some(entry)).is_empty()
                })
            }
            watcher::Event::Apply(ns) => {
                let (name, entry) = self.keep(&ns.metadata);
                let desired = self.desired(&name, Some(&entry));
                let old = state.namespaces.insert(name.clone(), entry);
                self.desired(&name, old.as_ref()) != desired
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                let old = state.namespaces.remove(name.as_str());
                !self.desired(&name, old.as_ref()).is_empty()
            }
        }
    }

    /// What the rule wants on the remotes for namespace `name` as kept in `entry`.
    fn desired(&self, name: &str, entry: Option<&Entry>) -> Labels {
        // Without managed labels, a namespace wants none on the remotes: no need to ask.
        let namespace = entry
            .filter(|entry| !entry.labels.is_empty())
            .map(|entry| entry.to_namespace(name));
        self.rule.desired(namespace.as_ref())
    }

    /// The name and what is kept of `meta`.
    fn keep(&self, meta: &ObjectMeta) -> (Arc<str>, Entry) {
        let managed = meta
            .labels
            .iter()
            .flatten()
            .filter(|(key, _)| self.rule.is_managed(key));
        let name = meta.name.as_deref().unwrap_or_default();
        let (name, labels) = self.interner.intern(name, managed);
        let entry = Entry {
            uid: meta.uid.as_deref().map(Box::from),
            resource_version: meta.resource_version.as_deref().map(Box::from),
            deletion: meta.deletion_timestamp.clone(),
            labels,
        };
        (name, entry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    fn to_namespace(&self, name: &str) -> Namespace {
        let mut namespace = kept_namespace(name, &self.labels);
        let meta = &mut namespace.metadata;
        meta.uid = self.uid.as_deref().map(str::to_owned);
        meta.resource_version = self.resource_version.as_deref().map(str::to_owned);
        meta.deletion_timestamp = self.deletion.clone();
        namespace
    }
}

/// The primary as the reconciler sees it: the kept namespaces, with the webhook's pushes that
/// are not persisted yet laid over them ([`InFlight`]). Read afresh each time it is asked.
pub struct StoreView<'a> {
    pub namespaces: &'a PrimaryNamespaces,
    pub in_flight: &'a InFlight,
    pub rule: &'a SyncRule,
}

impl PrimaryView for StoreView<'_> {
    fn namespace(&self, name: &str) -> Option<Namespace> {
        let stored = self.namespaces.get(name);
        self.in_flight.overlay_one(self.rule, name, stored)
    }

    fn labelled(&self, rule: &SyncRule) -> Vec<String> {
        // A push in flight stands for its namespace's managed labels, whatever the store says.
        let pushed: HashMap<String, Labels> = self.in_flight.pushed().into_iter().collect();
        let stored = self
            .namespaces
            .labelled(rule)
            .into_iter()
            .filter(|name| !pushed.contains_key(name));
        let pushed = pushed
            .iter()
            .filter(|(_, labels)| labels.keys().any(|key| rule.is_managed(key)))
            .map(|(name, _)| name.clone());
        stored.chain(pushed).collect()
    }
}

/// Feeds `store` from the primary's namespace watch and bumps `changed` whenever the managed
/// labels a remote should carry change on the primary: other edits (annotations, status,
/// other labels) cost nothing.
pub async fn watch_namespaces(
    events: impl Stream<Item = Result<watcher::Event<Namespace>, watcher::Error>>,
    store: PrimaryNamespaces,
    in_flight: InFlight,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    for_each_event(events, &shutdown, |event| {
        let mut changed_labels = store.apply(&event);
        // Settled only once the store holds what settles it: between the two, a sync would
        // read neither the push nor the labels that persisted it. A push that ended without
        // being what the primary holds changed what the reconciler sees, as a change would.
        match &event {
            watcher::Event::Apply(ns) => {
                changed_labels |= settle(&in_flight, &store.rule, ns, Seen::Watched);
            }
            // A relist (a new replica, a watch that expired) may hold pushes persisted, or
            // persisted and changed since, while no event could say so; unsettled, they would
            // stand in for good, renewed by every confirmation, and undo a later change.
            watcher::Event::InitDone => {
                for (name, _) in in_flight.pushed() {
                    if let Some(ns) = store.get(&name) {
                        changed_labels |= settle(&in_flight, &store.rule, &ns, Seen::Listed);
                    }
                }
            }
            _ => {}
        }
        if changed_labels {
            changed.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    })
    .await;
}

/// Ends the standing in of a push to `ns` that `ns`, as the primary stores it, persisted or
/// superseded; whether the reconciler must look again ([`InFlight::settle`]).
fn settle(in_flight: &InFlight, rule: &SyncRule, ns: &Namespace, seen: Seen) -> bool {
    let labels = rule.desired(Some(ns));
    in_flight.settle(
        &ns.name_any(),
        &labels,
        ns.metadata.resource_version.as_deref(),
        seen,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fixtures::{MetadataExt, NamespaceExt, ns};

    fn store() -> PrimaryNamespaces {
        PrimaryNamespaces::new(Arc::new(SyncRule::default()), Interner::default())
    }

    #[test]
    fn kept_primary_namespaces_hold_what_the_rule_and_events_read() {
        let rule = SyncRule::default();
        let store = store();
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
            let mut original = original;
            original.metadata.uid = Some("uid-1".to_owned());
            store.apply(&watcher::Event::Apply(original.clone()));
            let name = original.name_any();
            let stored = store.get(&name).expect("kept");
            assert_eq!(rule.desired(Some(&stored)), rule.desired(Some(&original)));
            assert_eq!(stored.metadata.name, original.metadata.name);
            assert_eq!(
                stored.metadata.resource_version,
                original.metadata.resource_version
            );
            assert_eq!(
                stored.metadata.deletion_timestamp,
                original.metadata.deletion_timestamp
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
        let mut labelled = store.labelled(&rule);
        labelled.sort();
        assert_eq!(labelled, ["web"], "a namespace being deleted wants nothing");
        // A terminating namespace exists: creating it fails.
        assert!(store.holds("going"));
        store.apply(&watcher::Event::Delete(ns("web")));
        assert!(store.get("web").is_none() && !store.holds("web"));
    }

    #[test]
    fn churning_namespaces_do_not_grow_the_interner_without_relists() {
        let store = store();
        for i in 0..20_000 {
            // CI namespaces, each created with its own label value and deleted.
            let name = format!("ci-{i}");
            let labelled = ns(&name).label("istio.io/rev", &format!("rev-{i}"));
            store.apply(&watcher::Event::Apply(labelled.clone()));
            store.apply(&watcher::Event::Delete(labelled));
        }
        let len = store.interner().len();
        assert!(len <= 4 * 1024, "the interner holds {len} entries");
    }

    #[tokio::test]
    async fn only_managed_label_changes_wake_the_workers() {
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
        let store = store();
        watch_namespaces(
            futures::stream::iter(events.into_iter().map(Ok)),
            store.clone(),
            crate::in_flight::InFlight::default(),
            changed,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(*seen.borrow(), 5);
        assert!(store.get("b").is_some() && store.get("a").is_none());
    }

    /// A push persisted while the watch was relisting is settled by the list.
    #[tokio::test]
    async fn a_relist_settles_the_pushes_it_shows_persisted() {
        use watcher::Event;

        let in_flight = crate::in_flight::InFlight::default();
        let enabled = mesh_core::fixtures::labels(&[("istio-injection", "enabled")]);
        in_flight.record("a", enabled.clone(), &Labels::new(), Some("10"));
        in_flight.record("b", enabled, &Labels::new(), Some("10"));
        let persisted = ns("a").label("istio-injection", "enabled").rv("11");
        let not_yet = ns("b").rv("10");
        let events = [
            Event::Init,
            Event::InitApply(persisted),
            Event::InitApply(not_yet),
            Event::InitDone,
        ];
        woken_by(events, &in_flight).await;
        let standing: Vec<String> = in_flight.pushed().into_iter().map(|(n, _)| n).collect();
        assert_eq!(standing, ["b"]);
    }

    /// A push stored, then its labels changed back while the watch was relisting: the list
    /// ends it, and the workers look again.
    #[tokio::test]
    async fn a_relist_ends_a_push_changed_back_since() {
        use watcher::Event;

        let in_flight = crate::in_flight::InFlight::default();
        let enabled = mesh_core::fixtures::labels(&[("istio-injection", "enabled")]);
        in_flight.record("a", enabled, &Labels::new(), Some("10"));
        let events = [
            Event::Init,
            Event::InitApply(ns("a").rv("12")),
            Event::InitDone,
        ];
        assert_eq!(woken_by(events, &in_flight).await, 1);
        assert!(in_flight.is_empty());
    }

    /// A push another change overtook ends, and the workers look again: the primary's labels
    /// did not change in the store, but what the reconciler saw of them did.
    #[tokio::test]
    async fn a_push_overtaken_wakes_the_reconciler() {
        use watcher::Event;

        let in_flight = crate::in_flight::InFlight::default();
        let enabled = mesh_core::fixtures::labels(&[("istio-injection", "enabled")]);
        let canary = ns("a").label("istio.io/rev", "canary");
        in_flight.record("a", enabled, &Labels::new(), Some("100"));
        let events = [
            // The watch, behind the request's review, shows an older version first.
            Event::Apply(canary.clone().rv("99")),
            // Only an annotation changed: the store's labels are as they were.
            Event::Apply(canary.annotation("edited", "yes").rv("102")),
        ];
        // The namespace's labels, then the push's end.
        assert_eq!(woken_by(events, &in_flight).await, 2);
        assert!(in_flight.is_empty());
    }

    /// How many times the watch of `events`, with the pushes of `in_flight`, woke the workers.
    async fn woken_by(
        events: impl IntoIterator<Item = watcher::Event<Namespace>>,
        in_flight: &InFlight,
    ) -> u64 {
        let (changed, seen) = watch::channel(0u64);
        watch_namespaces(
            futures::stream::iter(events.into_iter().map(Ok)),
            store(),
            in_flight.clone(),
            changed,
            CancellationToken::new(),
        )
        .await;
        *seen.borrow()
    }
}
