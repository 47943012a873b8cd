//! An idle mesh costs its remotes nothing but one open watch each: the webhook's watch of a
//! remote's namespaces stays open while nothing changes (a remote's client gives up on reads
//! within seconds, which must not cut a watch that is merely quiet; it is renewed only every
//! `mesh_core::remote::WATCH_SECONDS`), and still sees drift; the
//! periodic resync reads what that watch holds instead of listing the remote again.

use std::time::Duration;

use mesh_e2e::{
    NO_RESYNC, edit_labels, eventually, kubectl, label_on_primary, labels, managed_labels,
    mesh_syncs, more_syncs_than, one_remote_mesh,
};
use mesh_testenv::mesh::Mesh;
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;

/// How long the mesh is watched idle: several times the remote read timeout (2 s).
const QUIET: Duration = Duration::from_secs(15);

/// The apiserver metrics of `cluster`: the lines starting with `prefix` about namespaces and
/// `verb`.
async fn namespace_metric(
    env: &TestEnv,
    cluster: &Cluster,
    prefix: &str,
    verb: &str,
) -> anyhow::Result<Vec<String>> {
    let metrics = kubectl(env, cluster, &["get", "--raw", "/metrics"]).await?;
    let verb = format!(r#"verb="{verb}""#);
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter(|l| l.contains(r#"resource="namespaces""#) && l.contains(&verb))
        .map(str::to_owned)
        .collect())
}

fn sum(lines: &[String]) -> f64 {
    lines
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// LIST responses about namespaces of `cluster` larger than 10 kB so far: with the namespaces
/// of the test below, a list of them all, not a one-namespace probe.
async fn full_namespace_lists(env: &TestEnv, cluster: &Cluster) -> anyhow::Result<f64> {
    let sizes = namespace_metric(env, cluster, "apiserver_response_sizes_", "LIST").await?;
    let count: Vec<String> = sizes
        .iter()
        .filter(|l| l.starts_with("apiserver_response_sizes_count"))
        .cloned()
        .collect();
    let small: Vec<String> = sizes
        .iter()
        .filter(|l| l.contains(r#"le="10000""#))
        .cloned()
        .collect();
    anyhow::ensure!(
        !small.is_empty(),
        "no LIST response size bucket of 10000 bytes"
    );
    Ok(sum(&count) - sum(&small))
}

/// Watches of namespaces the apiserver of `cluster` has ended so far, whoever made them.
async fn namespace_watches_ended(env: &TestEnv, cluster: &Cluster) -> anyhow::Result<f64> {
    let ended = namespace_metric(env, cluster, "apiserver_request_total{", "WATCH").await?;
    Ok(sum(&ended))
}

/// Sets `istio-injection=disabled` by hand on `ns` of `remote`, labelled `enabled` on the
/// primary, and waits until the webhook has put it back.
async fn hand_edit_is_corrected(remote: &Cluster, ns: &str) -> anyhow::Result<()> {
    edit_labels(remote, ns, json!({"istio-injection": "disabled"})).await?;
    let enabled = Some(labels(&[("istio-injection", "enabled")]));
    eventually(
        "the drift is corrected",
        Duration::from_secs(30),
        || async { Ok((managed_labels(remote, ns).await? == enabled).then_some(())) },
    )
    .await
}

#[tokio::test]
async fn a_quiet_remote_keeps_its_watch_open_and_drift_is_still_seen() -> anyhow::Result<()> {
    // No periodic sync: only the watch can see the drift below.
    let (env, _mesh, remote, ns) = one_remote_mesh(Some(NO_RESYNC), "quiet").await?;
    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;

    let before = namespace_watches_ended(&env, &remote).await?;
    tokio::time::sleep(QUIET).await;
    let ended = namespace_watches_ended(&env, &remote).await? - before;
    // Cut by the read timeout, the webhook's watch would end every few seconds. It ends once
    // every `WATCH_SECONDS` (50 s) and the remote's controller-manager renews its own every
    // 5-10 minutes: each may end once in the window.
    assert!(QUIET.as_secs() < u64::from(mesh_core::remote::WATCH_SECONDS));
    assert!(
        ended <= 2.0,
        "{ended} watches of namespaces ended on an idle remote in {QUIET:?}"
    );

    // The watch is alive: a hand edit on the remote is corrected, with no periodic sync.
    hand_edit_is_corrected(&remote, &ns).await
}

/// Waits until the webhook has run `n` more syncs than when called.
async fn more_syncs(mesh: &Mesh, what: &str, n: f64, timeout: Duration) -> anyhow::Result<()> {
    more_syncs_than(mesh, mesh_syncs(mesh).await?, n, what, timeout).await
}

#[tokio::test]
async fn periodic_resyncs_of_a_watched_remote_do_not_list_it() -> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote_mesh(Some(Duration::from_secs(1)), "resynced").await?;
    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let enabled = Some(labels(&[("istio-injection", "enabled")]));
    eventually(
        "the remote is labelled",
        Duration::from_secs(30),
        || async { Ok((managed_labels(&remote, &ns).await? == enabled).then_some(())) },
    )
    .await?;

    // Enough namespaces that a list of them all is told from a one-namespace probe by size.
    for n in 0..30 {
        mesh_e2e::create_namespace(&remote, &format!("bulk-{n}")).await?;
    }
    // Once the watch has listed, every sync reads it: several periods, no full LIST (each sync
    // still asks for one namespace, to know the remote answers and the credentials work).
    more_syncs(
        &mesh,
        "a sync after the watch listed",
        2.0,
        Duration::from_secs(30),
    )
    .await?;
    let lists = full_namespace_lists(&env, &remote).await?;
    more_syncs(
        &mesh,
        "five more periodic syncs",
        5.0,
        Duration::from_secs(60),
    )
    .await?;
    let listed = full_namespace_lists(&env, &remote).await? - lists;
    // The remote's controller-manager may relist its own informer once.
    assert!(
        listed <= 1.0,
        "{listed} full LISTs of namespaces during five resyncs"
    );

    // What the watch holds is enough to correct a hand edit, by a write conditional on it.
    hand_edit_is_corrected(&remote, &ns).await
}
