//! The path a cluster admin takes first: `kubectl mesh install --image` deploys the webhook as
//! the Deployment install renders, two replicas in pods on a real node (kubelet, containerd,
//! runc, CNI), the primary's apiserver calling it through its Service, the webhook reaching the
//! primary through the `kubernetes` Service and every remote at its stored address. The image is
//! the workspace's `mesh-webhook` packed by `mesh_testenv::image`, imported into the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kubectl_mesh::render::ServingCert;
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::fixtures::stand_in_injector;
use mesh_e2e::in_cluster::{DEPLOYMENT, IMAGE, InCluster, NAMESPACE};
use mesh_e2e::{
    assert_remotes, create_everywhere, edit_labels, eventually, has_line, injection_enabled,
    installed_webhook, kubectl, label_on_primary, managed_labels, relabel_until, run,
};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

const DEADLINE: Duration = Duration::from_secs(60);

/// One node and one install for the binary; the tests take turns (a rolling update or a killed
/// leader must not overlap another test's measurement).
async fn mesh() -> (&'static InCluster, MutexGuard<'static, ()>) {
    static MESH: OnceCell<InCluster> = OnceCell::const_new();
    static TURN: Mutex<()> = Mutex::const_new(());
    let start = async {
        let mesh = InCluster::start(2).await?;
        // No Istio here: check must still find istio-injection=enabled served.
        for remote in mesh.env.remotes() {
            stand_in_injector(remote)
                .await
                .with_context(|| format!("a stand-in injector on {}", remote.name))?;
        }
        Ok(mesh)
    };
    let mesh = mesh_e2e::shared(&MESH, "the mesh in the cluster", start).await;
    (mesh, TURN.lock().await)
}

/// The host pid of the webhook process of `pod` (its containers run as host processes).
fn webhook_process(pod: &Pod) -> anyhow::Result<u32> {
    let uid = pod.metadata.uid.clone().context("pod without uid")?;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if comm.trim() == "mesh-webhook" && cgroup.contains(&uid.replace('-', "_"))
            || comm.trim() == "mesh-webhook" && cgroup.contains(&uid)
        {
            return Ok(pid);
        }
    }
    anyhow::bail!("no mesh-webhook process of pod {uid} on this host")
}

#[tokio::test]
async fn the_installed_deployment_propagates_before_kubectl_returns_as_non_root_on_a_read_only_root()
-> anyhow::Result<()> {
    let (mesh, _turn) = mesh().await;
    let env = &mesh.env;

    let ns = create_everywhere(env, "incluster").await?;
    let warnings = label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    // Pushed by a pod before the apiserver answered: on every remote already.
    assert_remotes(
        env,
        &ns,
        &injection_enabled(),
        &format!("warnings: {warnings}"),
    )
    .await?;

    let pods = mesh.running_pods().await?;
    assert_eq!(pods.len(), 2, "{pods:?}");
    for pod in &pods {
        let pid = webhook_process(pod)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            uid_line.split_whitespace().skip(1).all(|id| id == "65532"),
            "{uid_line}"
        );
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts"))?;
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("/"))
            .context("no root mount")?;
        let options = root.split_whitespace().nth(3).unwrap_or("");
        assert!(options.split(',').any(|o| o == "ro"), "root mounted {root}");
    }

    let report = CheckReport::of(mesh.plugin()).await?;
    let available = report.check(&format!("Deployment {DEPLOYMENT} is available"))?;
    assert_eq!(available.result, "ok", "{available:?}");
    assert_eq!(available.detail.as_deref(), Some("2/2 replicas"));
    assert_eq!(report.errors, 0, "{report:#?}");
    Ok(())
}

