//! The sync scope: the token stored on the primary may change the managed labels of a remote
//! namespace and nothing else of it, and `check` tells when the remote stops enforcing that.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::Namespace,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use kubectl_mesh::cmd::attach::{Step, hooks::STALLED};
use mesh_core::cluster::NamespaceScope;
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::{
    DEFAULT_TIMEOUT, create_labelled_namespace, create_namespace, eventually, fixtures, kubectl,
    patch_mesh_cluster, unique_name,
};
use mesh_testenv::Cluster;
use serde_json::{Value, json};

use crate::support::*;
use mesh_e2e::callers::{Grant, kubeconfig_granting, mesh_as};

/// The description of check's sync scope check.
const SCOPE_CHECK: &str = "credentials may change only the managed labels";

/// A merge patch of `ns`'s metadata as the stored token; the refusal's message, if refused.
async fn as_sync(stored: &Api<Namespace>, ns: &str, metadata: Value) -> Option<String> {
    let patch = Patch::Merge(json!({ "metadata": metadata }));
    let result = stored.patch(ns, &PatchParams::default(), &patch).await;
    result.err().map(|e| e.to_string())
}

/// The scope recorded on `remote`'s sync scope policy, which a detach without the MeshCluster
/// strips labels within.
async fn scope_recorded_on(remote: &Cluster) -> anyhow::Result<NamespaceScope> {
    let policy = Api::<ValidatingAdmissionPolicy>::all(remote.client().await?)
        .get("kubectl-mesh-sync-scope")
        .await?;
    let record = policy
        .annotations()
        .get("kubectl-mesh.io/scope")
        .context("the sync scope policy records no scope")?;
    Ok(serde_json::from_str(record)?)
}

/// Creates `count` namespaces on `cluster` whose names sort before any other test's, labelled
/// alike; returns their label selector.
async fn create_fillers(cluster: &Cluster, count: usize) -> anyhow::Result<String> {
    let label = unique_name("filler");
    for i in 0..count {
        let name = format!("a-{label}-{i:03}");
        create_labelled_namespace(cluster, &name, &[("filler", &label)]).await?;
    }
    Ok(format!("filler={label}"))
}

/// Deletes the namespaces [`create_fillers`] created and waits until they are gone.
async fn delete_fillers(cluster: &Cluster, selector: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(cluster.client().await?);
    let fillers = ListParams::default().labels(selector);
    // Namespaces have no delete-collection: one delete each, then one wait for all.
    for filler in api.list(&fillers).await? {
        api.delete(&filler.name_any(), &DeleteParams::default())
            .await?;
    }
    eventually("filler namespaces gone", DEFAULT_TIMEOUT, || async {
        Ok(api.list(&fillers).await?.items.is_empty().then_some(()))
    })
    .await
}

#[tokio::test]
async fn the_stored_token_may_change_only_managed_labels() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let ns = unique_name("scoped");
    create_labelled_namespace(remote, &ns, &[("team", "a")]).await?;
    attach(env, remote, &[]).await?;
    let stored = Api::<Namespace>::all(stored_client(env, &remote.name).await?.0);

    for (what, metadata) in [
        ("another label", json!({"labels": {"team": "b"}})),
        ("a removed label", json!({"labels": {"team": null}})),
        (
            "an annotation",
            json!({"annotations": {"example.com/x": "y"}}),
        ),
        ("a finalizer", json!({"finalizers": ["example.com/hold"]})),
        (
            "a managed label and another",
            json!({"labels": {"istio-injection": "enabled", "team": "c"}}),
        ),
    ] {
        let refusal = as_sync(&stored, &ns, metadata).await;
        ensure!(
            refusal
                .as_deref()
                .is_some_and(|r| r.contains("kubectl-mesh-sync-scope")),
            "{what}: {refusal:?}"
        );
    }
    let allowed = as_sync(
        &stored,
        &ns,
        json!({"labels": {"istio-injection": "enabled"}}),
    )
    .await;
    ensure!(allowed.is_none(), "a managed label: {allowed:?}");
    let excluded = as_sync(
        &stored,
        MESH_NS,
        json!({"labels": {"istio-injection": "enabled"}}),
    )
    .await;
    ensure!(
        excluded.is_some(),
        "a managed label of an excluded namespace went through"
    );

    // The binding gone, check says so (once the apiserver has unloaded it).
    Api::<ValidatingAdmissionPolicyBinding>::all(remote.client().await?)
        .delete("kubectl-mesh-sync-scope", &DeleteParams::default())
        .await?;
    eventually(
        "check sees the unenforced scope",
        DEFAULT_TIMEOUT,
        || async {
            let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
            let check = report.cluster_check(&remote.name, SCOPE_CHECK).cloned();
            Ok(check.filter(|c| c.result == "error"))
        },
    )
    .await?;

    detach_leaving_nothing(env, remote, &remote.name).await?;
    delete_namespace(remote, &ns).await
}

