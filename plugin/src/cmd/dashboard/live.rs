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
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::MeshCluster,
    failure,
    labels::SyncRule,
    remote::{self, RemoteOptions},
};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cmd::list::expiry_of;
use crate::cmd::services::{self, ClusterFacts, Names, Records, wire};
use crate::credentials::TokenExpiry;
use crate::view;

use super::reduce::{Change, EventKey, NsFacts, Relist, reduce_event, reduce_namespace};

/// How long changes may gather before a snapshot is sent: a burst of events (a relist of
/// thousands of objects) becomes one update, and a single change still shows at once.
pub const SETTLE: Duration = Duration::from_millis(250);

/// How often each remote is asked whether it answers, and how long it has to answer.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Every this many probes (a minute), the stored token's expiry is read again.
const EXPIRY_EVERY_PROBES: u64 = 30;

/// Watches end and resume as the webhook's do ([`remote::WATCH_SECONDS`]), so that a
/// connection that died silently is found out as soon.
const WATCH_CLIENT: RemoteOptions = RemoteOptions {
    connect_timeout: Duration::from_secs(5),
    read_timeout: remote::WATCH_READ_TIMEOUT,
    call_deadline: None,
    max_answer_line: mesh_core::call_limits::DEFAULT_MAX_ANSWER_LINE,
};

/// Objects per page of a watch's list: a page is held whole while it is read, and a dozen
/// watches list at once.
const LIST_PAGE: u32 = 100;

/// The Events kept, newest first.
pub(super) const MAX_EVENTS: usize = 50;

/// The controller name the webhook records its Events with.
pub(super) const WEBHOOK_CONTROLLER: &str = "mesh-webhook";

/// State shared by the watch tasks and the snapshot task.
pub struct Shared {
    live: Mutex<Live>,
    dirty: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panicking watch task cannot leave the maps half-written in a way that matters to a
        // read-only page: keep serving.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.lock());
        self.dirty.notify_one();
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
    pub(super) primary_namespaces: Records<String, NsFacts>,
    pub(super) primary_facts: ClusterFacts,
    pub(super) primary_error: Option<String>,
    pub(super) clusters: BTreeMap<String, MeshCluster>,
    pub(super) remotes: BTreeMap<String, RemoteLive>,
    pub(super) events: Records<EventKey, EventRow>,
}

impl Live {
    /// Nothing watched yet.
    pub(super) fn new(rule: SyncRule) -> Self {
        Self {
            rule,
            names: Names::default(),
            matrix: None,
            primary_namespaces: Records::default(),
            primary_facts: ClusterFacts {
                pods: Some(Records::default()),
                injection: Some(BTreeMap::new()),
                ..ClusterFacts::default()
            },
            primary_error: None,
            clusters: BTreeMap::new(),
            remotes: BTreeMap::new(),
            events: Records::default(),
        }
    }
}

/// One remote.
#[derive(Default)]
pub(super) struct RemoteLive {
    /// `None` until first asked; then whether it answered, or why not.
    pub(super) probe: Option<Result<(), String>>,
    pub(super) namespaces: Option<Records<String, NsFacts>>,
    pub(super) namespaces_error: Option<String>,
    pub(super) view: ViewState,
    pub(super) facts: ClusterFacts,
    pub(super) expiry: Option<TokenExpiry>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for RemoteLive {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a remote's services can be read.
#[derive(Clone, Debug, Default)]
pub(super) enum ViewState {
    #[default]
    Pending,
    NoCredentials,
    Failed(String),
    Read(view::Source),
}

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

/// Applies a watch of `api` to the shared state through `on`, forever (the watcher retries
/// with backoff).
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    mut on: impl FnMut(&mut Live, Change<K>) + Send,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(watcher::Event::Init) => Change::Restart,
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => Change::Apply(o),
            Ok(watcher::Event::Delete(o)) => Change::Delete(o),
            Ok(watcher::Event::InitDone) => Change::Listed,
            Err(e) => Change::Failed(failure::error_chain(&e)),
        };
        shared.update(|live| on(live, change));
    }
}

/// The facts of the primary (`None`) or of the remote `which`.
fn facts_of<'a>(
    primary: &'a mut ClusterFacts,
    remotes: &'a mut BTreeMap<String, RemoteLive>,
    which: Option<&str>,
) -> Option<&'a mut ClusterFacts> {
    match which {
        None => Some(primary),
        Some(name) => remotes.get_mut(name).map(|r| &mut r.facts),
    }
}

