//! `kubectl mesh services`: the mesh's services across clusters.
//!
//! Istio merges Services of the same name and namespace across the clusters of a mesh, so
//! one row is one (namespace, name) pair, with what each cluster has of it: whether it
//! exists, its type and ports (ports that differ between clusters are flagged: the merged
//! service gets one cluster's), its ready endpoints (EndpointSlices), and whether the
//! namespace asks for sidecars there. The primary is read with the caller's credentials,
//! each remote with its view credentials ([`crate::view`]) and, for its namespaces' labels,
//! its stored sync credentials. A remote that cannot be read is a column state, never an
//! error of the command (the primary must be readable).
//!
//! The facts of a cluster are kept small ([`ClusterFacts`]): the dashboard holds them for
//! every object it watches.

mod facts;
mod join;
pub mod names;
pub mod records;
pub mod wire;

use std::collections::BTreeMap;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt, api::ListParams};
use mesh_core::{cluster::MeshCluster, list};
use serde::Serialize;

pub use facts::{
    ClusterFacts, Key, Names, ObjectKey, PortFacts, ReadyEndpoints, ServiceFacts, ServiceShape,
    SliceFacts, extract_injection, extract_pod, extract_service, extract_slice, name_hash,
};
pub use join::{Join, PageRows};
pub use names::Name;
pub use records::Records;
use wire::{EndpointSlice, Pod, Service};

use crate::{
    Context, Error, Result,
    mesh_state::{self, DEFAULT_REMOTE_TIMEOUT, RemoteError},
    output::{self, OutputFormat},
    view,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The column of the primary.
pub use crate::output::PRIMARY;

/// Show the mesh's services across the primary and every remote.
///
/// One row per namespace and service name: the clusters where it exists with its ready
/// endpoints, its type and ports (`(differ)` when clusters disagree: Istio merges
/// same-named services), and `(injected)` where the namespace asks for sidecars. With
/// `-o wide`, pods with and without an istio-proxy per cluster. Remotes are read with the
/// view credentials of `attach --services-view` (or istiod's reader); a cluster without
/// them says what to run.
#[derive(Debug, clap::Args)]
pub struct Services {
    /// Namespaces to show [default: the current context's namespace].
    #[arg(value_name = "NAMESPACE", conflicts_with = "all_namespaces")]
    pub namespaces: Vec<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// How long each call to a remote may take, its answer included.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REMOTE_TIMEOUT, value_parser = crate::parse_duration)]
    pub remote_timeout: Duration,
}

impl Services {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let client = ctx.client().await?;
        let scope = if self.all_namespaces {
            Scope::All
        } else if self.namespaces.is_empty() {
            Scope::Namespaces(vec![client.default_namespace().to_owned()])
        } else {
            Scope::Namespaces(self.namespaces)
        };
        let with_pods = ctx.output != OutputFormat::Table;
        let clusters = mesh_state::clusters(&client).await?;
        let (primary, remotes) = tokio::join!(
            read_primary(&client, &scope, with_pods),
            mesh_state::for_each(&clusters, |c| read_remote(
                &client,
                c,
                &scope,
                self.remote_timeout,
                with_pods
            ))
        );
        let primary = primary?;
        let mut columns = vec![primary];
        columns.extend(remotes);
        let report = ServicesReport::compute(&columns);

        match ctx.output {
            OutputFormat::Table | OutputFormat::Wide => {
                if report.services.is_empty() {
                    ctx.progress.info(match &scope {
                        Scope::All => "No service in any namespace of any cluster.".to_owned(),
                        Scope::Namespaces(n) => {
                            format!("No service in {} on any cluster.", n.join(", "))
                        }
                    });
                } else {
                    output::print_stdout(&report.table(ctx.output == OutputFormat::Wide))?;
                }
            }
            format => {
                output::print_stdout(&output::render_value(format, &report)?)?;
            }
        }
        for line in report.notes() {
            ctx.progress.warn(line);
        }
        Ok(())
    }
}

/// Which namespaces are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (`-A`).
    All,
    /// These.
    Namespaces(Vec<String>),
}

impl Scope {
    fn includes(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(names) => names.iter().any(|n| n == namespace),
        }
    }
}

