//! Pushes the webhook made for admission requests that may not be persisted yet.
//!
//! The webhook pushes a change to the remotes *before* the primary's apiserver stores it. If
//! the reconciler synced in between, it would read the primary's old labels and revert the
//! push, and the remote would flap until the new labels arrive by watch. So the reconciler
//! reads the primary through [`InFlight::overlay_one`]: a pushed change counts as the primary's
//! state until the watch shows it persisted or another change of the managed labels stored
//! after it ([`InFlight::settle`]), or its time runs out. When the apiserver rejected the
//! request after the push (a later admission step said no), the entry expires and the
//! reconciler, woken by [`InFlight::expired`], reverts the remotes to what the primary really
//! holds.
//!
//! Where a reconciler confirms expiries ([`InFlight::confirm_expiries`]), an entry whose time
//! ran out keeps standing in until a read of the primary says the push was not persisted: a
//! watch of the primary gone silent (a stalled apiserver, a connection dead without a word)
//! shows neither the push nor its rejection, and its stale view must not undo the push. A
//! push no version orders (a creation's) is not ended by the watch showing other labels
//! either: those may be older than the push, and a read before its time runs out may come
//! while the request is still reviewed, so only the read at its expiry decides.
//!
//! Every replica drops an entry when its time runs out or, confirming, once the primary is
//! read not to hold it (a forged review's push among them), and the map holds at most
//! [`MAX_ENTRIES`]: reviews come from outside (and, forged, could name any namespace), so
//! neither their names nor their number may grow the map for good.
//!
//! Entries live in this process only: with several replicas, the leader does not see pushes
//! made by another replica, and at worst reverts one for the moment before the watch catches
//! up, as it would without this.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use tokio::sync::watch;
use tokio::time::Instant;

use mesh_core::labels::{Labels, SyncRule};

/// How long a push stands in for the primary's state. The apiserver gives a mutating webhook
/// at most its timeout (5 s in the shipped configuration) and then persists or rejects within
/// moments; past this the request is over either way.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Most pushes standing in at once. Far above what the apiserver sends within one
/// [`DEFAULT_TTL`]; past it, the push closest to expiring is forgotten first (at worst the
/// reconciler reverts it for a moment, as without this map).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    labels: Labels,
    /// The managed labels the push changed from.
    before: Labels,
    until: Instant,
    /// resourceVersion of the primary's namespace the request changed: only a version stored
    /// after it is this push persisted. An older version with the same labels (a change the
    /// other way and back: A, B, A) must not settle it.
    after: Option<u64>,
    /// Its time ran out, and it waits for a read of the primary ([`InFlight::due`]), standing
    /// in meanwhile.
    due: bool,
}

impl Entry {
    /// Whether it still counts as the primary's state at `now`.
    fn stands_in(&self, now: Instant) -> bool {
        self.due || self.until > now
    }
}

impl Entry {
    /// Whether the primary storing `labels` at `version`, as `seen`, ends this push's standing
    /// in: it persisted the push, or another change superseded it. A request is stored only
    /// over the version it was reviewed on: once a later version holds other managed labels
    /// than before the push, the request failed (a conflict) or is retried, and a retry is
    /// reviewed, and recorded, afresh. A later version the watch shows still holding the
    /// labels before the push (an edit of something else) leaves it standing in: its retry
    /// will most likely push the same again, and reverting the remotes meanwhile would make
    /// them flap. A list, though, skips versions: the same labels there may be the push
    /// persisted and changed back since (A, B, A), which only a read would tell apart.
    fn ended_by(&self, labels: &Labels, version: Option<&str>, seen: Seen) -> bool {
        let stored_after = matches!(
            (self.after, version.and_then(resource_version)),
            (Some(after), Some(version)) if version > after
        );
        let superseded = stored_after && (seen == Seen::Listed || *labels != self.before);
        superseded || self.persisted_by(labels, version)
    }

