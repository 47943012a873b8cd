//! `kubectl mesh uninstall`: remove what install created from the primary.

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, ResourceExt, api::ListParams};
use mesh_core::{MANAGER, MESH_NAMESPACE, cluster::CLUSTER_LABEL};
use serde::Serialize;

use super::apply::{self, Deleted};
use crate::access::{self, Need};
use crate::remote_setup as setup;
use crate::render::Manifest;
use crate::{Context, Error, Result, mesh_state, namespace_contents, output, render};

/// Remove kubectl-mesh from the primary cluster.
///
/// Deletes the webhook configuration, webhook, RBAC, serving certificate, the stored
/// credentials of attached clusters (and the istio-system attach created for them, once empty)
/// and the kubectl-mesh namespace, which stays when this cluster is itself attached to a
/// primary. Safe to re-run. Remote clusters are not touched:
/// detach them first.
#[derive(Debug, clap::Args)]
pub struct Uninstall {
    /// Also delete the MeshCluster CRD, and with it every MeshCluster.
    #[arg(long)]
    pub crd: bool,
    /// Uninstall even though clusters are still attached (their remote objects stay; `kubectl
    /// mesh detach NAME --remote-kubeconfig FILE` removes them afterwards).
    #[arg(long)]
    pub force: bool,
    /// Print what would be deleted and what kept, and change nothing (the cluster is read:
    /// what the run would refuse is refused).
    #[arg(long)]
    pub dry_run: bool,
}

impl Uninstall {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let manifests = render::uninstall_order(self.crd)?;

        let (_, target, client) = ctx.primary_client().await?;
        let attached = mesh_core::cluster::names(&client)
            .await
            .map_err(Error::kube("cannot list MeshClusters"))?;
        if !attached.is_empty() {
            if !self.force {
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
            for name in &attached {
                ctx.progress.warn(left_behind(name));
            }
        }

        let attached_as = attached_as(&client).await?;
        let credentials = stored_credentials(&client).await?;
        let steps = plan(manifests, credentials, attached_as.is_some());
        // The istio-system attach created for Istio remote secrets goes with the last of them,
        // once it holds nothing else (as detach leaves it).
        let istio_namespace = namespace_contents::istio_namespace_created(&client)
            .await
            .map_err(Error::kube(format!(
                "cannot read Namespace {}",
                setup::ISTIO_NAMESPACE
            )))?;
        // Every right asked before the first delete: a caller lacking one is refused with
        // everything in place, not left with half an uninstall.
        let mut needed = needs(&steps);
        if istio_namespace {
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(setup::ISTIO_NAMESPACE.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            };
            needed.push(Need::on(&Manifest::new(&namespace)?, &["delete"]));
        }
        access::require(&client, &target, &needed, access::ASK_AN_ADMIN).await?;
        if self.dry_run {
            if let Some(cluster) = &attached_as {
                for step in steps.iter().filter(|s| s.keep) {
                    ctx.progress.warn(kept(&step.manifest, cluster));
                }
            }
            let mut rows: Vec<Row> = steps.iter().map(Row::of).collect();
            if istio_namespace {
                rows.push(Row {
                    kind: "Namespace".into(),
                    namespace: String::new(),
                    name: setup::ISTIO_NAMESPACE.into(),
                    action: "delete if empty",
                });
            }
            let text = output::render_items(ctx.output, &rows, false, |rows| {
                output::table(
                    &["kind", "namespace", "name", "action"],
                    rows.iter().map(|r| {
                        vec![
                            r.kind.clone(),
                            r.namespace.clone(),
                            r.name.clone(),
                            r.action.to_owned(),
                        ]
                    }),
                )
            })?;
            return output::print_stdout(&text);
        }

        for step in &steps {
            let m = &step.manifest;
            if let (true, Some(cluster)) = (step.keep, &attached_as) {
                ctx.progress.warn(kept(m, cluster));
                continue;
            }
            match (apply::delete(&client, m).await?, &step.credentials_of) {
                (Deleted::Deleted, Some(cluster)) => ctx.progress.ok(format!(
                    "{} deleted (stored credentials of {cluster})",
                    m.describe()
                )),
                (Deleted::Deleted, None) => ctx.progress.ok(format!("{} deleted", m.describe())),
                (Deleted::NotFound, _) => ctx.progress.info(format!("{} not found", m.describe())),
            }
        }
        if istio_namespace {
            let ns = setup::ISTIO_NAMESPACE;
            namespace_contents::remove_namespace_if_unused(
                &client,
                ns,
                "primary",
                None,
                ctx.progress,
            )
            .await
            .map_err(|e| access::request_error(&target, "delete istio-system", e))?;
        }
        if !self.crd {
            ctx.progress
                .info("the MeshCluster CRD is kept; `kubectl mesh uninstall --crd` removes it");
        }
        Ok(())
    }
}

