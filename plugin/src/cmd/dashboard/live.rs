//! The mesh as the dashboard shows it, kept current by watches: the primary's namespaces,
//! services, EndpointSlices, pods, MeshClusters and the webhook's Events; per remote, its
//! namespaces (stored sync credentials) and its services, EndpointSlices and pods (view
//! credentials), and whether it answers now. Every watched object is reduced on arrival to
//! what the page needs ([`ClusterFacts`], a namespace's name and labels), so a mesh of
//! thousands of services fits in a few megabytes.
//!
//! Each change marks the state dirty; one task turns it into a JSON snapshot at most every
//! [`SETTLE`] ([`super::snapshot`], with the same judges the CLI uses), and hands it to every
//! open page, framed once as the event that carries it: every page shares the same buffer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{Api, Client, ResourceExt, core::PartialObjectMeta, runtime::watcher};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::MeshCluster,
    labels::SyncRule,
    remote::{self, RemoteOptions},
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cmd::services::{ClusterFacts, Names, Records, wire};
use crate::cmd::status::Unread;
use crate::credentials::TokenExpiry;
use crate::remote_setup::view_secret_name;
use crate::view;

mod followed;
use followed::watch_remote;

use super::reduce::{
    Change, EventKey, EventRow, NsFacts, Reduced, Relist, Staged, WEBHOOK_EVENTS_NAMESPACE,
    note_failure, reduce_event, reduce_namespace, reduce_pod, reduce_service, reduce_slice,
};

/// How long changes may gather before a snapshot is sent: a burst of events (a relist of
/// thousands of objects) becomes one update, and a single change still shows at once.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Watches end and resume as the webhook's do ([`remote::WATCH_SECONDS`]), so that a
/// connection that died silently is found out as soon; their lists end within the webhook's
/// call deadline, however slowly a remote sends them.
const WATCH_CLIENT: RemoteOptions = RemoteOptions {
    connect_timeout: Duration::from_secs(5),
    read_timeout: remote::WATCH_READ_TIMEOUT,
    call_deadline: Some(remote::DEFAULT_CALL_DEADLINE),
    watches_last: true,
    max_answer_line: mesh_core::call_limits::DEFAULT_MAX_ANSWER_LINE,
    // Events of pods, services and EndpointSlices, larger than a namespace's.
    max_answer_elements: 4 * mesh_core::call_limits::DEFAULT_MAX_ANSWER_ELEMENTS,
};

/// A remote client that cannot be built (its Secret missing or unusable) is tried again after
/// [`RETRY_FIRST`], then twice as long each time, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A watch that failed is started again within this, however long it kept failing (kube's
/// own backoff stops growing there too): a page must not lag long behind a cluster back.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long the MeshClusters wait for the Secrets' first list (or its failure) at start, so
/// that a remote is not built before the version of its Secret is known, then again.
const SECRETS_LISTED_WITHIN: Duration = Duration::from_secs(10);

/// Objects per page of a watch's list: a page is held whole while it is read, and a dozen
/// watches list at once.
const LIST_PAGE: u32 = 100;

/// The Events kept, newest first.
pub(super) const MAX_EVENTS: usize = 50;

/// State shared by the watch tasks and the snapshot task.
pub struct Shared {
    live: Mutex<Live>,
    dirty: Notify,
}

impl Shared {
    /// `live`, for the tasks to share; nothing to send yet.
    fn new(live: Live) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(live),
            dirty: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panicking watch task cannot leave the maps half-written in a way that matters to a
        // read-only page: keep serving.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Live)) {
        self.update_if(|live| {
            f(live);
            true
        });
    }

    /// [`Self::update`] that wakes the snapshot task only when `f` says it changed something:
    /// a probe finding what it found before, every 2 s for each remote, must not rebuild and
    /// resend every page's snapshot.
    fn update_if(&self, f: impl FnOnce(&mut Live) -> bool) {
        if f(&mut self.lock()) {
            self.dirty.notify_one();
        }
    }
}

/// Everything watched, reduced.
pub(super) struct Live {
    pub(super) rule: SyncRule,
    /// The names every record points into.
    pub(super) names: Names,
    /// The namespace matrix as JSON, as long as none of what it shows changed (namespaces,
    /// MeshClusters, whether a remote answers): computing it for thousands of namespaces
    /// takes megabytes for a moment, and services change far more often.
    pub(super) matrix: Option<Vec<u8>>,
    /// `None` until listed whole ([`Staged`]).
    pub(super) primary_namespaces: Option<Records<String, NsFacts>>,
    pub(super) primary_facts: ClusterFacts,
    /// What the watches of the primary's workloads say of them.
    pub(super) primary_workloads: WorkloadWatches,
    /// Why the primary's namespaces cannot be read now.
    pub(super) primary_error: Option<Unread>,
    pub(super) clusters: BTreeMap<String, MeshCluster>,
    /// The version of every Secret in the mesh namespace (metadata only): a remote's tasks are
    /// built again when its Secret changes.
    pub(super) secrets: BTreeMap<String, SecretVersion>,
    pub(super) remotes: BTreeMap<String, RemoteLive>,
    /// The last [`RemoteLive::epoch`] given.
    epochs: u64,
    pub(super) events: Records<EventKey, EventRow>,
}

