//! Attach creates both sides (and with --dry-run prints them), detach removes everything.

use anyhow::Context as _;
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{Namespace, Secret},
    rbac::v1::ClusterRole,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use mesh_core::cluster::MeshCluster;
use mesh_e2e::{create_namespace, patch_labels, text, unique_name};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn attach_creates_both_sides_and_detach_removes_everything() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(0).await?;
    let name = remote.name.as_str();

    let progress = attach(env, remote, &[]).await?;
    assert!(
        progress.contains("MeshCluster remote-1 created"),
        "{progress}"
    );

    // The remote: every object labelled for the cluster.
    let selector = format!("{CLUSTER_LABEL}={name}");
    let mut on_remote = labelled(remote, &selector, false).await?;
    on_remote.sort();
    assert_eq!(
        on_remote,
        [
            "ClusterRole /kubectl-mesh-sync",
            "ClusterRoleBinding /kubectl-mesh-sync",
            "Namespace /kubectl-mesh",
            "Secret kubectl-mesh/kubectl-mesh-sync-token",
            "ServiceAccount kubectl-mesh/kubectl-mesh-sync",
            "ValidatingAdmissionPolicy /kubectl-mesh-guard",
            "ValidatingAdmissionPolicy /kubectl-mesh-sync-scope",
            "ValidatingAdmissionPolicyBinding /kubectl-mesh-guard",
            "ValidatingAdmissionPolicyBinding /kubectl-mesh-sync-scope",
        ]
    );
    let rc = remote.client().await?;
    let role = Api::<ClusterRole>::all(rc.clone())
        .get("kubectl-mesh-sync")
        .await?;
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["namespaces".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch", "patch"]);
    // Read-only, by name, its own guard only.
    assert_eq!(rules[1].verbs, ["get"]);
    assert_eq!(
        rules[1].resource_names.as_deref(),
        Some(&["kubectl-mesh-guard".to_owned()][..])
    );
    // Read-only: whether an injector acts on the synced labels.
    assert_eq!(
        rules[2].resources.as_deref(),
        Some(&["mutatingwebhookconfigurations".to_owned()][..])
    );
    assert_eq!(rules[2].verbs, ["get", "list", "watch"]);
    let token_secret = Api::<Secret>::namespaced(rc.clone(), MESH_NS)
        .get("kubectl-mesh-sync-token")
        .await?;
    assert_eq!(
        token_secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    let binding = Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
        .get("kubectl-mesh-guard")
        .await?;
    assert_eq!(
        binding.spec.and_then(|s| s.validation_actions),
        Some(vec!["Warn".to_owned()])
    );

    // The primary: the Secret owned by the MeshCluster, which records the cluster.
    let pc = env.primary().client().await?;
    let mc = Api::<MeshCluster>::all(pc.clone()).get(name).await?;
    assert_eq!(mc.spec.cluster_id, cluster_id(remote).await?);
    assert_eq!(mc.spec.server, remote.server);
    assert_eq!(mc.spec.secret_name, "cluster-remote-1");
    assert_eq!(mc.spec.primary_name.as_deref(), Some("primary"));
    assert_eq!(mc.spec.remote_guard, mesh_core::cluster::RemoteGuard::Warn);
    assert_eq!(
        mc.annotations()
            .get("kubectl-mesh.io/remote-namespace-created")
            .map(String::as_str),
        Some("true")
    );
    let secret = Api::<Secret>::namespaced(pc.clone(), MESH_NS)
        .get("cluster-remote-1")
        .await?;
    assert_eq!(
        secret.labels().get(CLUSTER_LABEL).map(String::as_str),
        Some(name)
    );
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("MeshCluster", mc.uid().unwrap_or_default().as_str())
    );

    // The stored kubeconfig: a bearer token, nothing else; it may patch namespaces only
    // (their managed labels: see scope.rs).
    let (stored, kubeconfig) = stored_client(env, name).await?;
    // The MeshCluster records the CA the stored kubeconfig trusts, which the remote's
    // admin kubeconfig gave (the test environment's own CA).
    assert_eq!(
        mc.spec.ca_fingerprint,
        mesh_core::recorded::ca_fingerprint(&kubeconfig),
        "MeshCluster spec: {:?}",
        mc.spec
    );
    assert!(
        mc.spec
            .ca_fingerprint
            .as_deref()
            .is_some_and(|f| f.starts_with("sha256:")
                && f != mesh_core::recorded::ca_fingerprint(&Default::default())
                    .unwrap_or_default()),
        "{:?}",
        mc.spec.ca_fingerprint
    );
    let user = kubeconfig.auth_infos[0]
        .auth_info
        .as_ref()
        .context("no user")?;
    assert!(user.token.is_some());
    assert!(user.client_certificate_data.is_none() && user.client_key_data.is_none());
    assert!(user.exec.is_none() && user.token_file.is_none());
    let probe = unique_name("stored-token");
    create_namespace(remote, &probe).await?;
    patch_labels(
        stored.clone(),
        &probe,
        json!({"istio-injection": "enabled"}),
    )
    .await
    .context("the stored token patches a managed label")?;
    forbidden(
        Api::<Secret>::all(stored.clone())
            .list(&ListParams::default())
            .await,
        "the stored token listed secrets",
    )?;
    forbidden(
        Api::<Namespace>::all(stored.clone())
            .delete(&probe, &DeleteParams::default())
            .await,
        "the stored token deleted a namespace",
    )?;
    // It reads its own guard, and no other admission policy; it cannot change the guard.
    let stored_policies = Api::<ValidatingAdmissionPolicy>::all(stored.clone());
    stored_policies
        .get("kubectl-mesh-guard")
        .await
        .context("the stored token reads the guard")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(stored.clone())
        .get("kubectl-mesh-guard")
        .await
        .context("the stored token reads the guard's binding")?;
    forbidden(
        stored_policies.list(&ListParams::default()).await,
        "the stored token listed admission policies",
    )?;
    forbidden(
        stored_policies.get_opt("some-other-policy").await,
        "the stored token read another admission policy",
    )?;
    forbidden(
        stored_policies
            .delete("kubectl-mesh-guard", &DeleteParams::default())
            .await,
        "the stored token deleted the guard",
    )?;
    delete_namespace(remote, &probe).await?;

    // A re-run updates, creates nothing new, and keeps the MeshCluster.
    let again = attach(env, remote, &[]).await?;
    assert!(!again.contains(" created"), "{again}");
    assert!(again.contains("MeshCluster remote-1 unchanged"), "{again}");
    let mc_after = Api::<MeshCluster>::all(pc.clone()).get(name).await?;
    assert_eq!(mc_after.uid(), mc.uid());

    // A re-run that fails rolls back only what it created: nothing, the attach stands.
    let before = labelled(remote, &selector, false).await?;
    let out = attach_failing_after(env, remote, "mesh-cluster", &[]).await?;
    let line = failed_last_line(&out, "failing re-run")?;
    assert!(line.contains("nothing was rolled back"), "{line}");
    assert!(
        !text(&out.stderr).contains("! rolled back: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(labelled(remote, &selector, false).await?, before);
    assert_eq!(primary_by_name(env, name).await?.len(), 2);
    let secret = Api::<Secret>::namespaced(pc.clone(), MESH_NS)
        .get("cluster-remote-1")
        .await?;
    assert_eq!(secret.owner_references().len(), 1, "ownerReference kept");

    detach_leaving_nothing(env, remote, name).await?;

    // Detaching again: nothing is attached under that name.
    let out = mesh(env, &["detach", name], &[]).await?;
    let line = refused_in_one_line(&out, "second detach")?;
    assert!(line.contains("is not attached"), "{line}");
    Ok(())
}

#[tokio::test]
async fn dry_run_prints_both_sides_and_creates_nothing() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;

    let out = try_attach(env, remote, &["--dry-run", "--istio-remote-secret"], &[]).await?;
    let yaml = String::from_utf8(out.stdout.clone())?;
    succeeded(&out, "dry run")?;
    for expected in [
        "# on remote cluster remote-2",
        "# on primary",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: ValidatingAdmissionPolicyBinding",
        "kind: MeshCluster",
        "name: cluster-remote-2",
        "name: istio-remote-secret-remote-2",
        "token: REDACTED",
    ] {
        assert!(yaml.contains(expected), "{expected} missing in:\n{yaml}");
    }
    let out = try_attach(env, remote, &["--dry-run", "-o", "json"], &[]).await?;
    succeeded(&out, "dry run -o json")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["kind"], "List");
    assert!(
        list["items"].as_array().is_some_and(|i| i.len() >= 8),
        "{list}"
    );
    assert_nothing_left(env, remote, &remote.name).await
}

