//! `kubectl mesh uninstall`: remove what install created from the primary.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{Api, Client, ResourceExt, api::ListParams};
use mesh_core::{MESH_NAMESPACE, cluster::CLUSTER_LABEL};

use super::apply::{self, Deleted};
use crate::{Context, Error, Result, output, render};

/// Remove kubectl-mesh from the primary cluster.
///
/// Deletes the webhook configuration, webhook, RBAC, serving certificate and the
/// kubectl-mesh namespace (with the credentials of attached clusters), which stays when this
/// cluster is itself attached to a primary. Safe to re-run. Remote clusters are not touched:
/// detach them first.
#[derive(Debug, clap::Args)]
pub struct Uninstall {
    /// Also delete the MeshCluster CRD, and with it every MeshCluster.
    #[arg(long)]
    pub crd: bool,
    /// Uninstall even though clusters are still attached (their remote objects stay).
    #[arg(long)]
    pub force: bool,
    /// Print what would be deleted and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Uninstall {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            crd,
            force,
            dry_run,
        } = self;
        let manifests = render::uninstall_order(crd)?;
        if dry_run {
            let rows = manifests.iter().map(|m| {
                vec![
                    m.resource.kind.clone(),
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone(),
                ]
            });
            return output::print_stdout(&output::table(&["kind", "namespace", "name"], rows));
        }

        let client = ctx.client().await?;
        let attached = mesh_core::cluster::names(&client)
            .await
            .map_err(Error::kube("cannot list MeshClusters"))?;
        if !attached.is_empty() {
            if !force {
                return Err(Error::Refused {
                    what: format!(
                        "{} cluster(s) still attached: {}",
                        attached.len(),
                        attached.join(", ")
                    ),
                    hint: "run `kubectl mesh detach <name>` for each first, or pass --force to \
                           leave their remote objects behind"
                        .into(),
                });
            }
            ctx.progress.warn(format!(
                "leaving the remote objects of {} behind (--force)",
                attached.join(", ")
            ));
        }

        let attached_as = attached_as(&client).await.map_err(Error::kube(format!(
            "cannot read Namespace {MESH_NAMESPACE}"
        )))?;
        for m in &manifests {
            if let (Some(cluster), "Namespace") = (&attached_as, m.resource.kind.as_str()) {
                ctx.progress.warn(format!(
                    "{} kept: this cluster is attached to a primary as {cluster}, and that \
                     attach's identity lives there; `kubectl mesh detach {cluster}` on that \
                     primary removes it",
                    m.describe()
                ));
                continue;
            }
            match apply::delete(&client, m).await? {
                Deleted::Deleted => ctx.progress.ok(format!("{} deleted", m.describe())),
                Deleted::NotFound => ctx.progress.info(format!("{} not found", m.describe())),
            }
        }
        if !crd {
            ctx.progress
                .info("the MeshCluster CRD is kept; `kubectl mesh uninstall --crd` removes it");
        }
        Ok(())
    }
}

/// The name this cluster is attached to a primary under, when it is one's remote: attach then
/// created the mesh namespace, or put its ServiceAccounts in it. Uninstall keeps the namespace
/// then: deleting it would revoke that primary's tokens behind its back (a cluster may be a
/// primary and another mesh's remote, and uninstall may be run against the wrong context).
async fn attached_as(client: &Client) -> Result<Option<String>, kube::Error> {
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(MESH_NAMESPACE)
        .await?;
    let Some(namespace) = namespace else {
        return Ok(None);
    };
    if let Some(cluster) = namespace.labels().get(CLUSTER_LABEL) {
        return Ok(Some(cluster.clone()));
    }
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), MESH_NAMESPACE)
        .list(&ListParams::default().labels(CLUSTER_LABEL))
        .await?;
    Ok(accounts
        .items
        .iter()
        .find_map(|account| account.labels().get(CLUSTER_LABEL).cloned()))
}
