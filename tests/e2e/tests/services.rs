//! `kubectl mesh services` against real clusters: Services and EndpointSlices created with
//! kubectl on the primary and the remotes (slices by hand: the default environment has no
//! node, so no controller fills them). remote-1 has a view identity (`attach
//! --services-view`), remote-2 none: its column says what enables it. A frozen remote is a
//! column state, not a failure of the command.

use std::time::Duration;

use mesh_e2e::{
    create_everywhere, describe, eventually, kubectl_apply, label_on_primary, shared_mesh, text,
};
use mesh_testenv::mesh::Mesh;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// A Service with these ports.
fn service(ns: &str, name: &str, ports: &[(&str, u16)]) -> String {
    let ports: String = ports
        .iter()
        .map(|(n, p)| format!("\n  - name: {n}\n    port: {p}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  \
         selector:\n    app: {name}\n  ports:{ports}\n---\n"
    )
}

/// An EndpointSlice of `service` with endpoints ready or not.
fn slice(ns: &str, name: &str, service: &str, ready: &[bool]) -> String {
    let endpoints: String = ready
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "\n- addresses: [\"10.1.0.{}\"]\n  conditions:\n    ready: {r}",
                i + 1
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: \
         IPv4\nports:\n- name: http\n  port: 8080\nendpoints:{endpoints}\n---\n"
    )
}

/// `kubectl mesh services <args> -o json`: the report and stderr.
async fn services_json(mesh: &Mesh, args: &[&str]) -> anyhow::Result<(Value, String)> {
    let mut cmd = tokio::process::Command::from(mesh.plugin());
    cmd.arg("services").args(args).args(["-o", "json"]);
    let out = cmd.output().await?;
    anyhow::ensure!(out.status.success(), "services: {}", describe(&out));
    Ok((serde_json::from_slice(&out.stdout)?, text(&out.stderr)))
}

/// The row of `ns/name`.
fn row<'a>(report: &'a Value, ns: &str, name: &str) -> Option<&'a Value> {
    report["services"]
        .as_array()?
        .iter()
        .find(|s| s["namespace"] == ns && s["name"] == name)
}

#[tokio::test]
async fn services_across_clusters_with_endpoints_ports_and_column_states() -> anyhow::Result<()> {
    let (env, mesh) = shared_mesh(2).await;
    let (remote_1, remote_2) = (&env.remotes()[0], &env.remotes()[1]);
    let out = mesh.attach_with(remote_1, &["--services-view"]).await?;
    anyhow::ensure!(out.status.success(), "attach: {}", describe(&out));

    let ns = create_everywhere(env, "svc").await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    kubectl_apply(
        env,
        env.primary(),
        &(service(&ns, "web", &[("http", 80)])
            + &service(&ns, "api", &[("grpc", 8080)])
            + &slice(&ns, "web-p", "web", &[true])),
    )
    .await?;
    kubectl_apply(
        env,
        remote_1,
        &(service(&ns, "web", &[("http", 80)])
            + &service(&ns, "api", &[("grpc", 9090)])
            + &service(&ns, "only-here", &[("http", 80)])
            + &slice(&ns, "web-a", "web", &[true, false])
            + &slice(&ns, "web-b", "web", &[true])),
    )
    .await?;
    kubectl_apply(env, remote_2, &service(&ns, "web", &[("http", 80)])).await?;

    // Until the label reached remote-1, its namespace is not injected there.
    let report = eventually(
        "services shows the namespace injected on remote-1",
        DEADLINE,
        || async {
            let (report, _) = services_json(mesh, &[&ns]).await?;
            let injected = row(&report, &ns, "web")
                .is_some_and(|r| r["clusters"]["remote-1"]["injected"] == true);
            Ok(injected.then_some(report))
        },
    )
    .await?;
    let columns: Vec<(&str, &str)> = report["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("primary", "read"),
            ("remote-1", "read"),
            ("remote-2", "no-credentials")
        ],
        "{report}"
    );
    assert_eq!(
        report["clusters"][2]["enable"],
        "kubectl mesh attach <kubeconfig> --name remote-2 --services-view"
    );
    let names: Vec<&str> = report["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["api", "only-here", "web"], "{report}");

    let web = row(&report, &ns, "web").expect("web");
    assert_eq!(web["portsMatch"], true, "{web}");
    assert_eq!(web["type"], "ClusterIP");
    assert_eq!(web["primary"]["readyEndpoints"], 1, "{web}");
    assert_eq!(web["clusters"]["remote-1"]["readyEndpoints"], 2, "{web}");
    assert_eq!(web["primary"]["injected"], true);
    assert!(web["clusters"].get("remote-2").is_none(), "{web}");
    let api = row(&report, &ns, "api").expect("api");
    assert_eq!(api["portsMatch"], false, "{api}");
    assert_eq!(api["ports"][0]["port"], 8080);
    assert_eq!(api["clusters"]["remote-1"]["ports"][0]["port"], 9090);
    let only = row(&report, &ns, "only-here").expect("only-here");
    assert_eq!(only["primary"]["exists"], false);
    assert_eq!(only["clusters"]["remote-1"]["exists"], true);

    // The table says the same, and what enables remote-2.
    let mut table = tokio::process::Command::from(mesh.plugin());
    table.args(["services", &ns]);
    let out = table.output().await?;
    anyhow::ensure!(out.status.success(), "services: {}", describe(&out));
    let stdout = text(&out.stdout);
    let web_line = stdout
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_default();
    assert!(
        web_line.contains("1 ready (injected)")
            && web_line.contains("2 ready (injected)")
            && web_line.contains("(no view credentials)"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("grpc:8080/TCP (differ)"),
        "{}",
        describe(&out)
    );
    assert!(
        text(&out.stderr).contains("--name remote-2 --services-view"),
        "{}",
        describe(&out)
    );

    // Pods per cluster with -o wide: none here (no node), counted as zero where read.
    let (wide, _) = services_json(mesh, &[&ns]).await?;
    let web = row(&wide, &ns, "web").expect("web");
    assert_eq!(web["clusters"]["remote-1"]["pods"]["withProxy"], 0, "{web}");

    // A frozen remote is a column, and the command still answers.
    env.pause_apiserver(&remote_1.name)?;
    let frozen = services_json(mesh, &[&ns, "--remote-timeout", "2s"]).await;
    env.resume_apiserver(&remote_1.name).await?;
    let (report, stderr) = frozen?;
    assert_eq!(report["clusters"][1]["state"], "unreachable", "{report}");
    assert!(stderr.contains("remote-1 unreachable"), "{stderr}");
    let web = row(&report, &ns, "web").expect("web");
    assert_eq!(web["primary"]["readyEndpoints"], 1);

    // Bad input: one line saying what to do.
    let mut both = tokio::process::Command::from(mesh.plugin());
    both.args(["services", &ns, "-A"]);
    let out = both.output().await?;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        describe(&out)
    );
    Ok(())
}
