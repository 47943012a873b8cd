//! `kubectl mesh list`: the attached clusters.

use jiff::Timestamp;
use kube::ResourceExt;
use mesh_core::cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, MeshCluster};

use crate::{
    Context, Error, Result, age,
    mesh_state::{self},
    output::{self, OutputFormat, Tabular},
};

/// What `list` prints on stderr when no cluster is attached.
pub const NO_CLUSTERS: &str =
    "No clusters attached. Attach one with: kubectl mesh attach <kubeconfig>";

/// List the attached clusters.
///
/// Shows what the webhook's reconciler last recorded in each MeshCluster's status; run
/// `kubectl mesh status` for a live view, `kubectl mesh check` to diagnose a cluster.
#[derive(Debug, clap::Args)]
pub struct List {}

impl List {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {} = self;
        let client = ctx.client().await?;
        let clusters = mesh_state::clusters(&client).await?;
        if clusters.is_empty() && ctx.output.is_table() {
            // kubectl's "No resources found": on stderr, so that stdout stays parseable.
            eprintln!("{NO_CLUSTERS}");
            return Ok(());
        }
        output::print_stdout(&render(ctx.output, &clusters, Timestamp::now())?)
    }
}

/// The output of `list` for `clusters` at time `now`: a table, or the resources themselves.
pub fn render(format: OutputFormat, clusters: &[MeshCluster], now: Timestamp) -> Result<String> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let rows: Vec<ClusterRow> = clusters.iter().map(|c| ClusterRow::new(c, now)).collect();
            Ok(output::table(
                &ClusterRow::headers(wide),
                rows.iter().map(|r| r.row(wide)),
            ))
        }
        OutputFormat::Json | OutputFormat::Yaml => {
            let values = clusters
                .iter()
                .map(resource_value)
                .collect::<Result<Vec<_>>>()?;
            if values.is_empty() {
                // An empty List, as `kubectl get -o json|yaml` prints, rather than nothing.
                let empty = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": []});
                return match format {
                    OutputFormat::Json => output::render_values(format, &[empty]),
                    _ => output::yaml_documents(&[empty]),
                };
            }
            output::render_values(format, &values)
        }
    }
}

/// A MeshCluster as `kubectl get -o yaml` shows it: apiVersion and kind set, managedFields
/// left out.
fn resource_value(cluster: &MeshCluster) -> Result<serde_json::Value> {
    let mut cluster = cluster.clone();
    cluster.metadata.managed_fields = None;
    let mut value = serde_json::to_value(&cluster).map_err(|source| Error::Serialize {
        format: "JSON",
        source: Box::new(source),
    })?;
    if let Some(map) = value.as_object_mut() {
        // `MeshCluster::new` sets them; objects read from the apiserver may lack them.
        map.insert("apiVersion".into(), "kubectl-mesh.io/v1alpha1".into());
        map.insert("kind".into(), "MeshCluster".into());
    }
    Ok(value)
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRow {
    /// Name of the MeshCluster.
    pub name: String,
    /// UID of the remote's kube-system namespace.
    pub cluster_id: String,
    /// API server URL.
    pub server: String,
    /// Status of the `Reachable` condition.
    pub reachable: String,
    /// Status of the `Synced` condition.
    pub synced: String,
    /// Namespaces in sync at the last sync.
    pub in_sync: String,
    /// Primary namespaces with labels absent on the remote.
    pub missing: String,
    /// Namespaces the last sync corrected.
    pub drifted: String,
    /// Age of the last sync.
    pub last_sync: String,
    /// When the stored token expires.
    pub token_expiry: String,
    /// Age of the MeshCluster.
    pub age: String,
}

impl ClusterRow {
    /// The row of `cluster` at time `now`.
    pub fn new(cluster: &MeshCluster, now: Timestamp) -> Self {
        let status = cluster.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .condition(type_)
                .map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())
        };
        // Counts mean something only once a sync has run.
        let synced_once = status.last_sync_time.is_some();
        let count = |n: usize| {
            if synced_once {
                n.to_string()
            } else {
                age::NONE.to_owned()
            }
        };
        let token_expiry = match status.token_expiry.as_deref() {
            None => "never".to_owned(),
            Some(t) => t
                .parse::<Timestamp>()
                .map_or_else(|_| t.to_owned(), |t| age::until(t, now)),
        };
        Self {
            name: cluster.name_any(),
            cluster_id: cluster.spec.cluster_id.clone(),
            server: cluster.spec.server.clone(),
            reachable: condition(CONDITION_REACHABLE),
            synced: condition(CONDITION_SYNCED),
            in_sync: count(status.namespaces_in_sync as usize),
            missing: count(status.missing_namespaces.len()),
            drifted: count(status.namespaces_drifted as usize),
            last_sync: age::since_rfc3339(status.last_sync_time.as_deref(), now),
            token_expiry,
            age: cluster
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(|| age::NONE.to_owned(), |t| age::since(t.0, now)),
        }
    }
}

