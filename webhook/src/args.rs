//! Command line of `mesh-webhook`. Every flag can also be set through its environment
//! variable, which is how the Deployment configures it.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::{
    app::{ClientAuth, Webhook},
    backoff::BackoffSettings,
    http::{self, LogLevelSetter},
    leader::{self, LeaseTiming},
    listen::Limits,
};

use mesh_core::{
    labels::{DEFAULT_EXCLUDED_NAMESPACES, DEFAULT_MANAGED_LABELS, SyncRule},
    remote::RemoteOptions,
};

/// Admission webhook and reconciler that mirror Istio sidecar-injection labels from the
/// primary cluster's namespaces to every attached remote cluster.
#[derive(Clone, Debug, Parser)]
#[command(name = "mesh-webhook", version)]
pub struct Args {
    /// Address of the webhook port (`/mutate`), where the apiserver calls.
    #[arg(long, env = "MESH_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the port serving `/healthz`, `/readyz`, `/metrics` and `/log-level`, over
    /// TLS with the same certificate but no client certificate asked (probes and Prometheus
    /// present none).
    #[arg(
        long,
        env = "MESH_WEBHOOK_METRICS_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub metrics_listen: SocketAddr,

    /// PEM CA certificate(s): the webhook port then requires a client certificate signed by
    /// one of them (the apiserver's, configured in its AdmissionConfiguration), and refuses
    /// the handshake of anyone else. Re-read when the file changes.
    #[arg(long, env = "MESH_WEBHOOK_CLIENT_CA_FILE", value_name = "PEM")]
    pub client_ca_file: Option<PathBuf>,

