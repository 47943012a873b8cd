//! Two primaries attaching one remote under one name: the second is refused unless it takes
//! the remote over with --force, and the detach of the first then leaves the second's token
//! alone. remote-1 plays the second primary (kubectl-mesh installed there for the test).
//! A cluster installed as a primary may be attached as another's remote; an attached remote
//! refuses a later install.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use kubectl_mesh::remote_setup as setup;
use mesh_e2e::callers::unchanged;
use mesh_e2e::fixtures::uninstall_plan;
use mesh_e2e::{
    DEFAULT_TIMEOUT, create_labelled_namespace, eventually, fixtures::DEAD_WEBHOOK_URL, holds_all,
    namespace_labels, none_mentions, stored_client, stored_client_on, text, unique_name,
};
use mesh_testenv::{Cluster, TestEnv};
use tokio::sync::MutexGuard;

use crate::support::*;

/// Installs kubectl-mesh on a test remote, making it a primary (with a dead webhook URL).
const INSTALL: [&str; 3] = ["install", "--webhook-url", DEAD_WEBHOOK_URL];

/// Runs `scenario` with the first test remote as a second primary (installed with a dead
/// webhook URL) and the second as the remote both may attach; then detaches it from the second
/// primary, uninstalls there, and checks that nothing is left on the remote.
async fn with_a_second_primary(
    scenario: impl AsyncFnOnce(&TestEnv, &Cluster, &Cluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let env = env().await?;
    let (second, _lock_1) = take_remote(env, 0).await?;
    let (remote, _lock_2) = take_remote(env, 1).await?;
    // An earlier test's uninstall there may still be deleting the namespace.
    uninstalled(second).await?;
    succeeded(
        &mesh_on(second, &INSTALL, &[]).await?,
        "install on the second primary",
    )?;
    let result = scenario(env, second, remote).await;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let detach_args = ["detach", &remote.name, "--remote-kubeconfig", &kubeconfig];
    mesh_on(second, &detach_args, &[]).await?;
    mesh_on(second, &["uninstall", "--force", "--crd"], &[]).await?;
    result?;
    assert_nothing_left(env, remote, &remote.name).await
}

#[tokio::test]
async fn a_second_primary_takes_a_remote_over_only_with_force() -> anyhow::Result<()> {
    with_a_second_primary(take_over).await
}

/// A takeover that fails after `--force` revoked the first primary's tokens says that they stay
/// revoked (it said "was rolled back", and a re-run without --force is refused), and a re-run
/// with --force finishes it.
#[tokio::test]
async fn a_failed_takeover_says_the_revoked_tokens_stay_revoked() -> anyhow::Result<()> {
    require_test_hooks(env().await?).await?;
    with_a_second_primary(fail_a_takeover).await
}

async fn fail_a_takeover(env: &TestEnv, second: &Cluster, remote: &Cluster) -> anyhow::Result<()> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    // With the token renewal rights, which the takeover (without --token-ttl) deletes.
    attach(env, remote, &["--token-ttl", "1h"]).await?;
    let roles = Api::<Role>::namespaced(remote.client().await?, MESH_NS);
    let first = cluster_id(env.primary()).await?;
    let renewal_of = || async {
        let role = roles.get_opt(setup::TOKEN_RENEWAL).await?;
        anyhow::Ok(role.map(|r| setup::primary_of(&r.metadata).map(str::to_owned)))
    };
    let failing = [("KUBECTL_MESH_FAIL_AFTER", "token-secret")];
    let out = mesh_on(second, &["attach", &kubeconfig, "--force"], &failing).await?;
    let line = failed_last_line(&out, "a takeover failing after its revocation")?;
    ensure!(
        line.contains("stay revoked") && line.contains("re-run attach with --force"),
        "{line}"
    );
    // As it says: the first primary's stored token no longer works; what the takeover
    // deleted besides is back.
    first_primarys_token_revoked(env, remote).await?;
    let renewal = renewal_of().await?;
    ensure!(
        renewal == Some(Some(first.clone())),
        "the renewal Role after the rollback: {renewal:?}"
    );
    succeeded(
        &mesh_on(second, &["attach", &kubeconfig, "--force"], &[]).await?,
        "--force again",
    )?;
    let renewal = renewal_of().await?;
    ensure!(renewal.is_none(), "renewal Role left: {renewal:?}");
    detach(env, remote, &remote.name, &[]).await?;
    Ok(())
}

