//! kubectl-mesh with a real istiod (built from the Go module proxy, run out of cluster for the
//! primary, every remote's injector calling it): istiod accepts what `attach
//! --istio-remote-secret` creates and drops what `detach` removes, and a label set on the
//! primary decides whether Istio injects sidecars into new pods on every remote.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::api::Api;
use kubectl_mesh::remote_setup as setup;
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::istio_mesh::{
    Sidecar, WITHOUT_READER_ROLE, dry_run_pod, istio_mesh, shared_istio_mesh, sidecar, wait_sidecar,
};
use mesh_e2e::tokens::{answer_to, revoke, revoked, stored_kubeconfig, token_of};
use mesh_e2e::{create_everywhere, edit_labels, eventually, label_on_primary, managed_labels, run};
use mesh_testenv::istio::{Istio, IstioBinaries, IstioOptions};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;
use tokio::sync::OnceCell;

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET_CHECK: &str = "istiod's remote secret reads the cluster";

/// Waits until istiod reports `cluster` with `status` (`None`: not at all).
async fn wait_istiod_sees(
    istio: &Istio,
    cluster: &str,
    status: Option<&str>,
) -> anyhow::Result<()> {
    eventually(
        &format!("istiod reports {cluster} as {status:?}"),
        DEADLINE,
        || async {
            let clusters = istio.clusters().await?;
            let seen = clusters.iter().find(|c| c.id == cluster);
            Ok((seen.map(|c| c.status.as_str()) == status).then_some(()))
        },
    )
    .await
}

/// A sidecar as the default istiod injects it for `cluster`.
fn default_sidecar(cluster: &Cluster, native: bool) -> Sidecar {
    Sidecar {
        revision: "default".into(),
        native,
        cluster_id: cluster.name.clone(),
    }
}

#[tokio::test]
async fn istiod_syncs_every_attached_remote_with_the_reader_role_istio_expects()
-> anyhow::Result<()> {
    let (env, istio, mesh) = shared_istio_mesh().await;
    for remote in env.remotes() {
        wait_istiod_sees(istio, &remote.name, Some("synced")).await?;
    }
    let metric = istio.sync_status_metric().await?;
    for remote in env.remotes() {
        assert_eq!(
            metric.get(&remote.name).map(String::as_str),
            Some("synced"),
            "{metric:?}"
        );
    }

    // Bound to Istio's own reader role where the remote has it, to ours elsewhere.
    for remote in env.remotes() {
        let binding = Api::<ClusterRoleBinding>::all(remote.client().await?)
            .get(setup::ISTIO_READER)
            .await?;
        let expected = if remote.name == WITHOUT_READER_ROLE {
            setup::ISTIO_READER.to_owned()
        } else {
            setup::istio_own_reader_role()
        };
        assert_eq!(binding.role_ref.name, expected, "on {}", remote.name);
    }

    let report = CheckReport::of(mesh.plugin()).await?;
    for remote in env.remotes() {
        let line = report
            .cluster_check(&remote.name, SECRET_CHECK)
            .with_context(|| format!("no {SECRET_CHECK:?} for {}: {report:#?}", remote.name))?;
        assert_eq!(line.result, "ok", "{line:?}");
    }
    Ok(())
}

/// Every (group, resource, verb) a ClusterRole's rules grant.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn kubectl_mesh_reader_role_grants_what_istios_own_grants() -> anyhow::Result<()> {
    let binaries = tokio::task::spawn_blocking(IstioBinaries::ensure).await??;
    let rendered =
        tokio::task::spawn_blocking(move || binaries.reader_cluster_role("default")).await??;
    let istios: ClusterRole = serde_json::from_value(rendered)?;
    let ours = setup::istio_reader_cluster_role("any");
    let (istios, ours) = (
        grants(&istios.rules.unwrap_or_default()),
        grants(&ours.rules.unwrap_or_default()),
    );
    assert_eq!(
        ours.difference(&istios).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "kubectl-mesh grants istiod more than Istio's own reader role"
    );
    assert_eq!(
        istios.difference(&ours).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "Istio's reader role grants what kubectl-mesh's lacks: update istio_reader_cluster_role"
    );
    Ok(())
}

/// A namespace labelled on the primary gets sidecars on every remote, and none once the label
/// is gone; a label set only on a remote is reverted and injects nothing.
async fn injection_follows_the_primary(env: &TestEnv, native: bool) -> anyhow::Result<()> {
    let ns = create_everywhere(env, "shop").await?;
    for remote in env.remotes() {
        wait_sidecar(remote, &ns, None).await?;
    }
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    for remote in env.remotes() {
        wait_sidecar(remote, &ns, Some(&default_sidecar(remote, native))).await?;
    }
    label_on_primary(env, &ns, &["istio-injection-"]).await?;
    for remote in env.remotes() {
        wait_sidecar(remote, &ns, None).await?;
    }

    let stray = create_everywhere(env, "stray").await?;
    let remote = &env.remotes()[0];
    edit_labels(remote, &stray, json!({"istio-injection": "enabled"})).await?;
    eventually(
        "the reconciler reverts the remote's label",
        DEADLINE,
        || async {
            Ok(managed_labels(remote, &stray)
                .await?
                .is_none_or(|l| l.is_empty())
                .then_some(()))
        },
    )
    .await?;
    let pod = dry_run_pod(remote, &stray).await?;
    assert_eq!(sidecar(&pod), None, "injected after the revert");
    Ok(())
}

