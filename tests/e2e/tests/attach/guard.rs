//! The remote guard: warn, deny, the sync account spared, and the primary's name in its
//! message.

use std::process::Output;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use mesh_core::cluster::MeshCluster;
use mesh_e2e::check_report::{CheckEntry, CheckReport};
use mesh_e2e::{
    DEFAULT_TIMEOUT, create_namespace, describe, eventually, label_namespace, patch_labels,
    relabel_until, text, unique_name,
};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;
use tokio::sync::MutexGuard;

use crate::support::*;

/// remote-2 attached with the default guard, holding a fresh namespace named after
/// `prefix`, and the remote's lock.
async fn attached_with_namespace(
    prefix: &str,
) -> anyhow::Result<(
    &'static TestEnv,
    &'static Cluster,
    MutexGuard<'static, ()>,
    String,
)> {
    let (env, remote, lock) = open_with_remote(1).await?;
    let ns = unique_name(prefix);
    create_namespace(remote, &ns).await?;
    attach(env, remote, &[]).await?;
    Ok((env, remote, lock, ns))
}

/// Sets `istio-injection=<prefix><n>` on `ns` of `remote`, a new value each time, until
/// `outcome` of kubectl's answer is `Some`: the guard's policies take effect asynchronously.
async fn edit_until<T>(
    env: &TestEnv,
    remote: &Cluster,
    ns: &str,
    prefix: &str,
    what: &str,
    outcome: impl Fn(&Output) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let label = |attempt| vec![format!("istio-injection={prefix}{attempt}")];
    relabel_until(env, remote, ns, what, label, |out| {
        std::future::ready(outcome(&out))
    })
    .await
}

/// `check` with the stored credentials passes the guard of cluster `name`, in warn mode.
async fn guard_check_passes(env: &TestEnv, name: &str) -> anyhow::Result<()> {
    let out = check_with_stored_credentials(env).await?;
    assert_eq!(
        CheckReport::parse(&out)?.cluster_check(name, GUARD_CHECK),
        Some(&CheckEntry::ok(GUARD_CHECK, "Warn")),
        "{}",
        describe(&out)
    );
    Ok(())
}