#[tokio::test]
async fn killing_the_leader_pod_hands_the_lease_over_and_propagation_continues()
-> anyhow::Result<()> {
    let (mesh, _turn) = mesh().await;
    let env = &mesh.env;
    let leader = mesh.leader().await?;
    let pods: Api<Pod> = Api::namespaced(env.primary().client().await?, NAMESPACE);
    pods.delete(&leader, &DeleteParams::default().grace_period(0))
        .await?;
    eventually("another pod holds the Lease", DEADLINE, || async {
        Ok((mesh.leader().await? != leader).then_some(()))
    })
    .await?;

    // The reconciler runs on the new leader: a hand edit on a remote is reverted.
    let ns = create_everywhere(env, "handover").await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    let remote = &env.remotes()[0];
    edit_labels(remote, &ns, json!({"istio-injection": "disabled"})).await?;
    eventually("the new leader reverts the drift", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await? == Some(injection_enabled())).then_some(()))
    })
    .await?;
    mesh.wait_rolled_out().await
}

#[tokio::test]
async fn a_rolling_update_loses_no_change_made_during_it() -> anyhow::Result<()> {
    let (mesh, _turn) = mesh().await;
    let env = &mesh.env;
    let mut namespaces = Vec::new();
    for _ in 0..PARALLEL {
        namespaces.push(create_everywhere(env, "rolling").await?);
    }
    let next_image = format!("{IMAGE}-next");
    mesh.import_image(&next_image).await?;

    // Rolled forward and back: each replica replaced twice, each replacement a chance for a
    // call to reach a replica that stops.
    let mut changes = Changes::default();
    for image in [next_image.as_str(), IMAGE] {
        changes.during_rollout(mesh, &namespaces, image).await?;
    }
    // The fast path is best effort during a rollout: a few calls (1-7% here) reach no replica
    // that pushes before the apiserver answers (see the README's known limits). What must hold
    // is that none is lost: the reconciler of whichever replica leads delivers it.
    changes.print("the rollouts");
    assert!(changes.last > 0);
    if !changes.missed.is_empty() {
        let log = env.primary().apiserver_log();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("failing open") || l.contains("Failed calling webhook"))
        {
            eprintln!("apiserver: {line}");
        }
    }
    // Every namespace ends as on the primary.
    end_as_on_the_primary(env, &namespaces).await?;
    Ok(())
}

