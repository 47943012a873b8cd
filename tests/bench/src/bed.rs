//! The test bed of one figure: real control planes from mesh-testenv, the mesh installed with
//! a local mesh-webhook process, and what the scenarios do to them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use mesh_testenv::istio::{Istio, IstioOptions};
use mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_testenv::{Options, TestEnv};
use serde_json::json;

use crate::{https, procfs};

/// Name of the MutatingWebhookConfiguration `kubectl-mesh install` creates.
pub const WEBHOOK_CONFIGURATION: &str = "kubectl-mesh";
/// The matchCondition that keeps the apiserver from calling the webhook when no managed
/// label changes.
pub const MANAGED_LABEL_CONDITION: &str = "managed-label-changed";
/// Label on every namespace a scenario creates (value: the scenario), so watches see only those.
pub const BENCH_LABEL: &str = "mesh-bench";

/// Builds `kubectl-mesh` and `mesh-webhook` with this tool's profile (cargo builds only the
/// libraries of a `cargo run -p mesh-bench`), or with `profile` (`dist`), unless `skip`.
/// Returns where they are.
pub fn product_binaries(skip: bool, profile: Option<&str>) -> anyhow::Result<MeshOptions> {
    if !skip {
        let release = std::env::current_exe()?
            .parent()
            .is_some_and(|d| d.ends_with("release"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = std::process::Command::new(cargo);
        build
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["-p", "kubectl-mesh", "-p", "mesh-webhook"]);
        match profile {
            Some(profile) => {
                build.args(["--profile", profile]);
            }
            None if release => {
                build.arg("--release");
            }
            None => {}
        }
        eprintln!("[bench] building kubectl-mesh and mesh-webhook");
        let status = build.status().context("running cargo")?;
        if !status.success() {
            bail!("building kubectl-mesh and mesh-webhook failed; see the cargo output above");
        }
    }
    let mut options = MeshOptions::from_workspace()?;
    if let Some(profile) = profile {
        // This tool runs from target/<its profile>/: the others are beside that folder.
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .context("no target folder above this tool")?
            .join(profile);
        options.plugin = dir.join("kubectl-mesh");
        options.webhook = dir.join("mesh-webhook");
        for binary in [&options.plugin, &options.webhook] {
            if !binary.is_file() {
                bail!(
                    "{} not found; build it: cargo build --profile {profile} -p kubectl-mesh -p mesh-webhook",
                    binary.display()
                );
            }
        }
    }
    Ok(options)
}

/// Control planes, the mesh, and the webhook process.
pub struct Bed {
    pub env: TestEnv,
    pub mesh: Mesh,
    pub webhook_pid: u32,
    /// A real istiod, when the bed runs with one.
    pub istio: Option<Istio>,
    tls: Arc<rustls::ClientConfig>,
}

/// What a [`Bed`] runs.
pub struct BedOptions {
    /// The control planes: how many remotes, where their files go.
    pub env: Options,
    /// The mesh installed on them; the remotes are attached when `mesh.attach_remotes`.
    pub mesh: MeshOptions,
    /// A real istiod for the primary beside the mesh: the remotes are attached with
    /// `--istio-remote-secret`, and the bed is ready once istiod has synced every one (its
    /// watches then load every apiserver as in production).
    pub istio: bool,
}

impl BedOptions {
    /// `remotes` remotes with their files in `dir` (a temporary directory when `None`), and
    /// the mesh of `mesh` on them resyncing every `resync_period`, remotes not attached, no
    /// istiod.
    pub fn new(
        mesh: &MeshOptions,
        remotes: usize,
        resync_period: Duration,
        dir: Option<PathBuf>,
    ) -> Self {
        Self {
            env: Options {
                remotes,
                dir,
                ..Options::default()
            },
            mesh: MeshOptions {
                attach_remotes: false,
                resync_period,
                ..mesh.clone()
            },
            istio: false,
        }
    }

    /// With every remote attached.
    pub fn attached(mut self) -> Self {
        self.mesh.attach_remotes = true;
        self
    }
}

impl Bed {
    /// Starts what `options` say; with attached remotes, returns once the webhook has synced
    /// every one.
    pub async fn start(options: BedOptions) -> anyhow::Result<Self> {
        let BedOptions {
            env,
            mesh: mut options,
            istio,
        } = options;
        let env = TestEnv::start(env).await?;
        let istio = match istio {
            true => Some(Istio::start(&env, IstioOptions::default()).await?),
            false => None,
        };
        let attach = options.attach_remotes;
        if istio.is_some() {
            options.attach_args.push("--istio-remote-secret".to_owned());
        }
        let mesh = Mesh::start(&env, options.clone()).await?;
        if let (Some(istio), true) = (&istio, attach) {
            wait_istiod_synced(istio, &env).await?;
        }
        let webhook_pid = procfs::find_process(&env.pids(), &options.webhook)?;
        let tls = https::client_config(&mesh.ca_pem()?, mesh.client_identity())?;
        let bed = Self {
            env,
            mesh,
            webhook_pid,
            istio,
            tls,
        };
        if attach {
            bed.wait_remotes_synced().await?;
        }
        Ok(bed)
    }

    /// `kubectl-mesh attach` returns before the webhook has seen the new MeshCluster and built
    /// a client for it; until then a push skips that remote. Its first sync sets
    /// `cluster_reachable` to 1.
    async fn wait_remotes_synced(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.metrics().await?;
            let pending: Vec<&str> = self
                .env
                .remotes()
                .iter()
                .map(|r| r.name.as_str())
                .filter(|name| {
                    https::sample(&text, "cluster_reachable", &[("cluster", name)]) != 1.0
                })
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("mesh-webhook did not sync {pending:?} within 60s of their attach");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn primary(&self) -> anyhow::Result<kube::Client> {
        self.env.primary().client().await
    }

    pub async fn remote_clients(&self) -> anyhow::Result<Vec<kube::Client>> {
        let mut clients = Vec::new();
        for remote in self.env.remotes() {
            clients.push(remote.client().await?);
        }
        Ok(clients)
    }

    /// The webhook's TLS client configuration (trusting its CA, with the apiserver's client
    /// certificate).
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The webhook's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        https::metrics(self.mesh.metrics_address(), self.tls.clone()).await
    }

    /// Creates `namespace` on the primary and every remote, labelled for the watches.
    pub async fn namespace_everywhere(&self, name: &str, scenario: &str) -> anyhow::Result<()> {
        for cluster in self.env.clusters() {
            let labels = BTreeMap::from([(BENCH_LABEL.to_owned(), scenario.to_owned())]);
            create_namespaces(&cluster.client().await?, vec![(name.to_owned(), labels)], 1).await?;
        }
        Ok(())
    }

    /// `kubectl delete mutatingwebhookconfiguration kubectl-mesh` on the primary, then waits
    /// until the apiserver has stopped calling the webhook.
    pub async fn unregister_webhook(&self) -> anyhow::Result<()> {
        let mut delete = tokio::process::Command::from(self.env.kubectl(self.env.primary()));
        delete.args([
            "delete",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
        ]);
        let output = delete.output().await.context("running kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl delete mutatingwebhookconfiguration failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        self.wait_webhook_unused().await
    }

    /// Creates `config` again (as saved before [`Bed::unregister_webhook`]) and waits until
    /// the apiserver calls the webhook.
    pub async fn register_webhook(
        &self,
        config: &MutatingWebhookConfiguration,
    ) -> anyhow::Result<()> {
        let mut config = config.clone();
        config.metadata = ObjectMeta {
            name: config.metadata.name.clone(),
            labels: config.metadata.labels.clone(),
            annotations: config.metadata.annotations.clone(),
            ..ObjectMeta::default()
        };
        Api::<MutatingWebhookConfiguration>::all(self.primary().await?)
            .create(&PostParams::default(), &config)
            .await
            .context("creating the webhook configuration")?;
        self.mesh.wait_webhook_effective(&self.env).await
    }

    /// The webhook configuration as installed.
    pub async fn webhook_configuration(&self) -> anyhow::Result<MutatingWebhookConfiguration> {
        Api::<MutatingWebhookConfiguration>::all(self.primary().await?)
            .get(WEBHOOK_CONFIGURATION)
            .await
            .context("reading the webhook configuration")
    }

    /// The apiserver loads webhook configurations asynchronously: a server-side dry run of a
    /// managed-label change gets the webhook's dry-run warning for as long as it still calls
    /// it. Three probes in a row without it mean it stopped.
    async fn wait_webhook_unused(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet = 0;
        while quiet < 3 {
            let mut probe = tokio::process::Command::from(self.env.kubectl(self.env.primary()));
            probe.args([
                "label",
                "namespace",
                "default",
                "istio-injection=mesh-bench-probe",
                "--overwrite",
                "--dry-run=server",
            ]);
            let output = probe.output().await.context("running kubectl")?;
            if String::from_utf8_lossy(&output.stderr).contains("kubectl-mesh: dry run") {
                quiet = 0;
            } else {
                quiet += 1;
            }
            if Instant::now() > deadline {
                bail!(
                    "the primary still calls mesh-webhook 60s after its configuration was deleted"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The namespaces `names` of a scenario for one cluster, each labelled for the watches; on the
/// primary every other one also carries `managed=enabled`.
pub fn half_labelled(
    names: &[String],
    scenario: &str,
    primary: bool,
    managed: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut labels = BTreeMap::from([(BENCH_LABEL.to_owned(), scenario.to_owned())]);
            if primary && i % 2 == 0 {
                labels.insert(managed.to_owned(), "enabled".to_owned());
            }
            (name.clone(), labels)
        })
        .collect()
}

/// Creates namespaces with labels, `concurrency` at a time.
pub async fn create_namespaces(
    client: &kube::Client,
    namespaces: Vec<(String, BTreeMap<String, String>)>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    stream::iter(namespaces)
        .map(|(name, labels)| {
            let api = api.clone();
            async move {
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                };
                api.create(&PostParams::default(), &ns)
                    .await
                    .with_context(|| format!("creating namespace {name}"))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// Sets one label with a merge patch (`None` removes it), as `kubectl label` does.
pub async fn set_label(
    api: &Api<Namespace>,
    namespace: &str,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    api.patch(
        namespace,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { key: value } } })),
    )
    .await
    .with_context(|| format!("labelling namespace {namespace} {key}={value:?}"))?;
    Ok(())
}

/// Sets one label on each of `namespaces`, `concurrency` PATCHes at a time.
pub async fn set_label_on_all(
    api: &Api<Namespace>,
    namespaces: impl IntoIterator<Item = impl AsRef<str>>,
    (key, value): (&str, Option<&str>),
    concurrency: usize,
) -> anyhow::Result<()> {
    stream::iter(namespaces)
        .map(|name| async move { set_label(api, name.as_ref(), key, value).await })
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Waits until istiod reports every remote of `env` synced.
async fn wait_istiod_synced(istio: &Istio, env: &TestEnv) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let clusters = istio.clusters().await.unwrap_or_default();
        let pending: Vec<&str> = env
            .remotes()
            .iter()
            .map(|r| r.name.as_str())
            .filter(|name| {
                !clusters
                    .iter()
                    .any(|c| c.id == *name && c.status == "synced")
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "istiod did not sync {pending:?} within 90s; see {}",
                env.dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
