//! A failed or interrupted attach rolls back what it created, at every step (through the
//! test hooks of the kubectl-mesh binary, built with its `test-hooks` feature).

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicySpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use kubectl_mesh::cmd::attach::{Step, hooks::STALLED};
use mesh_e2e::mesh_testenv::{Cluster, TestEnv};
use mesh_e2e::{DEFAULT_TIMEOUT, client_from_secret, eventually, fixtures, text};
use tokio::sync::MutexGuard;

use crate::support::*;

/// Attach flags under which every step of [`Step::ALL`] runs: the Istio and view steps run only
/// when asked for.
const EVERY_STEP: [&str; 2] = ["--istio-remote-secret", "--services-view"];

/// Whether an attach with --istio-remote-secret that stops in or right after `step` has
/// reached the primary's istio-system namespace.
fn reaches_istio_system(step: Step) -> bool {
    let at = |step| Step::ALL.iter().position(|s| *s == step);
    at(step) >= at(Step::IstioRemoteSecret)
}

/// Whether the primary has an istio-system namespace.
async fn istio_system_exists(primary: &Client) -> anyhow::Result<bool> {
    Ok(Api::<Namespace>::all(primary.clone())
        .get_opt("istio-system")
        .await?
        .is_some())
}

/// When an attach stopping at `step` reaches istio-system: the lock on it, held until the
/// rollback is checked, and whether it existed before.
async fn istio_system_before(
    primary: &Client,
    step: Step,
) -> anyhow::Result<Option<(MutexGuard<'static, ()>, bool)>> {
    if !reaches_istio_system(step) {
        return Ok(None);
    }
    let lock = lock_istio_system(primary).await?;
    Ok(Some((lock, istio_system_exists(primary).await?)))
}

/// istio-system is as it was before the attach that stopped at `step`, when that attach
/// reached it.
async fn assert_istio_system_as_before(
    primary: &Client,
    before: &Option<(MutexGuard<'static, ()>, bool)>,
    step: &str,
) -> anyhow::Result<()> {
    if let Some((_, existed)) = before {
        assert_eq!(
            istio_system_exists(primary).await?,
            *existed,
            "istio-system after {step}"
        );
    }
    Ok(())
}

/// `attach <remote's kubeconfig> <flags>` with the stall hook in `step` (and not the failure
/// hook): once the step's object is stored, attach waits for an answer that does not come.
fn stalling_attach(
    env: &TestEnv,
    remote: &Cluster,
    flags: &[&str],
    step: &str,
) -> anyhow::Result<std::process::Command> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let mut command = fixtures::mesh_invocation(env, &["attach", &kubeconfig])?;
    command
        .args(flags)
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env("KUBECTL_MESH_STALL_IN", step);
    Ok(command)
}

/// Runs [`stalling_attach`], waits until it stalls, then sends it `signal` (`INT`, a real
/// Ctrl-C; `TERM`, `HUP`); returns every line attach wrote and how it exited.
async fn signalled_when_stalled(
    env: &TestEnv,
    remote: &Cluster,
    flags: &[&str],
    step: &str,
    signal: &str,
) -> anyhow::Result<(Vec<String>, std::process::ExitStatus)> {
    let command = stalling_attach(env, remote, flags, step)?;
    signalled_after(command, STALLED, signal, DEFAULT_TIMEOUT)
        .await
        .with_context(|| format!("attach stalled in {step}, sent SIG{signal}"))
}

/// [`signalled_when_stalled`], which must end attach with a failure that says the run was
/// rolled back; returns every line attach wrote.
async fn rolled_back_when_signalled(
    env: &TestEnv,
    remote: &Cluster,
    flags: &[&str],
    step: &str,
    signal: &str,
) -> anyhow::Result<Vec<String>> {
    let (seen, status) = signalled_when_stalled(env, remote, flags, step, signal).await?;
    ensure!(!status.success(), "SIG{signal} in {step}: attach succeeded");
    let last = seen.last().cloned().unwrap_or_default();
    ensure!(
        last.contains(&format!("failed at step {step} and was rolled back")),
        "SIG{signal} in {step}: {}",
        seen.join("\n")
    );
    Ok(seen)
}

/// SIGTERM (`timeout`, a cancelled CI job) and SIGHUP (a dropped SSH session) ended attach
/// at once, leaving what it had created and a live token behind: they roll back as Ctrl-C does.
#[tokio::test]
async fn sigterm_and_sighup_roll_back_as_ctrl_c_does() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(1).await?;
    let step = Step::TokenSecret.name();
    for signal in ["TERM", "HUP"] {
        rolled_back_when_signalled(env, remote, &[], step, signal).await?;
        assert_nothing_left(env, remote, &remote.name)
            .await
            .with_context(|| format!("after SIG{signal} in {step}"))?;
    }
    Ok(())
}

