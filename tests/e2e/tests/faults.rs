//! Faults: remotes that go away, changes the primary rejects after the webhook pushed them,
//! rapid flips, and webhook replicas that hand the reconciler over or push for the leader.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kubectl_mesh::remote_setup as setup;
use mesh_core::cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, MeshCluster};
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::tokens::revoke;
use mesh_e2e::{
    NO_RESYNC, carries, cluster_condition, create_everywhere, edit_labels, eventually, https_get,
    kubectl, label_on_primary, labels, lease_holder, managed_labels, namespaces, one_remote_mesh,
    own_mesh, patch_mesh_cluster, reachable, reviews_answered, route_admission_to, shared_mesh,
    syncs, unique_name, unreachable_for,
};
use mesh_testenv::mesh::Mesh;
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(45);

async fn wait_labels(
    cluster: &Cluster,
    ns: &str,
    expected: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    carries(cluster, ns, expected, DEADLINE).await
}

/// `kubectl mesh -o json status` of `mesh`: the report, and what it printed on stderr.
async fn status_json(mesh: &Mesh) -> anyhow::Result<(serde_json::Value, String)> {
    let mut status = mesh.plugin();
    status.args(["-o", "json", "status"]);
    let out = tokio::process::Command::from(status).output().await?;
    let report = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("status -o json: {e}: {}", mesh_e2e::describe(&out)))?;
    Ok((report, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The status of `cluster`'s `Reachable` condition, if it has one.
async fn reachable_status(env: &TestEnv, cluster: &str) -> anyhow::Result<Option<String>> {
    Ok(cluster_condition(env, cluster, CONDITION_REACHABLE)
        .await?
        .map(|c| c.status))
}

#[tokio::test]
async fn a_remote_that_was_down_converges_when_it_returns() -> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote_mesh(None, "outage").await?;
    reachable(&env, "remote-1").await?;

    env.stop_apiserver(&remote.name)?;
    // The edit succeeds on the primary; kubectl is told the remote missed it.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    assert!(
        warnings.contains("remote-1 unreachable")
            || warnings.contains("remote-1 did not answer in time"),
        "kubectl printed: {warnings}"
    );
    eventually("status shows remote-1 unreachable", DEADLINE, || async {
        Ok((reachable_status(&env, "remote-1").await?.as_deref() == Some("False")).then_some(()))
    })
    .await?;

    env.start_apiserver(&remote.name).await?;
    wait_labels(&remote, &ns, &labels(&[("istio-injection", "enabled")])).await?;
    reachable(&env, "remote-1").await?;
    Ok(())
}

/// Installs a ValidatingAdmissionPolicy on the primary that refuses `istio.io/rev=rejected` on
/// namespaces labelled `e2e-vap=<scope>`, and waits until the apiserver enforces it on `ns`.
///
/// Validating admission runs after mutating webhooks: the webhook pushes such an edit, then
/// the policy refuses it, so the primary keeps its value while remotes got "rejected".
async fn refuse_rejected_revision(env: &TestEnv, scope: &str, ns: &str) -> anyhow::Result<()> {
    let primary = env.primary();
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": scope},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["namespaces"]}]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('istio.io/rev' in object.metadata.labels) || object.metadata.labels['istio.io/rev'] != 'rejected'",
                "message": "revision 'rejected' is not allowed",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": scope},
        "spec": {
            "policyName": scope,
            "validationActions": ["Deny"],
            "matchResources": {"objectSelector": {"matchLabels": {"e2e-vap": scope}}},
        },
    });
    for object in [policy, binding] {
        let path = std::env::temp_dir().join(format!(
            "{scope}-{}.json",
            object["kind"].as_str().unwrap_or("x")
        ));
        std::fs::write(&path, object.to_string())?;
        let file = path.to_str().context("temporary path is not UTF-8")?;
        kubectl(env, primary, &["create", "-f", file]).await?;
        let _ = std::fs::remove_file(path);
    }
    // Policies load asynchronously: probe with server-side dry runs (the webhook pushes
    // nothing for those) until the apiserver refuses.
    eventually("policy refuses the edit", DEADLINE, || async {
        Ok(label_rejected(env, ns, true).await?.then_some(()))
    })
    .await
}