/// `install --rotate-certs` in the cluster: the pods roll to the new certificate (their template
/// carries its fingerprint) while the caBundle trusts the new and the previous CA, so changes
/// made meanwhile go on landing through the webhook, whichever pod answers; `install --wait`
/// drops the previous CA once the rollout is done, and `--rotate-certs --wait` ends trusting
/// the new CA only.
#[tokio::test]
async fn a_certificate_rotation_keeps_the_webhook_trusted_while_the_pods_roll() -> anyhow::Result<()>
{
    let (mesh, _turn) = mesh().await;
    let env = &mesh.env;
    let mut namespaces = Vec::new();
    for _ in 0..PARALLEL {
        namespaces.push(create_everywhere(env, "rotation").await?);
    }
    let (previous, _) = serving(mesh).await?;

    let mut changes = Changes::default();
    let stderr = changes
        .during_install(mesh, &namespaces, &["--rotate-certs"])
        .await?;
    assert!(
        has_line(
            &stderr,
            "• the webhook configuration trusts the previous CA too: re-run install without \
             --rotate-certs once Deployment mesh-webhook has rolled out (or with --wait) to drop it"
        ),
        "{stderr}"
    );
    let (trusted, cert) = serving(mesh).await?;
    assert_eq!(trusted, format!("{}{previous}", cert.ca_pem), "{stderr}");
    let template = mesh.deployment().await?.spec.context("no spec")?.template;
    let annotations = template.metadata.and_then(|m| m.annotations);
    assert_eq!(
        annotations
            .as_ref()
            .and_then(|a| a.get(kubectl_mesh::render::SERVING_CERT_ANNOTATION)),
        Some(&cert.fingerprint()),
        "the pods roll to the new certificate: {annotations:?}"
    );
    // The fast path is best effort while replicas stop (see the rolling update above); without
    // the previous CA, every call to a pod not yet replaced would fail.
    changes.print("the rotation");
    assert!(
        changes.last > 0 && changes.missed.len() * 4 <= changes.last,
        "{} of {} changes missed the webhook",
        changes.missed.len(),
        changes.last
    );

    // The rollout is over: a re-run with --wait keeps the certificate and drops the previous CA.
    let stderr = reinstall(mesh, &["--wait"]).await?;
    assert!(
        has_line(
            &stderr,
            "✓ MutatingWebhookConfiguration kubectl-mesh applied: it no longer trusts the previous \
             CA (every replica serves the current certificate)"
        ),
        "{stderr}"
    );
    assert_eq!(serving(mesh).await?.0, cert.ca_pem);

    // Rotated and waited for at once: install returns trusting the new CA only, its pods
    // serving the new certificate.
    let stderr = reinstall(mesh, &["--rotate-certs", "--wait"]).await?;
    assert!(!stderr.contains("re-run install"), "{stderr}");
    let (trusted, rotated) = serving(mesh).await?;
    assert_ne!(rotated.ca_pem, cert.ca_pem, "no new certificate: {stderr}");
    assert_eq!(trusted, rotated.ca_pem, "{stderr}");
    // No replica of the previous certificate is left when install returns, terminating ones
    // included: one could still answer a call, which would fail open once its CA was dropped.
    let pods = Api::<Pod>::namespaced(env.primary().client().await?, NAMESPACE)
        .list(&ListParams::default().labels(&kubectl_mesh::render::webhook_pod_selector()))
        .await?;
    let previous: Vec<String> = pods
        .items
        .iter()
        .filter(|p| {
            p.annotations()
                .get(kubectl_mesh::render::SERVING_CERT_ANNOTATION)
                != Some(&rotated.fingerprint())
        })
        .map(ResourceExt::name_any)
        .collect();
    assert!(
        previous.is_empty(),
        "left serving the previous certificate: {previous:?}"
    );
    pushing(
        mesh,
        &namespaces[0],
        "a change pushed through the rotated certificate",
    )
    .await?;

    end_as_on_the_primary(env, &namespaces).await?;
    let report = CheckReport::of(mesh.plugin()).await?;
    assert_eq!(report.errors, 0, "{report:#?}");
    Ok(())
}

/// A re-run of install soon after `--rotate-certs`, before the pods rolled (here: the rollout
/// is paused), keeps trusting the previous CA: the pods still serve its certificate, and
/// dropping it made every call to them fail open.
#[tokio::test]
async fn a_re_run_before_the_pods_rolled_keeps_trusting_the_ca_they_serve() -> anyhow::Result<()> {
    let (mesh, _turn) = mesh().await;
    let env = &mesh.env;
    let deployment = format!("deployment/{DEPLOYMENT}");
    let rollout = |verb: &'static str| {
        let deployment = deployment.clone();
        async move {
            let args = ["rollout", verb, "-n", NAMESPACE, &deployment];
            kubectl(env, env.primary(), &args).await
        }
    };
    rollout("pause").await?;
    let re_run = async {
        let (previous, _) = serving(mesh).await?;
        reinstall(mesh, &["--rotate-certs"]).await?;
        let stderr = reinstall(mesh, &[]).await?;
        let (trusted, cert) = serving(mesh).await?;
        anyhow::ensure!(
            trusted == format!("{}{previous}", cert.ca_pem),
            "the previous CA dropped while the pods serve it: {stderr}"
        );
        anyhow::ensure!(
            stderr.contains("the webhook configuration trusts the previous CA too"),
            "{stderr}"
        );
        Ok(())
    }
    .await;
    rollout("resume").await?;
    reinstall(mesh, &["--wait"]).await?;
    let ns = create_everywhere(env, "rerun").await?;
    pushing(mesh, &ns, "the rolled replicas push").await?;
    re_run
}