#[tokio::test]
async fn remote_guard_warns_denies_and_spares_the_sync_account() -> anyhow::Result<()> {
    let (env, remote, _lock, ns) = attached_with_namespace("guarded").await?;
    let name = remote.name.as_str();
    let warning = edit_until(env, remote, &ns, "v", "the guard warns", |out| {
        ensure!(
            out.status.success(),
            "warn mode refused: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        Ok(err.contains("managed by kubectl-mesh").then_some(err))
    })
    .await?;
    assert!(
        warning.contains("from cluster primary")
            && warning.contains(&format!(
                "kubectl --context primary label ns {ns} istio-injection=v"
            )),
        "{warning}"
    );
    let out = label_namespace(env, remote, &ns, &["team=payments"]).await?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("managed by kubectl-mesh"),
        "{}",
        text(&out.stderr)
    );

    // Deny: a re-run of attach switches the guard.
    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let refusal = edit_until(env, remote, &ns, "d", "the guard denies", |out| {
        Ok((!out.status.success()).then(|| text(&out.stderr)))
    })
    .await?;
    assert!(refusal.contains("managed by kubectl-mesh"), "{refusal}");
    // Through the status subresource, which stores a patch's labels too.
    let patch = r#"{"metadata":{"labels":{"istio-injection":"by-status"}}}"#;
    let mut by_status = env.kubectl(remote);
    by_status
        .args(["patch", "namespace", &ns, "--subresource=status"])
        .args(["--type=merge", "-p", patch]);
    let out = by_status.output()?;
    assert!(
        !out.status.success() && text(&out.stderr).contains("managed by kubectl-mesh"),
        "a status patch of a managed label went through: {}",
        describe(&out)
    );
    let out = label_namespace(env, remote, &ns, &["team=checkout"]).await?;
    ensure!(
        out.status.success(),
        "unmanaged label refused: {}",
        text(&out.stderr)
    );

    // The sync account's own write goes through.
    let (stored, _) = stored_client(env, name).await?;
    patch_labels(stored, &ns, json!({"istio-injection": "from-primary"}))
        .await
        .context("the sync account labels despite the deny guard")?;
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    assert_eq!(mc.spec.remote_guard, mesh_core::cluster::RemoteGuard::Deny);

    detach(env, remote, name, &[]).await?;
    let rc = remote.client().await?;
    assert!(
        Api::<ValidatingAdmissionPolicy>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    edit_until(env, remote, &ns, "f", "edits are free again", |out| {
        Ok((out.status.success() && !text(&out.stderr).contains("kubectl-mesh")).then_some(()))
    })
    .await?;
    assert_nothing_left(env, remote, name).await?;
    delete_namespace(remote, &ns).await
}

/// `kubectl label namespace <ns> istio-injection=enabled` on `remote` until the guard's
/// warning names `primary` (a policy update takes effect a moment later); returns it.
async fn guard_warning_naming(
    env: &TestEnv,
    remote: &Cluster,
    ns: &str,
    primary: &str,
) -> anyhow::Result<String> {
    let wanted = format!("from cluster {primary};");
    eventually(
        &format!("the guard's warning naming {primary}"),
        DEFAULT_TIMEOUT,
        || async {
            let out = label_namespace(env, remote, ns, &["istio-injection=enabled"]).await?;
            ensure!(
                out.status.success(),
                "warn mode refused: {}",
                text(&out.stderr)
            );
            let err = text(&out.stderr);
            if err.contains(&wanted) {
                return Ok(Some(err));
            }
            // Unset it, so that the next attempt changes the label again.
            let out = label_namespace(env, remote, ns, &["istio-injection-"]).await?;
            ensure!(out.status.success(), "{}", text(&out.stderr));
            Ok(None)
        },
    )
    .await
}

/// (c) The primary's name in the guard's message is spec.primaryName: a re-attach with
/// another --primary-name changes both, and check tells when they disagree.
#[tokio::test]
async fn reattach_with_another_primary_name_updates_the_guard() -> anyhow::Result<()> {
    let (env, remote, _lock, ns) = attached_with_namespace("renamed").await?;
    let name = remote.name.as_str();
    assert_eq!(
        mesh_cluster(env, name).await?.spec.primary_name.as_deref(),
        Some("primary")
    );
    let warning = guard_warning_naming(env, remote, &ns, "primary").await?;
    assert!(warning.contains("Warning: "), "{warning}");

    let progress = attach(env, remote, &["--primary-name", "elsewhere"]).await?;
    for line in [
        "ValidatingAdmissionPolicy kubectl-mesh-guard updated",
        "ValidatingAdmissionPolicyBinding kubectl-mesh-guard unchanged",
        &format!("MeshCluster {name} updated"),
    ] {
        assert!(progress.contains(line), "{line} missing in\n{progress}");
    }
    let mc = mesh_cluster(env, name).await?;
    assert_eq!(mc.spec.primary_name.as_deref(), Some("elsewhere"));
    assert_eq!(mc.spec.remote_guard, mesh_core::cluster::RemoteGuard::Warn);
    // A direct edit on the remote is now sent to "elsewhere"; the command to run there
    // still uses the primary's context.
    let warning = guard_warning_naming(env, remote, &ns, "elsewhere").await?;
    assert!(
        warning.contains(&format!(
            "istio-injection on this cluster is managed by kubectl-mesh from cluster elsewhere; \
             set it there: kubectl --context primary label ns {ns} istio-injection=enabled \
             --overwrite"
        )),
        "{warning}"
    );
    assert!(!warning.contains("from cluster primary"), "{warning}");

    guard_check_passes(env, name).await?;

    // The MeshCluster says another name than the guard's message: ×.
    let clusters = Api::<MeshCluster>::all(env.primary().client().await?);
    clusters
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"primaryName": "somewhere"}})),
        )
        .await?;
    let out = check_with_stored_credentials(env).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = CheckReport::parse(&out)?;
    let guard = report.cluster_check(name, GUARD_CHECK);
    assert_eq!(
        guard.map(|c| c.result.as_str()),
        Some("error"),
        "{report:#?}"
    );
    assert_eq!(
        guard.and_then(|c| c.detail.as_deref()),
        Some(
            "spec.primaryName is somewhere but the guard's message names primary elsewhere: \
             people editing labels on the remote are sent to the wrong cluster"
        ),
        "{report:#?}"
    );
    // What the hint says repairs it.
    attach(env, remote, &["--primary-name", "somewhere"]).await?;
    guard_check_passes(env, name).await?;

    detach_leaving_nothing(env, remote, name).await?;
    delete_namespace(remote, &ns).await
}

/// A re-run of attach without `--remote-guard` and `--primary-name` keeps the guard the
/// cluster has (deny stays deny, the recorded primary name stays), like every other setting.
#[tokio::test]
async fn a_re_run_without_guard_flags_keeps_the_deny_guard_and_its_primary_name()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let name = remote.name.as_str();
    attach(
        env,
        remote,
        &["--remote-guard", "deny", "--primary-name", "elsewhere"],
    )
    .await?;

    let progress = attach(env, remote, &[]).await?;
    for line in [
        "ValidatingAdmissionPolicy kubectl-mesh-guard unchanged",
        "ValidatingAdmissionPolicyBinding kubectl-mesh-guard unchanged",
        "remote guard deny",
    ] {
        assert!(progress.contains(line), "{line} missing in\n{progress}");
    }
    let binding = Api::<ValidatingAdmissionPolicyBinding>::all(remote.client().await?)
        .get("kubectl-mesh-guard")
        .await?;
    assert_eq!(
        binding.spec.and_then(|s| s.validation_actions),
        Some(vec!["Deny".to_owned()])
    );
    let kept = async || -> anyhow::Result<_> {
        let mc = mesh_cluster(env, name).await?;
        Ok((mc.spec.remote_guard, mc.spec.primary_name))
    };
    let deny_from_elsewhere = (
        mesh_core::cluster::RemoteGuard::Deny,
        Some("elsewhere".to_owned()),
    );
    assert_eq!(kept().await?, deny_from_elsewhere);

    // Detached with --force (the remote keeps the guard) and attached again bare: no
    // MeshCluster records the guard any more, the remote's guard does.
    detach_forced(env, remote, name).await?;
    let progress = attach(env, remote, &[]).await?;
    assert!(progress.contains("remote guard deny"), "{progress}");
    assert_eq!(kept().await?, deny_from_elsewhere);

    detach_leaving_nothing(env, remote, name).await
}