/// The warning for a cluster still attached whose remote objects `--force` leaves, with the
/// command that removes them afterwards (it works once the MeshCluster, or its CRD, is gone).
fn left_behind(cluster: &str) -> String {
    format!(
        "leaving the remote objects of {cluster} behind (--force); `kubectl mesh detach \
         {cluster} --remote-kubeconfig <file>` removes them afterwards"
    )
}

/// The warning for the namespace uninstall keeps.
fn kept(m: &Manifest, cluster: &str) -> String {
    format!(
        "{} kept: this cluster is attached to a primary as {cluster}, and that attach's \
         identity lives there; `kubectl mesh detach {cluster}` on that primary removes it",
        m.describe()
    )
}

/// One object uninstall deletes or keeps.
#[derive(Debug)]
pub struct Step {
    /// The object (by kind, namespace and name).
    pub manifest: Manifest,
    /// Kept rather than deleted: the namespace, when this cluster is attached elsewhere.
    pub keep: bool,
    /// The attached cluster whose stored credentials it is.
    pub credentials_of: Option<String>,
}

/// A [`Step`] as `--dry-run` prints it.
#[derive(Debug, Serialize)]
struct Row {
    kind: String,
    namespace: String,
    name: String,
    action: &'static str,
}

impl Row {
    fn of(step: &Step) -> Self {
        let m = &step.manifest;
        Self {
            kind: m.resource.kind.clone(),
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone(),
            action: if step.keep { "keep" } else { "delete" },
        }
    }
}

/// What uninstall does, in order: install's objects (`manifests`, by name), with the stored
/// credentials of attached clusters (`credentials`, found by their labels) deleted just before
/// the namespace, so that they go whether or not the namespace does; the namespace kept when
/// `keep_namespace` (this cluster is attached to a primary, whose identity lives there).
pub fn plan(
    manifests: Vec<Manifest>,
    credentials: Vec<(Manifest, String)>,
    keep_namespace: bool,
) -> Vec<Step> {
    let is_namespace = |m: &Manifest| m.resource.kind == "Namespace" && m.namespace.is_none();
    let at = manifests
        .iter()
        .position(is_namespace)
        .unwrap_or(manifests.len());
    let mut steps: Vec<Step> = Vec::new();
    let mut manifests = manifests.into_iter();
    steps.extend(manifests.by_ref().take(at).map(|manifest| Step {
        manifest,
        keep: false,
        credentials_of: None,
    }));
    steps.extend(credentials.into_iter().map(|(manifest, cluster)| Step {
        manifest,
        keep: false,
        credentials_of: Some(cluster),
    }));
    steps.extend(manifests.map(|manifest| Step {
        keep: keep_namespace && is_namespace(&manifest),
        manifest,
        credentials_of: None,
    }));
    steps
}

/// The rights the run of `steps` needs: deleting each object it does not keep.
fn needs(steps: &[Step]) -> Vec<Need<String>> {
    steps
        .iter()
        .filter(|s| !s.keep)
        .map(|s| Need::on(&s.manifest, &["delete"]))
        .collect()
}

/// The Secrets attach stored on this primary for its attached clusters (their kubeconfigs,
/// view kubeconfigs and Istio remote secrets: [`setup::stored_credential_of`]), found by
/// their labels, each with its cluster; their metadata only is read. What another primary's
/// attach put in the mesh namespace, this cluster being its remote, carries the same labels
/// and is left out.
async fn stored_credentials(client: &Client) -> Result<Vec<(Manifest, String)>> {
    let selector = format!("{}={MANAGER},{CLUSTER_LABEL}", setup::MANAGED_BY_LABEL);
    let lp = ListParams::default().labels(&selector);
    let mut out = Vec::new();
    for namespace in [MESH_NAMESPACE, setup::ISTIO_NAMESPACE] {
        let found = Api::<Secret>::namespaced(client.clone(), namespace)
            .list_metadata(&lp)
            .await
            .map_err(Error::kube(format!("cannot list Secrets in {namespace}")))?;
        for secret in found.items {
            let Some(cluster) = setup::stored_credential_of(&secret.metadata) else {
                continue;
            };
            let cluster = cluster.to_owned();
            let metadata = ObjectMeta {
                name: secret.metadata.name,
                namespace: secret.metadata.namespace,
                ..Default::default()
            };
            let secret = Secret {
                metadata,
                ..Default::default()
            };
            out.push((Manifest::new(&secret)?, cluster));
        }
    }
    Ok(out)
}

