//! Watches one remote's namespaces: wakes the worker when they drift from the primary, and
//! keeps what a sync reads of them, so that the periodic resync of a remote whose watch is
//! current needs no LIST.
//!
//! Without the drift wake-up, a namespace created on a remote after its twin was labelled on
//! the primary, or a managed label edited by hand on a remote, would wait for the next periodic
//! resync: pods started there meanwhile get the wrong injection. The watch reads metadata only,
//! and keeps of each namespace its name, resourceVersion and the labels the rule reads: a few
//! dozen bytes, shared label strings, whatever the remote's namespaces carry besides.
//!
//! What it keeps is bounded whatever the remote sends (a remote's admin controls the server at
//! its recorded address): a namespace no apiserver could hold (a name that is not a DNS-1123
//! label, a label value past 63 characters) is not kept, and a remote that shows more
//! namespaces than [`MAX_NAMESPACES`] is not watched any more: every sync lists it instead,
//! which fails past the same bound.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::ObjectMeta,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffSettings};
use mesh_core::printable::quoted;
use mesh_core::remote::{self, Remote};
use mesh_core::sync::{MAX_NAME, could_be_real};

/// The most namespaces kept of one remote: as many as a list of them may bring, the bound a
/// sync meets when it lists the remote instead.
const MAX_NAMESPACES: usize = mesh_core::list::MAX_OBJECTS;

/// A remote whose watch showed more namespaces than are kept.
#[derive(Debug, thiserror::Error)]
#[error(
    "the remote's namespace watch showed more than {MAX_NAMESPACES} namespaces: none are kept, \
     the watch is stopped, and every sync lists the remote instead"
)]
struct TooManyNamespaces;

/// What became of proving which cluster a remote's credentials reach, before a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The cluster that was attached: watch.
    Proved,
    /// Another cluster: nothing of it may be taken for this one's, so it is not watched.
    OtherCluster,
    /// Stopped before the credentials could be proved.
    Cancelled,
}

/// Proves that `remote`'s credentials reach the cluster that was attached before anything is
/// watched through them, reading again (with backoff) while the remote does not answer;
/// `unproved` is called after every attempt that did not prove them.
pub(crate) async fn prove(
    remote: &Remote,
    cancel: &CancellationToken,
    mut unproved: impl FnMut(),
) -> Proof {
    let mut backoff = Backoff::new(BackoffSettings::default());
    loop {
        let verified = tokio::select! {
            verified = remote.verify() => verified,
            () = cancel.cancelled() => return Proof::Cancelled,
        };
        let Err(error) = verified else {
            return Proof::Proved;
        };
        unproved();
        if let remote::Error::OtherCluster { .. } = error {
            // The worker's sync reports it; nothing is read there.
            return Proof::OtherCluster;
        }
        tracing::debug!(error = %error, "remote not proved yet, retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = cancel.cancelled() => return Proof::Cancelled,
        }
    }
}

/// Wakes `drift` whenever a namespace of `remote` is seen with managed labels other than the
/// primary's (`is_drifted` decides), and keeps `seen` current, until `cancel`; once `remote` is
/// proved to be the cluster that was attached.
pub(crate) async fn watch_for_drift(
    remote: Arc<Remote>,
    is_drifted: impl Fn(&Namespace) -> bool,
    drift: Arc<Notify>,
    seen: SeenNamespaces,
    cancel: CancellationToken,
) {
    let Some(client) = remote.watch_client().cloned() else {
        return;
    };
    if prove(&remote, &cancel, || seen.lost()).await != Proof::Proved {
        return;
    }
    let namespaces = Api::<PartialObjectMeta<Namespace>>::all(client);
    let events = watcher(namespaces, mesh_core::remote::watch_config()).default_backoff();
    tokio::select! {
        () = notify_on_drift(events, is_drifted, &drift, &seen) => {}
        () = cancel.cancelled() => {}
    }
}