/// `kubectl label namespace <ns> istio.io/rev=rejected` on the primary; whether the policy of
/// [`refuse_rejected_revision`] refused it.
async fn label_rejected(env: &TestEnv, ns: &str, dry_run: bool) -> anyhow::Result<bool> {
    let mut label = env.kubectl(env.primary());
    label.args([
        "label",
        "namespace",
        ns,
        "--overwrite",
        "istio.io/rev=rejected",
    ]);
    if dry_run {
        label.arg("--dry-run=server");
    }
    let output = tokio::process::Command::from(label).output().await?;
    Ok(!output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("revision 'rejected' is not allowed"))
}

/// Every `istio.io/rev` value a watch of `ns` on `cluster` sees, from now on, until aborted.
struct RevisionsSeen {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl RevisionsSeen {
    async fn start(cluster: &Cluster, ns: &str) -> anyhow::Result<Self> {
        use futures::StreamExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let api = namespaces(cluster).await?;
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={ns}"));
        let watch = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut events = std::pin::pin!(kube::runtime::watcher(api, config));
                while let Some(Ok(event)) = events.next().await {
                    if let kube::runtime::watcher::Event::Apply(n)
                    | kube::runtime::watcher::Event::InitApply(n) = event
                    {
                        let rev = n.metadata.labels.unwrap_or_default().remove("istio.io/rev");
                        seen.lock().unwrap().push(rev.unwrap_or_default());
                    }
                }
            }
        });
        let this = Self { seen, watch };
        eventually("remote watch started", DEADLINE, || async {
            Ok((!this.seen().is_empty()).then_some(()))
        })
        .await?;
        Ok(this)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn assert_saw(&self, revision: &str) {
        let seen = self.seen();
        assert!(
            seen.iter().any(|rev| rev == revision),
            "the remote never carried istio.io/rev={revision}; it showed {seen:?}"
        );
    }
}