/// A namespace attach created that someone else used meanwhile (another attach its Istio
/// remote secret in the primary's istio-system; here anyone a ConfigMap in the remote's
/// kubectl-mesh) is kept by the rollback, with what it holds. The rollback deleted it, and
/// everything in it.
#[tokio::test]
async fn a_rollback_keeps_a_namespace_it_created_that_holds_others_objects() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(1).await?;
    let namespaces = Api::<Namespace>::all(remote.client().await?);
    ensure!(
        namespaces.get_opt("kubectl-mesh").await?.is_none(),
        "the remote has a kubectl-mesh namespace before attach"
    );
    let command = stalling_attach(env, remote, &[], Step::ServiceAccount.name())?;
    let configmaps = Api::<ConfigMap>::namespaced(remote.client().await?, "kubectl-mesh");
    let someone_elses = async {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "someone-elses"},
            "data": {"kept": "yes"},
        }))?;
        configmaps.create(&PostParams::default(), &cm).await?;
        anyhow::Ok(())
    };
    let (seen, status) =
        signalled_after_doing(command, STALLED, someone_elses, "INT", DEFAULT_TIMEOUT).await?;
    let seen = seen.join("\n");
    ensure!(!status.success(), "interrupted attach succeeded:\n{seen}");
    let kept_line = format!(
        "rolled back: {}: Namespace kubectl-mesh kept: it holds objects attach did not create \
         for this cluster (ConfigMap someone-elses)",
        remote.name
    );
    ensure!(seen.contains(&kept_line), "{seen}");
    ensure!(seen.contains("was rolled back"), "{seen}");
    // The one line attach fails with says so too.
    let kept_in_error = format!(
        "{}: Namespace kubectl-mesh kept, created by this run",
        remote.name
    );
    ensure!(seen.contains(&kept_in_error), "{seen}");
    let kept = configmaps.get("someone-elses").await;
    delete_namespace(remote, "kubectl-mesh").await?;
    ensure!(
        kept?
            .data
            .unwrap_or_default()
            .get("kept")
            .map(String::as_str)
            == Some("yes")
    );
    assert_nothing_left(env, remote, &remote.name).await
}

/// A real Ctrl-C while the first object of a step is stored but its answer has not come: in
/// every step that creates objects ([`Step::creates`]; with --istio-remote-secret and
/// --services-view, so that the Istio and view steps create theirs), attach rolls back what it created, that object included.
#[tokio::test]
async fn ctrl_c_while_a_create_is_in_flight_rolls_it_back() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(1).await?;
    let name = remote.name.as_str();
    let primary = env.primary().client().await?;
    for step in Step::ALL.into_iter().filter(|s| s.creates()) {
        let istio_system = istio_system_before(&primary, step).await?;
        let step = step.name();
        let (seen, status) = signalled_when_stalled(env, remote, &EVERY_STEP, step, "INT").await?;
        ensure!(!status.success(), "{step}: interrupted attach succeeded");
        let last = seen.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("interrupted"),
            "{step}: {}",
            seen.join("\n")
        );
        assert!(
            last.contains(&format!("failed at step {step} and was rolled back")),
            "{step}: {last}"
        );
        assert_nothing_left(env, remote, name)
            .await
            .with_context(|| format!("after Ctrl-C in {step}"))?;
        assert_istio_system_as_before(&primary, &istio_system, &format!("Ctrl-C in {step}"))
            .await?;
    }

    // A step that creates nothing cannot stall: the hook refuses it rather than let attach
    // run through.
    for step in Step::ALL.into_iter().filter(|s| !s.creates()) {
        let step = step.name();
        let out = try_attach(env, remote, &[], &[("KUBECTL_MESH_STALL_IN", step)]).await?;
        let line = refused_in_one_line(&out, step)?;
        assert!(
            line.contains(&format!(
                "KUBECTL_MESH_STALL_IN={step} names a step that creates nothing"
            )),
            "{line}"
        );
    }
    assert_nothing_left(env, remote, name).await
}

/// A failure right after each step of [`Step::ALL`] (with --istio-remote-secret and
/// --services-view, so that the Istio and view steps run) rolls back everything; a re-run then goes through.
#[tokio::test]
async fn interrupted_attach_rolls_back_and_a_rerun_succeeds() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_test_hooks(0).await?;
    let name = remote.name.as_str();
    let primary = env.primary().client().await?;

    for step in Step::ALL {
        let istio_system = istio_system_before(&primary, step).await?;
        let step = step.name();
        let out = attach_failing_after(env, remote, step, &EVERY_STEP).await?;
        let line = failed_last_line(&out, step)?;
        assert!(
            line.contains(&format!("failed at step {step} and was rolled back")),
            "{step}: {line}"
        );
        assert!(
            text(&out.stderr).contains("rolled back: "),
            "{step}: {}",
            text(&out.stderr)
        );
        assert_nothing_left(env, remote, name)
            .await
            .with_context(|| format!("after failing at {step}"))?;
        assert_istio_system_as_before(&primary, &istio_system, step).await?;
    }

    // An unknown step is refused before anything happens.
    let out = attach_failing_after(env, remote, "no-such-step", &[]).await?;
    refused_in_one_line(&out, "unknown step")?;
    assert_nothing_left(env, remote, name).await?;

    // The re-run goes through, Istio remote secret and view identity included.
    let _istio = lock_istio_system(&primary).await?;
    let istio_system_before = istio_system_exists(&primary).await?;
    attach(env, remote, &EVERY_STEP).await?;
    let view = Api::<Secret>::namespaced(primary.clone(), "kubectl-mesh")
        .get(&format!("cluster-{name}-view"))
        .await?;
    reads_workloads_only(&view).await?;
    let istio = Api::<Secret>::namespaced(primary.clone(), "istio-system")
        .get("istio-remote-secret-remote-1")
        .await?;
    assert_eq!(
        istio.labels().get("istio/multiCluster").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        istio
            .annotations()
            .get("networking.istio.io/cluster")
            .map(String::as_str),
        Some(name)
    );
    let (reader, kc) = client_from_secret(&istio, name).await?;
    assert_eq!(kc.current_context.as_deref(), Some(name));
    assert_eq!(kc.clusters[0].name, name);
    assert_eq!(kc.auth_infos[0].name, name);
    // Its token is istiod's reader's, which can list pods (the sync account cannot).
    Api::<Pod>::all(reader)
        .list(&ListParams::default())
        .await
        .context("istiod's reader lists pods")?;

    detach_leaving_nothing(env, remote, name).await?;
    eventually("istio-system as before", DEFAULT_TIMEOUT, || async {
        Ok((istio_system_exists(&primary).await? == istio_system_before).then_some(()))
    })
    .await
}