    /// Whether the primary storing `labels` at `version` is this push persisted.
    fn persisted_by(&self, labels: &Labels, version: Option<&str>) -> bool {
        let stored_after = match (self.after, version.and_then(resource_version)) {
            (Some(after), Some(version)) => version > after,
            // Versions that are not numbers cannot be ordered: the labels alone decide.
            _ => true,
        };
        self.labels == *labels && stored_after
    }
}

/// How the primary's watch showed a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A change, each version in turn.
    Watched,
    /// In a list (a relist), which skips the versions stored in between.
    Listed,
}

/// A push whose time ran out, to be confirmed by a read of the primary.
#[derive(Clone, Debug)]
pub struct Due {
    pub namespace: String,
    entry: Entry,
}

impl Due {
    /// Whether `stored`, the primary's namespace as just read (`None`: there is none), holds
    /// this push.
    fn persisted_in(&self, rule: &SyncRule, stored: Option<&Namespace>) -> bool {
        stored.is_some_and(|stored| {
            let version = stored.metadata.resource_version.as_deref();
            self.entry
                .persisted_by(&rule.desired(Some(stored)), version)
        })
    }
}

/// Pushed changes by namespace name. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct InFlight {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    expired: watch::Sender<u64>,
    ttl: Duration,
    /// A reconciler confirms expired entries before they stop standing in.
    confirmed: Arc<AtomicBool>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new(DEFAULT_TTL)
    }
}

