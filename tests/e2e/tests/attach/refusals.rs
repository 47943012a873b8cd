//! Attaches refused in preflight: each one line, nothing changed anywhere.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    config::Kubeconfig,
};
use mesh_core::cluster::MeshCluster;
use mesh_e2e::callers::{Grant, kubeconfig_granting, unchanged};
use mesh_e2e::create_namespace;
use mesh_testenv::Cluster;
use serde_json::json;

use crate::support::*;

/// A row of the table of refused attaches: its case, attach's command line (`attach <args>`)
/// and what the refusal says.
fn case<'a>(case: &'a str, args: &[&'a str], says: &'a str) -> (&'a str, Vec<&'a str>, &'a str) {
    (case, [&["attach"][..], args].concat(), says)
}

#[tokio::test]
async fn refused_attaches_change_nothing_anywhere() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let dir = tempfile::tempdir()?;

    let malformed = write(
        dir.path(),
        "malformed.yaml",
        "clusters: [ {name: x, token: s3cr3t\n",
    )?;
    let (unreachable, closed_server) = unreachable_kubeconfig(remote, dir.path())?;
    let limited = limited_kubeconfig(remote, dir.path()).await?;
    let unverified = unverified_kubeconfig(remote, dir.path())?;
    let [malformed, unreachable, limited, unverified] =
        [malformed, unreachable, limited, unverified].map(|p| p.to_string_lossy().into_owned());
    let remote_path = remote.kubeconfig.to_string_lossy().into_owned();
    let primary_path = env.primary().kubeconfig.to_string_lossy().into_owned();

    // One row a refusal: the case, the arguments after `attach`, what the refusal says.
    #[rustfmt::skip]
    let cases = [
        case("malformed kubeconfig", &[&malformed], "cannot load kubeconfig"),
        case("unreachable server", &[&unreachable], "cannot reach remote cluster"),
        case("missing context", &[&remote_path, "--remote-context", "nope"],
             "context \"nope\" not found"),
        case("caller lacks permissions", &[&limited],
             "missing permissions on remote cluster remote-2"),
        // Reachable, but its stored form would be refused by the webhook: known before
        // anything is written.
        case("TLS unverified", &[&unverified],
             "skips TLS verification and has no certificate-authority-data"),
        case("the primary itself", &[&primary_path], "points at the primary itself"),
        case("invalid name", &[&remote_path, "--name", "Not_A_Label"], "invalid cluster name"),
        // The primary's column in status and services. The row above, whose context is
        // named `primary` too, is refused as the primary itself.
        case("reserved name", &[&remote_path, "--name", "primary"],
             "the cluster name \"primary\" is reserved"),
        // Its Secret would be named as remote-2's view credentials.
        case("view credentials' name", &[&remote_path, "--name", "remote-2-view"],
             "the cluster name \"remote-2-view\" is reserved: Secret cluster-remote-2-view"),
    ];
    for (case, argv, expected) in &cases {
        let out = mesh(env, argv, &[]).await?;
        let line = refused_in_one_line(&out, case)?;
        assert!(line.contains(expected), "{case}: {line}");
        assert!(
            !line.contains("s3cr3t"),
            "{case} quotes the kubeconfig: {line}"
        );
        if *case == "unreachable server" {
            assert!(line.contains(&closed_server), "{line}");
            assert!(line.contains("connection refused"), "{line}");
            assert!(line.contains("check the server address in"), "{line}");
        }
        if *case == "reserved name" {
            assert!(line.contains("pass --name <other>"), "{line}");
        }
        if *case == "caller lacks permissions" {
            assert!(
                line.contains("clusterroles.rbac.authorization.k8s.io"),
                "{line}"
            );
            assert!(
                line.contains("serviceaccounts in namespace kubectl-mesh"),
                "{line}"
            );
        }
        for name in ["remote-2", "primary", "not-a-label", "remote-2-view"] {
            assert_nothing_left(env, remote, name)
                .await
                .with_context(|| case.to_string())?;
        }
    }

    // The same cluster under a second name: refused, the first attach untouched.
    attach(env, remote, &[]).await?;
    let before = labelled(remote, MANAGED_BY, false).await?;
    let out = try_attach(env, remote, &["--name", "second"], &[]).await?;
    let line = refused_in_one_line(&out, "second name")?;
    assert!(line.contains("already attached as \"remote-2\""), "{line}");
    assert!(primary_by_name(env, "second").await?.is_empty());
    assert!(
        labelled(env.primary(), &format!("{CLUSTER_LABEL}=second"), true)
            .await?
            .is_empty()
    );
    assert_eq!(labelled(remote, MANAGED_BY, false).await?, before);
    detach_leaving_nothing(env, remote, "remote-2").await?;
    Ok(())
}

