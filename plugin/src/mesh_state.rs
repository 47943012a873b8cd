//! The mesh as the primary records it, for the commands that read it (`list`, `status`,
//! `sync`, `check`): the installed sync rule, the attached clusters, their credentials, and
//! clients for the remotes.
//!
//! Remote clients are built by the webhook library's own code ([`mesh_core::remote`]) from the
//! same Secret the webhook reads, so the CLI reaches a remote exactly as the webhook does and
//! refuses the same kubeconfigs. Every call to a remote runs under a deadline: one dead
//! cluster must not hang a command about all of them.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Namespace,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta},
};
use mesh_core::{
    MESH_NAMESPACE, call_limits,
    cluster::{MeshCluster, NamespaceScope},
    failure::{Failure, error_chain},
    labels::{ScopeError, SyncRule, scope_remedy},
    list,
    remote::{self, RemoteOptions},
    sync,
};

use crate::{Error, Result, access, describe_kube, installed_rule, render};

/// Deadline of each call to a remote when `--remote-timeout` is not given (`status`, `sync`,
/// `plan`, `check`, `services`).
pub const DEFAULT_REMOTE_TIMEOUT: &str = "5s";

/// What `list`, `status` and the like print on stderr when no cluster is attached.
pub const NO_CLUSTERS: &str =
    "No clusters attached. Attach one with: kubectl mesh attach <kubeconfig>";

/// The rule the webhook configuration on `primary` records (the default one when it records
/// none, an older install); `None` when there is no webhook configuration.
pub async fn read_recorded_rule(
    primary: &Client,
) -> std::result::Result<Option<SyncRule>, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(primary.clone());
    let configuration = api.get_opt(render::WEBHOOK_CONFIGURATION).await?;
    Ok(configuration.map(|c| installed_rule::from_annotations(c.metadata.annotations.as_ref())))
}

/// The sync rule of the installation on `primary`: the one its webhook runs with, as `install`
/// recorded it on the MutatingWebhookConfiguration ([`installed_rule::from_annotations`]).
///
/// A configuration that cannot be read, or is gone, is an error, not the default rule: a
/// command applying a rule other than the webhook's would write (`sync`) or strip (`detach
/// --strip-labels`) labels the webhook does not manage, and report drift the webhook will
/// never correct.
pub async fn rule(primary: &Client) -> Result<SyncRule> {
    read_recorded_rule(primary)
        .await
        .map_err(Error::kube(format!(
            "cannot read MutatingWebhookConfiguration {}, which records the sync rule",
            render::WEBHOOK_CONFIGURATION
        )))?
        .ok_or_else(rule_unknown)
}

/// [`rule`] for a command that checks the caller's access first: a refusal reads as what
/// `target` (the primary) refused or why it could not be reached.
pub async fn rule_of(primary: &Client, target: &crate::access::Target) -> Result<SyncRule> {
    read_recorded_rule(primary)
        .await
        .map_err(|e| {
            crate::access::request_error(
                target,
                "read the webhook configuration (it records the sync rule)",
                e,
            )
        })?
        .ok_or_else(rule_unknown)
}

/// The refusal of a command that applies the sync rule when the webhook configuration that
/// records it is gone (deleted by hand, or an uninstall that stopped half-way).
fn rule_unknown() -> Error {
    Error::Refused {
        what: format!(
            "the sync rule is unknown: MutatingWebhookConfiguration {}, which records it, is gone",
            render::WEBHOOK_CONFIGURATION
        ),
        hint: "run `kubectl mesh install` again, with the --managed-labels and \
               --excluded-namespaces it was installed with, or pick the primary with --context"
            .into(),
    }
}

/// The line that says `cluster`'s scope cannot be used, and how to fix it.
pub fn scope_error(cluster: &str, error: &ScopeError) -> String {
    scope_refusal(cluster, error).line()
}

fn scope_refusal(cluster: &str, error: &ScopeError) -> Error {
    Error::Refused {
        what: format!("the scope of {cluster} cannot be used ({error}); nothing is written there"),
        hint: scope_remedy(cluster),
    }
}

/// The installed rule narrowed to `cluster`'s namespace scope: what every command reads and
/// writes that cluster with.
pub fn scoped_rule(rule: &SyncRule, cluster: &MeshCluster) -> Result<SyncRule> {
    rule_within(rule, &cluster.name_any(), &cluster.spec.scope)
}