impl InFlight {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Arc::default(),
            expired: watch::channel(0).0,
            ttl,
            confirmed: Arc::default(),
        }
    }

    /// From now on an entry whose time runs out stands in until [`InFlight::confirm`] drops
    /// it or renews it, as [`InFlight::stand_in_again`] does; [`InFlight::expired`] says when
    /// there are entries [`InFlight::due`] for confirmation.
    pub fn confirm_expiries(&self) {
        self.confirmed.store(true, Ordering::Relaxed);
    }

    /// Remembers that `namespace` was pushed with these managed labels, and arranges for
    /// [`InFlight::expired`] to fire when the entry runs out.
    ///
    /// `before` are the namespace's managed labels the change applies to, and `based_on` the
    /// resourceVersion of the primary's namespace they are read from (none for a creation).
    pub fn record(&self, namespace: &str, labels: Labels, before: &Labels, based_on: Option<&str>) {
        let after = based_on.and_then(resource_version);
        let now = Instant::now();
        let until = now + self.ttl;
        {
            let mut entries = self.lock();
            if entries.len() >= MAX_ENTRIES && !entries.contains_key(namespace) {
                entries.retain(|_, entry| entry.stands_in(now));
                if entries.len() >= MAX_ENTRIES
                    && let Some(first) = entries
                        .iter()
                        .min_by_key(|(_, entry)| entry.until)
                        .map(|(name, _)| name.clone())
                {
                    entries.remove(&first);
                }
            }
            entries.insert(
                namespace.to_owned(),
                Entry {
                    labels,
                    before: before.clone(),
                    until,
                    after,
                    due: false,
                },
            );
        }
        self.expire_at(namespace, until);
    }

    /// Ends the standing in of `namespace`'s entry at `until`, unless a newer push or a
    /// renewal has set a later time by then.
    fn expire_at(&self, namespace: &str, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let namespace = namespace.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            let now = Instant::now();
            let confirmed = this.confirmed.load(Ordering::Relaxed);
            let mut entries = this.lock();
            let Some(entry) = entries.get_mut(&namespace).filter(|e| e.until <= now) else {
                return;
            };
            if confirmed {
                // Standing in while a read of the primary is made, however long the round of
                // reads takes; no timer: the confirmation renews or drops it. The time only
                // orders it among the entries to forget first when the map is full.
                entry.due = true;
                entry.until = now + this.ttl;
            } else {
                entries.remove(&namespace);
            }
            drop(entries);
            this.signal_due();
        });
    }

    /// The watch saw `namespace` stored with these managed labels at `version`: if that is
    /// what was pushed, or any version stored after the one the push changed, the push needs
    /// no standing in any more ([`Entry::ended_by`]). Whether what the reconciler sees of the
    /// namespace changed: the push ended without being what the primary holds.
    #[must_use]
    pub fn settle(
        &self,
        namespace: &str,
        persisted: &Labels,
        version: Option<&str>,
        seen: Seen,
    ) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get(namespace) else {
            return false;
        };
        if !entry.ended_by(persisted, version, seen) {
            return false;
        }
        let seen_differs = entry.labels != *persisted;
        entries.remove(namespace);
        seen_differs
    }

    /// Wakes whoever confirms the entries [`InFlight::due`].
    fn signal_due(&self) {
        self.expired
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// The entries whose time ran out, to be confirmed by a read of the primary.
    pub fn due(&self) -> Vec<Due> {
        self.lock()
            .iter()
            .filter(|(_, entry)| entry.due)
            .map(|(name, entry)| Due {
                namespace: name.clone(),
                entry: entry.clone(),
            })
            .collect()
    }

    /// `due` was persisted, or the primary could not say: it stands in for another lifetime
    /// (unless a newer push replaced it meanwhile).
    pub fn stand_in_again(&self, due: &Due) {
        let until = Instant::now() + self.ttl;
        {
            let mut entries = self.lock();
            let Some(entry) = entries
                .get_mut(&due.namespace)
                .filter(|entry| **entry == due.entry)
            else {
                return;
            };
            entry.due = false;
            entry.until = until;
        }
        self.expire_at(&due.namespace, until);
    }

    /// Settles `due` by `stored`, the primary's namespace as just read (`None`: there is
    /// none); whether it stopped standing in, for a sync to revert the remotes.
    pub fn confirm(&self, rule: &SyncRule, due: &Due, stored: Option<&Namespace>) -> bool {
        if due.persisted_in(rule, stored) {
            self.stand_in_again(due);
            return false;
        }
        self.not_persisted(due)
    }

    /// The primary does not hold `due`: it stops standing in (unless a newer push replaced it
    /// meanwhile; then false), and the sync that follows reverts the remotes.
    fn not_persisted(&self, due: &Due) -> bool {
        let mut entries = self.lock();
        let unchanged = entries.get(&due.namespace) == Some(&due.entry);
        if unchanged {
            entries.remove(&due.namespace);
        }
        unchanged
    }

    /// The primary's namespaces as the reconciler should see them: pushed changes still in
    /// flight replace the stored managed labels. Expired entries are dropped.
    #[cfg(test)]
    pub fn overlay(&self, rule: &SyncRule, primary: &mut BTreeMap<String, Namespace>) {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, entry| entry.until > now);
        for (name, entry) in entries.iter() {
            let stored = primary.remove(name);
            primary.insert(name.clone(), stand_in(rule, name, entry, stored));
        }
    }

    /// What the reconciler should see of one primary namespace, `stored` as the primary holds
    /// it: a push still in flight replaces its managed labels.
    pub fn overlay_one(
        &self,
        rule: &SyncRule,
        name: &str,
        stored: Option<Namespace>,
    ) -> Option<Namespace> {
        let now = Instant::now();
        match self.lock().get(name).filter(|entry| entry.stands_in(now)) {
            Some(entry) => Some(stand_in(rule, name, entry, stored)),
            None => stored,
        }
    }

    /// The pushes standing in now: namespace and the managed labels pushed.
    pub fn pushed(&self) -> Vec<(String, Labels)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, entry)| entry.stands_in(now))
            .map(|(name, entry)| (name.clone(), entry.labels.clone()))
            .collect()
    }

    /// Changes whenever entries become [`InFlight::due`] for confirmation.
    pub fn expired(&self) -> watch::Receiver<u64> {
        self.expired.subscribe()
    }

    /// Number of pushes still standing in for the primary.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A resourceVersion as the number etcd makes it. Kubernetes calls them opaque; a version
/// that is not a number is simply not ordered.
fn resource_version(version: &str) -> Option<u64> {
    version.parse().ok()
}

