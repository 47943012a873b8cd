//! A rotation that stops midway, for want of a webhook or by Ctrl-C after any step, leaves
//! stored credentials that work, and a re-run finishes it.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kubectl_mesh::cmd::attach::{Step, hooks::STALLED};
use mesh_core::{MESH_NAMESPACE, cluster::MeshCluster};
use mesh_e2e::signals::{rerun_line, rerun_naming_kubeconfigs, signalled_after};
use mesh_e2e::tokens::{answer_to, revoked, token_of};
use mesh_e2e::{
    assert_success, describe,
    fixtures::{mesh_command, offline_invocation, output},
    text,
};
use serde_json::json;

use crate::support::{
    DEADLINE, STANDBY, SYNC_TOKEN, injection_syncs, one_remote, remote_command, rotate,
    rotate_with, stored_sync, token_secrets,
};

#[tokio::test]
async fn an_interrupted_rotation_keeps_a_working_token_and_a_rerun_finishes_it()
-> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote(&[], &[], "interrupted").await?;
    let name = remote.name.clone();
    let old = stored_sync(&env, &name).await?;

    // Without a webhook to use the new token, rotate stops after storing it, before revoking.
    env.stop_process(mesh_testenv::mesh::WEBHOOK_PROCESS)?;
    let stopped = rotate_with(&env, &remote, &["--timeout", "5s"]).await?;
    assert!(
        !stopped.status.success(),
        "rotate without a webhook: {}",
        describe(&stopped)
    );
    let err = text(&stopped.stderr);
    assert!(err.contains("the previous token still works"), "{err}");
    let midway = stored_sync(&env, &name).await?;
    assert_ne!(
        token_of(&old)?,
        token_of(&midway)?,
        "the standby token is stored"
    );
    assert_eq!(
        answer_to(&old).await?,
        201,
        "the old token is not revoked yet"
    );
    assert_eq!(answer_to(&midway).await?, 201, "the stored token works");
    assert_eq!(
        token_secrets(&remote).await?,
        vec![SYNC_TOKEN.to_owned(), STANDBY.to_owned()]
    );

    // The webhook back, the re-run finishes the job.
    mesh.start_webhook(&env).await?;
    let rerun = rotate(&env, &remote).await?;
    assert_success(&rerun);
    let last = stored_sync(&env, &name).await?;
    revoked("the old token", &old).await?;
    revoked("the standby token", &midway).await?;
    assert_eq!(answer_to(&last).await?, 201);
    assert_eq!(token_secrets(&remote).await?, vec![SYNC_TOKEN.to_owned()]);

    // And sync works with it.
    injection_syncs(&env, &remote, &ns, "enabled").await?;

    // --all reaches each remote through the context attach recorded: without it in the
    // kubeconfig, one line says what to pass and nothing changes; with it, every cluster
    // rotates.
    let refused = mesh_command(&env, &["rotate", "--all"]).await?;
    assert!(!refused.status.success(), "{}", describe(&refused));
    let err = text(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--remote-kubeconfig"), "{err}");
    assert_eq!(stored_sync(&env, &name).await?, last);
    let rotate_all = || -> anyhow::Result<std::process::Command> {
        let mut all = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
        all.args(["rotate", "--all", "--context", &env.primary().name])
            .env(
                "KUBECONFIG",
                std::env::join_paths([&env.primary().kubeconfig, &remote.kubeconfig])?,
            );
        Ok(all)
    };
    // A cluster that comes after this one, without credentials: refused before this one is
    // rotated, not halfway.
    let clusters = Api::<MeshCluster>::all(env.primary().client().await?);
    let elsewhere: MeshCluster = serde_json::from_value(json!({
        "apiVersion": "kubectl-mesh.io/v1alpha1", "kind": "MeshCluster",
        "metadata": {"name": "zz-elsewhere"},
        "spec": {"clusterId": "uid-elsewhere", "server": "https://192.0.2.1:6443",
                 "secretName": "cluster-zz-elsewhere"},
    }))?;
    clusters.create(&PostParams::default(), &elsewhere).await?;
    let refused = output(rotate_all()?).await?;
    clusters
        .delete("zz-elsewhere", &DeleteParams::default())
        .await?;
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        text(&refused.stderr).contains("zz-elsewhere"),
        "{}",
        describe(&refused)
    );
    assert_eq!(
        stored_sync(&env, &name).await?,
        last,
        "rotated before the refusal of another cluster"
    );
    let all = output(rotate_all()?).await?;
    assert_success(&all);
    revoked("the token before rotate --all", &last).await?;
    let last = stored_sync(&env, &name).await?;

    // --dry-run names the steps and changes nothing.
    let dry = mesh_command(&env, &["rotate", &name, "--dry-run"]).await?;
    assert_success(&dry);
    assert!(
        text(&dry.stderr).contains("observedCredentials"),
        "{}",
        describe(&dry)
    );
    assert_eq!(stored_sync(&env, &name).await?, last);
    Ok(())
}

