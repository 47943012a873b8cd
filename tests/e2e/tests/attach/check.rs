//! What `kubectl mesh check` says about an attached cluster's guard and rights, read from its
//! `-o json` report.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mesh_e2e::check_report::{CheckEntry, CheckReport};
use mesh_e2e::{DEFAULT_TIMEOUT, describe, eventually, text, unique_name};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;

use crate::support::*;

/// With a running webhook (so that a healthy mesh checks clean and exit statuses mean
/// something), check verifies the guard with the stored credentials alone: warn and deny
/// pass, a deleted binding fails, and after a re-attach with --remote-guard=off the guard
/// is gone and its absence passes.
#[tokio::test]
async fn check_verifies_the_guard_with_the_stored_credentials_only() -> anyhow::Result<()> {
    let env = env().await?;
    // The webhook reconciles every attached cluster while it runs: hold both remotes.
    let (remote, _lock_1) = take_remote(env, 0).await?;
    let (_, _lock_2) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let mut options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
    options.attach_remotes = false;
    let mesh = mesh_testenv::mesh::Mesh::start(env, options).await?;
    let result = guard_checks(env, remote, name).await;
    mesh.stop_webhook(env)?;
    result?;
    detach_leaving_nothing(env, remote, name).await
}

async fn guard_checks(env: &TestEnv, remote: &Cluster, name: &str) -> anyhow::Result<()> {
    let rc = remote.client().await?;
    // (a) warn, then deny: ✓, all with the stored credentials.
    for (flag, mode) in [("warn", "Warn"), ("deny", "Deny")] {
        attach(env, remote, &["--remote-guard", flag]).await?;
        let out = check_with_stored_credentials(env).await?;
        ensure!(out.status.success(), "{flag}: {}", describe(&out));
        let report = CheckReport::parse(&out)?;
        assert_eq!(
            report.cluster_check(name, GUARD_CHECK),
            Some(&CheckEntry::ok(GUARD_CHECK, mode)),
            "{report:#?}"
        );
        assert_eq!(
            report.cluster_check(name, RIGHTS_CHECK),
            Some(&CheckEntry::ok(
                RIGHTS_CHECK,
                "namespaces get, list, watch, patch; guard kubectl-mesh-guard get; \
                 mutatingwebhookconfigurations get, list, watch"
            )),
            "{report:#?}"
        );
        assert_eq!(
            format!("{:?}", mesh_cluster(env, name).await?.spec.remote_guard),
            mode
        );
    }

    // (b) The binding deleted on the remote: ×, and check fails.
    Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
        .delete("kubectl-mesh-guard", &DeleteParams::default())
        .await?;
    let out = check_with_stored_credentials(env).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = CheckReport::parse(&out)?;
    let expected = CheckEntry::error(
        GUARD_CHECK,
        "spec.remoteGuard is Deny but the remote's guard is Off: \
         ValidatingAdmissionPolicyBinding kubectl-mesh-guard not found (the policy is there, \
         unbound)",
        &format!(
            "re-run `kubectl mesh attach` for {name} with --remote-guard deny --primary-name \
             primary to install the guard it declares"
        ),
    );
    assert_eq!(
        report.cluster_check(name, GUARD_CHECK),
        Some(&expected),
        "{report:#?}"
    );
    assert_eq!(report.failed(), [&expected], "{report:#?}");
    assert_eq!(
        text(&out.stderr),
        "error: 1 check failed; fix what the × lines say and re-run `kubectl mesh check`\n"
    );

    // (d) Re-attach with --remote-guard=off: the policy left goes, and Off checks clean.
    let progress = attach(env, remote, &["--remote-guard", "off"]).await?;
    assert!(
        progress
            .contains("ValidatingAdmissionPolicy kubectl-mesh-guard deleted (--remote-guard=off)"),
        "{progress}"
    );
    assert!(
        Api::<ValidatingAdmissionPolicy>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    assert!(
        Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    assert_eq!(
        mesh_cluster(env, name).await?.spec.remote_guard,
        mesh_core::cluster::RemoteGuard::Off
    );
    let out = check_with_stored_credentials(env).await?;
    ensure!(out.status.success(), "off: {}", describe(&out));
    let report = CheckReport::parse(&out)?;
    assert_eq!(
        report.cluster_check(name, GUARD_CHECK),
        Some(&CheckEntry::ok(GUARD_CHECK, "Off")),
        "{report:#?}"
    );
    Ok(())
}

/// The check of cluster `name` described as `description`, in `report`, if its result is
/// `result`.
fn check_with_result<'a>(
    report: &'a CheckReport,
    name: &str,
    description: &str,
    result: &str,
) -> Option<&'a CheckEntry> {
    report
        .cluster_check(name, description)
        .filter(|c| c.result == result)
}

