//! A sync rule chosen with `kubectl mesh install --managed-labels --excluded-namespaces` is
//! rendered for the webhook and recorded on the primary, and `status`, `sync` and
//! `detach --strip-labels` apply it instead of the default rule.
//!
//! Alone in its test binary: the custom rule is installed on this binary's own primary, which
//! no other test shares. No webhook runs; `sync` does the webhook's work.

use std::process::{Command, Output};

use anyhow::Context as _;
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::fixtures::{self, DEAD_WEBHOOK_URL, mesh_invocation, offline_invocation, output};
use mesh_e2e::{
    create_labelled_namespace, create_namespace, describe, labels, namespace_labels, shared_env,
    text, unique_name,
};
use serde_json::{Value, json};

/// A label key outside the default rule.
const ZONE: &str = "team.example.com/zone";
/// A default managed label the custom rule leaves out.
const REVISION: &str = "istio.io/rev";

async fn succeeded(cmd: Command) -> anyhow::Result<Output> {
    let out = output(cmd).await?;
    anyhow::ensure!(out.status.success(), "{}", describe(&out));
    Ok(out)
}

/// The item of a `-o json` list of kind `kind`.
fn item<'a>(list: &'a Value, kind: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {list}"))
}

fn env_value<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .map(|e| &e["value"])
        .unwrap_or_else(|| panic!("no {name} in {deployment}"))
}

#[tokio::test]
async fn install_renders_the_rule_for_the_webhook_and_the_apiserver() -> anyhow::Result<()> {
    let install = offline_invocation(&[
        "install",
        "--dry-run",
        "-o",
        "json",
        "--managed-labels",
        &format!("{ZONE},istio-injection"),
        "--excluded-namespaces",
        "legacy",
    ])?;
    let out = succeeded(install).await?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let deployment = item(&list, "Deployment");
    assert_eq!(
        env_value(deployment, "MESH_WEBHOOK_MANAGED_LABELS"),
        &json!(format!("{ZONE},istio-injection"))
    );
    assert_eq!(
        env_value(deployment, "MESH_WEBHOOK_EXCLUDED_NAMESPACES"),
        &json!("legacy,kubectl-mesh")
    );
    let configuration = item(&list, "MutatingWebhookConfiguration");
    assert_eq!(
        configuration["metadata"]["annotations"],
        json!({
            "kubectl-mesh.io/managed-labels": format!("{ZONE},istio-injection"),
            "kubectl-mesh.io/excluded-namespaces": "legacy,kubectl-mesh",
        })
    );
    let conditions = configuration["webhooks"][0]["matchConditions"].to_string();
    assert!(conditions.contains(&format!("'{ZONE}'")), "{conditions}");
    assert!(conditions.contains("'legacy'"), "{conditions}");
    assert!(!conditions.contains(REVISION), "{conditions}");
    assert_eq!(text(&out.stderr), "", "{}", describe(&out));

    // A webhook outside the cluster is told how to start.
    let url_mode = offline_invocation(&[
        "install",
        "--dry-run",
        "--webhook-url",
        "https://127.0.0.1:9443",
        "--managed-labels",
        ZONE,
    ])?;
    let out = succeeded(url_mode).await?;
    assert_eq!(
        text(&out.stderr),
        format!("• start mesh-webhook with --managed-labels {ZONE}\n"),
        "{}",
        describe(&out)
    );

    for (flag, value, error) in [
        (
            "--managed-labels",
            "istio-injection,bad key",
            "error: invalid --managed-labels key \"bad key\": ",
        ),
        (
            "--managed-labels",
            ",",
            "error: --managed-labels names no label; ",
        ),
        (
            "--excluded-namespaces",
            "Legacy",
            "error: invalid --excluded-namespaces name \"Legacy\": ",
        ),
    ] {
        let out = output(offline_invocation(&["install", "--dry-run", flag, value])?).await?;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(error), "{}", describe(&out));
        assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
    }
    Ok(())
}

