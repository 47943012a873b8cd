//! A custom sync rule through the real webhook: the mesh installed with `--managed-labels
//! team.example.com/zone,istio-injection --excluded-namespaces legacy` and `mesh-webhook`
//! started with the flags install prints for that rule. The primary's apiserver evaluates the
//! rendered matchConditions: a change of the custom label reaches the webhook and lands on the
//! remotes before kubectl returns; a change of a label the rule no longer manages, or in an
//! excluded namespace, never reaches the webhook and is not pushed.
//!
//! Alone in its test binary, on a mesh of its own (the rule is installed on its primary)
//! without periodic resync, so only the webhook and the reconciler's reactions change a
//! remote. Its tests take turns: each counts every review the webhook answers.

use std::time::Duration;

use anyhow::{Context, ensure};
use mesh_e2e::mesh_testenv::TestEnv;
use mesh_e2e::mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_e2e::{
    NO_RESYNC, create_everywhere, create_namespace, describe, fixtures, kubectl, label_on_primary,
    labels, mesh_syncs, more_syncs_than, namespace_labels, own_mesh_with, patch_labels,
    relabel_until, remote_names, reviews_with_outcome, run, stored_client, text,
};
use serde_json::json;
use tokio::sync::{Mutex, OnceCell};

/// A label key outside the default rule, managed by this one.
const ZONE: &str = "team.example.com/zone";
/// A default managed label this rule leaves out.
const REVISION: &str = "istio.io/rev";
/// The namespace this rule excludes (by name: it cannot be made unique per run).
const LEGACY: &str = "legacy";
/// The rule, as given to `kubectl mesh install`. It keeps istio-injection: the mesh's start
/// probes the webhook with a dry-run change of it.
const RULE: [&str; 4] = [
    "--managed-labels",
    "team.example.com/zone,istio-injection",
    "--excluded-namespaces",
    LEGACY,
];

struct CustomMesh {
    env: TestEnv,
    mesh: Mesh,
    /// Held by each test while it counts reviews.
    turn: Mutex<()>,
}

async fn custom_mesh() -> &'static CustomMesh {
    static MESH: OnceCell<CustomMesh> = OnceCell::const_new();
    mesh_e2e::shared(&MESH, "the mesh with a custom rule", start_custom_mesh()).await
}

async fn start_custom_mesh() -> anyhow::Result<CustomMesh> {
    let mut options = MeshOptions::from_workspace()?;
    options.install_args = RULE.map(String::from).to_vec();
    options.webhook_args = webhook_flags_printed_by_install().await?;
    options.resync_period = NO_RESYNC;
    let (env, mesh) = own_mesh_with(2, options).await?;
    Ok(CustomMesh {
        env,
        mesh,
        turn: Mutex::new(()),
    })
}

/// The flags install tells whoever runs the webhook outside the cluster to start it with for
/// [`RULE`]: the webhook gets exactly those, as an operator following install would pass them.
async fn webhook_flags_printed_by_install() -> anyhow::Result<Vec<String>> {
    let mut install = fixtures::offline_invocation(&[
        "install",
        "--dry-run",
        "--webhook-url",
        "https://127.0.0.1:9443",
    ])?;
    install.args(RULE);
    let stderr = text(&run(install).await?.stderr);
    let flags = stderr
        .lines()
        .find_map(|line| line.strip_prefix("• start mesh-webhook with "))
        .with_context(|| format!("install printed no webhook flags: {stderr}"))?;
    Ok(flags.split_whitespace().map(String::from).collect())
}