/// The installed rule narrowed to `scope`, the scope of `cluster`.
pub fn rule_within(rule: &SyncRule, cluster: &str, scope: &NamespaceScope) -> Result<SyncRule> {
    rule.within(scope)
        .map_err(|error| scope_refusal(cluster, &error))
}

/// Every `MeshCluster` on the primary, by name. Fails with a hint to install when the CRD is
/// not there.
pub async fn clusters(primary: &Client) -> Result<Vec<MeshCluster>> {
    let api: Api<MeshCluster> = Api::all(primary.clone());
    let mut list = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(not_installed()),
        Err(e) => return Err(Error::kube("cannot list MeshClusters")(e)),
    };
    list.sort_by_key(ResourceExt::name_any);
    Ok(list)
}

/// The namespace `name` of `client`'s cluster, `None` when there is none.
pub async fn namespace(client: &Client, name: &str) -> Result<Option<Namespace>> {
    Api::<Namespace>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("cannot read Namespace {name}")))
}

/// The MeshCluster `name`, `None` when no such cluster is attached. On a cluster without
/// kubectl-mesh the user is told to install, or to pick the primary.
pub async fn cluster_named(
    primary: &Client,
    target: &access::Target,
    name: &str,
) -> Result<Option<MeshCluster>> {
    match cluster_record(primary, target, name).await? {
        Record::Cluster(found) => Ok(found.map(|mc| *mc)),
        Record::NotInstalled => Err(not_installed()),
    }
}

/// What a primary records of one cluster.
pub enum Record {
    /// Its MeshCluster; `None` when there is none (never attached, or detached).
    Cluster(Option<Box<MeshCluster>>),
    /// No MeshCluster resource at all: kubectl-mesh was uninstalled with its CRD, or never
    /// installed on this cluster.
    NotInstalled,
}

/// The MeshCluster `name`, or that the primary has no MeshCluster resource: the get then
/// answers 404 with no Status (the resource itself is unknown), where a missing MeshCluster's
/// 404 carries one (`get_opt`'s `None`).
pub async fn cluster_record(
    primary: &Client,
    target: &access::Target,
    name: &str,
) -> Result<Record> {
    let api: Api<MeshCluster> = Api::all(primary.clone());
    match api.get_opt(name).await {
        Ok(found) => Ok(Record::Cluster(found.map(Box::new))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Record::NotInstalled),
        Err(e) => Err(access::request_error(target, "read MeshClusters", e)),
    }
}

/// The refusal of a command that needs kubectl-mesh installed on the cluster it was pointed
/// at as the primary, which has no MeshCluster resource.
pub fn not_installed() -> Error {
    Error::Refused {
        what: "kubectl-mesh is not installed on this cluster (no MeshCluster resource)".into(),
        hint: "run `kubectl mesh install`, or pick the primary with --context".into(),
    }
}

/// The refusal of a command about one cluster that is not attached.
pub fn not_attached(name: &str) -> Error {
    Error::Refused {
        what: format!("cluster {name:?} is not attached"),
        hint: "`kubectl mesh list` shows the attached clusters".into(),
    }
}

/// Whether `cluster` is being detached: its MeshCluster deleted, and still there only while a
/// finalizer of someone else's holds it (kubectl-mesh puts none on MeshClusters). Nothing
/// syncs such a cluster, the reconciler included: its detach may be stripping the very labels
/// a sync would write.
pub fn is_being_detached(cluster: &MeshCluster) -> bool {
    cluster.metadata.deletion_timestamp.is_some()
}

/// The clusters a sync (or its plan) covers: those named in `names` (all when empty), less
/// those being detached ([`is_being_detached`]). Each one left out is said on `progress`, and
/// that none is attached when none is.
pub async fn clusters_to_sync(
    primary: &Client,
    names: &[String],
    progress: crate::output::Progress,
) -> Result<Vec<MeshCluster>> {
    let (clusters, leaving) = syncable(clusters(primary).await?, names)?;
    for line in selection_notes(&clusters, &leaving) {
        progress.info(line);
    }
    Ok(clusters)
}

/// What a sync says of its clusters before it starts: those left out as being detached, and
/// that no cluster is attached when there is none at all (clusters being detached are
/// attached still).
fn selection_notes(syncable: &[MeshCluster], leaving: &[String]) -> Vec<String> {
    let mut notes: Vec<String> = leaving
        .iter()
        .map(|name| format!("{name} is being detached; not synced"))
        .collect();
    if syncable.is_empty() && leaving.is_empty() {
        notes.push(NO_CLUSTERS.to_owned());
    }
    notes
}