/// Waits until the first primary's stored token is refused by `remote` (the apiserver may still
/// accept it from its token cache for a few seconds).
async fn first_primarys_token_revoked(env: &TestEnv, remote: &Cluster) -> anyhow::Result<()> {
    let first = Api::<Namespace>::all(stored_client(env, &remote.name).await?.0);
    eventually(
        "the first primary's token revoked",
        DEFAULT_TIMEOUT,
        || async {
            Ok(first
                .list(&ListParams::default())
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await
}

async fn take_over(env: &TestEnv, second: &Cluster, remote: &Cluster) -> anyhow::Result<()> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    attach(env, remote, &[]).await?;
    let out = mesh_on(second, &["attach", &kubeconfig], &[]).await?;
    let line = refused_in_one_line(&out, "attach from a second primary")?;
    ensure!(
        line.contains("another primary") && line.contains("--force"),
        "{line}"
    );

    succeeded(
        &mesh_on(second, &["attach", &kubeconfig, "--force"], &[]).await?,
        "--force",
    )?;
    first_primarys_token_revoked(env, remote).await?;

    // The first primary's scope no longer reaches the remote's policies, now the second's.
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(remote.client().await?);
    let sync_scope = || async { anyhow::Ok(policies.get("kubectl-mesh-sync-scope").await?.spec) };
    let before = sync_scope().await?;
    let scope_args = [
        "scope",
        remote.name.as_str(),
        "--exclude-namespaces",
        "kept-out",
        "--remote-kubeconfig",
        kubeconfig.as_str(),
    ];
    let out = mesh(env, &scope_args, &[]).await?;
    let line = refused_in_one_line(&out, "scope from the primary that lost the remote")?;
    ensure!(line.contains("another primary took"), "{line}");
    ensure!(
        sync_scope().await? == before,
        "the second primary's sync scope changed"
    );

    // The first primary detaches: the second's objects stay, its token works, and the labels
    // it manages now stay too.
    let shop = unique_name("shop");
    let injected = [("istio-injection", "enabled")];
    create_labelled_namespace(remote, &shop, &injected).await?;
    let progress = detach(env, remote, &remote.name, &["--strip-labels"]).await?;
    ensure!(progress.contains("managed labels kept"), "{progress}");
    let labels = namespace_labels(remote, &shop).await?.unwrap_or_default();
    delete_namespace(remote, &shop).await?;
    ensure!(
        labels.get("istio-injection").map(String::as_str) == Some("enabled"),
        "the first primary stripped the second's labels: {labels:?}"
    );
    let (second_token, _) = stored_client_on(second, &remote.name).await?;
    Api::<Namespace>::all(second_token)
        .list(&ListParams::default())
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("the second primary's token after the first's detach: {e}"))
}

/// A takeover leaves none of the first primary's attach that its own flags do not write. The
/// first attached with `--token-ttl`, `--services-view` and `--istio-remote-secret`, the second
/// takes over with none of them: the renewal Role and RoleBinding stayed (the second's stored
/// token, of the same account, could mint tokens no Secret revokes, which outlived `rotate`
/// and detach), and so did the first's reader and view identities, which the second's detach
/// then skipped as another primary's.
#[tokio::test]
async fn a_takeover_leaves_none_of_the_other_primarys_rights() -> anyhow::Result<()> {
    with_a_second_primary(take_over_all).await
}

async fn take_over_all(env: &TestEnv, second: &Cluster, remote: &Cluster) -> anyhow::Result<()> {
    let _istio_system = lock_istio_system(&env.primary().client().await?).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let first_flags = [
        "--token-ttl",
        "1h",
        "--services-view",
        "--istio-remote-secret",
    ];
    attach(env, remote, &first_flags).await?;
    let client = remote.client().await?;
    let roles = Api::<Role>::namespaced(client.clone(), MESH_NS);
    let role_bindings = Api::<RoleBinding>::namespaced(client.clone(), MESH_NS);
    ensure!(
        roles.get_opt(setup::TOKEN_RENEWAL).await?.is_some(),
        "the first primary's attach made no renewal Role"
    );

    // The dry run says what the takeover deletes, and deletes nothing.
    let out = mesh_on(
        second,
        &["attach", &kubeconfig, "--force", "--dry-run"],
        &[],
    )
    .await?;
    succeeded(&out, "--force --dry-run")?;
    let dry_run = text(&out.stdout);
    for object in [
        format!("Role {MESH_NS}/{}", setup::TOKEN_RENEWAL),
        format!("RoleBinding {MESH_NS}/{}", setup::TOKEN_RENEWAL),
        format!("ServiceAccount {MESH_NS}/{}", setup::VIEW_ACCOUNT),
        format!("ClusterRoleBinding {}", setup::ISTIO_READER),
    ] {
        let line = format!("# takeover: deletes {object} (the other primary's)");
        ensure!(dry_run.lines().any(|l| l == line), "{line}:\n{dry_run}");
    }
    ensure!(
        dry_run.contains("# takeover: the other primary's tokens for"),
        "{dry_run}"
    );
    ensure!(
        roles.get_opt(setup::TOKEN_RENEWAL).await?.is_some(),
        "the dry run deleted the renewal Role"
    );

    let out = mesh_on(second, &["attach", &kubeconfig, "--force", "--yes"], &[]).await?;
    let progress = succeeded(&out, "--force with the default flags")?;
    first_primarys_token_revoked(env, remote).await?;

    // Gone, whichever primary: the second did not ask for them.
    let mut left = Vec::new();
    if roles.get_opt(setup::TOKEN_RENEWAL).await?.is_some() {
        left.push(format!("Role {}", setup::TOKEN_RENEWAL));
    }
    if role_bindings.get_opt(setup::TOKEN_RENEWAL).await?.is_some() {
        left.push(format!("RoleBinding {}", setup::TOKEN_RENEWAL));
    }
    for account in [setup::VIEW_ACCOUNT, setup::ISTIO_READER] {
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), MESH_NS);
        if accounts.get_opt(account).await?.is_some() {
            left.push(format!("ServiceAccount {account}"));
        }
        if Api::<ClusterRole>::all(client.clone())
            .get_opt(account)
            .await?
            .is_some()
        {
            left.push(format!("ClusterRole {account}"));
        }
        if Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(account)
            .await?
            .is_some()
        {
            left.push(format!("ClusterRoleBinding {account}"));
        }
    }
    ensure!(
        left.is_empty(),
        "the first primary's objects left after the takeover: {left:?}\n{progress}"
    );

    // The second's stored token may not mint tokens of its account (RBAC's caches follow the
    // deletion within moments).
    let (stored, _) = stored_client_on(second, &remote.name).await?;
    let reviews = Api::<SelfSubjectAccessReview>::all(stored);
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(MESH_NS.into()),
                verb: Some("create".into()),
                resource: Some("serviceaccounts".into()),
                subresource: Some("token".into()),
                name: Some(setup::SYNC_ACCOUNT.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    eventually(
        "the second primary's stored token may not create tokens",
        DEFAULT_TIMEOUT,
        || async {
            let answer = reviews.create(&PostParams::default(), &review).await?;
            let allowed = answer.status.is_some_and(|s| s.allowed);
            Ok((!allowed).then_some(()))
        },
    )
    .await?;

    // The first primary forgets the cluster (its remote objects are the second's now); the
    // second's detach then leaves nothing (checked by the caller).
    detach(env, remote, &remote.name, &[]).await?;
    Ok(())
}