/// Lists `K` in `scope` (one call per namespace when namespaces are named).
async fn list_in<K>(client: &Client, scope: &Scope) -> std::result::Result<Vec<K>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let every = ListParams::default();
    match scope {
        Scope::All => list::all(&Api::<K>::all(client.clone()), &every).await,
        Scope::Namespaces(names) => {
            let lists = futures::future::try_join_all(names.iter().map(|ns| {
                let (api, every) = (Api::<K>::namespaced(client.clone(), ns), &every);
                async move { list::all(&api, every).await }
            }))
            .await?;
            Ok(lists.into_iter().flatten().collect())
        }
    }
}

/// Services, EndpointSlices (and pods) of `scope` on one cluster, as facts.
async fn read_facts(
    client: &Client,
    scope: &Scope,
    with_pods: bool,
) -> std::result::Result<ClusterFacts, kube::Error> {
    let pods = async {
        if with_pods {
            list_in::<Pod>(client, scope).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (services, slices, pods) = tokio::join!(
        list_in::<Service>(client, scope),
        list_in::<EndpointSlice>(client, scope),
        pods
    );
    let mut names = Names::default();
    let mut facts = ClusterFacts::default();
    for s in services? {
        facts.apply_service(&mut names, &s);
    }
    for s in slices? {
        facts.apply_slice(&mut names, &s);
    }
    if let Some(pods) = pods? {
        let mut map = Records::default();
        for pod in &pods {
            if let Some((key, sidecar)) = extract_pod(&mut names, pod) {
                map.insert(key, sidecar);
            }
        }
        facts.pods = Some(map);
    }
    Ok(facts)
}

/// Namespace labels of `namespaces`, as injection facts.
fn injected_namespaces(namespaces: &[Namespace], scope: &Scope) -> BTreeMap<String, String> {
    namespaces
        .iter()
        .filter(|ns| scope.includes(&ns.name_any()))
        .filter_map(|ns| Some((ns.name_any(), extract_injection(ns)?)))
        .collect()
}

/// The primary, read with the caller's own credentials: failing to read it fails the command.
async fn read_primary(client: &Client, scope: &Scope, with_pods: bool) -> Result<ClusterRead> {
    let namespaces_api = Api::<Namespace>::all(client.clone());
    let every = ListParams::default();
    let (facts, namespaces) = tokio::join!(
        read_facts(client, scope, with_pods),
        list::all(&namespaces_api, &every)
    );
    let mut facts = facts.map_err(Error::kube("cannot read the primary's services"))?;
    let namespaces = namespaces.map_err(Error::kube("cannot list the primary's namespaces"))?;
    facts.injection = Some(injected_namespaces(&namespaces, scope));
    Ok(ClusterRead {
        name: PRIMARY.to_owned(),
        state: ReadState::Read(facts),
    })
}

/// One remote: its services with its view credentials, its namespaces with the stored ones.
async fn read_remote(
    primary: &Client,
    cluster: &MeshCluster,
    scope: &Scope,
    timeout: Duration,
    with_pods: bool,
) -> ClusterRead {
    let name = cluster.name_any();
    // Each call is bounded by `timeout`, not the whole read: see `mesh_state::list_all`.
    let namespaces = async {
        let client = mesh_state::remote_client(primary, cluster, timeout).await?;
        mesh_state::remote_namespaces(&client).await
    };
    let facts = async {
        let found = view::lookup(primary, cluster, &mesh_state::remote_options(timeout)).await;
        match found.credentials {
            view::Credentials::None => ReadState::NoCredentials {
                enable: view::enable_command(&name),
                istio_unread: found.istio_unread,
            },
            view::Credentials::Unusable { source, error }
            | view::Credentials::Unreadable { source, error } => ReadState::Failed {
                credentials: source.to_string(),
                error,
            },
            view::Credentials::Found { source, client } => {
                let read = read_facts(&client, scope, with_pods).await;
                read_state(source, read.map_err(RemoteError::Call))
            }
        }
    };
    let (namespaces, mut state) = tokio::join!(namespaces, facts);
    if let ReadState::Read(facts) = &mut state {
        with_labels(facts, namespaces, scope);
    }
    ClusterRead { name, state }
}

/// What a read of a cluster's facts with the credentials of `source` says of it: a remote that
/// answered with an error (a refusal, a 500, a kind it does not serve, an answer past the
/// bounds) failed; one that did not answer is unreachable.
fn read_state(source: view::Source, read: Result<ClusterFacts, RemoteError>) -> ReadState {
    match read {
        Ok(facts) => ReadState::Read(facts),
        Err(e) if e.unanswered() => ReadState::Unreachable {
            error: e.to_string(),
        },
        Err(e) => ReadState::Failed {
            credentials: source.to_string(),
            error: e.to_string(),
        },
    }
}

/// Gives `facts` their namespaces' injection, from the namespaces the stored sync
/// credentials listed. Labels unknown (stored credentials failing) are not "not injected":
/// why is kept, and said.
fn with_labels(
    facts: &mut ClusterFacts,
    namespaces: mesh_state::RemoteResult<Vec<Namespace>>,
    scope: &Scope,
) {
    match namespaces {
        Ok(list) => {
            facts.injection = Some(injected_namespaces(&list, scope));
            facts.injection_unread = None;
        }
        Err(e) => {
            facts.injection = None;
            facts.injection_unread = Some(e.to_string());
        }
    }
}

/// One cluster as read.
#[derive(Clone, Debug)]
pub struct ClusterRead {
    /// `primary`, or the MeshCluster's name.
    pub name: String,
    /// What could be read.
    pub state: ReadState,
}

/// Whether a cluster's services could be read.
#[derive(Clone, Debug)]
pub enum ReadState {
    /// Read.
    Read(ClusterFacts),
    /// No view credentials; `enable` is what gives it some. `istio_unread`: why the Istio
    /// remote secret could not be read, when the caller was refused it past an absent view
    /// Secret (no view credentials the caller could use).
    NoCredentials {
        enable: String,
        istio_unread: Option<String>,
    },
    /// The credentials exist and failed (refused, unusable), or the remote answered the read
    /// with an error.
    Failed { credentials: String, error: String },
    /// No answer.
    Unreachable { error: String },
}

/// Services across the mesh, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicesReport {
    /// The primary, then every remote in name order.
    pub clusters: Vec<ClusterColumn>,
    /// One row per (namespace, name), sorted.
    pub services: Vec<ServiceRow>,
}

/// One cluster's column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterColumn {
    /// `primary` or the MeshCluster's name.
    pub name: String,
    /// Whether its services could be read, and what to know of it.
    #[serde(flatten)]
    pub state: ColumnState,
}

