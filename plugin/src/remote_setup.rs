//! The objects `kubectl mesh attach` creates for one cluster, on the remote and on the
//! primary, rendered without a cluster; `detach` finds them again by name, and deletes those
//! its labels and primary annotation say are this cluster's from this primary.
//!
//! On the remote (all labelled `app.kubernetes.io/managed-by=kubectl-mesh` and
//! `kubectl-mesh.io/cluster=<name>`, and annotated [`PRIMARY_ANNOTATION`] with the id of the
//! primary that attached them):
//! - the namespace [`MESH_NAMESPACE`], only when it is absent (a namespace that already exists
//!   is left untouched, unlabelled, and is never deleted by detach);
//! - ServiceAccount, ClusterRole and ClusterRoleBinding [`SYNC_ACCOUNT`]: the account the
//!   webhook writes labels as, allowed to read and patch namespaces and, so that `check` can
//!   verify the guard with the stored credentials, to `get` the guard's policy and binding
//!   (by name, read-only), and to read MutatingWebhookConfigurations, so that the webhook and
//!   `check` can tell whether an injector acts on the synced labels; nothing else
//!   ([`sync_rights`]);
//! - Secret [`TOKEN_SECRET`] of type `kubernetes.io/service-account-token`: a long-lived token
//!   that kube-controller-manager fills in. It never expires; deleting the Secret revokes it
//!   at once, which the reconciler and `check` see as a 401. With `--token-ttl`, the Secret is
//!   instead the anchor a time-bound token is bound to ([`token_anchor_secret`]), and the Role
//!   and RoleBinding [`TOKEN_RENEWAL`] let the sync account renew that token with itself;
//! - the ValidatingAdmissionPolicy and binding [`SYNC_SCOPE`] that deny the sync account any
//!   namespace change but the managed labels' of the namespaces the cluster's scope covers (its
//!   ClusterRole may patch every namespace, and RBAC cannot narrow a patch to some fields);
//! - unless `--remote-guard=off`, the ValidatingAdmissionPolicy and binding [`GUARD`] that warn
//!   about (or deny) managed-label edits made on the remote by anyone but the sync account;
//! - with `--istio-remote-secret`, ServiceAccount, ClusterRole, ClusterRoleBinding and token
//!   Secret for [`ISTIO_READER`]: istiod reads pods, services and endpoints of the remote, which
//!   the sync account must not be able to;
//! - with `--services-view`, ServiceAccount, ClusterRole, ClusterRoleBinding and token Secret
//!   for [`VIEW_ACCOUNT`]: a read-only identity for what the plugin shows of workloads
//!   (services, endpointslices, pods; [`view_rights`]), apart from the sync account so that
//!   the token the webhook holds stays as narrow as it is.
//!
//! On the primary: Secret `cluster-<name>` in [`MESH_NAMESPACE`] holding the sanitized
//! kubeconfig, the [`MeshCluster`], with `--istio-remote-secret` the Secret
//! `istio-remote-secret-<name>` in [`ISTIO_NAMESPACE`], and with `--services-view` the Secret
//! `cluster-<name>-view` in [`MESH_NAMESPACE`] holding the view identity's kubeconfig. The Secrets carry an ownerReference to
//! the MeshCluster, so that a MeshCluster deleted by other means (`kubectl delete mc`,
//! `uninstall --crd`) takes its credentials along; detach still deletes them explicitly, so
//! that it is done when it returns, without waiting for the garbage collector.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use mesh_core::{
    MANAGER, MESH_NAMESPACE,
    cluster::{
        CLUSTER_LABEL, KUBECONFIG_KEY, MeshCluster, MeshClusterSpec, NamespaceScope, RemoteGuard,
    },
};

use crate::access::{self, Need};
pub use crate::access::{REMOTE_CONTEXT_ANNOTATION, remote_context};
pub use crate::remote_policies::{
    Guard, SCOPE_ANNOTATION, SYNC_SCOPE_MESSAGES, bound_mode, guard_binding, guard_policy,
    guard_primary_name, left_guard, recorded_scope, scope_record, sync_scope_binding,
    sync_scope_policy,
};
use crate::render::{mesh_service_account, role_ref, rule, strings};

/// Label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// ServiceAccount (in [`MESH_NAMESPACE`]), ClusterRole and ClusterRoleBinding the webhook
/// uses on a remote.
pub const SYNC_ACCOUNT: &str = "kubectl-mesh-sync";
/// The token Secret of [`SYNC_ACCOUNT`]: its long-lived token, or with `--token-ttl` the
/// anchor its time-bound token is bound to.
pub const TOKEN_SECRET: &str = "kubectl-mesh-sync-token";
/// ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding of the remote guard.
pub const GUARD: &str = "kubectl-mesh-guard";
/// ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding confining the sync account
/// to the managed labels.
pub const SYNC_SCOPE: &str = "kubectl-mesh-sync-scope";
/// ServiceAccount, ClusterRole and ClusterRoleBinding whose token istiod uses on a remote.
pub const ISTIO_READER: &str = "kubectl-mesh-istio-reader";
/// The long-lived token Secret of [`ISTIO_READER`].
pub const ISTIO_READER_TOKEN_SECRET: &str = "kubectl-mesh-istio-reader-token";
/// ServiceAccount, ClusterRole and ClusterRoleBinding of the read-only view identity
/// (`attach --services-view`).
pub const VIEW_ACCOUNT: &str = "kubectl-mesh-view";
/// The long-lived token Secret of [`VIEW_ACCOUNT`].
pub const VIEW_TOKEN_SECRET: &str = "kubectl-mesh-view-token";
/// Where istiod looks for remote secrets.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// Label istiod selects remote secrets by.
pub const ISTIO_MULTICLUSTER_LABEL: &str = "istio/multiCluster";
/// Annotation naming the cluster of an Istio remote secret.
pub const ISTIO_CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";
/// Annotation on the MeshCluster: `"true"` when attach created [`MESH_NAMESPACE`] on the
/// remote, so that detach deletes it (and only then).
pub const REMOTE_NAMESPACE_CREATED_ANNOTATION: &str = "kubectl-mesh.io/remote-namespace-created";
/// Annotation on the remote's token Secrets: which ServiceAccount the token is for.
pub const SERVICE_ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Type of a long-lived token Secret, filled by kube-controller-manager.
pub const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// Stands for the token wherever a Secret is printed instead of created (`--dry-run`).
pub const REDACTED: &str = "REDACTED";