/// The first test remote made a primary of its own ([`INSTALL`]), then attached as a remote of
/// the environment's primary.
async fn installed_then_attached()
-> anyhow::Result<(&'static TestEnv, &'static Cluster, MutexGuard<'static, ()>)> {
    let (env, remote, lock) = open_with_remote(0).await?;
    uninstalled(remote).await?;
    succeeded(
        &mesh_on(remote, &INSTALL, &[]).await?,
        "install on the remote",
    )?;
    attach(env, remote, &[]).await?;
    Ok((env, remote, lock))
}

/// What the environment's primary attached on `remote` (labelled with its cluster name).
async fn identity(remote: &Cluster) -> anyhow::Result<Vec<String>> {
    labelled(remote, &format!("{CLUSTER_LABEL}={}", remote.name), false).await
}

/// The identity the environment's primary attached on `remote` is as it was `before`, and its
/// stored token still works.
async fn identity_stands(env: &TestEnv, remote: &Cluster, before: &[String]) -> anyhow::Result<()> {
    ensure!(
        identity(remote).await? == before,
        "the identity another primary attached here changed"
    );
    let (stored, _) = stored_client(env, &remote.name).await?;
    Api::<Namespace>::all(stored)
        .list(&ListParams::default())
        .await
        .context("the primary's stored token stopped working")?;
    Ok(())
}

