//! The sync scope: the token stored on the primary may change the managed labels of a remote
//! namespace and nothing else of it, and `check` tells when the remote stops enforcing that.

use anyhow::ensure;
use k8s_openapi::api::{
    admissionregistration::v1::ValidatingAdmissionPolicyBinding, core::v1::Namespace,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::{DEFAULT_TIMEOUT, eventually, unique_name};
use serde_json::{Value, json};

use crate::support::*;

/// The description of check's sync scope check.
const SCOPE_CHECK: &str = "credentials may change only the managed labels";

/// A merge patch of `ns`'s metadata as the stored token; the refusal's message, if refused.
async fn as_sync(stored: &Api<Namespace>, ns: &str, metadata: Value) -> Option<String> {
    let patch = Patch::Merge(json!({ "metadata": metadata }));
    let result = stored.patch(ns, &PatchParams::default(), &patch).await;
    result.err().map(|e| e.to_string())
}

#[tokio::test]
async fn the_stored_token_may_change_only_managed_labels() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let ns = unique_name("scoped");
    create_labelled_namespace(remote, &ns, json!({"team": "a"})).await?;
    attach(env, remote, &[]).await?;
    let stored = Api::<Namespace>::all(stored_client(env, &remote.name).await?.0);

    for (what, metadata) in [
        ("another label", json!({"labels": {"team": "b"}})),
        ("a removed label", json!({"labels": {"team": null}})),
        (
            "an annotation",
            json!({"annotations": {"example.com/x": "y"}}),
        ),
        ("a finalizer", json!({"finalizers": ["example.com/hold"]})),
        (
            "a managed label and another",
            json!({"labels": {"istio-injection": "enabled", "team": "c"}}),
        ),
    ] {
        let refusal = as_sync(&stored, &ns, metadata).await;
        ensure!(
            refusal
                .as_deref()
                .is_some_and(|r| r.contains("kubectl-mesh-sync-scope")),
            "{what}: {refusal:?}"
        );
    }
    let allowed = as_sync(
        &stored,
        &ns,
        json!({"labels": {"istio-injection": "enabled"}}),
    )
    .await;
    ensure!(allowed.is_none(), "a managed label: {allowed:?}");
    let excluded = as_sync(
        &stored,
        MESH_NS,
        json!({"labels": {"istio-injection": "enabled"}}),
    )
    .await;
    ensure!(
        excluded.is_some(),
        "a managed label of an excluded namespace went through"
    );

    // The binding gone, check says so (once the apiserver has unloaded it).
    Api::<ValidatingAdmissionPolicyBinding>::all(remote.client().await?)
        .delete("kubectl-mesh-sync-scope", &DeleteParams::default())
        .await?;
    eventually(
        "check sees the unenforced scope",
        DEFAULT_TIMEOUT,
        || async {
            let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
            let check = report.cluster_check(&remote.name, SCOPE_CHECK).cloned();
            Ok(check.filter(|c| c.result == "error"))
        },
    )
    .await?;

    detach(env, remote, &remote.name, &[]).await?;
    assert_nothing_left(env, remote, &remote.name).await?;
    delete_namespace(remote, &ns).await
}