impl Tabular for ClusterRow {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["name"];
        if wide {
            h.push("cluster-id");
        }
        h.extend([
            "server",
            "reachable",
            "synced",
            "in-sync",
            "missing",
            "drifted",
            "last-sync",
        ]);
        if wide {
            h.push("token-expiry");
        }
        h.push("age");
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut r = vec![self.name.clone()];
        if wide {
            r.push(self.cluster_id.clone());
        }
        r.extend([
            self.server.clone(),
            self.reachable.clone(),
            self.synced.clone(),
            self.in_sync.clone(),
            self.missing.clone(),
            self.drifted.clone(),
            self.last_sync.clone(),
        ]);
        if wide {
            r.push(self.token_expiry.clone());
        }
        r.push(self.age.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh_state::fixtures::{cluster, condition, with_status};
    use mesh_core::cluster::MeshClusterStatus;

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn clusters() -> Vec<MeshCluster> {
        vec![
            with_status(
                cluster("east", "https://10.0.0.1:6443", "2026-02-27T09:30:00Z"),
                MeshClusterStatus {
                    conditions: vec![
                        condition(CONDITION_REACHABLE, "True"),
                        condition(CONDITION_SYNCED, "True"),
                    ],
                    last_sync_time: Some("2026-03-01T11:59:48Z".into()),
                    namespaces_in_sync: 42,
                    missing_namespaces: vec!["payments".into()],
                    namespaces_drifted: 2,
                    last_sync_writes: 2,
                    token_expiry: Some("2026-03-02T11:00:00Z".into()),
                    ..Default::default()
                },
            ),
            with_status(
                cluster(
                    "west-long-name",
                    "https://10.0.0.2:6443",
                    "2026-03-01T11:57:00Z",
                ),
                MeshClusterStatus {
                    conditions: vec![
                        condition(CONDITION_REACHABLE, "False"),
                        condition(CONDITION_SYNCED, "Unknown"),
                    ],
                    last_sync_time: Some("2026-03-01T11:58:00Z".into()),
                    last_error: Some("connection refused".into()),
                    ..Default::default()
                },
            ),
            cluster("fresh", "https://10.0.0.3:6443", "2026-03-01T11:59:59Z"),
        ]
    }

    #[test]
    fn table_snapshot() {
        let text = render(OutputFormat::Table, &clusters(), now()).unwrap();
        insta::assert_snapshot!("list_table", text);
    }

    #[test]
    fn wide_snapshot() {
        let text = render(OutputFormat::Wide, &clusters(), now()).unwrap();
        insta::assert_snapshot!("list_wide", text);
    }

    #[test]
    fn json_and_yaml_are_the_resources() {
        let text = render(OutputFormat::Json, &clusters(), now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["kind"], "MeshCluster");
        assert_eq!(v["items"][0]["apiVersion"], "kubectl-mesh.io/v1alpha1");
        assert_eq!(v["items"][0]["status"]["namespacesInSync"], 42);
        assert_eq!(v["items"][1]["spec"]["server"], "https://10.0.0.2:6443");

        let yaml = render(OutputFormat::Yaml, &clusters()[..1], now()).unwrap();
        assert!(yaml.starts_with("apiVersion: kubectl-mesh.io/v1alpha1\nkind: MeshCluster\n"));
        assert!(yaml.contains("clusterId: east-"), "{yaml}");
    }

    #[test]
    fn empty_json_and_yaml_are_empty_lists() {
        let v: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &[], now()).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": []})
        );
        let yaml = render(OutputFormat::Yaml, &[], now()).unwrap();
        assert_eq!(yaml, "apiVersion: v1\nitems: []\nkind: List\n");
    }
}
