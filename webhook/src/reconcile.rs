//! The reconciler: makes every attached remote converge to the primary, whatever the webhook
//! managed to push.
//!
//! Watches on the primary: Namespaces (a reflector store, the source of truth for every sync),
//! `MeshCluster`s and the Secrets of the mesh namespace (which keep the [`Remotes`] registry
//! current for the webhook too). One worker per attached cluster runs [`sync_remote`]:
//! - when the cluster is attached, and when its `MeshCluster` or Secret changes;
//! - after a primary namespace's managed labels change (debounced, so a burst is one sync);
//! - when a watch of the remote's namespaces sees managed labels that differ from the
//!   primary's (a namespace created there, a label edited by hand), after
//!   [`Settings::drift_settle`];
//! - every resync period, the guarantee when that watch missed something;
//! - with exponential backoff while the remote is unreachable.
//!
//! Every replica also watches each remote's MutatingWebhookConfigurations ([`crate::injectors`]),
//! which its admission answers read.
//!
//! The watches run in every replica (the webhook needs the registry), the workers only sync
//! while this replica holds the Lease, and drop a sync mid-way when its term ends. Status is written only when it says something new (see
//! [`crate::cluster_status`]), and Events go to the primary namespace concerned (see
//! [`crate::events`]).
//!
//! Not `kube::runtime::Controller`: its reconciles run to completion and it stops only as a
//! whole, while a sync here must be dropped mid-way when the Lease term ends; and each worker
//! owns watches of its remote through that remote's own credentials, rebuilt when they change,
//! which the Controller's watches (all through one client) cannot express.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    backoff::{Backoff, BackoffSettings},
    cluster_status::{Attempt, next_status, status_needs_write, with_token_expiry, write_status},
    events,
    in_flight::InFlight,
    injectors::{Injectors, watch_injectors},
    leader::Leadership,
    metrics::Metrics,
    primary_view::{StoreView, keep_what_the_rule_reads, watch_namespaces},
    readiness::Readiness,
    remote_watch::{Interner, SeenNamespaces, watch_for_drift},
    renewal::renew_token,
};

use mesh_core::{
    cluster::MeshCluster,
    labels::SyncRule,
    remote::{Remote, RemoteState, Remotes},
    sync::{PrimaryView, SyncMode, sync_remote, sync_watched},
};

/// Share of a time-bound token's lifetime after which the leader renews it: early enough
/// that a webhook down for a while (or a failing renewal, retried every sync) still has
/// time before it expires.
pub const DEFAULT_TOKEN_RENEW_FRACTION: f64 = 0.6;

/// Timing and placement of the reconciler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the kubeconfig Secrets.
    pub mesh_namespace: String,
    /// Full sync of every cluster at least this often.
    pub resync_period: Duration,
    /// Quiet time after a change before syncing, so that bursts coalesce.
    pub debounce: Duration,
    /// Least time between the end of a sync and a sync for a change on the primary.
    pub primary_sync_interval: Duration,
    /// Wait between seeing a remote drift and syncing it. A push made by another replica
    /// lands on the remote before the primary stores the change (and this replica's in-flight
    /// view does not know it): waiting longer than a push may take lets the primary's watch
    /// catch up, so the push is neither reverted nor, if the apiserver rejected it, kept. It
    /// also paces a fight with a remote controller that keeps rewriting a managed label.
    pub drift_settle: Duration,
    pub backoff: BackoffSettings,
    /// When nothing else changed, `lastSyncTime` is rewritten at most this often.
    pub status_refresh: Duration,
    /// Reporter of Events (controller name and replica identity).
    pub reporter: Reporter,
    /// A time-bound stored token is renewed once this fraction of its lifetime has passed.
    pub token_renew_fraction: f64,
}

impl Settings {
    pub fn new(mesh_namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            mesh_namespace: mesh_namespace.into(),
            resync_period: Duration::from_secs(60),
            debounce: Duration::from_millis(100),
            primary_sync_interval: Duration::from_secs(1),
            drift_settle: Duration::from_secs(3),
            backoff: BackoffSettings::default(),
            status_refresh: Duration::from_secs(300),
            reporter: Reporter {
                controller: "mesh-webhook".to_owned(),
                instance: Some(identity.into()),
            },
            token_renew_fraction: DEFAULT_TOKEN_RENEW_FRACTION,
        }
    }
}