/// Replicas that run but never get ready (here: the primary refuses them its namespaces, so
/// they never list it) do not hold a drain of their node: the disruption budget lets a replica
/// that is not ready be evicted, where by default it counts only ready ones and allows none.
#[tokio::test]
async fn replicas_that_never_get_ready_do_not_block_an_eviction() -> anyhow::Result<()> {
    let (mesh, _turn) = mesh().await;
    let primary = mesh.env.primary().client().await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(primary.clone());
    let binding = kubectl_mesh::render::cluster_role_binding().name_any();
    bindings.delete(&binding, &DeleteParams::default()).await?;
    let unready = restart_pods(mesh).await.and(unready_replicas(mesh).await);
    let evicted = match &unready {
        Ok(pods) => {
            let api: Api<Pod> = Api::namespaced(primary, NAMESPACE);
            Some(api.evict(&pods[0], &EvictParams::default()).await)
        }
        Err(_) => None,
    };
    // The binding back, and replicas that start with it, whatever happened above; serving
    // again before the next test's turn.
    reinstall(mesh, &[]).await?;
    restart_pods(mesh).await?;
    mesh.wait_rolled_out().await?;
    let ns = create_everywhere(&mesh.env, "evicted").await?;
    pushing(mesh, &ns, "the replicas started again push").await?;
    let unready = unready?;
    evicted
        .context("no eviction")?
        .with_context(|| format!("the eviction of {}, running but not ready", unready[0]))?;
    Ok(())
}

/// Deletes every webhook pod at once; the Deployment starts others.
async fn restart_pods(mesh: &InCluster) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(mesh.env.primary().client().await?, NAMESPACE);
    let webhook_pods = ListParams::default().labels("app.kubernetes.io/name=mesh-webhook");
    api.delete_collection(&DeleteParams::default().grace_period(0), &webhook_pods)
        .await?;
    Ok(())
}

/// Waits until both replicas run and neither is ready, and the disruption budget counts no
/// healthy pod (the eviction is judged on what it counted); their names.
async fn unready_replicas(mesh: &InCluster) -> anyhow::Result<Vec<String>> {
    let primary = mesh.env.primary().client().await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(primary, NAMESPACE);
    eventually("two replicas run, neither ready", DEADLINE, || async {
        let pods = mesh.running_pods().await?;
        let ready = pods.iter().any(|p| describe_pod(p).ends_with("ready=True"));
        let budget = budgets.get(DEPLOYMENT).await?;
        let generation = budget.metadata.generation;
        let counted = budget
            .status
            .filter(|s| s.observed_generation == generation);
        let none_healthy = counted.as_ref().is_some_and(|s| s.current_healthy == 0);
        // Not yet: what is, for the message of a wait that times out.
        anyhow::ensure!(
            pods.len() == 2 && !ready && none_healthy,
            "running: {:?}; budget: {counted:?}",
            pods.iter().map(describe_pod).collect::<Vec<_>>()
        );
        Ok(Some(pods.iter().map(|p| p.name_any()).collect()))
    })
    .await
}

/// Labels `ns` on the primary until the webhook pushes the change to every remote before
/// kubectl returns (its warnings say so): after pods were replaced, the Service may not send
/// calls to the new ones yet, and a call that reaches none fails open.
async fn pushing(mesh: &InCluster, ns: &str, what: &str) -> anyhow::Result<()> {
    let env = &mesh.env;
    relabel_until(
        env,
        env.primary(),
        ns,
        what,
        |n| vec![format!("istio-injection=pushed-{n}")],
        |out| async move {
            let warnings = String::from_utf8_lossy(&out.stderr);
            let landed = env.remotes().iter().all(|remote| {
                warnings.lines().any(|line| {
                    line.contains("kubectl-mesh: ")
                        && line.contains(remote.name.as_str())
                        && (line.contains("istio-injection=pushed-")
                            || line.contains("already in sync"))
                })
            });
            Ok(landed.then_some(()))
        },
    )
    .await
}