/// The remote enforces the cluster's scope on the stored token: a namespace the scope leaves
/// out, by name or by its labels, refuses it even a managed label. Only the remote's admin
/// credentials change that (`kubectl mesh scope`), and without them nothing changes anywhere.
#[tokio::test]
async fn the_stored_token_may_not_write_what_the_scope_leaves_out() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let [named, unselected, covered] = ["named", "unselected", "covered"].map(unique_name);
    create_namespace(remote, &named).await?;
    create_labelled_namespace(remote, &unselected, &[("team", "platform")]).await?;
    create_labelled_namespace(remote, &covered, &[("team", "shop")]).await?;
    let scope = [
        "--exclude-namespaces",
        &named,
        "--namespace-selector",
        "team!=platform",
    ];
    attach(env, remote, &scope).await?;
    let attached = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(scope_recorded_on(remote).await? == attached, "{attached:?}");
    let stored = Api::<Namespace>::all(stored_client(env, &remote.name).await?.0);
    let managed = || json!({"labels": {"istio-injection": "enabled"}});

    for (ns, why) in [
        (&named, "a namespace the mesh excludes"),
        (&unselected, "outside its cluster's namespace selector"),
    ] {
        let refusal = as_sync(&stored, ns, managed()).await;
        ensure!(
            refusal.as_deref().is_some_and(|r| r.contains(why)),
            "{ns}: {refusal:?}"
        );
    }
    let allowed = as_sync(&stored, &covered, managed()).await;
    ensure!(allowed.is_none(), "{covered}: {allowed:?}");

    // Without the remote's credentials the scope cannot change, on either side.
    let out = mesh(env, &["scope", &remote.name, "--clear"], &[]).await?;
    let refusal = refused_in_one_line(&out, "scope --clear without the remote")?;
    ensure!(refusal.contains("enforces the scope"), "{refusal}");
    let recorded = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(
        recorded.exclude_namespaces == [named.clone()],
        "{recorded:?}"
    );
    ensure!(scope_recorded_on(remote).await? == recorded);

    // With them, but without the right to record the scope on the primary: refused before
    // the remote's policies are touched (not changed, then put back).
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = [
        "scope",
        &remote.name,
        "--clear",
        "--remote-kubeconfig",
        &kubeconfig,
    ];
    let dir = tempfile::tempdir()?;
    let reader = kubeconfig_granting(
        env.primary(),
        dir.path(),
        &[Grant::everywhere(json!([
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["get", "list"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        ]))],
    )
    .await?;
    let policies = Api::<ValidatingAdmissionPolicy>::all(remote.client().await?);
    let versions = async || -> anyhow::Result<Vec<Option<String>>> {
        let mut out = Vec::new();
        for name in ["kubectl-mesh-sync-scope", "kubectl-mesh-guard"] {
            out.push(
                policies
                    .get_opt(name)
                    .await?
                    .and_then(|p| p.resource_version()),
            );
        }
        Ok(out)
    };
    let before = versions().await?;
    let out = mesh_as(&reader, &args).await?;
    let refusal = refused_in_one_line(&out, "scope --clear without the right to patch")?;
    ensure!(
        refusal.contains("missing permissions on the primary") && refusal.contains("meshclusters"),
        "{refusal}"
    );
    ensure!(
        versions().await? == before,
        "the remote's policies were written"
    );

    // With them, the remote lets the token write what the scope now covers.
    succeeded(&mesh(env, &args, &[]).await?, "scope --clear")?;
    ensure!(
        mesh_cluster(env, &remote.name)
            .await?
            .spec
            .scope
            .is_everything()
    );
    ensure!(scope_recorded_on(remote).await?.is_everything());
    for ns in [&named, &unselected] {
        eventually("the widened scope enforced", DEFAULT_TIMEOUT, || async {
            Ok(as_sync(&stored, ns, managed())
                .await
                .is_none()
                .then_some(()))
        })
        .await?;
    }

    // A scope narrowed by hand on the primary leaves the remote's policy wider: check says so,
    // though a hundred namespaces are listed before the one the scope now leaves out.
    let fillers = create_fillers(remote, 100).await?;
    let narrowed = json!({"spec": {"scope": {"excludeNamespaces": [&covered]}}});
    patch_mesh_cluster(env, &remote.name, &narrowed).await?;
    let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
    let check = report.cluster_check(&remote.name, SCOPE_CHECK).cloned();
    ensure!(
        check.as_ref().is_some_and(|c| c.says("error", &covered)),
        "{check:?}"
    );

    delete_fillers(remote, &fillers).await?;
    detach_leaving_nothing(env, remote, &remote.name).await?;
    for ns in [&named, &unselected, &covered] {
        delete_namespace(remote, ns).await?;
    }
    Ok(())
}

