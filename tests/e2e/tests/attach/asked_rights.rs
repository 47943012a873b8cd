//! Attach and detach ask for every right they use before they change anything: a caller
//! lacking one is refused in one line, with both clusters as they were.

use k8s_openapi::api::{core::v1::Namespace, rbac::v1::ClusterRole};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use mesh_e2e::{DEFAULT_TIMEOUT, eventually};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::MutexGuard;

use crate::support::*;
use mesh_e2e::callers::{Grant, kubeconfig_granting, mesh_as, unchanged};

/// The opening of the tests whose caller's attach or detach reaches the primary's
/// istio-system: remote-1 and its lock ([`open_with_remote`]), the lock on istio-system
/// ([`lock_istio_system`]), both held until the test ends, and a directory for the caller's
/// kubeconfig.
async fn open_reaching_istio_system() -> anyhow::Result<(
    &'static TestEnv,
    &'static Cluster,
    TempDir,
    [MutexGuard<'static, ()>; 2],
)> {
    let (env, remote, lock) = open_with_remote(0).await?;
    let istio_system = lock_istio_system(&env.primary().client().await?).await?;
    Ok((env, remote, tempfile::tempdir()?, [lock, istio_system]))
}

/// Everything detach asks of the primary (see `primary_needs` in detach), on every namespace.
fn detach_rights() -> serde_json::Value {
    json!([
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
        {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["get", "delete"]},
    ])
}

/// The primary's Istio remote secret (and istio-system, when attach created it) is deleted
/// after the remote was cleaned: a caller who may do everything else but that is refused before
/// anything changed, not after the remote's objects and the stored credentials are gone.
#[tokio::test]
async fn detach_by_a_caller_who_may_not_delete_the_istio_secret_changes_nothing()
-> anyhow::Result<()> {
    let (env, remote, dir, _locks) = open_reaching_istio_system().await?;
    let name = remote.name.as_str();
    let remote_kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = [
        "detach",
        name,
        "--remote-kubeconfig",
        remote_kubeconfig.as_str(),
    ];
    let selector = format!("{CLUSTER_LABEL}={name}");

    // Secrets may be deleted in kubectl-mesh only; istio-system as well.
    let no_istio_secret = vec![
        Grant::everywhere(detach_rights()),
        Grant::everywhere(json!([
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["delete"]},
        ])),
        Grant::within(
            MESH_NS,
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]}]),
        ),
    ];
    // Secrets may be deleted everywhere, and everything in istio-system listed (so that it
    // is found empty), but istio-system not deleted.
    let no_istio_system = vec![
        Grant::everywhere(detach_rights()),
        Grant::everywhere(json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]},
        ])),
        // Not by a RoleBinding in istio-system: that would keep it.
        Grant::everywhere(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["list"]}])),
    ];
    let cases = [
        (
            "may not delete the Istio remote secret",
            no_istio_secret,
            "secrets in namespace istio-system (delete)",
            false,
        ),
        (
            "may not delete istio-system",
            no_istio_system,
            "namespaces named istio-system (delete)",
            true,
        ),
    ];
    let primary = env.primary().client().await?;
    let namespaces = Api::<Namespace>::all(primary);
    let mut failures = Vec::new();
    for (case, grants, missing, only_if_attach_created_it) in cases {
        attach(env, remote, &["--istio-remote-secret"]).await?;
        let kubeconfig = kubeconfig_granting(env.primary(), dir.path(), &grants).await?;
        let istio_system = namespaces.get("istio-system").await?;
        let attach_created_it = istio_system
            .labels()
            .get("app.kubernetes.io/managed-by")
            .is_some_and(|m| m == "kubectl-mesh");
        let primary_before = (
            primary_by_name(env, name).await?,
            labelled(env.primary(), &selector, true).await?,
        );
        let remote_before = labelled(remote, MANAGED_BY, false).await?;
        let out = mesh_as(&kubeconfig, &args).await?;
        let outcome = async {
            if only_if_attach_created_it && !attach_created_it {
                eprintln!("{case}: skipped, istio-system existed before attach");
                return Ok(());
            }
            let line = refused_in_one_line(&out, case)?;
            anyhow::ensure!(
                line.contains("missing permissions on the primary") && line.contains(missing),
                "{case}: {line}"
            );
            let primary_after = (
                primary_by_name(env, name).await?,
                labelled(env.primary(), &selector, true).await?,
            );
            unchanged(case, "the primary", &primary_before, &primary_after)?;
            let remote_after = labelled(remote, MANAGED_BY, false).await?;
            unchanged(case, "the remote", &remote_before, &remote_after)
        }
        .await;
        if let Err(e) = outcome {
            failures.push(format!("{e:#}"));
        }
        // An admin detaches it all, whatever a refused detach left; the next attach must not
        // find istio-system terminating.
        detach(env, remote, name, &[]).await?;
        eventually("istio-system not terminating", DEFAULT_TIMEOUT, || async {
            let found = namespaces.get_opt("istio-system").await?;
            Ok(found
                .is_none_or(|ns| ns.metadata.deletion_timestamp.is_none())
                .then_some(()))
        })
        .await?;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_nothing_left(env, remote, name).await
}