/// Everything the reconciler needs. Build with [`Reconciler::new`], then [`Reconciler::run`].
pub struct Reconciler {
    primary: Client,
    rule: Arc<SyncRule>,
    remotes: Remotes,
    metrics: Arc<Metrics>,
    is_leader: Leadership,
    readiness: Readiness,
    settings: Settings,
    in_flight: InFlight,
    injectors: Injectors,
}

/// State shared by the supervisor and the workers.
struct Shared {
    primary: Client,
    rule: Arc<SyncRule>,
    remotes: Remotes,
    metrics: Arc<Metrics>,
    events: events::Publisher,
    settings: Settings,
    namespaces: Store<Namespace>,
    clusters: Store<MeshCluster>,
    in_flight: InFlight,
    injectors: Injectors,
    /// Names and labels of every remote's kept namespaces, each held once.
    interner: Interner,
}

impl Reconciler {
    pub fn new(
        primary: Client,
        rule: Arc<SyncRule>,
        remotes: Remotes,
        metrics: Arc<Metrics>,
        is_leader: Leadership,
        readiness: Readiness,
        settings: Settings,
    ) -> Self {
        Self {
            primary,
            rule,
            remotes,
            metrics,
            is_leader,
            readiness,
            settings,
            in_flight: InFlight::default(),
            injectors: Injectors::default(),
        }
    }

    /// Keeps the remotes' injectors in `injectors`, for the admission answers.
    pub fn with_injectors(mut self, injectors: Injectors) -> Self {
        self.injectors = injectors;
        self
    }

    /// Reads the primary through the webhook's pushes still in flight (see [`InFlight`]).
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// Runs the watches, the registry upkeep and the workers until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            primary,
            rule,
            remotes,
            metrics,
            is_leader,
            readiness,
            settings,
            in_flight,
            injectors,
        } = self;
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let (clusters, mc_writer) = reflector::store::<MeshCluster>();
        let (secrets, secret_writer) = reflector::store::<Secret>();
        let (primary_changed, _) = watch::channel(0u64);
        let clusters_changed = Arc::new(Notify::new());

        let mut tasks = JoinSet::new();
        let ns_events = watcher(
            Api::<Namespace>::all(primary.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify({
            let rule = rule.clone();
            move |ns| keep_what_the_rule_reads(&rule, ns)
        })
        .reflect(ns_writer);
        tasks.spawn(
            watch_namespaces(
                ns_events,
                rule.clone(),
                in_flight.clone(),
                primary_changed.clone(),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Namespace")),
        );
        let mc_events = watcher(
            Api::<MeshCluster>::all(primary.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(mc_writer);
        tasks.spawn(
            notify_on_events(mc_events, clusters_changed.clone(), shutdown.clone())
                .instrument(tracing::info_span!("watch", kind = "MeshCluster")),
        );
        let secret_events = watcher(
            Api::<Secret>::namespaced(primary.clone(), &settings.mesh_namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|secret| secret.managed_fields_mut().clear())
        .reflect(secret_writer);
        tasks.spawn(
            notify_on_events(secret_events, clusters_changed.clone(), shutdown.clone())
                .instrument(tracing::info_span!("watch", kind = "Secret")),
        );

        // A push the apiserver then rejected is reverted as soon as its entry expires.
        let mut expired = in_flight.expired();
        let wake = primary_changed.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = expired.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                wake.send_modify(|generation| *generation = generation.wrapping_add(1));
            }
        });

        let shared = Arc::new(Shared {
            in_flight,
            injectors,
            events: events::Publisher::new(primary.clone(), settings.reporter.clone()),
            primary,
            rule,
            remotes,
            metrics,
            settings,
            namespaces,
            clusters,
            interner: Interner::default(),
        });
        tasks.spawn(
            supervise(
                shared,
                secrets,
                clusters_changed,
                primary_changed,
                is_leader,
                readiness,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("supervisor")),
        );
        shutdown.cancelled().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// Drives a reflector and wakes the supervisor on every change.
async fn notify_on_events<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = shutdown.cancelled() => return,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(_)) => notify.notify_one(),
            Some(Err(error)) => tracing::warn!(error = %error, "watch failed, retrying"),
        }
    }
}