/// Of `clusters`, those named in `names` (all when empty) that may be synced, and the names
/// of those being detached. A cluster named and being detached is refused before any is
/// synced: a script that named it must not read success for a cluster nothing synced.
fn syncable(
    clusters: Vec<MeshCluster>,
    names: &[String],
) -> Result<(Vec<MeshCluster>, Vec<String>)> {
    let (leaving, clusters): (Vec<_>, Vec<_>) = select(clusters, names)?
        .into_iter()
        .partition(is_being_detached);
    let leaving: Vec<String> = leaving.iter().map(ResourceExt::name_any).collect();
    if !names.is_empty() && !leaving.is_empty() {
        let (what, it) = match leaving.as_slice() {
            [name] => (format!("{name} is being detached"), "it"),
            several => (format!("{} are being detached", several.join(", ")), "them"),
        };
        return Err(Error::Refused {
            what: format!("{what}; nothing synced"),
            hint: format!(
                "wait for the detach to end (kubectl mesh list), then attach {it} again to sync \
                 {it}, or leave {it} out of --cluster"
            ),
        });
    }
    Ok((clusters, leaving))
}

/// What a sync and its plan start from: the clusters to sync ([`clusters_to_sync`]) and the
/// installed rule, with the primary's client that reaches the remotes' credentials (and the
/// primary's namespaces, read after each remote's).
pub struct SyncInputs {
    /// Client of the primary.
    pub primary: Client,
    /// The clusters to sync, in name order.
    pub clusters: Vec<MeshCluster>,
    /// The installed rule, before any cluster's scope narrows it.
    pub rule: SyncRule,
}

/// The [`SyncInputs`] for the clusters named in `names` (all when empty). `None`, said on
/// `progress`, when there is no cluster to sync.
pub async fn sync_inputs(
    primary: Client,
    names: &[String],
    progress: crate::output::Progress,
) -> Result<Option<SyncInputs>> {
    let clusters = clusters_to_sync(&primary, names, progress).await?;
    if clusters.is_empty() {
        return Ok(None);
    }
    // The primary's namespaces are read for each remote, after it: see `sync_from_primary`.
    let rule = rule(&primary).await?;
    Ok(Some(SyncInputs {
        primary,
        clusters,
        rule,
    }))
}

impl SyncInputs {
    /// What a sync of `cluster` writes with: the installed rule within its scope, and a client
    /// for its remote. The error is the line that says why the cluster cannot be synced.
    pub async fn open(
        &self,
        cluster: &MeshCluster,
        timeout: Duration,
    ) -> std::result::Result<(SyncRule, Client), String> {
        let rule = scoped_rule(&self.rule, cluster).map_err(|e| e.line())?;
        let remote = remote_client(&self.primary, cluster, timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok((rule, remote))
    }
}

/// The clusters named in `names` (all of them when empty), in name order. An unknown name is
/// an error that lists the attached ones.
pub fn select(clusters: Vec<MeshCluster>, names: &[String]) -> Result<Vec<MeshCluster>> {
    if names.is_empty() {
        return Ok(clusters);
    }
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !clusters.iter().any(|c| c.name_any() == **n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let attached: Vec<String> = clusters.iter().map(ResourceExt::name_any).collect();
        return Err(Error::Refused {
            what: format!("no attached cluster named {}", unknown.join(", ")),
            hint: if attached.is_empty() {
                "no cluster is attached; attach one with `kubectl mesh attach <kubeconfig>`".into()
            } else {
                format!("attached clusters: {}", attached.join(", "))
            },
        });
    }
    Ok(clusters
        .into_iter()
        .filter(|c| names.contains(&c.name_any()))
        .collect())
}

/// Every namespace of the primary, by name: the source of truth of every sync, read as the
/// webhook's one-shot sync reads it.
pub async fn primary_namespaces(primary: &Client) -> Result<BTreeMap<String, Namespace>> {
    mesh_core::sync::primary_namespaces(primary)
        .await
        .map_err(|e| Error::kube("cannot list the primary's namespaces")(e.call))
}

/// Why a remote could not be used. Each text holds its whole cause, so none is a `source`
/// as well (it would print twice).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The stored credentials are missing, unreadable or unusable.
    #[error("{}", error_chain(.0))]
    Credentials(remote::Error),
    /// A call to the remote failed.
    #[error("{}", describe_remote(.0))]
    Call(kube::Error),
    /// The remote did not answer in time.
    #[error("no answer within {}s", .0.as_secs_f32())]
    TimedOut(Duration),
}

