//! Label propagation against real clusters: the primary's apiserver calls mesh-webhook over
//! TLS, which pushes managed-label changes to every remote before kubectl returns; the
//! reconciler repairs whatever the webhook could not.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, WatchEvent, WatchParams};
use mesh_e2e::mesh_testenv::{Cluster, TestEnv};
use mesh_e2e::{
    NO_RESYNC, assert_landed, assert_remotes, carries, create_everywhere, create_namespace,
    edit_labels, eventually, injection_enabled, label_on_primary, labels, managed_labels,
    namespace_labels, namespaces, one_remote_mesh, own_mesh, shared_mesh, unique_name,
};
use serde_json::json;

/// Resync period of the test webhook (5 s) plus room for a slow machine.
const RESYNC_DEADLINE: Duration = Duration::from_secs(30);

/// The webhook's default push deadline, which the drift settle of the reconciler is derived
/// from (push deadline + 1 s).
const PUSH_DEADLINE: Duration = Duration::from_secs(2);

/// How long after the last response of a burst the reconciler may still act on it: a push
/// stands in for the primary until the watch shows it stored, or for
/// [`mesh_webhook::in_flight::DEFAULT_TTL`], whose expiry wakes a sync; a drift seen on a remote is
/// corrected after the drift settle. The longer of the two, plus the time a sync takes (2 s, the
/// webhook's default timeout of calls to a remote).
fn burst_settle_window() -> Duration {
    let drift_settle = PUSH_DEADLINE + Duration::from_secs(1);
    mesh_webhook::in_flight::DEFAULT_TTL.max(drift_settle) + Duration::from_secs(2)
}

/// The shared mesh of two remotes, and a namespace with a fresh name made of `prefix` on every
/// cluster of it.
async fn shared_namespace(prefix: &str) -> anyhow::Result<(&'static TestEnv, String)> {
    let (env, _mesh) = shared_mesh(2).await;
    Ok((env, create_everywhere(env, prefix).await?))
}

/// [`shared_namespace`], its labels on remote `ix` then edited by hand: `edit` merged into them.
async fn hand_edited_on_remote(
    prefix: &str,
    ix: usize,
    edit: serde_json::Value,
) -> anyhow::Result<(&'static TestEnv, String, &'static Cluster)> {
    let (env, ns) = shared_namespace(prefix).await?;
    let remote = &env.remotes()[ix];
    edit_labels(remote, &ns, edit).await?;
    Ok((env, ns, remote))
}

/// Asserts that kubectl's warnings say `said`.
fn assert_printed(warnings: &str, said: &str) {
    assert!(warnings.contains(said), "kubectl printed: {warnings}");
}

/// The managed labels of a namespace object (as a watch delivers it).
fn managed_labels_of(namespace: Namespace) -> BTreeMap<String, String> {
    let mut labels = namespace.metadata.labels.unwrap_or_default();
    labels.retain(|key, _| mesh_e2e::MANAGED_LABELS.contains(&key.as_str()));
    labels
}

/// A change of the managed labels on the primary, and what it must leave on every remote.
struct Transition {
    /// `kubectl label` arguments.
    change: &'static [&'static str],
    /// The managed labels it leaves on the namespace.
    leaves: &'static [(&'static str, &'static str)],
    /// What kubectl's warnings say of every remote, where the test reads them.
    reported: Option<&'static str>,
}

