//! Every read `check` makes, of the primary and of each remote; the judges in the sibling
//! modules turn what is read here into checks, without a cluster.
//!
//! A read that cannot go on (no Secret, no client, no answer) stops the reads that depend
//! on it, so that a broken remote costs one timeout, not one per check.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    },
    apps::v1::Deployment,
    authentication::v1::SelfSubjectReview,
    authorization::v1::SelfSubjectAccessReview,
    core::v1::{ConfigMap, Namespace, Pod, Secret},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt as _, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{KUBECONFIG_KEY, MeshCluster},
    labels::SyncRule,
    list, remote,
};

use super::answers::{Fetched, reached};
use super::caller_probe;
use super::istio_secret::{self, IstioSecretFacts};
use super::rights::{self, Answer};
use crate::{
    Error,
    access::Need,
    installed_rule, kubeconfig,
    mesh_state::{self, RemoteResult, with_deadline},
    remote_setup as setup, render,
    sync_scope::{self, Found},
    view,
};

/// How long the handshake with a webhook called by URL may take.
const CALLER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Label value the probe of the webhook pretends to set (dry run: nothing is stored).
const PROBE_VALUE: &str = "kubectl-mesh-check";
/// The managed label the probe pretends to change, when the rule manages it (else its first).
const PROBE_LABEL: &str = "istio.io/rev";

/// What the installation checks read from the primary.
#[derive(Debug)]
pub struct InstallFacts {
    /// The MeshCluster CRD.
    pub crd: Fetched<CustomResourceDefinition>,
    /// [`MESH_NAMESPACE`].
    pub namespace: Fetched<Namespace>,
    /// The webhook configuration.
    pub webhook: Fetched<MutatingWebhookConfiguration>,
    /// The serving certificate's Secret, read when the webhook entry has a caBundle.
    pub tls_secret: Option<Fetched<Secret>>,
    /// The client CA's ConfigMap (`install --client-ca-file`), read when the configuration has
    /// the webhook entry: a re-run of install must pass that flag again to keep it.
    pub client_ca: Option<Fetched<ConfigMap>>,
    /// The webhook Deployment, read in the namespace of the Service clientConfig names.
    pub deployment: Option<(String, Fetched<Deployment>)>,
    /// The dry-run probe of the webhook, made when the configuration has its entry.
    pub probe: Option<Probe>,
    /// A handshake without a client certificate with a webhook called by URL.
    pub caller_auth: Option<caller_probe::Probe>,
}

/// How the dry-run probe of the webhook went.
#[derive(Debug)]
pub enum Probe {
    /// The sync rule manages no label, so no change reaches the webhook.
    NoLabel,
    /// The namespaces to probe on could not be listed.
    ListFailed(kube::Error),
    /// No namespace that the rule syncs.
    NoNamespace,
    /// The request could not be built.
    BuildFailed(String),
    /// The request got no answer.
    SendFailed(kube::Error),
    /// The apiserver refused the change: the caller may not patch namespaces, or admission
    /// (the webhook, or a validation after it) rejected it.
    Refused {
        /// The namespace probed.
        namespace: String,
        /// The HTTP status, as `403 Forbidden`.
        status: String,
        /// The reason of the apiserver's Status, as `Forbidden` (empty without one).
        reason: String,
        /// The apiserver's message (else the body).
        message: String,
        /// The admission warnings returned with the refusal: a webhook that answered before
        /// a later step refused leaves its warning there.
        warnings: Vec<String>,
    },
    /// The apiserver accepted the change.
    Accepted {
        /// The namespace probed.
        namespace: String,
        /// The admission warnings returned with it.
        warnings: Vec<String>,
    },
}