impl Live {
    /// Nothing watched yet.
    pub(super) fn new(rule: SyncRule) -> Self {
        Self {
            rule,
            names: Names::default(),
            matrix: None,
            primary_namespaces: None,
            primary_facts: ClusterFacts {
                pods: Some(Records::default()),
                injection: Some(BTreeMap::new()),
                ..ClusterFacts::default()
            },
            primary_workloads: WorkloadWatches::default(),
            primary_error: None,
            clusters: BTreeMap::new(),
            secrets: BTreeMap::new(),
            remotes: BTreeMap::new(),
            epochs: 0,
            events: Records::default(),
        }
    }
}

/// One remote.
#[derive(Default)]
pub(super) struct RemoteLive {
    /// `None` until first asked; then whether it was read, or why not.
    pub(super) probe: Option<Result<(), Unread>>,
    /// `None` until listed whole ([`Staged`]).
    pub(super) namespaces: Option<Records<String, NsFacts>>,
    /// Why its namespace watch fails now; its namespaces, if any, are what it was.
    pub(super) namespaces_error: Option<Unread>,
    pub(super) view: ViewState,
    /// What the watches of its workloads, with the view credentials, say of them.
    pub(super) workloads: WorkloadWatches,
    pub(super) facts: ClusterFacts,
    pub(super) expiry: Option<TokenExpiry>,
    pub(super) tasks: Tasks,
}

/// A remote's tasks, as one build of them made them.
#[derive(Default)]
pub(super) struct Tasks {
    /// What they were built from.
    pub(super) built: Built,
    /// Which build they are, the one that may write to the remote: a task of an earlier one,
    /// replaced, may not.
    pub(super) epoch: u64,
    pub(super) handles: Vec<JoinHandle<()>>,
}

impl RemoteLive {
    /// Records what a probe found; whether that differs from what the page shows.
    fn record_probe(&mut self, probe: Result<(), Unread>) -> bool {
        let probe = Some(probe);
        let changed = self.probe != probe;
        self.probe = probe;
        changed
    }
}

/// How many watches [`watch_workloads`] starts.
const WORKLOAD_WATCHES: usize = 3;

/// What the watches of one cluster's workloads (services, EndpointSlices, pods) say of them.
#[derive(Debug, Default)]
pub(super) struct WorkloadWatches {
    /// The kinds whose first list ended.
    listed: BTreeSet<String>,
    /// Why a watch fails now, by the kind it watches.
    errors: BTreeMap<String, String>,
}

impl WorkloadWatches {
    /// Records what `change`, of the watch of `kind`, says: whether it fails, whether it
    /// listed.
    pub(super) fn record<K>(&mut self, kind: &str, change: &Change<K>) {
        match change.answered() {
            Some(Err(e)) => drop(self.errors.insert(kind.to_owned(), e.error.clone())),
            Some(Ok(())) => drop(self.errors.remove(kind)),
            None => {}
        }
        if matches!(change, Change::Listed) && !self.listed.contains(kind) {
            self.listed.insert(kind.to_owned());
        }
    }

    /// Why its workloads are not current: a watch failing.
    pub(super) fn error(&self) -> Option<&str> {
        self.errors.values().next().map(String::as_str)
    }

    /// Whether every watch listed once: until then a list is read a page at a time, and
    /// what it has not reached yet would look absent (a service without endpoints).
    pub(super) fn listed(&self) -> bool {
        self.listed.len() == WORKLOAD_WATCHES
    }
}

#[cfg(test)]
impl WorkloadWatches {
    /// Every watch listed.
    pub(super) fn all_listed() -> Self {
        let mut watches = Self::default();
        for kind in ["Service", "EndpointSlice", "Pod"] {
            watches.record(kind, &Change::<wire::Service>::Listed);
        }
        watches
    }
}

/// A Secret's version, as its metadata says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SecretVersion {
    pub(super) uid: Option<String>,
    pub(super) resource_version: Option<String>,
}

impl SecretVersion {
    fn of(meta: &kube::core::ObjectMeta) -> Self {
        Self {
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
        }
    }
}

/// What a remote's tasks are built from: its MeshCluster's spec (uid and generation) and the
/// versions of the Secrets its clients are made of (the stored one, `spec.secretName`, and
/// the view one); `None` for a Secret not there (or not known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Built {
    pub(super) cluster_uid: Option<String>,
    pub(super) generation: Option<i64>,
    pub(super) secret: Option<SecretVersion>,
    pub(super) view_secret: Option<SecretVersion>,
}

