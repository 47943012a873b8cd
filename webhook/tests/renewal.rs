//! Renewal of a time-bound stored token (`attach --token-ttl`) against real control planes: a
//! primary holding the cluster's Secret, and a remote whose ServiceAccount the stored token was
//! issued for by a real TokenRequest, bound to a Secret of the remote. The registry entry is
//! built from the stored Secret as the reconciler builds it (`Remotes::refresh`), so its
//! fingerprint and token claims are the real ones. One environment serves every test of the
//! file; each test attaches a cluster of its own (fresh namespaces on both sides).

use std::sync::Arc;

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{Api, Client, Resource, api::DeleteParams, config::Kubeconfig};
use mesh_core::{
    cluster::{KUBECONFIG_KEY, MeshCluster},
    fixtures::{jwt, mesh_cluster, stored_credentials},
    kubeconfig::validate_stored,
    remote::{Remote, RemoteOptions, Remotes},
    token,
};
use mesh_testenv::{Cluster, Options, TestEnv};
use mesh_webhook::renewal::{Renewal, renew_token};
use serde_json::json;
use tokio::sync::OnceCell;

/// The stored token's lifetime.
const LIFETIME: u64 = 3600;
/// The ServiceAccount the stored token is issued for, on the remote.
const ACCOUNT: &str = "mesh-east";
/// The Secret of the remote the stored token is bound to.
const BOUND_TO: &str = "mesh-token";

/// A primary and one remote, shared by every test of this binary (a start takes seconds).
async fn env() -> &'static TestEnv {
    static ENV: OnceCell<TestEnv> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        TestEnv::start(Options::with_remotes(1))
            .await
            .unwrap_or_else(|e| panic!("starting the test environment: {e:#}"))
    })
    .await
}

/// A cluster attached for one test, with the registry entry built from its stored Secret.
struct Attached {
    primary: Client,
    remote: Client,
    /// The mesh namespace on the primary, holding Secret `cluster-east`.
    mesh: String,
    /// The namespace of [`ACCOUNT`] on the remote.
    account_namespace: String,
    cluster: MeshCluster,
    entry: Arc<Remote>,
    /// The Secret as the entry was built from it.
    stored: Secret,
}

impl Attached {
    /// On the remote: ServiceAccount [`ACCOUNT`] of a fresh namespace, which may ask tokens for
    /// itself, and Secret [`BOUND_TO`]; on the primary, a fresh mesh namespace holding the
    /// cluster's Secret, a kubeconfig of that account with a token of [`LIFETIME`] bound to
    /// that Secret.
    async fn new() -> anyhow::Result<Self> {
        let env = env().await;
        let remote_cluster = &env.remotes()[0];
        let (primary, remote) = (
            env.primary().client().await?,
            remote_cluster.client().await?,
        );
        let n = unique();
        let (mesh, account_namespace) = (format!("mesh-{n}"), format!("mesh-remote-{n}"));
        create(
            &primary,
            None,
            json!({"kind": "Namespace", "metadata": {"name": mesh}}),
        )
        .await?;
        let ns = Some(account_namespace.as_str());
        for object in [
            json!({"kind": "Namespace", "metadata": {"name": account_namespace}}),
            json!({"kind": "ServiceAccount", "metadata": {"name": ACCOUNT}}),
            json!({"kind": "Secret", "metadata": {"name": BOUND_TO}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": ACCOUNT},
                "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                    "resourceNames": [ACCOUNT], "verbs": ["create"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": ACCOUNT},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": ACCOUNT},
                "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT,
                    "namespace": account_namespace}]}),
        ] {
            let ns = if object["kind"] == "Namespace" {
                None
            } else {
                ns
            };
            create(&remote, ns, object).await?;
        }
        let yaml = account_kubeconfig(remote_cluster, &remote, &account_namespace).await?;
        let mut secret = stored_credentials("east", &yaml);
        secret.metadata.uid = None;
        secret.metadata.resource_version = None;
        let stored = secrets(&primary, &mesh)
            .create(&Default::default(), &secret)
            .await?;
        let mut cluster = mesh_cluster("east", "unchecked-by-renewal");
        cluster.spec.server = remote_cluster.server.clone();
        let entry = Remotes::new(RemoteOptions::default())
            .refresh(&cluster, &mesh, Some(&stored))
            .await
            .ok_or_else(|| anyhow::anyhow!("no entry built"))?;
        anyhow::ensure!(entry.client().is_some(), "no client built: {entry:?}");
        Ok(Self {
            primary,
            remote,
            mesh,
            account_namespace,
            cluster,
            entry,
            stored,
        })
    }

    /// What the leader's renewal of the entry does now.
    async fn renew(&self) -> Result<Renewal, String> {
        let claims = self
            .entry
            .token()
            .expect("the stored token has time claims");
        let client = self.entry.client().expect("a client");
        renew_token(
            &self.primary,
            &self.mesh,
            &self.cluster,
            client,
            self.entry.fingerprint(),
            claims,
        )
        .await
    }

    /// The cluster's Secret on the primary now.
    async fn secret(&self) -> anyhow::Result<Secret> {
        Ok(secrets(&self.primary, &self.mesh)
            .get("cluster-east")
            .await?)
    }

    /// Replaces the cluster's Secret with one holding `yaml`, as an admin's edit would.
    async fn edit(&self, yaml: &str) -> anyhow::Result<Secret> {
        let mut secret = self.secret().await?;
        let kubeconfig = k8s_openapi::ByteString(yaml.as_bytes().to_vec());
        secret.data = Some([(KUBECONFIG_KEY.to_owned(), kubeconfig)].into());
        let api = secrets(&self.primary, &self.mesh);
        Ok(api
            .replace("cluster-east", &Default::default(), &secret)
            .await?)
    }

    /// Asks for the renewal of a Secret changed since the entry was built (`now`, as the
    /// apiserver stored it): nothing is asked for or written, whatever `now` holds.
    async fn assert_stale_and_untouched(&self, now: &Secret) -> anyhow::Result<()> {
        assert_eq!(self.renew().await, Ok(Renewal::Stale));
        let after = self.secret().await?;
        assert_eq!(
            after.metadata.resource_version,
            now.metadata.resource_version
        );
        assert_eq!(stored_yaml(&after), stored_yaml(now));
        Ok(())
    }
}