impl From<remote::Error> for RemoteError {
    fn from(error: remote::Error) -> Self {
        Self::Credentials(error)
    }
}

impl RemoteError {
    /// Whether the remote never answered: it could not be reached, or did not answer in time.
    /// Credentials that could not be read or used, and a refusal, are not the network's.
    pub fn unanswered(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::Call(e) | Self::Credentials(remote::Error::IdentityUnread { cause: e, .. }) => {
                !Failure::of(e).answered()
            }
            Self::Credentials(_) => false,
        }
    }

    /// Whether the remote refused the stored credentials or their rights (401/403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Call(e)
            if matches!(Failure::of(e), Failure::Forbidden | Failure::Unauthorized))
    }
}

/// The apiserver's own message when it answered, else the transport error's chain.
fn describe_remote(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(_) => describe_kube(err),
        other => error_chain(other),
    }
}

/// A remote's call result.
pub type RemoteResult<T> = std::result::Result<T, RemoteError>;

/// Runs `call` under `timeout`, mapping its error into a [`RemoteError`].
pub async fn with_deadline<T, F>(timeout: Duration, call: F) -> RemoteResult<T>
where
    F: Future<Output = std::result::Result<T, kube::Error>>,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(RemoteError::Call),
        Err(_) => Err(RemoteError::TimedOut(timeout)),
    }
}

/// Remote clients whose every call, answer included, ends within `timeout`, and whose answers
/// are bounded as the webhook's are (a stored kubeconfig may point at any server): commands
/// read lists in pages ([`mesh_core::list`]), which stay far below the bound.
pub fn remote_options(timeout: Duration) -> RemoteOptions {
    RemoteOptions {
        connect_timeout: timeout,
        read_timeout: timeout,
        call_deadline: Some(timeout),
        watches_last: false,
        max_answer_line: call_limits::DEFAULT_MAX_ANSWER_LINE,
        // Pages of 500 pods, services or EndpointSlices: a pod with its sidecar and
        // managedFields holds near 3,000 (a namespace about 60), a page 1.5 million.
        max_answer_elements: 16 * call_limits::DEFAULT_MAX_ANSWER_ELEMENTS,
    }
}

/// A client for `cluster` built from its Secret by the webhook's own code, once its server
/// proved to be that cluster (as the webhook's [`remote::Remote::verify`]): nothing is read
/// from or written to another cluster under this one's name.
pub async fn remote_client(
    primary: &Client,
    cluster: &MeshCluster,
    timeout: Duration,
) -> RemoteResult<Client> {
    let client =
        remote::client_for_cluster(primary, MESH_NAMESPACE, cluster, &remote_options(timeout))
            .await?;
    let found = with_deadline(timeout, remote::cluster_id(&client)).await?;
    remote::Identity::of(cluster).check(&found)?;
    Ok(client)
}

/// Every namespace of a remote, read as a sync reads it ([`sync::real_namespaces`]: its
/// bounds, and none that no apiserver could hold) and trimmed at once to what the commands
/// read: its name, resourceVersion and every label (Istio's injectors may select on any).
pub async fn remote_namespaces(client: &Client) -> RemoteResult<Vec<Namespace>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let kept = sync::real_namespaces(&api, |meta| Namespace {
        metadata: ObjectMeta {
            name: meta.name,
            resource_version: meta.resource_version,
            labels: meta.labels,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
    kept.await.map_err(RemoteError::Call)
}

/// Every MutatingWebhookConfiguration of a remote: where Istio's injectors are. Within the
/// bounds of a namespace list ([`list::in_pages`]), not those of [`list_all`].
pub async fn remote_injectors(client: &Client) -> RemoteResult<Vec<MutatingWebhookConfiguration>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    list::in_pages(&api, &ListParams::default(), |config| config)
        .await
        .map_err(RemoteError::Call)
}

/// Every `K` of a remote, page by page. Each page is a call of its own, bounded by the client
/// (`--remote-timeout`, [`remote_options`]): a large remote behind a slow link takes as many
/// timeouts as it has pages, not one.
pub async fn list_all<K>(client: &Client) -> RemoteResult<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    list::all(&api, &ListParams::default())
        .await
        .map_err(RemoteError::Call)
}

