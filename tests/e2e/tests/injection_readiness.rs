//! Injection readiness against a real istiod with two revisions: a label set on the primary
//! that asks for a revision no remote has an injector for is said at once (the admission
//! warning, per cluster) and fails `check`; once the revision's istiod and injectors run, the
//! warning is gone, `check` passes and new pods get that revision's sidecar. Credentials that
//! may not read injectors (an older attach) leave readiness unknown: a warning, not a failure.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kubectl_mesh::remote_setup as setup;
use mesh_e2e::check_report::{CheckEntry, CheckReport};
use mesh_e2e::istio_mesh::{dry_run_pod, istio_mesh, sidecar};
use mesh_e2e::{create_everywhere, eventually, label_on_primary};
use mesh_testenv::istio::IstioOptions;
use mesh_testenv::mesh::Mesh;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const INJECTION_CHECK: &str = "namespaces asking for sidecars have an injector";

/// The injection check of every remote, in cluster order.
fn injection_checks(report: &CheckReport) -> Vec<Option<CheckEntry>> {
    ["remote-1", "remote-2"]
        .iter()
        .map(|c| report.cluster_check(c, INJECTION_CHECK).cloned())
        .collect()
}

/// Runs check until the injection check of every remote has `result`; that report.
async fn injection_checks_become(
    mesh: &Mesh,
    result: &str,
    what: &str,
) -> anyhow::Result<CheckReport> {
    eventually(what, DEADLINE, || async {
        let report = CheckReport::of(mesh.plugin()).await?;
        let all = injection_checks(&report)
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.result == result));
        Ok(all.then_some(report))
    })
    .await
}

