//! Detach: of an unreachable remote, and of a remote holding what attach did not create.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::ValidatingAdmissionPolicy,
    core::v1::{ConfigMap, Namespace, Secret},
    rbac::v1::{ClusterRoleBinding, Role},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kubectl_mesh::cmd::attach::{Step, hooks::STALLED};
use kubectl_mesh::namespace_contents;
use mesh_core::cluster::MeshCluster;
use mesh_e2e::{
    DEFAULT_TIMEOUT,
    callers::{Grant, kubeconfig_granting, mesh_as},
    create_labelled_namespace, create_namespace, eventually, fixtures, namespace_labels,
    patch_labels,
    signals::{rerun_line, rerun_naming_kubeconfigs},
    unique_name,
};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn detach_of_an_unreachable_remote_needs_force_and_can_finish_later() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = "flaky";
    attach(env, remote, &["--name", name]).await?;

    let dir = tempfile::tempdir()?;
    let (unreachable, _) = unreachable_kubeconfig(remote, dir.path())?;
    let unreachable = unreachable.to_string_lossy().into_owned();

    let out = mesh(
        env,
        &["detach", name, "--remote-kubeconfig", &unreachable],
        &[],
    )
    .await?;
    let line = refused_in_one_line(&out, "detach of an unreachable remote")?;
    assert!(line.contains("cannot reach remote cluster flaky"), "{line}");
    assert!(line.contains("--force"), "{line}");
    assert!(
        !primary_by_name(env, name).await?.is_empty(),
        "refused, yet changed"
    );

    // Without any remote credentials: refused as well.
    let out = mesh(env, &["detach", name], &[]).await?;
    let line = refused_in_one_line(&out, "detach without credentials")?;
    assert!(line.contains("--remote-kubeconfig"), "{line}");

    let out = mesh(
        env,
        &[
            "detach",
            name,
            "--remote-kubeconfig",
            &unreachable,
            "--force",
        ],
        &[],
    )
    .await?;
    let err = succeeded(&out, "detach --force")?;
    assert!(err.contains("left on the remote"), "{err}");
    assert!(err.contains("kubectl-mesh-sync"), "{err}");
    assert!(primary_by_name(env, name).await?.is_empty());
    assert!(
        !labelled(remote, &format!("{CLUSTER_LABEL}={name}"), false)
            .await?
            .is_empty(),
        "the remote keeps its objects"
    );

    // Once reachable, a re-run finds the leftovers by label.
    detach_leaving_nothing(env, remote, name).await
}

/// A forced detach goes on without a remote whose recorded context lost its cluster (as
/// `kubectl config delete-cluster` leaves it), and its list of what stays there names the
/// labels `--strip-labels` could not remove, as its re-run hint keeps that flag.
#[tokio::test]
async fn forced_detach_skips_a_recorded_context_without_its_cluster() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = "orphan";
    attach(env, remote, &["--name", name]).await?;
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    let context = &mc.annotations()["kubectl-mesh.io/remote-context"];
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("broken.kubeconfig");
    std::fs::write(
        &broken,
        format!(
            "apiVersion: v1\nkind: Config\ncontexts:\n- name: {context}\n  context:\n    \
             cluster: deleted\n    user: deleted\n"
        ),
    )?;
    let kubeconfig = std::env::join_paths([env.primary().kubeconfig.as_path(), &broken])?;
    let out = tokio::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?)
        .args(["detach", name, "--force", "--strip-labels"])
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1")
        .output()
        .await?;
    let err = succeeded(&out, "detach --force through a broken context")?;
    let cleanup = format!(
        "`kubectl mesh detach {name} --strip-labels --remote-kubeconfig <file>` removes them"
    );
    for said in [
        "skipping remote cluster orphan (--force)",
        "the managed labels of its namespaces",
        &cleanup,
    ] {
        assert!(err.contains(said), "{said:?} not in:\n{err}");
    }
    assert!(primary_by_name(env, name).await?.is_empty());
    detach(env, remote, name, &["--strip-labels"]).await?;
    assert_nothing_left(env, remote, name).await
}