impl Built {
    pub(super) fn of(cluster: &MeshCluster, secrets: &BTreeMap<String, SecretVersion>) -> Self {
        Self {
            cluster_uid: cluster.metadata.uid.clone(),
            generation: cluster.metadata.generation,
            secret: secrets.get(&cluster.spec.secret_name).cloned(),
            view_secret: secrets.get(&view_secret_name(&cluster.name_any())).cloned(),
        }
    }

    /// Whether it is the same cluster as `other`, spec and all (its Secrets aside).
    fn same_cluster(&self, other: &Self) -> bool {
        self.cluster_uid == other.cluster_uid && self.generation == other.generation
    }
}

/// Whether a remote whose tasks were built from `old` (`None`: none were) must have them built
/// again for `new`: a Secret rotated in place (a new token, the old one revoked) keeps its name
/// but not its resourceVersion, and a watch keeps the client it started with for ever.
pub(super) fn must_rebuild(old: Option<&Built>, new: &Built) -> bool {
    old != Some(new)
}

/// How long to wait before building a client again after `failures` failures in a row.
pub(super) fn retry_after(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(RETRY_MAX)
}

/// A remote, as one build of its tasks knows it.
#[derive(Clone, Debug)]
struct Which {
    name: String,
    epoch: u64,
}

impl Live {
    /// The remote `which` names, unless its tasks were built again since.
    fn remote(&mut self, which: &Which) -> Option<&mut RemoteLive> {
        remote_of(&mut self.remotes, which)
    }
}

fn remote_of<'a>(
    remotes: &'a mut BTreeMap<String, RemoteLive>,
    which: &Which,
) -> Option<&'a mut RemoteLive> {
    remotes
        .get_mut(&which.name)
        .filter(|r| r.tasks.epoch == which.epoch)
}

impl Drop for RemoteLive {
    fn drop(&mut self) {
        for task in &self.tasks.handles {
            task.abort();
        }
    }
}

/// Whether a remote's services can be read.
#[derive(Clone, Debug, Default)]
pub(super) enum ViewState {
    #[default]
    Pending,
    /// None; why its Istio remote secret was not read, when the caller was refused it.
    NoCredentials {
        istio_unread: Option<String>,
    },
    Failed(String),
    Read(view::Source),
}

/// Applies a watch of `api` to the shared state through `on`, forever ([`follow_watches`]).
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    on: impl FnMut(&mut Live, Change<K>) + Send,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    follow_watches(move || watcher(api.clone(), config.clone()), shared, on).await;
}

/// Applies the events of the watches `watch` starts to the shared state through `on`,
/// forever. A watch that fails is started anew, a relist, after a pause that grows while it
/// keeps failing: kube's watcher would resume it without a word once the cluster answers
/// again (a watch resumed from its resourceVersion emits nothing), and the failure would stay
/// on the page until some object changed. The relist's objects, or its end, say it answers.
async fn follow_watches<K, S>(
    mut watch: impl FnMut() -> S + Send,
    shared: Arc<Shared>,
    mut on: impl FnMut(&mut Live, Change<K>) + Send,
) where
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    let mut failures = 0;
    loop {
        let stream = watch();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(watcher::Event::Init) => Change::Restart,
                Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => Change::Apply(o),
                Ok(watcher::Event::Delete(o)) => Change::Delete(o),
                Ok(watcher::Event::InitDone) => Change::Listed,
                Err(e) => Change::failed(e),
            };
            let answered = change.answered().map(|a| a.is_ok());
            shared.update(|live| on(live, change));
            match answered {
                Some(true) => failures = 0,
                Some(false) => {
                    failures += 1;
                    break;
                }
                None => {}
            }
        }
        tokio::time::sleep(watch_retry_after(failures)).await;
    }
}

/// How long to wait before a watch is started again after `failures` failures in a row: as
/// [`retry_after`], up to [`WATCH_RETRY_MAX`].
fn watch_retry_after(failures: u32) -> Duration {
    retry_after(failures).min(WATCH_RETRY_MAX)
}

/// Watches the services, EndpointSlices and pods of one cluster, the primary (`which`
/// `None`) or a remote, into its facts in the live state.
fn watch_workloads(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<Which>,
) -> [JoinHandle<()>; WORKLOAD_WATCHES] {
    [
        watch_records(
            client,
            shared,
            which.clone(),
            |facts| &mut facts.services,
            reduce_service,
        ),
        watch_records(
            client,
            shared,
            which.clone(),
            |facts| &mut facts.slices,
            reduce_slice,
        ),
        watch_records(
            client,
            shared,
            which,
            |facts| facts.pods.get_or_insert_with(Records::default),
            reduce_pod,
        ),
    ]
}

