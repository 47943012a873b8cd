//! kubectl-mesh on top of a [`TestEnv`]: the mesh installed on the primary with an
//! out-of-cluster webhook URL, `mesh-webhook` running as a local process that the primary's
//! apiserver calls over TLS, and remotes attached with the real plugin. The demo (`up --mesh`)
//! and the integration tests use this same path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::ports::free_address;
use crate::{Cluster, TestEnv, WebhookClient};

/// Name of the webhook process inside the environment's process group.
pub const WEBHOOK_PROCESS: &str = "mesh-webhook";
/// The ServiceAccount `install` creates for the webhook.
pub const WEBHOOK_ACCOUNT: &str = "mesh-webhook";

/// Where the kubectl-mesh binaries are and how the webhook should run.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The `kubectl-mesh` binary.
    pub plugin: PathBuf,
    /// The `mesh-webhook` binary.
    pub webhook: PathBuf,
    /// The reconciler's periodic full-sync interval.
    pub resync_period: Duration,
    /// Attach every remote of the environment (named like its cluster: remote-1, ...).
    pub attach_remotes: bool,
    /// More arguments for `kubectl mesh install` (e.g. a custom rule).
    pub install_args: Vec<String>,
    /// More arguments for the `kubectl mesh attach` of every remote (e.g. `--istio-remote-secret`).
    pub attach_args: Vec<String>,
    /// More arguments for every `mesh-webhook` replica (e.g. the same rule's flags).
    pub webhook_args: Vec<String>,
    /// More environment variables for every `mesh-webhook` replica (e.g. `HTTPS_PROXY`).
    pub webhook_env: Vec<(String, String)>,
    /// Callers of the webhook must present the primary apiserver's client certificate
    /// (`install --client-ca-file` and the webhook's `--client-ca-file`), as in production.
    pub client_auth: bool,
}

impl MeshOptions {
    /// Binaries built by cargo next to the running test or tool.
    pub fn from_workspace() -> anyhow::Result<Self> {
        Ok(Self {
            plugin: crate::workspace_binary("kubectl-mesh")?,
            webhook: crate::workspace_binary("mesh-webhook")?,
            resync_period: Duration::from_secs(5),
            attach_remotes: true,
            install_args: Vec::new(),
            attach_args: Vec::new(),
            webhook_args: Vec::new(),
            webhook_env: Vec::new(),
            client_auth: true,
        })
    }
}

/// A running local mesh.
#[derive(Clone, Debug)]
pub struct Mesh {
    options: MeshOptions,
    primary_kubeconfig: PathBuf,
    /// The webhook's own: its ServiceAccount's token, so it runs with the rights `install`
    /// gives it in a cluster and any right it lacks fails the tests.
    webhook_kubeconfig: PathBuf,
    listen: String,
    metrics_listen: String,
    cert_dir: PathBuf,
    /// The identity the primary's apiserver calls the webhook with, when it is required.
    client: Option<WebhookClient>,
    webhook_pid: Arc<AtomicU32>,
}

/// One more webhook replica's ports.
#[derive(Clone, Debug)]
pub struct Replica {
    /// Its webhook port (`/mutate`).
    pub listen: String,
    /// Its port of probes and metrics.
    pub metrics: String,
}