async fn notify_on_drift(
    events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Namespace>>, watcher::Error>>,
    is_drifted: impl Fn(&Namespace) -> bool,
    drift: &Notify,
    seen: &SeenNamespaces,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // The worker's own sync reports an unreachable remote; this only retries.
                tracing::debug!(error = %error, "remote namespace watch failed, retrying");
                seen.lost();
                continue;
            }
        };
        // A namespace whose read labels did not change since they were last seen is not
        // looked at again: one the remote refuses to correct (an admission policy) still
        // differs after every sync, and would wake the worker at every other edit of it.
        match seen.apply(&event) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "remote namespace watch failed");
                return;
            }
        }
        let namespace = match event {
            // A (re)list shows what changed while the watch was down, so it counts too.
            watcher::Event::Apply(meta) | watcher::Event::InitApply(meta) => Namespace {
                metadata: meta.metadata,
                ..Namespace::default()
            },
            watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => {
                continue;
            }
        };
        if is_drifted(&namespace) {
            tracing::debug!(namespace = ?namespace.metadata.name, "remote labels drifted");
            drift.notify_one();
        }
    }
}

/// A remote's namespaces as its watch has shown them, trimmed to what a sync reads. Cheap to
/// clone; clones share state.
#[derive(Clone)]
pub(crate) struct SeenNamespaces {
    keys: Arc<BTreeSet<String>>,
    shared: Interner,
    state: Arc<Mutex<Seen>>,
    /// Whether the watch has spoken since it started: listed (`Some(true)`) or failed
    /// (`Some(false)`); `None` while its first list is under way.
    heard: Arc<tokio::sync::watch::Sender<Option<bool>>>,
    started: tokio::time::Instant,
}

#[derive(Default)]
struct Seen {
    /// Whether `namespaces` is what the remote holds, as far as its watch can tell: listed, and
    /// the watch has not failed since without delivering an event again. (After a failure the
    /// watcher resumes from its last resourceVersion, so nothing is lost once events flow; a
    /// resourceVersion too old makes it list again.) A connection that died silently fails the
    /// watch within [`mesh_core::remote::WATCH_READ_TIMEOUT`].
    current: bool,
    /// A resourceVersion was not a number, or the remote showed more than [`MAX_NAMESPACES`]:
    /// this remote is listed by every sync.
    unusable: bool,
    /// Namespaces shown that no apiserver could hold, not kept ([`could_be_real`]).
    ignored: usize,
    namespaces: HashMap<Arc<str>, Trimmed>,
    /// The namespaces of a list under way; they replace `namespaces` when it is done.
    listing: Option<HashMap<Arc<str>, Trimmed>>,
}

/// One namespace as kept: the same size whatever labels it carries, nothing allocated for it
/// alone (its name and its label set are shared).
#[derive(Clone)]
struct Trimmed {
    resource_version: u64,
    labels: LabelSet,
}

/// The labels a sync reads of one namespace, sorted.
pub(crate) type LabelSet = Arc<[(Arc<str>, Arc<str>)]>;

/// Namespace names and label sets, each held once for every remote's [`SeenNamespaces`]: a
/// namespace name is usually on every remote, and a handful of label sets cover thousands of
/// namespaces. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub(crate) struct Interner(Arc<Mutex<Interned>>);

#[derive(Default)]
struct Interned {
    strings: HashSet<Arc<str>>,
    label_sets: HashSet<LabelSet>,
    /// How many entries the last [`Interner::forget_unused`] kept.
    kept_at_last_forget: usize,
}

impl Interned {
    fn len(&self) -> usize {
        self.strings.len() + self.label_sets.len()
    }
}

/// Below this many entries the interner is never swept for growth alone: sweeping a small one
/// at every few new names would cost more than it frees.
const INTERNER_SWEEP_FLOOR: usize = 1024;

