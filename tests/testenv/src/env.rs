//! A primary and N remote clusters on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::try_join_all;

use crate::ports::free_port;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::binaries::Binaries;
use crate::kubeconfig::{admin_kubeconfig, token_kubeconfig};
use crate::pki::ClusterPki;
use crate::process::ProcessGroup;
use crate::webhook_client::WebhookClient;

/// How many apiservers start at once. They share one etcd and the machine's cores: started
/// all together, tens of them make each other too slow for their own start-up checks (and
/// their controller-managers' 10 s wait for /healthz).
const START_WAVE: usize = 4;

/// How many times one wave of apiservers may move to other ports, or etcd to others, because
/// another server took a port first.
const PORT_MOVES: usize = 3;

/// How long a control plane may take to answer /readyz before start fails.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of remote clusters besides the primary.
    pub remotes: usize,
    /// Where kubeconfigs, certificates, logs and etcd data go; a temporary directory when unset.
    pub dir: Option<PathBuf>,
    /// Pods will run (a node joins the primary, see [`crate::node`]): every apiserver listens
    /// on the host's address, which the pod network routes to, instead of loopback (inside a
    /// pod, 127.0.0.1 is the pod itself).
    pub node: bool,
    /// Run the controllers that write to every new namespace (`serviceaccount-controller`,
    /// which creates its `default` ServiceAccount, and `root-ca-certificate-publisher-controller`,
    /// its `kube-root-ca.crt` ConfigMap). Off, creating namespaces costs one write each instead
    /// of three, for scenarios that create tens of thousands; kubectl-mesh needs neither (attach
    /// creates its own ServiceAccount, whose token Secret the token controller still fills in).
    pub per_namespace_controllers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            remotes: 0,
            dir: None,
            node: false,
            per_namespace_controllers: true,
        }
    }
}

impl Options {
    /// A primary and `remotes` remote clusters, everything else as by default.
    pub fn with_remotes(remotes: usize) -> Self {
        Self {
            remotes,
            ..Self::default()
        }
    }
}

/// The first address of the Service range: the `kubernetes` Service's ClusterIP.
pub const KUBERNETES_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 1);

/// One cluster of the environment.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// `primary`, `remote-1`, `remote-2`, ...
    pub name: String,
    /// Admin kubeconfig (client certificate of system:masters), credentials inline.
    pub kubeconfig: PathBuf,
    /// `https://<address>:<port>`: 127.0.0.1, or the host's address with a node.
    pub server: String,
    port: u16,
    host: std::net::Ipv4Addr,
    dir: PathBuf,
    pki: ClusterPki,
}

impl Cluster {
    /// An admin client for this cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// A `kubectl` command bound to this cluster's admin kubeconfig.
    pub fn kubectl(&self, binaries: &Binaries) -> Command {
        let mut cmd = Command::new(binaries.kubectl());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `namespace/name` with a token
    /// from the TokenRequest API, to `path`: a process run with it has that account's rights
    /// and no more.
    pub async fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &Default::default(), &request)
            .await
            .with_context(|| format!("requesting a token for {namespace}/{name}"))?
            .status
            .map(|s| s.token)
            .with_context(|| format!("no token issued for {namespace}/{name}"))?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let yaml = token_kubeconfig(&self.name, &user, &self.server, &self.pki, &token);
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The address its apiserver listens on.
    pub fn host(&self) -> std::net::Ipv4Addr {
        self.host
    }

    /// Its kube-apiserver's log.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// Name of this cluster's kube-apiserver process, for [`TestEnv::pause_process`] and
    /// [`TestEnv::resume_process`].
    pub fn apiserver_name(&self) -> String {
        format!("{}/kube-apiserver", self.name)
    }

    /// Points the cluster, and its admin kubeconfig, at another port (before its apiserver
    /// starts there).
    fn move_to(&mut self, port: u16) -> anyhow::Result<()> {
        self.port = port;
        self.server = format!("https://{}:{port}", self.host);
        std::fs::write(
            &self.kubeconfig,
            admin_kubeconfig(&self.name, &self.server, &self.pki),
        )
        .with_context(|| format!("writing {}", self.kubeconfig.display()))
    }
}

