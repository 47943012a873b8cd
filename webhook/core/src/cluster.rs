//! `MeshCluster`: one attached remote cluster, recorded on the primary.
//!
//! The resource is cluster-scoped: an attached cluster belongs to the whole mesh, not to a
//! namespace. Its credentials live in a Secret in [`crate::MESH_NAMESPACE`] referenced by
//! `spec.secretName`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{Api, Client, CustomResource, api::ListParams, core::Selector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Key of the sanitized kubeconfig inside a cluster's Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// Label on every object that belongs to one attached cluster, on both sides.
pub const CLUSTER_LABEL: &str = "kubectl-mesh.io/cluster";

/// Condition type: the remote answered with valid credentials on the last attempt.
pub const CONDITION_REACHABLE: &str = "Reachable";
/// Condition type: every remote namespace carries the primary's managed labels.
pub const CONDITION_SYNCED: &str = "Synced";

/// Most names `status.missingNamespaces` lists: the whole list of a nearly empty remote under
/// a primary with tens of thousands of labelled namespaces would outgrow the apiserver's
/// object size limit and fail every status write.
pub const MISSING_NAMESPACES_LISTED: usize = 100;

/// A remote cluster whose namespaces mirror the primary's sidecar-injection labels.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubectl-mesh.io",
    version = "v1alpha1",
    kind = "MeshCluster",
    plural = "meshclusters",
    shortname = "mc",
    status = "MeshClusterStatus",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.server"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshClusterSpec {
    /// UID of the remote's kube-system namespace: the cluster's identity. Two MeshClusters
    /// never share it, and it never equals the primary's.
    pub cluster_id: String,
    /// API server URL of the remote, as stored in its kubeconfig.
    pub server: String,
    /// Fingerprint of the certificate authority attach stored with the credentials:
    /// `sha256:<hex>` of the decoded certificate-authority-data (of no bytes when it stored
    /// none). A stored kubeconfig whose server is not `server`, or whose CA does not hash to
    /// this, is refused before anything is sent (see `mesh_core::recorded`). Absent on clusters
    /// attached before it was recorded, which are checked on their server only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// The name attach stored for the server's certificate to be checked against
    /// (`tls-server-name`), when it stored one. On a cluster that records `caFingerprint`, a
    /// stored kubeconfig asking for another name, or for one where none was recorded, is
    /// refused as well: the name decides which certificate the CA may vouch for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Secret in the mesh namespace whose `kubeconfig` key holds the sanitized credentials.
    pub secret_name: String,
    /// Name of the primary cluster, shown to people editing labels on the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_name: Option<String>,
    /// What the remote guard does with managed-label edits made directly on the remote.
    #[serde(default)]
    pub remote_guard: RemoteGuard,
    /// Which of the remote's namespaces kubectl-mesh may write; the rest are left alone.
    #[serde(default, skip_serializing_if = "NamespaceScope::is_everything")]
    pub scope: NamespaceScope,
}

impl MeshCluster {
    /// Whether it stands for an attached cluster: one on its way out is detached already, and
    /// nothing is pushed to it.
    pub fn is_attached(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
    }
}

/// The part of a remote's namespaces kubectl-mesh syncs, on top of the installed rule's
/// excluded namespaces: a platform or gateway namespace labelled on the remote itself stays
/// as it is when left out here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceScope {
    /// Remote namespaces never written, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    /// Only remote namespaces whose own labels match are written. It may not use a managed
    /// label key: writing one must never move a namespace in or out of scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

impl NamespaceScope {
    /// Whether this scope leaves every namespace to the installed rule.
    pub fn is_everything(&self) -> bool {
        self.exclude_namespaces.is_empty()
            && self.namespace_selector.as_ref().is_none_or(selects_all)
    }
}

/// Whether `selector` selects every namespace, by kube's rule (the one [`Selector`] applies
/// when the sync rule is narrowed to a scope). One it cannot read selects nothing known.
pub fn selects_all(selector: &LabelSelector) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.selects_all())
}

/// Admission policy installed on a remote for managed-label edits not made by kubectl-mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RemoteGuard {
    /// Allow the edit and print a warning naming the primary.
    #[default]
    Warn,
    /// Refuse the edit.
    Deny,
    /// Install no policy.
    Off,
}

/// Observed state of one attached cluster, written by the reconciler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshClusterStatus {
    /// `Reachable` and `Synced`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the last full sync of this cluster finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Remote namespaces whose managed labels equal the primary's.
    pub namespaces_in_sync: u32,
    /// Primary namespaces with managed labels that do not exist on the remote (not created):
    /// the first 100 by name; `namespacesMissing` counts them all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_namespaces: Vec<String>,
    /// How many primary namespaces with managed labels do not exist on the remote.
    pub namespaces_missing: u32,
    /// Remote namespaces that differed from the primary at the last sync and were corrected.
    pub namespaces_drifted: u32,
    /// Number of label writes the last sync made.
    pub last_sync_writes: u32,
    /// The last error met while talking to the remote, cleared by a successful sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `resourceVersion` of the credentials Secret that the last successful sync used:
    /// once it equals the Secret's own, credentials replaced there are in use and the ones
    /// before them may be revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_credentials: Option<String>,
}

impl MeshClusterStatus {
    /// The condition of the given type, if recorded.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// How many primary namespaces are missing on the remote. `missingNamespaces` may list
    /// only some of them, and a status written before `namespacesMissing` existed lists all.
    pub fn missing_count(&self) -> usize {
        (self.namespaces_missing as usize).max(self.missing_namespaces.len())
    }

    /// Whether the condition of the given type is recorded as "True".
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// Names of the MeshClusters on the cluster `client` reaches; none when their CRD is not
/// installed.
pub async fn names(client: &Client) -> Result<Vec<String>, kube::Error> {
    let api: Api<MeshCluster> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn scope(selector: Option<LabelSelector>) -> NamespaceScope {
        NamespaceScope {
            exclude_namespaces: Vec::new(),
            namespace_selector: selector,
        }
    }

    #[test]
    fn only_a_scope_that_leaves_out_nothing_is_everything() {
        let empty = LabelSelector {
            match_labels: Some(Default::default()),
            match_expressions: Some(Vec::new()),
        };
        let team = |operator: &str| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: operator.into(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        assert!(scope(None).is_everything());
        assert!(scope(Some(empty)).is_everything());
        assert!(!scope(Some(team("Exists"))).is_everything());
        // An operator kube does not know: kept (and shown) rather than dropped as if it
        // selected everything.
        assert!(!scope(Some(team("Sometimes"))).is_everything());
        let excluding = NamespaceScope {
            exclude_namespaces: vec!["gateways".into()],
            ..scope(None)
        };
        assert!(!excluding.is_everything());
    }
}