/// Whether a cluster's services could be read: `state`, with what goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ColumnState {
    /// Read.
    Read {
        /// Why its namespaces' labels could not be read (its services were): whether they ask
        /// for sidecars is unknown, and its cells leave `injected` out.
        #[serde(rename = "injectionUnknown", skip_serializing_if = "Option::is_none")]
        injection_unknown: Option<String>,
    },
    /// No view credentials.
    NoCredentials {
        /// What to run to give it some.
        enable: String,
        /// Why its Istio remote secret could not be read, when the caller was refused it.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Its credentials, or the remote, failed the read (why).
    Failed { error: String },
    /// It did not answer (why).
    Unreachable { error: String },
}

impl ColumnState {
    /// The cell of every row of such a cluster, when not read.
    fn cell(&self) -> &'static str {
        match self {
            Self::Read { .. } => "-",
            Self::NoCredentials { .. } => "(no view credentials)",
            Self::Failed { .. } => "(cannot read)",
            Self::Unreachable { .. } => "(unreachable)",
        }
    }
}

/// One service name across the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    /// The type where it exists (the primary's first), `mixed` when clusters disagree.
    #[serde(rename = "type")]
    pub type_: String,
    /// The ports of the first cluster that has it (the primary first).
    pub ports: Vec<PortFacts>,
    /// Whether every cluster that has it has the same ports.
    pub ports_match: bool,
    /// On the primary; absent when it could not be read. Kept apart from the remotes': one
    /// may be named `primary` (an older version allowed the name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<ServiceCell>,
    /// Every remote that could be read, by name.
    pub clusters: BTreeMap<String, ServiceCell>,
}

