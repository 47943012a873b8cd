//! The files in manifests/ are accepted by a real apiserver.

use std::path::PathBuf;

use anyhow::Context as _;
use mesh_e2e::{kubectl, shared_env};

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

#[tokio::test]
async fn every_manifest_passes_a_server_side_dry_run() -> anyhow::Result<()> {
    let env = shared_env(0).await;
    let primary = env.primary();
    let dir = manifests_dir();
    let dir = dir.to_str().context("manifests path is not UTF-8")?;
    // Namespaced objects are validated against their namespace, which a dry run of the
    // namespace itself does not create: create it for real first.
    let namespace = format!("{dir}/namespace.yaml");
    kubectl(env, primary, &["apply", "-f", &namespace]).await?;

    let applied = kubectl(
        env,
        primary,
        &["apply", "--dry-run=server", "-o", "name", "-k", dir],
    )
    .await?;
    for expected in [
        "customresourcedefinition.apiextensions.k8s.io/meshclusters.kubectl-mesh.io",
        "namespace/kubectl-mesh",
        "deployment.apps/mesh-webhook",
        "service/mesh-webhook",
        "networkpolicy.networking.k8s.io/mesh-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/kubectl-mesh",
    ] {
        assert!(
            applied.contains(expected),
            "{expected} not applied:\n{applied}"
        );
    }
    // Every file listed in the kustomization made it in: nothing skipped silently.
    let kustomization = std::fs::read_to_string(manifests_dir().join("kustomization.yaml"))?;
    let files = kustomization
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .count();
    assert!(applied.lines().count() >= files, "{applied}");
    Ok(())
}
