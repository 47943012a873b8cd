//! The shipped webhook configuration's matchConditions: the primary's apiserver calls the
//! webhook for managed-label changes only, so every other namespace edit costs no round trip.
//! Alone in its test binary: it counts every review the webhook answers.

use mesh_e2e::{
    create_everywhere, kubectl, label_on_primary, labels, managed_labels, reviews_answered,
    shared_mesh,
};

#[tokio::test]
async fn only_managed_label_changes_reach_the_webhook() -> anyhow::Result<()> {
    let (env, mesh) = shared_mesh(1).await;
    let ca = mesh.ca_pem()?;
    let ns = create_everywhere(env, "match").await?;
    let before = reviews_answered(mesh.metrics_address(), &ca).await?;

    for (i, args) in [vec!["team=a"], vec!["team=b", "tier=web"], vec!["tier-"]]
        .into_iter()
        .enumerate()
    {
        label_on_primary(env, &ns, &args).await?;
        let note = format!("note=edit-{i}");
        kubectl(
            env,
            env.primary(),
            &["annotate", "namespace", &ns, "--overwrite", &note],
        )
        .await?;
    }
    assert_eq!(
        reviews_answered(mesh.metrics_address(), &ca).await?,
        before,
        "unrelated edits were sent to the webhook"
    );

    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    assert_eq!(
        reviews_answered(mesh.metrics_address(), &ca).await?,
        before + 1.0,
        "a managed-label change is sent to the webhook once"
    );
    assert_eq!(
        managed_labels(&env.remotes()[0], &ns).await?,
        Some(labels(&[("istio-injection", "enabled")]))
    );
    Ok(())
}