/// The caBundle the apiserver trusts and the serving certificate of the Secret.
async fn serving(mesh: &InCluster) -> anyhow::Result<(String, ServingCert)> {
    let (_, webhook) = installed_webhook(&mesh.env).await?;
    let bundle = webhook.client_config.ca_bundle.unwrap_or_default().0;
    let secrets: Api<Secret> = Api::namespaced(mesh.env.primary().client().await?, NAMESPACE);
    let secret = secrets.get(kubectl_mesh::render::TLS_SECRET).await?;
    let cert = ServingCert::from_secret(&secret).context("an incomplete serving certificate")?;
    Ok((String::from_utf8(bundle)?, cert))
}

/// `kubectl mesh install` as the mesh was installed, with `args`; its stderr.
async fn reinstall(mesh: &InCluster, args: &[&str]) -> anyhow::Result<String> {
    let client = mesh.env.webhook_client();
    let mut install = mesh.plugin();
    install
        .args(["install", "--image", IMAGE, "--client-ca-file"])
        .arg(&client.ca_cert)
        .args(["--client-allowed-names", &client.name])
        .args(args);
    Ok(String::from_utf8(run(install).await?.stderr)?)
}

/// Label changes made during rollouts, and those not on every remote when the apiserver
/// answered.
#[derive(Default)]
struct Changes {
    last: usize,
    missed: Vec<String>,
}

/// Namespaces changed at the same time, each in a loop of its own: more calls in flight when a
/// replica stops.
const PARALLEL: usize = 3;

impl Changes {
    /// Says how many changes made `during` something were on every remote when the apiserver
    /// answered, and which were not.
    fn print(&self, during: &str) {
        eprintln!(
            "{} of {} changes during {during} were on every remote when the apiserver answered; \
             not: {:?}",
            self.last - self.missed.len(),
            self.last,
            self.missed
        );
    }