impl Interner {
    fn string(interned: &mut Interned, text: &str) -> Arc<str> {
        if let Some(shared) = interned.strings.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        interned.strings.insert(shared.clone());
        shared
    }

    /// `name` and `labels` (sorted), each as held once.
    pub(crate) fn intern<'l>(
        &self,
        name: &str,
        labels: impl Iterator<Item = (&'l String, &'l String)>,
    ) -> (Arc<str>, LabelSet) {
        let mut interned = self.lock();
        let labels: Vec<(Arc<str>, Arc<str>)> = labels
            .map(|(key, value)| {
                let key = Self::string(&mut interned, key);
                (key, Self::string(&mut interned, value))
            })
            .collect();
        let labels = match interned.label_sets.get(labels.as_slice()) {
            Some(shared) => shared.clone(),
            None => {
                let shared: LabelSet = labels.into();
                interned.label_sets.insert(shared.clone());
                shared
            }
        };
        (Self::string(&mut interned, name), labels)
    }

    /// Drops what no store holds any more.
    pub(crate) fn forget_unused(&self) {
        Self::sweep(&mut self.lock());
    }

    /// [`Self::forget_unused`] once the interner has doubled since it last ran: a watch with
    /// bookmarks almost never relists, and the names of namespaces created and deleted all day
    /// would pile up. Each sweep costs its size, paid for by as many new entries before it.
    pub(crate) fn forget_unused_if_grown(&self) {
        let mut interned = self.lock();
        if interned.len() > 2 * interned.kept_at_last_forget.max(INTERNER_SWEEP_FLOOR) {
            Self::sweep(&mut interned);
        }
    }

    fn sweep(interned: &mut Interned) {
        interned.label_sets.retain(|set| Arc::strong_count(set) > 1);
        interned.strings.retain(|text| Arc::strong_count(text) > 1);
        interned.kept_at_last_forget = interned.len();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Interned> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SeenNamespaces {
    /// Keeps, of each namespace's labels, those among `keys`
    /// ([`mesh_core::labels::SyncRule::keys_read`]); names and labels go through `shared`.
    pub(crate) fn new(keys: BTreeSet<String>, shared: Interner) -> Self {
        Self {
            keys: Arc::new(keys),
            shared,
            state: Arc::default(),
            heard: Arc::new(tokio::sync::watch::Sender::new(None)),
            started: tokio::time::Instant::now(),
        }
    }

    /// Waits until the watch has listed or failed, at most until `patience` after it started: a
    /// sync right after the watch started reads its list instead of making one more of its own,
    /// while a remote that refuses or fails the watch is listed (and its failure reported) at
    /// once, and one that does not answer it is waited for only once.
    pub(crate) async fn heard(&self, patience: std::time::Duration) {
        let mut heard = self.heard.subscribe();
        let until = self.started + patience;
        let _ = tokio::time::timeout_at(until, heard.wait_for(Option::is_some)).await;
    }

    /// Every namespace of the remote, as a sync reads them, when the watch is current. Made
    /// one at a time as the sync reads them: the copy taken here is the trimmed entries.
    pub(crate) fn current(&self) -> Option<impl Iterator<Item = Namespace> + use<>> {
        let state = self.lock();
        let entries: Vec<(Arc<str>, Trimmed)> = (state.current && !state.unusable).then(|| {
            let entries = state.namespaces.iter();
            entries
                .map(|(name, kept)| (name.clone(), kept.clone()))
                .collect()
        })?;
        Some(
            entries
                .into_iter()
                .map(|(name, trimmed)| trimmed.to_namespace(&name)),
        )
    }

    /// Keeps what `event` shows; whether it shows a namespace that is new, or whose read labels
    /// changed since they were last seen (the last list's, during a list). Fails once more
    /// namespaces than [`MAX_NAMESPACES`] were shown: nothing is kept any more.
    fn apply(
        &self,
        event: &watcher::Event<PartialObjectMeta<Namespace>>,
    ) -> Result<bool, TooManyNamespaces> {
        let changed = self.update(event);
        if let Err(TooManyNamespaces) = changed {
            self.lost();
        }
        self.shared.forget_unused_if_grown();
        changed
    }

    fn update(
        &self,
        event: &watcher::Event<PartialObjectMeta<Namespace>>,
    ) -> Result<bool, TooManyNamespaces> {
        let mut state = self.lock();
        let state = &mut *state;
        if let watcher::Event::Apply(meta) | watcher::Event::InitApply(meta) = event
            && !could_be_real(&meta.metadata)
        {
            if state.ignored == 0 {
                let name = meta.metadata.name.as_deref().unwrap_or_default();
                tracing::warn!(
                    namespace = %quoted(name, MAX_NAME),
                    "the remote's watch showed a namespace no apiserver could hold (a name that \
                     is not a DNS-1123 label, or a label value past {MAX_NAME} characters): not \
                     kept, nor any other such (said once)"
                );
            }
            state.ignored += 1;
            return Ok(false);
        }
        let changed = self.keep(state, event);
        let shown = state.namespaces.len() + state.listing.as_ref().map_or(0, HashMap::len);
        if shown > MAX_NAMESPACES {
            state.namespaces = HashMap::new();
            state.listing = None;
            state.unusable = true;
            return Err(TooManyNamespaces);
        }
        Ok(changed)
    }

    /// What `event` changes in `state` ([`Self::update`]).
    fn keep(&self, state: &mut Seen, event: &watcher::Event<PartialObjectMeta<Namespace>>) -> bool {
        let differs = |kept: Option<&Trimmed>, trimmed: &Trimmed| {
            kept.is_none_or(|kept| kept.labels != trimmed.labels)
        };
        match event {
            watcher::Event::Init => {
                state.listing = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(meta) => match self.trim(&meta.metadata) {
                Some((name, trimmed)) => {
                    let changed = differs(state.namespaces.get(&name), &trimmed);
                    state.listing.get_or_insert_default().insert(name, trimmed);
                    changed
                }
                None => {
                    state.unusable = true;
                    true
                }
            },
            watcher::Event::InitDone => {
                state.namespaces = state.listing.take().unwrap_or_default();
                state.current = true;
                self.heard.send_replace(Some(true));
                self.shared.forget_unused();
                false
            }
            watcher::Event::Apply(meta) => {
                let changed = match self.trim(&meta.metadata) {
                    Some((name, trimmed)) => {
                        let changed = differs(state.namespaces.get(&name), &trimmed);
                        state.namespaces.insert(name, trimmed);
                        changed
                    }
                    None => {
                        state.unusable = true;
                        true
                    }
                };
                state.current |= state.listing.is_none();
                changed
            }
            watcher::Event::Delete(meta) => {
                if let Some(name) = meta.metadata.name.as_deref() {
                    state.namespaces.remove(name);
                }
                state.current |= state.listing.is_none();
                false
            }
        }
    }

    fn lost(&self) {
        self.lock().current = false;
        self.heard.send_if_modified(|heard| {
            let first = heard.is_none();
            heard.get_or_insert(false);
            first
        });
    }

    /// The name and what is kept of `meta`; `None` when it has no name or its resourceVersion
    /// is not a number (which a sync could not be conditional on as kept).
    fn trim(&self, meta: &ObjectMeta) -> Option<(Arc<str>, Trimmed)> {
        let name = meta.name.as_deref()?;
        let resource_version = meta.resource_version.as_deref()?.parse().ok()?;
        let read = (meta.labels.iter().flatten()).filter(|(key, _)| self.keys.contains(*key));
        let (name, labels) = self.shared.intern(name, read);
        let trimmed = Trimmed {
            resource_version,
            labels,
        };
        Some((name, trimmed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Trimmed {
    fn to_namespace(&self, name: &str) -> Namespace {
        let mut namespace = kept_namespace(name, &self.labels);
        namespace.metadata.resource_version = Some(self.resource_version.to_string());
        namespace
    }
}

/// A namespace named `name` carrying `labels`, as a store that keeps them shared gives it out.
pub(crate) fn kept_namespace(name: &str, labels: &LabelSet) -> Namespace {
    let labels = labels
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fake_apiserver::FakeApiserver;
    use mesh_core::fixtures::{MetadataExt, mesh_cluster, ns};
    use mesh_core::labels::SyncRule;
    use watcher::Event;

    fn meta(namespace: Namespace) -> PartialObjectMeta<Namespace> {
        PartialObjectMeta {
            metadata: namespace.metadata,
            ..PartialObjectMeta::default()
        }
    }

    /// Runs the events through and says how many times `drift` was woken.
    async fn wake_ups(events: Vec<Event<PartialObjectMeta<Namespace>>>) -> usize {
        let rule = SyncRule::default();
        let primary = ns("web").label("istio-injection", "enabled");
        let found = std::cell::Cell::new(0);
        let is_drifted = |remote: &Namespace| {
            let twin = (remote.metadata.name == primary.metadata.name).then_some(&primary);
            let drifted = !rule.diff(&rule.desired(twin), remote).is_empty();
            found.set(found.get() + usize::from(drifted));
            drifted
        };
        let seen = SeenNamespaces::new(rule.keys_read(), Interner::default());
        notify_on_drift(
            futures::stream::iter(events.into_iter().map(Ok)),
            is_drifted,
            &Notify::new(),
            &seen,
        )
        .await;
        found.get()
    }

    async fn woken(events: Vec<Event<PartialObjectMeta<Namespace>>>) -> bool {
        wake_ups(events).await > 0
    }

    /// A namespace the remote refuses to correct differs still after every sync: it wakes the
    /// worker when its labels change, not at every other edit of it, nor at a relist.
    #[tokio::test]
    async fn a_namespace_that_still_differs_wakes_only_when_its_labels_change() {
        let refused = || ns("web").label("team", "a");
        let events = vec![
            Event::Init,
            Event::InitApply(at(refused(), "5")), // 1
            Event::InitDone,
            Event::Apply(at(refused().annotation("heartbeat", "1"), "6")),
            Event::Apply(at(refused().annotation("heartbeat", "2"), "7")),
            Event::Apply(at(refused().label("istio-injection", "disabled"), "8")), // 2
            Event::Init,
            Event::InitApply(at(refused().label("istio-injection", "disabled"), "9")),
            Event::InitDone,
            // Deleted and made again: new.
            Event::Delete(at(refused(), "10")),
            Event::Apply(at(refused(), "11")), // 3
            // Corrected: it changed, and agrees.
            Event::Apply(at(refused().label("istio-injection", "enabled"), "12")),
        ];
        assert_eq!(wake_ups(events).await, 3);
    }

    #[tokio::test]
    async fn wakes_on_a_remote_namespace_that_differs_from_the_primary() {
        // Created on the remote without the label its primary twin has.
        assert!(woken(vec![Event::Apply(meta(ns("web")))]).await);
        // A label set by hand on a namespace the primary does not label.
        assert!(
            woken(vec![Event::Apply(meta(
                ns("db").label("istio-injection", "enabled")
            ))])
            .await
        );
        // Found by a relist after the watch was down.
        assert!(
            woken(vec![
                Event::Init,
                Event::InitApply(meta(ns("web").label("istio-injection", "disabled"))),
                Event::InitDone,
            ])
            .await
        );
    }

    #[tokio::test]
    async fn stays_quiet_while_the_remote_agrees() {
        assert!(
            !woken(vec![
                Event::Apply(meta(ns("web").label("istio-injection", "enabled"))),
                Event::Apply(meta(ns("db").label("team", "x"))),
                Event::Delete(meta(ns("web"))),
                Event::Init,
                Event::InitApply(meta(ns("other"))),
                Event::InitDone,
            ])
            .await
        );
    }

    /// What `seen` holds after `events` (an `Err` item stands for a failed watch), by name
    /// with its resourceVersion and labels; `None` while not current.
    async fn kept(
        events: Vec<Result<Event<PartialObjectMeta<Namespace>>, ()>>,
    ) -> Option<Vec<(String, String, Vec<(String, String)>)>> {
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let events = events
            .into_iter()
            .map(|event| event.map_err(|()| watcher::Error::NoResourceVersion));
        notify_on_drift(
            futures::stream::iter(events),
            |_| false,
            &Notify::new(),
            &seen,
        )
        .await;
        let mut kept: Vec<_> = seen
            .current()?
            .map(|ns| {
                let labels = ns.metadata.labels.unwrap_or_default().into_iter().collect();
                (
                    ns.metadata.name.unwrap(),
                    ns.metadata.resource_version.unwrap(),
                    labels,
                )
            })
            .collect();
        kept.sort();
        Some(kept)
    }

    fn at(namespace: Namespace, version: &str) -> PartialObjectMeta<Namespace> {
        let mut meta = meta(namespace);
        meta.metadata.resource_version = Some(version.to_owned());
        meta
    }

    fn entry(
        name: &str,
        version: &str,
        labels: &[(&str, &str)],
    ) -> (String, String, Vec<(String, String)>) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (name.to_owned(), version.to_owned(), labels)
    }

    #[tokio::test]
    async fn keeps_each_namespace_with_its_version_and_only_the_labels_a_sync_reads() {
        let kept = kept(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(at(
                ns("web")
                    .label("istio-injection", "enabled")
                    .label("team", "a"),
                "5",
            ))),
            Ok(Event::InitApply(at(ns("db"), "6"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(at(
                ns("db").label("istio.io/rev", "canary"),
                "9",
            ))),
            Ok(Event::Apply(at(ns("new"), "10"))),
            Ok(Event::Delete(at(ns("web"), "11"))),
        ])
        .await;
        assert_eq!(
            kept,
            Some(vec![
                entry("db", "9", &[("istio.io/rev", "canary")]),
                entry("new", "10", &[]),
            ])
        );
    }

    #[tokio::test]
    async fn is_not_current_before_its_list_is_done_nor_after_a_failure() {
        let listing = vec![Ok(Event::Init), Ok(Event::InitApply(at(ns("web"), "5")))];
        assert_eq!(kept(listing).await, None, "list not done");
        let failed = vec![Ok(Event::Init), Ok(Event::InitDone), Err(())];
        assert_eq!(kept(failed).await, None, "failed since");
        // Events flowing again mean the watch resumed where it stopped.
        let resumed = vec![
            Ok(Event::Init),
            Ok(Event::InitDone),
            Err(()),
            Ok(Event::Apply(at(ns("web"), "7"))),
        ];
        assert_eq!(kept(resumed).await, Some(vec![entry("web", "7", &[])]));
    }

    #[tokio::test]
    async fn a_new_list_replaces_what_the_previous_one_showed() {
        let kept = kept(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(at(ns("gone"), "5"))),
            Ok(Event::InitDone),
            Err(()),
            Ok(Event::Init),
            // Seen during the relist: not current until it is done.
            Ok(Event::Apply(at(ns("during"), "8"))),
            Ok(Event::InitApply(at(ns("web"), "9"))),
            Ok(Event::InitDone),
        ])
        .await;
        assert_eq!(kept, Some(vec![entry("web", "9", &[])]));
    }

    #[test]
    fn names_and_label_sets_are_held_once_across_remotes() {
        let shared = Interner::default();
        let east = SeenNamespaces::new(SyncRule::default().keys_read(), shared.clone());
        let west = SeenNamespaces::new(SyncRule::default().keys_read(), shared.clone());
        let web = || ns("web").label("istio-injection", "enabled");
        east.apply(&Event::Apply(at(web(), "5"))).expect("kept");
        east.apply(&Event::Apply(at(
            ns("db").label("istio-injection", "enabled"),
            "6",
        )))
        .expect("kept");
        west.apply(&Event::Apply(at(web().label("team", "a"), "7")))
            .expect("kept");
        let kept = |seen: &SeenNamespaces, name: &str| {
            let state = seen.lock();
            let (name, trimmed) = state.namespaces.get_key_value(name).unwrap();
            (name.clone(), trimmed.labels.clone())
        };
        let (east_web, east_labels) = kept(&east, "web");
        let (west_web, west_labels) = kept(&west, "web");
        let (_, db_labels) = kept(&east, "db");
        assert!(
            Arc::ptr_eq(&east_web, &west_web),
            "one name for both remotes"
        );
        assert!(
            Arc::ptr_eq(&east_labels, &west_labels),
            "unmanaged labels are not kept"
        );
        assert!(
            Arc::ptr_eq(&east_labels, &db_labels),
            "one label set for both namespaces"
        );
    }

    #[test]
    fn a_resource_version_that_is_not_a_number_makes_every_sync_list() {
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        seen.apply(&Event::Init).expect("kept");
        seen.apply(&Event::InitApply(at(ns("web"), "opaque")))
            .expect("kept");
        seen.apply(&Event::InitDone).expect("kept");
        assert!(seen.current().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_waits_for_the_first_list_only_while_the_watch_may_still_give_it() {
        let patience = std::time::Duration::from_secs(10);
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let started = tokio::time::Instant::now();
        seen.lost();
        seen.heard(patience).await;
        assert_eq!(
            started.elapsed(),
            std::time::Duration::ZERO,
            "failed: no wait"
        );

        let silent = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        silent.heard(patience).await;
        assert_eq!(started.elapsed(), patience, "waited once");
        silent.heard(patience).await;
        assert_eq!(started.elapsed(), patience, "not again");

        let listing = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let waiter = tokio::spawn({
            let listing = listing.clone();
            async move { listing.heard(patience).await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        listing.apply(&Event::Init).expect("kept");
        listing.apply(&Event::InitDone).expect("kept");
        waiter.await.unwrap();
        assert_eq!(
            started.elapsed(),
            patience + std::time::Duration::from_secs(1)
        );
        assert!(listing.current().is_some());
    }

    /// A remote entry whose credentials reach `found` (by its kube-system UID) while
    /// `east` was attached as `uid-of-east`.
    fn east_reaching(found: &FakeApiserver) -> Arc<Remote> {
        let east = mesh_cluster("east", "uid-of-east");
        Arc::new(Remote::new("east", found.client()).with_identity(&east))
    }

    async fn watch(remote: Arc<Remote>, seen: SeenNamespaces, cancel: CancellationToken) {
        watch_for_drift(remote, |_| true, Arc::default(), seen, cancel).await;
    }

    /// A watch of `server` as cluster east, proved by its kube-system UID, started: what it
    /// sees, the token that stops it, and the task to await once stopped.
    fn watching(
        server: &FakeApiserver,
    ) -> (
        SeenNamespaces,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let east = mesh_cluster("east", "uid-kube-system");
        let remote = Arc::new(Remote::new("east", server.client()).with_identity(&east));
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(remote, seen.clone(), cancel.clone()));
        (seen, cancel, task)
    }

    #[tokio::test]
    async fn nothing_of_another_cluster_is_watched() {
        let other = FakeApiserver::default().with_namespace("kube-system", &[]);
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let watched = watch(
            east_reaching(&other),
            seen.clone(),
            CancellationToken::new(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), watched)
            .await
            .expect("the watch ends at once");
        assert_eq!(
            other.state().lists,
            0,
            "another cluster's namespaces were listed"
        );
        // A sync does not wait for a list that never comes.
        let started = tokio::time::Instant::now();
        seen.heard(std::time::Duration::from_secs(10)).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// The remote cannot be made to fail one read on demand: the fake apiserver's 403 stands
    /// for any failed call.
    #[tokio::test(start_paused = true)]
    async fn a_remote_not_proved_yet_is_watched_once_it_is() {
        let east = FakeApiserver::default().with_namespace("kube-system", &[]);
        east.state().forbidden = true;
        let (seen, cancel, watching) = watching(&east);
        seen.heard(std::time::Duration::from_secs(10)).await;
        assert_eq!(east.state().lists, 0, "listed before it was proved");

        east.state().forbidden = false;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while east.state().lists == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never watched");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        cancel.cancel();
        watching.await.expect("the watch stops when cancelled");
    }

    /// A remote whose server could be anything (its admin controls it) may show namespaces
    /// no apiserver holds; the stand-in apiserver serves them, as a real one cannot be made to.
    #[tokio::test]
    async fn namespaces_no_apiserver_could_hold_are_not_kept() {
        let long = "x".repeat(MAX_NAME + 1);
        let remote = FakeApiserver::default()
            .with_namespace("kube-system", &[])
            .with_namespace("web", &[("istio-injection", "enabled")])
            .with_namespace("Web", &[])
            .with_namespace("-web", &[])
            .with_namespace("web-", &[])
            .with_namespace("web.shop", &[])
            .with_namespace(&long, &[])
            .with_namespace("long-label", &[("istio-injection", &long)])
            .with_namespace(&"y".repeat(MAX_NAME), &[]);
        let (seen, cancel, watching) = watching(&remote);
        seen.heard(std::time::Duration::from_secs(60)).await;
        let names: BTreeSet<String> = (seen.current().expect("listed"))
            .map(|ns| ns.metadata.name.unwrap())
            .collect();
        cancel.cancel();
        watching.await.expect("the watch stops when cancelled");
        let expected = ["kube-system", "web", &"y".repeat(MAX_NAME)].map(str::to_owned);
        assert_eq!(names, BTreeSet::from(expected));
        assert_eq!(seen.lock().ignored, 6);
    }

    /// A remote that shows ever more namespaces cannot be made of a real apiserver: a stream
    /// of events stands for its watch, one that never ends once past the bound.
    #[tokio::test]
    async fn a_remote_showing_more_namespaces_than_are_kept_is_not_watched_any_more() {
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        let shown = (0..=MAX_NAMESPACES).map(|i| Event::InitApply(at(ns(&format!("ns-{i}")), "1")));
        let events = futures::stream::iter(std::iter::once(Event::Init).chain(shown))
            .map(Ok)
            .chain(futures::stream::pending());
        let drift = Notify::new();
        let watched = notify_on_drift(events, |_| false, &drift, &seen);
        tokio::time::timeout(std::time::Duration::from_secs(120), watched)
            .await
            .expect("the watch ends past the bound");
        {
            let state = seen.lock();
            assert!(
                state.namespaces.is_empty() && state.listing.is_none(),
                "none kept"
            );
        }
        assert!(seen.current().is_none(), "every sync lists the remote");
        // Nor does a sync wait for a list that never comes.
        let started = tokio::time::Instant::now();
        seen.heard(std::time::Duration::from_secs(10)).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// As many namespaces as are kept are.
    #[test]
    fn as_many_namespaces_as_are_kept_are() {
        let seen = SeenNamespaces::new(SyncRule::default().keys_read(), Interner::default());
        seen.apply(&Event::Init).expect("kept");
        for i in 0..MAX_NAMESPACES {
            let shown = Event::InitApply(at(ns(&format!("ns-{i}")), "1"));
            seen.apply(&shown).expect("kept");
        }
        seen.apply(&Event::InitDone).expect("kept");
        assert_eq!(seen.current().map(Iterator::count), Some(MAX_NAMESPACES));
    }
}
