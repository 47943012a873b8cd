//! Pods that contradict their namespace, against a real istiod: real pods (stored, Pending
//! for want of a kubelet; Istio injects at creation) keep the sidecar state they were created
//! with. After the label changes on the primary, `status -o json` counts them per namespace and
//! cluster and `check` warns, read with the view identity of `attach --services-view`
//! (remote-1) or with istiod's reader (remote-2, attached with `--istio-remote-secret` only).
//! A cluster with neither says what enables it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use mesh_e2e::check_report::{CheckEntry, CheckReport};
use mesh_e2e::istio_mesh::{dry_run_pod, istio_mesh, sidecar};
use mesh_e2e::{create_everywhere, describe, eventually, label_on_primary, text};
use mesh_testenv::istio::IstioOptions;
use mesh_testenv::mesh::Mesh;
use mesh_testenv::{Cluster, TestEnv};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const PODS_CHECK: &str = "pods match their namespace's sidecar labels";
const REMOTES: [&str; 2] = ["remote-1", "remote-2"];

/// `kubectl mesh status -o json <ns>`: the report and stderr.
async fn status_json(mesh: &Mesh, ns: &str) -> anyhow::Result<(Value, String)> {
    let mut cmd = tokio::process::Command::from(mesh.plugin());
    cmd.args(["status", "-o", "json", ns]);
    let out = cmd.output().await?;
    anyhow::ensure!(out.status.success(), "status: {}", describe(&out));
    Ok((serde_json::from_slice(&out.stdout)?, text(&out.stderr)))
}

/// The contrary pods of `ns` on `cluster` in a status report, sorted (None: not read).
fn contrary(report: &Value, cluster: &str) -> Option<Vec<String>> {
    let pods = report["namespaces"][0]["clusters"][cluster]["contraryPods"].as_array()?;
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

/// Waits until `status` reports exactly `expected` contrary pods of `ns` on every remote.
async fn wait_contrary(mesh: &Mesh, ns: &str, expected: &[&str]) -> anyhow::Result<Value> {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("status reports {expected:?} contrary in {ns} on every remote"),
        DEADLINE,
        || async {
            let (report, _) = status_json(mesh, ns).await?;
            let all = REMOTES
                .iter()
                .all(|c| contrary(&report, c).as_ref() == Some(&expected));
            Ok(all.then_some(report))
        },
    )
    .await
}

/// The pods check of every remote.
async fn pods_checks(mesh: &Mesh) -> anyhow::Result<Vec<Option<CheckEntry>>> {
    let report = CheckReport::of(mesh.plugin()).await?;
    Ok(REMOTES
        .iter()
        .map(|c| report.cluster_check(c, PODS_CHECK).cloned())
        .collect())
}

/// Waits until a new pod in `ns` gets a sidecar (`injected`) or none on every remote.
async fn wait_injection(env: &TestEnv, ns: &str, injected: bool) -> anyhow::Result<()> {
    for remote in env.remotes() {
        eventually(
            &format!("a new pod in {ns} on {} injected: {injected}", remote.name),
            DEADLINE,
            || async {
                let pod = dry_run_pod(remote, ns).await?;
                Ok((sidecar(&pod).is_some() == injected).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Creates (for real) pod `name` in `ns` on `cluster`; returns whether Istio injected it.
async fn create_pod(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<bool> {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    Ok(sidecar(&created).is_some())
}

#[tokio::test]
async fn pods_contrary_to_their_namespace_are_counted_and_warned() -> anyhow::Result<()> {
    let (env, _istio, mesh) = istio_mesh(2, IstioOptions::default()).await?;
    let remote_1 = &env.remotes()[0];
    let out = mesh
        .attach_with(remote_1, &["--istio-remote-secret", "--services-view"])
        .await?;
    anyhow::ensure!(out.status.success(), "attach: {}", describe(&out));

    // Injected pods, then the label goes: they carry istio-proxy contrary to it.
    let shop = create_everywhere(&env, "shop").await?;
    label_on_primary(&env, &shop, &["istio-injection=enabled"]).await?;
    wait_injection(&env, &shop, true).await?;
    for remote in env.remotes() {
        for pod in ["injected-1", "injected-2"] {
            assert!(
                create_pod(remote, &shop, pod).await?,
                "{pod} on {}",
                remote.name
            );
        }
    }
    let report = wait_contrary(&mesh, &shop, &[]).await?;
    assert_eq!(report["clusters"][0]["pods"]["credentials"], "view");
    assert_eq!(report["clusters"][1]["pods"]["credentials"], "istio-reader");

    label_on_primary(&env, &shop, &["istio-injection-"]).await?;
    let report = wait_contrary(&mesh, &shop, &["injected-1", "injected-2"]).await?;
    assert_eq!(report["contraryPods"], 4);
    let checks = pods_checks(&mesh).await?;
    for (cluster, check) in REMOTES.iter().zip(&checks) {
        let check = check
            .as_ref()
            .map(|c| (c.result.as_str(), c.detail.clone()));
        let (result, detail) = check.unwrap_or_default();
        assert_eq!(result, "warning", "{cluster}: {checks:?}");
        let detail = detail.unwrap_or_default();
        assert!(
            detail.starts_with("2 pods lack or carry istio-proxy") && detail.contains(&shop),
            "{cluster}: {detail}"
        );
    }

    // Uninjected pods, then the label comes back: those lack it; the injected ones are fine.
    wait_injection(&env, &shop, false).await?;
    for remote in env.remotes() {
        assert!(
            !create_pod(remote, &shop, "plain").await?,
            "{}",
            remote.name
        );
    }
    label_on_primary(&env, &shop, &["istio-injection=enabled"]).await?;
    wait_contrary(&mesh, &shop, &["plain"]).await?;
    let mut wide = tokio::process::Command::from(mesh.plugin());
    wide.args(["status", "-o", "wide", &shop]);
    let out = wide.output().await?;
    assert!(
        text(&out.stdout).matches("(1 pod needs restart)").count() == 2,
        "{}",
        describe(&out)
    );
    // The default table reads no pods.
    let mut table = tokio::process::Command::from(mesh.plugin());
    table.args(["status", &shop]);
    let out = table.output().await?;
    assert!(!text(&out.stdout).contains("restart"), "{}", describe(&out));

    // A cluster with neither a view identity nor an Istio remote secret says what enables it,
    // and check says nothing of its pods.
    let remote_2 = &env.remotes()[1];
    let mut detach = tokio::process::Command::from(mesh.plugin());
    detach.args(["detach", "remote-2", "--remote-kubeconfig"]);
    detach.arg(&remote_2.kubeconfig);
    let out = detach.output().await?;
    anyhow::ensure!(out.status.success(), "detach: {}", describe(&out));
    let out = mesh.attach_with(remote_2, &[]).await?;
    anyhow::ensure!(out.status.success(), "attach: {}", describe(&out));
    let (report, stderr) = status_json(&mesh, &shop).await?;
    assert_eq!(
        report["clusters"][1]["pods"]["state"], "no-credentials",
        "{report}"
    );
    assert_eq!(contrary(&report, "remote-2"), None);
    assert!(
        stderr.contains("`kubectl mesh attach <kubeconfig> --name remote-2 --services-view`"),
        "{stderr}"
    );
    let checks = pods_checks(&mesh).await?;
    assert_eq!(checks[1], None, "{checks:?}");
    assert_eq!(
        checks[0].as_ref().map(|c| c.result.as_str()),
        Some("warning")
    );
    Ok(())
}