struct WorkerHandle {
    kick: Arc<Notify>,
    cancel: CancellationToken,
}

/// Keeps the registry and the set of workers equal to the attached clusters.
async fn supervise(
    shared: Arc<Shared>,
    secrets: Store<Secret>,
    changed: Arc<Notify>,
    primary_changed: watch::Sender<u64>,
    is_leader: Leadership,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let loaded = async {
        let _ = shared.namespaces.wait_until_ready().await;
        let _ = shared.clusters.wait_until_ready().await;
        let _ = secrets.wait_until_ready().await;
    };
    tokio::select! {
        () = loaded => {}
        () = shutdown.cancelled() => return,
    }
    let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
    let mut injector_watches: BTreeMap<String, RemoteWatch> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let mut attached = BTreeSet::new();
        for cluster in shared.clusters.state() {
            // A MeshCluster on its way out is detached already: stop pushing to it.
            if cluster.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = cluster.name_any();
            let key =
                ObjectRef::new(&cluster.spec.secret_name).within(&shared.settings.mesh_namespace);
            let secret = secrets.get(&key);
            let rebuilt = shared
                .remotes
                .refresh(&cluster, &shared.settings.mesh_namespace, secret.as_deref())
                .await
                .is_some();
            match workers.get(&name) {
                Some(worker) if rebuilt => worker.kick.notify_one(),
                Some(_) => {}
                None => {
                    tracing::info!(cluster = %name, "cluster attached");
                    let worker = Worker {
                        name: name.clone(),
                        shared: shared.clone(),
                        primary_changed: primary_changed.subscribe(),
                        is_leader: is_leader.clone(),
                        kick: Arc::new(Notify::new()),
                        cancel: shutdown.child_token(),
                        backoff: Backoff::new(shared.settings.backoff),
                        drift: Arc::new(Notify::new()),
                        watching: None,
                    };
                    workers.insert(
                        name.clone(),
                        WorkerHandle {
                            kick: worker.kick.clone(),
                            cancel: worker.cancel.clone(),
                        },
                    );
                    tasks.spawn(
                        worker.run().instrument(
                            tracing::info_span!(parent: None, "cluster", cluster = %name),
                        ),
                    );
                }
            }
            attached.insert(name);
        }
        workers.retain(|name, worker| {
            let keep = attached.contains(name);
            if !keep {
                tracing::info!(cluster = %name, "cluster detached");
                worker.cancel.cancel();
                shared.metrics.forget_cluster(name);
            }
            keep
        });
        watch_injectors_of(
            &shared,
            &attached,
            &mut injector_watches,
            &mut tasks,
            &shutdown,
        );
        // Entries built from a MeshCluster that is gone; entries inserted by hand (no UID) stay.
        for remote in shared.remotes.snapshot() {
            if !attached.contains(remote.name()) && remote.fingerprint().cluster_uid.is_some() {
                shared.remotes.remove(remote.name());
            }
        }
        readiness.set_primary_synced();
        tokio::select! {
            () = changed.notified() => {}
            () = shutdown.cancelled() => break,
        }
        // Watch events come in bursts (a Secret and its MeshCluster are written together).
        tokio::time::sleep(shared.settings.debounce).await;
        while tasks.try_join_next().is_some() {}
    }
    for worker in workers.values() {
        worker.cancel.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

/// Keeps one injector watch per attached remote, on its current client, in every replica
/// (each answers admission reviews); forgets the injectors of detached ones.
fn watch_injectors_of(
    shared: &Shared,
    attached: &BTreeSet<String>,
    watches: &mut BTreeMap<String, RemoteWatch>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    watches.retain(|name, _| {
        let keep = attached.contains(name);
        if !keep {
            shared.injectors.forget(name);
        }
        keep
    });
    for name in attached {
        let remote = shared.remotes.get(name);
        let current = watches.get(name).map(|watch| &watch.remote);
        if let (Some(current), Some(remote)) = (current, &remote)
            && Arc::ptr_eq(current, remote)
        {
            continue;
        }
        // Dropping the old watch stops it; new credentials get a new one.
        watches.remove(name);
        let Some(remote) = remote else { continue };
        let Some(client) = remote.watch_client().cloned() else {
            continue;
        };
        let cancel = shutdown.child_token();
        tasks.spawn(
            watch_injectors(
                name.clone(),
                client,
                shared.injectors.clone(),
                cancel.clone(),
            )
            .instrument(tracing::info_span!(parent: None, "injectors", cluster = %name)),
        );
        watches.insert(
            name.clone(),
            RemoteWatch {
                remote,
                cancel,
                seen: None,
            },
        );
    }
}

struct Worker {
    name: String,
    shared: Arc<Shared>,
    primary_changed: watch::Receiver<u64>,
    is_leader: Leadership,
    kick: Arc<Notify>,
    cancel: CancellationToken,
    backoff: Backoff,
    /// Woken by the watch of the remote's namespaces when they drift from the primary.
    drift: Arc<Notify>,
    watching: Option<RemoteWatch>,
}

/// The drift watch of one remote, for the client it was started with.
struct RemoteWatch {
    remote: Arc<Remote>,
    cancel: CancellationToken,
    /// What the drift watch keeps of the remote's namespaces; none for the injector watches.
    seen: Option<SeenNamespaces>,
}

impl Drop for RemoteWatch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Worker {
    async fn run(mut self) {
        let mut term: Option<CancellationToken> = None;
        let mut due = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let now = self.is_leader.borrow_and_update().clone();
            // A term seen cancelled and a new one since: leadership was lost and won back.
            if now.is_some() && term.as_ref().is_none_or(CancellationToken::is_cancelled) {
                // Whoever led before may have died mid-sync: start with a full one.
                due = Instant::now();
            }
            term = now;
            let leading = term.is_some();
            self.watch_remote(leading);
            if !leading {
                tokio::select! {
                    changed = self.is_leader.changed() => if changed.is_err() { return },
                    () = self.cancel.cancelled() => return,
                }
                continue;
            }
            let failing = self.backoff.is_failing();
            let debounce = self.shared.settings.debounce;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                changed = self.is_leader.changed() => {
                    if changed.is_err() { return }
                    continue;
                }
                () = self.kick.notified() => {
                    // New credentials or spec: worth trying now even while backing off.
                    self.backoff.reset();
                    tokio::time::sleep(debounce).await;
                }
                // While the remote fails, the backoff timer alone decides when to try again.
                changed = self.primary_changed.changed(), if !failing => {
                    if changed.is_err() { return }
                    // The webhook pushed the change already; this sync only catches what a
                    // push missed. Paced, so that a stream of edits on the primary does not
                    // become a stream of full syncs of every remote competing with the pushes.
                    let paced = last_sync + self.shared.settings.primary_sync_interval;
                    tokio::select! {
                        () = tokio::time::sleep_until(paced.max(Instant::now() + debounce)) => {}
                        () = self.cancel.cancelled() => return,
                    }
                }
                () = self.drift.notified(), if !failing => {
                    // Seconds long, unlike the debounce: shutdown must not wait for it.
                    tokio::select! {
                        () = tokio::time::sleep(self.shared.settings.drift_settle) => {}
                        () = self.cancel.cancelled() => return,
                    }
                }
                () = tokio::time::sleep_until(due) => {}
            }
            // Everything changed so far is in the store this sync reads.
            self.primary_changed.borrow_and_update();
            let Some(term) = self.is_leader.borrow().clone() else {
                continue;
            };
            // The term ends before another replica may lead: from then on this replica's
            // view of the primary may be stale, so the sync stops where it is and no write
            // of it starts (the future is never polled again). A request already sent is
            // left to its remote timeout.
            let ok = tokio::select! {
                biased;
                () = term.cancelled() => {
                    tracing::info!("leadership lost, sync abandoned");
                    continue;
                }
                ok = self.sync_once() => ok,
            };
            last_sync = Instant::now();
            due = if ok {
                self.backoff.reset();
                let next = Instant::now() + self.shared.settings.resync_period;
                self.renewal_due().map_or(next, |renewal| renewal.min(next))
            } else {
                let delay = self.backoff.next_delay();
                tracing::debug!(retry_in_ms = delay.as_millis(), "sync failed, backing off");
                Instant::now() + delay
            };
        }
    }

    /// Keeps one drift watch running on the remote's current client while leading; none
    /// otherwise. New credentials rebuild the client, and the watch with it.
    fn watch_remote(&mut self, leading: bool) {
        let remote = self
            .shared
            .remotes
            .get(&self.name)
            .filter(|remote| leading && remote.client().is_some());
        let current = self.watching.as_ref().map(|watch| &watch.remote);
        let unchanged = match (current, &remote) {
            (Some(current), Some(remote)) => Arc::ptr_eq(current, remote),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        // Dropping the old watch stops it.
        self.watching = None;
        let Some(remote) = remote else { return };
        let Some(client) = remote.watch_client().cloned() else {
            return;
        };
        let cancel = self.cancel.child_token();
        let shared = self.shared.clone();
        // An unusable scope is reported by the sync; no write happens without one.
        let Ok(scoped) = shared.rule.within(remote.scope()) else {
            return;
        };
        let scoped_keys = scoped.keys_read();
        let is_drifted = move |seen: &Namespace| {
            let Some(name) = seen.metadata.name.as_deref() else {
                return false;
            };
            if !scoped.covers(seen) {
                return false;
            }
            let primary = StoreView {
                namespaces: &shared.namespaces,
                in_flight: &shared.in_flight,
                rule: &shared.rule,
            };
            let desired = shared.rule.desired(primary.namespace(name).as_ref());
            !shared.rule.diff(&desired, seen).is_empty()
        };
        let seen = SeenNamespaces::new(scoped_keys, self.shared.interner.clone());
        tokio::spawn(
            watch_for_drift(
                client,
                is_drifted,
                self.drift.clone(),
                seen.clone(),
                cancel.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        self.watching = Some(RemoteWatch {
            remote,
            cancel,
            seen: Some(seen),
        });
    }

    /// When the stored token is due for renewal, if it is time-bound: not before a second
    /// from now, so that a renewal that failed is retried without spinning.
    fn renewal_due(&self) -> Option<Instant> {
        let remote = self.shared.remotes.get(&self.name)?;
        let at = remote
            .token()?
            .renew_at(self.shared.settings.token_renew_fraction)?;
        let wait = at.duration_since(Timestamp::now());
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        Some(Instant::now() + wait.max(Duration::from_secs(1)))
    }

    /// One full sync, its status, Events and metrics. `false` when the remote failed.
    async fn sync_once(&mut self) -> bool {
        let shared = &self.shared;
        let cluster_name = self.name.as_str();
        let Some(cluster) = shared.clusters.get(&ObjectRef::new(cluster_name)) else {
            // Deleted; the supervisor stops this worker.
            return true;
        };
        let primary = StoreView {
            namespaces: &shared.namespaces,
            in_flight: &shared.in_flight,
            rule: &shared.rule,
        };
        let remote = shared.remotes.get(cluster_name);
        let scoped = remote.as_deref().map(|r| shared.rule.within(r.scope()));
        let result = match (remote.as_deref().map(|r| r.state()), scoped) {
            (Some(RemoteState::Ready(client)), Some(Ok(scoped))) => {
                // The drift watch of these very credentials and scope, when current, has
                // what a LIST would read.
                let watched = self
                    .watching
                    .as_ref()
                    .filter(|watch| {
                        remote
                            .as_ref()
                            .is_some_and(|r| Arc::ptr_eq(&watch.remote, r))
                    })
                    .and_then(|watch| watch.seen.clone());
                let seen = match watched {
                    Some(watched) => {
                        watched.heard(FIRST_LIST_PATIENCE).await;
                        watched.current()
                    }
                    None => None,
                };
                let synced = match seen {
                    Some(seen) => {
                        sync_watched(&scoped, &primary, client, seen, SyncMode::Apply).await
                    }
                    None => {
                        shared.metrics.remote_listed(cluster_name);
                        sync_remote(&scoped, &primary, client, SyncMode::Apply).await
                    }
                };
                synced.map_err(|error| Attempt::failed(error.failure(), error.to_string()))
            }
            // Nothing is written where the scope cannot say what may be.
            (Some(RemoteState::Ready(_)), Some(Err(error))) => Err(Attempt::Failed {
                reason: "ScopeInvalid",
                message: format!(
                    "spec.scope cannot be used: {error}; correct it with kubectl mesh scope {cluster_name}"
                ),
                answered: false,
            }),
            (Some(RemoteState::Unavailable { reason, message }), _) => Err(Attempt::Failed {
                reason,
                message: message.clone(),
                answered: false,
            }),
            (None, _) | (Some(RemoteState::Ready(_)), None) => Err(Attempt::Failed {
                reason: "CredentialsMissing",
                message: "no client built yet".to_owned(),
                answered: false,
            }),
        };
        let now = Timestamp::now();
        let token = remote.as_deref().and_then(Remote::token);
        let result = result.map_err(|failed| with_token_expiry(failed, token, cluster_name, now));
        let attempt = match &result {
            Ok(report) => Attempt::Synced(report),
            Err(failed) => failed.clone(),
        };
        let ok = result.is_ok();
        let prev = cluster.status.clone();
        let mut next = next_status(prev.as_ref(), &attempt, cluster.metadata.generation, now);
        if ok && let Some(remote) = remote.as_deref() {
            // It answers again: pushes wait for it.
            remote.answered();
        }
        if ok {
            // These credentials work: `kubectl mesh rotate` waits for this before it revokes
            // the ones they replaced.
            next.observed_credentials = remote
                .as_deref()
                .and_then(|r| r.fingerprint().secret_version.clone());
        }
        shared.metrics.set_token_expiry(
            cluster_name,
            token
                .and_then(|t| t.expires_at)
                .map(|exp| exp.duration_since(now).as_secs()),
        );

        let reachable = attempt.reachable();
        shared.metrics.set_reachable(cluster_name, reachable);
        match &result {
            Ok(report) => {
                shared.metrics.sync_finished(cluster_name, "ok");
                let corrected = report.applied().count();
                shared
                    .metrics
                    .drift_corrected(cluster_name, corrected as u64);
                if report.is_converged() {
                    tracing::debug!(
                        in_sync = report.in_sync,
                        missing = report.missing.len(),
                        "remote in sync"
                    );
                } else {
                    tracing::info!(
                        in_sync = report.in_sync_after(),
                        corrected,
                        missing = report.missing.len(),
                        errors = report.errors.len(),
                        writes = report.writes,
                        "remote synced"
                    );
                }
                to_primary(
                    "events",
                    shared.events.sync_report(&cluster, &primary, report),
                )
                .await;
            }
            Err(Attempt::Failed {
                reason, message, ..
            }) => {
                shared.metrics.sync_finished(cluster_name, reason);
                tracing::warn!(%reason, error = %message, "cannot sync remote");
            }
            Err(Attempt::Synced(_)) => {}
        }
        let reachability = shared
            .events
            .reachability(&cluster, prev.as_ref(), &next, reachable);
        to_primary("events", reachability).await;
        let renewal_due = token
            .and_then(|t| t.renew_at(shared.settings.token_renew_fraction))
            .is_some_and(|at| at <= now);
        if ok
            && renewal_due
            && let Some(client) = remote.as_deref().and_then(Remote::client)
        {
            match to_primary(
                "token",
                renew_token(
                    &shared.primary,
                    &shared.settings.mesh_namespace,
                    &cluster,
                    client,
                ),
            )
            .await
            {
                Some(Ok(())) => tracing::info!("stored token renewed"),
                Some(Err(message)) => {
                    tracing::warn!(error = %message, "cannot renew the stored token");
                    to_primary(
                        "events",
                        shared.events.token_renewal_failed(&cluster, &message),
                    )
                    .await;
                }
                None => {}
            }
        }
        if status_needs_write(prev.as_ref(), &next, shared.settings.status_refresh)
            && let Some(Err(error)) =
                to_primary("status", write_status(&shared.primary, cluster_name, &next)).await
        {
            tracing::warn!(error = %error, "cannot write cluster status");
        }
        ok
    }
}

/// How long a sync waits for a new drift watch's first list rather than list the remote itself:
/// at attach, and when this replica starts leading, every remote would otherwise be listed
/// twice at once (a few seconds' work each with thousands of namespaces).
const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);

/// Bound of one write to the primary after a sync (status, Events). The primary client has no
/// read timeout, its watches being long polls: a write on a connection gone half-open would
/// otherwise hold the worker until this replica stops leading.
const PRIMARY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn to_primary<T>(
    what: &'static str,
    write: impl std::future::Future<Output = T>,
) -> Option<T> {
    let done = tokio::time::timeout(PRIMARY_WRITE_TIMEOUT, write)
        .await
        .ok();
    if done.is_none() {
        tracing::warn!(write = what, "no answer from the primary in time, given up");
    }
    done
}