/// Watches every `K` of one cluster into the records `records` picks from its facts, each
/// object reduced by `reduce`; what a relist no longer finds is dropped.
fn watch_records<K, Q, V>(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<Which>,
    records: fn(&mut ClusterFacts) -> &mut Records<Q, V>,
    reduce: fn(&mut Names, &K) -> Reduced<Q, V>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    Q: Ord + Clone + Send + 'static,
    V: 'static,
{
    watch_facts::<K>(client, shared, which, on_records(records, reduce))
}

/// How a change of a `K` is applied to the records `records` picks from a cluster's facts
/// ([`watch_records`]).
fn on_records<K, Q, V>(
    records: fn(&mut ClusterFacts) -> &mut Records<Q, V>,
    reduce: fn(&mut Names, &K) -> Reduced<Q, V>,
) -> impl FnMut(&mut Names, &mut ClusterFacts, Change<K>) + Send + 'static
where
    K: kube::Resource + 'static,
    Q: Ord + Clone + Send + 'static,
    V: 'static,
{
    let mut relist = Relist::default();
    move |names, facts, change| relist.apply(records(facts), change, |o| reduce(names, o))
}

/// Watches every `K` of one cluster: `on` gets the names every record points into, the facts
/// of the cluster `which` (the primary when `None`) and each change; nothing once a remote is
/// gone or its tasks were built again. The watch records in the cluster's
/// [`WorkloadWatches`] whether it fails and whether it listed.
fn watch_facts<K>(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<Which>,
    on: impl FnMut(&mut Names, &mut ClusterFacts, Change<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(follow(
        Api::<K>::all(client.clone()),
        remote::watch_config().page_size(LIST_PAGE),
        shared.clone(),
        on_facts(which, on),
    ))
}

/// How a change of a `K` of the cluster `which` is applied ([`watch_facts`]).
fn on_facts<K>(
    which: Option<Which>,
    mut on: impl FnMut(&mut Names, &mut ClusterFacts, Change<K>) + Send + 'static,
) -> impl FnMut(&mut Live, Change<K>) + Send + 'static
where
    K: kube::Resource + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    move |live, change| {
        let Live {
            names,
            primary_facts,
            primary_workloads,
            remotes,
            ..
        } = live;
        let (facts, watches) = match &which {
            None => (primary_facts, primary_workloads),
            Some(which) => {
                let Some(r) = remote_of(remotes, which) else {
                    return;
                };
                (&mut r.facts, &mut r.workloads)
            }
        };
        watches.record(&kind, &change);
        on(names, facts, change);
    }
}

/// What the server reads: the latest snapshot, and pages of services on request.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Bytes>,
}

impl Feed {
    /// The latest snapshot, framed as an event (empty until the first one), and each next.
    pub fn snapshots(&self) -> watch::Receiver<Bytes> {
        self.snapshots.clone()
    }

    /// The services whose `namespace/name` contains `filter`, `limit` of them from `offset`,
    /// as JSON (the `services` of a snapshot); `None` before the first snapshot.
    pub fn services_json(&self, filter: &str, offset: usize, limit: usize) -> Option<Bytes> {
        if self.snapshots.borrow().is_empty() {
            return None;
        }
        Some(self.shared.lock().services_json(filter, offset, limit))
    }
}

#[cfg(test)]
impl Feed {
    /// The feed of a mesh with nothing in it, its first snapshot sent, and no watch: the
    /// server's tests send it more through the sender.
    pub(super) fn of_empty_mesh() -> (Self, watch::Sender<Bytes>) {
        let mut live = Live::new(SyncRule::default());
        // Sent, as `start` sends it: a channel's first value counts as seen.
        let (tx, rx) = watch::channel(Bytes::new());
        tx.send_replace(live.snapshot());
        let shared = Shared::new(live);
        let feed = Self {
            shared,
            snapshots: rx,
        };
        (feed, tx)
    }
}

/// How a change of the primary's namespaces is applied: to its rows, and to whether the
/// primary can be read ([`Live::primary_error`]). They are not known until listed whole
/// ([`Staged`]).
fn on_primary_namespaces() -> impl FnMut(&mut Live, Change<wire::Namespace>) + Send {
    let mut staged = Staged::default();
    move |live, change| {
        live.matrix = None;
        note_failure(&mut live.primary_error, &change);
        staged.apply(&mut live.primary_namespaces, change, reduce_namespace);
    }
}

impl Live {
    /// Whether what the page shows of the primary's namespaces is what they are: listed
    /// whole, or not readable (the page says why). Every remote is judged against them:
    /// half listed, the remotes' labels on the namespaces not reached yet look drifted.
    fn primary_known(&self) -> bool {
        self.primary_namespaces.is_some() || self.primary_error.is_some()
    }
}