/// The user name the sync account's requests carry on the remote.
pub fn sync_username() -> String {
    format!("system:serviceaccount:{MESH_NAMESPACE}:{SYNC_ACCOUNT}")
}

/// Name of the Secret on the primary holding the stored kubeconfig of `cluster`.
pub fn cluster_secret_name(cluster: &str) -> String {
    format!("cluster-{cluster}")
}

/// Name of the Secret on the primary holding the view identity's kubeconfig of `cluster`.
pub fn view_secret_name(cluster: &str) -> String {
    format!("cluster-{cluster}-view")
}

/// Name of the Istio remote secret of `cluster`.
pub fn istio_secret_name(cluster: &str) -> String {
    format!("istio-remote-secret-{cluster}")
}

/// The token Secret that holds an identity's stored token while its own one, `own`, is issued
/// anew (`kubectl mesh rotate`); an interrupted rotation leaves it behind.
pub fn standby_secret(own: &str) -> String {
    format!("{own}-standby")
}

/// The identities attach may create on a remote: a ServiceAccount, ClusterRole and
/// ClusterRoleBinding of each name in [`MESH_NAMESPACE`] (and their token Secrets,
/// [`token_secrets`]). Detach deletes them all, and a takeover (`attach --force`) those of
/// the other primary it does not write itself.
pub const IDENTITIES: [&str; 3] = [SYNC_ACCOUNT, ISTIO_READER, VIEW_ACCOUNT];

/// Every token Secret a primary may have on a remote: each identity's own and its standby.
/// Deleting them revokes every token that primary holds there: detach and a takeover (`attach
/// --force`) delete them all, the standby an interrupted rotation left included.
pub fn token_secrets() -> Vec<String> {
    let own = [TOKEN_SECRET, ISTIO_READER_TOKEN_SECRET, VIEW_TOKEN_SECRET];
    own.iter()
        .map(|s| (*s).to_owned())
        .chain(own.iter().map(|s| standby_secret(s)))
        .collect()
}

/// Labels of every object attach creates for `cluster`.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (CLUSTER_LABEL.to_owned(), cluster.to_owned()),
    ])
}

/// Label selector matching exactly the objects attach creates for `cluster`.
pub fn selector(cluster: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{CLUSTER_LABEL}={cluster}")
}

/// Whether an object's labels say attach created it for `cluster`.
pub fn is_ours(meta: &ObjectMeta, cluster: &str) -> bool {
    owner_cluster(meta) == Some(cluster)
}

/// Annotation on every remote object attach creates: the primary that created it, by the
/// UID of its kube-system namespace (the cluster identity the field uses). Two primaries
/// attaching one remote under one name would otherwise share these objects, and the detach
/// of either would revoke the other's token.
pub const PRIMARY_ANNOTATION: &str = "kubectl-mesh.io/primary";

/// The primary an object was created by, if it records one (an older attach did not).
pub fn primary_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(PRIMARY_ANNOTATION)
        .map(String::as_str)
}

/// Whether attach created an object for `cluster` from the primary whose id is `primary`:
/// [`is_ours`], and recorded for that primary or for none (an older attach).
pub fn is_ours_from(meta: &ObjectMeta, cluster: &str, primary: &str) -> bool {
    is_ours(meta, cluster) && primary_of(meta).is_none_or(|p| p == primary)
}

/// The other primary an object attach created for `cluster` records, when it is not `primary`.
/// Another cluster's objects name none: a takeover of one cluster never touches them.
pub fn other_primary<'a>(meta: &'a ObjectMeta, cluster: &str, primary: &str) -> Option<&'a str> {
    primary_of(meta).filter(|p| is_ours(meta, cluster) && *p != primary)
}

/// `object` (a remote object as JSON) recorded as created by the primary `primary`.
pub fn record_primary(object: &mut serde_json::Value, primary: &str) {
    let Some(metadata) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(PRIMARY_ANNOTATION.to_owned(), primary.into());
    }
}

/// The cluster an object was created for, if kubectl-mesh created it for one.
pub fn owner_cluster(meta: &ObjectMeta) -> Option<&str> {
    let labels = meta.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGER) {
        return None;
    }
    labels.get(CLUSTER_LABEL).map(String::as_str)
}

/// The cluster whose stored credentials an object is, when it is one of the Secrets attach
/// stores on the primary: [`cluster_secret`] or [`view_secret`] in [`MESH_NAMESPACE`], or
/// [`istio_remote_secret`] in [`ISTIO_NAMESPACE`], by their labels, name and namespace.
/// What another primary's attach created in [`MESH_NAMESPACE`] when this cluster is also its
/// remote (ServiceAccounts, their token Secrets, the token renewal Role) carries the same
/// labels under other names, and is never one.
pub fn stored_credential_of(meta: &ObjectMeta) -> Option<&str> {
    let cluster = owner_cluster(meta)?;
    let name = meta.name.as_deref()?;
    let stored = match meta.namespace.as_deref()? {
        MESH_NAMESPACE => name == cluster_secret_name(cluster) || name == view_secret_name(cluster),
        ISTIO_NAMESPACE => name == istio_secret_name(cluster),
        _ => false,
    };
    stored.then_some(cluster)
}

