//! A rotation while label changes flow: none is lost or refused, and every old token is
//! revoked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use mesh_core::{MESH_NAMESPACE, cluster::MeshCluster};
use mesh_e2e::tokens::{answer_to, revoked, stored_kubeconfig, token_of};
use mesh_e2e::{assert_success, carries, describe, fixtures::output, text};
use mesh_testenv::TestEnv;

use crate::support::{DEADLINE, SYNC_TOKEN, detach, one_remote, pushes, rotate, token_secrets};

/// The three kubeconfigs stored for cluster `name` (sync, services view, Istio's remote
/// secret), by what they are for.
async fn stored_credentials(
    env: &TestEnv,
    name: &str,
) -> anyhow::Result<[(&'static str, String); 3]> {
    Ok([
        (
            "sync",
            stored_kubeconfig(
                env,
                MESH_NAMESPACE,
                &format!("cluster-{name}"),
                "kubeconfig",
            )
            .await?,
        ),
        (
            "view",
            stored_kubeconfig(
                env,
                MESH_NAMESPACE,
                &format!("cluster-{name}-view"),
                "kubeconfig",
            )
            .await?,
        ),
        (
            "istio",
            stored_kubeconfig(
                env,
                "istio-system",
                &format!("istio-remote-secret-{name}"),
                name,
            )
            .await?,
        ),
    ])
}

#[tokio::test]
async fn rotation_under_a_stream_of_label_changes_loses_none_and_revokes_the_old_tokens()
-> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote(
        &["--istio-remote-secret", "--services-view"],
        &[],
        "rotation",
    )
    .await?;
    let name = remote.name.clone();

    let old = stored_credentials(&env, &name).await?;
    for (_, kc) in &old {
        assert_eq!(answer_to(kc).await?, 201, "the attached tokens work");
    }
    let before = pushes(&mesh).await?;

    // A change every 100 ms on the primary for as long as the rotation runs.
    let primary = env.primary().client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let (primary, ns, stop) = (primary.clone(), ns.clone(), stop.clone());
        tokio::spawn(async move {
            let api: Api<Namespace> = Api::all(primary);
            let mut n = 0u32;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let patch =
                    serde_json::json!({"metadata": {"labels": {"istio.io/rev": format!("v{n}")}}});
                if let Err(e) = api
                    .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    failures.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let rotated = rotate(&env, &remote).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (changes, failures) = changer.await?;
    assert_success(&rotated);
    assert!(failures.is_empty(), "label changes failed: {failures:?}");
    eprintln!("rotation took {took:.2?} under {changes} label changes");
    assert!(changes >= 10, "only {changes} changes during the rotation");

    // No change lost: the remote ends with the last one.
    let last = BTreeMap::from([("istio.io/rev".to_owned(), format!("v{changes}"))]);
    carries(&remote, &ns, &last, DEADLINE).await?;
    // And no push was refused (401) or failed otherwise during the rotation.
    let after = pushes(&mesh).await?;
    for result in ["forbidden", "failed", "unreachable", "timed_out"] {
        let grew =
            after.get(result).copied().unwrap_or(0.0) - before.get(result).copied().unwrap_or(0.0);
        assert_eq!(
            grew, 0.0,
            "pushes {result} during rotation: {before:?} -> {after:?}"
        );
    }
    assert!(
        after.get("applied").copied().unwrap_or(0.0)
            > before.get("applied").copied().unwrap_or(0.0),
        "no push applied: {after:?}"
    );

    // The old tokens are revoked, the new ones work.
    let new = stored_credentials(&env, &name).await?;
    for ((what, old), (_, new)) in old.iter().zip(&new) {
        assert_ne!(token_of(old)?, token_of(new)?, "{what} token unchanged");
        revoked(&format!("the old {what} token"), old).await?;
        assert_eq!(answer_to(new).await?, 201, "new {what} token refused");
    }
    // `kubectl auth whoami` with the old token, as a user would try it.
    let old_file = tempfile::NamedTempFile::new()?;
    std::fs::write(old_file.path(), &old[0].1)?;
    let mut whoami = std::process::Command::new(env.binaries().kubectl());
    whoami
        .arg("--kubeconfig")
        .arg(old_file.path())
        .args(["auth", "whoami"]);
    let whoami = output(whoami).await?;
    assert!(
        !whoami.status.success(),
        "whoami with the old token: {}",
        describe(&whoami)
    );
    assert!(
        text(&whoami.stderr).contains("Unauthorized") || text(&whoami.stderr).contains("401"),
        "{}",
        describe(&whoami)
    );
    assert_eq!(
        token_secrets(&remote).await?,
        vec![
            "kubectl-mesh-istio-reader-token".to_owned(),
            SYNC_TOKEN.to_owned(),
            "kubectl-mesh-view-token".to_owned()
        ],
        "one token Secret per identity, no standby left"
    );
    // The webhook reports the credentials it used: the stored Secret's version.
    let mc = Api::<MeshCluster>::all(primary.clone()).get(&name).await?;
    let stored = Api::<Secret>::namespaced(primary.clone(), MESH_NAMESPACE)
        .get(&format!("cluster-{name}"))
        .await?;
    assert_eq!(
        mc.status.and_then(|s| s.observed_credentials),
        stored.metadata.resource_version
    );

    // Detach leaves nothing behind, standbys included.
    let detached = detach(&env, &remote).await?;
    assert_success(&detached);
    assert!(token_secrets(&remote).await?.is_empty());
    Ok(())
}