#[tokio::test]
async fn detach_keeps_what_attach_did_not_create_and_strips_only_managed_labels()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let name = remote.name.as_str();
    let rc = remote.client().await?;

    // The mesh namespace exists before attach, with someone's ConfigMap in it.
    create_namespace(remote, MESH_NS).await?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "keep-me"}}))?;
    Api::<ConfigMap>::namespaced(rc.clone(), MESH_NS)
        .create(&PostParams::default(), &cm)
        .await?;
    let shop = unique_name("shop");
    create_labelled_namespace(
        remote,
        &shop,
        &[
            ("istio-injection", "enabled"),
            ("istio.io/rev", "canary"),
            ("team", "a"),
        ],
    )
    .await?;
    let namespaces = Api::<Namespace>::all(rc.clone());
    patch_labels(
        rc.clone(),
        "kube-public",
        json!({"istio-injection": "enabled"}),
    )
    .await?;

    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    assert_eq!(
        mc.annotations()
            .get("kubectl-mesh.io/remote-namespace-created")
            .map(String::as_str),
        Some("false")
    );
    let mesh_ns = namespaces.get(MESH_NS).await?;
    assert!(
        !mesh_ns.labels().contains_key(CLUSTER_LABEL),
        "attach labelled a namespace it did not create"
    );

    let progress = detach(env, remote, name, &["--strip-labels"]).await?;
    assert!(progress.contains("kept"), "{progress}");
    // The sync account loses its rights before the labels go and before its scope does: a
    // revoked token the apiserver still accepts from its cache can do nothing meanwhile.
    let at = |line: &str| {
        progress
            .find(line)
            .unwrap_or_else(|| panic!("{line}: {progress}"))
    };
    let unbound = at("ClusterRoleBinding kubectl-mesh-sync deleted");
    assert!(
        unbound < at(&format!("Namespace {shop}: removed"))
            && unbound < at("ValidatingAdmissionPolicy kubectl-mesh-sync-scope deleted"),
        "{progress}"
    );
    let labels = namespaces
        .get(&shop)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert!(
        !labels.contains_key("istio-injection") && !labels.contains_key("istio.io/rev"),
        "{labels:?}"
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    let public = namespaces
        .get("kube-public")
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        public.get("istio-injection").map(String::as_str),
        Some("enabled"),
        "an excluded namespace was stripped"
    );
    assert!(
        namespaces.get_opt(MESH_NS).await?.is_some(),
        "the user's namespace was deleted"
    );
    assert!(
        Api::<ConfigMap>::namespaced(rc.clone(), MESH_NS)
            .get_opt("keep-me")
            .await?
            .is_some()
    );
    let left: Vec<String> = labelled(remote, MANAGED_BY, false).await?;
    assert!(left.is_empty(), "{left:?}");
    assert!(primary_by_name(env, name).await?.is_empty());

    namespaces
        .patch(
            "kube-public",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "remove", "path": "/metadata/labels/istio-injection"}
            ]))?),
        )
        .await?;
    delete_namespace(remote, &shop).await?;
    delete_namespace(remote, MESH_NS).await?;
    Ok(())
}

/// The primary's istio-system holds the Istio remote secret of every cluster attached with
/// --istio-remote-secret: detaching one keeps the others', and the namespace with them.
#[tokio::test]
async fn detaching_one_cluster_keeps_the_istio_secrets_of_the_others() -> anyhow::Result<()> {
    let (env, first, _lock_1) = open_with_remote(0).await?;
    let (second, _lock_2) = take_remote(env, 1).await?;
    let _istio_system = lock_istio_system(&env.primary().client().await?).await?;
    attach(env, first, &["--istio-remote-secret"]).await?;
    attach(env, second, &["--istio-remote-secret"]).await?;
    let primary = env.primary().client().await?;
    let secrets: Api<Secret> = Api::namespaced(primary.clone(), "istio-system");
    let second_secret = format!("istio-remote-secret-{}", second.name);

    detach_taking_its_istio_secret(env, first, &secrets).await?;
    let kept = secrets.get_opt(&second_secret).await?;
    assert!(
        kept.is_some_and(|s| s.metadata.deletion_timestamp.is_none()),
        "detaching {} took {second_secret} with it",
        first.name
    );
    let namespace = Api::<Namespace>::all(primary).get("istio-system").await?;
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "istio-system is being deleted"
    );

    detach_taking_its_istio_secret(env, second, &secrets).await
}

/// [`detach`] of `cluster`, which takes its Istio remote secret out of istio-system (`secrets`).
async fn detach_taking_its_istio_secret(
    env: &TestEnv,
    cluster: &Cluster,
    secrets: &Api<Secret>,
) -> anyhow::Result<()> {
    detach(env, cluster, &cluster.name, &[]).await?;
    let secret = format!("istio-remote-secret-{}", cluster.name);
    ensure!(secrets.get_opt(&secret).await?.is_none(), "{secret} left");
    Ok(())
}