/// Starts every watch of the primary and of the remotes it lists; returns the feed of
/// snapshots, the first one once the primary's namespaces are listed (or found unreadable).
pub async fn start(primary: Client, rule: SyncRule) -> Feed {
    let shared = Shared::new(Live::new(rule));
    let (tx, rx) = watch::channel(Bytes::new());

    // The primary's namespaces: the matrix's rows and the primary's injection.
    tokio::spawn(follow(
        Api::<wire::Namespace>::all(primary.clone()),
        remote::watch_config().page_size(LIST_PAGE),
        shared.clone(),
        on_primary_namespaces(),
    ));
    for task in watch_workloads(&primary, &shared, None) {
        drop(task);
    }
    let mut relist = Relist::default();
    tokio::spawn(follow(
        Api::<Event>::namespaced(primary.clone(), WEBHOOK_EVENTS_NAMESPACE),
        remote::watch_config(),
        shared.clone(),
        move |live, change| {
            relist.apply(&mut live.events, change, reduce_event);
            // Oldest first out: the page shows the latest only.
            while live.events.len() > MAX_EVENTS * 4 {
                let oldest = live
                    .events
                    .iter()
                    .min_by(|a, b| a.1.time.cmp(&b.1.time))
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => live.events.remove(&k),
                    None => break,
                };
            }
        },
    ));

    // The versions of the Secrets in the mesh namespace (metadata only, never their data):
    // a remote's watches keep the client they started with, so a Secret replaced under them
    // (rotate, a renewed token) has them built again.
    let (secrets_listed, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut secrets_listed = Some(secrets_listed);
    let (client, remotes_shared) = (primary.clone(), shared.clone());
    let mut listed: Option<BTreeMap<String, SecretVersion>> = None;
    tokio::spawn(follow(
        Api::<PartialObjectMeta<Secret>>::namespaced(primary.clone(), MESH_NAMESPACE),
        remote::watch_config(),
        shared.clone(),
        move |live, change: Change<PartialObjectMeta<Secret>>| {
            match change {
                Change::Restart => listed = Some(BTreeMap::new()),
                Change::Apply(secret) => {
                    let version = SecretVersion::of(&secret.metadata);
                    let name = secret.name_any();
                    match &mut listed {
                        // Changed while listed: the whole list is applied at its end.
                        Some(listed) => drop(listed.insert(name, version)),
                        None => drop(live.secrets.insert(name, version)),
                    }
                }
                Change::Delete(secret) => drop(live.secrets.remove(&secret.name_any())),
                Change::Listed => {
                    if let Some(listed) = listed.take() {
                        live.secrets = listed;
                    }
                    if let Some(tx) = secrets_listed.take() {
                        let _ = tx.send(());
                    }
                }
                // Not readable (no right to list them): remotes are built all the same, and
                // again only when their MeshCluster changes.
                Change::Failed(_) => {
                    if let Some(tx) = secrets_listed.take() {
                        let _ = tx.send(());
                    }
                    return;
                }
            }
            if listed.is_none() {
                reconcile_all(live, &client, &remotes_shared);
            }
        },
    ));
    let _ = tokio::time::timeout(SECRETS_LISTED_WITHIN, listed_rx).await;

    // MeshClusters: their status, and the watches of each remote while it is attached.
    let clusters_shared = shared.clone();
    let client = primary.clone();
    let mut listed: Option<BTreeSet<String>> = None;
    tokio::spawn(follow(
        Api::<MeshCluster>::all(primary.clone()),
        remote::watch_config(),
        shared.clone(),
        move |live, change| match change {
            Change::Restart => listed = Some(BTreeSet::new()),
            Change::Apply(mut cluster) => {
                live.matrix = None;
                cluster.metadata.managed_fields = None;
                let name = cluster.name_any();
                if let Some(listed) = &mut listed {
                    listed.insert(name.clone());
                }
                live.clusters.insert(name.clone(), cluster);
                reconcile(live, &client, &clusters_shared, &name);
            }
            Change::Delete(cluster) => {
                live.matrix = None;
                live.clusters.remove(&cluster.name_any());
                live.remotes.remove(&cluster.name_any());
            }
            Change::Listed => {
                live.matrix = None;
                if let Some(listed) = listed.take() {
                    live.clusters.retain(|n, _| listed.contains(n));
                    live.remotes.retain(|n, _| listed.contains(n));
                }
            }
            Change::Failed(_) => {}
        },
    ));

    let feed = Feed {
        shared: shared.clone(),
        snapshots: rx,
    };
    tokio::spawn(send_snapshots(shared, tx));
    feed
}

/// Sends a snapshot after changes, at most one per [`SETTLE`], and never more than a fifth of
/// the time: while thousands of objects are listed, each snapshot of a large mesh takes a
/// while. The first waits until the primary's namespaces are known ([`Live::primary_known`]).
/// Ends when no one can receive them any more.
async fn send_snapshots(shared: Arc<Shared>, tx: watch::Sender<Bytes>) {
    let mut took = Duration::ZERO;
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(SETTLE.max(took * 4)).await;
        let first = tx.borrow().is_empty();
        let started = std::time::Instant::now();
        let mut live = shared.lock();
        if first && !live.primary_known() {
            continue;
        }
        let framed = live.snapshot();
        drop(live);
        took = started.elapsed();
        if tx.send(framed).is_err() {
            return;
        }
    }
}

/// [`reconcile`] of every MeshCluster.
fn reconcile_all(live: &mut Live, primary: &Client, shared: &Arc<Shared>) {
    let names: Vec<String> = live.clusters.keys().cloned().collect();
    for name in &names {
        reconcile(live, primary, shared, name);
    }
}