/// `--services-view`: a read-only identity on the remote that may read services,
/// endpointslices and pods and nothing else, its kubeconfig on the primary owned by the
/// MeshCluster; `check` verifies its rights; a re-run without the flag keeps it; detach removes
/// it.
#[tokio::test]
async fn services_view_is_a_read_only_identity_that_detach_removes() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    let name = remote.name.as_str();

    attach(env, remote, &["--services-view"]).await?;
    let selector = format!("{CLUSTER_LABEL}={name}");
    let on_remote = labelled(remote, &selector, false).await?;
    for object in [
        "ClusterRole /kubectl-mesh-view",
        "ClusterRoleBinding /kubectl-mesh-view",
        "Secret kubectl-mesh/kubectl-mesh-view-token",
        "ServiceAccount kubectl-mesh/kubectl-mesh-view",
    ] {
        assert!(
            on_remote.iter().any(|o| o == object),
            "{object}: {on_remote:?}"
        );
    }
    let rc = remote.client().await?;
    let role = Api::<ClusterRole>::all(rc).get("kubectl-mesh-view").await?;
    let mut granted: Vec<String> = Vec::new();
    for rule in role.rules.unwrap_or_default() {
        assert_eq!(rule.resource_names, None, "{rule:?}");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.push(format!("{group}/{resource}: {}", rule.verbs.join(",")));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/pods: get,list,watch",
            "/services: get,list,watch",
            "discovery.k8s.io/endpointslices: get,list,watch",
        ]
    );

    // Its kubeconfig on the primary, owned by the MeshCluster; it reads workloads only.
    let pc = env.primary().client().await?;
    let mc = Api::<MeshCluster>::all(pc.clone()).get(name).await?;
    let secret = Api::<Secret>::namespaced(pc.clone(), MESH_NS)
        .get(&format!("cluster-{name}-view"))
        .await?;
    let owners = secret.owner_references();
    assert_eq!(
        owners.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
        [mc.uid().unwrap_or_default().as_str()]
    );
    reads_workloads_only(&secret).await?;

    // check asks the remote with those credentials.
    let out = mesh(env, &["check", "-o", "json"], &[]).await?;
    let report = mesh_e2e::check_report::CheckReport::parse(&out)?;
    let rights = report
        .cluster_check(name, "view credentials have exactly their rights")
        .context("no view rights check")?;
    assert_eq!(rights.result, "ok", "{rights:?}");

    // A re-run without the flag keeps it, and says so.
    let again = attach(env, remote, &[]).await?;
    assert!(again.contains("view identity kept"), "{again}");
    assert!(
        labelled(remote, &selector, false)
            .await?
            .iter()
            .any(|o| o == "ServiceAccount kubectl-mesh/kubectl-mesh-view")
    );
    assert!(
        primary_by_name(env, name)
            .await?
            .contains(&format!("Secret cluster-{name}-view"))
    );

    detach_leaving_nothing(env, remote, name).await
}