/// A running `kubectl mesh dashboard`, killed on drop.
pub struct Dashboard {
    pub process: tokio::process::Child,
    /// `http://127.0.0.1:<port>/#token=<token>`, as it printed it.
    pub url: String,
    pub port: u16,
    /// The run's secret, which its data endpoints ask for (`?token=`).
    pub token: String,
    /// Held open: the dashboard may print more, and must not fail writing it.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Mesh {
    /// Installs the mesh on the environment's primary, starts the webhook, attaches remotes.
    pub async fn start(env: &TestEnv, options: MeshOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let client = options.client_auth.then(|| env.webhook_client().clone());
        let mesh = Self {
            options,
            primary_kubeconfig: env.primary().kubeconfig.clone(),
            webhook_kubeconfig: env.dir().join("mesh-webhook.kubeconfig"),
            listen: free_address()?,
            metrics_listen: free_address()?,
            cert_dir: env.dir().join("mesh-webhook-tls"),
            client,
            webhook_pid: Arc::default(),
        };
        let mut install = mesh.plugin();
        install
            .args([
                "install",
                "--webhook-url",
                &mesh.webhook_url(),
                "--webhook-cert-dir",
            ])
            .arg(&mesh.cert_dir)
            .args(&mesh.options.install_args);
        if let Some(client) = &mesh.client {
            // Recorded in the cluster as for an in-cluster webhook: what runs is what check reads.
            install
                .arg("--client-ca-file")
                .arg(&client.ca_cert)
                .args(["--client-allowed-names", &client.name]);
        }
        run(install).await?;
        eprintln!("[mesh] installed on the primary: {:.2?}", started.elapsed());
        env.primary()
            .write_service_account_kubeconfig(
                mesh_core::MESH_NAMESPACE,
                WEBHOOK_ACCOUNT,
                &mesh.webhook_kubeconfig,
            )
            .await?;
        mesh.start_webhook(env).await?;
        mesh.wait_webhook_effective(env).await?;
        eprintln!(
            "[mesh] mesh-webhook called by the primary at {}: {:.2?}",
            mesh.listen,
            started.elapsed()
        );
        if mesh.options.attach_remotes {
            for remote in env.remotes() {
                // Until the webhook's first sync of the remote, its pushes may not reach it
                // yet: tests that expect a push to land before kubectl returns start after it.
                let mut args = vec!["--wait"];
                args.extend(mesh.options.attach_args.iter().map(String::as_str));
                mesh.attach_with(remote, &args).await?;
                eprintln!("[mesh] attached {}: {:.2?}", remote.name, started.elapsed());
            }
        }
        Ok(mesh)
    }

    /// `https://127.0.0.1:<port>/mutate`, as registered in the webhook configuration.
    pub fn webhook_url(&self) -> String {
        format!("https://{}/mutate", self.listen)
    }

    /// `kubectl-mesh --kubeconfig <primary>`.
    pub fn plugin(&self) -> Command {
        let mut cmd = Command::new(&self.options.plugin);
        cmd.arg("--kubeconfig").arg(&self.primary_kubeconfig);
        cmd
    }