/// The name this cluster is attached to a primary under, when it is one's remote: attach then
/// created the mesh namespace, or put its ServiceAccounts in it. Uninstall keeps the namespace
/// then: deleting it would revoke that primary's tokens behind its back (a cluster may be a
/// primary and another mesh's remote, and uninstall may be run against the wrong context).
async fn attached_as(client: &Client) -> Result<Option<String>> {
    let namespace = mesh_state::namespace(client, MESH_NAMESPACE).await?;
    let Some(namespace) = namespace else {
        return Ok(None);
    };
    if let Some(cluster) = namespace.labels().get(CLUSTER_LABEL) {
        return Ok(Some(cluster.clone()));
    }
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), MESH_NAMESPACE)
        .list(&ListParams::default().labels(CLUSTER_LABEL))
        .await
        .map_err(Error::kube(format!(
            "cannot list ServiceAccounts in {MESH_NAMESPACE}"
        )))?;
    Ok(accounts
        .items
        .iter()
        .find_map(|account| account.labels().get(CLUSTER_LABEL).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| {
                let r = Row::of(s);
                format!(
                    "{} {}/{} {}{}",
                    r.kind,
                    r.namespace,
                    r.name,
                    r.action,
                    s.credentials_of
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    fn credentials() -> Vec<(Manifest, String)> {
        [
            setup::cluster_secret("east", "x"),
            setup::view_secret("east", "x"),
            setup::istio_remote_secret("east", "x"),
        ]
        .iter()
        .map(|s| (Manifest::new(s).unwrap(), "east".to_owned()))
        .collect()
    }

    #[test]
    fn stored_credentials_go_before_the_namespace_kept_or_not() {
        for keep in [false, true] {
            let steps = plan(render::uninstall_order(true).unwrap(), credentials(), keep);
            let rows = rows(&steps);
            let at = rows
                .iter()
                .position(|r| r.starts_with("Namespace "))
                .unwrap();
            let namespace = if keep { "keep" } else { "delete" };
            assert_eq!(
                rows[at - 3..=at],
                [
                    "Secret kubectl-mesh/cluster-east delete (east)".to_owned(),
                    "Secret kubectl-mesh/cluster-east-view delete (east)".to_owned(),
                    "Secret istio-system/istio-remote-secret-east delete (east)".to_owned(),
                    format!("Namespace /kubectl-mesh {namespace}"),
                ],
                "{rows:#?}"
            );
            // Everything else is deleted, the client CA, leader Lease, PodDisruptionBudget and
            // the Events Role in `default` included.
            assert_eq!(
                rows.iter().filter(|r| r.ends_with(" keep")).count(),
                usize::from(keep)
            );
            for object in [
                "ConfigMap kubectl-mesh/mesh-webhook-client-ca delete",
                "Lease kubectl-mesh/mesh-webhook delete",
                "PodDisruptionBudget kubectl-mesh/mesh-webhook delete",
                "RoleBinding default/kubectl-mesh:mesh-webhook-events delete",
                "Role default/kubectl-mesh:mesh-webhook-events delete",
                "Secret kubectl-mesh/mesh-webhook-tls delete",
            ] {
                assert!(
                    rows[..at].iter().any(|r| r == object),
                    "{object}: {rows:#?}"
                );
            }
            assert_eq!(
                rows.last().unwrap(),
                "CustomResourceDefinition /meshclusters.kubectl-mesh.io delete"
            );
        }
    }

    #[test]
    fn every_object_deleted_is_asked_for_and_the_kept_namespace_is_not() {
        for keep in [false, true] {
            let steps = plan(render::uninstall_order(true).unwrap(), credentials(), keep);
            let asked: Vec<String> = needs(&steps)
                .iter()
                .map(|n| {
                    assert_eq!(n.verbs, ["delete"]);
                    format!(
                        "{}/{} {}/{}",
                        n.group,
                        n.resource,
                        n.namespace.as_deref().unwrap_or_default(),
                        n.name.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            assert_eq!(asked.len(), steps.len() - usize::from(keep), "{asked:#?}");
            for object in [
                "admissionregistration.k8s.io/mutatingwebhookconfigurations /kubectl-mesh",
                "apps/deployments kubectl-mesh/mesh-webhook",
                "rbac.authorization.k8s.io/clusterroles /kubectl-mesh:mesh-webhook",
                "/secrets kubectl-mesh/cluster-east",
                "/secrets istio-system/istio-remote-secret-east",
                "apiextensions.k8s.io/customresourcedefinitions /meshclusters.kubectl-mesh.io",
            ] {
                assert!(asked.iter().any(|a| a == object), "{object}: {asked:#?}");
            }
            assert_eq!(
                asked.iter().any(|a| a == "/namespaces /kubectl-mesh"),
                !keep,
                "{asked:#?}"
            );
        }
    }
}
