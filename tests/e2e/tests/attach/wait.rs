//! `attach --wait`: without a reconciler it times out with a hint, or stops at a Ctrl-C; with
//! one it reports the first sync.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::Api;
use mesh_core::cluster::MeshCluster;
use mesh_e2e::{create_labelled_namespace, fixtures, text, unique_name};

use crate::support::*;

#[tokio::test]
async fn wait_without_a_reconciler_times_out_with_a_hint() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let out = try_attach(env, remote, &["--wait", "--timeout", "2s"], &[]).await?;
    let line = failed_last_line(&out, "attach --wait")?;
    assert!(line.contains("timed out after 2s"), "{line}");
    assert!(
        line.contains("kubectl mesh sync --cluster remote-2"),
        "{line}"
    );
    // The attach itself stands.
    assert!(!primary_by_name(env, &remote.name).await?.is_empty());
    detach_leaving_nothing(env, remote, &remote.name).await
}

/// A real Ctrl-C (SIGINT) while `attach --wait` waits for a first sync that does not come (no
/// reconciler runs) ends it within seconds, saying that the cluster is attached; the attach
/// stands. (The steps' Ctrl-C handler used to swallow it: the wait ran to its timeout.)
#[tokio::test]
async fn ctrl_c_stops_the_wait_and_the_attach_stands() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let name = remote.name.as_str();
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = ["attach", &kubeconfig, "--yes", "--wait", "--timeout", "5m"];
    let command = fixtures::mesh_invocation(env, &args)?;
    let attached = format!("{name} attached (cluster id");
    let (seen, status) = signalled_after(command, &attached, "INT", Duration::from_secs(10))
        .await
        .context("attach --wait and Ctrl-C")?;
    ensure!(!status.success(), "the interrupted wait succeeded");
    let last = seen.last().cloned().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: {name} is attached; stopped waiting for its first sync (interrupted); \
             `kubectl mesh list` shows its sync"
        ),
        "{}",
        seen.join("\n")
    );
    // The attach stands.
    assert!(!primary_by_name(env, name).await?.is_empty());
    detach_leaving_nothing(env, remote, name).await
}

#[tokio::test]
async fn wait_reports_the_first_sync_of_a_running_webhook() -> anyhow::Result<()> {
    let env = env().await?;
    // The webhook reconciles every attached cluster while it runs: hold both remotes.
    let (remote, _lock_1) = take_remote(env, 0).await?;
    let (_, _lock_2) = take_remote(env, 1).await?;
    let mut options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
    options.attach_remotes = false;
    let mesh = mesh_testenv::mesh::Mesh::start(env, options).await?;

    // A primary namespace the remote lacks: the first sync reports it missing.
    let ns = unique_name("waited");
    let result = async {
        create_labelled_namespace(env.primary(), &ns, &[("istio-injection", "enabled")]).await?;
        attach(env, remote, &["--wait", "--timeout", "60s"]).await
    }
    .await;
    mesh.stop_webhook(env)?;
    let progress = result?;
    assert!(progress.contains("remote-1 in sync:"), "{progress}");
    assert!(
        progress.contains(&format!("missing on the remote: {ns}")),
        "{progress}"
    );
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(&remote.name)
        .await?;
    assert!(
        mc.status
            .is_some_and(|s| s.is_true(mesh_core::cluster::CONDITION_SYNCED))
    );

    detach_leaving_nothing(env, remote, &remote.name).await?;
    delete_namespace(env.primary(), &ns).await
}

#[tokio::test]
async fn without_wait_the_hinted_command_shows_the_cluster() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let progress = attach(env, remote, &[]).await?;
    let hinted = progress
        .lines()
        .find(|line| line.contains("--wait` waits for it"))
        .and_then(|line| line.split('`').nth(1))
        .with_context(|| format!("no hint of a command to run: {progress}"))?
        .to_owned();
    let args: Vec<&str> = hinted
        .strip_prefix("kubectl mesh ")
        .with_context(|| format!("the hint `{hinted}` is not a kubectl mesh command"))?
        .split_whitespace()
        .collect();
    let out = mesh(env, &args, &[]).await?;
    detach(env, remote, &remote.name, &[]).await?;
    // A table of clusters with their sync: a header NAME ... SYNCED, and the cluster's row.
    let shown = text(&out.stdout);
    let mut rows = shown
        .lines()
        .map(|row| row.split_whitespace().collect::<Vec<_>>());
    let header = rows.next().unwrap_or_default();
    assert!(
        out.status.success()
            && header.first() == Some(&"NAME")
            && header.contains(&"SYNCED")
            && rows.any(|row| row.first() == Some(&remote.name.as_str())),
        "`{hinted}` shows no sync of {}:\n{shown}{}",
        remote.name,
        text(&out.stderr)
    );
    assert_nothing_left(env, remote, &remote.name).await
}