    /// Starts `kubectl mesh dashboard --no-browser`, its stderr to `stderr`, and reads the
    /// loopback URL it prints first (within 60 s).
    pub async fn dashboard(&self, stderr: Stdio) -> anyhow::Result<Dashboard> {
        let mut cmd = tokio::process::Command::from(self.plugin());
        cmd.args(["dashboard", "--no-browser"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut process = cmd.spawn().context("starting kubectl mesh dashboard")?;
        let mut stdout = BufReader::new(process.stdout.take().context("stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .context("the dashboard printed no URL within 60s")??
            .context("the dashboard exited before printing its URL")?;
        let (port, token) = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.split_once("/#token="))
            .with_context(|| format!("not a loopback URL with a token: {url}"))?;
        let port = port.parse().with_context(|| format!("no port in {url}"))?;
        let token = token.to_owned();
        Ok(Dashboard {
            process,
            url,
            port,
            token,
            _stdout: stdout,
        })
    }

    /// `kubectl-mesh attach <remote kubeconfig> --name <cluster name>`.
    pub async fn attach(&self, remote: &Cluster) -> anyhow::Result<Output> {
        self.attach_with(remote, &[]).await
    }

    /// [`Mesh::attach`] with more arguments.
    pub async fn attach_with(&self, remote: &Cluster, args: &[&str]) -> anyhow::Result<Output> {
        let mut attach = self.plugin();
        attach
            .arg("attach")
            .arg(&remote.kubeconfig)
            .args(["--name", &remote.name])
            // Set-up attaches accept the first sync; attach's own tests leave this out.
            .arg("--yes")
            .args(args);
        run(attach).await
    }

    /// Starts the webhook process (again, after [`Mesh::stop_webhook`]) and waits until it
    /// accepts connections.
    pub async fn start_webhook(&self, env: &TestEnv) -> anyhow::Result<()> {
        let cmd = self.webhook_command(&self.listen, &self.metrics_listen, "local-mesh-webhook");
        let pid = env.spawn_process(WEBHOOK_PROCESS, cmd)?;
        self.webhook_pid.store(pid, Ordering::Relaxed);
        env.wait_listening(WEBHOOK_PROCESS, &self.listen).await?;
        env.wait_listening(WEBHOOK_PROCESS, &self.metrics_listen)
            .await
    }

    /// Starts one more webhook replica named `name` on free ports (not registered with the
    /// apiserver: it competes for the Lease and serves its own ports).
    pub async fn start_replica(&self, env: &TestEnv, name: &str) -> anyhow::Result<Replica> {
        let replica = Replica {
            listen: free_address()?,
            metrics: free_address()?,
        };
        env.spawn_process(
            name,
            self.webhook_command(&replica.listen, &replica.metrics, name),
        )?;
        env.wait_listening(name, &replica.listen).await?;
        env.wait_listening(name, &replica.metrics).await?;
        Ok(replica)
    }

    /// The address the registered webhook listens on (`/mutate`, with the client certificate
    /// of [`Mesh::client_identity`] when it is required).
    pub fn listen_address(&self) -> &str {
        &self.listen
    }

    /// The address of the registered webhook's probes and metrics (no client certificate).
    pub fn metrics_address(&self) -> &str {
        &self.metrics_listen
    }

    /// The client certificate and key (PEM files) the primary's apiserver calls the webhook
    /// with, and its CA; `None` when the webhook requires none.
    pub fn client_identity(&self) -> Option<&WebhookClient> {
        self.client.as_ref()
    }

    /// Process id of the registered webhook (0 before it started).
    pub fn webhook_pid(&self) -> u32 {
        self.webhook_pid.load(Ordering::Relaxed)
    }

    /// The kubeconfig webhook processes reach the primary with.
    pub fn webhook_kubeconfig(&self) -> &Path {
        &self.webhook_kubeconfig
    }

    /// This mesh, but the webhook processes started from it reach the primary through
    /// `kubeconfig` (e.g. a copy whose server is a proxy the test can freeze).
    pub fn with_webhook_kubeconfig(&self, kubeconfig: PathBuf) -> Self {
        Self {
            webhook_kubeconfig: kubeconfig,
            ..self.clone()
        }
    }

    /// The CA that signed the webhook's serving certificate (PEM).
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self.cert_dir.join("ca.crt");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The `mesh-webhook` command line for a process listening on `listen` and serving its
    /// metrics on `metrics_listen`.
    pub fn webhook_command(&self, listen: &str, metrics_listen: &str, identity: &str) -> Command {
        let mut cmd = Command::new(&self.options.webhook);
        cmd.args(["--listen", listen])
            .args(["--metrics-listen", metrics_listen])
            .arg("--cert-dir")
            .arg(&self.cert_dir)
            .arg("--kubeconfig")
            .arg(&self.webhook_kubeconfig)
            // A fixed identity: a restarted webhook takes its own Lease back at once instead
            // of waiting for the lease of its killed predecessor to expire.
            .args(["--identity", identity])
            .arg("--resync-period")
            .arg(format!("{}ms", self.options.resync_period.as_millis()))
            .args(self.client.iter().flat_map(|c| {
                [
                    "--client-ca-file".into(),
                    c.ca_cert.clone().into_os_string(),
                    "--client-allowed-names".into(),
                    c.name.clone().into(),
                ]
            }))
            .args(&self.options.webhook_args)
            .env(
                "RUST_LOG",
                std::env::var("MESH_WEBHOOK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.options.webhook_env.iter().cloned());
        cmd
    }

    /// Waits until the primary's apiserver calls the webhook ([`wait_webhook_effective`]).
    pub async fn wait_webhook_effective(&self, env: &TestEnv) -> anyhow::Result<()> {
        wait_webhook_effective(env).await
    }

    /// Stops the webhook process, as when it crashes.
    pub fn stop_webhook(&self, env: &TestEnv) -> anyhow::Result<()> {
        env.stop_process(WEBHOOK_PROCESS)
    }

    /// Freezes the webhook process (SIGSTOP): the apiserver's calls connect and hang until
    /// its webhook timeout, as with a webhook stuck or partitioned mid-request.
    pub fn pause_webhook(&self, env: &TestEnv) -> anyhow::Result<()> {
        env.pause_process(WEBHOOK_PROCESS)
    }

    /// Resumes a webhook frozen by [`Mesh::pause_webhook`].
    pub fn resume_webhook(&self, env: &TestEnv) -> anyhow::Result<()> {
        env.resume_process(WEBHOOK_PROCESS)
    }

    /// Writes `<dir>/env.sh`: kubectl-mesh and the matching kubectl on PATH, KUBECONFIG set to
    /// the primary.
    pub fn write_env_sh(&self, env: &TestEnv) -> anyhow::Result<PathBuf> {
        let plugin_dir = self
            .options
            .plugin
            .parent()
            .context("plugin path has no directory")?;
        let path = env.dir().join("env.sh");
        std::fs::write(
            &path,
            format!(
                "# source me: kubectl-mesh and kubectl v{} on PATH, KUBECONFIG = the primary\nexport PATH=\"{}:{}:$PATH\"\nexport KUBECONFIG=\"{}\"\n",
                crate::KUBERNETES_VERSION,
                shell_path(plugin_dir),
                shell_path(&env.binaries().dir),
                shell_path(&self.primary_kubeconfig),
            ),
        )?;
        Ok(path)
    }
}

/// Waits until the primary's apiserver calls the webhook: it loads webhook configurations
/// asynchronously, so edits right after `install` may not go through the webhook yet. A
/// server-side dry run of a managed-label change is answered with the webhook's dry-run
/// warning once it does, and changes nothing anywhere.
pub async fn wait_webhook_effective(env: &TestEnv) -> anyhow::Result<()> {
    if dry_run_label_until(env, "istio-injection=mesh-probe", "kubectl-mesh: dry run").await? {
        return Ok(());
    }
    bail!(
        "the primary did not call mesh-webhook within 60s; see {}",
        env.dir().join(format!("{WEBHOOK_PROCESS}.log")).display()
    )
}

/// Repeats a server-side dry run of `kubectl label namespace default LABEL` on the primary
/// until its error output contains `answer`, for at most 60 s: the apiserver loads admission
/// configuration asynchronously, and a dry run shows when it is in force without changing
/// anything. `false` when it never answered so.
pub async fn dry_run_label_until(env: &TestEnv, label: &str, answer: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut probe = tokio::process::Command::from(env.kubectl(env.primary()));
        probe.args([
            "label",
            "namespace",
            "default",
            label,
            "--overwrite",
            "--dry-run=server",
        ]);
        let output = probe.output().await.context("running kubectl")?;
        if String::from_utf8_lossy(&output.stderr).contains(answer) {
            return Ok(true);
        }
        env.check_alive()?;
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn shell_path(path: &Path) -> String {
    path.display().to_string().replace('"', "\\\"")
}

/// How long [`run`] lets a command run: far beyond any command of the tests, so that a hung
/// one fails its test and names itself instead of holding the whole suite.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a command to completion without blocking the runtime (an in-process server may have
/// to answer the very request the command makes), failing with its stderr when it fails, and
/// killing it after [`RUN_TIMEOUT`].
pub async fn run(cmd: Command) -> anyhow::Result<Output> {
    run_within(cmd, RUN_TIMEOUT).await
}

/// [`run`] with another time limit.
pub async fn run_within(cmd: Command, limit: Duration) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{cmd:?} did not finish within {limit:?}; killed"))?
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_over_its_time_limit_is_killed_and_named() {
        let marker = format!("{}", std::process::id());
        let mut sleep = Command::new("sleep");
        sleep.arg(format!("30.{marker}"));
        let started = Instant::now();
        let error = run_within(sleep, Duration::from_millis(300))
            .await
            .expect_err("a sleep of 30 s cannot finish within 300 ms");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(error.to_string().contains("sleep"), "{error}");
        assert!(error.to_string().contains("did not finish"), "{error}");
        // Killed, not left behind.
        let left = std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep 30.{marker}")])
            .output()
            .expect("pgrep");
        assert!(left.stdout.is_empty(), "still running: {:?}", left.stdout);
    }
}