/// One service on one readable cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCell {
    /// Whether it exists there.
    pub exists: bool,
    /// Its type there.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Its ports there, when they differ from the row's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortFacts>>,
    /// Ready endpoints there.
    pub ready_endpoints: usize,
    /// Whether its namespace asks for sidecars there; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected: Option<bool>,
    /// Pods of its namespace with and without istio-proxy; absent when not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
}

/// Pods of a namespace by sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    pub with_proxy: usize,
    pub without_proxy: usize,
}

/// The columns of a report: one per cluster, in the given order.
pub fn columns(clusters: &[ClusterRead]) -> Vec<ClusterColumn> {
    clusters
        .iter()
        .map(|c| ClusterColumn {
            name: c.name.clone(),
            state: match &c.state {
                ReadState::Read(facts) => ColumnState::Read {
                    injection_unknown: facts
                        .injection_unread
                        .clone()
                        .filter(|_| facts.injection.is_none()),
                },
                ReadState::NoCredentials {
                    enable,
                    istio_unread,
                } => ColumnState::NoCredentials {
                    enable: enable.clone(),
                    error: istio_unread.clone(),
                },
                ReadState::Failed { credentials, error } => ColumnState::Failed {
                    error: format!("with the {credentials} credentials: {error}"),
                },
                ReadState::Unreachable { error } => ColumnState::Unreachable {
                    error: error.clone(),
                },
            },
        })
        .collect()
}

impl ServicesReport {
    /// Joins every cluster's facts by (namespace, name).
    pub fn compute(clusters: &[ClusterRead]) -> Self {
        Self {
            clusters: columns(clusters),
            services: Join::new(clusters).rows().collect(),
        }
    }

    /// NAMESPACE, NAME, TYPE, PORTS, then one column per cluster: its ready endpoints and
    /// `(injected)`; `wide` adds its pods with and without istio-proxy.
    pub fn table(&self, wide: bool) -> String {
        let mut headers = vec![
            "namespace".to_owned(),
            "name".to_owned(),
            "type".to_owned(),
            "ports".to_owned(),
        ];
        headers.extend(self.clusters.iter().map(|c| c.name.clone()));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let rows = self.services.iter().map(|row| {
            let ports = row
                .ports
                .iter()
                .map(PortFacts::text)
                .collect::<Vec<_>>()
                .join(",");
            let ports = match (ports.is_empty(), row.ports_match) {
                (true, true) => "-".to_owned(),
                (_, true) => ports,
                (_, false) => format!("{ports} (differ)"),
            };
            let mut cells = vec![
                row.namespace.clone(),
                row.name.clone(),
                row.type_.clone(),
                ports,
            ];
            // The first column is the primary's, whatever a remote is named.
            cells.extend(self.clusters.iter().enumerate().map(|(i, c)| {
                let cell = if i == 0 {
                    row.primary.as_ref()
                } else {
                    row.clusters.get(&c.name)
                };
                match cell {
                    Some(cell) => cell.text(wide),
                    None => c.state.cell().to_owned(),
                }
            }));
            cells
        });
        output::table(&headers, rows)
    }

    /// Lines after the table: clusters that could not be read, and what enables them.
    pub fn notes(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.clusters {
            match &c.state {
                ColumnState::Read { injection_unknown } => {
                    if let Some(why) = injection_unknown {
                        lines.push(format!(
                            "{}: namespace labels not read ({why}): injection unknown",
                            c.name
                        ));
                    }
                }
                ColumnState::NoCredentials { enable, error } => lines.push(format!(
                    "{}: services not read ({}); run `{enable}`",
                    c.name,
                    view::no_credentials(error.as_deref()),
                )),
                ColumnState::Failed { error } => {
                    lines.push(format!("{}: cannot read services {error}", c.name));
                }
                ColumnState::Unreachable { error } => {
                    lines.push(format!("{} unreachable: {error}", c.name));
                }
            }
        }
        let differ: Vec<String> = self
            .services
            .iter()
            .filter(|s| !s.ports_match)
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        if !differ.is_empty() {
            lines.push(format!(
                "ports differ across clusters for {}: Istio merges same-named services, give \
                 them the same ports everywhere",
                differ.join(", ")
            ));
        }
        lines
    }
}