/// Reads what the installation checks need.
pub async fn install(client: &Client) -> InstallFacts {
    // At once: a primary that does not answer costs one --request-timeout, not three.
    let (crds, namespaces, webhooks) = (
        Api::<CustomResourceDefinition>::all(client.clone()),
        Api::<Namespace>::all(client.clone()),
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
    );
    let (crd, namespace, webhook) = tokio::join!(
        crds.get_opt(MeshCluster::crd_name()),
        namespaces.get_opt(MESH_NAMESPACE),
        webhooks.get_opt(render::WEBHOOK_CONFIGURATION),
    );
    let mut facts = InstallFacts {
        crd,
        namespace,
        webhook,
        tls_secret: None,
        client_ca: None,
        deployment: None,
        probe: None,
        caller_auth: None,
    };
    let Ok(Some(mwc)) = &facts.webhook else {
        return facts;
    };
    let Some(hook) = render::webhook_entry(mwc) else {
        return facts;
    };
    let rule = installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
    if hook.client_config.ca_bundle.is_some() {
        let secret = Api::<Secret>::namespaced(client.clone(), MESH_NAMESPACE)
            .get_opt(render::TLS_SECRET)
            .await;
        facts.tls_secret = Some(secret);
    }
    let client_ca = Api::<ConfigMap>::namespaced(client.clone(), MESH_NAMESPACE)
        .get_opt(render::CLIENT_CA_CONFIG_MAP)
        .await;
    facts.client_ca = Some(client_ca);
    if let Some(service) = &hook.client_config.service {
        let deployment = Api::<Deployment>::namespaced(client.clone(), &service.namespace)
            .get_opt(render::WEBHOOK)
            .await;
        facts.deployment = Some((service.namespace.clone(), deployment));
    }
    if let (Some(url), Some(ca)) = (&hook.client_config.url, &hook.client_config.ca_bundle) {
        let probe = caller_probe::probe(url.clone(), ca.0.clone(), CALLER_PROBE_TIMEOUT);
        facts.caller_auth = Some(probe.await);
    }
    facts.probe = Some(probe(client, &rule).await);
    facts
}

