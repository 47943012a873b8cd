//! A replica that does not lead picks the rotated credentials up too.

use mesh_e2e::tokens::revoked;
use mesh_e2e::{assert_success, eventually, pushes_by_result, route_admission_to};

use crate::support::{DEADLINE, one_remote, rotate, stored_sync};

/// A replica that does not lead (and so never writes status) reloads the stored credentials
/// when rotate replaces them: its pushes go on with the new token once the old one is revoked.
#[tokio::test]
async fn a_follower_replica_pushes_with_the_rotated_token() -> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote(&[], &[], "follower").await?;
    let ca = mesh.ca_pem()?;
    let name = remote.name.clone();
    let follower = mesh.start_replica(&env, "replica-b").await?;
    route_admission_to(&env, &follower.listen).await?;
    // The apiserver picks the new URL up asynchronously: relabel until the follower pushed.
    let mut revision = 0;
    eventually("the follower pushes", DEADLINE, || {
        revision += 1;
        let (env, ns, ca, follower) = (&env, &ns, &ca, &follower);
        async move {
            mesh_e2e::label_on_primary(env, ns, &[&format!("istio.io/rev=r{revision}")]).await?;
            let pushed = pushes_by_result(&follower.metrics, ca).await?;
            Ok((pushed.get("applied").copied().unwrap_or(0.0) > 0.0).then_some(()))
        }
    })
    .await?;

    let old = stored_sync(&env, &name).await?;
    let rotated = rotate(&env, &remote).await?;
    assert_success(&rotated);
    revoked("the old token", &old).await?;

    let before = pushes_by_result(&follower.metrics, &ca).await?;
    for value in ["after-1", "after-2", "after-3"] {
        let warnings =
            mesh_e2e::label_on_primary(&env, &ns, &[&format!("istio.io/rev={value}")]).await?;
        assert!(
            !warnings.contains("forbidden") && !warnings.contains("401"),
            "{warnings}"
        );
    }
    let after = pushes_by_result(&follower.metrics, &ca).await?;
    let grew = |result: &str| {
        after.get(result).copied().unwrap_or(0.0) - before.get(result).copied().unwrap_or(0.0)
    };
    assert_eq!(grew("forbidden"), 0.0, "{before:?} -> {after:?}");
    assert_eq!(grew("applied"), 3.0, "{before:?} -> {after:?}");
    Ok(())
}