/// Builds the tasks of the remote `name` (again) unless they were built from its MeshCluster
/// and Secrets as they are now ([`must_rebuild`]). What was read of it is kept while the new
/// tasks list it again, unless the MeshCluster itself changed.
fn reconcile(live: &mut Live, primary: &Client, shared: &Arc<Shared>, name: &str) {
    let Some(cluster) = live.clusters.get(name) else {
        return;
    };
    let wanted = Built::of(cluster, &live.secrets);
    let old = live.remotes.get(name).map(|r| &r.tasks.built);
    if !must_rebuild(old, &wanted) {
        return;
    }
    let same_cluster = old.is_some_and(|old| old.same_cluster(&wanted));
    live.epochs += 1;
    let which = Which {
        name: name.to_owned(),
        epoch: live.epochs,
    };
    let tasks = watch_remote(primary, shared, cluster, &which);
    live.matrix = None;
    let remote = live.remotes.entry(name.to_owned()).or_default();
    if !same_cluster {
        // Dropping it ends its tasks.
        *remote = RemoteLive::default();
    }
    for task in remote.tasks.handles.drain(..) {
        task.abort();
    }
    remote.tasks = Tasks {
        built: wanted,
        epoch: which.epoch,
        handles: tasks,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::services::PRIMARY;
    use crate::mesh_state::fixtures::cluster;
    use mesh_core::fixtures::labelled;

    /// The labels of a namespace whose pods get sidecars.
    pub(super) const INJECTED: [(&str, &str); 1] = [("istio-injection", "enabled")];

    /// A namespace as a watch gets it.
    pub(super) fn namespace(name: &str, labels: &[(&str, &str)]) -> wire::Namespace {
        wire::Namespace {
            metadata: labelled(name, labels).metadata,
        }
    }

    /// The primary's namespaces `a` and `b` listed, both injected, and the remote `east`
    /// attached, answering, its workloads read with view credentials and nothing listed of
    /// it yet; and `east` as the one build of its tasks that may write there.
    pub(super) fn with_east() -> (Live, Which) {
        let mut live = Live::new(SyncRule::default());
        let mut primary = on_primary_namespaces();
        primary(&mut live, Change::Restart);
        for name in ["a", "b"] {
            primary(&mut live, Change::Apply(namespace(name, &INJECTED)));
        }
        primary(&mut live, Change::Listed);
        live.clusters.insert(
            "east".to_owned(),
            cluster("east", "https://10.0.0.1:6443", "2026-12-01T00:00:00Z"),
        );
        let east = Which {
            name: "east".to_owned(),
            epoch: 1,
        };
        let mut remote = RemoteLive::default();
        remote.probe = Some(Ok(()));
        remote.view = ViewState::Read(view::Source::View);
        remote.tasks.epoch = east.epoch;
        live.remotes.insert(east.name.clone(), remote);
        (live, east)
    }

    /// The state of the services column of `name`.
    fn services_column(live: &mut Live, name: &str) -> serde_json::Value {
        let json: serde_json::Value =
            serde_json::from_slice(&live.services_json("", 0, 10)).unwrap();
        let columns = json["clusters"].as_array().unwrap();
        let column = columns.iter().find(|c| c["name"] == name);
        column.unwrap_or_else(|| panic!("no {name} in {json}"))["state"].clone()
    }

    /// A remote's services list, read a page at a time, was shown as read from its first
    /// page on: every service it had not reached yet had no endpoints there.
    #[test]
    fn a_remote_whose_workloads_are_half_listed_is_pending() {
        let (mut live, east) = with_east();
        let mut services = on_facts(
            Some(east.clone()),
            on_records(|facts| &mut facts.services, reduce_service),
        );
        let mut shop = wire::Service::default();
        shop.metadata.namespace = Some("a".to_owned());
        shop.metadata.name = Some("shop".to_owned());
        services(&mut live, Change::Restart);
        services(&mut live, Change::Apply(shop));
        assert_eq!(services_column(&mut live, "east"), "pending");
        services(&mut live, Change::Listed);
        assert_eq!(
            services_column(&mut live, "east"),
            "pending",
            "its EndpointSlices and pods are not listed yet"
        );
        let mut slices = on_facts(
            Some(east.clone()),
            on_records(|facts| &mut facts.slices, reduce_slice),
        );
        let mut pods = on_facts(
            Some(east),
            on_records(
                |facts| facts.pods.get_or_insert_with(Records::default),
                reduce_pod,
            ),
        );
        for listed in [Change::Restart, Change::Listed] {
            slices(&mut live, listed);
        }
        for listed in [Change::Restart, Change::Listed] {
            pods(&mut live, listed);
        }
        assert_eq!(services_column(&mut live, "east"), "read");
    }

    /// An empty mesh whose snapshots are sent as they change, the channel they go to, and the
    /// task sending them.
    fn sending_snapshots() -> (Arc<Shared>, watch::Receiver<Bytes>, JoinHandle<()>) {
        let shared = Shared::new(Live::new(SyncRule::default()));
        let (tx, rx) = watch::channel(Bytes::new());
        let task = tokio::spawn(send_snapshots(shared.clone(), tx));
        (shared, rx, task)
    }

    /// The last snapshot `rx` got, as the page reads it.
    fn sent(rx: &watch::Receiver<Bytes>) -> serde_json::Value {
        serde_json::from_slice(&super::super::snapshot::json_of(&rx.borrow())).unwrap()
    }

    /// The first snapshot showed the primary's namespaces as far as their list had gone:
    /// the remotes' labels on the others looked drifted.
    #[tokio::test(start_paused = true)]
    async fn the_first_snapshot_waits_for_the_primarys_namespaces() {
        let (shared, rx, task) = sending_snapshots();
        let mut primary = on_primary_namespaces();
        let mut apply = |change| shared.update(|live| primary(live, change));
        apply(Change::Restart);
        apply(Change::Apply(namespace("a", &INJECTED)));
        tokio::time::sleep(SETTLE * 4).await;
        assert!(rx.borrow().is_empty(), "a snapshot of half a list");
        apply(Change::Listed);
        tokio::time::sleep(SETTLE * 4).await;
        let json = sent(&rx);
        assert_eq!(json["matrix"]["namespaces"][0]["name"], "a", "{json}");
        task.abort();
    }

    /// A primary whose namespaces cannot be listed (no right to) is shown as such at once.
    #[tokio::test(start_paused = true)]
    async fn a_primary_that_cannot_be_listed_is_shown_so() {
        let (shared, rx, task) = sending_snapshots();
        let mut primary = on_primary_namespaces();
        let refused = Unread {
            error: "namespaces is forbidden".to_owned(),
            unanswered: false,
        };
        shared.update(|live| primary(live, Change::Restart));
        shared.update(|live| primary(live, Change::Failed(refused)));
        tokio::time::sleep(SETTLE * 4).await;
        let json = sent(&rx);
        assert_eq!(json["primaryError"], "namespaces is forbidden", "{json}");
        task.abort();
    }

    fn version(uid: &str, resource_version: &str) -> SecretVersion {
        SecretVersion {
            uid: Some(uid.to_owned()),
            resource_version: Some(resource_version.to_owned()),
        }
    }

    /// A MeshCluster `east` of this generation, and the Secrets of the mesh namespace.
    fn built(generation: i64, secrets: &[(&str, SecretVersion)]) -> Built {
        let mut east = cluster("east", "https://10.0.0.1:6443", "2026-12-01T00:00:00Z");
        east.metadata.uid = Some("east-uid".to_owned());
        east.metadata.generation = Some(generation);
        let secrets = secrets
            .iter()
            .map(|(name, v)| ((*name).to_owned(), v.clone()))
            .collect();
        Built::of(&east, &secrets)
    }

    #[test]
    fn a_remote_is_built_again_when_its_secret_or_its_cluster_changes() {
        let stored = [("cluster-east", version("s-1", "100"))];
        let now = built(1, &stored);
        assert!(must_rebuild(None, &now), "never built");
        assert!(
            !must_rebuild(Some(&now), &built(1, &stored)),
            "nothing changed"
        );
        // Another cluster's Secret, or one it does not use, changed: nothing to do.
        let others = [stored[0].clone(), ("cluster-west", version("w-1", "105"))];
        assert!(!must_rebuild(Some(&now), &built(1, &others)));
        // `kubectl mesh rotate east`: the same Secret, a new token, a new resourceVersion.
        let rotated = built(1, &[("cluster-east", version("s-1", "101"))]);
        assert!(must_rebuild(Some(&now), &rotated));
        // Deleted and created again (even at an equal version), or deleted.
        assert!(must_rebuild(
            Some(&now),
            &built(1, &[("cluster-east", version("s-2", "100"))])
        ));
        assert!(must_rebuild(Some(&now), &built(1, &[])));
        // Created after the remote was built without it (missing at start).
        assert!(must_rebuild(Some(&built(1, &[])), &now));
        // The MeshCluster's spec changed (server, CA, Secret name: a new generation).
        assert!(must_rebuild(Some(&now), &built(2, &stored)));
        // Its view Secret created or rotated.
        let viewed = [
            stored[0].clone(),
            ("cluster-east-view", version("v-1", "102")),
        ];
        assert!(must_rebuild(Some(&now), &built(1, &viewed)));
        let view_rotated = [
            stored[0].clone(),
            ("cluster-east-view", version("v-1", "103")),
        ];
        assert!(must_rebuild(
            Some(&built(1, &viewed)),
            &built(1, &view_rotated)
        ));
        // What was read of it is kept over a rotation, not over a change of its cluster.
        assert!(now.same_cluster(&rotated));
        assert!(!now.same_cluster(&built(2, &stored)));
    }

    /// `events`, then nothing, as kube's watcher gives them: after a failure it resumes the
    /// watch from its resourceVersion without an event, and a cluster that answers again
    /// where nothing changes says nothing more.
    fn scripted<K>(
        events: Vec<watcher::Result<watcher::Event<K>>>,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> {
        futures::stream::iter(events).chain(futures::stream::pending())
    }

    /// The primary's services, EndpointSlices or pods refused (no right to list them) were
    /// not recorded: the page showed its services column as read, each service with no
    /// endpoints there.
    #[tokio::test(start_paused = true)]
    async fn a_primary_whose_services_cannot_be_read_is_not_shown_read() {
        let shared = Shared::new(Live::new(SyncRule::default()));
        let forbidden = || {
            let status = kube::core::Status::failure(
                "services is forbidden: User \"dev\" cannot list resource \"services\"",
                "Forbidden",
            )
            .with_code(403);
            Err(watcher::Error::InitialListFailed(kube::Error::Api(
                status.boxed(),
            )))
        };
        // Refused, then listed once given the right.
        let mut started = 0;
        let watches = move || {
            started += 1;
            scripted(match started {
                1 => vec![Ok(watcher::Event::Init), forbidden()],
                _ => vec![Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)],
            })
        };
        let services = on_facts(
            None,
            on_records(|facts| &mut facts.services, reduce_service),
        );
        let task = tokio::spawn(follow_watches(watches, shared.clone(), services));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let json: serde_json::Value =
            serde_json::from_slice(&shared.lock().services_json("", 0, 10)).unwrap();
        let column = &json["clusters"][0];
        assert_eq!(column["name"], PRIMARY, "{json}");
        assert_eq!(column["state"], "failed", "{column}");
        let error = column["error"].as_str().unwrap_or_default();
        assert!(error.contains("services is forbidden"), "{column}");
        tokio::time::sleep(watch_retry_after(1) + Duration::from_millis(10)).await;
        let state = services_column(&mut shared.lock(), PRIMARY);
        assert_eq!(
            state, "pending",
            "listed, failing no more; its EndpointSlices and pods are not listed yet"
        );
        task.abort();
    }

    /// The page said the primary could not be read until a namespace changed, long after
    /// the primary answered again.
    #[tokio::test(start_paused = true)]
    async fn a_primary_that_answers_again_is_read_again_though_nothing_changed() {
        let shared = Shared::new(Live::new(SyncRule::default()));
        let listed = || {
            let mut shop = wire::Namespace::default();
            shop.metadata.name = Some("shop".to_owned());
            vec![
                Ok(watcher::Event::Init),
                Ok(watcher::Event::InitApply(shop)),
                Ok(watcher::Event::InitDone),
            ]
        };
        let timed_out = || {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out");
            Err(watcher::Error::WatchFailed(kube::Error::Service(Box::new(
                e,
            ))))
        };
        // The first watch lists, then its connection times out (a frozen primary); every
        // watch after it lists the same namespaces.
        let mut started = 0;
        let watches = move || {
            started += 1;
            let mut events = listed();
            if started == 1 {
                events.push(timed_out());
            }
            scripted(events)
        };
        let task = tokio::spawn(follow_watches(
            watches,
            shared.clone(),
            on_primary_namespaces(),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let error = shared.lock().primary_error.clone();
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.unanswered && e.error.contains("read timed out")),
            "{error:?}"
        );
        tokio::time::sleep(watch_retry_after(1) + Duration::from_millis(10)).await;
        {
            let live = shared.lock();
            assert_eq!(live.primary_error, None, "the primary answers again");
            let names: Vec<&String> = live
                .primary_namespaces
                .iter()
                .flat_map(Records::keys)
                .collect();
            assert_eq!(names, ["shop"]);
        }
        task.abort();
    }

    /// Each remote is probed every 2 s: only a probe that finds something else wakes a
    /// snapshot, which every open page would receive.
    #[tokio::test]
    async fn a_probe_that_finds_what_it_found_wakes_no_snapshot() {
        let mut remote = RemoteLive::default();
        assert!(remote.record_probe(Ok(())));
        assert!(!remote.record_probe(Ok(())));
        let refused = Unread {
            error: "forbidden".into(),
            unanswered: false,
        };
        assert!(remote.record_probe(Err(refused)));
        let shared = Shared {
            live: Mutex::new(Live::new(SyncRule::default())),
            dirty: Notify::new(),
        };
        let woken = || tokio::time::timeout(Duration::from_millis(50), shared.dirty.notified());
        shared.update_if(|_| false);
        assert!(woken().await.is_err(), "woken by no change");
        shared.update_if(|_| true);
        assert!(woken().await.is_ok(), "not woken by a change");
    }

    #[test]
    fn a_failed_watch_is_started_again_less_and_less_often_up_to_a_limit() {
        let waits: Vec<u64> = (1..=7).map(|n| watch_retry_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_client_that_cannot_be_built_is_tried_again_less_and_less_often() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }
}
