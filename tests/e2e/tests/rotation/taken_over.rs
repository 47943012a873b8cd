//! Rotation and a second primary: once another primary took the cluster over (`attach
//! --force`), rotate gives this one no token back, and the takeover revokes the standby token
//! an interrupted rotation stored here. remote-2 plays the second primary.

use anyhow::ensure;
use mesh_e2e::callers::refused_in_one_line;
use mesh_e2e::fixtures::{DEAD_WEBHOOK_URL, mesh_invocation_on};
use mesh_e2e::tokens::{answer_to, revoked};
use mesh_testenv::mesh::{Mesh, MeshOptions, run};
use mesh_testenv::{Cluster, TestEnv};

use crate::support::{STANDBY, SYNC_TOKEN, rotate, rotate_with, stored_sync, token_secrets};

/// A mesh of its own whose primary attached remote-1 only, and remote-2 installed as a second
/// primary (its webhook unreachable: only attach runs there).
async fn two_primaries() -> anyhow::Result<(TestEnv, Mesh)> {
    let mut options = MeshOptions::from_workspace()?;
    options.attach_remotes = false;
    let (env, mesh) = mesh_e2e::own_mesh_with(2, options).await?;
    mesh.attach_with(&env.remotes()[0], &["--wait"]).await?;
    let install = ["install", "--webhook-url", DEAD_WEBHOOK_URL];
    run(mesh_invocation_on(&env.remotes()[1], &install)?).await?;
    Ok((env, mesh))
}

/// The second primary takes `remote` over.
async fn take_over(env: &TestEnv, remote: &Cluster) -> anyhow::Result<()> {
    let kubeconfig = remote.kubeconfig.to_string_lossy();
    let args = [
        "attach",
        &kubeconfig,
        "--name",
        &remote.name,
        "--force",
        "--yes",
    ];
    run(mesh_invocation_on(&env.remotes()[1], &args)?).await?;
    Ok(())
}

/// Refused before any token is issued: nothing stored here, no standby for the account that
/// is the other primary's now.
#[tokio::test]
async fn rotate_refuses_a_cluster_another_primary_took_over() -> anyhow::Result<()> {
    let (env, _mesh) = two_primaries().await?;
    let remote = &env.remotes()[0];
    take_over(&env, remote).await?;
    let stored = stored_sync(&env, &remote.name).await?;
    let secrets = token_secrets(remote).await?;
    let line = refused_in_one_line(&rotate(&env, remote).await?, "rotate after a takeover")?;
    ensure!(
        line.contains("another primary") && line.contains("--force"),
        "{line}"
    );
    ensure!(
        stored_sync(&env, &remote.name).await? == stored,
        "a token was stored"
    );
    let after = token_secrets(remote).await?;
    ensure!(
        after == secrets,
        "token Secrets {secrets:?} became {after:?}"
    );
    Ok(())
}

/// This primary's stored kubeconfig holds the standby token: the takeover revokes it too.
#[tokio::test]
async fn a_takeover_revokes_the_standby_an_interrupted_rotation_stored() -> anyhow::Result<()> {
    let (env, mesh) = two_primaries().await?;
    let remote = &env.remotes()[0];
    // Without a webhook to use the standby token, rotate stops with it stored.
    mesh.stop_webhook(&env)?;
    let stopped = rotate_with(&env, remote, &["--timeout", "5s"]).await?;
    ensure!(
        !stopped.status.success(),
        "rotate without a webhook succeeded"
    );
    let secrets = token_secrets(remote).await?;
    ensure!(
        secrets == [SYNC_TOKEN, STANDBY],
        "no standby stored: {secrets:?}"
    );
    let standby = stored_sync(&env, &remote.name).await?;
    ensure!(
        answer_to(&standby).await? == 201,
        "the standby token does not work"
    );
    take_over(&env, remote).await?;
    revoked("the standby token stored before the takeover", &standby).await
}