/// A cluster may be a primary and another mesh's remote at once, installed before it is
/// attached: install may be re-applied there, and uninstalling its own installation keeps the
/// identity the other primary's attach put in the kubectl-mesh namespace, so that primary's
/// stored token goes on working, but deletes what its own mesh stored there (the credentials
/// of the clusters attached to it, the leader Lease); its dry run says so.
#[tokio::test]
async fn uninstall_keeps_the_identity_another_primary_attached_here() -> anyhow::Result<()> {
    let (env, remote, _lock) = installed_then_attached().await?;
    succeeded(
        &mesh_on(remote, &INSTALL, &[]).await?,
        "install again on the remote, attached since",
    )?;

    // What its own mesh stored in the namespace, as attach and the webhook store it.
    let client = remote.client().await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), MESH_NS);
    let stored = [
        setup::cluster_secret("elsewhere", "x"),
        setup::view_secret("elsewhere", "x"),
    ];
    for secret in &stored {
        secrets.create(&PostParams::default(), secret).await?;
    }
    let leases = Api::<Lease>::namespaced(client, MESH_NS);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("mesh-webhook".into()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    leases.create(&PostParams::default(), &lease).await?;
    let identity_before = identity(remote).await?;
    ensure!(!identity_before.is_empty(), "no identity attached");

    let plan = uninstall_plan(remote, &["--crd"]).await?;
    let rows = [
        "Namespace /kubectl-mesh keep",
        "Secret kubectl-mesh/cluster-elsewhere delete",
        "Secret kubectl-mesh/cluster-elsewhere-view delete",
        "Lease kubectl-mesh/mesh-webhook delete",
    ];
    holds_all("the plan", &plan, &rows)?;
    // Nothing of the identity the other primary's attach put here.
    none_mentions("the plan", &plan, "kubectl-mesh-sync")?;

    let out = mesh_on(remote, &["uninstall", "--crd"], &[]).await?;
    let progress = succeeded(&out, "uninstall on the remote")?;
    for secret in &stored {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let line = format!("Secret {name} deleted (stored credentials of elsewhere)");
        ensure!(progress.contains(&line), "{line}: {progress}");
        ensure!(secrets.get_opt(name).await?.is_none(), "{name} left");
    }
    ensure!(
        leases.get_opt("mesh-webhook").await?.is_none(),
        "Lease left"
    );
    identity_stands(env, remote, &identity_before).await?;
    let kept = format!(
        "kept: this cluster is attached to a primary as {}",
        remote.name
    );
    ensure!(progress.contains(&kept), "{progress}");
    let namespace = Api::<Namespace>::all(remote.client().await?)
        .get("kubectl-mesh")
        .await?;
    ensure!(
        namespace.metadata.deletion_timestamp.is_none(),
        "the namespace holding the primary's identity is being deleted"
    );

    // Install created the namespace: detach leaves it, as it does any namespace attach did
    // not create.
    detach(env, remote, &remote.name, &[]).await?;
    delete_namespace(remote, "kubectl-mesh").await?;
    assert_nothing_left(env, remote, &remote.name).await
}