/// The default name of a cluster in the mesh: its context's name made a DNS-1123 label
/// (`admin@East_1` becomes `admin-east-1`). Empty when nothing usable is left.
pub fn default_cluster_name(context: &str) -> String {
    let mut name = String::new();
    for c in context.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    // 63 bytes at most; every char left is ASCII, so any byte index is a char boundary.
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

pub(crate) fn meta(name: &str, namespace: Option<&str>, cluster: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(cluster)),
        ..Default::default()
    }
}

/// [`MESH_NAMESPACE`] on the remote, as attach creates it when absent.
pub fn remote_namespace(cluster: &str) -> Namespace {
    Namespace {
        metadata: meta(MESH_NAMESPACE, None, cluster),
        ..Default::default()
    }
}

/// A ServiceAccount in [`MESH_NAMESPACE`].
pub fn service_account(name: &str, cluster: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(MESH_NAMESPACE), cluster),
        ..Default::default()
    }
}

/// API group of the guard's policy and binding.
pub const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
/// The guard's resources, as [`sync_cluster_role`] grants them.
pub const GUARD_RESOURCES: [&str; 2] = [
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
];

/// What label sync needs on a remote: read and patch namespaces.
pub fn label_sync_rights() -> Vec<Need> {
    vec![Need::cluster(
        "",
        "namespaces",
        &["get", "list", "watch", "patch"],
    )]
}

/// What `check` needs to verify the guard with the stored credentials: `get` of [`GUARD`]'s
/// policy and binding by name (which also tells an absent guard by its 404). Clusters
/// attached by an older kubectl-mesh lack it.
pub fn guard_read_rights() -> Vec<Need> {
    GUARD_RESOURCES
        .into_iter()
        .map(|resource| Need::cluster(ADMISSION_GROUP, resource, &["get"]).named(GUARD))
        .collect()
}

/// Resource of the injectors [`injector_read_rights`] reads.
pub const INJECTOR_RESOURCE: &str = "mutatingwebhookconfigurations";

/// What telling whether an Istio injector acts on the synced labels needs: read the
/// remote's MutatingWebhookConfigurations (the webhook watches them). Clusters attached by an
/// older kubectl-mesh lack it, and get no readiness checks until re-attached.
pub fn injector_read_rights() -> Vec<Need> {
    vec![Need::cluster(
        ADMISSION_GROUP,
        INJECTOR_RESOURCE,
        &["get", "list", "watch"],
    )]
}

/// Everything the sync account may do: [`label_sync_rights`], [`guard_read_rights`] and
/// [`injector_read_rights`]. Nothing else, so a leaked stored kubeconfig cannot read the
/// remote's Secrets, admission policies other than the guard, or run anything there, nor
/// change the guard or any webhook. [`sync_cluster_role`] grants exactly this, and `check`
/// verifies it.
pub fn sync_rights() -> Vec<Need> {
    let mut rights = label_sync_rights();
    rights.extend(guard_read_rights());
    rights.extend(injector_read_rights());
    rights
}

/// The sync account's ClusterRole: it grants [`sync_rights`].
pub fn sync_cluster_role(cluster: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(SYNC_ACCOUNT, None, cluster),
        rules: Some(access::cluster_role_rules(&sync_rights())),
        ..Default::default()
    }
}

/// What the view identity may do on a remote, and all it may do: read services,
/// EndpointSlices and pods (which workloads exist where, whether they are ready and whether
/// they carry a sidecar). [`view_cluster_role`] grants exactly this, and `check` verifies it.
pub fn view_rights() -> Vec<Need> {
    const READ: &[&str] = &["get", "list", "watch"];
    vec![
        Need::cluster("", "services", READ),
        Need::cluster("", "pods", READ),
        Need::cluster("discovery.k8s.io", "endpointslices", READ),
    ]
}

/// The view identity's ClusterRole: it grants [`view_rights`].
pub fn view_cluster_role(cluster: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(VIEW_ACCOUNT, None, cluster),
        rules: Some(access::cluster_role_rules(&view_rights())),
        ..Default::default()
    }
}

/// The reader ClusterRole Istio installs with itself (its remote profile on a remote), named
/// after Istio's namespace. Where a remote has it, istiod's reader account is bound to it: it is
/// what that Istio version needs, maintained by Istio.
pub fn istio_own_reader_role() -> String {
    ISTIO_OWN_READER_ROLE.to_owned()
}

/// [`istio_own_reader_role`], for [`Need`]s: `istio-reader-clusterrole-` and
/// [`ISTIO_NAMESPACE`].
pub const ISTIO_OWN_READER_ROLE: &str = "istio-reader-clusterrole-istio-system";

/// The ClusterRole istiod's reader account on a remote is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderRole {
    /// Istio's own, already on the remote ([`istio_own_reader_role`]).
    Istio,
    /// [`ISTIO_READER`], created by attach with [`istio_reader_cluster_role`].
    Own,
}

impl ReaderRole {
    /// Name of the ClusterRole.
    pub fn name(&self) -> String {
        match self {
            Self::Istio => istio_own_reader_role(),
            Self::Own => ISTIO_READER.to_owned(),
        }
    }
}

/// One rule of a ClusterRole: its API groups, resources and verbs.
type Rule = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

/// Read-only verbs.
const READ: &[&str] = &["get", "list", "watch"];

