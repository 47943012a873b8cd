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

use futures::Stream;
use k8s_openapi::api::core::v1::{Namespace, Secret};
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
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    backoff::BackoffSettings, events, injectors::watch_injectors, leader::Leadership,
    primary_view::watch_namespaces, shared_state::SharedState, watch_events::for_each_event,
};

use mesh_core::cluster::MeshCluster;

mod worker;

use worker::{RemoteWatch, Worker};

/// Share of a time-bound token's lifetime after which the leader renews it: early enough
/// that a webhook down for a while (or a failing renewal, retried ever more often as the token
/// nears its expiry) still has time before it expires.
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
    /// Syncs running at once of remotes whose last sync did not fail; as many again for the
    /// retries of remotes whose last sync failed (see [`Shared::retry_permits`]).
    pub concurrent_syncs: usize,
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
            concurrent_syncs: DEFAULT_CONCURRENT_SYNCS,
        }
    }
}

/// Everything the reconciler needs. Build with [`Reconciler::new`], then [`Reconciler::run`].
pub struct Reconciler {
    primary: Client,
    state: SharedState,
    is_leader: Leadership,
    settings: Settings,
}

/// State shared by the supervisor and the workers.
struct Shared {
    primary: Client,
    state: SharedState,
    events: events::Publisher,
    settings: Settings,
    clusters: Store<MeshCluster>,
    /// Syncs running at once, across remotes: what a sync holds while it runs (the remote's
    /// namespaces as read, the names it has planned, the writes in flight) then grows with
    /// the number of remotes only this far. The apiservers' own pace bounds a cold sync of many
    /// remotes anyway, so more at once would cost memory and buy no time.
    sync_permits: tokio::sync::Semaphore,
    /// The same for the retries of remotes whose last sync failed, apart: a remote that fails
    /// slowly (its calls running out their deadline) would otherwise hold permits the healthy
    /// remotes' syncs wait for. A failing remote rarely holds much (it seldom gets as far as
    /// reading its namespaces).
    retry_permits: tokio::sync::Semaphore,
}

/// [`Settings::concurrent_syncs`] by default.
pub const DEFAULT_CONCURRENT_SYNCS: usize = 4;

impl Reconciler {
    pub fn new(
        primary: Client,
        state: SharedState,
        is_leader: Leadership,
        settings: Settings,
    ) -> Self {
        Self {
            primary,
            state,
            is_leader,
            settings,
        }
    }