impl ServiceCell {
    /// `2 ready (injected)`, `-` where it does not exist; `wide` adds the namespace's pods
    /// with and without istio-proxy.
    pub fn text(&self, wide: bool) -> String {
        let mut text = if self.exists {
            format!("{} ready", self.ready_endpoints)
        } else {
            "-".to_owned()
        };
        if self.exists && self.injected == Some(true) {
            text.push_str(" (injected)");
        }
        if let Some(pods) = self.pods.filter(|_| wide && self.exists) {
            text.push_str(&format!(
                ", pods: {} with proxy, {} without",
                pods.with_proxy, pods.without_proxy
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fixtures::labelled;
    use mesh_core::fixtures::{PodExt, pod};
    use serde_json::json;
    use std::sync::Arc;

    fn service(namespace: &str, name: &str, type_: &str, ports: &[(&str, i32)]) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": {
                "type": type_,
                "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn slice(namespace: &str, name: &str, service: &str, ready: &[Option<bool>]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {
                "namespace": namespace,
                "name": name,
                "labels": {SERVICE_NAME_LABEL: service},
            },
            "addressType": "IPv4",
            "endpoints": ready.iter().map(|r| match r {
                Some(r) => json!({"addresses": ["10.0.0.1"], "conditions": {"ready": r}}),
                None => json!({"addresses": ["10.0.0.1"]}),
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// A fixture pod as these views read it, in `namespace`.
    fn in_ns(p: k8s_openapi::api::core::v1::Pod, namespace: &str) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
        p.metadata.namespace = Some(namespace.to_owned());
        p
    }

    /// Cluster `name`, read as `facts`.
    fn read(name: &str, facts: ClusterFacts) -> ClusterRead {
        ClusterRead {
            name: name.into(),
            state: ReadState::Read(facts),
        }
    }

    fn facts(
        services: &[Service],
        slices: &[EndpointSlice],
        pods: &[Pod],
        namespaces: &[Namespace],
    ) -> ClusterFacts {
        let mut names = Names::default();
        let mut f = ClusterFacts::default();
        for s in services {
            f.apply_service(&mut names, s);
        }
        for s in slices {
            f.apply_slice(&mut names, s);
        }
        f.pods = Some(
            pods.iter()
                .filter_map(|p| extract_pod(&mut names, p))
                .collect(),
        );
        f.injection = Some(
            namespaces
                .iter()
                .filter_map(|n| Some((n.name_any(), extract_injection(n)?)))
                .collect(),
        );
        f
    }

    fn clusters() -> Vec<ClusterRead> {
        let primary = facts(
            &[
                service("shop", "cart", "ClusterIP", &[("http", 80)]),
                service("shop", "web", "ClusterIP", &[("http", 80), ("grpc", 9090)]),
            ],
            &[
                slice("shop", "web-a", "web", &[Some(true), None, Some(false)]),
                slice("shop", "web-b", "web", &[Some(true)]),
            ],
            &[
                in_ns(pod("web-1").sidecar(), "shop"),
                in_ns(pod("web-2"), "shop"),
            ],
            &[labelled("shop", &[("istio-injection", "enabled")])],
        );
        let east = facts(
            &[
                service("shop", "web", "ClusterIP", &[("http", 80)]),
                service("db", "pg", "ClusterIP", &[("", 5432)]),
            ],
            &[slice("shop", "web-x", "web", &[Some(true)])],
            &[in_ns(pod("web-9").sidecar(), "shop")],
            &[
                labelled("shop", &[("istio.io/rev", "canary")]),
                labelled("db", &[]),
            ],
        );
        vec![
            read(PRIMARY, primary),
            read("east", east),
            ClusterRead {
                name: "north".into(),
                state: ReadState::Unreachable {
                    error: "no answer within 5s".into(),
                },
            },
            ClusterRead {
                name: "west".into(),
                state: ReadState::NoCredentials {
                    enable: view::enable_command("west"),
                    istio_unread: None,
                },
            },
        ]
    }

    #[test]
    fn extract_reads_what_the_table_needs() {
        let mut names = Names::default();
        let (key, facts) = extract_service(
            &mut names,
            &service("shop", "web", "", &[("grpc", 9090), ("http", 80)]),
        )
        .unwrap();
        assert_eq!((&*key.0, &*key.1), ("shop", "web"));
        assert_eq!(facts.ports[0].text(), "http:80/TCP", "sorted by port");
        let (_, slice_facts) = extract_slice(
            &mut names,
            &slice("shop", "s", "web", &[Some(true), None, Some(false)]),
        )
        .unwrap();
        let svc = &slice_facts.service;
        assert!(Arc::ptr_eq(svc, &key.1), "one copy of the service's name");
        assert_eq!(
            (&**svc, slice_facts.untargeted),
            ("web", 2),
            "unset ready counts as ready"
        );
        let mut orphan = slice("shop", "s", "web", &[]);
        orphan.metadata.labels = None;
        assert_eq!(extract_slice(&mut names, &orphan), None);
        let mut done = in_ns(pod("job"), "shop");
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert_eq!(extract_pod(&mut names, &done), None);
        assert_eq!(
            extract_injection(&labelled("a", &[("istio-injection", "disabled")])),
            None
        );
        assert_eq!(
            extract_injection(&labelled("a", &[("istio.io/rev", "canary")])).as_deref(),
            Some("revision canary")
        );
    }

    /// An EndpointSlice of `family` listing `pods` (name, uid; no uid: no targetRef), ready.
    fn family_slice(name: &str, family: &str, pods: &[(&str, Option<&str>)]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop",
                "name": name,
                "labels": {SERVICE_NAME_LABEL: "web"},
            },
            "addressType": family,
            "endpoints": pods.iter().enumerate().map(|(i, (pod, uid))| {
                let address = if family == "IPv6" { format!("fd00::{i}") } else { format!("10.0.0.{i}") };
                match uid {
                    Some(uid) => json!({
                        "addresses": [address],
                        "conditions": {"ready": true},
                        "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": uid},
                    }),
                    None => json!({"addresses": [address], "conditions": {"ready": true}}),
                }
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn dual_stack_endpoints_count_once() {
        let web = || service("shop", "web", "ClusterIP", &[("http", 80)]);
        let ready = |slices: &[EndpointSlice]| {
            let clusters = [read(PRIMARY, facts(&[web()], slices, &[], &[]))];
            let report = ServicesReport::compute(&clusters);
            let json = serde_json::to_value(&report).unwrap();
            let cell = report.services[0].primary.as_ref().unwrap();
            assert_eq!(
                json["services"][0][PRIMARY]["readyEndpoints"],
                cell.ready_endpoints
            );
            cell.ready_endpoints
        };
        // One pod, one slice per family.
        let pod = [("web-0", Some("uid-0"))];
        assert_eq!(
            ready(&[
                family_slice("web-v4", "IPv4", &pod),
                family_slice("web-v6", "IPv6", &pod),
            ]),
            1
        );
        // Two pods, split over several slices of each family.
        let (a, b) = (("web-0", Some("uid-0")), ("web-1", Some("uid-1")));
        assert_eq!(
            ready(&[
                family_slice("web-v4-a", "IPv4", &[a]),
                family_slice("web-v4-b", "IPv4", &[b]),
                family_slice("web-v6", "IPv6", &[b, a]),
            ]),
            2
        );
        // Without targetRefs, one family counts.
        let bare = [("", None), ("", None)];
        assert_eq!(
            ready(&[
                family_slice("web-v4", "IPv4", &bare),
                family_slice("web-v6", "IPv6", &bare[..1]),
            ]),
            2
        );
    }

    #[test]
    fn rows_join_clusters_and_flag_differing_ports() {
        let r = ServicesReport::compute(&clusters());
        let names: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        assert_eq!(names, ["db/pg", "shop/cart", "shop/web"]);
        let web = &r.services[2];
        assert!(!web.ports_match);
        assert_eq!(web.primary.as_ref().unwrap().ready_endpoints, 3);
        assert_eq!(web.clusters["east"].ready_endpoints, 1);
        assert_eq!(web.clusters["east"].injected, Some(true));
        assert_eq!(
            web.clusters["east"].ports.as_ref().map(Vec::len),
            Some(1),
            "the cluster's own ports where they differ"
        );
        assert!(!r.services[0].primary.as_ref().unwrap().exists);
        assert!(!r.services.iter().any(|s| s.clusters.contains_key("north")));
        insta::assert_snapshot!("services_table", r.table(false));
        insta::assert_snapshot!("services_table_wide", r.table(true));
        insta::assert_snapshot!("services_notes", r.notes().join("\n"));
    }

    #[test]
    fn pages_are_filtered_and_counted() {
        let clusters = clusters();
        let join = Join::new(&clusters);
        assert_eq!(join.len(), 3);
        let (total, rows) = join.page("", 1, 1);
        assert_eq!(total, 3);
        assert_eq!(
            rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["cart"]
        );
        let (total, rows) = join.page("shop/w", 0, 10);
        assert_eq!((total, rows.len()), (1, 1));
        assert_eq!(rows[0], ServicesReport::compute(&clusters).services[2]);
        let (total, rows) = join.page("p/", 0, 10);
        assert_eq!(
            (total, rows[0].name.as_str()),
            (2, "cart"),
            "shop/cart, shop/web"
        );
        assert_eq!(join.page("nothing", 0, 10), (0, Vec::new()));
        assert_eq!(join.page("", 5, 10), (3, Vec::new()));
        // A paged join aggregates each page's namespaces alone, to the same rows.
        let paged = Join::paged(&clusters);
        for (filter, offset, limit) in [("", 0, 10), ("", 1, 1), ("shop/", 0, 10), ("db", 0, 1)] {
            assert_eq!(
                paged.page(filter, offset, limit),
                join.page(filter, offset, limit)
            );
        }
    }

    #[test]
    fn json_is_structured() {
        let v = serde_json::to_value(ServicesReport::compute(&clusters())).unwrap();
        assert_eq!(v["clusters"][2]["state"], "unreachable");
        assert_eq!(v["clusters"][3]["state"], "no-credentials");
        assert_eq!(
            v["clusters"][3]["enable"],
            "kubectl mesh attach <kubeconfig> --name west --services-view"
        );
        let web = &v["services"][2];
        assert_eq!(web["portsMatch"], false);
        assert_eq!(web["primary"]["readyEndpoints"], 3);
        assert_eq!(web["primary"]["pods"]["withProxy"], 1);
        assert_eq!(web["primary"]["pods"]["withoutProxy"], 1);
        assert_eq!(web["ports"][1]["port"], 9090);
    }

    /// A remote named `primary` (attach allowed the name once) took the primary's cell: the
    /// PRIMARY column and the primary's cell in JSON showed the remote's endpoints.
    #[test]
    fn a_remote_named_primary_keeps_its_own_cell() {
        let web = || service("shop", "web", "ClusterIP", &[("http", 80)]);
        let ready = |n: usize| slice("shop", "web-s", "web", &vec![Some(true); n]);
        let clusters = [
            read(PRIMARY, facts(&[web()], &[ready(1)], &[], &[])),
            read(PRIMARY, facts(&[web()], &[ready(5)], &[], &[])),
        ];
        let report = ServicesReport::compute(&clusters);
        let table = report.table(false);
        let row = table.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = row.split("   ").map(str::trim).collect();
        assert_eq!(
            cells[cells.len() - 2..],
            ["1 ready", "5 ready"],
            "the primary's column, then the remote's:\n{table}"
        );
        let v = serde_json::to_value(&report).unwrap();
        let row = &v["services"][0];
        assert_eq!(row["primary"]["readyEndpoints"], 1, "{row}");
        assert_eq!(row["clusters"]["primary"]["readyEndpoints"], 5, "{row}");
        // The dashboard's page reads the same rows: its first column is `primary`.
        let join = Join::paged(&clusters);
        let (_, page) = join.page_rows("", 0, 10);
        let page = serde_json::to_value(&page).unwrap();
        assert_eq!(page[0], *row, "{page}");
    }

    /// A remote whose services were read (view credentials) but not its namespaces' labels
    /// (stored sync credentials failing): its cells had no `(injected)`, as if its namespaces
    /// asked for no sidecars, and nothing said the labels were not read.
    #[test]
    fn labels_not_read_are_unknown_and_said_so() {
        let web = || service("shop", "web", "ClusterIP", &[("http", 80)]);
        let mut east = facts(&[web()], &[], &[], &[]);
        let refused =
            kube::core::Status::failure("secrets is forbidden", "Forbidden").with_code(403);
        let refused = mesh_state::RemoteError::Credentials(mesh_core::remote::Error::ReadSecret {
            namespace: "kubectl-mesh".into(),
            name: "cluster-east".into(),
            cause: kube::Error::Api(refused.boxed()),
        });
        with_labels(&mut east, Err(refused), &Scope::All);
        let primary = facts(
            &[web()],
            &[],
            &[],
            &[labelled("shop", &[("istio-injection", "enabled")])],
        );
        let clusters = [read(PRIMARY, primary), read("east", east)];
        let report = ServicesReport::compute(&clusters);
        let notes = report.notes();
        assert!(
            notes.iter().any(|n| n.starts_with(
                "east: namespace labels not read (cannot read secret kubectl-mesh/cluster-east: "
            ) && n.contains("secrets is forbidden")
                && n.ends_with("): injection unknown")),
            "{notes:?}"
        );
        let v = serde_json::to_value(&report).unwrap();
        let cell = &v["services"][0]["clusters"]["east"];
        assert_eq!(cell["exists"], true, "{cell}");
        assert!(cell.get("injected").is_none(), "unknown, not false: {cell}");
        assert!(
            v["clusters"][1]["injectionUnknown"]
                .as_str()
                .is_some_and(|why| why.contains("secrets is forbidden")),
            "{}",
            v["clusters"][1]
        );
        // Labels that were read: no note, and `injected` either way.
        let mut labels_read = facts(&[web()], &[], &[], &[]);
        with_labels(
            &mut labels_read,
            Ok(vec![labelled("shop", &[])]),
            &Scope::All,
        );
        let clusters = [read("east", labels_read)];
        let report = ServicesReport::compute(&clusters);
        assert!(report.notes().is_empty(), "{:?}", report.notes());
        assert_eq!(
            report.services[0].primary.as_ref().unwrap().injected,
            Some(false)
        );
    }

    /// No view Secret and an Istio remote secret the caller may not read: no view
    /// credentials, what gives the cluster some, and that the Istio remote secret was refused.
    #[test]
    fn no_credentials_says_when_the_istio_secret_was_refused() {
        let clusters = [
            read(PRIMARY, facts(&[], &[], &[], &[])),
            ClusterRead {
                name: "east".into(),
                state: ReadState::NoCredentials {
                    enable: view::enable_command("east"),
                    istio_unread: Some(
                        "cannot read Secret istio-system/istio-remote-secret-east: forbidden"
                            .into(),
                    ),
                },
            },
        ];
        let report = ServicesReport::compute(&clusters);
        assert_eq!(
            report.notes(),
            [
                "east: services not read (no view credentials, and cannot read Secret \
                 istio-system/istio-remote-secret-east: forbidden); run `kubectl mesh attach \
                 <kubeconfig> --name east --services-view`"
            ]
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["clusters"][1]["state"], "no-credentials");
        assert_eq!(
            v["clusters"][1]["enable"],
            "kubectl mesh attach <kubeconfig> --name east --services-view"
        );
        assert_eq!(
            v["clusters"][1]["error"],
            "cannot read Secret istio-system/istio-remote-secret-east: forbidden"
        );
    }

    #[test]
    fn namespaces_and_all_conflict() {
        use clap::Parser as _;
        let err = crate::Cli::try_parse_from(["kubectl-mesh", "services", "shop", "-A"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
    }

    /// A remote that answered the read with an error (a 500, a kind it does not serve) was
    /// called unreachable, which says it gave no answer; one that gave none still is.
    #[test]
    fn a_remote_that_answered_with_an_error_failed_rather_than_was_unreachable() {
        let state = |error: kube::Error| match read_state(
            view::Source::View,
            Err(RemoteError::Call(error)),
        ) {
            ReadState::Failed { .. } => "failed",
            ReadState::Unreachable { .. } => "unreachable",
            other => panic!("{other:?}"),
        };
        let answer = |code: u16| {
            let status = kube::core::Status::failure("boom", "Reason").with_code(code);
            kube::Error::Api(status.boxed())
        };
        for code in [403, 404, 500] {
            assert_eq!(state(answer(code)), "failed", "{code}");
        }
        let silence = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            state(kube::Error::Service(Box::new(silence))),
            "unreachable"
        );
    }
}