/// The rules of [`istio_reader_cluster_role`].
const ISTIO_READER_RULES: &[Rule] = &[
    (
        &[
            "config.istio.io",
            "security.istio.io",
            "networking.istio.io",
            "authentication.istio.io",
            "rbac.istio.io",
            "telemetry.istio.io",
            "extensions.istio.io",
        ],
        &["*"],
        READ,
    ),
    (
        &[""],
        &[
            "endpoints",
            "pods",
            "services",
            "nodes",
            "replicationcontrollers",
            "namespaces",
            "secrets",
            "configmaps",
        ],
        READ,
    ),
    (&["networking.istio.io"], &["workloadentries"], READ),
    (
        &["networking.x-k8s.io", "gateway.networking.k8s.io"],
        &["gateways"],
        READ,
    ),
    (
        &["apiextensions.k8s.io"],
        &["customresourcedefinitions"],
        READ,
    ),
    (&["discovery.k8s.io"], &["endpointslices"], READ),
    (
        &["multicluster.x-k8s.io"],
        &["serviceexports"],
        &["get", "list", "watch", "create", "delete"],
    ),
    (&["multicluster.x-k8s.io"], &["serviceimports"], READ),
    (&["apps"], &["replicasets"], READ),
    (&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
    (
        &["authorization.k8s.io"],
        &["subjectaccessreviews"],
        &["create"],
    ),
];

/// What istiod needs on a remote where Istio's own reader role is absent: the rules of the
/// `istio-reader-clusterrole` of the Istio version kubectl-mesh is tested with (1.31, its
/// default profile): read-only, plus the reviews istiod makes when it authenticates workloads
/// of that cluster and the ServiceExports of the MCS API. The e2e tests compare it with the
/// role the pinned istioctl renders, so a new Istio version that needs more fails them.
pub fn istio_reader_cluster_role(cluster: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(ISTIO_READER, None, cluster),
        rules: Some(
            ISTIO_READER_RULES
                .iter()
                .map(|(groups, resources, verbs)| rule(groups, resources, verbs))
                .collect(),
        ),
        ..Default::default()
    }
}

/// What [`istio_reader_cluster_role`] grants, one need per group and resource: RBAC lets
/// only a caller holding all of it create that role (and bind it).
pub fn istio_reader_rights() -> Vec<Need> {
    ISTIO_READER_RULES
        .iter()
        .flat_map(|(groups, resources, verbs)| {
            groups.iter().flat_map(move |group| {
                resources
                    .iter()
                    .map(move |resource| Need::cluster(group, resource, verbs))
            })
        })
        .collect()
}

/// Binds the ClusterRole `name` to the ServiceAccount `name` of [`MESH_NAMESPACE`].
pub fn cluster_role_binding(name: &str, cluster: &str) -> ClusterRoleBinding {
    binding_to(name, name, cluster)
}

/// Binds istiod's reader account ([`ISTIO_READER`]) to `role`.
pub fn istio_reader_binding(role: &ReaderRole, cluster: &str) -> ClusterRoleBinding {
    binding_to(ISTIO_READER, &role.name(), cluster)
}

/// The ClusterRoleBinding `name` granting the ClusterRole `role` to the ServiceAccount `name`
/// of [`MESH_NAMESPACE`].
fn binding_to(name: &str, role: &str, cluster: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None, cluster),
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(vec![mesh_service_account(name)]),
    }
}

/// A long-lived token Secret for the ServiceAccount `account`; kube-controller-manager fills
/// in `token` and `ca.crt`. The default, since a time-bound token (`--token-ttl`) stops
/// working whenever the webhook cannot renew it in time. Revocation is deleting this Secret.
pub fn token_secret(name: &str, account: &str, cluster: &str) -> Secret {
    let mut metadata = meta(name, Some(MESH_NAMESPACE), cluster);
    metadata.annotations = Some(BTreeMap::from([(
        SERVICE_ACCOUNT_NAME_ANNOTATION.to_owned(),
        account.to_owned(),
    )]));
    Secret {
        metadata,
        type_: Some(SERVICE_ACCOUNT_TOKEN_TYPE.to_owned()),
        ..Default::default()
    }
}

/// Role and RoleBinding (in the mesh namespace) that let the sync account renew its own
/// time-bound token (`attach --token-ttl`).
pub const TOKEN_RENEWAL: &str = "kubectl-mesh-sync-token-renewal";

/// With `--token-ttl`, the Secret a time-bound token is bound to: no token in it, but the
/// token is valid only while it exists, so deleting it revokes the token as deleting a
/// long-lived token Secret does.
pub fn token_anchor_secret(name: &str, cluster: &str) -> Secret {
    Secret {
        metadata: meta(name, Some(MESH_NAMESPACE), cluster),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    }
}

/// `create` on `serviceaccounts/token` for the sync account alone: what the webhook needs to
/// renew a time-bound token with that token.
pub fn token_renewal_role(cluster: &str) -> Role {
    Role {
        metadata: meta(TOKEN_RENEWAL, Some(MESH_NAMESPACE), cluster),
        rules: Some(vec![PolicyRule {
            api_groups: strings(&[""]),
            resources: strings(&["serviceaccounts/token"]),
            resource_names: strings(&[SYNC_ACCOUNT]),
            verbs: vec!["create".to_owned()],
            ..Default::default()
        }]),
    }
}

/// Binds [`token_renewal_role`] to the sync account.
pub fn token_renewal_binding(cluster: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(TOKEN_RENEWAL, Some(MESH_NAMESPACE), cluster),
        role_ref: role_ref("Role", TOKEN_RENEWAL),
        subjects: Some(vec![mesh_service_account(SYNC_ACCOUNT)]),
    }
}