    /// Runs [`reinstall`] with `args` while each of `PARALLEL` namespaces changes every
    /// 100 ms, until install has returned, the Deployment has rolled out and a second more;
    /// install's stderr. Records the changes as [`Changes::during_rollout`] does.
    async fn during_install(
        &mut self,
        mesh: &InCluster,
        namespaces: &[String],
        args: &[&str],
    ) -> anyhow::Result<String> {
        let done = AtomicBool::new(false);
        let loops = namespaces.iter().map(|ns| change_until(mesh, ns, &done));
        // The loops stop however install and the wait end.
        let install = async {
            let installed = reinstall(mesh, args).await;
            let rolled = match &installed {
                Ok(_) => mesh.wait_rolled_out().await,
                Err(_) => Ok(()),
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.store(true, Ordering::Release);
            rolled.and(installed)
        };
        let (loops, installed) = tokio::join!(futures::future::join_all(loops), install);
        for result in loops {
            let (count, missed) = result?;
            self.last += count;
            self.missed.extend(missed);
        }
        installed
    }

    /// Rolls the webhook Deployment out to `image`, changing the label of each of `PARALLEL`
    /// namespaces every 100 ms until the rollout is over and a second after; records the
    /// changes not on every remote when the apiserver answered (the push is best effort while
    /// replicas stop; the caller then requires the reconciler to deliver every one).
    async fn during_rollout(
        &mut self,
        mesh: &InCluster,
        namespaces: &[String],
        image: &str,
    ) -> anyhow::Result<()> {
        let env = &mesh.env;
        kubectl(
            env,
            env.primary(),
            &[
                "set",
                "image",
                "-n",
                NAMESPACE,
                &format!("deployment/{DEPLOYMENT}"),
                &format!("{DEPLOYMENT}={image}"),
            ],
        )
        .await?;
        let done = AtomicBool::new(false);
        let loops = namespaces.iter().map(|ns| change_until(mesh, ns, &done));
        // The loops stop however the wait ends: a rollout that never finishes fails the test
        // instead of leaving them changing labels forever.
        let watch = async {
            let rolled = wait_rolled_out_to(mesh, image).await;
            done.store(true, Ordering::Release);
            rolled
        };
        let (loops, watched) = tokio::join!(futures::future::join_all(loops), watch);
        watched?;
        for result in loops {
            let (count, missed) = result?;
            self.last += count;
            self.missed.extend(missed);
        }
        Ok(())
    }
}

/// Changes `ns`'s label every 100 ms until `done`: how many changes, and those missed.
async fn change_until(
    mesh: &InCluster,
    ns: &str,
    done: &AtomicBool,
) -> anyhow::Result<(usize, Vec<String>)> {
    let env = &mesh.env;
    let primary = mesh_e2e::namespaces(env.primary()).await?;
    let mut remotes = Vec::new();
    for remote in env.remotes() {
        remotes.push((remote, mesh_e2e::namespaces(remote).await?));
    }
    let (mut count, mut missed) = (0, Vec::new());
    while !done.load(Ordering::Acquire) {
        count += 1;
        // Values that ask Istio for nothing, so that check has nothing to say about them.
        let value = format!("v{count}");
        let patch = json!({"metadata": {"labels": {"istio-injection": value}}});
        primary
            .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        for (remote, api) in &remotes {
            let now = api.get(ns).await?.metadata.labels.unwrap_or_default();
            if now.get("istio-injection") != Some(&value) {
                missed.push(format!("{ns} {value} on {}: {now:?}", remote.name));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((count, missed))
}

/// Waits until every replica runs `image` and is available, and a second more.
async fn wait_rolled_out_to(mesh: &InCluster, image: &str) -> anyhow::Result<()> {
    const ROLLOUT: Duration = Duration::from_secs(180);
    let started = Instant::now();
    // A read that fails on the busy apiserver is asked again: only the deadline fails the wait.
    let mut last_error = None;
    loop {
        match rolled_out(mesh, image).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if started.elapsed() > ROLLOUT {
            let pods = mesh.running_pods().await.unwrap_or_default();
            let states: Vec<String> = pods.iter().map(describe_pod).collect();
            anyhow::bail!(
                "the rollout to {image} did not finish within {ROLLOUT:?}; deployment status: \
                 {:?}; running pods: {states:?}; last error reading them: {last_error:?}",
                mesh.deployment().await.ok().and_then(|d| d.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// A pod's name, image and readiness, for a failure message.
fn describe_pod(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or("?");
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str())
        .unwrap_or("?");
    format!("{name} {image} ready={ready}")
}

/// Every replica runs `image` and is available.
async fn rolled_out(mesh: &InCluster, image: &str) -> anyhow::Result<bool> {
    let d = mesh.deployment().await?;
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.unwrap_or_default();
    let pods = mesh.running_pods().await?;
    let all_new = pods.iter().all(|p| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .all(|c| c.image.as_deref() == Some(image))
        })
    });
    Ok(status.updated_replicas == Some(wanted)
        && status.available_replicas == Some(wanted)
        && status.replicas == Some(wanted)
        && all_new)
}

/// Waits until each of `namespaces` carries on every remote the managed labels it has on the
/// primary.
async fn end_as_on_the_primary(
    env: &mesh_e2e::mesh_testenv::TestEnv,
    namespaces: &[String],
) -> anyhow::Result<()> {
    for ns in namespaces {
        let on_primary = managed_labels(env.primary(), ns).await?;
        for remote in env.remotes() {
            eventually(
                &format!("{ns} on {} ends as on the primary", remote.name),
                DEADLINE,
                || async { Ok((managed_labels(remote, ns).await? == on_primary).then_some(())) },
            )
            .await?;
        }
    }
    Ok(())
}