/// `kubectl mesh status -o wide` for `ns`: its stdout and stderr.
async fn status_wide(mesh: &Mesh, ns: &str) -> anyhow::Result<(String, String)> {
    let mut cmd = tokio::process::Command::from(mesh.plugin());
    cmd.args(["status", "-o", "wide", ns]);
    let out = cmd.output().await?;
    Ok((
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// The warnings of the webhook kubectl printed.
fn mesh_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Warning: kubectl-mesh: "))
        .collect()
}

#[tokio::test]
async fn a_revision_without_an_injector_is_said_and_fails_check_until_it_runs() -> anyhow::Result<()>
{
    let (env, istio, mesh) = istio_mesh(2, IstioOptions::default()).await?;
    let shop = create_everywhere(&env, "shop").await?;
    let unserved = |cluster: &str| {
        format!("{cluster}: no injector for revision canary: pods in {shop} will not get sidecars")
    };

    // Only the default revision runs. The label is set again until the webhook's watches have
    // listed the remotes' injectors (they start when the remotes are attached).
    let warnings = eventually(
        "the webhook names every remote without a canary injector",
        DEADLINE,
        || async {
            label_on_primary(&env, &shop, &["istio.io/rev-"]).await?;
            let stderr = label_on_primary(&env, &shop, &["istio.io/rev=canary"]).await?;
            let warnings: Vec<String> = mesh_warnings(&stderr)
                .into_iter()
                .map(str::to_owned)
                .collect();
            Ok(warnings.contains(&unserved("remote-2")).then_some(warnings))
        },
    )
    .await?;
    for cluster in ["remote-1", "remote-2"] {
        assert!(warnings.contains(&unserved(cluster)), "{warnings:#?}");
    }
    // Istio agrees: no sidecar.
    let pod = dry_run_pod(&env.remotes()[0], &shop).await?;
    assert_eq!(sidecar(&pod), None);

    let report = CheckReport::of(mesh.plugin()).await?;
    let failed = CheckEntry::error(
        INJECTION_CHECK,
        &format!("no injector for {shop} (revision canary): their pods will not get sidecars"),
        "",
    );
    for entry in injection_checks(&report) {
        let entry = entry.expect("an injection check per cluster");
        assert_eq!(
            (entry.result.as_str(), entry.detail.as_deref()),
            ("error", failed.detail.as_deref()),
            "{report:#?}"
        );
    }
    let (table, stderr) = status_wide(&mesh, &shop).await?;
    assert!(
        table.contains("istio.io/rev=canary (no injector)"),
        "{table}"
    );
    assert!(
        stderr.contains(&format!(
            "remote-1: no injector for {shop} (revision canary)"
        )),
        "{stderr}"
    );

    // The canary revision's istiod, with its injector on every remote.
    istio.start_revision(&env, "canary").await?;
    let report =
        injection_checks_become(&mesh, "ok", "check passes with the canary injectors").await?;
    assert_eq!(
        injection_checks(&report)[0]
            .as_ref()
            .and_then(|c| c.detail.as_deref()),
        Some("1 namespace served"),
        "{report:#?}"
    );
    eventually(
        "the webhook no longer warns about canary",
        DEADLINE,
        || async {
            label_on_primary(&env, &shop, &["istio.io/rev-"]).await?;
            let stderr = label_on_primary(&env, &shop, &["istio.io/rev=canary"]).await?;
            let warnings = mesh_warnings(&stderr);
            let quiet = !warnings.iter().any(|w| w.contains("no injector"));
            Ok((quiet
                && warnings
                    .iter()
                    .any(|w| w.starts_with("istio.io/rev=canary applied")))
            .then_some(()))
        },
    )
    .await?;
    let (table, _) = status_wide(&mesh, &shop).await?;
    assert!(
        table.contains("istio.io/rev=canary (injector: istio-sidecar-injector-canary)"),
        "{table}"
    );
    for remote in env.remotes() {
        let pod = dry_run_pod(remote, &shop).await?;
        let injected = sidecar(&pod).map(|s| s.revision);
        assert_eq!(injected.as_deref(), Some("canary"), "{}", remote.name);
    }

    // istio-injection set too: Istio obeys it and ignores the revision.
    let stderr = label_on_primary(&env, &shop, &["istio-injection=enabled"]).await?;
    assert!(
        mesh_warnings(&stderr).contains(
            &"istio-injection=enabled overrides istio.io/rev=canary: Istio ignores istio.io/rev \
              while istio-injection is set"
        ),
        "{stderr}"
    );
    let report =
        injection_checks_become(&mesh, "warning", "check warns about the conflict").await?;
    let conflict = injection_checks(&report)[0].clone().and_then(|c| c.detail);
    assert_eq!(
        conflict,
        Some(format!(
            "istio-injection and istio.io/rev both set on {shop} (istio-injection=enabled \
             overrides istio.io/rev=canary): Istio ignores istio.io/rev"
        )),
        "{report:#?}"
    );
    label_on_primary(&env, &shop, &["istio-injection-"]).await?;

    // Credentials of an older attach may not read injectors: not known, so not a failure.
    let remote = &env.remotes()[1];
    let roles = Api::<ClusterRole>::all(remote.client().await?);
    let mut older = setup::sync_cluster_role("remote-2");
    older.rules.get_or_insert_default().retain(|rule| {
        !rule
            .resources
            .iter()
            .flatten()
            .any(|r| r == setup::INJECTOR_RESOURCE)
    });
    let patch = json!({"rules": older.rules});
    roles
        .patch(
            setup::SYNC_ACCOUNT,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    istio.stop_revision(&env, "canary").await?;
    let report = eventually(
        "check cannot tell on remote-2 and fails on remote-1",
        DEADLINE,
        || async {
            let report = CheckReport::of(mesh.plugin()).await?;
            let checks = injection_checks(&report);
            let results: Vec<&str> = checks.iter().flatten().map(|c| c.result.as_str()).collect();
            Ok((results == ["error", "warning"]).then_some(report))
        },
    )
    .await?;
    let blind = injection_checks(&report)[1]
        .clone()
        .expect("remote-2's check");
    assert_eq!(
        blind.detail.as_deref(),
        Some("not checked: the stored credentials may not read MutatingWebhookConfigurations"),
        "{report:#?}"
    );
    assert!(
        blind.hint_mentions("re-run `kubectl mesh attach` for remote-2"),
        "{report:#?}"
    );
    Ok(())
}