/// Ctrl-C after each step of a rotation leaves stored credentials that work; a re-run then
/// ends with one token Secret and every token stored along the way revoked.
#[tokio::test]
async fn ctrl_c_at_any_step_leaves_working_credentials_and_a_rerun_revokes_the_rest()
-> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (env, _mesh, remote, _) = one_remote(&[], &[], "ctrl-c").await?;
    let mut seen_stored = vec![stored_sync(&env, &remote.name).await?];

    // A whole rotation prints seven lines (five when a previous one stopped on the standby),
    // and one more each time it waits for the webhook: interrupt after the first, then the
    // second... line of successive runs.
    let mut interruptions = 0;
    for after in 1..=6 {
        let mut child = tokio::process::Command::from(remote_command(&env, "rotate", &remote)?)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut printed = Vec::new();
        let mut finished = false;
        while printed.len() < after {
            match tokio::time::timeout(DEADLINE, lines.next_line()).await?? {
                Some(line) => printed.push(line),
                None => {
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
            assert!(status.success(), "rotate failed: {printed:?}");
        } else {
            let pid = child.id().expect("running").to_string();
            let interrupted = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()?;
            assert!(interrupted.success());
            let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
            // It may have finished between its last line and the signal.
            if !status.success() {
                interruptions += 1;
            }
        }

        let stored = stored_sync(&env, &remote.name).await?;
        assert_eq!(
            answer_to(&stored).await?,
            201,
            "stopped after {printed:?}: the stored token does not work"
        );
        if seen_stored.last() != Some(&stored) {
            seen_stored.push(stored);
        }
    }
    assert!(
        interruptions >= 4,
        "only {interruptions} rotations were interrupted"
    );

    let rerun = rotate(&env, &remote).await?;
    assert_success(&rerun);
    let last = stored_sync(&env, &remote.name).await?;
    assert_eq!(answer_to(&last).await?, 201);
    assert!(
        seen_stored.len() >= 3,
        "the interruptions stored {} tokens",
        seen_stored.len()
    );
    for (i, stored) in seen_stored.iter().enumerate() {
        revoked(&format!("stored token {i}"), stored).await?;
    }
    assert_eq!(token_secrets(&remote).await?, vec![SYNC_TOKEN.to_owned()]);
    Ok(())
}

/// A re-run that finds the standby token stored revokes the own Secret's token once the
/// webhook uses what is stored. Had an attach re-run stored that very token meanwhile (here
/// written as attach writes it), the rotation revoked the token in use: it now refuses, as
/// when the credentials change during any other wait.
#[tokio::test]
async fn a_rotation_never_revokes_a_token_stored_again_during_its_wait() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (env, mesh, remote, _) = one_remote(&[], &[], "restored").await?;
    let name = remote.name.clone();
    let own = stored_sync(&env, &name).await?;
    env.stop_process(mesh_testenv::mesh::WEBHOOK_PROCESS)?;
    let stopped = rotate_with(&env, &remote, &["--timeout", "5s"]).await?;
    assert!(!stopped.status.success(), "{}", describe(&stopped));

    // The re-run waits for a webhook to use the standby token stored.
    let mut rerun = tokio::process::Command::from(remote_command(&env, "rotate", &remote)?)
        .args(["--timeout", "60s"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(rerun.stderr.take().expect("stderr")).lines();
    let mut printed = Vec::new();
    while !printed
        .iter()
        .any(|l: &String| l.contains("waiting for the webhook"))
    {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await??;
        printed.push(line.ok_or_else(|| anyhow::anyhow!("rotate ended: {printed:?}"))?);
    }
    let secrets = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    let patch = json!({"stringData": {"kubeconfig": own}});
    let stored = format!("cluster-{name}");
    secrets
        .patch(&stored, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    mesh.start_webhook(&env).await?;

    let status = tokio::time::timeout(DEADLINE, rerun.wait()).await??;
    while let Some(line) = tokio::time::timeout(DEADLINE, lines.next_line()).await?? {
        printed.push(line);
    }
    assert!(!status.success(), "{printed:?}");
    assert!(
        printed
            .iter()
            .any(|l| l.contains("changed during the rotation")),
        "{printed:?}"
    );
    assert_eq!(stored_sync(&env, &name).await?, own);
    assert_eq!(answer_to(&own).await?, 201, "the stored token was revoked");
    // A re-run then rotates from there.
    assert_success(&rotate(&env, &remote).await?);
    revoked("the token stored again", &own).await?;
    Ok(())
}

/// Ctrl-C once the standby's token is stored (stalled there), before rotate waits for the
/// webhook to use it and revokes the old one, killed rotate without a word. It now stops there,
/// exits 1 and says on one line that the new token is stored and the old one still valid, which
/// it is; a re-run revokes it: the one it names, with the remote's kubeconfig and the primary's
/// (it named neither, and could not reach the remote), run as it is.
#[tokio::test]
async fn ctrl_c_before_the_revocation_says_the_old_token_is_valid_and_a_rerun_revokes_it()
-> anyhow::Result<()> {
    let (env, _mesh, remote, _) = one_remote(&[], &[], "stalled").await?;
    let name = remote.name.clone();
    let old = stored_sync(&env, &name).await?;
    let mut command = remote_command(&env, "rotate", &remote)?;
    command.env("KUBECTL_MESH_STALL_IN", Step::PrimarySecret.name());
    let (seen, status) = signalled_after(command, STALLED, "INT", DEADLINE).await?;
    let said = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{said}");
    let rerun = rerun_naming_kubeconfigs(
        "rotate",
        &name,
        &remote.kubeconfig,
        &env.primary().kubeconfig,
    );
    let line = rerun_line(&rerun);
    let expected = format!(
        "error: interrupted; {name}: the new token of ServiceAccount \
         kubectl-mesh/kubectl-mesh-sync (Secret kubectl-mesh/{STANDBY}) is stored and valid; \
         the old one (Secret kubectl-mesh/{SYNC_TOKEN}) is not revoked yet, and still valid; \
         run `{line}` again to revoke it"
    );
    assert_eq!(seen.last(), Some(&expected), "{said}");

    let midway = stored_sync(&env, &name).await?;
    assert_ne!(
        token_of(&old)?,
        token_of(&midway)?,
        "the standby token is stored"
    );
    assert_eq!(answer_to(&old).await?, 201, "the old token is revoked");
    assert_eq!(
        answer_to(&midway).await?,
        201,
        "the stored token does not work"
    );

    // As it is: no kubeconfig but the ones it names.
    assert_success(&output(offline_invocation(&rerun)?).await?);
    revoked("the old token", &old).await?;
    revoked("the standby token", &midway).await?;
    assert_eq!(token_secrets(&remote).await?, vec![SYNC_TOKEN.to_owned()]);
    Ok(())
}