    /// Subject common names a client certificate must carry, one of them (comma-separated;
    /// empty: any the CA signed). Needs --client-ca-file.
    #[arg(
        long,
        env = "MESH_WEBHOOK_CLIENT_ALLOWED_NAMES",
        value_delimiter = ',',
        value_name = "NAMES",
        requires = "client_ca_file"
    )]
    pub client_allowed_names: Vec<String>,

    /// Time a client gets to send a request's headers (this also closes HTTP/1.1 connections
    /// idle that long, and connections that made no request within it of being accepted).
    #[arg(long, env = "MESH_WEBHOOK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = mesh_core::duration::parse)]
    pub header_read_timeout: Duration,

    /// A connection without a request in progress this long, once it made one, is closed.
    #[arg(long, env = "MESH_WEBHOOK_IDLE_TIMEOUT", default_value = "120s", value_parser = mesh_core::duration::parse)]
    pub idle_timeout: Duration,

    /// Time a client gets to send a request's whole body once its headers came.
    #[arg(long, env = "MESH_WEBHOOK_BODY_TIMEOUT", default_value = "10s", value_parser = mesh_core::duration::parse)]
    pub body_timeout: Duration,

    /// Connections open at once on the webhook port; past it, a new one takes the place of the
    /// one idle longest (one that never made a request first), and new ones wait in the
    /// kernel's queue only while every connection has a request in progress.
    #[arg(long, env = "MESH_WEBHOOK_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections open at once on the metrics port, as --max-connections on the webhook port.
    /// Any pod may reach it, and its callers are the kubelet's probes and a few Prometheus
    /// scrapers: fewer connections, each with smaller buffers, keep what a flood of it can
    /// make the webhook hold to a few MiB.
    #[arg(long, env = "MESH_WEBHOOK_METRICS_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_max_connections: u32,

    /// Memory, in MiB, that the reviews being read and handled may hold at once (their bodies,
    /// and what they become parsed), whatever the connections; a review past it is answered 503
    /// at once (the apiserver then fails open and the reconciler converges the remotes). At
    /// least 17: one review of the largest body, 1 MiB, parsed.
    #[arg(long, env = "MESH_WEBHOOK_REVIEW_BODY_BUDGET_MIB", default_value_t = DEFAULT_REVIEW_BODY_BUDGET_MIB, value_name = "MIB")]
    pub review_body_budget_mib: u32,

    /// HTTP/2 connections are pinged this often...
    #[arg(long, env = "MESH_WEBHOOK_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = mesh_core::duration::parse)]
    pub http2_keepalive_interval: Duration,

    /// ...and closed when a ping is not answered within this.
    #[arg(long, env = "MESH_WEBHOOK_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = mesh_core::duration::parse)]
    pub http2_keepalive_timeout: Duration,

    /// PEM certificate chain served by the webhook; reloaded when the file changes.
    #[arg(long, env = "MESH_WEBHOOK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the certificate; reloaded when the file changes.
    #[arg(long, env = "MESH_WEBHOOK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Directory holding `tls.crt` and `tls.key` (a mounted kubernetes.io/tls Secret), instead
    /// of --tls-cert and --tls-key.
    #[arg(
        long,
        env = "MESH_WEBHOOK_CERT_DIR",
        conflicts_with_all = ["tls_cert", "tls_key"],
        required_unless_present_all = ["tls_cert", "tls_key"]
    )]
    pub cert_dir: Option<PathBuf>,

    /// Kubeconfig of the primary cluster. Default: in-cluster service account, else
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "MESH_WEBHOOK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Label keys kept equal between the primary and the remotes (comma-separated).
    #[arg(long, env = mesh_core::MANAGED_LABELS_ENV, value_delimiter = ',', default_values_t = DEFAULT_MANAGED_LABELS.map(String::from))]
    pub managed_labels: Vec<String>,

    /// Namespaces never synced (comma-separated). The mesh namespace is always excluded.
    #[arg(long, env = mesh_core::EXCLUDED_NAMESPACES_ENV, value_delimiter = ',', default_values_t = DEFAULT_EXCLUDED_NAMESPACES.map(String::from))]
    pub excluded_namespaces: Vec<String>,

    /// Namespace holding the kubeconfig Secrets of attached clusters and the leader Lease: the
    /// webhook's own (the Deployment passes its namespace as POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = mesh_core::MESH_NAMESPACE)]
    pub mesh_namespace: String,

    /// Full sync of every remote at least this often (e.g. 60s, 5m, or seconds).
    #[arg(long, env = "MESH_WEBHOOK_RESYNC_PERIOD", default_value = "60s", value_parser = mesh_core::duration::parse)]
    pub resync_period: Duration,

    /// Renew a time-bound stored token (one issued by the TokenRequest API) once this fraction
    /// of its lifetime has passed (between 0 and 1, exclusive); the leader asks the remote
    /// for a new one and writes it into the cluster's Secret.
    #[arg(long, env = "MESH_WEBHOOK_TOKEN_RENEW_FRACTION", default_value_t = crate::reconcile::DEFAULT_TOKEN_RENEW_FRACTION)]
    pub token_renew_fraction: f64,

    /// Time the webhook spends pushing one change to the remotes before answering; keep it
    /// well under the webhook's timeoutSeconds (5s). Whatever misses it, the reconciler does.
    #[arg(long, env = "MESH_WEBHOOK_PUSH_DEADLINE", default_value = "2s", value_parser = mesh_core::duration::parse)]
    pub push_deadline: Duration,

    /// Wait before the first retry of a remote whose sync failed (unreachable, refused
    /// credentials, a namespace write refused); every further failure doubles it, up to
    /// --backoff-max.
    #[arg(long, env = "MESH_WEBHOOK_BACKOFF_INITIAL", default_value = "1s", value_parser = mesh_core::duration::parse)]
    pub backoff_initial: Duration,

    /// Longest wait between retries of a failing remote.
    #[arg(long, env = "MESH_WEBHOOK_BACKOFF_MAX", default_value = "30s", value_parser = mesh_core::duration::parse)]
    pub backoff_max: Duration,

    /// Remotes synced at once (each sync holds that remote's namespaces while it runs); the
    /// retries of remotes whose last sync failed take turns apart, as many at once again, so
    /// that they never delay the others.
    #[arg(long, env = "MESH_WEBHOOK_CONCURRENT_SYNCS", default_value_t = crate::reconcile::DEFAULT_CONCURRENT_SYNCS)]
    pub concurrent_syncs: usize,

    /// After SIGTERM, how long to keep answering, with `/readyz` failing, before closing the
    /// listeners: until every kube-proxy and the apiserver have dropped this pod from the
    /// Service's endpoints, calls still reach it, and one refused would be a change the
    /// apiserver applies without pushing it (SIGINT stops at once).
    #[arg(long, env = "MESH_WEBHOOK_SHUTDOWN_DELAY", default_value = "5s", value_parser = mesh_core::duration::parse)]
    pub shutdown_delay: Duration,

    /// Connect and read timeout of calls to remote clusters.
    #[arg(long, env = "MESH_WEBHOOK_REMOTE_TIMEOUT", default_value = "2s", value_parser = mesh_core::duration::parse)]
    pub remote_timeout: Duration,

    /// Longest a whole call to a remote cluster may take, its answer included: a remote that
    /// answers a few bytes at a time never trips --remote-timeout, and would otherwise hold
    /// its sync for as long as it pleases.
    #[arg(long, env = "MESH_WEBHOOK_REMOTE_CALL_DEADLINE", default_value = "30s", value_parser = mesh_core::duration::parse)]
    pub remote_call_deadline: Duration,

    /// Name of the Lease electing the replica that reconciles; empty disables the election
    /// (this replica always reconciles: only for a single replica). The Role install renders
    /// lets the webhook read and renew the Lease of the default name only.
    #[arg(long, env = "MESH_WEBHOOK_LEASE_NAME", default_value = "mesh-webhook")]
    pub lease_name: String,

    /// How long the Lease stays valid after its holder's last renewal: how long the other
    /// replicas wait before taking over from a leader that went silent.
    #[arg(long, env = "MESH_WEBHOOK_LEASE_DURATION", default_value = "15s", value_parser = mesh_core::duration::parse)]
    pub lease_duration: Duration,

    /// How long the leader keeps reconciling without a successful renewal (shorter than
    /// --lease-duration); every call to renew is abandoned then.
    #[arg(long, env = "MESH_WEBHOOK_RENEW_DEADLINE", default_value = "10s", value_parser = mesh_core::duration::parse)]
    pub renew_deadline: Duration,

    /// Time between attempts to acquire or renew the Lease (shorter than --renew-deadline).
    #[arg(long, env = "MESH_WEBHOOK_RETRY_PERIOD", default_value = "2s", value_parser = mesh_core::duration::parse)]
    pub retry_period: Duration,

    /// Identity of this replica in the Lease. Default: the pod name (POD_NAME, else the
    /// hostname) and a random suffix.
    #[arg(long, env = "MESH_WEBHOOK_IDENTITY")]
    pub identity: Option<String>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info,mesh=debug`); changeable at run time
    /// with `PUT /log-level` from loopback.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "MESH_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// `--review-body-budget-mib`'s default: [`http::BODY_BUDGET`] in MiB.
const DEFAULT_REVIEW_BODY_BUDGET_MIB: u32 = (http::BODY_BUDGET >> 20) as u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

impl Args {
    /// The webhook port's limits: `--max-connections` and the timeout flags.
    fn webhook_limits(&self) -> Limits {
        self.port_limits(Limits::default(), self.max_connections)
    }

    /// The metrics port's limits: `--metrics-max-connections` and the timeout flags.
    fn metrics_limits(&self) -> Limits {
        self.port_limits(Limits::metrics_port(), self.metrics_max_connections)
    }

    /// A port's `defaults` with `max_connections` and the timeouts, which both ports share.
    fn port_limits(&self, defaults: Limits, max_connections: u32) -> Limits {
        Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: max_connections as usize,
            http2_keepalive_interval: self.http2_keepalive_interval,
            http2_keepalive_timeout: self.http2_keepalive_timeout,
            ..defaults
        }
    }

    /// `--review-body-budget-mib` in bytes (saturating: a budget past memory is no budget).
    fn review_body_budget(&self) -> usize {
        usize::try_from(u64::from(self.review_body_budget_mib) << 20).unwrap_or(usize::MAX)
    }

    /// Parses the process arguments and runs until SIGTERM or SIGINT.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        Self::parse().run().await
    }

    /// Refuses values the flags' types let through but the webhook cannot run with, one line
    /// each, naming the flag.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.token_renew_fraction > 0.0 && self.token_renew_fraction < 1.0,
            "--token-renew-fraction must be between 0 and 1 (e.g. 0.6)"
        );
        for (flag, value) in [
            ("--resync-period", self.resync_period),
            ("--push-deadline", self.push_deadline),
            ("--backoff-initial", self.backoff_initial),
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--body-timeout", self.body_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
            ("--http2-keepalive-timeout", self.http2_keepalive_timeout),
            ("--remote-call-deadline", self.remote_call_deadline),
        ] {
            anyhow::ensure!(!value.is_zero(), "{flag} must be positive");
        }
        anyhow::ensure!(
            self.backoff_max >= self.backoff_initial,
            "--backoff-max must not be shorter than --backoff-initial"
        );
        anyhow::ensure!(
            self.concurrent_syncs > 0,
            "--concurrent-syncs must be at least 1"
        );
        anyhow::ensure!(
            self.review_body_budget() >= http::REVIEW_MEMORY_LIMIT,
            "--review-body-budget-mib must be at least {}: the budget must hold one whole review",
            http::REVIEW_MEMORY_LIMIT.div_ceil(1 << 20)
        );
        anyhow::ensure!(
            self.client_allowed_names
                .iter()
                .all(|name| !name.trim().is_empty()),
            "--client-allowed-names holds an empty name: list the common names of the \
             apiserver's client certificate, comma-separated, or leave the flag out to accept any \
             certificate the client CA signs"
        );
        Ok(())
    }

    /// Runs the webhook until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        self.check()?;
        let body_budget = self.review_body_budget();
        let limits = self.webhook_limits();
        let metrics_limits = self.metrics_limits();
        let Self {
            listen,
            metrics_listen,
            client_ca_file,
            client_allowed_names,
            header_read_timeout: _,
            idle_timeout: _,
            body_timeout: _,
            max_connections: _,
            metrics_max_connections: _,
            review_body_budget_mib: _,
            http2_keepalive_interval: _,
            http2_keepalive_timeout: _,
            tls_cert,
            tls_key,
            cert_dir,
            kubeconfig,
            managed_labels,
            excluded_namespaces,
            mesh_namespace,
            resync_period,
            token_renew_fraction,
            push_deadline,
            backoff_initial,
            backoff_max,
            concurrent_syncs,
            remote_timeout,
            remote_call_deadline,
            lease_name,
            shutdown_delay,
            lease_duration,
            renew_deadline,
            retry_period,
            identity,
            log_level,
            log_format,
        } = self;
        let log_setter = init_tracing(&log_level, log_format)?;
        let lease_timing = LeaseTiming {
            lease_duration,
            renew_deadline,
            retry_period,
        };
        lease_timing.validate()?;
        raise_open_files([&limits, &metrics_limits]);
        match (&client_ca_file, client_allowed_names.as_slice()) {
            (None, _) => tracing::warn!("{NO_CLIENT_CA}"),
            (Some(_), []) => tracing::info!("callers need a certificate of the client CA"),
            (Some(_), names) => tracing::info!(
                allowed = ?names,
                "callers need a certificate of the client CA issued to one of the allowed names"
            ),
        }
        if push_deadline >= Duration::from_secs(5) {
            tracing::warn!(
                push_deadline_ms = push_deadline.as_millis(),
                "--push-deadline is not under the webhook timeout (5s): the apiserver may give up first"
            );
        }

        let (tls_cert, tls_key) = match (cert_dir, tls_cert, tls_key) {
            (Some(dir), _, _) => (dir.join("tls.crt"), dir.join("tls.key")),
            (None, Some(cert), Some(key)) => (cert, key),
            // clap requires one or the other.
            _ => anyhow::bail!("set --cert-dir, or --tls-cert and --tls-key"),
        };
        let primary = primary_client(kubeconfig.as_deref()).await?;
        let mut excluded = excluded_namespaces;
        excluded.push(mesh_namespace.clone());
        let rule = SyncRule::new(
            managed_labels.into_iter().map(|k| k.trim().to_owned()),
            excluded.into_iter().map(|n| n.trim().to_owned()),
        );
        anyhow::ensure!(
            rule.managed_keys().next().is_some(),
            "--managed-labels names no label"
        );
        tracing::info!(
            managed = ?rule.managed_keys().collect::<Vec<_>>(),
            excluded = ?rule.excluded_namespaces().collect::<Vec<_>>(),
            "sync rule"
        );

        let identity = identity.unwrap_or_else(leader::default_identity);
        let lease_name = Some(lease_name).filter(|name| !name.is_empty());
        let webhook = Webhook {
            listen,
            metrics_listen,
            client_auth: client_ca_file.map(|ca_file| ClientAuth {
                ca_file,
                allowed_names: client_allowed_names
                    .into_iter()
                    .map(|name| name.trim().to_owned())
                    .collect(),
            }),
            limits,
            metrics_limits,
            body_budget,
            rule: Arc::new(rule),
            mesh_namespace,
            resync_period,
            token_renew_fraction,
            push_deadline,
            backoff: BackoffSettings {
                initial: backoff_initial,
                max: backoff_max,
            },
            concurrent_syncs,
            remote_options: RemoteOptions {
                connect_timeout: remote_timeout,
                read_timeout: remote_timeout,
                call_deadline: Some(remote_call_deadline),
                ..RemoteOptions::default()
            },
            lease_name,
            lease_timing,
            identity,
            log_level: Some(log_setter),
            ..Webhook::new(primary, tls_cert, tls_key)
        }
        .bind()
        .await?;

        let stop = crate::listen::Stop::default();
        tokio::spawn(signalled(stop.clone(), webhook.readiness(), shutdown_delay));
        webhook.run_until(stop).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Logged at startup without --client-ca-file.
const NO_CLIENT_CA: &str = "no --client-ca-file: anyone who reaches the webhook port can make \
                            it write namespaces on every remote";

/// Raises the open-files limit, and says when it still cannot hold the `ports`' connections.
fn raise_open_files(ports: [&Limits; 2]) {
    // Every port's, plus what the process needs besides (clients of the clusters, files).
    let sockets: usize = ports.iter().map(|limits| limits.max_sockets()).sum();
    let needed = sockets as u64 + 256;
    match crate::fd_limit::raise() {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what --max-connections and --metrics-max-connections \
             allow: lower them or raise the hard limit"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(
            error = %mesh_core::failure::error_chain(&error),
            "cannot raise the open-files limit"
        ),
    }
}

/// The kubeconfig at `path`, its certificate, key and exec paths resolved against its directory
/// as kubectl resolves them.
fn read_kubeconfig(path: &std::path::Path) -> anyhow::Result<Kubeconfig> {
    // Read as UTF-8 first: kube-client's own reader panics on a truncated UTF-16 file.
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    Kubeconfig::read_from(path)
        .with_context(|| format!("cannot parse kubeconfig {}", path.display()))
}

async fn primary_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = primary_config(kubeconfig).await?;
    mesh_core::retry_after::client(config).context("cannot build the primary client")
}

async fn primary_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let mut config = match kubeconfig {
        None => Config::infer()
            .await
            .context("cannot configure a client for the primary cluster")?,
        Some(path) => {
            Config::from_custom_kubeconfig(read_kubeconfig(path)?, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
    };
    // Its watches are the reconciler's view of the primary: one on a connection gone silent
    // (a stalled apiserver, a peer gone without a word) would be trusted for good. Every
    // watch ends within `WATCH_SECONDS`, so a connection silent this long is dead. Counted
    // from each request, not from when its pooled connection last read.
    mesh_core::remote::time_each_request(&mut config, mesh_core::remote::WATCH_READ_TIMEOUT);
    Ok(config)
}

/// Stops at once on SIGINT; on the first SIGTERM drains (not ready, open connections told to
/// go) and closes `delay` later (a second signal cuts the delay short).
async fn signalled(
    stop: crate::listen::Stop,
    readiness: crate::readiness::Readiness,
    delay: Duration,
) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                None
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received, shutting down");
            stop.drain.cancel();
            stop.close.cancel();
            return;
        }
        () = next(&mut terminate) => {}
    }
    readiness.set_draining();
    stop.drain.cancel();
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "SIGTERM received: not ready, still serving until the endpoints drop this replica"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = tokio::signal::ctrl_c() => {}
        () = next(&mut terminate) => {}
    }
    tracing::info!("shutting down");
    stop.close.cancel();
}

/// The next delivery of `signal`; never when it could not be listened for.
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Installs the global subscriber with a filter that can be replaced at run time.
fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<LogLevelSetter> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    }
    .context("cannot install the log subscriber")?;
    Ok(Arc::new(move |directives: &str| {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The read timeout counted the time a pooled connection sat idle: a lease renewal or an
    /// Event sent on a connection quiet for a minute had seconds left for its answer.
    #[tokio::test]
    async fn each_request_to_the_primary_has_the_whole_read_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary");
        let kubeconfig = "contexts: [{name: p, context: {cluster: p, user: u}}]\n\
                          clusters: [{name: p, cluster: {server: 'https://primary:6443'}}]\n\
                          users: [{name: u, user: {token: t}}]\ncurrent-context: p\n";
        std::fs::write(&path, kubeconfig).unwrap();
        let config = primary_config(Some(&path)).await.unwrap();
        let timeout = Some(mesh_core::remote::WATCH_READ_TIMEOUT);
        assert_eq!(config.read_timeout, timeout);
        assert!(config.reset_reader_on_write);
    }

    #[test]
    fn the_missing_client_ca_warning_is_one_sentence() {
        assert_eq!(
            NO_CLIENT_CA,
            "no --client-ca-file: anyone who reaches the webhook port can make it write namespaces on every remote"
        );
    }

    #[test]
    fn kubeconfig_paths_are_read_against_the_files_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("primary.kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: p\n  cluster:\n    \
             server: https://127.0.0.1:6443\n    certificate-authority: certs/ca.crt\n\
             users:\n- name: p\n  user:\n    client-certificate: certs/me.crt\n    \
             client-key: /elsewhere/me.key\ncontexts:\n- name: p\n  context: {cluster: p, user: p}\n\
             current-context: p\n",
        )
        .expect("write");
        let kubeconfig = read_kubeconfig(&path).expect("read");
        let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        let user = kubeconfig.auth_infos[0].auth_info.as_ref().expect("user");
        let certs = dir.path().join("certs");
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            certs.join("ca.crt").to_str()
        );
        assert_eq!(
            user.client_certificate.as_deref(),
            certs.join("me.crt").to_str()
        );
        assert_eq!(user.client_key.as_deref(), Some("/elsewhere/me.key"));
    }

    #[test]
    fn a_kubeconfig_that_is_not_utf8_is_refused_in_one_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("utf16.kubeconfig");
        // A UTF-16 byte-order mark and an odd number of bytes after it.
        std::fs::write(&path, [0xFF, 0xFE, b'a', 0, b'b']).expect("write");
        let error = read_kubeconfig(&path).expect_err("refused");
        assert!(
            error.to_string().starts_with("cannot read kubeconfig "),
            "{error:#}"
        );
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_env_var() {
        for arg in Args::command().get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
    }

    #[test]
    fn allowed_client_names_need_the_client_ca() {
        let error = Args::try_parse_from([
            "mesh-webhook",
            "--cert-dir=/tls",
            "--client-allowed-names=kube-apiserver",
        ])
        .expect_err("names without a CA");
        assert!(error.to_string().contains("--client-ca-file"), "{error}");
        let args = Args::try_parse_from([
            "mesh-webhook",
            "--cert-dir=/tls",
            "--client-ca-file=/ca.crt",
            "--client-allowed-names=kube-apiserver,front-proxy",
        ])
        .expect("parse");
        assert_eq!(args.client_allowed_names, ["kube-apiserver", "front-proxy"]);
        // An empty name would quietly accept any: refused.
        for names in ["", ",", " ", "kube-apiserver,"] {
            let args = Args::try_parse_from([
                "mesh-webhook",
                "--cert-dir=/tls",
                "--client-ca-file=/ca.crt",
                &format!("--client-allowed-names={names}"),
            ])
            .expect("parse");
            let error = args.check().expect_err("an empty name");
            assert!(
                error
                    .to_string()
                    .starts_with("--client-allowed-names holds an empty name"),
                "{names:?}: {error}"
            );
        }
    }

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["mesh-webhook", "--cert-dir", "/tls"]).expect("parse");
        assert_eq!(args.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(args.metrics_listen, "0.0.0.0:9443".parse().expect("addr"));
        assert_eq!(args.client_ca_file, None);
        assert_eq!(args.webhook_limits(), Limits::default());
        assert_eq!(args.metrics_limits(), Limits::metrics_port());
        assert_eq!(args.review_body_budget(), http::BODY_BUDGET);
        assert_eq!(args.resync_period, Duration::from_secs(60));
        assert_eq!(args.push_deadline, Duration::from_secs(2));
        assert_eq!(
            BackoffSettings {
                initial: args.backoff_initial,
                max: args.backoff_max
            },
            BackoffSettings::default()
        );
        assert_eq!(
            args.concurrent_syncs,
            crate::reconcile::DEFAULT_CONCURRENT_SYNCS
        );
        assert_eq!(
            args.managed_labels,
            DEFAULT_MANAGED_LABELS.map(String::from)
        );
        assert_eq!(
            args.excluded_namespaces,
            DEFAULT_EXCLUDED_NAMESPACES.map(String::from)
        );
        assert_eq!(args.lease_name, "mesh-webhook");
        assert_eq!(
            LeaseTiming {
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
            },
            LeaseTiming::default()
        );
        assert_eq!(args.log_format, LogFormat::Plain);
        assert_eq!(
            args.remote_call_deadline,
            mesh_core::remote::DEFAULT_CALL_DEADLINE
        );
        args.check().expect("the defaults are accepted");
    }

    /// What clap lets through but the webhook cannot run with is refused in one line naming
    /// the flag.
    #[test]
    fn values_it_cannot_run_with_are_refused() {
        let refusal = |flag: &str, value: &str| {
            let args = Args::try_parse_from(["mesh-webhook", "--cert-dir=/tls", flag, value])
                .expect("parse");
            args.check().expect_err("refused").to_string()
        };
        for flag in [
            "--resync-period",
            "--push-deadline",
            "--backoff-initial",
            "--header-read-timeout",
            "--idle-timeout",
            "--body-timeout",
            "--http2-keepalive-interval",
            "--http2-keepalive-timeout",
            "--remote-call-deadline",
        ] {
            assert_eq!(refusal(flag, "0s"), format!("{flag} must be positive"));
        }
        assert_eq!(
            refusal("--backoff-max", "500ms"),
            "--backoff-max must not be shorter than --backoff-initial"
        );
        assert_eq!(
            refusal("--token-renew-fraction", "1"),
            "--token-renew-fraction must be between 0 and 1 (e.g. 0.6)"
        );
        assert_eq!(
            refusal("--concurrent-syncs", "0"),
            "--concurrent-syncs must be at least 1"
        );
        assert_eq!(
            refusal("--review-body-budget-mib", "16"),
            "--review-body-budget-mib must be at least 17: the budget must hold one whole review"
        );
    }

    #[test]
    fn the_review_body_budget_is_given_in_mib() {
        let parse = |value: &str| {
            Args::try_parse_from([
                "mesh-webhook",
                "--cert-dir=/tls",
                &format!("--review-body-budget-mib={value}"),
            ])
        };
        let args = parse("17").expect("parse");
        args.check().expect("one whole review is enough");
        assert_eq!(args.review_body_budget(), http::REVIEW_MEMORY_LIMIT);
        let args = parse("256").expect("parse");
        args.check().expect("accepted");
        assert_eq!(args.review_body_budget(), 256 << 20);
        assert!(args.review_body_budget() > http::BODY_BUDGET);
        for value in ["-1", "0.5", "64MiB"] {
            assert!(parse(value).is_err(), "{value} parsed");
        }
    }

    #[test]
    fn certificate_flags() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("mesh-webhook").chain(args.iter().copied()))
        };
        assert!(parse(&["--tls-cert=c", "--tls-key=k"]).is_ok());
        assert!(parse(&["--cert-dir=/tls"]).is_ok());
        assert!(parse(&[]).is_err(), "a certificate is required");
        assert!(parse(&["--tls-cert=c"]).is_err(), "the key is required too");
        assert!(parse(&["--cert-dir=/tls", "--tls-cert=c", "--tls-key=k"]).is_err());
    }

    #[test]
    fn lease_timing_flags() {
        let args = Args::try_parse_from([
            "mesh-webhook",
            "--cert-dir=/tls",
            "--lease-duration=4s",
            "--renew-deadline=2s",
            "--retry-period=500ms",
        ])
        .expect("parse");
        let timing = LeaseTiming {
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        assert_eq!(timing.renew_deadline, Duration::from_secs(2));
        assert_eq!(timing.retry_period, Duration::from_millis(500));
        timing.validate().expect("valid");
    }

    /// The metrics port has a cap of its own (and keeps its small buffers); the timeouts are
    /// both ports'.
    #[test]
    fn each_port_has_its_own_connection_cap() {
        let parse = |flags: &[&str]| {
            Args::try_parse_from(["mesh-webhook", "--cert-dir=/tls"].iter().chain(flags))
        };
        let args = parse(&[
            "--max-connections=100",
            "--metrics-max-connections=8",
            "--idle-timeout=30s",
        ])
        .expect("parse");
        let (webhook, metrics) = (args.webhook_limits(), args.metrics_limits());
        assert_eq!((webhook.max_connections, metrics.max_connections), (100, 8));
        assert_eq!(webhook.idle_timeout, Duration::from_secs(30));
        assert_eq!(metrics.idle_timeout, Duration::from_secs(30));
        assert_eq!(
            metrics.http1_max_buf_size,
            Limits::metrics_port().http1_max_buf_size
        );
        assert!(parse(&["--metrics-max-connections=0"]).is_err());
    }

    #[test]
    fn lists_and_durations() {
        let args = Args::try_parse_from([
            "mesh-webhook",
            "--tls-cert=c",
            "--tls-key=k",
            "--managed-labels=istio.io/rev,istio-injection",
            "--resync-period=5m",
            "--push-deadline=1500ms",
            "--backoff-initial=250ms",
            "--backoff-max=2s",
            "--log-format=json",
        ])
        .expect("parse");
        assert_eq!(args.backoff_initial, Duration::from_millis(250));
        assert_eq!(args.backoff_max, Duration::from_secs(2));
        assert_eq!(args.managed_labels, ["istio.io/rev", "istio-injection"]);
        assert_eq!(args.resync_period, Duration::from_secs(300));
        assert_eq!(args.push_deadline, Duration::from_millis(1500));
        assert_eq!(args.log_format, LogFormat::Json);
    }
}