impl Drop for RevisionsSeen {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

#[tokio::test]
async fn a_pushed_change_the_primary_then_rejects_is_reverted_on_remotes() -> anyhow::Result<()> {
    let (env, _mesh) = shared_mesh(2).await;
    let ns = create_everywhere(env, "rejected").await?;
    let scope = unique_name("vap");
    let primary = env.primary();
    kubectl(
        env,
        primary,
        &[
            "label",
            "namespace",
            &ns,
            &format!("e2e-vap={scope}"),
            "istio.io/rev=stable",
        ],
    )
    .await?;
    for remote in env.remotes() {
        wait_labels(remote, &ns, &labels(&[("istio.io/rev", "stable")])).await?;
    }
    refuse_rejected_revision(env, &scope, &ns).await?;
    // Watch the first remote to see the push land before it is reverted.
    let revisions = RevisionsSeen::start(&env.remotes()[0], &ns).await?;
    assert!(
        label_rejected(env, &ns, false).await?,
        "the real edit is refused"
    );
    assert_eq!(
        managed_labels(primary, &ns).await?.unwrap_or_default(),
        labels(&[("istio.io/rev", "stable")])
    );
    for remote in env.remotes() {
        wait_labels(remote, &ns, &labels(&[("istio.io/rev", "stable")])).await?;
    }
    // The push had landed before the policy refused the edit.
    revisions.assert_saw("rejected");
    Ok(())
}

#[tokio::test]
async fn a_change_a_follower_pushed_and_the_primary_rejected_is_reverted_by_the_leader()
-> anyhow::Result<()> {
    // The follower serves admission but does not reconcile, and the leader never saw its push
    // in flight. With the periodic resync out of reach, only the leader's watch of the remote
    // can notice the remote now differs from the primary.
    let (env, mesh, remote, ns) = one_remote_mesh(Some(NO_RESYNC), "follower-pushed").await?;
    let ca = mesh.ca_pem()?;
    holds_the_lease(&env, "local-mesh-webhook", DEADLINE).await?;
    let follower = mesh.start_replica(&env, "replica-b").await?;
    route_admission_to(&env, &follower.listen).await?;

    let scope = unique_name("vap");
    // The apiserver picks up the new URL asynchronously: relabel until the follower has
    // served a review.
    let mut revision = 0;
    eventually("the follower serves admission", DEADLINE, || {
        revision += 1;
        let vap = format!("e2e-vap={scope}");
        let rev = format!("istio.io/rev=stable-{revision}");
        let (env, ns, ca, follower) = (&env, &ns, &ca, &follower);
        async move {
            label_on_primary(env, ns, &[&vap, &rev]).await?;
            Ok((reviews_answered(&follower.metrics, ca).await? > 0.0).then_some(()))
        }
    })
    .await?;
    let stable = managed_labels(env.primary(), &ns)
        .await?
        .unwrap_or_default();
    wait_labels(&remote, &ns, &stable).await?;
    assert_eq!(holder(&env).await?.as_deref(), Some("local-mesh-webhook"));

    refuse_rejected_revision(&env, &scope, &ns).await?;
    let revisions = RevisionsSeen::start(&remote, &ns).await?;
    assert!(
        label_rejected(&env, &ns, false).await?,
        "the real edit is refused"
    );
    wait_labels(&remote, &ns, &stable).await?;
    revisions.assert_saw("rejected");
    Ok(())
}

/// The replica holding the Lease now.
async fn holder(env: &TestEnv) -> anyhow::Result<Option<String>> {
    lease_holder(&env.primary().client().await?).await
}

/// Waits until replica `identity` holds the Lease.
async fn holds_the_lease(env: &TestEnv, identity: &str, timeout: Duration) -> anyhow::Result<()> {
    eventually(&format!("{identity} holds the Lease"), timeout, || async {
        Ok((holder(env).await?.as_deref() == Some(identity)).then_some(()))
    })
    .await
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_killing_it_hands_over() -> anyhow::Result<()> {
    let (env, mesh) = own_mesh(1, None).await?;
    let ca = mesh.ca_pem()?;
    let first = mesh.metrics_address().to_string();
    holds_the_lease(&env, "local-mesh-webhook", DEADLINE).await?;
    let second = mesh.start_replica(&env, "replica-b").await?.metrics;
    eventually("first replica has reconciled", DEADLINE, || async {
        Ok((syncs(&first, &ca).await? > 0.0).then_some(()))
    })
    .await?;
    // The second replica serves (its metrics answer) but never syncs while it is not leader:
    // neither on a namespace created meanwhile nor on a drift.
    let remote = &env.remotes()[0];
    let ns = create_everywhere(&env, "handover").await?;
    let drift = json!({"istio-injection": "enabled"});
    edit_labels(remote, &ns, drift.clone()).await?;
    wait_labels(remote, &ns, &labels(&[])).await?;
    assert_eq!(syncs(&second, &ca).await?, 0.0, "a follower reconciled");
    assert_eq!(holder(&env).await?.as_deref(), Some("local-mesh-webhook"));

    mesh.stop_webhook(&env)?;
    holds_the_lease(&env, "replica-b", Duration::from_secs(60)).await?;
    edit_labels(remote, &ns, drift).await?;
    wait_labels(remote, &ns, &labels(&[])).await?;
    assert!(
        syncs(&second, &ca).await? > 0.0,
        "the new leader reconciled"
    );
    Ok(())
}

/// The `Synced` and `Reachable` conditions of a MeshCluster, once it has both.
async fn conditions(
    env: &TestEnv,
    cluster: &str,
) -> anyhow::Result<Option<(Condition, Condition)>> {
    let api: Api<MeshCluster> = Api::all(env.primary().client().await?);
    Ok(api.get(cluster).await?.status.and_then(|s| {
        Some((
            s.condition(CONDITION_SYNCED)?.clone(),
            s.condition(CONDITION_REACHABLE)?.clone(),
        ))
    }))
}

/// Waits until `cluster`'s `Synced` condition has `status`; returns both conditions.
async fn synced_becomes(
    env: &TestEnv,
    cluster: &str,
    status: &str,
) -> anyhow::Result<(Condition, Condition)> {
    eventually(&format!("{cluster} Synced={status}"), DEADLINE, || async {
        Ok(conditions(env, cluster)
            .await?
            .filter(|(synced, _)| synced.status == status))
    })
    .await
}

/// The failed checks (×) of `cluster`'s section of a check report, as
/// `description: detail (hint)`.
fn failed_checks(report: &CheckReport, cluster: &str) -> Vec<String> {
    (report.cluster_checks(cluster).into_iter())
        .filter(|c| c.result == "error")
        .map(|c| {
            format!(
                "{}: {} ({})",
                c.description,
                c.detail.as_deref().unwrap_or_default(),
                c.hint.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Re-attaching remote-1 stores fresh credentials: `istio-injection=<value>` reaches it, it is
/// synced again and check passes.
async fn reattach_repairs(env: &TestEnv, mesh: &Mesh, ns: &str, value: &str) -> anyhow::Result<()> {
    let remote = &env.remotes()[0];
    mesh.attach(remote).await?;
    wait_labels(remote, ns, &labels(&[("istio-injection", value)])).await?;
    synced_becomes(env, "remote-1", "True").await?;
    let (code, report) = CheckReport::with_exit_code(mesh.plugin()).await?;
    assert_eq!(code, 0, "check passes after re-attach:\n{report:#?}");
    Ok(())
}

#[tokio::test]
async fn revoked_credentials_show_in_status_and_check_and_reattach_repairs_them()
-> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote_mesh(None, "revoked").await?;
    // Repaired means check passes: that needs an injector for the label this test sets.
    mesh_e2e::fixtures::stand_in_injector(&remote).await?;
    synced_becomes(&env, "remote-1", "True").await?;

    // RBAC removed: the token still authenticates but may no longer patch namespaces.
    kubectl(
        &env,
        &remote,
        &["delete", "clusterrolebinding", "kubectl-mesh-sync"],
    )
    .await?;
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    assert!(
        warnings.contains("remote-1 forbids the change"),
        "kubectl printed: {warnings}"
    );
    // The sync cannot even list the remote's namespaces: not known to be in sync, and why.
    let (synced, reachable) = synced_becomes(&env, "remote-1", "Unknown").await?;
    assert_eq!(synced.reason, "Forbidden", "{synced:?}");
    assert_eq!(
        (reachable.status.as_str(), reachable.reason.as_str()),
        ("False", "Forbidden"),
        "{reachable:?}"
    );
    assert!(
        reachable.message.starts_with(
            "cannot list the remote's namespaces: 403 Forbidden: namespaces is forbidden: User \
             \"system:serviceaccount:kubectl-mesh:kubectl-mesh-sync\" cannot list"
        ),
        "{reachable:?}"
    );
    let (code, report) = CheckReport::with_exit_code(mesh.plugin()).await?;
    assert_eq!(code, 1, "check must fail:\n{report:#?}");
    // The rights check says which rights are gone, and listing fails with the apiserver's
    // "forbidden".
    assert_eq!(
        failed_checks(&report, "remote-1"),
        [
            "credentials have exactly the rights label sync needs: not allowed: namespaces get, \
             namespaces list, namespaces watch, namespaces patch, validatingadmissionpolicies \
             get kubectl-mesh-guard, validatingadmissionpolicybindings get kubectl-mesh-guard, \
             mutatingwebhookconfigurations get, mutatingwebhookconfigurations list, \
             mutatingwebhookconfigurations watch (the remote's ClusterRole or ClusterRoleBinding for kubectl-mesh was changed or \
             deleted; re-run `kubectl mesh attach` for remote-1 to store fresh credentials)",
            "remote namespaces carry the primary's labels: cannot list the remote's namespaces: \
             namespaces is forbidden: User \"system:serviceaccount:kubectl-mesh:kubectl-mesh-sync\" \
             cannot list resource \"namespaces\" in API group \"\" at the cluster scope (label \
             sync cannot work until this does; see the rights check above)",
        ],
        "{report:#?}"
    );

    reattach_repairs(&env, &mesh, &ns, "enabled").await?;

    // Token revoked: deleting its Secret invalidates the token itself.
    revoke(&env, &remote, setup::TOKEN_SECRET).await?;
    label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    let (synced, reachable) = synced_becomes(&env, "remote-1", "Unknown").await?;
    assert_eq!(synced.reason, "Forbidden", "{synced:?}");
    assert_eq!(
        (
            reachable.status.as_str(),
            reachable.reason.as_str(),
            reachable.message.as_str()
        ),
        (
            "False",
            "Forbidden",
            "cannot list the remote's namespaces: 401 Unauthorized"
        ),
        "{reachable:?}"
    );
    let (code, report) = CheckReport::with_exit_code(mesh.plugin()).await?;
    assert_eq!(
        code, 1,
        "check must fail with a revoked token:\n{report:#?}"
    );
    // The remote refuses the token itself.
    assert_eq!(
        failed_checks(&report, "remote-1"),
        [
            "remote answers with the stored credentials: Unauthorized (the remote refused the \
             token (revoked or expired); re-run `kubectl mesh attach` for remote-1 to store \
             fresh credentials)"
        ],
        "{report:#?}"
    );

    reattach_repairs(&env, &mesh, &ns, "disabled").await?;
    Ok(())
}

/// The value of one series (`name{labels}`) a replica exposes; 0 before its first sample.
async fn series(addr: &str, ca: &str, series: &str) -> anyhow::Result<f64> {
    let metrics = https_get(addr, ca, "/metrics").await?;
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

/// What the webhook logged about namespace `ns`, for failure messages.
fn webhook_log(env: &TestEnv, ns: &str) -> String {
    let log = std::fs::read_to_string(env.dir().join("mesh-webhook.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(ns)).collect();
    format!("mesh-webhook logged about {ns}:\n{}", lines.join("\n"))
}

/// Labels `ns` on the primary with `change` and asserts that kubectl returned once the push had
/// left remote-1 carrying the managed labels `expected`.
async fn pushed_to_remote_1(
    env: &TestEnv,
    ns: &str,
    change: &str,
    expected: &[(&str, &str)],
) -> anyhow::Result<()> {
    let warnings = label_on_primary(env, ns, &[change]).await?;
    assert!(
        warnings.contains("applied on remote-1"),
        "{warnings}\n{}",
        webhook_log(env, ns)
    );
    assert_eq!(
        managed_labels(&env.remotes()[0], ns).await?,
        Some(labels(expected))
    );
    Ok(())
}

/// The webhook bets that a remote carries the primary's labels from before the change and
/// sends one JSON patch that `test`s them. A real remote that differs refuses it; the push
/// then reads the remote and writes the difference, before kubectl returns all the same.
#[tokio::test]
async fn a_remote_that_refuses_the_one_patch_push_still_gets_the_change_in_time()
-> anyhow::Result<()> {
    // No periodic sync to repair the remote behind the push's back.
    let (env, mesh, remote, ns) = one_remote_mesh(Some(NO_RESYNC), "conflict").await?;
    let (webhook, ca) = (mesh.metrics_address().to_string(), mesh.ca_pem()?);
    let read_first = r#"pushes_read_first_total{cluster="remote-1"}"#;
    let enabled = [("istio-injection", "enabled")];
    pushed_to_remote_1(&env, &ns, "istio-injection=enabled", &enabled).await?;
    // A remote as expected took the one patch.
    assert_eq!(series(&webhook, &ca, read_first).await?, 0.0);

    // A hand edit on the remote is corrected by the reconciler. Waiting for that also waits
    // out the sync the label above caused (a tenth of a second later), which would otherwise
    // undo the next hand edit before the push below meets it.
    let drift = json!({"istio-injection": "disabled"});
    edit_labels(&remote, &ns, drift.clone()).await?;
    wait_labels(&remote, &ns, &labels(&enabled)).await?;

    // The same edit, then at once (the drift watch corrects it only a few seconds later) a
    // change on the primary: the push's patch tests istio-injection=enabled, which the
    // remote's apiserver refuses.
    edit_labels(&remote, &ns, drift).await?;
    // (a) On the remote when kubectl returns, the hand edit undone too.
    let canary = [("istio-injection", "enabled"), ("istio.io/rev", "canary")];
    pushed_to_remote_1(&env, &ns, "istio.io/rev=canary", &canary).await?;
    // (b) Through the read-first fallback.
    assert_eq!(
        series(&webhook, &ca, read_first).await?,
        1.0,
        "the remote was not read first (had the drift watch corrected it already?); {}",
        webhook_log(&env, &ns)
    );
    Ok(())
}

#[tokio::test]
async fn a_stored_kubeconfig_edited_to_break_the_rule_is_refused_before_anything_is_sent()
-> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote_mesh(None, "broken-secret").await?;
    synced_becomes(&env, &remote.name, "True").await?;

    // A plain-HTTP server of the test's own: whatever the webhook sent there would arrive here.
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let decoy_url = format!("http://{}", decoy.local_addr()?);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.primary().client().await?, mesh_core::MESH_NAMESPACE);
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    let secret_name = clusters.get(&remote.name).await?.spec.secret_name;
    let stored = secrets.get(&secret_name).await?;
    let yaml = stored
        .data
        .as_ref()
        .and_then(|d| d.get(mesh_core::cluster::KUBECONFIG_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    anyhow::ensure!(yaml.contains(&remote.server), "stored kubeconfig: {yaml}");
    let edited = yaml.replace(&remote.server, &decoy_url);
    let patch = json!({"stringData": {mesh_core::cluster::KUBECONFIG_KEY: edited}});
    secrets
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let (_, reachable) = eventually("remote-1 refused as not https", DEADLINE, || async {
        Ok(conditions(&env, &remote.name)
            .await?
            .filter(|(_, reachable)| reachable.status == "False"))
    })
    .await?;
    assert_eq!(reachable.reason, "InvalidCredentials", "{reachable:?}");
    assert!(
        reachable.message.contains("refused") && reachable.message.contains("is not https"),
        "{reachable:?}"
    );
    // Its credentials, not the network, are what is wrong.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    assert!(
        warnings.contains(
            "remote-1 not pushed: its stored credentials cannot be used (the kubeconfig in \
             secret cluster-remote-1 is refused"
        ),
        "kubectl printed: {warnings}"
    );
    // Nothing reached the decoy: the rule refused the kubeconfig before a client was built.
    let accepted = tokio::time::timeout(Duration::from_millis(500), decoy.accept()).await;
    assert!(
        accepted.is_err(),
        "the webhook connected to the decoy server"
    );
    Ok(())
}

/// Points MeshCluster `cluster` at Secret `secret`, as a hand edit would.
async fn name_secret(env: &TestEnv, cluster: &str, secret: &str) -> anyhow::Result<()> {
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    let patch = json!({"spec": {"secretName": secret}});
    clusters
        .patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn credentials_that_reach_another_cluster_are_never_written_through() -> anyhow::Result<()> {
    let (env, mesh) = own_mesh(2, None).await?;
    let (east, west) = (&env.remotes()[0], &env.remotes()[1]);
    let ns = create_everywhere(&env, "elsewhere").await?;
    synced_becomes(&env, &west.name, "True").await?;
    // East has an injector, west none; the webhook's watches know both.
    mesh_e2e::fixtures::stand_in_injector(east).await?;
    let served = create_everywhere(&env, "served").await?;
    let unserved = |cluster: &str| format!("{cluster}: no injector for istio-injection=enabled");
    let injection_warnings = || async {
        label_on_primary(&env, &served, &["istio-injection-"]).await?;
        label_on_primary(&env, &served, &["istio-injection=enabled"]).await
    };
    eventually(
        "the webhook knows east's injector and west's lack of one",
        DEADLINE,
        || async {
            let warnings = injection_warnings().await?;
            let known = warnings.contains(&unserved("remote-2"))
                && !warnings.contains(&unserved("remote-1"));
            Ok(known.then_some(()))
        },
    )
    .await?;
    // West's own entry loses its credentials, so that only east's could still write on west;
    // then a managed label set on west alone, which any sync of west would remove.
    name_secret(&env, &west.name, "cluster-nowhere").await?;
    unreachable_for(&env, &west.name, "CredentialsMissing").await?;
    edit_labels(west, &ns, json!({"istio-injection": "enabled"})).await?;

    // East's MeshCluster names west's Secret, and records west's server and CA (else the
    // stored kubeconfig is refused as not what attach recorded, before anything is sent):
    // its credentials now reach west.
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    let west_spec = clusters.get(&west.name).await?.spec;
    let record = json!({"spec": {
        "server": west_spec.server,
        "caFingerprint": west_spec.ca_fingerprint,
    }});
    clusters
        .patch(&east.name, &PatchParams::default(), &Patch::Merge(&record))
        .await?;
    name_secret(&env, &east.name, &format!("cluster-{}", west.name)).await?;
    let reachable = unreachable_for(&env, &east.name, "ClusterMismatch").await?;
    assert!(
        reachable
            .message
            .starts_with("secret cluster-remote-2 reaches another cluster than remote-1 (id ")
            && reachable.message.contains("attach remote-1 again"),
        "{reachable:?}"
    );
    // Neither the webhook's push nor the CLI's sync writes through them; the push says they
    // are to repair, not that the reconciler will retry.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    assert!(
        warnings.contains(
            "remote-1 not pushed: its stored credentials cannot be used (secret cluster-remote-2 \
             reaches another cluster"
        ),
        "kubectl printed: {warnings}"
    );
    let mut sync = mesh.plugin();
    sync.args(["sync", "--cluster", &east.name]);
    let out = tokio::process::Command::from(sync).output().await?;
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains("reaches another cluster than remote-1"),
        "{}",
        mesh_e2e::describe(&out)
    );
    assert_eq!(
        managed_labels(west, &ns).await?,
        Some(labels(&[("istio-injection", "enabled")])),
        "west was written through east's credentials"
    );
    // Nor does status show west's namespaces as east's.
    let (report, _) = status_json(&mesh).await?;
    let column = &report["clusters"][0];
    assert!(
        column["name"] == "remote-1"
            && column["reachable"] == false
            && column["error"]
                .as_str()
                .is_some_and(|e| e.contains("reaches another cluster than remote-1")),
        "{report:#}"
    );
    let (code, report) = CheckReport::with_exit_code(mesh.plugin()).await?;
    assert!(
        code != 0
            && failed_checks(&report, "remote-1")
                .iter()
                .any(|c| c.starts_with(
                    "remote is the cluster that was attached: secret cluster-remote-2 reaches \
                     another cluster than remote-1"
                )),
        "{report:#?}"
    );
    // Rotate refuses at once rather than wait for the webhook to use a Secret it never reads.
    let admin = east.kubeconfig.to_string_lossy();
    let rotate = [
        "rotate",
        &east.name,
        "--remote-kubeconfig",
        &admin,
        "--timeout",
        "20s",
    ];
    let out = mesh_e2e::fixtures::mesh_command(&env, &rotate).await?;
    assert!(
        !out.status.success()
            && mesh_e2e::describe(&out).contains(
                "remote-1 names Secret kubectl-mesh/cluster-remote-2 for its credentials, not \
                 cluster-remote-1"
            ),
        "{}",
        mesh_e2e::describe(&out)
    );
    // Nor are west's injectors taken for east's: no false warning that east has none. West's
    // own were forgotten with its credentials (nothing can follow them): no warning of it
    // either, while the review itself went on to say why east was not written.
    let warnings = injection_warnings().await?;
    assert!(
        !warnings.contains(&unserved("remote-1"))
            && !warnings.contains(&unserved("remote-2"))
            && warnings.contains("reaches another cluster than remote-1"),
        "kubectl printed: {warnings}"
    );

    // Attaching east again, as the condition says, repairs it.
    mesh.attach(east).await?;
    wait_labels(east, &ns, &labels(&[("istio-injection", "disabled")])).await?;
    synced_becomes(&env, &east.name, "True").await?;
    Ok(())
}

/// A write the remote refused (its own admission policy) is retried with the backoff, so the
/// namespace converges soon after the remote lets it through: nothing else would wake the
/// reconciler for it, the remote and the primary both unchanged, and the resync is an hour
/// away. Before, the sync counted as done and the namespace waited for the resync.
#[tokio::test]
async fn a_namespace_write_the_remote_refused_is_retried_until_it_lands() -> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote_mesh(Some(NO_RESYNC), "refused").await?;
    let policy = format!("refuse-{ns}");
    let refusal = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [UPDATE], resources: [namespaces]}}
  validations:
  - {{expression: "object.metadata.name != '{ns}'", message: refused by the test}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec: {{policyName: {policy}, validationActions: [Deny]}}
"#
    );
    mesh_e2e::kubectl_apply(&env, &remote, &refusal).await?;
    // Policies take effect a moment after they are stored.
    let probe = ["label", "namespace", &ns, "probe=1", "--dry-run=server"];
    eventually(
        "the remote refusing writes to the namespace",
        DEADLINE,
        || async {
            let out = env.kubectl(&remote).args(probe).output()?;
            Ok((!out.status.success()).then_some(()))
        },
    )
    .await?;

    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    eventually("remote-1 not synced", DEADLINE, || async {
        Ok(cluster_condition(&env, &remote.name, CONDITION_SYNCED)
            .await?
            .filter(|c| c.status == "False" && c.message.contains(&ns)))
    })
    .await?;
    kubectl(
        &env,
        &remote,
        &["delete", "validatingadmissionpolicybinding", &policy],
    )
    .await?;
    kubectl(
        &env,
        &remote,
        &["delete", "validatingadmissionpolicy", &policy],
    )
    .await?;
    wait_labels(&remote, &ns, &labels(&[("istio-injection", "enabled")])).await
}

/// A scope the webhook cannot use (a selector on a managed key, patched in by hand) stops every
/// write to that cluster. The cluster answered all the same: it was shown as `Reachable=False`
/// and status called it unreachable, which sent its admin after the network.
#[tokio::test]
async fn a_scope_that_cannot_be_used_shows_as_not_synced_not_unreachable() -> anyhow::Result<()> {
    let (env, mesh, remote, _ns) = one_remote_mesh(None, "badscope").await?;
    synced_becomes(&env, &remote.name, "True").await?;
    let on_managed_key = json!({"spec": {"scope": {"namespaceSelector": {
        "matchLabels": {"istio-injection": "enabled"}
    }}}});
    patch_mesh_cluster(&env, &remote.name, &on_managed_key).await?;

    let (synced, reachable) = synced_becomes(&env, &remote.name, "False").await?;
    assert_eq!(synced.reason, "ScopeInvalid", "{synced:?}");
    // It says how to correct it: `scope` with no flags only shows the scope.
    assert!(
        synced.message.contains("spec.scope cannot be used")
            && synced
                .message
                .contains("kubectl mesh scope remote-1 --clear"),
        "{synced:?}"
    );
    assert_eq!(reachable.status, "True", "{reachable:?}");
    // Said where people look: a Warning Event on the MeshCluster.
    let event = mesh_e2e::event_about(&env, "ScopeInvalid", &remote.name, DEADLINE).await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");

    let (report, stderr) = status_json(&mesh).await?;
    let column = &report["clusters"][0];
    assert!(
        column["reachable"] == true
            && column["error"]
                .as_str()
                .is_some_and(|e| e.contains("the scope of remote-1 cannot be used")
                    && e.contains("--namespace-selector SELECTOR")),
        "{report:#}"
    );
    assert!(!stderr.contains("unreachable"), "{stderr}");
    Ok(())
}