/// Runs `check` with the stored credentials until cluster `name`'s check `description` has
/// `result`; its report then.
async fn check_until(
    env: &TestEnv,
    what: &str,
    name: &str,
    description: &str,
    result: &str,
) -> anyhow::Result<CheckReport> {
    eventually(what, DEFAULT_TIMEOUT, || async {
        let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
        Ok(check_with_result(&report, name, description, result)
            .is_some()
            .then_some(report))
    })
    .await
}

/// A cluster attached by an older kubectl-mesh has a sync ClusterRole without the guard
/// read: check warns about it, reads the guard with the user's context of the remote when
/// there is one, and a re-attach grants the read. Rights beyond the guard read are reported.
#[tokio::test]
async fn check_of_an_older_attach_falls_back_to_the_users_context() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();
    let rc = remote.client().await?;
    attach(env, remote, &["--remote-guard", "deny"]).await?;

    // The ClusterRole as an older attach wrote it: namespaces only.
    let roles = Api::<ClusterRole>::all(rc.clone());
    roles
        .patch(
            "kubectl-mesh-sync",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [{
                "apiGroups": [""], "resources": ["namespaces"],
                "verbs": ["get", "list", "watch", "patch"],
            }]})),
        )
        .await?;
    let older = "check to see the older rights";
    let report = check_until(env, older, name, RIGHTS_CHECK, "warning").await?;
    let rights = report.cluster_check(name, RIGHTS_CHECK);
    assert_eq!(
        rights.and_then(|c| c.detail.as_deref()),
        Some(
            "not allowed: validatingadmissionpolicies get kubectl-mesh-guard, \
             validatingadmissionpolicybindings get kubectl-mesh-guard, \
             mutatingwebhookconfigurations get, mutatingwebhookconfigurations list, \
             mutatingwebhookconfigurations watch; label sync works, but check reads the guard \
             with your context of the remote instead, and whether an injector acts on the \
             synced labels is not checked"
        ),
        "{report:#?}"
    );
    assert!(
        rights
            .is_some_and(|c| c.hint_mentions(&format!("re-run `kubectl mesh attach` for {name}"))),
        "{report:#?}"
    );
    // No remote context at hand: not verified, a warning.
    let guard = check_with_result(&report, name, GUARD_CHECK, "warning");
    assert_eq!(
        guard.and_then(|c| c.detail.clone()),
        Some(format!(
            "not verified: the stored credentials may not read the guard and your kubeconfig \
             has no context {}",
            remote.name
        )),
        "{report:#?}"
    );
    // A context of that name in your kubeconfig that reaches another cluster (here: the
    // primary's, as `default` or `kubernetes-admin@kubernetes` may be on both) is not read as
    // the remote's: the primary holds no guard, which made check report the guard off.
    let dir = tempfile::tempdir()?;
    let namesake = namesake_context(env, name, dir.path())?;
    let args = ["check", "-o", "json", "--remote-timeout", "10s"];
    let report = CheckReport::parse(&mesh_e2e::callers::mesh_as(&namesake, &args).await?)?;
    let guard = check_with_result(&report, name, GUARD_CHECK, "warning");
    let elsewhere = format!("your context {name} reaches another cluster (id ");
    assert!(
        guard.is_some_and(|c| c.detail.as_deref().is_some_and(|d| d.contains(&elsewhere))),
        "{report:#?}"
    );

    // With the remote's context: read that way, and said so.
    let out = check_with_remote_context(env, remote).await?;
    let report = CheckReport::parse(&out)?;
    assert_eq!(
        report.cluster_check(name, GUARD_CHECK),
        Some(&CheckEntry::ok(
            GUARD_CHECK,
            &format!(
                "Deny; read with context {}: the stored credentials may not read the guard",
                remote.name
            )
        )),
        "{}",
        describe(&out)
    );

    // A re-attach restores the read; more than it is over-privileged.
    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let extra = unique_name("e2e-extra-admission");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": extra},
        "rules": [{
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingadmissionpolicies"],
            "verbs": ["get", "list"],
        }],
    }))?;
    roles.create(&PostParams::default(), &role).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": extra},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": extra},
        "subjects": [{"kind": "ServiceAccount", "name": "kubectl-mesh-sync", "namespace": MESH_NS}],
    }))?;
    let bindings = Api::<ClusterRoleBinding>::all(rc.clone());
    bindings.create(&PostParams::default(), &binding).await?;
    let extra_rights = "check to see the extra rights";
    let over = check_until(env, extra_rights, name, RIGHTS_CHECK, "warning").await;
    let cleanup = async {
        bindings.delete(&extra, &DeleteParams::default()).await?;
        roles.delete(&extra, &DeleteParams::default()).await?;
        anyhow::Ok(())
    }
    .await;
    let report = over?;
    cleanup?;
    assert_eq!(
        report
            .cluster_check(name, RIGHTS_CHECK)
            .and_then(|c| c.detail.as_deref()),
        Some(
            "over-privileged: also allowed validatingadmissionpolicies list, \
             validatingadmissionpolicies get (other than kubectl-mesh-guard)"
        ),
        "{report:#?}"
    );
    assert_eq!(
        report.cluster_check(name, GUARD_CHECK),
        Some(&CheckEntry::ok(GUARD_CHECK, "Deny")),
        "{report:#?}"
    );
    check_until(env, "the rights back to exactly", name, RIGHTS_CHECK, "ok").await?;

    detach_leaving_nothing(env, remote, name).await
}