/// A remote attached with the defaults, ready for a re-run through the test hooks, and the
/// admission policies on it.
async fn attached_for_a_re_run() -> anyhow::Result<(
    &'static TestEnv,
    &'static Cluster,
    MutexGuard<'static, ()>,
    Api<ValidatingAdmissionPolicy>,
)> {
    let (env, remote, lock) = open_with_test_hooks(1).await?;
    attach(env, remote, &[]).await?;
    let policies = Api::all(remote.client().await?);
    Ok((env, remote, lock, policies))
}

/// What the remote's sync scope policy says: its annotations (the scope it was made for) and
/// its spec.
async fn sync_scope(
    policies: &Api<ValidatingAdmissionPolicy>,
) -> anyhow::Result<(
    Option<BTreeMap<String, String>>,
    Option<ValidatingAdmissionPolicySpec>,
)> {
    let policy = policies.get("kubectl-mesh-sync-scope").await?;
    Ok((policy.metadata.annotations, policy.spec))
}

/// A re-run with other flags that fails puts back what it changed, not only what it created:
/// the remote's sync scope, the guard it deleted and the MeshCluster are as the first attach
/// left them, so the remote enforces what the MeshCluster records.
#[tokio::test]
async fn a_failed_re_run_puts_back_what_it_changed() -> anyhow::Result<()> {
    let (env, remote, _lock, policies) = attached_for_a_re_run().await?;
    let state = async || -> anyhow::Result<_> {
        let guard = policies.get_opt("kubectl-mesh-guard").await?;
        let mc = mesh_cluster(env, &remote.name).await?.spec;
        Ok((
            sync_scope(&policies).await?,
            guard.map(|g| g.spec),
            serde_json::to_value(mc)?,
        ))
    };
    let before = state().await?;
    ensure!(before.1.is_some(), "the first attach made no guard");

    let other_flags = ["--exclude-namespaces", "kept-out", "--remote-guard", "off"];
    let out = attach_failing_after(env, remote, "mesh-cluster", &other_flags).await?;
    let line = failed_last_line(&out, "a failing re-run with other flags")?;
    ensure!(line.contains("was rolled back"), "{line}");
    let after = state().await?;
    ensure!(after.0 == before.0, "the sync scope was not put back");
    ensure!(after.1 == before.1, "the guard was not put back");
    ensure!(after.2 == before.2, "the MeshCluster was not put back");

    detach_leaving_nothing(env, remote, &remote.name).await
}

/// A real Ctrl-C while a re-run's change of the remote's sync scope is stored but its answer
/// has not come: the rollback puts the scope back, so the remote enforces what the MeshCluster
/// records (a change was recorded for the rollback only once its answer had come).
#[tokio::test]
async fn ctrl_c_while_an_update_is_in_flight_puts_it_back() -> anyhow::Result<()> {
    let (env, remote, _lock, policies) = attached_for_a_re_run().await?;
    let before = sync_scope(&policies).await?;

    let flags = ["--exclude-namespaces", "kept-out"];
    let step = Step::SyncScopePolicy.name();
    let seen = rolled_back_when_signalled(env, remote, &flags, step, "INT").await?;
    ensure!(
        sync_scope(&policies).await? == before,
        "the sync scope the re-run changed was not put back:\n{}",
        seen.join("\n")
    );
    // The rollback may wait long, and Ctrl-C does nothing meanwhile: said once.
    let told = seen
        .iter()
        .filter(|line| line.contains("Ctrl-C is ignored until the rollback is done"))
        .count();
    ensure!(
        told == 1,
        "the rollback did not say once that Ctrl-C is ignored:\n{}",
        seen.join("\n")
    );

    detach_leaving_nothing(env, remote, &remote.name).await
}