/// `stored` (or a namespace being created) with the managed labels of `entry`.
fn stand_in(rule: &SyncRule, name: &str, entry: &Entry, stored: Option<Namespace>) -> Namespace {
    let mut namespace = stored.unwrap_or_else(|| {
        let mut created = Namespace::default();
        created.metadata.name = Some(name.to_owned());
        created
    });
    let labels = namespace.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.retain(|key, _| !rule.is_managed(key));
    labels.extend(entry.labels.clone());
    namespace
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fixtures::{MetadataExt, NamespaceExt, by_name as primary, labels, ns};

    /// Records a push of `istio-injection=enabled` to namespace shop, which had no managed
    /// label at version `based_on`.
    fn push_enabled(in_flight: &InFlight, based_on: Option<&str>) {
        let enabled = labels(&[("istio-injection", "enabled")]);
        in_flight.record("shop", enabled, &Labels::new(), based_on);
    }

    /// The watch shows namespace shop with these managed labels at `version`: whether what the
    /// reconciler sees of it changed ([`InFlight::settle`]).
    fn watch_shows(in_flight: &InFlight, managed: &[(&str, &str)], version: Option<&str>) -> bool {
        in_flight.settle("shop", &labels(managed), version, Seen::Watched)
    }

    #[tokio::test]
    async fn a_push_stands_in_for_the_primary_until_persisted() {
        let rule = SyncRule::default();
        let in_flight = InFlight::default();
        push_enabled(&in_flight, None);
        let mut view = primary(vec![
            ns("shop").label("team", "a").label("istio.io/rev", "old"),
        ]);
        in_flight.overlay(&rule, &mut view);
        assert_eq!(
            rule.desired(view.get("shop")),
            labels(&[("istio-injection", "enabled")])
        );
        // Unmanaged labels are the primary's own business and stay.
        assert_eq!(view["shop"].metadata.labels.as_ref().unwrap()["team"], "a");

        let _ = watch_shows(&in_flight, &[("istio-injection", "other")], None);
        assert_eq!(
            in_flight.len(),
            1,
            "a different persisted state does not settle it"
        );
        assert!(
            !watch_shows(&in_flight, &[("istio-injection", "enabled")], None),
            "seen as it was"
        );
        assert!(in_flight.is_empty());
    }

    #[tokio::test]
    async fn a_push_for_a_namespace_being_created_appears_in_the_view() {
        let rule = SyncRule::default();
        let in_flight = InFlight::default();
        in_flight.record(
            "new",
            labels(&[("istio.io/rev", "stable")]),
            &Labels::new(),
            None,
        );
        let mut view = BTreeMap::new();
        in_flight.overlay(&rule, &mut view);
        assert_eq!(
            rule.desired(view.get("new")),
            labels(&[("istio.io/rev", "stable")])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unpersisted_push_expires_and_wakes_the_reconciler() {
        let rule = SyncRule::default();
        let in_flight = InFlight::new(Duration::from_secs(10));
        let mut expired = in_flight.expired();
        push_enabled(&in_flight, None);
        expiry_signalled(&mut expired).await;
        let mut view = primary(vec![ns("shop")]);
        in_flight.overlay(&rule, &mut view);
        assert!(
            rule.desired(view.get("shop")).is_empty(),
            "the primary's real state wins"
        );
        assert!(in_flight.is_empty());
    }

    /// Waits past the 10 s lifetime the expiry tests give their entries.
    async fn expiry_signalled(expired: &mut watch::Receiver<u64>) {
        tokio::time::timeout(Duration::from_secs(11), expired.changed())
            .await
            .expect("expiry signalled")
            .expect("sender alive");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unpersisted_push_is_dropped_without_a_reconciler() {
        // Nothing has called confirm_expiries (no reconciler runs beside the reviews).
        let in_flight = InFlight::new(Duration::from_secs(10));
        let mut expired = in_flight.expired();
        in_flight.record(
            "forged",
            labels(&[("istio-injection", "disabled")]),
            &Labels::new(),
            None,
        );
        expiry_signalled(&mut expired).await;
        assert!(in_flight.is_empty());
    }

    #[tokio::test]
    async fn the_map_never_holds_more_than_its_bound() {
        let in_flight = InFlight::default();
        for n in 0..MAX_ENTRIES + 50 {
            in_flight.record(
                &format!("ns-{n}"),
                labels(&[("istio-injection", "enabled")]),
                &Labels::new(),
                None,
            );
        }
        assert_eq!(in_flight.len(), MAX_ENTRIES);
        // The newest push is kept.
        let mut view = BTreeMap::new();
        in_flight.overlay(&SyncRule::default(), &mut view);
        assert!(view.contains_key(&format!("ns-{}", MAX_ENTRIES + 49)));
    }

    #[tokio::test]
    async fn an_older_version_with_the_same_labels_does_not_settle_a_push() {
        // enabled (version 10), disabled (11), then enabled again, pushed from version 11: the
        // watch, late, delivers version 10 now.
        let in_flight = InFlight::default();
        let enabled = labels(&[("istio-injection", "enabled")]);
        in_flight.record("shop", enabled.clone(), &Labels::new(), Some("11"));
        let _ = in_flight.settle("shop", &enabled, Some("10"), Seen::Watched);
        assert_eq!(in_flight.len(), 1, "version 10 is not this push");
        let _ = in_flight.settle("shop", &enabled, Some("12"), Seen::Watched);
        assert!(in_flight.is_empty());
    }

    /// enabled pushed from version 10, stored at 11 and removed again at 12: a relist shows
    /// version 12 alone, with the labels from before the push.
    #[tokio::test]
    async fn a_list_of_a_later_version_ends_a_push_whatever_its_labels() {
        let in_flight = InFlight::default();
        push_enabled(&in_flight, Some("10"));
        for not_after in ["9", "10"] {
            assert!(!in_flight.settle("shop", &Labels::new(), Some(not_after), Seen::Listed));
            assert_eq!(
                in_flight.len(),
                1,
                "version {not_after} is not stored after it"
            );
        }
        assert!(in_flight.settle("shop", &Labels::new(), Some("12"), Seen::Listed));
        assert!(in_flight.is_empty());
    }

    /// A push no version orders (a creation's, or one from a version that is not a number):
    /// the watch showing the namespace with other labels (a later admission step's, or a view
    /// older than the push) neither ends it nor has the primary read before its time runs
    /// out, since the request may still be reviewed; the read at its expiry decides.
    #[tokio::test(start_paused = true)]
    async fn an_unordered_push_shown_with_other_labels_stands_in_until_its_expiry() {
        let rule = SyncRule::default();
        let in_flight = InFlight::new(Duration::from_secs(10));
        in_flight.confirm_expiries();
        let disabled = ns("shop").label("istio-injection", "disabled").rv("6");
        for based_on in [None, Some("not-a-number")] {
            push_enabled(&in_flight, based_on);
            assert!(!watch_shows(
                &in_flight,
                &[("istio-injection", "disabled")],
                Some("5")
            ));
            assert!(
                in_flight.due().is_empty(),
                "{based_on:?}: no read before its expiry"
            );
            assert_eq!(in_flight.pushed().len(), 1, "{based_on:?}: it stands in");
            let due = due_after_expiry(&in_flight).await;
            assert!(
                in_flight.confirm(&rule, &due, Some(&disabled)),
                "{based_on:?}"
            );
            assert!(in_flight.is_empty());
        }
    }

    /// A push another request's change overtook (another replica's, or one made while a later
    /// admission step refused this one): that change is the primary's now.
    #[tokio::test]
    async fn a_later_change_of_the_managed_labels_ends_a_push() {
        let in_flight = InFlight::default();
        push_enabled(&in_flight, Some("100"));
        // Only an annotation changed: the request is retried, most likely to the same labels.
        assert!(!in_flight.settle("shop", &Labels::new(), Some("101"), Seen::Watched));
        assert_eq!(in_flight.len(), 1, "an edit of something else ends nothing");
        // The reconciler saw the push; now it must look again.
        let canary = labels(&[("istio.io/rev", "canary")]);
        assert!(in_flight.settle("shop", &canary, Some("102"), Seen::Watched));
        assert!(
            in_flight.is_empty(),
            "another change of the managed labels won"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_push_does_not_signal_expiry() {
        let in_flight = InFlight::new(Duration::from_secs(10));
        let mut expired = in_flight.expired();
        push_enabled(&in_flight, None);
        let _ = watch_shows(&in_flight, &[("istio-injection", "enabled")], None);
        assert!(
            tokio::time::timeout(Duration::from_secs(20), expired.changed())
                .await
                .is_err()
        );
    }

    /// A map whose expiries a reconciler confirms, and its push of `shop`
    /// `istio-injection=enabled` (from version 7) once due.
    async fn expired_push() -> (InFlight, Due) {
        let in_flight = InFlight::new(Duration::from_secs(10));
        in_flight.confirm_expiries();
        push_enabled(&in_flight, Some("7"));
        let due = due_after_expiry(&in_flight).await;
        (in_flight, due)
    }

    /// With a reconciler confirming expiries: the push `shop` `istio-injection=enabled` once
    /// its time ran out, still standing in while the read that confirms it is made.
    async fn due_after_expiry(in_flight: &InFlight) -> Due {
        let mut expired = in_flight.expired();
        expiry_signalled(&mut expired).await;
        let mut view = primary(vec![ns("shop")]);
        in_flight.overlay(&SyncRule::default(), &mut view);
        assert_eq!(
            SyncRule::default().desired(view.get("shop")),
            labels(&[("istio-injection", "enabled")]),
            "it stands in while confirmed"
        );
        let mut due = in_flight.due();
        assert_eq!(due.len(), 1, "due for confirmation");
        due.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_push_stands_in_until_a_read_says_the_primary_does_not_hold_it() {
        let (in_flight, due) = expired_push().await;
        let rule = SyncRule::default();
        assert!(!due.persisted_in(&rule, None), "not created");
        assert!(
            !due.persisted_in(&rule, Some(&ns("shop").rv("8"))),
            "no label"
        );
        let older = ns("shop").label("istio-injection", "enabled").rv("6");
        assert!(
            !due.persisted_in(&rule, Some(&older)),
            "stored before the push"
        );
        assert!(in_flight.confirm(&rule, &due, None));
        assert!(in_flight.is_empty());
    }

    /// The reads that confirm expired pushes are made one after another, each bounded by
    /// seconds: one checked late in a round stood in no more once a second lifetime passed
    /// before its read, and a sync in that gap reverted it on the remotes.
    #[tokio::test(start_paused = true)]
    async fn an_expired_push_stands_in_however_long_its_check_waits() {
        let (in_flight, _due) = expired_push().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let rule = SyncRule::default();
        let seen = in_flight.overlay_one(&rule, "shop", Some(ns("shop")));
        assert_eq!(
            rule.desired(seen.as_ref()),
            labels(&[("istio-injection", "enabled")])
        );
        assert_eq!(in_flight.pushed().len(), 1);
        assert_eq!(in_flight.due().len(), 1, "still to be checked");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_push_the_primary_holds_stands_in_again() {
        let (in_flight, due) = expired_push().await;
        let held = ns("shop").label("istio-injection", "enabled").rv("8");
        assert!(due.persisted_in(&SyncRule::default(), Some(&held)));
        in_flight.stand_in_again(&due);
        assert!(in_flight.due().is_empty());
        // Another lifetime, then confirmed again; the watch, once it shows the push, settles it.
        let due = due_after_expiry(&in_flight).await;
        in_flight.stand_in_again(&due);
        let _ = watch_shows(&in_flight, &[("istio-injection", "enabled")], Some("8"));
        assert!(in_flight.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_push_is_not_dropped_by_the_confirmation_of_the_one_it_replaced() {
        let (in_flight, due) = expired_push().await;
        in_flight.record(
            "shop",
            labels(&[("istio-injection", "disabled")]),
            &labels(&[("istio-injection", "enabled")]),
            Some("8"),
        );
        in_flight.not_persisted(&due);
        in_flight.stand_in_again(&due);
        assert_eq!(
            in_flight.pushed(),
            [(
                "shop".to_owned(),
                labels(&[("istio-injection", "disabled")])
            )]
        );
        assert!(in_flight.due().is_empty());
    }
}