/// The Secret on the primary holding `cluster`'s stored kubeconfig (YAML).
pub fn cluster_secret(cluster: &str, kubeconfig_yaml: &str) -> Secret {
    Secret {
        metadata: meta(&cluster_secret_name(cluster), Some(MESH_NAMESPACE), cluster),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig_yaml.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The Secret on the primary holding the view identity's kubeconfig of `cluster` (YAML),
/// under the same key as [`cluster_secret`].
pub fn view_secret(cluster: &str, kubeconfig_yaml: &str) -> Secret {
    let mut secret = cluster_secret(cluster, kubeconfig_yaml);
    secret.metadata.name = Some(view_secret_name(cluster));
    secret
}

/// The Istio remote secret of `cluster` in [`ISTIO_NAMESPACE`]: what istiod's multicluster
/// controller watches. One key, the cluster's name, holding a kubeconfig whose cluster, user
/// and context all carry that name.
pub fn istio_remote_secret(cluster: &str, kubeconfig_yaml: &str) -> Secret {
    let mut metadata = meta(&istio_secret_name(cluster), Some(ISTIO_NAMESPACE), cluster);
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(ISTIO_MULTICLUSTER_LABEL.to_owned(), "true".to_owned());
    }
    metadata.annotations = Some(BTreeMap::from([(
        ISTIO_CLUSTER_ANNOTATION.to_owned(),
        cluster.to_owned(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            cluster.to_owned(),
            ByteString(kubeconfig_yaml.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// [`ISTIO_NAMESPACE`] on the primary, as attach creates it when absent. It carries only the
/// managed-by label: several clusters' remote secrets may share it, so it belongs to none;
/// detach removes it once it holds nothing else.
pub fn istio_namespace() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(ISTIO_NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGER.to_owned(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Everything the MeshCluster records.
#[derive(Clone, Debug)]
pub struct ClusterRecord {
    /// Name of the cluster in the mesh.
    pub name: String,
    /// UID of the remote's kube-system namespace.
    pub cluster_id: String,
    /// API server URL of the remote, as the stored kubeconfigs name it.
    pub server: String,
    /// The fingerprint of the CA the stored kubeconfigs trust
    /// ([`mesh_core::recorded::ca_fingerprint`]).
    pub ca_fingerprint: Option<String>,
    /// The name the stored kubeconfigs check the server's certificate against, when not the
    /// server's host ([`mesh_core::recorded::tls_server_name`]).
    pub tls_server_name: Option<String>,
    /// The guard installed.
    pub guard: RemoteGuard,
    /// Name of the primary.
    pub primary_name: String,
    /// Whether [`MESH_NAMESPACE`] on the remote was created by attach.
    pub remote_namespace_created: bool,
    /// The remote's context in the kubeconfig attach was given.
    pub remote_context: String,
    /// Which of the remote's namespaces kubectl-mesh may write.
    pub scope: NamespaceScope,
}

/// The MeshCluster of an attached cluster.
pub fn mesh_cluster(record: &ClusterRecord) -> MeshCluster {
    let mut mc = MeshCluster::new(
        &record.name,
        MeshClusterSpec {
            cluster_id: record.cluster_id.clone(),
            server: record.server.clone(),
            ca_fingerprint: record.ca_fingerprint.clone(),
            tls_server_name: record.tls_server_name.clone(),
            secret_name: cluster_secret_name(&record.name),
            primary_name: Some(record.primary_name.clone()),
            remote_guard: record.guard,
            scope: record.scope.clone(),
        },
    );
    mc.metadata.labels = Some(labels(&record.name));
    mc.metadata.annotations = Some(BTreeMap::from([
        (
            REMOTE_NAMESPACE_CREATED_ANNOTATION.to_owned(),
            record.remote_namespace_created.to_string(),
        ),
        (
            REMOTE_CONTEXT_ANNOTATION.to_owned(),
            record.remote_context.clone(),
        ),
    ]));
    mc
}

/// An ownerReference to `mc` (which must have been read from the cluster, for its uid).
/// Neither `controller` nor `blockOwnerDeletion`: the latter needs rights on the
/// MeshCluster's finalizers where OwnerReferencesPermissionEnforcement is on, and nothing
/// here needs foreground deletion.
pub fn owner_reference(mc: &MeshCluster) -> Option<OwnerReference> {
    use kube::Resource as _;
    mc.owner_ref(&())
}

/// Whether the MeshCluster says attach created the remote's [`MESH_NAMESPACE`]. `None`
/// when it does not say (a MeshCluster written by an older attach).
pub fn remote_namespace_created(mc: &MeshCluster) -> Option<bool> {
    mc.metadata
        .annotations
        .as_ref()?
        .get(REMOTE_NAMESPACE_CREATED_ANNOTATION)
        .map(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::Validation;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use mesh_core::labels::SyncRule;

    fn guard(mode: RemoteGuard) -> Guard {
        Guard::new(mode, "main", "admin@main")
    }

    #[test]
    fn istio_s_own_reader_role_is_named_after_its_namespace() {
        assert_eq!(
            ISTIO_OWN_READER_ROLE,
            format!("istio-reader-clusterrole-{ISTIO_NAMESPACE}")
        );
    }

    #[test]
    fn default_names_are_dns_labels() {
        for (context, name) in [
            ("remote-1", "remote-1"),
            ("admin@East_1", "admin-east-1"),
            (
                "arn:aws:eks:eu-west-1:123:cluster/prod",
                "arn-aws-eks-eu-west-1-123-cluster-prod",
            ),
            ("--a--b--", "a-b"),
            ("@@@", ""),
        ] {
            let got = default_cluster_name(context);
            assert_eq!(got, name, "{context}");
            if !got.is_empty() {
                crate::kubeconfig::validate_cluster_name(&got).unwrap();
            }
        }
        let long = default_cluster_name(&format!("{}-x", "a".repeat(62)));
        assert_eq!(long, "a".repeat(62));
    }

    #[test]
    fn every_remote_object_is_labelled_for_its_cluster() {
        let g = guard(RemoteGuard::Warn);
        let metas = [
            remote_namespace("east").metadata,
            service_account(SYNC_ACCOUNT, "east").metadata,
            sync_cluster_role("east").metadata,
            cluster_role_binding(SYNC_ACCOUNT, "east").metadata,
            token_secret(TOKEN_SECRET, SYNC_ACCOUNT, "east").metadata,
            guard_policy("east", &g).metadata,
            guard_binding("east", &g).metadata,
            cluster_secret("east", "x").metadata,
            istio_remote_secret("east", "x").metadata,
            service_account(VIEW_ACCOUNT, "east").metadata,
            view_cluster_role("east").metadata,
            cluster_role_binding(VIEW_ACCOUNT, "east").metadata,
            token_secret(VIEW_TOKEN_SECRET, VIEW_ACCOUNT, "east").metadata,
            view_secret("east", "x").metadata,
        ];
        for m in metas {
            assert!(is_ours(&m, "east"), "{:?}", m.name);
            assert!(!is_ours(&m, "west"), "{:?}", m.name);
        }
        assert_eq!(
            selector("east"),
            "app.kubernetes.io/managed-by=kubectl-mesh,kubectl-mesh.io/cluster=east"
        );
    }

    #[test]
    fn stored_credentials_are_the_primarys_secrets_never_a_remotes_identity() {
        for meta in [
            cluster_secret("east", "x").metadata,
            view_secret("east", "x").metadata,
            istio_remote_secret("east", "x").metadata,
        ] {
            assert_eq!(stored_credential_of(&meta), Some("east"), "{meta:?}");
        }
        // What another primary's attach put in this cluster's mesh namespace, this cluster
        // being its remote "east" (or even one named like a stored Secret's cluster).
        for cluster in ["east", "cluster-east"] {
            let mut remote_side = vec![
                service_account(SYNC_ACCOUNT, cluster).metadata,
                service_account(ISTIO_READER, cluster).metadata,
                service_account(VIEW_ACCOUNT, cluster).metadata,
                token_anchor_secret(TOKEN_SECRET, cluster).metadata,
                token_renewal_role(cluster).metadata,
                token_renewal_binding(cluster).metadata,
                remote_namespace(cluster).metadata,
            ];
            for name in token_secrets() {
                remote_side.push(token_secret(&name, SYNC_ACCOUNT, cluster).metadata);
            }
            for meta in remote_side {
                assert_eq!(stored_credential_of(&meta), None, "{meta:?}");
            }
        }
        // Unlabelled, another cluster's name, or elsewhere: not attach's.
        let mut unlabelled = cluster_secret("east", "x").metadata;
        unlabelled.labels = None;
        let mut renamed = cluster_secret("east", "x").metadata;
        renamed.name = Some("cluster-west".into());
        let mut elsewhere = cluster_secret("east", "x").metadata;
        elsewhere.namespace = Some("default".into());
        for meta in [unlabelled, renamed, elsewhere] {
            assert_eq!(stored_credential_of(&meta), None, "{meta:?}");
        }
    }

    #[test]
    fn every_identitys_token_secret_and_its_standby_are_listed_once() {
        let names = token_secrets();
        for own in [TOKEN_SECRET, ISTIO_READER_TOKEN_SECRET, VIEW_TOKEN_SECRET] {
            assert!(names.iter().any(|n| n == own), "{own}");
            assert!(names.contains(&format!("{own}-standby")), "{own}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn remote_objects_are_ours_only_from_the_primary_they_record() {
        let mut sa = serde_json::to_value(service_account(SYNC_ACCOUNT, "east")).unwrap();
        let older: ServiceAccount = serde_json::from_value(sa.clone()).unwrap();
        assert!(
            is_ours_from(&older.metadata, "east", "uid-a"),
            "older attach"
        );
        record_primary(&mut sa, "uid-a");
        let recorded: ServiceAccount = serde_json::from_value(sa).unwrap();
        assert_eq!(primary_of(&recorded.metadata), Some("uid-a"));
        assert!(is_ours_from(&recorded.metadata, "east", "uid-a"));
        assert!(!is_ours_from(&recorded.metadata, "east", "uid-b"));
        assert!(!is_ours_from(&recorded.metadata, "west", "uid-a"));
        // A takeover revokes what another primary recorded for this cluster, nothing else.
        assert_eq!(
            other_primary(&recorded.metadata, "east", "uid-b"),
            Some("uid-a")
        );
        assert_eq!(other_primary(&recorded.metadata, "east", "uid-a"), None);
        assert_eq!(other_primary(&recorded.metadata, "west", "uid-b"), None);
        assert_eq!(other_primary(&older.metadata, "east", "uid-b"), None);
        // Other annotations stay.
        let mut secret =
            serde_json::to_value(token_secret(TOKEN_SECRET, SYNC_ACCOUNT, "east")).unwrap();
        record_primary(&mut secret, "uid-a");
        let annotations = &secret["metadata"]["annotations"];
        assert_eq!(annotations[SERVICE_ACCOUNT_NAME_ANNOTATION], SYNC_ACCOUNT);
        assert_eq!(annotations[PRIMARY_ANNOTATION], "uid-a");
    }

    #[test]
    fn sync_role_patches_namespaces_and_reads_only_its_guard_and_injectors() {
        let role = sync_cluster_role("east");
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["namespaces".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch", "patch"]);
        assert_eq!(rules[0].resource_names, None);
        assert_eq!(
            rules[1].api_groups.as_deref(),
            Some(&["admissionregistration.k8s.io".to_owned()][..])
        );
        assert_eq!(
            rules[1].resources.as_deref().unwrap(),
            [
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings"
            ]
        );
        assert_eq!(rules[1].verbs, ["get"]);
        assert_eq!(rules[1].resource_names.as_deref().unwrap(), [GUARD]);
        assert_eq!(
            rules[2].resources.as_deref().unwrap(),
            ["mutatingwebhookconfigurations"]
        );
        assert_eq!(rules[2].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[2].resource_names, None);
        let crb = cluster_role_binding(SYNC_ACCOUNT, "east");
        let subject = &crb.subjects.unwrap()[0];
        assert_eq!(
            format!(
                "system:serviceaccount:{}:{}",
                subject.namespace.as_deref().unwrap(),
                subject.name
            ),
            sync_username()
        );
    }

    #[test]
    fn view_role_only_reads_services_endpointslices_and_pods() {
        let rules = view_cluster_role("east").rules.unwrap();
        let granted: Vec<(String, String, String)> = rules
            .iter()
            .flat_map(|r| {
                let group = r.api_groups.clone().unwrap_or_default().concat();
                let verbs = r.verbs.join(",");
                r.resources
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |res| (group.clone(), res, verbs.clone()))
            })
            .collect();
        let read = "get,list,watch".to_owned();
        assert_eq!(
            granted,
            [
                (String::new(), "services".into(), read.clone()),
                (String::new(), "pods".into(), read.clone()),
                ("discovery.k8s.io".into(), "endpointslices".into(), read),
            ]
        );
        assert!(rules.iter().all(|r| r.resource_names.is_none()));
        assert_eq!(
            view_secret("east", "kc").metadata.name.as_deref(),
            Some("cluster-east-view")
        );
    }

    #[test]
    fn token_secret_names_its_account() {
        let s = token_secret(TOKEN_SECRET, SYNC_ACCOUNT, "east");
        assert_eq!(s.type_.as_deref(), Some(SERVICE_ACCOUNT_TOKEN_TYPE));
        assert_eq!(
            s.metadata.annotations.unwrap()[SERVICE_ACCOUNT_NAME_ANNOTATION],
            SYNC_ACCOUNT
        );
        assert!(s.data.is_none());
    }

    #[test]
    fn guard_policy_follows_the_cluster_scope() {
        let scope = NamespaceScope {
            exclude_namespaces: vec!["gateways".into()],
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("mesh".to_owned(), "yes".to_owned())].into()),
                match_expressions: None,
            }),
        };
        let rule = SyncRule::default().within(&scope).unwrap();
        let guard = guard(RemoteGuard::Warn).with_rule(&rule).with_scope(&scope);
        let spec = guard_policy("east", &guard).spec.unwrap();
        let conditions = spec.match_conditions.unwrap();
        assert!(
            conditions
                .iter()
                .any(|c| c.expression.contains("'gateways'")
                    && c.expression.contains("'kube-system'")),
            "{conditions:?}"
        );
        assert_eq!(
            spec.match_constraints.unwrap().namespace_selector,
            scope.namespace_selector
        );
    }

    #[test]
    fn guard_policy_spares_the_sync_account_and_excluded_namespaces() {
        let p = guard_policy("east", &guard(RemoteGuard::Deny));
        let spec = p.spec.unwrap();
        assert_eq!(spec.failure_policy.as_deref(), Some("Ignore"));
        let conditions = spec.match_conditions.unwrap();
        assert!(conditions.iter().any(|c| c.expression
            == "request.userInfo.username != \
                        'system:serviceaccount:kubectl-mesh:kubectl-mesh-sync'"));
        assert!(
            conditions
                .iter()
                .any(|c| c.expression.contains("'kube-system'"))
        );
        let changed = &spec.variables.unwrap()[0].expression;
        for key in mesh_core::labels::DEFAULT_MANAGED_LABELS {
            assert!(changed.contains(&format!("'{key}'")), "{key}");
        }
        let v = &spec.validations.unwrap()[0];
        let msg = v.message_expression.as_deref().unwrap();
        assert!(
            msg.contains("managed by kubectl-mesh from cluster ' + 'main'"),
            "{msg}"
        );
        assert!(msg.contains("'admin@main'"), "{msg}");
        assert!(msg.contains("object.metadata.name"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(
            v.message
                .as_deref()
                .unwrap()
                .contains("managed by kubectl-mesh")
        );
    }

    #[test]
    fn sync_scope_denies_the_sync_account_all_but_the_rules_labels() {
        let rule = SyncRule::new(vec!["team.example.com/zone".into()], vec!["legacy".into()]);
        let policy = sync_scope_policy("east", &rule, &NamespaceScope::default());
        assert_eq!(recorded_scope(&policy), Some(NamespaceScope::default()));
        let spec = policy.spec.unwrap();
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(
            spec.match_conditions.unwrap()[0].expression,
            "request.userInfo.username == 'system:serviceaccount:kubectl-mesh:kubectl-mesh-sync'"
        );
        let others = &spec.variables.unwrap()[0].expression;
        assert!(others.contains("['team.example.com/zone']"), "{others}");
        assert!(!others.contains("istio-injection"), "{others}");
        for field in ["annotations", "finalizers", "ownerReferences"] {
            assert!(
                others.contains(&format!("object.metadata.{field} ==")),
                "{field}"
            );
        }
        let validations = spec.validations.unwrap();
        assert_eq!(validations[0].expression, "request.operation == 'UPDATE'");
        assert!(validations[1].expression.contains("['legacy']"));
        assert!(validations[2].expression.ends_with("|| (true)"));
        let binding = sync_scope_binding("east").spec.unwrap();
        assert_eq!(binding.validation_actions.unwrap(), ["Deny"]);
    }

    #[test]
    fn sync_scope_denies_the_sync_account_what_the_clusters_scope_leaves_out() {
        let rule = SyncRule::new(vec!["istio-injection".into()], vec!["legacy".into()]);
        let selector = LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            ..Default::default()
        };
        let scope = NamespaceScope {
            exclude_namespaces: vec!["payments".into(), "legacy".into()],
            namespace_selector: Some(selector.clone()),
        };
        let scoped = rule.within(&scope).unwrap();
        let policy = sync_scope_policy("east", &scoped, &scope);
        assert_eq!(recorded_scope(&policy), Some(scope));
        let validations = policy.spec.unwrap().validations.unwrap();
        assert!(
            validations[1]
                .expression
                .ends_with("in ['legacy', 'payments'])"),
            "{}",
            validations[1].expression
        );
        assert_eq!(
            validations[2].expression,
            format!(
                "!(request.operation == 'UPDATE') || ({})",
                crate::cel::selects("oldObject", &selector)
            )
        );
        assert_eq!(
            validations
                .iter()
                .map(|v| v.message.as_deref())
                .collect::<Vec<_>>(),
            SYNC_SCOPE_MESSAGES.map(Some)
        );
    }

    #[test]
    fn guard_follows_the_installed_rule() {
        let rule = SyncRule::new(vec!["team.example.com/zone".into()], vec!["legacy".into()]);
        let spec = guard_policy("east", &guard(RemoteGuard::Warn).with_rule(&rule))
            .spec
            .unwrap();
        let changed = &spec.variables.unwrap()[0].expression;
        assert!(
            changed.starts_with("['team.example.com/zone']"),
            "{changed}"
        );
        let conditions = spec.match_conditions.unwrap();
        assert!(
            conditions[0].expression.contains("['legacy']"),
            "{conditions:?}"
        );
    }

    #[test]
    fn guard_strings_are_cel_escaped() {
        let p = guard_policy("east", &Guard::new(RemoteGuard::Warn, "it's", r"a\b"));
        let msg = p.spec.unwrap().validations.unwrap()[0]
            .message_expression
            .clone()
            .unwrap();
        assert!(msg.contains(r"'it\'s'"), "{msg}");
        assert!(msg.contains(r"'a\\b'"), "{msg}");
    }

    #[test]
    fn guard_primary_name_is_read_back_from_the_messages() {
        for primary in ["main", "elsewhere", "it's", r"a\b", "x; y"] {
            let p = guard_policy("east", &Guard::new(RemoteGuard::Warn, primary, "ctx"));
            assert_eq!(guard_primary_name(&p).as_deref(), Some(primary));
        }
        // Messages that disagree, or are not the guard's: no name.
        let mut p = guard_policy("east", &guard(RemoteGuard::Warn));
        if let Some(v) = p
            .spec
            .as_mut()
            .and_then(|s| s.validations.as_mut())
            .and_then(|v| v.first_mut())
        {
            v.message = Some("managed by kubectl-mesh from cluster other; set".into());
        }
        assert_eq!(guard_primary_name(&p), None);
        let mut p = guard_policy("east", &guard(RemoteGuard::Warn));
        if let Some(spec) = p.spec.as_mut() {
            spec.validations = Some(vec![Validation {
                expression: "true".into(),
                ..Default::default()
            }]);
        }
        assert_eq!(guard_primary_name(&p), None);
        assert_eq!(crate::remote_policies::read_cel_str("'unterminated"), None);
    }

    #[test]
    fn guard_binding_action_follows_mode() {
        let warn = guard_binding("east", &guard(RemoteGuard::Warn))
            .spec
            .unwrap();
        assert_eq!(warn.validation_actions.unwrap(), ["Warn"]);
        assert_eq!(warn.policy_name.as_deref(), Some(GUARD));
        let deny = guard_binding("east", &guard(RemoteGuard::Deny))
            .spec
            .unwrap();
        assert_eq!(deny.validation_actions.unwrap(), ["Deny"]);
        assert_eq!(guard(RemoteGuard::Off).action(), None);
    }

    #[test]
    fn a_left_guard_of_this_cluster_and_primary_gives_its_mode_and_primary() {
        let kept = Guard::new(RemoteGuard::Deny, "elsewhere", "ctx");
        let (mut policy, binding) = (guard_policy("east", &kept), guard_binding("east", &kept));
        policy
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(PRIMARY_ANNOTATION.into(), "primary-id".into());
        assert_eq!(
            left_guard(&policy, &binding, "east", "primary-id"),
            Some((RemoteGuard::Deny, Some("elsewhere".into())))
        );
        // Another primary's, another cluster's, or bound with no mode: nothing to keep.
        assert_eq!(left_guard(&policy, &binding, "east", "other-id"), None);
        assert_eq!(left_guard(&policy, &binding, "west", "primary-id"), None);
        let mut unbound = binding.clone();
        if let Some(spec) = unbound.spec.as_mut() {
            spec.validation_actions = Some(vec!["Audit".into()]);
        }
        assert_eq!(left_guard(&policy, &unbound, "east", "primary-id"), None);
    }

    #[test]
    fn istio_remote_secret_follows_istio_conventions() {
        let s = istio_remote_secret("east", "kc");
        assert_eq!(s.metadata.name.as_deref(), Some("istio-remote-secret-east"));
        assert_eq!(s.metadata.namespace.as_deref(), Some(ISTIO_NAMESPACE));
        assert_eq!(s.metadata.labels.unwrap()[ISTIO_MULTICLUSTER_LABEL], "true");
        assert_eq!(
            s.metadata.annotations.unwrap()[ISTIO_CLUSTER_ANNOTATION],
            "east"
        );
        assert_eq!(s.data.unwrap()["east"].0, b"kc");
    }

    #[test]
    fn mesh_cluster_records_what_detach_needs() {
        let record = ClusterRecord {
            name: "east".into(),
            cluster_id: "uid-1".into(),
            server: "https://10.0.0.1".into(),
            ca_fingerprint: Some("sha256:ca".into()),
            tls_server_name: Some("api.east".into()),
            guard: RemoteGuard::Deny,
            primary_name: "main".into(),
            remote_namespace_created: true,
            remote_context: "admin@east".into(),
            scope: Default::default(),
        };
        let mc = mesh_cluster(&record);
        assert_eq!(mc.spec.secret_name, "cluster-east");
        // What a stored kubeconfig is held to (`mesh_core::recorded::check`).
        assert_eq!(mc.spec.ca_fingerprint.as_deref(), Some("sha256:ca"));
        assert_eq!(mc.spec.tls_server_name.as_deref(), Some("api.east"));
        assert_eq!(mc.spec.primary_name.as_deref(), Some("main"));
        assert_eq!(mc.spec.remote_guard, RemoteGuard::Deny);
        assert_eq!(remote_namespace_created(&mc), Some(true));
        assert_eq!(remote_context(&mc), Some("admin@east"));
        assert!(
            owner_reference(&mc).is_none(),
            "no uid before it is created"
        );
        let mut stored = mc.clone();
        stored.metadata.uid = Some("u".into());
        let owner = owner_reference(&stored).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MeshCluster", "u")
        );
        assert_eq!(owner.block_owner_deletion, None);
    }
}