#[tokio::test]
async fn every_managed_label_transition_lands_on_every_remote_before_kubectl_returns()
-> anyhow::Result<()> {
    let (env, ns) = shared_namespace("transitions").await?;

    let transitions = [
        Transition {
            change: &["istio-injection=enabled"],
            leaves: &[("istio-injection", "enabled")],
            reported: Some("istio-injection=enabled applied on"),
        },
        Transition {
            change: &["istio-injection=disabled"],
            leaves: &[("istio-injection", "disabled")],
            reported: None,
        },
        Transition {
            change: &["istio-injection-", "istio.io/rev=stable"],
            leaves: &[("istio.io/rev", "stable")],
            reported: None,
        },
        Transition {
            change: &["istio.io/rev=canary", "istio.io/dataplane-mode=ambient"],
            leaves: &[
                ("istio.io/rev", "canary"),
                ("istio.io/dataplane-mode", "ambient"),
            ],
            reported: None,
        },
        Transition {
            change: &["istio.io/rev-", "istio.io/dataplane-mode-"],
            leaves: &[],
            reported: Some("managed labels removed on"),
        },
    ];
    for transition in transitions {
        let warnings = label_on_primary(env, &ns, transition.change).await?;
        // No waiting: the webhook pushed before the apiserver answered kubectl.
        let context = format!("after {:?}; kubectl printed: {warnings}", transition.change);
        assert_remotes(env, &ns, &labels(transition.leaves), &context).await?;
        if let Some(reported) = transition.reported {
            assert_landed(env, &warnings, reported);
        }
    }

    // The outcome is recorded on the primary namespace.
    let primary = namespaces(env.primary()).await?.get(&ns).await?;
    let record = primary
        .metadata
        .annotations
        .unwrap_or_default()
        .get("kubectl-mesh.io/propagation")
        .cloned()
        .unwrap_or_default();
    let record: serde_json::Value = serde_json::from_str(&record)?;
    assert_eq!(
        record,
        json!({"remote-1": "applied", "remote-2": "applied"})
    );
    Ok(())
}

/// The status subresource of a namespace stores the labels of its patch too (only spec and
/// status are reset there): a label set through it is pushed like any other.
#[tokio::test]
async fn a_label_set_through_the_status_subresource_lands_before_kubectl_returns()
-> anyhow::Result<()> {
    let (env, ns) = shared_namespace("status-sub").await?;
    let patch = r#"{"metadata":{"labels":{"istio-injection":"enabled"}}}"#;
    let mut cmd = env.kubectl(env.primary());
    cmd.args(["patch", "namespace", &ns, "--subresource=status"])
        .args(["--type=merge", "-p", patch]);
    let out = cmd.output()?;
    assert!(out.status.success(), "{}", mesh_e2e::describe(&out));
    let warnings = String::from_utf8(out.stderr)?;
    let expected = labels(&[("istio-injection", "enabled")]);
    let context = format!("kubectl printed: {warnings}");
    assert_remotes(env, &ns, &expected, &context).await?;
    assert_landed(env, &warnings, "istio-injection=enabled applied on");
    Ok(())
}

#[tokio::test]
async fn unmanaged_labels_are_never_touched() -> anyhow::Result<()> {
    let (env, ns, remote) =
        hand_edited_on_remote("unmanaged", 0, json!({"team": "remote-team"})).await?;

    let warnings =
        label_on_primary(env, &ns, &["team=primary-team", "istio-injection=enabled"]).await?;
    assert_printed(&warnings, "applied on");
    let stored = namespace_labels(remote, &ns).await?.unwrap_or_default();
    assert_eq!(stored.get("team").map(String::as_str), Some("remote-team"));
    assert_eq!(
        stored.get("istio-injection").map(String::as_str),
        Some("enabled")
    );
    Ok(())
}