fn secrets(client: &Client, namespace: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), namespace)
}

/// A number unique within this test run, for namespace names.
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the object `object` (core v1 unless it names its apiVersion) in `namespace`.
async fn create(
    client: &Client,
    namespace: Option<&str>,
    mut object: serde_json::Value,
) -> anyhow::Result<()> {
    if object["apiVersion"].is_null() {
        object["apiVersion"] = json!("v1");
    }
    let object: kube::api::DynamicObject = serde_json::from_value(object)?;
    let types = object.types.clone().unwrap_or_default();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", &types.api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<kube::api::DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.create(&Default::default(), &object).await?;
    Ok(())
}

/// A stored kubeconfig of [`ACCOUNT`] of `namespace` on `cluster` (its server, its CA, one
/// name for cluster, user and context), with a token of [`LIFETIME`] from a real TokenRequest,
/// bound to Secret [`BOUND_TO`] of that namespace.
async fn account_kubeconfig(
    cluster: &Cluster,
    admin: &Client,
    namespace: &str,
) -> anyhow::Result<String> {
    let bound = secrets(admin, namespace).get(BOUND_TO).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(LIFETIME as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                name: Some(BOUND_TO.to_owned()),
                uid: bound.meta().uid.clone(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(ACCOUNT, &Default::default(), &request)
        .await?;
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    let admin_kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let ca = admin_kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority_data.clone());
    Ok(json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "east",
        "clusters": [{"name": "east",
            "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": "east", "user": {"token": token}}],
        "contexts": [{"name": "east", "context": {"cluster": "east", "user": "east"}}],
    })
    .to_string())
}

/// The kubeconfig a cluster Secret holds.
fn stored_yaml(secret: &Secret) -> String {
    let data = &secret.data.as_ref().expect("data")[KUBECONFIG_KEY];
    String::from_utf8(data.0.clone()).expect("utf-8")
}

/// The bearer token of the kubeconfig a cluster Secret holds.
fn stored_token(secret: &Secret) -> String {
    token::kubeconfig_token(&stored_yaml(secret)).expect("a token")
}

/// Who the remote says `token` authenticates (a real TokenReview), if anyone.
async fn reviewed(remote: &Client, token: &str) -> anyhow::Result<Option<String>> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(remote.clone())
        .create(&Default::default(), &review)
        .await?;
    Ok(reviewed
        .status
        .filter(|s| s.authenticated == Some(true))
        .and_then(|s| s.user)
        .and_then(|u| u.username))
}