#[tokio::test]
async fn a_custom_managed_label_reaches_the_webhook_and_lands_before_kubectl_returns()
-> anyhow::Result<()> {
    let CustomMesh { env, mesh, turn } = custom_mesh().await;
    let _turn = turn.lock().await;
    let ns = create_everywhere(env, "zoned").await?;

    for (change, expected) in [
        (format!("{ZONE}=east"), labels(&[(ZONE, "east")])),
        (format!("{ZONE}-"), labels(&[])),
    ] {
        let (pushed, all) = reviews_with_outcome(mesh, "pushed").await?;
        let synced = mesh_syncs(mesh).await?;
        let warnings = label_on_primary(env, &ns, &[&change]).await?;
        // Read at once: the webhook pushes before it answers, so no waiting.
        for remote in env.remotes() {
            assert_eq!(
                namespace_labels(remote, &ns).await?,
                Some(expected.clone()),
                "{change} on the primary did not land on {} before kubectl returned; \
                 kubectl said: {warnings}",
                remote.name
            );
        }
        assert_eq!(
            reviews_with_outcome(mesh, "pushed").await?,
            (pushed + 1.0, all + 1.0),
            "{change}: the apiserver sends one review and the webhook pushes it"
        );
        let landed = if expected.is_empty() {
            "managed labels removed".to_owned()
        } else {
            format!("{change} applied")
        };
        assert!(
            warnings.contains(&format!("kubectl-mesh: {landed} on {}", remote_names(env))),
            "{warnings}"
        );
        // The reconciler follows the stored change with a sync of every remote, paced up to a
        // second later. It must be over before the next change: a sync planned while that
        // change is pushed reads the push standing in for the primary and may write it first,
        // and the push then finds the remote "already in sync".
        let remotes = env.remotes().len() as f64;
        let what = format!("the reconciler's sync of every remote after {change}");
        more_syncs_than(mesh, synced, remotes, &what, Duration::from_secs(30)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_label_no_longer_managed_does_not_reach_the_webhook_nor_the_remotes() -> anyhow::Result<()>
{
    let CustomMesh { env, mesh, turn } = custom_mesh().await;
    let _turn = turn.lock().await;
    let ns = create_everywhere(env, "revised").await?;
    // Each remote's own revision: no longer managed, it is the remote's to keep.
    for remote in env.remotes() {
        let stable = format!("{REVISION}=stable");
        kubectl(env, remote, &["label", "namespace", &ns, &stable]).await?;
    }

    let (_, all) = reviews_with_outcome(mesh, "pushed").await?;
    label_on_primary(env, &ns, &[&format!("{REVISION}=canary")]).await?;
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?.1,
        all,
        "a change of {REVISION}, which the rule does not manage, was sent to the webhook"
    );

    // A managed change through the webhook afterwards: its push carries every label the
    // webhook's rule manages, so a webhook that still managed the revision would push it now.
    let (pushed, all) = reviews_with_outcome(mesh, "pushed").await?;
    let warnings = label_on_primary(env, &ns, &[&format!("{ZONE}=west")]).await?;
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?,
        (pushed + 1.0, all + 1.0)
    );
    for remote in env.remotes() {
        assert_eq!(
            namespace_labels(remote, &ns).await?,
            Some(labels(&[(ZONE, "west"), (REVISION, "stable")])),
            "{}: the zone lands, the remote's own revision stays; kubectl said: {warnings}",
            remote.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_excluded_namespace_does_not_reach_the_webhook_nor_the_remotes() -> anyhow::Result<()> {
    let CustomMesh { env, mesh, turn } = custom_mesh().await;
    let _turn = turn.lock().await;
    for cluster in env.clusters() {
        create_namespace(cluster, LEGACY).await?;
    }

    let (_, all) = reviews_with_outcome(mesh, "pushed").await?;
    let warnings = label_on_primary(
        env,
        LEGACY,
        &[&format!("{ZONE}=east"), "istio-injection=enabled"],
    )
    .await?;
    assert_eq!(
        reviews_with_outcome(mesh, "pushed").await?.1,
        all,
        "a managed-label change in the excluded namespace {LEGACY} was sent to the webhook"
    );
    for remote in env.remotes() {
        assert_eq!(
            namespace_labels(remote, LEGACY).await?,
            Some(labels(&[])),
            "{}: nothing is pushed to an excluded namespace; kubectl said: {warnings}",
            remote.name
        );
    }
    Ok(())
}

/// Attach read the installed rule from the primary: on the remote, the guard warns about a
/// direct edit of the custom label, and the stored token may write that label but not a
/// default one this rule leaves out.
#[tokio::test]
async fn the_remote_guard_and_the_sync_scope_follow_the_custom_rule() -> anyhow::Result<()> {
    let CustomMesh { env, turn, .. } = custom_mesh().await;
    let _turn = turn.lock().await;
    let ns = create_everywhere(env, "guarded").await?;
    let remote = &env.remotes()[0];

    let warning = format!("{ZONE} on this cluster is managed by kubectl-mesh");
    relabel_until(
        env,
        remote,
        &ns,
        "the guard warns about the custom label",
        |attempt| vec![format!("{ZONE}=v{attempt}")],
        |out| {
            let warned = text(&out.stderr).contains(&warning);
            async move {
                ensure!(out.status.success(), "{}", describe(&out));
                Ok(warned.then_some(()))
            }
        },
    )
    .await?;

    let (stored, _) = stored_client(env, &remote.name).await?;
    patch_labels(stored.clone(), &ns, json!({ZONE: "from-token"})).await?;
    let refused = patch_labels(stored, &ns, json!({REVISION: "from-token"})).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("kubectl-mesh-sync-scope")),
        "{REVISION}, not managed by this rule, written with the stored token: {refused:?}"
    );
    Ok(())
}
