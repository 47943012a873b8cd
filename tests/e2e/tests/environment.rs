//! Proof that the test environment is real: namespaces live and die on every cluster, the
//! apiserver calls a webhook over TLS, and service-account tokens authenticate on their own
//! cluster only.

use std::collections::BTreeMap;

use anyhow::Context;

use axum::Json;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use mesh_e2e::{
    DEFAULT_TIMEOUT, HttpsServer, TestCertificate, eventually, run, shared_env, unique_name,
};
use serde_json::json;

async fn namespace_gone(api: &Api<Namespace>, name: &str) -> anyhow::Result<()> {
    eventually(
        &format!("namespace {name} deleted"),
        DEFAULT_TIMEOUT,
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

#[tokio::test]
async fn namespaces_live_and_die_on_every_cluster_with_kube_rs() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    for cluster in env.clusters() {
        let api: Api<Namespace> = Api::all(cluster.client().await?);
        let name = unique_name("kube-rs");
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
        let patch = json!({"metadata": {"labels": {"istio-injection": "enabled"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let stored = api.get(&name).await?;
        assert_eq!(
            stored
                .metadata
                .labels
                .unwrap_or_default()
                .get("istio-injection"),
            Some(&"enabled".to_string()),
            "label stored on {}",
            cluster.name
        );
        api.delete(&name, &DeleteParams::default()).await?;
        namespace_gone(&api, &name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn namespaces_live_and_die_on_every_cluster_with_kubectl() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    for cluster in env.clusters() {
        let name = unique_name("kubectl");
        let mut create = env.kubectl(cluster);
        create.args(["create", "namespace", &name]);
        run(create).await?;
        let mut label = env.kubectl(cluster);
        label.args(["label", "namespace", &name, "istio.io/rev=canary"]);
        run(label).await?;
        let mut get = env.kubectl(cluster);
        get.args([
            "get",
            "namespace",
            &name,
            "-o",
            "jsonpath={.metadata.labels.istio\\.io/rev}",
        ]);
        assert_eq!(
            String::from_utf8(run(get).await?.stdout)?,
            "canary",
            "on {}",
            cluster.name
        );
        // --wait makes kubectl return only once the namespace controller finished.
        let mut delete = env.kubectl(cluster);
        delete.args(["delete", "namespace", &name, "--wait=true", "--timeout=60s"]);
        run(delete).await?;
        let mut after = env.kubectl(cluster);
        after.args([
            "get",
            "namespace",
            &name,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        assert_eq!(
            String::from_utf8(run(after).await?.stdout)?,
            "",
            "{name} still on {}",
            cluster.name
        );
    }
    Ok(())
}

const CALLED_ANNOTATION: &str = "e2e.kubectl-mesh.io/webhook-called";

/// Answers every review with a patch that records the call on the object.
async fn mutate(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return Json(AdmissionResponse::invalid(error.to_string()).into_review()),
    };
    let has_annotations = request
        .object
        .as_ref()
        .is_some_and(|o| o.metadata.annotations.is_some());
    let mut ops = Vec::new();
    if !has_annotations {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", CALLED_ANNOTATION.replace('/', "~1")),
        "value": request.uid,
    }));
    let response = AdmissionResponse::from(&request);
    let response = match serde_json::from_value(serde_json::Value::Array(ops)) {
        Ok(patch) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::invalid(e.to_string())),
        Err(error) => AdmissionResponse::invalid(error.to_string()),
    };
    Json(response.into_review())
}

#[tokio::test]
async fn apiserver_calls_a_webhook_over_tls_and_applies_its_patch() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    let primary = env.primary();
    let client = primary.client().await?;
    let cert = TestCertificate::for_loopback()?;
    let server =
        HttpsServer::start(axum::Router::new().route("/mutate", post(mutate)), &cert).await?;

    // Scoped by a label so other tests sharing the primary never meet this webhook.
    let selector_label = unique_name("webhook-test");
    let name = unique_name("e2e-webhook");
    use base64::Engine;
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "e2e.kubectl-mesh.io",
            "clientConfig": {
                "url": format!("https://{}/mutate", server.addr),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&cert.ca_pem),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["namespaces"]}],
            "objectSelector": {"matchLabels": {"e2e-webhook": selector_label}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))?;
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks.create(&PostParams::default(), &webhook).await?;

    let namespace = unique_name("webhook-target");
    let mut create = env.kubectl(primary);
    create.args(["create", "namespace", &namespace]);
    run(create).await?;

    // The apiserver loads webhook configurations asynchronously, so the first edits may pass
    // before it knows the webhook: label again until the patch shows on the stored object.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut attempt = 0;
    let uid = eventually(
        "webhook patch on the stored namespace",
        DEFAULT_TIMEOUT,
        || {
            attempt += 1;
            let mut label = env.kubectl(primary);
            label.args([
                "label",
                "namespace",
                &namespace,
                "--overwrite",
                &format!("e2e-webhook={selector_label}"),
                &format!("e2e-attempt={attempt}"),
            ]);
            let namespaces = namespaces.clone();
            let namespace = namespace.clone();
            async move {
                run(label).await?;
                let stored = namespaces.get(&namespace).await?;
                let annotations: BTreeMap<String, String> =
                    stored.metadata.annotations.unwrap_or_default();
                Ok(annotations.get(CALLED_ANNOTATION).cloned())
            }
        },
    )
    .await?;
    assert!(!uid.is_empty(), "the patch carries the request uid");

    webhooks.delete(&name, &DeleteParams::default()).await?;
    Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}

/// A client that authenticates with `token` only, trusting `ca_pem`.
async fn token_client(server: &str, ca_pem: &[u8], token: &str) -> anyhow::Result<Client> {
    use base64::Engine;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn who_am_i(client: Client) -> Result<String, kube::Error> {
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

#[tokio::test]
async fn token_request_authenticates_on_its_own_cluster_only() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    let remote = &env.remotes()[0];
    let client = remote.client().await?;
    let namespace = unique_name("token");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "prober"}}))?,
        )
        .await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request("prober", &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest returned no status")?
        .token;

    // Each cluster's CA comes from its admin kubeconfig; only the token differs in trust.
    let ca_of = |cluster: &mesh_testenv::Cluster| -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(
            cluster
                .kubeconfig
                .parent()
                .context("dir")?
                .join(&cluster.name)
                .join("ca.crt"),
        )?)
    };
    let own = token_client(&remote.server, &ca_of(remote)?, &token).await?;
    assert_eq!(
        who_am_i(own).await?,
        format!("system:serviceaccount:{namespace}:prober")
    );
    for other in env.clusters().iter().filter(|c| c.name != remote.name) {
        let foreign = token_client(&other.server, &ca_of(other)?, &token).await?;
        match who_am_i(foreign).await {
            Err(kube::Error::Api(status)) if status.code == 401 => {}
            other_result => panic!(
                "token of {} on {}: expected 401, got {other_result:?}",
                remote.name, other.name
            ),
        }
    }
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}