#[tokio::test]
async fn a_label_set_only_on_a_remote_disappears() -> anyhow::Result<()> {
    let (env, ns, remote) =
        hand_edited_on_remote("remote-only", 1, json!({"istio-injection": "enabled"})).await?;
    // Removed again, the primary having no such label.
    carries(remote, &ns, &labels(&[]), RESYNC_DEADLINE).await?;
    // The correction is reported where people look: an Event about the primary namespace.
    mesh_e2e::event_about(env, "RemoteLabelsCorrected", &ns, RESYNC_DEADLINE).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_on_the_primary_removes_its_labels_on_remotes() -> anyhow::Result<()> {
    let (env, ns) = shared_namespace("deleted").await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    assert_remotes(env, &ns, &injection_enabled(), "labelled before the delete").await?;

    namespaces(env.primary())
        .await?
        .delete(&ns, &DeleteParams::default())
        .await?;
    for remote in env.remotes() {
        carries(remote, &ns, &labels(&[]), RESYNC_DEADLINE).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_namespace_created_later_on_a_remote_gets_the_label_within_a_resync() -> anyhow::Result<()>
{
    let (env, _mesh) = shared_mesh(2).await;
    let ns = unique_name("late");
    create_namespace(env.primary(), &ns).await?;
    let warnings = label_on_primary(env, &ns, &["istio.io/rev=stable"]).await?;
    assert_printed(
        &warnings,
        &format!("namespace {ns} does not exist there (not created)"),
    );
    // Not created on the remotes.
    for remote in env.remotes() {
        assert_eq!(managed_labels(remote, &ns).await?, None);
    }
    let remote = &env.remotes()[0];
    create_namespace(remote, &ns).await?;
    let stable = labels(&[("istio.io/rev", "stable")]);
    carries(remote, &ns, &stable, RESYNC_DEADLINE).await?;
    Ok(())
}

#[tokio::test]
async fn a_dry_run_pushes_nothing() -> anyhow::Result<()> {
    let (env, ns) = shared_namespace("dry-run").await?;
    let warnings =
        label_on_primary(env, &ns, &["istio-injection=enabled", "--dry-run=server"]).await?;
    assert_printed(
        &warnings,
        "kubectl-mesh: dry run; remote clusters not changed",
    );
    // A push would have landed before kubectl returned.
    assert_remotes(env, &ns, &labels(&[]), "after the dry run").await?;
    assert_eq!(managed_labels(env.primary(), &ns).await?, Some(labels(&[])));
    // The same edit for real is on the remotes when kubectl returns: looking right after the
    // dry run would have seen a push.
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    assert_remotes(
        env,
        &ns,
        &injection_enabled(),
        "after the same edit for real",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn primary_edits_succeed_and_remotes_converge_while_the_webhook_is_down() -> anyhow::Result<()>
{
    // Its own environment: stopping the shared webhook would disturb the other tests.
    let (env, mesh, remote, ns) = one_remote_mesh(None, "webhook-down").await?;
    mesh.stop_webhook(&env)?;
    // failurePolicy Ignore: the edit goes through without the webhook.
    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    assert_eq!(
        managed_labels(env.primary(), &ns).await?,
        Some(injection_enabled())
    );
    // Nothing reached the remote while the webhook was down: what converges it below is the
    // webhook coming back.
    assert_eq!(managed_labels(&remote, &ns).await?, Some(labels(&[])));
    mesh.start_webhook(&env).await?;
    carries(&remote, &ns, &injection_enabled(), RESYNC_DEADLINE).await?;
    Ok(())
}

#[tokio::test]
async fn remote_edits_are_corrected_as_they_happen_not_at_the_next_resync() -> anyhow::Result<()> {
    // Its own mesh, whose periodic resync never comes within the test: only the webhook's watch
    // of the remote's namespaces can make these corrections.
    let (env, _mesh) = own_mesh(1, Some(NO_RESYNC)).await?;
    let remote = &env.remotes()[0];
    let deadline = Duration::from_secs(20);
    let enabled = injection_enabled();

    // A namespace created on the remote after its primary twin was labelled.
    let late = unique_name("late-watched");
    create_namespace(env.primary(), &late).await?;
    label_on_primary(&env, &late, &["istio-injection=enabled"]).await?;
    // The sync that follows the primary's change is over once the cluster reports the
    // namespace missing; only then is it created on the remote.
    let clusters = kube::Api::<mesh_core::cluster::MeshCluster>::all(env.primary().client().await?);
    eventually(
        "remote reported missing the namespace",
        deadline,
        || async {
            let cluster = clusters.get(&remote.name).await?;
            let missing = cluster
                .status
                .map(|s| s.missing_namespaces)
                .unwrap_or_default();
            Ok(missing.contains(&late).then_some(()))
        },
    )
    .await?;
    create_namespace(remote, &late).await?;
    carries(remote, &late, &enabled, deadline).await?;

    // A managed label changed by hand on the remote goes back to the primary's value.
    edit_labels(remote, &late, json!({"istio-injection": "disabled"})).await?;
    carries(remote, &late, &enabled, deadline).await?;

    // A managed label the primary does not have is removed; other labels stay.
    let plain = create_everywhere(&env, "plain-watched").await?;
    edit_labels(
        remote,
        &plain,
        json!({"istio.io/rev": "canary", "team": "web"}),
    )
    .await?;
    carries(remote, &plain, &labels(&[]), deadline).await?;
    let team = namespace_labels(remote, &plain).await?.unwrap_or_default();
    assert_eq!(team.get("team").map(String::as_str), Some("web"));
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_flips_end_in_the_primary_s_final_state_everywhere() -> anyhow::Result<()>
{
    // Its own mesh, whose periodic resync never comes: what the remotes hold is what the
    // webhook pushed and what the reconciler made of the primary's changes, not a repair.
    let (env, _mesh) = own_mesh(2, Some(NO_RESYNC)).await?;
    let ns = create_everywhere(&env, "flips").await?;
    let api = namespaces(env.primary()).await?;
    // All at once: the apiserver serializes the writes and calls the webhook again for every
    // write it retries after a conflict, so pushes and writes interleave in many orders.
    let flips = (0..50).map(|i| {
        let (api, ns) = (api.clone(), ns.clone());
        async move {
            let injection = if i % 2 == 0 { "enabled" } else { "disabled" };
            let patch = json!({"metadata": {"labels": {
                "istio-injection": injection,
                "istio.io/rev": format!("r{}", i % 3),
            }}});
            api.patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    });
    for flipped in futures::future::join_all(flips).await {
        flipped?;
    }
    // Which write came last is the apiserver's choice: the primary says.
    let last = managed_labels(env.primary(), &ns)
        .await?
        .unwrap_or_default();
    assert_eq!(last.len(), 2, "the primary holds {last:?}");

    // Right after the last response, and from that very state on: every later change of the
    // remote namespace is watched, so a revert that is corrected again does not go unseen.
    let mut changes = Vec::new();
    for remote in env.remotes() {
        let remote_api = namespaces(remote).await?;
        let now = remote_api.get(&ns).await?;
        let version = now.metadata.resource_version.clone().unwrap_or_default();
        assert_eq!(
            managed_labels_of(now),
            last,
            "{ns} on {} right after the last response",
            remote.name
        );
        let params = WatchParams::default().fields(&format!("metadata.name={ns}"));
        changes.push((remote, remote_api.watch(&params, &version).await?.boxed()));
    }
    let window = burst_settle_window();
    let until = tokio::time::Instant::now() + window;
    let watched = changes.into_iter().map(|(remote, mut events)| {
        let (ns, last) = (&ns, &last);
        async move {
            while let Ok(Some(event)) = tokio::time::timeout_at(until, events.next()).await {
                if let WatchEvent::Added(seen) | WatchEvent::Modified(seen) = event? {
                    assert_eq!(
                        &managed_labels_of(seen),
                        last,
                        "{ns} on {} changed within {window:?} after the last response",
                        remote.name
                    );
                }
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(watched).await?;
    assert_remotes(&env, &ns, &last, "after the last response").await?;
    Ok(())
}

/// `status` read the primary at the same time as the remotes: a label changed on the primary
/// while it read them, and pushed to the remotes at once, showed as drift (and `--exit-code`
/// exited 3) where a sync, which reads the primary after each remote, writes nothing. Status
/// is stalled before its remote reads while the label changes and lands everywhere.
#[tokio::test]
async fn status_reads_the_primary_after_the_remotes_as_a_sync_does() -> anyhow::Result<()> {
    use kubectl_mesh::cmd::attach::hooks::{STALL_IN_ENV, STALLED, STATUS_READS};
    let (env, ns) = shared_namespace("status-reads").await?;
    let (_, mesh) = shared_mesh(2).await;
    let mut status = mesh.plugin();
    status
        .args(["status", "--exit-code", &ns])
        .env(STALL_IN_ENV, STATUS_READS)
        .stdout(std::process::Stdio::null());
    let enabled = labels(&[("istio-injection", "enabled")]);
    let meanwhile = async {
        label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
        for remote in env.remotes() {
            carries(remote, &ns, &enabled, mesh_e2e::DEFAULT_TIMEOUT).await?;
        }
        assert_eq!(
            managed_labels(env.primary(), &ns).await?,
            Some(enabled.clone())
        );
        Ok(())
    };
    let (seen, exit) = mesh_e2e::signals::signalled_after_doing(
        status,
        STALLED,
        meanwhile,
        "USR1",
        mesh_e2e::DEFAULT_TIMEOUT,
    )
    .await?;
    let seen = seen.join("\n");
    assert_eq!(exit.code(), Some(0), "{seen}");
    assert!(!seen.contains("differs from the primary"), "{seen}");
    Ok(())
}