#[tokio::test]
async fn commands_apply_the_installed_rule() -> anyhow::Result<()> {
    let env = shared_env(1).await;
    let (primary, remote) = (env.primary(), &env.remotes()[0]);
    let name = unique_name("zoned");
    // Attached under the default rule (the fixture installs it), then the rule changes.
    fixtures::attach(env, remote, &name, Default::default()).await?;
    let legacy = unique_name("legacy");
    let install = mesh_invocation(
        env,
        &[
            "install",
            "--webhook-url",
            DEAD_WEBHOOK_URL,
            "--managed-labels",
            &format!("{ZONE},istio-injection"),
            "--excluded-namespaces",
            &legacy,
        ],
    )?;
    let out = succeeded(install).await?;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "• start mesh-webhook with --managed-labels {ZONE},istio-injection \
             --excluded-namespaces {legacy},kubectl-mesh\n"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "! the sync rule changes from managed istio-injection, istio.io/dataplane-mode, \
             istio.io/rev; excluded kube-node-lease, kube-public, kube-system, kubectl-mesh to \
             managed istio-injection, {ZONE}; excluded kubectl-mesh, {legacy}\n"
        )),
        "{stderr}"
    );

    // The remote's sync scope still follows the rule of its attach: check tells, and a
    // re-attach (as install says) repairs it.
    let check = mesh_invocation(env, &["check", "-o", "json"])?;
    let report = CheckReport::parse(&output(check).await?)?;
    let scope = report.cluster_check(&name, "credentials may change only the managed labels");
    assert!(
        scope.is_some_and(|c| c.says("error", "another sync rule")),
        "{report:#?}"
    );
    // So does its guard, written for the old rule's labels and excluded namespaces.
    let guard = report.cluster_check(&name, "remote guard matches spec.remoteGuard");
    assert!(
        guard.is_some_and(|c| c.says("warning", "its managed labels, excluded namespaces differ")),
        "{report:#?}"
    );
    fixtures::attach(env, remote, &name, Default::default()).await?;

    // On the primary: a zone (managed now) and a revision (no longer managed).
    let shop = unique_name("shop");
    create_labelled_namespace(primary, &shop, &[(ZONE, "a"), (REVISION, "canary")]).await?;
    create_labelled_namespace(remote, &shop, &[(REVISION, "stable")]).await?;
    create_labelled_namespace(primary, &legacy, &[(ZONE, "b")]).await?;
    create_namespace(remote, &legacy).await?;

    let status = mesh_invocation(env, &["status", "-o", "json", &shop, &legacy])?;
    let out = succeeded(status).await?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let row = |ns: &str| {
        report["namespaces"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == ns))
            .cloned()
            .unwrap_or_else(|| panic!("no row {ns} in {report}"))
    };
    assert_eq!(
        row(&shop)["primary"]["labels"],
        json!({ZONE: "a"}),
        "{report}"
    );
    let cell = &row(&shop)["clusters"][&name];
    assert_eq!(cell["state"], "drifted", "{report}");
    assert_eq!(cell["set"], json!({ZONE: "a"}), "{report}");
    assert_eq!(cell.get("remove"), None, "{report}");
    assert_eq!(
        row(&legacy)["clusters"][&name]["state"],
        "excluded",
        "{report}"
    );
    assert_eq!(report["drifted"], 1, "{report}");

    succeeded(mesh_invocation(env, &["sync"])?).await?;
    assert_eq!(
        namespace_labels(remote, &shop)
            .await?
            .context("shop is gone")?,
        labels(&[(ZONE, "a"), (REVISION, "stable")]),
        "sync wrote the zone and left the unmanaged revision alone"
    );
    assert_eq!(
        namespace_labels(remote, &legacy)
            .await?
            .context("legacy is gone")?,
        labels(&[])
    );
    succeeded(mesh_invocation(env, &["status", "--exit-code", &shop])?).await?;

    let mut detach = mesh_invocation(env, &["detach", &name, "--strip-labels"])?;
    detach.arg("--remote-kubeconfig").arg(&remote.kubeconfig);
    succeeded(detach).await?;
    assert_eq!(
        namespace_labels(remote, &shop)
            .await?
            .context("shop is gone")?,
        labels(&[(REVISION, "stable")]),
        "detach stripped the managed zone and only it"
    );
    Ok(())
}