#[tokio::test]
async fn injection_on_every_remote_follows_the_primarys_label() -> anyhow::Result<()> {
    let (env, _istio, _mesh) = shared_istio_mesh().await;
    injection_follows_the_primary(env, false).await
}

#[tokio::test]
async fn injection_follows_the_primary_with_native_sidecars() -> anyhow::Result<()> {
    let options = IstioOptions {
        native_sidecars: true,
        ..IstioOptions::default()
    };
    let (env, _istio, _mesh) = istio_mesh(1, options).await?;
    injection_follows_the_primary(&env, true).await
}

/// The shared mesh's second istiod, serving revision `canary`.
async fn canary(env: &TestEnv, istio: &Istio) -> anyhow::Result<()> {
    static CANARY: OnceCell<()> = OnceCell::const_new();
    CANARY
        .get_or_try_init(|| async { istio.start_revision(env, "canary").await.map(|_| ()) })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_revision_label_is_served_by_that_revisions_injector_only() -> anyhow::Result<()> {
    let (env, istio, _mesh) = shared_istio_mesh().await;
    canary(env, istio).await?;
    let ns = create_everywhere(env, "rev").await?;
    label_on_primary(env, &ns, &["istio.io/rev=canary"]).await?;
    for remote in env.remotes() {
        let canary = Sidecar {
            revision: "canary".into(),
            ..default_sidecar(remote, false)
        };
        wait_sidecar(remote, &ns, Some(&canary)).await?;
        let pod = dry_run_pod(remote, &ns).await?;
        let proxies = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .filter(|c| c.name == "istio-proxy")
            .count();
        assert_eq!(
            proxies, 1,
            "injected by more than one revision on {}",
            remote.name
        );
    }
    label_on_primary(env, &ns, &["istio.io/rev=default"]).await?;
    for remote in env.remotes() {
        wait_sidecar(remote, &ns, Some(&default_sidecar(remote, false))).await?;
    }
    Ok(())
}

#[tokio::test]
async fn revoked_istiod_credentials_fail_check_and_sync_and_detach_drops_the_cluster()
-> anyhow::Result<()> {
    let (env, istio, mesh) = istio_mesh(1, IstioOptions::default()).await?;
    let remote = &env.remotes()[0];
    wait_istiod_sees(&istio, &remote.name, Some("synced")).await?;

    // Revoked: the reader's token Secret deleted on the remote; its token is refused once the
    // apiserver's token cache lets go of it (seconds), hence the wait below.
    revoke(&env, remote, setup::ISTIO_READER_TOKEN_SECRET).await?;
    let report = eventually("check sees the token refused", DEADLINE, || async {
        let report = CheckReport::of(mesh.plugin()).await?;
        let failed = report
            .cluster_check(&remote.name, SECRET_CHECK)
            .is_some_and(|c| c.result == "error");
        Ok(failed.then_some(report))
    })
    .await?;
    let line = report.cluster_check(&remote.name, SECRET_CHECK).unwrap();
    assert!(line.says("error", "refuses the token"), "{line:?}");
    assert!(report.errors > 0);

    // istiod (re)reading the secret, as a restarted or new replica does, cannot sync it.
    istio.restart(&env, "default").await?;
    wait_istiod_sees(&istio, &remote.name, Some("timeout")).await?;

    let mut detach = mesh.plugin();
    detach
        .args(["detach", &remote.name, "--remote-kubeconfig"])
        .arg(&remote.kubeconfig);
    run(detach).await?;
    wait_istiod_sees(&istio, &remote.name, None).await?;
    Ok(())
}

/// `rotate` gives istiod's reader a new token too: the Istio remote secret is rewritten in
/// place, istiod goes on syncing the cluster, the old token is refused, and an istiod that
/// reads the secret anew (restarted) syncs with the new one.
#[tokio::test]
async fn rotate_renews_istiods_token_and_istiod_keeps_the_cluster() -> anyhow::Result<()> {
    let (env, istio, mesh) = istio_mesh(1, IstioOptions::default()).await?;
    let remote = &env.remotes()[0];
    wait_istiod_sees(&istio, &remote.name, Some("synced")).await?;
    let secret = setup::istio_secret_name(&remote.name);
    let read = || stored_kubeconfig(&env, setup::ISTIO_NAMESPACE, &secret, &remote.name);
    let before = read().await?;

    let mut rotate = mesh.plugin();
    rotate
        .args(["rotate", &remote.name, "--remote-kubeconfig"])
        .arg(&remote.kubeconfig);
    run(rotate).await?;
    let after = read().await?;
    anyhow::ensure!(
        token_of(&after)? != token_of(&before)?,
        "the Istio remote secret kept its token"
    );
    revoked("istiod's old token", &before).await?;
    anyhow::ensure!(answer_to(&after).await? == 201, "the new token is refused");
    wait_istiod_sees(&istio, &remote.name, Some("synced")).await?;

    istio.restart(&env, "default").await?;
    wait_istiod_sees(&istio, &remote.name, Some("synced")).await?;
    Ok(())
}
