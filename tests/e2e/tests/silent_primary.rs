//! A webhook whose connections to the primary go silent without closing (a stalled
//! apiserver, or a peer gone without a word) neither turns a push back with the stale view its
//! watches kept, nor keeps that view: its watches of the primary are renewed, and what changed
//! meanwhile reaches the remotes.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use mesh_core::cluster::{CONDITION_REACHABLE, MeshCluster};
use mesh_e2e::fixtures::webhook_through_proxy;
use mesh_e2e::{
    cluster_condition, eventually, label_on_primary, labels, managed_labels, one_remote_mesh_with,
};
use mesh_testenv::mesh::MeshOptions;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(45);
/// Short, so that a sync with the stale view shows within the window below.
const RESYNC: Duration = Duration::from_secs(2);
/// How long the webhook's own pushes stand in for the primary (`in_flight::DEFAULT_TTL`).
const IN_FLIGHT_TTL: Duration = Duration::from_secs(10);
/// The longest a watch of the webhook may stay silent before it is renewed
/// (`mesh_core::remote::WATCH_READ_TIMEOUT`).
const WATCH_SILENCE: Duration = mesh_core::remote::WATCH_READ_TIMEOUT;

#[tokio::test]
async fn a_primary_gone_silent_never_turns_a_push_back_and_its_watches_are_renewed()
-> anyhow::Result<()> {
    let options = MeshOptions {
        resync_period: RESYNC,
        ..MeshOptions::from_workspace()?
    };
    let (env, mesh, remote, ns) = one_remote_mesh_with(options, "silent").await?;
    let proxy = webhook_through_proxy(&env, &mesh).await?;
    let (stale, fresh) = (
        labels(&[("istio-injection", "stale")]),
        labels(&[("istio-injection", "fresh")]),
    );
    eventually("the webhook through the proxy pushes", DEADLINE, || async {
        label_on_primary(&env, &ns, &["istio-injection-"]).await?;
        let warnings = label_on_primary(&env, &ns, &["istio-injection=stale"]).await?;
        Ok(warnings.contains("applied on remote-1").then_some(()))
    })
    .await?;
    assert_eq!(managed_labels(&remote, &ns).await?, Some(stale));

    // Every connection the webhook holds to the primary goes silent; new ones get through.
    proxy.freeze_open_connections();
    let pushed_at = Instant::now();
    let warnings = label_on_primary(&env, &ns, &["istio-injection=fresh"]).await?;
    assert!(warnings.contains("applied on remote-1"), "{warnings}");
    // Its push lands, and no sync puts the value its silent watch still shows back: watched
    // past the push's stand-in time and two resyncs after it.
    let window_end = pushed_at + IN_FLIGHT_TTL + 3 * RESYNC;
    let mut checks = 0u32;
    while Instant::now() < window_end {
        assert_eq!(
            managed_labels(&remote, &ns).await?.as_ref(),
            Some(&fresh),
            "{:?} after the push, the remote went back",
            pushed_at.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks > 10, "the remote was read only {checks} times");

    // A change no review shows the webhook, only its watch of MeshClusters: seen once that
    // watch is renewed.
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    let patch = json!({"spec": {"secretName": "cluster-nowhere"}});
    clusters
        .patch(&remote.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(
        "the webhook sees the MeshCluster's new Secret",
        WATCH_SILENCE + DEADLINE,
        || async {
            let reachable = cluster_condition(&env, &remote.name, CONDITION_REACHABLE).await?;
            Ok(reachable.filter(|c| c.status == "False" && c.reason == "CredentialsMissing"))
        },
    )
    .await?;
    assert_eq!(managed_labels(&remote, &ns).await?, Some(fresh));
    Ok(())
}