/// Everything attach asks of the remote without `--istio-remote-secret`, `--services-view`
/// or `--token-ttl` (see `remote_needs` in attach's preflight), on every namespace: the
/// mesh namespace does not exist yet to bind a Role in.
fn attach_remote_rights() -> serde_json::Value {
    let rw = ["get", "create", "patch", "update", "delete"];
    json!([
        {"apiGroups": [""], "resources": ["namespaces"],
         "verbs": ["get", "list", "watch", "patch", "create", "update", "delete"]},
        {"apiGroups": [""], "resources": ["serviceaccounts", "secrets"], "verbs": rw},
        {"apiGroups": ["rbac.authorization.k8s.io"],
         "resources": ["clusterroles", "clusterrolebindings"], "verbs": rw},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
         "verbs": rw},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["mutatingwebhookconfigurations"], "verbs": ["get", "list", "watch"]},
    ])
}

/// RBAC lets a caller create a ClusterRole, or bind one, only with the rights it grants (or
/// `bind`): attach asks for those of istiod's reader before it creates anything, rather than
/// fail at the reader's role after a dozen objects. Once with kubectl-mesh's own reader role,
/// once with Istio's own on the remote.
#[tokio::test]
async fn attach_with_istio_by_a_caller_who_may_not_grant_the_reader_s_rights_changes_nothing()
-> anyhow::Result<()> {
    let (env, remote, dir, _locks) = open_reaching_istio_system().await?;
    let name = remote.name.as_str();
    let limited = kubeconfig_granting(
        remote,
        dir.path(),
        &[Grant::everywhere(attach_remote_rights())],
    )
    .await?;
    let limited = limited.to_string_lossy().into_owned();
    let args = ["attach", limited.as_str(), "--yes", "--istio-remote-secret"];
    let roles = Api::<ClusterRole>::all(remote.client().await?);
    let istio_role = "istio-reader-clusterrole-istio-system";
    let cases = [
        (
            "kubectl-mesh's reader role",
            false,
            &[
                "customresourcedefinitions.apiextensions.k8s.io (get/list/watch)",
                "tokenreviews.authentication.k8s.io (create)",
                "*.config.istio.io (get/list/watch)",
                // Held in part: the verbs lacking only.
                "secrets (list/watch)",
            ][..],
        ),
        (
            "Istio's reader role",
            true,
            &[
                "clusterroles.rbac.authorization.k8s.io named istio-reader-clusterrole-istio-system (bind)",
            ][..],
        ),
    ];
    let mut failures = Vec::new();
    for (case, istio_s_own, missing) in cases {
        if istio_s_own {
            let role: ClusterRole = serde_json::from_value(json!({
                "metadata": {"name": istio_role},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            }))?;
            roles.create(&PostParams::default(), &role).await?;
        }
        let primary_before = labelled(env.primary(), MANAGED_BY, true).await?;
        let out = mesh(env, &args, &[]).await?;
        let outcome = async {
            let line = refused_in_one_line(&out, case)?;
            anyhow::ensure!(
                line.contains(&format!("missing permissions on remote cluster {name}")),
                "{case}: {line}"
            );
            for phrase in missing {
                anyhow::ensure!(line.contains(phrase), "{case}: no {phrase:?} in {line}");
            }
            // Only the reader's rights are lacking.
            for other in [
                "serviceaccounts",
                "validatingadmissionpolicies",
                "on the primary",
            ] {
                anyhow::ensure!(!line.contains(other), "{case}: {other:?} in {line}");
            }
            if istio_s_own {
                anyhow::ensure!(
                    !line.contains("customresourcedefinitions"),
                    "{case}: {line}"
                );
            }
            let primary_after = labelled(env.primary(), MANAGED_BY, true).await?;
            unchanged(case, "the primary", &primary_before, &primary_after)?;
            assert_nothing_left(env, remote, name).await
        }
        .await;
        if istio_s_own {
            roles.delete(istio_role, &DeleteParams::default()).await?;
        }
        if let Err(e) = outcome {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A rollback puts back what a failed re-run changed with an update (PUT), which attach did not
/// ask for: a caller with every right it asked had each put-back refused, and the remote kept
/// the re-run's scope and guard while the MeshCluster recorded the old ones. Asked up front.
#[tokio::test]
async fn attach_by_a_caller_who_may_not_update_what_it_writes_changes_nothing() -> anyhow::Result<()>
{
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();
    let dir = tempfile::tempdir()?;
    let mut rights = attach_remote_rights();
    for rule in rights.as_array_mut().into_iter().flatten() {
        if let Some(verbs) = rule["verbs"].as_array_mut() {
            verbs.retain(|verb| verb != "update");
        }
    }
    let limited = kubeconfig_granting(remote, dir.path(), &[Grant::everywhere(rights)]).await?;
    let limited = limited.to_string_lossy().into_owned();
    // This cluster's objects on the primary: other tests attach other remotes meanwhile.
    let ours = format!("{CLUSTER_LABEL}={name}");
    let primary_before = labelled(env.primary(), &ours, true).await?;
    let remote_before = labelled(remote, MANAGED_BY, false).await?;

    let out = mesh(env, &["attach", limited.as_str(), "--yes"], &[]).await?;
    let line = refused_in_one_line(&out, "attach without update")?;
    assert!(
        line.contains(&format!("missing permissions on remote cluster {name}"))
            && line.contains("serviceaccounts in namespace kubectl-mesh (update)")
            && line.contains("namespaces (update)"),
        "{line}"
    );
    let primary_after = labelled(env.primary(), &ours, true).await?;
    unchanged(
        "attach without update",
        "the primary",
        &primary_before,
        &primary_after,
    )?;
    let remote_after = labelled(remote, MANAGED_BY, false).await?;
    unchanged(
        "attach without update",
        "the remote",
        &remote_before,
        &remote_after,
    )
}

/// Everything attach may ask of the primary but Secrets, everywhere; Secrets in the mesh
/// namespace only: a caller who may not read the Istio remote secrets in istio-system.
fn primary_rights_but_istio_secrets() -> [Grant<'static>; 2] {
    let all = ["*"];
    [
        Grant::everywhere(json!([
            {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "configmaps"],
             "verbs": all},
            {"apiGroups": ["kubectl-mesh.io", "admissionregistration.k8s.io",
                           "apiextensions.k8s.io", "rbac.authorization.k8s.io", "apps",
                           "coordination.k8s.io", "authorization.k8s.io"],
             "resources": all, "verbs": all},
        ])),
        Grant::within(
            MESH_NS,
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": all}]),
        ),
    ]
}

/// A caller who may not read istio-system's Secrets was warned, at a cluster's first attach,
/// that an Istio remote secret an earlier attach stored would not be refreshed: there was
/// none to be. A re-run, after which there may be one, still says so.
#[tokio::test]
async fn only_a_re_attach_warns_of_an_istio_secret_the_caller_may_not_read() -> anyhow::Result<()> {
    let (env, remote, dir, _locks) = open_reaching_istio_system().await?;
    let caller = kubeconfig_granting(
        env.primary(),
        dir.path(),
        &primary_rights_but_istio_secrets(),
    )
    .await?;
    let remote_kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let attach = ["attach", remote_kubeconfig.as_str(), "--yes"];
    let unknown = "you may not read Secret istio-system/";

    let first = succeeded(&mesh_as(&caller, &attach).await?, "first attach")?;
    assert!(!first.contains(unknown), "{first}");
    let again = succeeded(&mesh_as(&caller, &attach).await?, "attach again")?;
    assert!(again.contains(unknown), "{again}");

    detach_leaving_nothing(env, remote, &remote.name).await
}
