//! [`Webhook`], the whole `mesh-webhook` process assembled: the serving certificate and port,
//! the shared state of the handlers, leader election, the reconciler, and an orderly shutdown
//! (stop accepting, drain, stop the reconciler, hand the Lease over).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use kube::{Client, runtime::events::Reporter};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::BackoffSettings,
    client_auth::ClientCa,
    http::{self, AppState, LogLevelSetter},
    leader::{self, LeaseSettings, LeaseTiming},
    listen::{self, Limits, Result},
    metrics::Metrics,
    readiness::Readiness,
    reconcile::{self, Reconciler},
    shared_state::SharedState,
    tls::{self, CertResolver},
};

use mesh_core::{
    labels::SyncRule,
    remote::{RemoteOptions, Remotes},
};

/// The whole `mesh-webhook` process: HTTPS server, leader election, reconciler and registry.
/// Usable in-process (tests, demos): [`Webhook::new`] with the command line's defaults, change
/// the fields that matter, then [`Webhook::bind`] and [`BoundWebhook::run`].
pub struct Webhook {
    pub primary: Client,
    /// Address to listen on; port 0 picks a free one (see [`BoundWebhook::local_addr`]).
    pub listen: SocketAddr,
    /// Address of the port serving probes and metrics (no client certificate asked); port 0
    /// picks a free one (see [`BoundWebhook::metrics_addr`]).
    pub metrics_listen: SocketAddr,
    /// Who may call the webhook port; `None` asks callers for no certificate.
    pub client_auth: Option<ClientAuth>,
    /// Connection limits and timeouts of the webhook port.
    pub limits: Limits,
    /// Connection limits and timeouts of the metrics port, which any pod may reach
    /// ([`Limits::metrics_port`]: far fewer connections and smaller buffers).
    pub metrics_limits: Limits,
    /// Bytes the `/mutate` bodies being read and handled may hold at once
    /// ([`http::BODY_BUDGET`] by default; at least [`http::BODY_LIMIT`] to serve a whole review).
    pub body_budget: usize,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub rule: Arc<SyncRule>,
    pub mesh_namespace: String,
    pub resync_period: Duration,
    /// Share of a time-bound stored token's lifetime after which it is renewed.
    pub token_renew_fraction: f64,
    pub push_deadline: Duration,
    /// How long the reconciler waits before retrying a remote that keeps failing.
    pub backoff: BackoffSettings,
    /// Remotes synced at once ([`reconcile::Settings::concurrent_syncs`]).
    pub concurrent_syncs: usize,
    pub remote_options: RemoteOptions,
    /// Name of the Lease to elect a leader with; `None` makes this process always lead (a
    /// single replica, or a test).
    pub lease_name: Option<String>,
    /// Lease duration, renew deadline and retry period (see [`LeaseTiming::validate`]).
    pub lease_timing: LeaseTiming,
    pub identity: String,
    pub metrics: Arc<Metrics>,
    pub log_level: Option<LogLevelSetter>,
}

/// Callers of the webhook port must present a certificate signed by a client CA.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// PEM file of the CA (re-read when it changes).
    pub ca_file: PathBuf,
    /// Subject common names a caller's certificate must carry, one of them; empty accepts any
    /// the CA signed.
    pub allowed_names: Vec<String>,
}

impl Webhook {
    /// A webhook with the defaults of the command line.
    pub fn new(primary: Client, tls_cert: impl Into<PathBuf>, tls_key: impl Into<PathBuf>) -> Self {
        Self {
            primary,
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
            client_auth: None,
            limits: Limits::default(),
            metrics_limits: Limits::metrics_port(),
            body_budget: http::BODY_BUDGET,
            tls_cert: tls_cert.into(),
            tls_key: tls_key.into(),
            rule: Arc::new(SyncRule::default()),
            mesh_namespace: mesh_core::MESH_NAMESPACE.to_owned(),
            resync_period: Duration::from_secs(60),
            token_renew_fraction: reconcile::DEFAULT_TOKEN_RENEW_FRACTION,
            push_deadline: Duration::from_secs(2),
            backoff: BackoffSettings::default(),
            concurrent_syncs: reconcile::DEFAULT_CONCURRENT_SYNCS,
            remote_options: RemoteOptions::default(),
            lease_name: Some("mesh-webhook".to_owned()),
            lease_timing: LeaseTiming::default(),
            identity: leader::default_identity(),
            metrics: Arc::new(Metrics::new()),
            log_level: None,
        }
    }