    /// Runs the watches, the registry upkeep and the workers until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            primary,
            state,
            is_leader,
            settings,
        } = self;
        let (clusters, mc_writer) = reflector::store::<MeshCluster>();
        let (secrets, secret_writer) = reflector::store::<Secret>();
        let (primary_changed, _) = watch::channel(0u64);
        let clusters_changed = Arc::new(Notify::new());

        let mut tasks = JoinSet::new();
        let ns_events = watcher(
            Api::<Namespace>::all(primary.clone()),
            mesh_core::remote::watch_config(),
        )
        .default_backoff();
        tasks.spawn(
            watch_namespaces(
                ns_events,
                state.primary.clone(),
                state.in_flight.clone(),
                primary_changed.clone(),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Namespace")),
        );
        let mc_events = watcher(
            Api::<MeshCluster>::all(primary.clone()),
            mesh_core::remote::watch_config(),
        )
        .default_backoff()
        .reflect(mc_writer);
        tasks.spawn(
            notify_on_events(
                mc_events,
                clusters_changed.clone(),
                // At once, not when the supervisor rebuilds: lookups stop handing out the
                // entry of a MeshCluster that changed or is gone.
                {
                    let (remotes, clusters) = (state.remotes.clone(), clusters.clone());
                    move || remotes.observe(clusters.state().iter().map(AsRef::as_ref))
                },
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "MeshCluster")),
        );
        let secret_events = watcher(
            Api::<Secret>::namespaced(primary.clone(), &settings.mesh_namespace),
            mesh_core::remote::watch_config(),
        )
        .default_backoff()
        .modify(|secret| secret.managed_fields_mut().clear())
        .reflect(secret_writer);
        tasks.spawn(
            notify_on_events(
                secret_events,
                clusters_changed.clone(),
                || {},
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Secret")),
        );

        // A push the apiserver then rejected is reverted as soon as its entry expires and a
        // read of the primary confirms it was not persisted.
        state.in_flight.confirm_expiries();
        tasks.spawn(confirm_expiries(
            primary.clone(),
            state.clone(),
            primary_changed.clone(),
            shutdown.clone(),
        ));

        let concurrent_syncs = settings.concurrent_syncs;
        let shared = Arc::new(Shared {
            events: events::Publisher::new(
                primary.clone(),
                settings.reporter.clone(),
                state.metrics.clone(),
            ),
            primary,
            state,
            settings,
            clusters,
            sync_permits: tokio::sync::Semaphore::new(concurrent_syncs),
            retry_permits: tokio::sync::Semaphore::new(concurrent_syncs),
        });
        tasks.spawn(
            supervise(
                shared,
                secrets,
                clusters_changed,
                primary_changed,
                is_leader,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("supervisor")),
        );
        shutdown.cancelled().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// Drives a reflector and wakes the supervisor on every change, once `changed` has seen the
/// store holding it.
async fn notify_on_events<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    notify: Arc<Notify>,
    mut changed: impl FnMut(),
    shutdown: CancellationToken,
) {
    for_each_event(events, &shutdown, |event| {
        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
            changed();
            notify.notify_one();
        }
    })
    .await;
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
    shutdown: CancellationToken,
) {
    let loaded = async {
        shared.state.primary.wait_listed().await;
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
            if !cluster.is_attached() {
                continue;
            }
            let name = cluster.name_any();
            let key =
                ObjectRef::new(&cluster.spec.secret_name).within(&shared.settings.mesh_namespace);
            let secret = secrets.get(&key);
            let rebuilt = shared
                .state
                .remotes
                .refresh(&cluster, &shared.settings.mesh_namespace, secret.as_deref())
                .await
                .is_some();
            match workers.get(&name) {
                Some(worker) if rebuilt => worker.kick.notify_one(),
                Some(_) => {}
                None => {
                    tracing::info!(cluster = %name, "cluster attached");
                    let worker = Worker::new(
                        name.clone(),
                        shared.clone(),
                        primary_changed.subscribe(),
                        is_leader.clone(),
                        shutdown.child_token(),
                    );
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
                // It forgets the cluster's gauges once its sync, if any, is dropped.
                worker.cancel.cancel();
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
        shared.state.remotes.retain(|remote| {
            attached.contains(remote.name()) || remote.fingerprint().cluster_uid.is_none()
        });
        shared.state.readiness.set_primary_synced();
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

/// Bound of the read that confirms an expired push: below the push's lifetime, so that it
/// still stands in when the answer comes.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Confirms every push whose time ran out with a read of the primary
/// ([`crate::in_flight::InFlight::confirm`]): one it does not hold stops standing in and the
/// workers are woken to revert it; one it holds (its watch is behind, or silent) stands in
/// again, as does every push while the primary cannot say.
async fn confirm_expiries(
    primary: Client,
    state: SharedState,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut expired = state.in_flight.expired();
    let namespaces = Api::<Namespace>::all(primary);
    loop {
        tokio::select! {
            changed = expired.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let mut reverted = false;
        // Once one read goes unanswered, the others would wait as long: they stand in until
        // the next round.
        let mut answering = true;
        for due in state.in_flight.due() {
            let read = async {
                let read = namespaces.get_opt(&due.namespace);
                tokio::time::timeout(CONFIRM_TIMEOUT, read).await.ok()?.ok()
            };
            let stored = if answering { read.await } else { None };
            if answering && stored.is_none() {
                tracing::debug!("cannot read the primary, expired pushes stand in still");
            }
            answering &= stored.is_some();
            match stored {
                Some(stored) => {
                    reverted |= state.in_flight.confirm(&state.rule, &due, stored.as_ref())
                }
                // The primary cannot say now.
                None => state.in_flight.stand_in_again(&due),
            }
        }
        if reverted {
            changed.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }
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
            shared.state.injectors.forget(name);
        }
        keep
    });
    for name in attached {
        let remote = shared.state.remotes.get(name);
        let current = watches.get(name).map(|watch| &watch.remote);
        if let (Some(current), Some(remote)) = (current, &remote)
            && Arc::ptr_eq(current, remote)
        {
            continue;
        }
        // Dropping the old watch stops it; new credentials get a new one.
        watches.remove(name);
        let Some(remote) = remote else { continue };
        let cancel = shutdown.child_token();
        tasks.spawn(
            watch_injectors(
                name.clone(),
                remote.clone(),
                shared.state.injectors.clone(),
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