/// Runs `f` for every cluster concurrently and returns the results in the clusters' order.
pub async fn for_each<'a, T, F, Fut>(clusters: &'a [MeshCluster], f: F) -> Vec<T>
where
    F: Fn(&'a MeshCluster) -> Fut,
    Fut: Future<Output = T>,
{
    futures::future::join_all(clusters.iter().map(f)).await
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! `MeshCluster`s for the table tests (namespaces: [`mesh_core::fixtures`]).

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use mesh_core::cluster::{MeshCluster, MeshClusterStatus};

    /// A cluster of `server` attached at `created`, without status.
    pub(crate) fn cluster(name: &str, server: &str, created: &str) -> MeshCluster {
        let mut c = mesh_core::fixtures::mesh_cluster(name, &format!("{name}-0b6e-4b8e-9d52-uid"));
        c.spec.server = server.to_owned();
        c.metadata.creation_timestamp = created.parse().ok().map(Time);
        c
    }

    pub(crate) fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: "Test".to_owned(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time("2026-01-01T00:00:00Z".parse().unwrap_or_default()),
        }
    }

    pub(crate) fn with_status(mut c: MeshCluster, status: MeshClusterStatus) -> MeshCluster {
        c.status = Some(status);
        c
    }

    /// `c` being detached ([`super::is_being_detached`]): deleted, held by `finalizer`.
    pub(crate) fn being_detached(mut c: MeshCluster, finalizer: &str) -> MeshCluster {
        c.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        c.metadata.finalizers = Some(vec![finalizer.to_owned()]);
        c
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::fake_apiserver::FakeApiserver;
    use mesh_testenv::endless_answer::EndlessAnswer;

    use super::fixtures::cluster;
    use super::*;

    #[test]
    fn remote_errors_print_each_cause_once() {
        use mesh_core::fixtures::{assert_each_cause_prints_once, refused_connection};
        assert_each_cause_prints_once(&RemoteError::Call(refused_connection()));
        let unread = mesh_core::remote::Error::IdentityUnread {
            secret: "cluster-east".into(),
            cause: refused_connection(),
        };
        assert_each_cause_prints_once(&RemoteError::from(unread));
    }

    /// Only a remote that never answered is unreachable: credentials that cannot be read or
    /// used, and a refusal, are not the network's.
    #[test]
    fn only_a_remote_that_never_answered_is_unanswered() {
        use mesh_core::fixtures::refused_connection;
        let forbidden = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        assert!(RemoteError::TimedOut(Duration::from_secs(5)).unanswered());
        assert!(RemoteError::Call(refused_connection()).unanswered());
        assert!(!RemoteError::Call(kube::Error::Api(forbidden.boxed())).unanswered());
        let missing = remote::Error::SecretMissing {
            namespace: "kubectl-mesh".into(),
            name: "cluster-east".into(),
        };
        assert!(!RemoteError::from(missing).unanswered());
        let unread = remote::Error::IdentityUnread {
            secret: "cluster-east".into(),
            cause: refused_connection(),
        };
        assert!(RemoteError::from(unread).unanswered());
    }

    #[test]
    fn select_keeps_order_and_names_unknown_clusters() {
        let all = vec![
            cluster("east", "https://e", "2026-01-01T00:00:00Z"),
            cluster("west", "https://w", "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(select(all.clone(), &[]).unwrap().len(), 2);
        let picked = select(all.clone(), &["west".into()]).unwrap();
        assert_eq!(picked[0].name_any(), "west");
        let err = select(all, &["north".into(), "east".into()]).unwrap_err();
        assert_eq!(
            err.line(),
            "no attached cluster named north; attached clusters: east, west"
        );
        let err = select(Vec::new(), &["north".into()]).unwrap_err();
        assert!(err.hint().contains("kubectl mesh attach"), "{}", err.line());
    }

    /// `sync --cluster east` while east was being detached printed an empty list and exited 0.
    #[test]
    fn a_cluster_being_detached_is_left_out_and_refused_when_asked_alone() {
        let mut east = cluster("east", "https://e", "2026-01-01T00:00:00Z");
        east.metadata.deletion_timestamp = east.metadata.creation_timestamp.clone();
        let all = vec![east, cluster("west", "https://w", "2026-01-01T00:00:00Z")];
        let (synced, leaving) = syncable(all.clone(), &[]).unwrap();
        assert_eq!(
            synced.iter().map(ResourceExt::name_any).collect::<Vec<_>>(),
            ["west"]
        );
        assert_eq!(leaving, ["east"]);
        let err = syncable(all.clone(), &["east".into()]).unwrap_err();
        assert_eq!(
            err.line(),
            "east is being detached; nothing synced; wait for the detach to end (kubectl mesh \
             list), then attach it again to sync it, or leave it out of --cluster"
        );
    }

    /// `sync --cluster east --cluster west` while east was being detached synced west and
    /// exited 0; `--cluster east --cluster east` synced nothing and exited 0.
    #[test]
    fn a_named_cluster_being_detached_is_refused_whatever_else_is_named() {
        let leaving = |name| {
            let mut c = cluster(name, "https://e", "2026-01-01T00:00:00Z");
            c.metadata.deletion_timestamp = c.metadata.creation_timestamp.clone();
            c
        };
        let west = cluster("west", "https://w", "2026-01-01T00:00:00Z");
        let all = vec![leaving("east"), leaving("north"), west];
        for names in [vec!["east", "west"], vec!["east", "east"]] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let err = syncable(all.clone(), &names).unwrap_err();
            assert!(
                err.line()
                    .starts_with("east is being detached; nothing synced"),
                "{names:?}: {}",
                err.line()
            );
        }
        let names = ["east", "north", "west"].map(String::from);
        let err = syncable(all, &names).unwrap_err();
        assert!(
            err.line().starts_with(
                "east, north are being detached; nothing synced; wait for the detach to end"
            ),
            "{}",
            err.line()
        );
    }

    /// When every cluster was being detached, sync said so, then that no cluster was attached
    /// and how to attach one.
    #[test]
    fn clusters_left_out_as_detaching_are_not_said_to_be_unattached() {
        let mut east = cluster("east", "https://e", "2026-01-01T00:00:00Z");
        east.metadata.deletion_timestamp = east.metadata.creation_timestamp.clone();
        let (synced, leaving) = syncable(vec![east], &[]).unwrap();
        assert_eq!(
            selection_notes(&synced, &leaving),
            ["east is being detached; not synced"]
        );
        assert_eq!(selection_notes(&[], &[]), [NO_CLUSTERS]);
    }

    /// Both refusals of a remote: of the credentials themselves (401) and of what they may do
    /// (403); not a refusal of the namespace read.
    #[test]
    fn a_refused_token_or_right_is_forbidden() {
        let answered = |code: u16| {
            let status = kube::core::Status::failure("no", "Reason").with_code(code);
            RemoteError::Call(kube::Error::Api(status.boxed()))
        };
        assert!(answered(401).is_forbidden());
        assert!(answered(403).is_forbidden());
        assert!(!answered(404).is_forbidden());
    }

    #[tokio::test]
    async fn unusable_credentials_are_reported_without_calling() {
        let err = RemoteError::from(remote::Error::SecretMissing {
            namespace: MESH_NAMESPACE.into(),
            name: "cluster-east".into(),
        });
        assert_eq!(
            err.to_string(),
            "secret kubectl-mesh/cluster-east not found"
        );
        assert!(!err.is_forbidden());
        let slow = with_deadline(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), kube::Error>(())
        })
        .await
        .unwrap_err();
        assert_eq!(slow.to_string(), "no answer within 0.01s");
    }

    #[tokio::test]
    async fn a_remote_is_read_in_pages() {
        let total = 2 * list::PAGE as usize + 1;
        let remote = (0..total).fold(FakeApiserver::default(), |remote, i| {
            remote.with_namespace(&format!("ns-{i:05}"), &[])
        });
        let namespaces = remote_namespaces(&remote.client()).await.expect("list");
        assert_eq!(namespaces.len(), total);
        assert_eq!(remote.state().lists, 3, "one request a page");
    }

    /// What a list that ran past [`list::MAX_OBJECTS`] ends with.
    const RAN_PAST: &str = "the list ran past 100000 objects, and was refused";

    /// The commands kept a remote's namespaces whole, those no apiserver could hold too (a
    /// stored kubeconfig may point at any server), and listed them within the bound of pods
    /// (300,000 objects) where a sync, and the README, bound them at 100,000.
    #[tokio::test]
    async fn a_remote_is_read_with_the_bounds_and_filter_of_a_sync() {
        let long_value = "v".repeat(sync::MAX_NAME + 1);
        let remote = FakeApiserver::default()
            .with_namespace("Not_A_Name", &[])
            .with_namespace("shop", &[("istio.io/rev", long_value.as_str())])
            .with_namespace("cart", &[("istio-injection", "enabled"), ("team", "a")]);
        remote.edit("cart", |ns| {
            ns["metadata"]["annotations"] = serde_json::json!({"note": "x".repeat(1024)});
        });
        let namespaces = remote_namespaces(&remote.client()).await.expect("list");
        let names: Vec<String> = namespaces.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["cart"]);
        let cart = &namespaces[0].metadata;
        // Every label: Istio's injectors may select on any of them.
        let labels = BTreeMap::from([
            ("istio-injection".to_owned(), "enabled".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]);
        assert_eq!(cart.labels.as_ref(), Some(&labels));
        assert!(cart.resource_version.is_some(), "{cart:?}");
        assert_eq!((&cart.annotations, &cart.uid), (&None, &None));

        let endless = (0..list::PAGE).fold(FakeApiserver::default(), |remote, i| {
            remote.with_namespace(&format!("ns-{i:05}"), &[])
        });
        endless.state().endless_list = true;
        let error = remote_namespaces(&endless.client())
            .await
            .expect_err("refused");
        assert!(error.to_string().ends_with(RAN_PAST), "{error}");
    }

    /// As above, for the injectors: within the bound of a namespace list.
    #[tokio::test]
    async fn a_remotes_injectors_are_read_within_the_bound_of_a_namespace_list() {
        use mesh_core::fake_apiserver::answering;
        let page: Vec<serde_json::Value> = (0..list::PAGE)
            .map(|i| serde_json::json!({"metadata": {"name": format!("w-{i}")}}))
            .collect();
        let (client, requests) = answering(move |_, _| {
            let list = serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfigurationList",
                "metadata": {"continue": "again"},
                "items": page,
            });
            (http::StatusCode::OK, list)
        });
        let error = remote_injectors(&client).await.expect_err("refused");
        assert!(error.to_string().ends_with(RAN_PAST), "{error}");
        assert_eq!(
            requests.all().len(),
            list::MAX_OBJECTS / list::PAGE as usize + 1
        );
    }

    /// `--remote-timeout` bounds each call of a remote's client, and nothing bounds a whole
    /// read: a remote whose pages each take most of it is read whole, though they take longer
    /// than one timeout together (status and services bounded the whole read, and showed such
    /// a remote unreachable); a page past it still fails.
    #[tokio::test(start_paused = true)]
    async fn a_slow_remote_is_given_a_timeout_a_page() {
        let total = 2 * list::PAGE as usize + 1;
        let remote = (0..total).fold(FakeApiserver::default(), |remote, i| {
            remote.with_namespace(&format!("ns-{i:05}"), &[])
        });
        let timeout = crate::parse_duration(DEFAULT_REMOTE_TIMEOUT).expect("default");
        assert_eq!(remote_options(timeout).call_deadline, Some(timeout));
        let client = remote.client_with_deadline(timeout);
        remote.state().delay = Some(timeout.mul_f64(0.6));
        let started = tokio::time::Instant::now();
        let namespaces = remote_namespaces(&client).await.expect("list");
        assert_eq!(namespaces.len(), total);
        assert!(started.elapsed() > timeout, "{:?}", started.elapsed());
        remote.state().delay = Some(timeout.mul_f64(1.5));
        let late = remote_namespaces(&client)
            .await
            .expect_err("a page past the timeout");
        assert!(late.to_string().contains("timed out"), "{late}");
    }

    /// A server that sends an answer without end (a stand-in: no apiserver does it on demand).
    /// The command's client refuses it at the bound, long before its timeout.
    #[tokio::test]
    async fn a_remote_answering_without_end_is_refused() {
        let server = EndlessAnswer::start(call_limits::DEFAULT_MAX_ANSWER_LINE + (32 << 20))
            .await
            .expect("server");
        let timeout = Duration::from_secs(60);
        let client = remote::client_from_kubeconfig(
            "endless",
            &server.kubeconfig(),
            &remote_options(timeout),
        )
        .await
        .expect("client");
        let error = remote_namespaces(&client).await.expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("ran past 64 MiB without a line break"),
            "{error}"
        );
    }
}