    /// Loads the serving certificate and the client CA and binds both ports: what can fail at
    /// startup fails here.
    pub async fn bind(self) -> Result<BoundWebhook> {
        let resolver = CertResolver::load(&self.tls_cert, &self.tls_key)?;
        let client_ca = match &self.client_auth {
            Some(auth) => Some(ClientCa::load_allowing(
                &auth.ca_file,
                auth.allowed_names.clone(),
                resolver.provider(),
            )?),
            None => None,
        };
        let webhook_port = Port::bind(
            self.listen,
            tls::server_config(resolver.clone(), client_ca.clone())?,
        )
        .await?;
        let metrics_port = Port::bind(
            self.metrics_listen,
            tls::server_config(resolver.clone(), None)?,
        )
        .await?;
        let shared = SharedState {
            metrics: self.metrics.clone(),
            // `new`: the primary's view keeps namespaces by the same rule.
            ..SharedState::new(self.rule.clone(), Remotes::new(self.remote_options))
        };
        shared.readiness.set_tls_loaded();
        Ok(BoundWebhook {
            shared,
            webhook: self,
            webhook_port,
            metrics_port,
            resolver,
            client_ca,
        })
    }
}

/// A bound port and the TLS configuration it serves with.
struct Port {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
}

impl Port {
    async fn bind(addr: SocketAddr, tls: Arc<ServerConfig>) -> Result<Self> {
        let (listener, addr) = listen::bind(addr).await?;
        Ok(Self {
            listener,
            addr,
            tls,
        })
    }

    async fn serve(self, app: axum::Router, limits: Limits, stop: listen::Stop) {
        listen::serve(self.listener, self.tls, app, limits, stop).await
    }
}

/// A [`Webhook`] with its port bound and certificate loaded.
pub struct BoundWebhook {
    webhook: Webhook,
    webhook_port: Port,
    metrics_port: Port,
    resolver: Arc<CertResolver>,
    client_ca: Option<Arc<ClientCa>>,
    shared: SharedState,
}

impl BoundWebhook {
    /// The webhook port.
    pub fn local_addr(&self) -> SocketAddr {
        self.webhook_port.addr
    }

    /// The port of probes and metrics.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_port.addr
    }

    /// The registry of remote clients the webhook pushes to.
    pub fn remotes(&self) -> Remotes {
        self.shared.remotes.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn readiness(&self) -> Readiness {
        self.shared.readiness.clone()
    }

    /// Runs until `shutdown`: stops accepting, drains in-flight requests, then stops the
    /// reconciler and hands the Lease over.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.run_until(listen::Stop::at_once(shutdown)).await
    }

    /// [`BoundWebhook::run`], the connections told to go at `stop.drain` and the listeners closed at
    /// `stop.close` (see [`listen::Stop`]).
    pub async fn run_until(self, stop: listen::Stop) -> Result<()> {
        let Self {
            webhook,
            webhook_port,
            metrics_port,
            resolver,
            client_ca,
            shared,
        } = self;
        let Webhook {
            primary,
            listen: _,
            metrics_listen: _,
            client_auth: _,
            limits,
            metrics_limits,
            body_budget,
            tls_cert: _,
            tls_key: _,
            rule: _,
            mesh_namespace,
            resync_period,
            token_renew_fraction,
            push_deadline,
            backoff,
            concurrent_syncs,
            remote_options: _,
            lease_name,
            lease_timing,
            identity,
            metrics: _,
            log_level,
        } = webhook;
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(resolver.watch(background.clone()));
        if let Some(client_ca) = client_ca {
            tasks.spawn(client_ca.watch(background.clone()));
        }

        let is_leader = match lease_name {
            Some(name) => {
                let settings = LeaseSettings {
                    namespace: mesh_namespace.clone(),
                    name,
                    identity: identity.clone(),
                    timing: lease_timing,
                };
                let (is_leader, election) =
                    leader::spawn(primary.clone(), settings, background.clone());
                tasks.spawn(async move {
                    let _ = election.await;
                });
                is_leader
            }
            None => leader::always_leader(),
        };
        tasks.spawn(
            shared
                .metrics
                .clone()
                .follow_leadership(is_leader.clone(), background.clone()),
        );
        let mut settings = reconcile::Settings::new(&mesh_namespace, &identity);
        settings.resync_period = resync_period;
        settings.token_renew_fraction = token_renew_fraction;
        settings.drift_settle = push_deadline + Duration::from_secs(1);
        settings.backoff = backoff;
        settings.concurrent_syncs = concurrent_syncs;
        let reconciler = Reconciler::new(primary.clone(), shared.clone(), is_leader, settings);
        tasks.spawn(reconciler.run(background.clone()));

        let reporter = Reporter {
            controller: "mesh-webhook".to_owned(),
            instance: Some(identity.clone()),
        };
        let mut state = AppState::new(shared, push_deadline)
            .with_body_budget(body_budget)
            .with_events(primary.clone(), reporter);
        if let Some(setter) = log_level {
            state = state.with_log_level(setter);
        }
        tracing::info!(
            local_addr = %webhook_port.addr,
            metrics_addr = %metrics_port.addr,
            %identity,
            "serving admission webhook"
        );
        let ops = http::ops_router(state.clone());
        tokio::join!(
            webhook_port.serve(http::router(state), limits, stop.clone()),
            metrics_port.serve(ops, metrics_limits, stop),
        );
        tracing::info!("server drained, stopping reconciler");
        background.cancel();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