/// On a cluster that is a primary and another mesh's remote, detach found the Secrets to
/// delete by label alone: `detach <its own name there> --force`, run there by mistake, deleted
/// the token Secrets the other primary's attach put in kubectl-mesh (revoking that mesh's
/// credentials) and said the cluster was detached. Nothing of this mesh is attached under that
/// name, so it is refused, and the other mesh's identity stays.
#[tokio::test]
async fn detach_on_a_primary_keeps_the_identity_another_primary_attached_here() -> anyhow::Result<()>
{
    let (env, remote, _lock) = installed_then_attached().await?;
    let identity_before = identity(remote).await?;
    ensure!(
        identity_before.iter().any(|n| n.ends_with("-token")),
        "no token Secret attached: {identity_before:?}"
    );

    let out = mesh_on(remote, &["detach", &remote.name, "--force"], &[]).await?;
    let line = refused_in_one_line(&out, "detach of this mesh's name on the other's primary")?;
    ensure!(line.contains("is not attached"), "{line}");
    identity_stands(env, remote, &identity_before).await?;

    succeeded(
        &mesh_on(remote, &["uninstall", "--crd"], &[]).await?,
        "uninstall on the remote",
    )?;
    detach(env, remote, &remote.name, &[]).await?;
    delete_namespace(remote, "kubectl-mesh").await?;
    assert_nothing_left(env, remote, &remote.name).await
}

/// `install` run by mistake with the kubeconfig of a cluster attached as a remote: refused
/// in one line before anything is written, so the namespace keeps what attach recorded there
/// and detach still finds everything. A dry run contacts no cluster and writes nothing.
#[tokio::test]
async fn install_on_an_attached_remote_is_refused() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(0).await?;
    attach(env, remote, &[]).await?;
    let before = install_traces(remote).await?;
    let install = ["install", "--webhook-url", DEAD_WEBHOOK_URL];
    let out = mesh_on(remote, &install, &[]).await?;
    let dry_run = mesh_on(remote, &["install", "--dry-run"], &[]).await?;
    let after = install_traces(remote).await?;
    unchanged("install", "the remote", &before, &after)?;
    let line = refused_in_one_line(&out, "install on an attached remote")?;
    let attached_as = format!(
        "attached as remote {:?} of primary {}",
        remote.name,
        cluster_id(env.primary()).await?
    );
    ensure!(
        line.contains(&attached_as) && line.contains("install on the primary"),
        "{line}"
    );
    succeeded(&dry_run, "install --dry-run on an attached remote")?;
    detach_leaving_nothing(env, remote, &remote.name).await
}

/// What install would change on `cluster`: the kubectl-mesh namespace's labels and
/// annotations, the objects labelled as kubectl-mesh's, and its webhook configuration.
async fn install_traces(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let client = cluster.client().await?;
    let namespace = Api::<Namespace>::all(client.clone())
        .get("kubectl-mesh")
        .await?;
    let mut traces = vec![
        format!("labels {:?}", namespace.metadata.labels),
        format!("annotations {:?}", namespace.metadata.annotations),
    ];
    traces.extend(labelled(cluster, MANAGED_BY, false).await?);
    let configuration = Api::<MutatingWebhookConfiguration>::all(client)
        .get_opt("kubectl-mesh")
        .await?;
    traces.push(format!(
        "webhook configuration: {}",
        configuration.is_some()
    ));
    Ok(traces)
}

/// Waits until what an earlier `uninstall --crd` on `cluster` deleted (the kubectl-mesh
/// namespace and the MeshCluster CRD) is gone: an install meanwhile would fail on them.
async fn uninstalled(cluster: &Cluster) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let namespaces = Api::<Namespace>::all(client);
    let deleting = |meta: Option<ObjectMeta>| meta.is_some_and(|m| m.deletion_timestamp.is_some());
    let what = format!("kubectl-mesh uninstalled on {}", cluster.name);
    eventually(&what, DEFAULT_TIMEOUT, || async {
        let crd = crds.get_opt("meshclusters.kubectl-mesh.io").await?;
        let namespace = namespaces.get_opt("kubectl-mesh").await?;
        let gone = !deleting(crd.map(|c| c.metadata)) && !deleting(namespace.map(|n| n.metadata));
        Ok(gone.then_some(()))
    })
    .await
}