/// The description of check's sync scope check.
const SCOPE_CHECK: &str = "credentials may change only the managed labels";

/// The sync scope policy edited on the remote to drop its validation that the sync account
/// changes nothing but the managed labels: it still refuses every change of the mesh
/// namespace (an excluded namespace's validation), so only a change of a synced namespace
/// tells, and check tries one.
#[tokio::test]
async fn check_finds_a_sync_scope_policy_that_lets_other_changes_through() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();
    attach(env, remote, &[]).await?;
    let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
    assert_eq!(
        report.cluster_check(name, SCOPE_CHECK),
        Some(&CheckEntry::ok(
            SCOPE_CHECK,
            "ValidatingAdmissionPolicy kubectl-mesh-sync-scope enforced"
        )),
        "{report:#?}"
    );

    let policies = Api::<ValidatingAdmissionPolicy>::all(remote.client().await?);
    let mut policy = policies.get("kubectl-mesh-sync-scope").await?;
    let validations = policy
        .spec
        .as_mut()
        .and_then(|s| s.validations.as_mut())
        .context("the sync scope policy has no validations")?;
    let before = validations.len();
    validations.retain(|v| !v.expression.contains("variables.othersKept"));
    ensure!(
        validations.len() == before - 1,
        "no validation of othersKept in {validations:#?}"
    );
    policies
        .replace("kubectl-mesh-sync-scope", &PostParams::default(), &policy)
        .await?;
    // Once the apiserver has loaded the edit.
    let wider = "check to find the wider policy";
    let report = check_until(env, wider, name, SCOPE_CHECK, "error").await?;
    let scope = report.cluster_check(name, SCOPE_CHECK);
    assert!(
        scope.is_some_and(|c| c.says(
            "error",
            "a dry-run change of annotation kubectl-mesh.io/scope-probe of namespace"
        ) && c
            .hint_mentions(&format!("re-run `kubectl mesh attach` for {name}"))),
        "{report:#?}"
    );

    detach_leaving_nothing(env, remote, name).await
}