/// Asks the apiserver for a server-side dry run of a managed-label change on a namespace:
/// the apiserver calls the webhook (matchConditions let managed-label changes through) and
/// the webhook, seeing a dry run, answers with a `kubectl-mesh:` warning and pushes nothing.
async fn probe(client: &Client, rule: &SyncRule) -> Probe {
    // Only a change of a managed label reaches the webhook (matchConditions).
    let Some(probe_label) = Some(PROBE_LABEL)
        .filter(|l| rule.is_managed(l))
        .or_else(|| rule.managed_keys().next())
    else {
        return Probe::NoLabel;
    };
    let api = Api::<Namespace>::all(client.clone());
    let namespaces = match list::all(&api, &ListParams::default()).await {
        Ok(namespaces) => namespaces,
        Err(e) => return Probe::ListFailed(e),
    };
    let probed = namespaces
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .filter(|n| !rule.is_excluded(n))
        .min_by_key(|n| (n != "default", n.clone()));
    let Some(namespace) = probed else {
        return Probe::NoNamespace;
    };
    let current = namespaces
        .iter()
        .find(|ns| ns.name_any() == namespace)
        .and_then(|ns| ns.labels().get(probe_label).cloned());
    // Any value other than the current one is a change the webhook is called for.
    let value = if current.as_deref() == Some(PROBE_VALUE) {
        format!("{PROBE_VALUE}-2")
    } else {
        PROBE_VALUE.to_owned()
    };
    let patch = serde_json::json!({"metadata": {"labels": {probe_label: value}}});
    let params = PatchParams {
        dry_run: true,
        field_manager: Some(render::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let request = match kube::core::Request::new("/api/v1/namespaces").patch(
        &namespace,
        &params,
        &Patch::Merge(&patch),
    ) {
        Ok(r) => r,
        Err(e) => return Probe::BuildFailed(e.to_string()),
    };
    let response = match client.send(request.map(kube::client::Body::from)).await {
        Ok(r) => r,
        Err(e) => return Probe::SendFailed(e),
    };
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    if status.is_success() {
        return Probe::Accepted {
            namespace,
            warnings,
        };
    }
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    let (reason, message) = serde_json::from_slice::<kube::core::Status>(&body)
        .map(|s| (s.reason, s.message))
        .unwrap_or_else(|_| (String::new(), String::from_utf8_lossy(&body).into_owned()));
    Probe::Refused {
        namespace,
        status: status.to_string(),
        reason,
        message,
        warnings,
    }
}

/// What the per-cluster checks read from the primary.
#[derive(Debug)]
pub enum MeshFacts {
    /// The MeshClusters could not be listed.
    Unlisted(Error),
    /// No cluster is attached.
    NoneAttached,
    /// Some are.
    Attached(Attached),
}

/// The attached clusters and what was read of each.
#[derive(Debug)]
pub struct Attached {
    /// The MeshClusters.
    pub clusters: Vec<MeshCluster>,
    /// Every namespace of the primary, by name.
    pub primary_namespaces: crate::Result<BTreeMap<String, Namespace>>,
    /// What was read for each cluster, in the order of `clusters`; `None` for a cluster being
    /// detached ([`mesh_state::is_being_detached`]): nothing syncs it, and nothing is read.
    pub remotes: Vec<Option<ClusterFacts>>,
    /// What was read for each cluster's Istio remote secret, likewise.
    pub istio_secrets: Vec<Option<IstioSecretFacts>>,
}

/// What was read for one attached cluster, as far as its stored kubeconfig led.
#[derive(Debug)]
pub enum ClusterFacts {
    /// Its Secret on the primary could not be read.
    SecretUnreadable(kube::Error),
    /// Its Secret does not exist.
    SecretMissing,
    /// Its Secret holds no kubeconfig.
    KeyMissing,
    /// The kubeconfig breaks the rule of stored kubeconfigs.
    Invalid(kubeconfig::Error),
    /// A valid stored kubeconfig, and what was read with it.
    Stored(Box<Stored>),
}

/// A valid stored kubeconfig, and what was read with it.
#[derive(Debug)]
pub struct Stored {
    /// The kubeconfig.
    pub kubeconfig: Kubeconfig,
    /// What its credentials read.
    pub remote: RemoteFacts,
}

/// What was read with a cluster's stored credentials.
#[derive(Debug)]
pub enum RemoteFacts {
    /// No client could be made of the stored kubeconfig (the webhook's own code says why).
    NoClient(remote::Error),
    /// The remote was asked who the credentials are.
    Asked(Box<Asked>),
}

/// A remote asked who the stored credentials are, and what else was read from it.
#[derive(Debug)]
pub struct Asked {
    /// Its answer.
    pub whoami: RemoteResult<SelfSubjectReview>,
    /// The other reads, made when it answered (see [`reached`]).
    pub reads: Option<RemoteReads>,
}

/// The reads of a remote that answered.
#[derive(Debug)]
pub struct RemoteReads {
    /// Its kube-system namespace, whose UID is the cluster's identity.
    pub kube_system: RemoteResult<Namespace>,
    /// What the stored identity may do, asked right by right.
    pub rights: RemoteResult<Vec<Answer>>,
    /// Every namespace.
    pub namespaces: RemoteResult<Vec<Namespace>>,
    /// The remote guard.
    pub guard: GuardFacts,
    /// Whether the remote confines the stored identity to the managed labels of the rule.
    pub scope: RemoteResult<Found>,
    /// Its MutatingWebhookConfigurations, where Istio's injectors are.
    pub injectors: RemoteResult<Vec<MutatingWebhookConfiguration>>,
    /// What its view credentials read.
    pub view: ViewFacts,
    /// The context of the user's kubeconfig that reaches it, for advice to run there
    /// ([`crate::access::remote_context_in`]).
    pub user_context: Option<String>,
}

/// What a remote's view credentials ([`view`]) read.
#[derive(Debug)]
pub enum ViewFacts {
    /// The cluster has none; `istio_unread`: why its Istio remote secret, taken as absent, was
    /// not read (the caller was refused it), as [`view::Lookup::istio_unread`].
    None { istio_unread: Option<String> },
    /// They exist but cannot be used (why).
    Unusable {
        /// Whose they are.
        source: view::Source,
        /// Why, in one line.
        error: String,
    },
    /// Their Secret could not be read on the primary (why).
    Unreadable {
        /// Whose they are.
        source: view::Source,
        /// Why, in one line, with what to do.
        error: String,
    },
    /// Read with them.
    Read {
        /// Whose they are.
        source: view::Source,
        /// What they may do, asked right by right ([`rights::view_asked`]); only for the view
        /// identity (istiod's reader has its own check).
        rights: Option<RemoteResult<Vec<Answer>>>,
        /// Every pod of the remote, by namespace.
        pods: RemoteResult<BTreeMap<String, Vec<Pod>>>,
    },
}

/// The remote guard, read with the stored credentials and, when they may not, with the
/// remote's context in the user's kubeconfig (as detach reaches the remote).
#[derive(Debug)]
pub struct GuardFacts {
    /// Read with the stored credentials.
    pub stored: RemoteResult<FoundGuard>,
    /// Read with the context attach recorded, when the stored credentials could not.
    pub with_context: WithContext,
}

/// The remote guard as read with the context attach recorded, in the user's kubeconfig.
#[derive(Debug)]
pub enum WithContext {
    /// Not read: the stored credentials could, or there was no such context to use.
    Unused,
    /// Not read: the context reaches another cluster, of this cluster id (kube-system's UID).
    /// A context of the same name in the user's kubeconfig (`default`,
    /// `kubernetes-admin@...`) may be the primary's.
    Elsewhere(String),
    /// Read with it.
    Read(Box<RemoteResult<FoundGuard>>),
}

/// The remote guard as found on a remote: [`setup::GUARD`]'s policy and binding, each read
/// by name (a `get`, which the sync account may do on these two objects only; absent is a
/// 404, not a refusal).
#[derive(Clone, Debug, Default)]
pub struct FoundGuard {
    /// The ValidatingAdmissionPolicy.
    pub policy: Option<ValidatingAdmissionPolicy>,
    /// Its binding.
    pub binding: Option<ValidatingAdmissionPolicyBinding>,
}

/// Reads the MeshClusters, the primary's namespaces, and what each remote's stored credentials
/// and Istio remote secret can read (all remotes, and both of each, concurrently, each call
/// bounded by `timeout`).
pub async fn mesh(
    client: &Client,
    user_kubeconfig: &Kubeconfig,
    rule: &SyncRule,
    timeout: Duration,
) -> MeshFacts {
    let clusters = match mesh_state::clusters(client).await {
        Ok(clusters) if clusters.is_empty() => return MeshFacts::NoneAttached,
        Ok(clusters) => clusters,
        Err(e) => return MeshFacts::Unlisted(e),
    };
    let primary_namespaces = mesh_state::primary_namespaces(client).await;
    let read = mesh_state::for_each(&clusters, |c| async move {
        if mesh_state::is_being_detached(c) {
            return None;
        }
        // At once: a remote that does not answer costs one timeout for both.
        Some(tokio::join!(
            cluster_facts(client, c, user_kubeconfig, rule, timeout),
            istio_secret::facts(client, c, timeout),
        ))
    })
    .await;
    let (remotes, istio_secrets) = read.into_iter().map(Option::unzip).unzip();
    MeshFacts::Attached(Attached {
        clusters,
        primary_namespaces,
        remotes,
        istio_secrets,
    })
}

async fn cluster_facts(
    primary: &Client,
    cluster: &MeshCluster,
    user_kubeconfig: &Kubeconfig,
    rule: &SyncRule,
    timeout: Duration,
) -> ClusterFacts {
    let secret_name = &cluster.spec.secret_name;
    let secret = match Api::<Secret>::namespaced(primary.clone(), MESH_NAMESPACE)
        .get_opt(secret_name)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return ClusterFacts::SecretMissing,
        Err(e) => return ClusterFacts::SecretUnreadable(e),
    };
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let Some(yaml) = yaml else {
        return ClusterFacts::KeyMissing;
    };
    let stored = match kubeconfig::parse_stored(&yaml) {
        Ok(kc) => kc,
        Err(e) => return ClusterFacts::Invalid(e),
    };
    // Through the webhook's own client code: what passes here is what the webhook can do.
    let remote = match remote::client_for_record(
        cluster,
        secret_name,
        &yaml,
        &mesh_state::remote_options(timeout),
    )
    .await
    {
        Ok(remote) => remote_facts(primary, &remote, cluster, user_kubeconfig, rule, timeout).await,
        Err(e) => RemoteFacts::NoClient(e),
    };
    ClusterFacts::Stored(Box::new(Stored {
        kubeconfig: stored,
        remote,
    }))
}

async fn remote_facts(
    primary: &Client,
    remote: &Client,
    cluster: &MeshCluster,
    user_kubeconfig: &Kubeconfig,
    rule: &SyncRule,
    timeout: Duration,
) -> RemoteFacts {
    let whoami = with_deadline(
        timeout,
        Api::<SelfSubjectReview>::all(remote.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await;
    if !reached(&whoami) {
        return RemoteFacts::Asked(Box::new(Asked {
            whoami,
            reads: None,
        }));
    }
    // A recorded scope that cannot be used is reported by the cluster's own checks.
    let scoped = mesh_state::scoped_rule(rule, cluster).unwrap_or_else(|_| rule.clone());
    // All at once, each bounded by `timeout`: a remote that answered, then stalls, costs one
    // timeout, not one per read.
    let namespaces_api = Api::<Namespace>::all(remote.clone());
    let (kube_system, rights, namespaces, guard, scope, injectors, view) = tokio::join!(
        with_deadline(timeout, namespaces_api.get("kube-system")),
        answers(remote, timeout, rights::asked()),
        mesh_state::remote_namespaces(remote),
        guard_facts(remote, cluster, user_kubeconfig, timeout),
        with_deadline(timeout, sync_scope::probe(remote, &scoped)),
        mesh_state::remote_injectors(remote),
        view_facts(primary, cluster, timeout),
    );
    RemoteFacts::Asked(Box::new(Asked {
        whoami,
        reads: Some(RemoteReads {
            kube_system,
            rights,
            namespaces,
            guard,
            scope,
            injectors,
            view,
            user_context: crate::access::remote_context_in(user_kubeconfig, cluster)
                .map(str::to_owned),
        }),
    }))
}

/// Reads the remote's pods with `cluster`'s view credentials and, for the view identity, asks
/// what it may do.
async fn view_facts(primary: &Client, cluster: &MeshCluster, timeout: Duration) -> ViewFacts {
    let found = view::lookup(primary, cluster, &mesh_state::remote_options(timeout)).await;
    match found.credentials {
        view::Credentials::None => ViewFacts::None {
            istio_unread: found.istio_unread,
        },
        view::Credentials::Unusable { source, error } => ViewFacts::Unusable { source, error },
        view::Credentials::Unreadable { source, error } => ViewFacts::Unreadable { source, error },
        view::Credentials::Found { source, client } => {
            let rights = match source {
                view::Source::View => Some(answers(&client, timeout, rights::view_asked()).await),
                view::Source::IstioReader => None,
            };
            ViewFacts::Read {
                source,
                rights,
                pods: view::pods(&client).await,
            }
        }
    }
}

/// Asks the remote about each of `asked` (needs of one verb each), all at once; the first
/// failure in their order, if any, is the result.
async fn answers(
    remote: &Client,
    timeout: Duration,
    asked: Vec<Need>,
) -> RemoteResult<Vec<Answer>> {
    let api = Api::<SelfSubjectAccessReview>::all(remote.clone());
    let reviews = asked.iter().map(|need| {
        let review = need.review(need.verbs.first().copied().unwrap_or_default());
        let api = api.clone();
        async move { with_deadline(timeout, api.create(&PostParams::default(), &review)).await }
    });
    let replies = futures::future::join_all(reviews).await;
    asked
        .into_iter()
        .zip(replies)
        .map(|(asked, reply)| {
            Ok(Answer {
                asked,
                allowed: reply?.status.is_some_and(|s| s.allowed),
            })
        })
        .collect()
}

async fn read_guard(client: &Client, timeout: Duration) -> RemoteResult<FoundGuard> {
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    let (policy, binding) = futures::join!(
        with_deadline(timeout, policies.get_opt(setup::GUARD)),
        with_deadline(timeout, bindings.get_opt(setup::GUARD)),
    );
    Ok(FoundGuard {
        policy: policy?,
        binding: binding?,
    })
}

/// Reads the guard with the stored credentials; when they cannot, with the remote's context
/// in the user's kubeconfig, for a cluster attached by an older kubectl-mesh.
async fn guard_facts(
    remote: &Client,
    cluster: &MeshCluster,
    user_kubeconfig: &Kubeconfig,
    timeout: Duration,
) -> GuardFacts {
    let stored = read_guard(remote, timeout).await;
    let with_context = if stored.is_ok() {
        WithContext::Unused
    } else {
        read_guard_with_context(cluster, user_kubeconfig, timeout).await
    };
    GuardFacts {
        stored,
        with_context,
    }
}

/// Reads the guard through the remote's context in the user's kubeconfig, when it has that
/// context and it reaches that cluster.
async fn read_guard_with_context(
    cluster: &MeshCluster,
    user_kubeconfig: &Kubeconfig,
    timeout: Duration,
) -> WithContext {
    let admin = match setup::remote_context(cluster) {
        Some(context) if kubeconfig::select(user_kubeconfig, Some(context)).is_ok() => {
            kubeconfig::client(user_kubeconfig.clone(), Some(context))
                .await
                .ok()
        }
        _ => None,
    };
    let Some(admin) = admin else {
        return WithContext::Unused;
    };
    match with_deadline(timeout, mesh_core::remote::cluster_id(&admin)).await {
        Ok(id) if id != cluster.spec.cluster_id => WithContext::Elsewhere(id),
        Ok(_) => WithContext::Read(Box::new(read_guard(&admin, timeout).await)),
        Err(e) => WithContext::Read(Box::new(Err(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fake_apiserver::FakeApiserver;

    /// Once the remote answered who the credentials are, its reads are made at once: a remote
    /// slow to answer each costs about one answer's time, not one per read. (Paused time: the
    /// elapsed time is the fake's delays, exactly.)
    #[tokio::test(start_paused = true)]
    async fn a_remote_that_answered_is_read_all_at_once() {
        const ANSWER: Duration = Duration::from_secs(5);
        // Authenticated, refused everything: every read gets an answer, after `ANSWER`.
        let remote = FakeApiserver::default();
        remote.state().forbidden = true;
        remote.state().delay = Some(ANSWER);
        let primary = FakeApiserver::default();
        let cluster = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let started = tokio::time::Instant::now();
        let facts = remote_facts(
            &primary.client(),
            &remote.client(),
            &cluster,
            &Kubeconfig::default(),
            &SyncRule::default(),
            Duration::from_secs(60),
        )
        .await;
        let RemoteFacts::Asked(asked) = facts else {
            panic!("not asked: {facts:?}");
        };
        assert!(asked.reads.is_some(), "{asked:?}");
        let elapsed = started.elapsed();
        assert!(elapsed < ANSWER * 4, "{elapsed:?}");
    }

    /// A cluster being detached is judged by one line ([`super::super::cluster::judge_mesh`]):
    /// its Secret and remote were read for nothing, each read a remote that may be gone could
    /// hold for the whole timeout. Only the MeshClusters and the primary's namespaces are read.
    #[tokio::test]
    async fn nothing_is_read_of_a_cluster_being_detached() {
        use mesh_core::fake_apiserver::{answering, status};
        let east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let leaving = crate::mesh_state::fixtures::being_detached(east, "example.com/backup");
        let clusters = serde_json::json!({
            "apiVersion": "kubectl-mesh.io/v1alpha1", "kind": "MeshClusterList",
            "metadata": {}, "items": [leaving],
        });
        let (primary, requests) = answering(move |_, path| {
            let body = match path {
                "/apis/kubectl-mesh.io/v1alpha1/meshclusters" => clusters.clone(),
                "/api/v1/namespaces" => serde_json::json!({
                    "apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [],
                }),
                _ => return status(http::StatusCode::NOT_FOUND, "NotFound", "not found"),
            };
            (http::StatusCode::OK, body)
        });
        let facts = mesh(
            &primary,
            &Kubeconfig::default(),
            &SyncRule::default(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(&facts, MeshFacts::Attached(attached) if attached.remotes[0].is_none()),
            "{facts:?}"
        );
        assert_eq!(
            requests.all(),
            [
                "GET /apis/kubectl-mesh.io/v1alpha1/meshclusters",
                "GET /api/v1/namespaces"
            ],
        );
    }
}