/// A scope set with `kubectl patch` leaves the remote's policies as they were (check warns of
/// the guard); `kubectl mesh scope` with the same flags brings them in line with it.
#[tokio::test]
async fn the_same_scope_again_brings_the_remote_in_line() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let kept = unique_name("kept");
    create_namespace(remote, &kept).await?;
    attach(env, remote, &[]).await?;
    let narrowed = json!({"spec": {"scope": {"excludeNamespaces": [&kept]}}}).to_string();
    let patch = [
        "patch",
        "meshcluster",
        &remote.name,
        "--type",
        "merge",
        "-p",
        &narrowed,
    ];
    kubectl(env, env.primary(), &patch).await?;
    let guard_check = async || -> anyhow::Result<Option<String>> {
        let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
        Ok(report
            .cluster_check(&remote.name, GUARD_CHECK)
            .map(|c| c.result.clone()))
    };
    ensure!(guard_check().await?.as_deref() == Some("warning"));

    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = ["scope", &remote.name, "--exclude-namespaces", &kept];
    let args = [&args[..], &["--remote-kubeconfig", &kubeconfig]].concat();
    let progress = succeeded(&mesh(env, &args, &[]).await?, "scope as patched")?;
    ensure!(progress.contains("brought in line"), "{progress}");
    ensure!(scope_recorded_on(remote).await?.exclude_namespaces == std::slice::from_ref(&kept));
    ensure!(guard_check().await?.as_deref() == Some("ok"));
    let stored = Api::<Namespace>::all(stored_client(env, &remote.name).await?.0);
    let managed = json!({"labels": {"istio-injection": "enabled"}});
    eventually("the patched scope enforced", DEFAULT_TIMEOUT, || async {
        Ok(as_sync(&stored, &kept, managed.clone()).await.map(drop))
    })
    .await?;
    // In line now: a third run, given the remote's credentials alone, says the scope is
    // unchanged, and no more (it printed the scope, and checked nothing).
    let credentials_alone = [&args[..2], &args[4..]].concat();
    let progress = succeeded(
        &mesh(env, &credentials_alone, &[]).await?,
        "scope once more",
    )?;
    ensure!(
        progress.contains("scope unchanged") && !progress.contains("brought"),
        "{progress}"
    );
    // Without the remote's credentials, the primary has nothing to change: a warning.
    let without = succeeded(&mesh(env, &args[..4], &[]).await?, "scope, primary only")?;
    ensure!(without.contains("were not checked"), "{without}");
    // As when the context attach recorded is in your kubeconfig but reaches another cluster
    // (here the primary: kubeadm names every context alike): it was taken for the remote's.
    let dir = tempfile::tempdir()?;
    let namesake = namesake_context(env, &remote.name, dir.path())?;
    let out = mesh_e2e::callers::mesh_as(&namesake, &args[..4]).await?;
    let elsewhere = succeeded(&out, "scope, with a namesake context")?;
    ensure!(
        elsewhere.contains("were not checked") && elsewhere.contains("reaches"),
        "{elsewhere}"
    );

    // A selector set by hand with matchLabels is replaced whole by scope's (a merge patch kept
    // its labels beside the new expressions: far fewer namespaces written than scope said).
    let by_hand =
        json!({"spec": {"scope": {"namespaceSelector": {"matchLabels": {"team": "apps"}}}}});
    patch_mesh_cluster(env, &remote.name, &by_hand).await?;
    // Attach again keeps that scope: the guard now selects by those labels too.
    attach(env, remote, &[]).await?;
    let selector = ["--namespace-selector", "team in (apps,web)"];
    let args = [&args[..2], &selector, &["--remote-kubeconfig", &kubeconfig]].concat();
    succeeded(&mesh(env, &args, &[]).await?, "scope with a selector")?;
    let scope = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(
        scope.exclude_namespaces.is_empty()
            && scope
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_some()),
        "{scope:?}"
    );
    // The guard's selector is replaced whole too (merged, it kept `team=apps` beside the
    // expressions, and spared the `team=web` namespaces the scope covers).
    let guards: Api<ValidatingAdmissionPolicy> = Api::all(remote.client().await?);
    let guard = guards.get(kubectl_mesh::remote_setup::GUARD).await?;
    let guarded = guard
        .spec
        .and_then(|s| s.match_constraints?.namespace_selector);
    ensure!(
        guarded == scope.namespace_selector,
        "the guard selects {guarded:?}"
    );

    detach_leaving_nothing(env, remote, &remote.name).await?;
    delete_namespace(remote, &kept).await
}

