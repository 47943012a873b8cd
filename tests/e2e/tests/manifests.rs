//! The files in manifests/ are accepted by a real apiserver.

use std::path::PathBuf;

use mesh_e2e::{run, shared_env};

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

#[tokio::test]
async fn every_manifest_passes_a_server_side_dry_run() -> anyhow::Result<()> {
    let env = shared_env(0).await;
    let primary = env.primary();
    // Namespaced objects are validated against their namespace, which a dry run of the
    // namespace itself does not create: create it for real first.
    let mut namespace = env.kubectl(primary);
    namespace
        .args(["apply", "-f"])
        .arg(manifests_dir().join("namespace.yaml"));
    run(namespace).await?;

    let mut apply = env.kubectl(primary);
    apply
        .args(["apply", "--dry-run=server", "-o", "name", "-k"])
        .arg(manifests_dir());
    let output = run(apply).await?;
    let applied = String::from_utf8(output.stdout)?;
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
