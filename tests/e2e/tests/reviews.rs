//! CREATE and DELETE admission reviews through the real webhook, each on its own: a namespace
//! created on the primary with a managed label, and a labelled namespace deleted there, reach
//! the webhook (matchConditions compare with the absent old or new object), which pushes the
//! change to every remote before it answers, as for a label edit. On DELETE the remotes end
//! with no managed label (a namespace being deleted on the primary carries none by the rule);
//! the remote namespace itself stays. A CREATE of a namespace that exists, which the apiserver
//! refuses only after admission, changes no remote.
//!
//! Alone in its test binary: its tests count every review the webhook answers, so they take
//! turns.

use std::process::Output;

use anyhow::Context as _;
use mesh_e2e::{
    assert_landed, assert_remotes, create_everywhere, create_namespace, describe, fixtures::output,
    injection_enabled, kubectl_output, label_on_primary, labels, namespaces, reviews_with_outcome,
    shared_mesh, text, unique_name,
};
use mesh_testenv::TestEnv;
use mesh_webhook::admission::PROPAGATION_ANNOTATION;
use tokio::sync::Mutex;

/// Held by each test while it counts reviews.
static TURN: Mutex<()> = Mutex::const_new(());

/// `kubectl create -f` of a file holding namespace `name` labelled istio-injection=enabled;
/// kubectl's output, whatever its exit status.
async fn create_injected_from_file(env: &TestEnv, name: &str) -> anyhow::Result<Output> {
    let manifest = env.dir().join(format!("{name}.yaml"));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             istio-injection: enabled\n"
        ),
    )?;
    let file = manifest.to_str().context("manifest path is not UTF-8")?;
    let mut create = env.kubectl(env.primary());
    create.args(["create", "-f", file]);
    output(create).await
}

#[tokio::test]
async fn creating_a_labelled_namespace_pushes_its_label_before_kubectl_returns()
-> anyhow::Result<()> {
    let (env, mesh) = shared_mesh(2).await;
    let _turn = TURN.lock().await;
    let name = unique_name("created");
    // On the remotes first: namespaces are never created there, only labelled.
    for remote in env.remotes() {
        create_namespace(remote, &name).await?;
    }

    let (pushed, all) = reviews_with_outcome(mesh, "pushed").await?;
    let created = create_injected_from_file(env, &name).await?;
    assert!(created.status.success(), "{}", describe(&created));
    let warnings = text(&created.stderr);
    // Read at once: the webhook pushes before it answers the CREATE review.
    assert_remotes(
        env,
        &name,
        &injection_enabled(),
        &format!("the created namespace's label; kubectl said: {warnings}"),
    )
    .await?;
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?,
        (pushed + 1.0, all + 1.0),
        "the CREATE is sent to the webhook once and pushed"
    );
    assert_landed(env, &warnings, "istio-injection=enabled applied");
    // The CREATE review also mutates the new namespace: where its label landed.
    let created = namespaces(env.primary()).await?.get(&name).await?;
    let landed: serde_json::Value = serde_json::from_str(
        created
            .metadata
            .annotations
            .unwrap_or_default()
            .get(PROPAGATION_ANNOTATION)
            .map_or("null", String::as_str),
    )?;
    let expected: serde_json::Map<_, _> = env
        .remotes()
        .iter()
        .map(|r| (r.name.clone(), "applied".into()))
        .collect();
    assert_eq!(landed, serde_json::Value::Object(expected));
    Ok(())
}

#[tokio::test]
async fn creating_a_namespace_that_exists_changes_no_remote() -> anyhow::Result<()> {
    let (env, mesh) = shared_mesh(2).await;
    let _turn = TURN.lock().await;
    let name = create_everywhere(env, "recreated").await?;
    let disabled = labels(&[("istio-injection", "disabled")]);
    label_on_primary(env, &name, &["istio-injection=disabled"]).await?;
    assert_remotes(env, &name, &disabled, "the label before the create").await?;

    let (pushed, _) = reviews_with_outcome(mesh, "pushed").await?;
    let created = create_injected_from_file(env, &name).await?;
    assert!(
        !created.status.success() && text(&created.stderr).contains("AlreadyExists"),
        "the create must fail: {}",
        describe(&created)
    );
    // Read at once: a wrong push lands before the apiserver answers, and is reverted only
    // seconds later.
    assert_remotes(
        env,
        &name,
        &disabled,
        &format!(
            "after a failed create; kubectl said: {}",
            describe(&created)
        ),
    )
    .await?;
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?.0,
        pushed,
        "the CREATE of an existing namespace is not pushed"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_labelled_namespace_removes_its_label_before_kubectl_returns()
-> anyhow::Result<()> {
    let (env, mesh) = shared_mesh(2).await;
    let _turn = TURN.lock().await;
    let name = create_everywhere(env, "deleted").await?;
    label_on_primary(env, &name, &["istio-injection=enabled"]).await?;
    assert_remotes(
        env,
        &name,
        &injection_enabled(),
        "the label to be removed is there",
    )
    .await?;

    let (pushed, _) = reviews_with_outcome(mesh, "pushed").await?;
    // --wait=false: kubectl returns once the apiserver has answered the DELETE (and so the
    // webhook has), not after the namespace is finalized, when the reconciler could have
    // removed the label instead.
    let delete = ["delete", "namespace", &name, "--wait=false"];
    let warnings = text(&kubectl_output(env, env.primary(), &delete).await?.stderr);
    assert_remotes(
        env,
        &name,
        &labels(&[]),
        &format!("deleted on the primary (or gone already); kubectl said: {warnings}"),
    )
    .await?;
    // Only pushes are counted here: once the namespace is finalized, the namespace controller
    // deletes it once more, a review answered without a push that may already have come.
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?.0,
        pushed + 1.0,
        "the DELETE is sent to the webhook and pushed"
    );
    assert_landed(env, &warnings, "managed labels removed");
    Ok(())
}