#[tokio::test]
async fn renews_the_token_of_the_version_the_client_was_built_from_into_it() -> anyhow::Result<()> {
    let attached = Attached::new().await?;
    assert_eq!(attached.renew().await, Ok(Renewal::Renewed));
    let (old, now) = (stored_token(&attached.stored), attached.secret().await?);
    let renewed = stored_token(&now);
    assert_ne!(renewed, old, "the stored token was not replaced");
    // A token of the remote for the same account, of the same lifetime, bound to the same Secret.
    let account = format!(
        "system:serviceaccount:{}:{ACCOUNT}",
        attached.account_namespace
    );
    assert_eq!(reviewed(&attached.remote, &renewed).await?, Some(account));
    let lifetime = token::claims(&renewed).and_then(|c| c.lifetime());
    assert_eq!(lifetime.map(|l| l.as_secs()), Some(LIFETIME as i64));
    assert_eq!(token::bound_secret(&renewed), token::bound_secret(&old));
    // The rest of the kubeconfig is the one the client was built from.
    let expected = token::with_kubeconfig_token(&stored_yaml(&attached.stored), &renewed);
    assert_eq!(Some(stored_yaml(&now)), expected);
    assert_eq!(
        validate_stored(&Kubeconfig::from_yaml(&stored_yaml(&now))?),
        Ok(())
    );
    Ok(())
}

/// Someone who may update the Secret (not read it) wrote another server and a forged token,
/// unbound and of a lifetime of their choosing, after the client was built: nothing is written.
#[tokio::test]
async fn a_secret_edited_since_the_client_was_built_is_neither_renewed_nor_written()
-> anyhow::Result<()> {
    let attached = Attached::new().await?;
    let forged = jwt(json!({
        "sub": format!("system:serviceaccount:{}:{ACCOUNT}", attached.account_namespace),
        "iat": 0, "exp": 315_360_000,
    }));
    let yaml = stored_yaml(&attached.stored)
        .replace(&env().await.remotes()[0].server, "https://evil.example");
    let edited = attached
        .edit(&token::with_kubeconfig_token(&yaml, &forged).expect("rewritten"))
        .await?;
    attached.assert_stale_and_untouched(&edited).await
}

/// The Secret was deleted and created again, the same kubeconfig in it: another object than
/// the one the client was built from (another UID), so nothing is written.
#[tokio::test]
async fn a_secret_created_again_since_the_client_was_built_is_neither_renewed_nor_written()
-> anyhow::Result<()> {
    let attached = Attached::new().await?;
    let api = secrets(&attached.primary, &attached.mesh);
    api.delete("cluster-east", &DeleteParams::default()).await?;
    let mut again = attached.stored.clone();
    again.metadata = kube::api::ObjectMeta {
        name: again.metadata.name,
        ..Default::default()
    };
    let again = api.create(&Default::default(), &again).await?;
    assert_ne!(again.metadata.uid, attached.stored.metadata.uid);
    attached.assert_stale_and_untouched(&again).await
}

/// A kubeconfig that breaks the rule of stored kubeconfigs (an http server) is never written
/// with a new token in it. The registry builds no client from such a kubeconfig, so the entry
/// here pairs the Secret's current version with the client of the same account built before.
#[tokio::test]
async fn a_kubeconfig_that_breaks_the_rule_is_neither_renewed_nor_written() -> anyhow::Result<()> {
    let attached = Attached::new().await?;
    let server = &env().await.remotes()[0].server;
    let plain = stored_yaml(&attached.stored).replace(server, &server.replace("https:", "http:"));
    let now = attached.edit(&plain).await?;
    let fingerprint = mesh_core::remote::Fingerprint::of(&attached.cluster, Some(&now));
    let claims = mesh_core::remote::stored_token_claims(&now).expect("time claims");
    let client = attached.entry.client().expect("a client");
    let renewed = renew_token(
        &attached.primary,
        &attached.mesh,
        &attached.cluster,
        client,
        &fingerprint,
        claims,
    )
    .await;
    let error = renewed.expect_err("renewed");
    assert!(error.contains("not https"), "{error}");
    let after = attached.secret().await?;
    assert_eq!(
        after.metadata.resource_version,
        now.metadata.resource_version
    );
    Ok(())
}