/// `remote`'s admin kubeconfig without its CA and with TLS verification skipped: usable to
/// reach the remote, not to store.
fn unverified_kubeconfig(remote: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut kc = Kubeconfig::read_from(&remote.kubeconfig)?;
    for cluster in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        cluster.certificate_authority_data = None;
        cluster.insecure_skip_tls_verify = Some(true);
    }
    write(dir, "unverified.yaml", &serde_json::to_string(&kc)?)
}

/// A kubeconfig for a ServiceAccount of `remote` that may only read a few kinds: the
/// built-in `view` role cannot be used, as the test clusters do not run the ClusterRole
/// aggregation controller that fills it.
async fn limited_kubeconfig(remote: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    let read = json!([{"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "configmaps"], "verbs": ["get", "list", "watch"]}]);
    kubeconfig_granting(remote, dir, &[Grant::everywhere(read)]).await
}

#[tokio::test]
async fn attach_refuses_objects_it_did_not_create() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let rc = remote.client().await?;
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "kubectl-mesh-sync"},
        "rules": [],
    }))?;
    Api::<ClusterRole>::all(rc.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let out = try_attach(env, remote, &[], &[]).await?;
    let result = refused_in_one_line(&out, "attach over a foreign ClusterRole");
    Api::<ClusterRole>::all(rc.clone())
        .delete("kubectl-mesh-sync", &DeleteParams::default())
        .await?;
    let line = result?;
    assert!(line.contains("ClusterRole kubectl-mesh-sync"), "{line}");
    assert!(line.contains("not created by kubectl-mesh"), "{line}");
    assert_nothing_left(env, remote, &remote.name).await?;

    // With --token-ttl, the Role that lets the webhook renew the token is attach's too.
    create_namespace(remote, MESH_NS).await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "kubectl-mesh-sync-token-renewal"},
        "rules": [],
    }))?;
    Api::<Role>::namespaced(rc.clone(), MESH_NS)
        .create(&PostParams::default(), &role)
        .await?;
    let out = try_attach(env, remote, &["--token-ttl", "1h"], &[]).await?;
    let result = refused_in_one_line(&out, "attach over a foreign renewal Role");
    delete_namespace(remote, MESH_NS).await?;
    let line = result?;
    assert!(
        line.contains("Role kubectl-mesh/kubectl-mesh-sync-token-renewal"),
        "{line}"
    );
    assert!(line.contains("not created by kubectl-mesh"), "{line}");
    assert_nothing_left(env, remote, &remote.name).await
}

/// An attach under the name of a MeshCluster being deleted (detach returned; someone else's
/// finalizer holds it) "updated" it: the reconciler left it alone, and once it went, the
/// garbage collector deleted the Secrets the attach had just stored. Refused in one line,
/// nothing changed.
#[tokio::test]
async fn attach_over_a_mesh_cluster_being_deleted_is_refused() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let name = remote.name.as_str();
    attach(env, remote, &[]).await?;
    let held = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    mesh_e2e::patch_mesh_cluster(env, name, &held).await?;
    let clusters = Api::<MeshCluster>::all(env.primary().client().await?);
    clusters.delete(name, &DeleteParams::default()).await?;

    // This cluster's objects on the primary: other tests attach other remotes meanwhile.
    let ours = format!("{CLUSTER_LABEL}={name}");
    let (primary_before, remote_before) = (
        labelled(env.primary(), &ours, true).await?,
        labelled(remote, MANAGED_BY, false).await?,
    );
    let out = try_attach(env, remote, &["--yes"], &[]).await?;
    let outcome = async {
        let line = refused_in_one_line(&out, "attach over a MeshCluster being deleted")?;
        anyhow::ensure!(line.contains("is being deleted"), "{line}");
        let case = "attach over a MeshCluster being deleted";
        let primary_after = labelled(env.primary(), &ours, true).await?;
        unchanged(case, "the primary", &primary_before, &primary_after)?;
        let remote_after = labelled(remote, MANAGED_BY, false).await?;
        unchanged(case, "the remote", &remote_before, &remote_after)
    }
    .await;

    let released = json!({"metadata": {"finalizers": null}});
    mesh_e2e::patch_mesh_cluster(env, name, &released).await?;
    outcome?;
    detach_leaving_nothing(env, remote, name).await
}
