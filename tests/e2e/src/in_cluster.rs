//! The mesh installed the way a cluster admin installs it: `kubectl mesh install --image`
//! without `--webhook-url`, so the webhook runs as the Deployment install renders, in pods on a
//! real node of the primary, called by the apiserver through its Service, reaching the primary
//! through the `kubernetes` Service and each remote at its stored address.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use mesh_testenv::mesh::{run, wait_webhook_effective};
use mesh_testenv::node::Node;
use mesh_testenv::{Options, TestEnv};

use crate::{eventually, lease_holder};

/// The webhook's namespace and Deployment, as install names them.
pub const NAMESPACE: &str = mesh_core::MESH_NAMESPACE;
pub const DEPLOYMENT: &str = "mesh-webhook";
/// The tag the test image is imported under (never pulled: it is on the node already).
pub const IMAGE: &str = "kubectl-mesh.local/mesh-webhook:e2e";

/// A primary with a node, remotes, and the mesh installed in the cluster.
pub struct InCluster {
    pub env: TestEnv,
    pub node: Node,
    plugin: PathBuf,
}

impl InCluster {
    /// Starts it all: the environment with a node, the webhook image (the workspace's
    /// `mesh-webhook`, stripped) imported, `install --image`, both replicas Ready, every remote
    /// attached.
    pub async fn start(remotes: usize) -> anyhow::Result<Self> {
        let env = TestEnv::start(Options {
            node: true,
            ..Options::with_remotes(remotes)
        })
        .await?;
        let node = Node::start(&env).await?;
        let mesh = Self {
            plugin: mesh_testenv::workspace_binary("kubectl-mesh")?,
            env,
            node,
        };
        mesh.import_image(IMAGE).await?;
        let mut install = mesh.plugin();
        let client = mesh.env.webhook_client();
        install
            .args(["install", "--image", IMAGE, "--client-ca-file"])
            .arg(&client.ca_cert)
            .args(["--client-allowed-names", &client.name]);
        run(install).await?;
        mesh.wait_rolled_out().await?;
        wait_webhook_effective(&mesh.env).await?;
        for remote in mesh.env.remotes() {
            let mut attach = mesh.plugin();
            attach.arg("attach").arg(&remote.kubeconfig).args([
                "--name",
                &remote.name,
                "--wait",
                "--yes",
            ]);
            run(attach).await?;
        }
        Ok(mesh)
    }

    /// `kubectl-mesh --kubeconfig <primary>`.
    pub fn plugin(&self) -> Command {
        let mut cmd = Command::new(&self.plugin);
        cmd.arg("--kubeconfig").arg(&self.env.primary().kubeconfig);
        cmd
    }

    /// Packs the workspace's `mesh-webhook` (stripped: the debug build is large) into an image
    /// tagged `reference` and imports it into the node.
    pub async fn import_image(&self, reference: &str) -> anyhow::Result<()> {
        let binary = self.env.dir().join("mesh-webhook");
        std::fs::copy(mesh_testenv::workspace_binary("mesh-webhook")?, &binary)?;
        let mut strip = Command::new("strip");
        strip.arg(&binary);
        run(strip).await?;
        let archive = self.env.dir().join(format!(
            "mesh-webhook-{}.tar",
            reference.replace([':', '/'], "_")
        ));
        let reference = reference.to_owned();
        let archive = tokio::task::spawn_blocking(move || {
            mesh_testenv::image::build_webhook_image(&binary, &reference, &archive)
        })
        .await??;
        self.node.import_image(&archive).await
    }

    /// Waits until the webhook Deployment has rolled out: every replica updated and Ready.
    pub async fn wait_rolled_out(&self) -> anyhow::Result<()> {
        let mut status = self.env.kubectl(self.env.primary());
        status.args([
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            &format!("deployment/{DEPLOYMENT}"),
            "--timeout=120s",
        ]);
        run(status)
            .await
            .context("the webhook Deployment did not roll out")?;
        Ok(())
    }

    /// The webhook Deployment.
    pub async fn deployment(&self) -> anyhow::Result<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.env.primary().client().await?, NAMESPACE);
        Ok(api.get(DEPLOYMENT).await?)
    }

    /// The webhook's pods that are Running and not being deleted.
    pub async fn running_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.env.primary().client().await?, NAMESPACE);
        let pods = api
            .list(&ListParams::default().labels("app.kubernetes.io/name=mesh-webhook"))
            .await?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect())
    }

    /// The pod holding the Lease (its holder identity is the pod name plus a suffix).
    pub async fn leader(&self) -> anyhow::Result<String> {
        let primary = self.env.primary().client().await?;
        eventually(
            "a running pod holds the Lease",
            Duration::from_secs(60),
            || async {
                let pods = self.running_pods().await?;
                let holder = lease_holder(&primary).await?.unwrap_or_default();
                Ok(pods
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .find(|name| holder.starts_with(&format!("{name}-"))))
            },
        )
        .await
    }
}