/// Watches the services, EndpointSlices and pods of one cluster, the primary (`which`
/// `None`) or a remote, into its facts in the live state.
fn watch_workloads(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<String>,
) -> Vec<JoinHandle<()>> {
    vec![
        watch_records(
            client,
            shared,
            which.clone(),
            |facts| &mut facts.services,
            services::extract_service,
        ),
        watch_records(
            client,
            shared,
            which.clone(),
            |facts| &mut facts.slices,
            services::extract_slice,
        ),
        watch_records(
            client,
            shared,
            which,
            |facts| facts.pods.get_or_insert_with(Records::default),
            services::extract_pod,
        ),
    ]
}

/// Watches every `K` of one cluster into the records `records` picks from its facts, each
/// object reduced by `extract`; what a relist no longer finds is dropped.
fn watch_records<K, Q, V>(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<String>,
    records: fn(&mut ClusterFacts) -> &mut Records<Q, V>,
    extract: fn(&mut Names, &K) -> Option<(Q, V)>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    Q: Ord + Clone + Send + 'static,
    V: 'static,
{
    let mut relist = Relist::default();
    watch_facts::<K>(client, shared, which, move |names, facts, change| {
        relist.apply(records(facts), change, |o| extract(names, o));
    })
}

/// Watches every `K` of one cluster: `on` gets the names every record points into, the facts
/// of the cluster `which` (the primary when `None`) and each change; nothing once a remote is
/// gone.
fn watch_facts<K>(
    client: &Client,
    shared: &Arc<Shared>,
    which: Option<String>,
    mut on: impl FnMut(&mut Names, &mut ClusterFacts, Change<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(follow(
        Api::<K>::all(client.clone()),
        remote::watch_config().page_size(LIST_PAGE),
        shared.clone(),
        move |live, change| {
            let Live {
                names,
                primary_facts,
                remotes,
                ..
            } = live;
            if let Some(facts) = facts_of(primary_facts, remotes, which.as_deref()) {
                on(names, facts, change);
            }
        },
    ))
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

/// Starts every watch of the primary and of the remotes it lists; returns the feed of
/// snapshots, the first one once the primary's namespaces are listed.
pub async fn start(primary: Client, rule: SyncRule) -> Feed {
    let shared = Arc::new(Shared {
        live: Mutex::new(Live::new(rule)),
        dirty: Notify::new(),
    });
    let (tx, rx) = watch::channel(Bytes::new());

    // The primary's namespaces: the matrix's rows and the primary's injection.
    let mut relist = Relist::default();
    tokio::spawn(follow(
        Api::<wire::Namespace>::all(primary.clone()),
        watcher::Config::default().page_size(LIST_PAGE),
        shared.clone(),
        move |live, change| {
            live.matrix = None;
            if let Change::Failed(e) = &change {
                live.primary_error = Some(e.clone());
            } else {
                live.primary_error = None;
            }
            relist.apply(&mut live.primary_namespaces, change, reduce_namespace);
        },
    ));
    for task in watch_workloads(&primary, &shared, None) {
        drop(task);
    }
    let mut relist = Relist::default();
    tokio::spawn(follow(
        Api::<Event>::all(primary.clone()),
        watcher::Config::default(),
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

    // MeshClusters: their status, and the watches of each remote while it is attached.
    let clusters_shared = shared.clone();
    let client = primary.clone();
    let mut listed: Option<BTreeSet<String>> = None;
    tokio::spawn(follow(
        Api::<MeshCluster>::all(primary.clone()),
        watcher::Config::default(),
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
                let credentials_changed = live
                    .clusters
                    .get(&name)
                    .is_none_or(|old| old.spec.secret_name != cluster.spec.secret_name);
                if credentials_changed || !live.remotes.contains_key(&name) {
                    let tasks = watch_remote(&client, &clusters_shared, &cluster);
                    let mut remote = RemoteLive::default();
                    remote.tasks = tasks;
                    live.remotes.insert(name.clone(), remote);
                }
                live.clusters.insert(name, cluster);
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

    // Snapshots, at most one per SETTLE, and never more than a fifth of the time: while
    // thousands of objects are listed, each snapshot of a large mesh takes a while.
    let feed = Feed {
        shared: shared.clone(),
        snapshots: rx,
    };
    tokio::spawn(async move {
        let mut took = Duration::ZERO;
        loop {
            shared.dirty.notified().await;
            tokio::time::sleep(SETTLE.max(took * 4)).await;
            let started = std::time::Instant::now();
            let framed = shared.lock().snapshot();
            took = started.elapsed();
            if tx.send(framed).is_err() {
                return;
            }
        }
    });
    feed
}

/// The tasks that follow one remote: its reachability, the expiry of its stored token, its
/// namespaces, and, with view credentials, its workloads.
fn watch_remote(
    primary: &Client,
    shared: &Arc<Shared>,
    cluster: &MeshCluster,
) -> Vec<JoinHandle<()>> {
    let name = cluster.name_any();
    let mut tasks = Vec::new();

    // Whether it answers now: a watch on a frozen server would wait for ever.
    let (p, s, c, n) = (
        primary.clone(),
        shared.clone(),
        cluster.clone(),
        name.clone(),
    );
    tasks.push(tokio::spawn(async move {
        let options = RemoteOptions {
            connect_timeout: PROBE_TIMEOUT,
            read_timeout: PROBE_TIMEOUT,
            call_deadline: Some(PROBE_TIMEOUT),
            ..RemoteOptions::default()
        };
        let secrets: Api<Secret> = Api::namespaced(p.clone(), MESH_NAMESPACE);
        for round in 0u64.. {
            // The stored token changes when it is rotated: its expiry is read again now and then.
            if round % EXPIRY_EVERY_PROBES == 0 {
                let secret = secrets.get_opt(&c.spec.secret_name).await.ok().flatten();
                let expiry = expiry_of(secret.as_ref());
                s.update(|live| {
                    if let Some(r) = live.remotes.get_mut(&n) {
                        r.expiry = Some(expiry);
                    }
                });
            }
            // The probe asks the one thing that also proves the server is this cluster.
            let answer = async {
                let client = remote::client_for_cluster(&p, MESH_NAMESPACE, &c, &options)
                    .await
                    .map_err(|e| failure::error_chain(&e))?;
                let found = remote::cluster_id(&client)
                    .await
                    .map_err(|e| failure::error_chain(&e))?;
                remote::Identity::of(&c)
                    .check(&found)
                    .map_err(|e| e.to_string())
            };
            let probe = tokio::time::timeout(PROBE_TIMEOUT, answer)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())));
            s.update(|live| {
                if let Some(r) = live.remotes.get_mut(&n) {
                    let probe = Some(probe);
                    if r.probe != probe {
                        r.probe = probe;
                        live.matrix = None;
                    }
                }
            });
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }));

    // Its namespaces, with the stored credentials, and its workloads with the view ones.
    let (p, s, c, n) = (primary.clone(), shared.clone(), cluster.clone(), name);
    tasks.push(tokio::spawn(async move {
        let workloads = {
            let (p, s, c, n) = (p.clone(), s.clone(), c.clone(), n.clone());
            async move {
                let state = match view::credentials_with(&p, &c, &WATCH_CLIENT).await {
                    view::Credentials::None => ViewState::NoCredentials,
                    view::Credentials::Unusable { error, .. } => ViewState::Failed(error),
                    view::Credentials::Found { source, client } => {
                        let tasks = watch_workloads(&client, &s, Some(n.clone()));
                        s.update(|live| match live.remotes.get_mut(&n) {
                            Some(r) => r.tasks.extend(tasks),
                            // Detached meanwhile: nothing to watch.
                            None => tasks.iter().for_each(JoinHandle::abort),
                        });
                        ViewState::Read(source)
                    }
                };
                s.update(|live| {
                    if let Some(r) = live.remotes.get_mut(&n) {
                        r.view = state;
                    }
                });
            }
        };
        tokio::spawn(workloads);
        let client = match remote::client_for_cluster(&p, MESH_NAMESPACE, &c, &WATCH_CLIENT).await {
            Ok(client) => client,
            Err(e) => {
                let error = failure::error_chain(&e);
                s.update(|live| {
                    if let Some(r) = live.remotes.get_mut(&n) {
                        r.namespaces_error = Some(error);
                    }
                    live.matrix = None;
                });
                return;
            }
        };
        let mut relist = Relist::default();
        follow(
            Api::<wire::Namespace>::all(client),
            remote::watch_config().page_size(LIST_PAGE),
            s.clone(),
            move |live, change| {
                live.matrix = None;
                let Some(r) = live.remotes.get_mut(&n) else {
                    return;
                };
                if let Change::Failed(e) = &change {
                    r.namespaces_error = Some(e.clone());
                    return;
                }
                r.namespaces_error = None;
                let map = r.namespaces.get_or_insert_with(Records::default);
                relist.apply(map, change, reduce_namespace);
            },
        )
        .await;
    }));
    tasks
}