/// Attach's scope flags replace the scope `kubectl mesh scope` set: applied server-side, the
/// MeshCluster kept the exclusions that command had written (another writer's fields), so the
/// webhook spared namespaces the new scope covers.
#[tokio::test]
async fn attach_replaces_a_scope_the_scope_command_set() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    attach(env, remote, &[]).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let excluded = unique_name("gw");
    let args = ["scope", &remote.name, "--exclude-namespaces", &excluded];
    let args = [&args[..], &["--remote-kubeconfig", &kubeconfig]].concat();
    succeeded(&mesh(env, &args, &[]).await?, "scope")?;

    attach(env, remote, &["--namespace-selector", "team=a"]).await?;
    let scope = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(
        scope.exclude_namespaces.is_empty() && scope.namespace_selector.is_some(),
        "the scope after attach: {scope:?}"
    );
    ensure!(
        scope_recorded_on(remote).await? == scope,
        "the remote's policy disagrees"
    );

    detach_leaving_nothing(env, remote, &remote.name).await
}

/// A re-attach that fails after the MeshCluster step puts back the scope it replaced there.
/// Its apply changed nothing (a selector set by `kubectl patch` is another writer's field),
/// so only the replacement that follows it was there to undo, and it was not recorded: the
/// selector was lost, while the remote's policies were put back.
#[tokio::test]
async fn a_failed_re_attach_puts_back_the_scope_it_replaced() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let flags = ["--exclude-namespaces", "gw"];
    attach(env, remote, &flags).await?;
    let selector =
        json!({"spec": {"scope": {"namespaceSelector": {"matchLabels": {"team": "a"}}}}});
    patch_mesh_cluster(env, &remote.name, &selector).await?;
    let set = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(set.namespace_selector.is_some(), "{set:?}");

    let out = attach_failing_after(env, remote, "mesh-cluster", &flags).await?;
    let line = failed_last_line(&out, "a failing re-attach")?;
    ensure!(line.contains("was rolled back"), "{line}");
    let kept = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(kept == set, "after the rollback: {kept:?}, not {set:?}");

    detach_leaving_nothing(env, remote, &remote.name).await
}

/// Ctrl-C after `scope` had changed the remote's policies, before the MeshCluster recorded the
/// new scope, ended it there: the remote then refused the webhook the namespaces the new scope
/// leaves out, which the MeshCluster still covers. It puts the policies back, and says so.
#[tokio::test]
async fn an_interrupted_scope_puts_back_the_remotes_policies() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(1).await?;
    attach(env, remote, &[]).await?;
    let attached = mesh_cluster(env, &remote.name).await?.spec.scope;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let excluded = unique_name("gw");
    let args = ["scope", &remote.name, "--exclude-namespaces", &excluded];
    let mut command = fixtures::mesh_invocation(env, &args)?;
    // Stalled once the last of the remote's policies (the guard, then the sync scope) is
    // stored, before the MeshCluster's patch.
    command
        .args(["--remote-kubeconfig", &kubeconfig])
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env("KUBECTL_MESH_STALL_IN", Step::SyncScopePolicy.name());
    let (seen, status) = signalled_after(command, STALLED, "INT", DEFAULT_TIMEOUT).await?;
    let said = seen.join("\n");
    ensure!(!status.success(), "scope succeeded: {said}");
    let last = seen.last().map(String::as_str).unwrap_or_default();
    ensure!(
        last.starts_with(&format!(
            "error: interrupted; the remote's guard and sync scope of {} put back: the scope \
             is unchanged",
            remote.name
        )),
        "{said}"
    );

    let recorded = mesh_cluster(env, &remote.name).await?.spec.scope;
    ensure!(
        recorded == attached,
        "the MeshCluster's scope: {recorded:?}"
    );
    let enforced = scope_recorded_on(remote).await?;
    ensure!(enforced == recorded, "the remote enforces {enforced:?}");
    let report = CheckReport::parse(&check_with_stored_credentials(env).await?)?;
    let guard = report.cluster_check(&remote.name, GUARD_CHECK).cloned();
    ensure!(guard.is_some_and(|c| c.result == "ok"), "{said}");

    detach_leaving_nothing(env, remote, &remote.name).await
}