/// A MeshCluster deleted by hand takes its Istio remote secret along (an owner reference): a
/// detach afterwards still removes the istio-system attach created for it, left empty (it
/// looked there only for a secret it found).
#[tokio::test]
async fn a_detach_after_its_mesh_cluster_went_removes_the_istio_system_left_empty()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let _istio_system = lock_istio_system(&env.primary().client().await?).await?;
    attach(env, remote, &["--istio-remote-secret"]).await?;
    let primary = env.primary().client().await?;
    let namespaces = Api::<Namespace>::all(primary.clone());
    let istio_system = namespaces.get("istio-system").await?;
    ensure!(namespace_contents::created_by_attach(&istio_system, None));
    Api::<MeshCluster>::all(primary.clone())
        .delete(&remote.name, &DeleteParams::default())
        .await?;
    let secrets: Api<Secret> = Api::namespaced(primary, "istio-system");
    let secret = format!("istio-remote-secret-{}", remote.name);
    eventually(
        "the Istio remote secret gone with its MeshCluster",
        DEFAULT_TIMEOUT,
        || async { Ok(secrets.get_opt(&secret).await?.is_none().then_some(())) },
    )
    .await?;

    // A caller without rights on istio-system, detaching a name nothing is recorded for, is
    // told so (it was refused the rights to tidy istio-system, which it would not use).
    let dir = tempfile::tempdir()?;
    let grants = [
        Grant::within(
            MESH_NS,
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "delete"]}]),
        ),
        Grant::everywhere(json!([
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["get", "delete"]},
        ])),
    ];
    let limited = kubeconfig_granting(env.primary(), dir.path(), &grants).await?;
    let out = mesh_as(&limited, &["detach", "typo"]).await?;
    let line = refused_in_one_line(&out, "detach of an unknown name")?;
    ensure!(line.contains("cluster \"typo\" is not attached"), "{line}");

    detach(env, remote, &remote.name, &[]).await?;
    let left = namespaces.get_opt("istio-system").await?;
    ensure!(
        left.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        "istio-system left behind"
    );
    Ok(())
}

/// The mesh namespace attach created is deleted only when it holds nothing else, of any kind:
/// a Role someone put there keeps it.
#[tokio::test]
async fn detach_keeps_the_mesh_namespace_while_it_holds_a_kind_of_object_of_someone_else()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    attach(env, remote, &[]).await?;
    let rc = remote.client().await?;
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "team-reader"}}))?;
    let roles = Api::<Role>::namespaced(rc.clone(), MESH_NS);
    roles.create(&PostParams::default(), &role).await?;

    let progress = detach(env, remote, &remote.name, &[]).await?;
    assert!(progress.contains("Role team-reader"), "{progress}");
    let namespace = Api::<Namespace>::all(rc).get(MESH_NS).await?;
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "the mesh namespace is being deleted, with the Role in it"
    );
    assert!(roles.get_opt("team-reader").await?.is_some());
    delete_namespace(remote, MESH_NS).await
}

/// A mesh namespace whose deletion is held up (here by a finalizer) fails detach after
/// --timeout with how to go on; once it is released, a re-run finishes the detach.
#[tokio::test]
async fn a_detach_that_times_out_on_the_namespace_says_to_re_run_and_a_re_run_finishes()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    attach(env, remote, &[]).await?;
    let namespaces = Api::<Namespace>::all(remote.client().await?);
    let hold = |finalizers: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"finalizers": finalizers}}))
    };
    namespaces
        .patch(
            MESH_NS,
            &PatchParams::default(),
            &hold(json!(["example.com/hold"])),
        )
        .await?;

    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = [
        "detach",
        remote.name.as_str(),
        "--remote-kubeconfig",
        &kubeconfig,
        "--timeout",
        "2s",
    ];
    let out = mesh(env, &args, &[]).await?;
    let line = failed_last_line(&out, "detach of a namespace held up")?;
    assert!(line.contains("re-run once it is gone"), "{line}");

    namespaces
        .patch(MESH_NS, &PatchParams::default(), &hold(json!(null)))
        .await?;
    detach_leaving_nothing(env, remote, &remote.name).await
}