/// Running control planes. Dropping it stops every process it started.
pub struct TestEnv {
    dir: PathBuf,
    node: bool,
    per_namespace_controllers: bool,
    binaries: Binaries,
    etcd_url: String,
    clusters: Vec<Cluster>,
    webhook_client: WebhookClient,
    processes: Mutex<ProcessGroup>,
    // Last: removed after the processes that write into it are gone.
    _temp: Option<tempfile::TempDir>,
}

impl TestEnv {
    /// Builds the binaries if needed, then starts etcd, and for every cluster a
    /// kube-apiserver and a kube-controller-manager; returns once every apiserver is ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut env = Self::prepare(options).await?;
        env.launch().await?;
        eprintln!("[testenv] environment up in {:.2?}", started.elapsed());
        Ok(env)
    }

    /// Everything but the processes: binaries, directories, certificates, kubeconfigs and the
    /// port of every apiserver.
    async fn prepare(options: Options) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binaries = tokio::task::spawn_blocking(Binaries::ensure).await??;
        let step = Instant::now();
        let (dir, temp) = match options.dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new().prefix("mesh-testenv-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let address = if options.node {
            Some(routable_address()?)
        } else {
            None
        };
        let names = std::iter::once("primary".to_string())
            .chain((1..=options.remotes).map(|i| format!("remote-{i}")));
        let mut clusters = Vec::new();
        for name in names {
            let cluster_dir = dir.join(&name);
            // A directory reused from an earlier run must not mix old and new credentials.
            let _ = std::fs::remove_dir_all(&cluster_dir);
            let pki = ClusterPki::generate(&name, &cluster_dir, address)?;
            let port = free_port()?;
            let host = address.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
            let server = format!("https://{host}:{port}");
            let kubeconfig = dir.join(format!("{name}.kubeconfig"));
            std::fs::write(&kubeconfig, admin_kubeconfig(&name, &server, &pki))?;
            clusters.push(Cluster {
                name,
                kubeconfig,
                server,
                port,
                host,
                dir: cluster_dir,
                pki,
            });
        }
        let webhook_client = WebhookClient::generate(&dir.join("webhook-client"))?;
        eprintln!(
            "[testenv] certificates and kubeconfigs: {:.2?}",
            step.elapsed()
        );

        let scratch = temp.as_ref().map(|t| t.path().to_path_buf());
        Ok(Self {
            node: options.node,
            per_namespace_controllers: options.per_namespace_controllers,
            etcd_url: String::new(),
            dir,
            binaries,
            clusters,
            webhook_client,
            processes: Mutex::new(ProcessGroup::with_scratch_dir(scratch)),
            _temp: temp,
        })
    }

    /// Starts etcd, then the clusters' control planes in waves; returns once every apiserver
    /// is ready.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let step = Instant::now();
        self.start_etcd().await?;
        eprintln!("[testenv] etcd ready: {:.2?}", step.elapsed());

        let step = Instant::now();
        for first in (0..self.clusters.len()).step_by(START_WAVE) {
            let wave = first..self.clusters.len().min(first + START_WAVE);
            self.start_apiservers(wave.clone()).await?;
            // Only after its apiserver is ready: kube-controller-manager gives up when
            // /healthz still fails 10 s after it starts, which a loaded machine can make
            // happen.
            for cluster in &self.clusters[wave] {
                self.spawn_controller_manager(cluster)?;
            }
        }
        eprintln!(
            "[testenv] {} apiservers ready: {:.2?}; resident memory {}",
            self.clusters.len(),
            step.elapsed(),
            self.memory_summary()
        );
        Ok(())
    }

    /// Starts the apiservers of the clusters in `wave` and waits until they are ready. Their
    /// ports are chosen before they start (kubeconfigs and token issuers name them), so another
    /// server on the machine may bind one first (one did in a CI run, with environments of other
    /// tests starting alongside); an apiserver that exits for that moves to another port.
    async fn start_apiservers(&mut self, wave: std::ops::Range<usize>) -> anyhow::Result<()> {
        for cluster in &self.clusters[wave.clone()] {
            self.spawn_apiserver(cluster)?;
        }
        let mut moves = 0;
        loop {
            let clusters = &self.clusters[wave.clone()];
            let Err(error) = try_join_all(clusters.iter().map(|c| self.wait_ready(c))).await else {
                return Ok(());
            };
            let mut moved = Vec::new();
            for (index, cluster) in wave.clone().zip(clusters) {
                if self.lock().exited_on_taken_port(&cluster.apiserver_name()) {
                    moved.push(index);
                }
            }
            if moved.is_empty() || moves == PORT_MOVES {
                return Err(error);
            }
            moves += 1;
            for index in moved {
                self.clusters[index].move_to(free_port()?)?;
                self.spawn_apiserver(&self.clusters[index])?;
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the apiservers listen where pods can reach them ([`Options::node`]).
    pub fn has_node_network(&self) -> bool {
        self.node
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn primary(&self) -> &Cluster {
        &self.clusters[0]
    }

    pub fn remotes(&self) -> &[Cluster] {
        &self.clusters[1..]
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The client certificate the primary's apiserver presents to admission webhooks.
    pub fn webhook_client(&self) -> &WebhookClient {
        &self.webhook_client
    }

    pub fn cluster(&self, name: &str) -> anyhow::Result<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no cluster named {name}"))
    }

    /// `kubectl --kubeconfig <cluster's admin kubeconfig>`.
    pub fn kubectl(&self, cluster: &Cluster) -> Command {
        cluster.kubectl(&self.binaries)
    }

    /// Process ids of every process this environment runs.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().pids()
    }

    /// The environment's resident memory (VmRSS) in MiB: in all, and per cluster.
    pub fn memory_summary(&self) -> String {
        let kib: u64 = self
            .pids()
            .iter()
            .filter_map(|pid| resident_kib(*pid))
            .sum();
        let mib = kib as f64 / 1024.0;
        format!(
            "{mib:.0} MiB ({:.0} MiB per cluster, etcd and controller-managers included)",
            mib / self.clusters.len().max(1) as f64
        )
    }

    /// Fails if any process of the environment has died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.lock().check_alive()
    }

    /// Polls `ready` every `poll` until it holds. Fails as soon as a process of the environment
    /// has died (waiting longer would only hide it), or after `timeout`, saying what was not so
    /// (`not_yet`) and where to look (`log`).
    pub async fn wait_until<Fut: std::future::Future<Output = bool>>(
        &self,
        not_yet: &str,
        log: &Path,
        timeout: Duration,
        poll: Duration,
        ready: impl FnMut() -> Fut,
    ) -> anyhow::Result<()> {
        poll_until(not_yet, log, timeout, poll, || self.check_alive(), ready).await
    }

    /// Waits until process `name` of the environment (logging to `<dir>/<name>.log`) accepts
    /// connections on `address`.
    pub(crate) async fn wait_listening(&self, name: &str, address: &str) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        crate::ports::wait_listening(name, address, &log, || self.check_alive()).await
    }

    /// Starts a process that lives and dies with the environment (e.g. a local mesh-webhook),
    /// logging to `<dir>/<name>.log`.
    pub fn spawn_process(&self, name: &str, cmd: Command) -> anyhow::Result<u32> {
        let log = self.dir.join(format!("{name}.log"));
        self.lock().spawn(name, cmd, &log)
    }

    /// Stops a process started with [`TestEnv::spawn_process`] and waits for it to exit.
    pub fn stop_process(&self, name: &str) -> anyhow::Result<()> {
        self.lock().stop(name)
    }

    /// Stops one cluster's apiserver, as when a remote becomes unreachable.
    pub fn stop_apiserver(&self, name: &str) -> anyhow::Result<()> {
        let cluster = self.cluster(name)?;
        self.lock().stop(&cluster.apiserver_name())
    }

    /// Starts a stopped apiserver again on the same address with the same credentials and
    /// data, and waits until it is ready.
    pub async fn start_apiserver(&self, name: &str) -> anyhow::Result<()> {
        let cluster = self.cluster(name)?;
        self.spawn_apiserver(cluster)?;
        self.wait_ready(cluster).await
    }

    /// Freezes one cluster's apiserver (SIGSTOP): connections are accepted by the kernel and
    /// then nothing answers, as with a hung or partitioned remote. [`TestEnv::resume_apiserver`]
    /// undoes it.
    pub fn pause_apiserver(&self, name: &str) -> anyhow::Result<()> {
        let cluster = self.cluster(name)?;
        self.pause_process(&cluster.apiserver_name())
    }

    /// Resumes an apiserver frozen by [`TestEnv::pause_apiserver`] and waits until it is ready.
    pub async fn resume_apiserver(&self, name: &str) -> anyhow::Result<()> {
        let cluster = self.cluster(name)?;
        self.resume_process(&cluster.apiserver_name())?;
        self.wait_ready(cluster).await
    }

    /// Freezes a process of the environment (SIGSTOP) by the name it was started with.
    pub fn pause_process(&self, name: &str) -> anyhow::Result<()> {
        self.lock().signal(name, nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes a process frozen by [`TestEnv::pause_process`] (SIGCONT).
    pub fn resume_process(&self, name: &str) -> anyhow::Result<()> {
        self.lock().signal(name, nix::sys::signal::Signal::SIGCONT)
    }

    /// Stops every process now (also done on drop).
    pub fn stop(&self) {
        self.lock().kill_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcessGroup> {
        // A panic while holding the lock leaves the group usable: it is only a list of pids.
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts etcd and waits until it listens; like an apiserver (see
    /// [`TestEnv::start_apiservers`]), it moves to other ports if another server took one.
    async fn start_etcd(&mut self) -> anyhow::Result<()> {
        let mut moves = 0;
        loop {
            let started = self.try_start_etcd().await;
            if started.is_err() && moves < PORT_MOVES && self.lock().exited_on_taken_port("etcd") {
                moves += 1;
                continue;
            }
            return started;
        }
    }

    async fn try_start_etcd(&mut self) -> anyhow::Result<()> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let data = self.dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(self.binaries.etcd());
        cmd.arg("--data-dir")
            .arg(&data)
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            // Test data is thrown away: durability costs time and buys nothing here.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        self.lock().spawn("etcd", cmd, &self.dir.join("etcd.log"))?;
        self.etcd_url = client_url;
        self.wait_listening("etcd", &format!("127.0.0.1:{client_port}"))
            .await
    }

    fn spawn_apiserver(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let pki = &cluster.pki;
        let mut cmd = Command::new(self.binaries.kube_apiserver());
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            // Clusters share etcd; distinct prefixes keep their data apart.
            .arg(format!("--etcd-prefix=/{}", cluster.name))
            .arg(format!("--secure-port={}", cluster.port))
            .arg(format!("--bind-address={}", cluster.host))
            .arg(format!("--advertise-address={}", cluster.host))
            .arg(format!("--cert-dir={}", cluster.dir.display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            // A distinct issuer and key per cluster: a token of one cluster is refused by another.
            .arg(format!("--service-account-issuer={}", cluster.server))
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_public_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--profiling=false")
            .arg("--v=1");
        if cluster.name == self.primary().name {
            // The primary calls the mesh's webhook, with a client certificate.
            cmd.arg(format!(
                "--admission-control-config-file={}",
                self.webhook_client.admission_config.display()
            ));
        }
        self.lock().spawn(
            &cluster.apiserver_name(),
            cmd,
            &cluster.dir.join("kube-apiserver.log"),
        )?;
        Ok(())
    }

    fn spawn_controller_manager(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let pki = &cluster.pki;
        // Only what kubectl-mesh and its tests rely on: namespace deletion, service accounts
        // and their token Secrets, garbage collection, kube-root-ca.crt, and the aggregated
        // built-in roles (view, edit, admin); with a node, what runs a Deployment behind a
        // Service, makes the node schedulable and counts what its disruption budget allows.
        let mut controllers = vec![
            "namespace-controller",
            "serviceaccount-token-controller",
            "garbage-collector-controller",
            "clusterrole-aggregation-controller",
        ];
        if self.per_namespace_controllers {
            controllers.extend([
                "serviceaccount-controller",
                "root-ca-certificate-publisher-controller",
            ]);
        }
        if self.node && cluster.name == self.primary().name {
            controllers.extend([
                "deployment-controller",
                "replicaset-controller",
                "endpoints-controller",
                "endpointslice-controller",
                "node-lifecycle-controller",
                "pod-garbage-collector-controller",
                "disruption-controller",
            ]);
        }
        let mut cmd = Command::new(self.binaries.kube_controller_manager());
        cmd.arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--controllers={}", controllers.join(",")))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        self.lock().spawn(
            &format!("{}/kube-controller-manager", cluster.name),
            cmd,
            &cluster.dir.join("kube-controller-manager.log"),
        )?;
        Ok(())
    }

    async fn wait_ready(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let client = cluster.client().await?;
        let ready = || async {
            let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
                return false;
            };
            // Connection refused while starting, 403 until RBAC bootstrap, 500 until
            // post-start hooks finish: all mean "not yet".
            client
                .request_text(request)
                .await
                .is_ok_and(|body| body.trim() == "ok")
        };
        self.wait_until(
            &format!("{} apiserver not ready", cluster.name),
            &cluster.dir.join("kube-apiserver.log"),
            READY_TIMEOUT,
            Duration::from_millis(100),
            ready,
        )
        .await
    }
}

/// Polls `ready` every `poll` until it holds. Fails as soon as `alive` fails (what is waited for
/// has died: waiting longer would only hide it), or after `timeout`, saying what was not so
/// (`not_yet`) and where to look (`log`).
pub(crate) async fn poll_until<Fut: std::future::Future<Output = bool>>(
    not_yet: &str,
    log: &Path,
    timeout: Duration,
    poll: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
    mut ready: impl FnMut() -> Fut,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready().await {
        alive()?;
        if Instant::now() > deadline {
            bail!("{not_yet} within {timeout:?}; see {}", log.display());
        }
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.lock().kill_all();
    }
}

/// An admin client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// VmRSS of process `pid`, in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The host's first global IPv4 address: pods reach it through their default route.
fn routable_address() -> anyhow::Result<std::net::Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .context("running ip (package iproute2)")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .context("the host has no global IPv4 address: pods could not reach the apiservers")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another server binding an apiserver's port before it starts (as in a CI run) made the
    /// whole environment fail; here the port is held on purpose.
    #[tokio::test]
    async fn an_apiserver_whose_port_is_taken_starts_on_another() -> anyhow::Result<()> {
        let mut env = TestEnv::prepare(Options::default()).await?;
        let taken = std::net::TcpListener::bind(("127.0.0.1", env.primary().port))?;
        env.launch().await?;
        let primary = env.primary();
        assert_ne!(primary.port, taken.local_addr()?.port());
        let namespaces = Command::new(env.binaries().kubectl())
            .arg("--kubeconfig")
            .arg(&primary.kubeconfig)
            .args(["get", "namespace", "default", "-o", "name"])
            .output()?;
        assert_eq!(
            String::from_utf8_lossy(&namespaces.stdout).trim(),
            "namespace/default",
            "{}",
            String::from_utf8_lossy(&namespaces.stderr)
        );
        Ok(())
    }
}
