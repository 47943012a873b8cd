//! Leadership under a partition: a leader whose connection to the primary hangs must stop
//! reconciling by its renew deadline, before another replica takes the Lease over, or two
//! leaders fight over the remotes with one of them reading a stale primary.

use std::time::{Duration, Instant};

use mesh_e2e::fixtures::webhook_through_proxy;
use mesh_e2e::{
    create_everywhere, eventually, https_get, label_on_primary, labels, lease_holder,
    managed_labels, own_mesh_with, syncs,
};
use mesh_testenv::mesh::MeshOptions;

const DEADLINE: Duration = Duration::from_secs(45);
const LEASE_DURATION: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
const RESYNC: Duration = Duration::from_secs(2);
/// How long the webhook's own pushes stand in for the primary (`in_flight::DEFAULT_TTL`).
const IN_FLIGHT_TTL: Duration = Duration::from_secs(10);
/// The registered webhook's fixed identity (see `Mesh::webhook_command`).
const FIRST: &str = "local-mesh-webhook";
const SECOND: &str = "replica-b";

#[tokio::test]
async fn a_leader_cut_off_from_the_primary_steps_down_before_the_other_takes_over()
-> anyhow::Result<()> {
    let options = MeshOptions {
        // Short, so that a replica that still syncs with a stale primary shows within the
        // window below: it writes its stale view at every resync.
        resync_period: RESYNC,
        webhook_args: [
            ("--lease-duration", LEASE_DURATION),
            ("--renew-deadline", RENEW_DEADLINE),
            ("--retry-period", RETRY_PERIOD),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), format!("{}ms", value.as_millis())])
        .collect(),
        ..MeshOptions::from_workspace()?
    };
    let (env, mesh) = own_mesh_with(1, options).await?;
    let primary = env.primary().client().await?;
    let remote = &env.remotes()[0];
    let ca = mesh.ca_pem()?;
    eventually("the first replica holds the Lease", DEADLINE, || async {
        Ok((lease_holder(&primary).await?.as_deref() == Some(FIRST)).then_some(()))
    })
    .await?;

    // The first replica again, now reaching the primary through a proxy the test can freeze.
    // Same identity, so it renews its own Lease at once.
    let proxy = webhook_through_proxy(&env, &mesh).await?;
    let first = mesh.metrics_address().to_owned();
    eventually("the first replica leads again", DEADLINE, || async {
        Ok(
            (leading(&first, &ca).await?
                && lease_holder(&primary).await?.as_deref() == Some(FIRST))
            .then_some(()),
        )
    })
    .await?;
    let second = mesh.start_replica(&env, SECOND).await?.metrics;

    let ns = create_everywhere(&env, "partition").await?;
    label_on_primary(&env, &ns, &["istio-injection=stale"]).await?;
    let stale = labels(&[("istio-injection", "stale")]);
    let fresh = labels(&[("istio-injection", "fresh")]);
    eventually("the remote carries the first value", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&stale)).then_some(()))
    })
    .await?;
    assert!(
        !leading(&second, &ca).await?,
        "two leaders before the partition"
    );
    // Two more full syncs: the one that saw the first value has written its status to the
    // primary, and the leader idles between periodic syncs with nothing left to write there.
    // Frozen mid-write, it would hang in that write instead of syncing again.
    let synced = syncs(&first, &ca).await?;
    eventually("the leader syncs twice more", DEADLINE, || async {
        Ok((syncs(&first, &ca).await? >= synced + 2.0).then_some(()))
    })
    .await?;

    proxy.freeze();
    let frozen_at = Instant::now();
    // Watched from the freeze on, in the background: kubectl below may take its time on a
    // busy machine.
    let handover = tokio::spawn(watch_handover(
        first.clone(),
        ca.clone(),
        primary.clone(),
        frozen_at,
    ));
    // The first replica serves this review (the apiserver calls it directly) and pushes to
    // the remote, but its watch of the primary never sees the change.
    let pushed_at = Instant::now();
    let warnings = label_on_primary(&env, &ns, &["istio-injection=fresh"]).await?;
    assert!(
        warnings.contains("applied on remote-1"),
        "the push did not land: {warnings}"
    );
    assert_eq!(managed_labels(remote, &ns).await?, Some(fresh.clone()));

    let (stepped_down, taken_over) = handover.await??;
    assert!(
        stepped_down <= RENEW_DEADLINE + Duration::from_millis(1500),
        "the cut-off leader stepped down only {stepped_down:?} after the partition"
    );
    assert!(
        stepped_down < taken_over,
        "{SECOND} took over {taken_over:?} after the partition, the old leader stepped down \
         only {stepped_down:?} after it"
    );

    // The old leader still reads its stale primary, and its own push laid over it only until
    // that push's in-flight entry expires (10s): had it kept syncing, it would write `stale`
    // back at its next sync after that. Watched for several lease durations, and past then.
    let window_end =
        Instant::now().max(pushed_at + IN_FLIGHT_TTL + 2 * RESYNC) + 4 * LEASE_DURATION;
    let mut checks = 0u32;
    while Instant::now() < window_end {
        let now = managed_labels(remote, &ns).await?;
        assert_eq!(
            now.as_ref(),
            Some(&fresh),
            "{:?} after the partition, with {SECOND} leading, the remote went back: two \
             leaders",
            frozen_at.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks > 10, "the remote was read only {checks} times");
    assert!(leading(&second, &ca).await?, "the second replica leads");
    assert!(
        !leading(&first, &ca).await?,
        "the cut-off replica leads again"
    );

    // Reconnected, the first replica finds the Lease taken and stays a follower: watched
    // for a lease duration, long enough for several of its election rounds.
    proxy.thaw();
    let watched_until = Instant::now() + LEASE_DURATION;
    while Instant::now() < watched_until {
        assert_eq!(lease_holder(&primary).await?.as_deref(), Some(SECOND));
        assert!(
            !leading(&first, &ca).await?,
            "two leaders after reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(managed_labels(remote, &ns).await?, Some(fresh));
    Ok(())
}

/// When, after `frozen_at`, the replica serving metrics on `first` first says it no longer
/// leads, and when the Lease is first held by [`SECOND`]: both watched at once.
async fn watch_handover(
    first: String,
    ca: String,
    primary: kube::Client,
    frozen_at: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut stepped_down, mut taken_over) = (None, None);
    loop {
        anyhow::ensure!(
            frozen_at.elapsed() < DEADLINE,
            "after {DEADLINE:?}: stepped down {stepped_down:?}, taken over {taken_over:?}"
        );
        if stepped_down.is_none() && !leading(&first, &ca).await? {
            stepped_down = Some(frozen_at.elapsed());
        }
        if taken_over.is_none() && lease_holder(&primary).await?.as_deref() == Some(SECOND) {
            taken_over = Some(frozen_at.elapsed());
        }
        if let (Some(stepped_down), Some(taken_over)) = (stepped_down, taken_over) {
            return Ok((stepped_down, taken_over));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the replica serving metrics on `addr` says it leads (its `leader` gauge).
async fn leading(addr: &str, ca: &str) -> anyhow::Result<bool> {
    let metrics = https_get(addr, ca, "/metrics").await?;
    let gauge = metrics
        .lines()
        .find_map(|line| line.strip_prefix("leader "))
        .ok_or_else(|| anyhow::anyhow!("{addr} serves no leader gauge"))?;
    Ok(gauge.trim() == "1")
}