/// After a forced detach the MeshCluster and its scope are gone from the primary: a re-run
/// with --strip-labels strips within the scope recorded on the remote, and refuses, changing
/// nothing, when the remote holds no record of it.
#[tokio::test]
async fn strip_labels_after_a_forced_detach_keeps_to_the_scope_attach_recorded()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();
    let (inside, outside) = (unique_name("inside"), unique_name("outside"));
    let injected = [("istio-injection", "enabled")];
    create_labelled_namespace(env.primary(), &inside, &injected).await?;
    create_labelled_namespace(remote, &inside, &injected).await?;
    create_labelled_namespace(remote, &outside, &injected).await?;
    attach(env, remote, &["--exclude-namespaces", &outside]).await?;
    let injection = async |ns: &str| -> anyhow::Result<Option<String>> {
        let labels = namespace_labels(remote, ns).await?.unwrap_or_default();
        Ok(labels.get("istio-injection").cloned())
    };

    detach_forced(env, remote, name).await?;

    // Without the record, refused before anything is deleted.
    let policies = Api::<ValidatingAdmissionPolicy>::all(remote.client().await?);
    let record = |value: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"annotations": {"kubectl-mesh.io/scope": value}}}))
    };
    let recorded = policies
        .get("kubectl-mesh-sync-scope")
        .await?
        .annotations()
        .get("kubectl-mesh.io/scope")
        .cloned()
        .context("attach recorded no scope")?;
    let params = PatchParams::default();
    policies
        .patch("kubectl-mesh-sync-scope", &params, &record(json!(null)))
        .await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let strip = [
        "detach",
        name,
        "--remote-kubeconfig",
        &kubeconfig,
        "--strip-labels",
    ];
    let line = refused_in_one_line(&mesh(env, &strip, &[]).await?, "strip without a scope")?;
    assert!(line.contains("does not record it"), "{line}");
    assert!(
        policies.get_opt("kubectl-mesh-guard").await?.is_some(),
        "refused, yet changed"
    );

    policies
        .patch("kubectl-mesh-sync-scope", &params, &record(json!(recorded)))
        .await?;
    succeeded(&mesh(env, &strip, &[]).await?, "detach --strip-labels")?;
    assert_eq!(injection(&inside).await?, None, "{inside} kept its label");
    assert_eq!(
        injection(&outside).await?.as_deref(),
        Some("enabled"),
        "{outside}, out of the scope, was stripped"
    );
    assert_nothing_left(env, remote, name).await?;
    delete_namespace(remote, &outside).await?;
    delete_namespace(remote, &inside).await?;
    delete_namespace(env.primary(), &inside).await
}

/// A re-attach after a forced detach, without scope flags, keeps the scope the remote records:
/// the MeshCluster that held it is gone, and widening it silently would let the token write
/// what the remote's admin kept out.
#[tokio::test]
async fn a_re_attach_after_a_forced_detach_keeps_the_recorded_scope() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();
    let outside = unique_name("outside");
    attach(env, remote, &["--exclude-namespaces", &outside]).await?;
    detach_forced(env, remote, name).await?;

    attach(env, remote, &[]).await?;
    let scope = mesh_cluster(env, name).await?.spec.scope;
    assert_eq!(
        scope.exclude_namespaces,
        std::slice::from_ref(&outside),
        "{scope:?}"
    );
    detach_leaving_nothing(env, remote, name).await
}

/// Ctrl-C while detach revokes the tokens (stalled after the first token Secret) ended it
/// there. It finishes that stage (the ClusterRoleBindings go too), stops before the next (the
/// sync scope stays), says on one line what is done and what is not, exits 1 as an
/// interrupted attach or scope does, and the same detach run again finishes it: the one it
/// names, with the remote's kubeconfig and the primary's (it named neither, and could not
/// reach the remote), run as it is.
#[tokio::test]
async fn an_interrupted_detach_stops_between_two_stages_and_a_re_run_finishes_it()
-> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(0).await?;
    let name = remote.name.as_str();
    attach(env, remote, &[]).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let args = ["detach", name, "--remote-kubeconfig", &kubeconfig];
    let mut command = fixtures::mesh_invocation(env, &args)?;
    command
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env("KUBECTL_MESH_STALL_IN", Step::TokenSecret.name());
    let (seen, status) = signalled_after(command, STALLED, "INT", DEFAULT_TIMEOUT).await?;
    let said = seen.join("\n");
    ensure!(status.code() == Some(1), "{status}: {said}");
    let last = seen.last().map(String::as_str).unwrap_or_default();
    let rerun = rerun_naming_kubeconfigs(
        "detach",
        name,
        &remote.kubeconfig,
        &env.primary().kubeconfig,
    );
    let line = rerun_line(&rerun);
    let expected = format!(
        "error: interrupted; {name} is detached in part: done: the remote's guard deleted and \
         tokens revoked; not done: the remote's sync scope, identities and namespace \
         kubectl-mesh, the primary's stored credentials and MeshCluster; run the same \
         `{line}` again to finish it"
    );
    ensure!(last == expected, "{said}");

    let client = remote.client().await?;
    let bindings = Api::<ClusterRoleBinding>::all(client.clone());
    ensure!(
        bindings.get_opt("kubectl-mesh-sync").await?.is_none(),
        "{said}"
    );
    let policies = Api::<ValidatingAdmissionPolicy>::all(client);
    ensure!(
        policies.get_opt("kubectl-mesh-sync-scope").await?.is_some(),
        "{said}"
    );
    ensure!(primary_by_name(env, name).await?.len() == 2, "{said}");

    // As it is: no kubeconfig but the ones it names.
    let mut again = fixtures::offline_invocation(&rerun)?;
    again
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env_remove("KUBECTL_MESH_STALL_IN");
    succeeded(&fixtures::output(again).await?, "the detach named")?;
    assert_nothing_left(env, remote, name).await
}
