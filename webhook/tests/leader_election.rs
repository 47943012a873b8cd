//! The election against a real apiserver, one candidate reaching it through a proxy the test
//! freezes (the harness's stand-in for a partition of one client; see `mesh_testenv::proxy`):
//! a leader whose renewals hang ends its term by the renew deadline, its token cancelled,
//! before a candidate on a healthy connection may take the Lease; reconnected, it follows. A
//! Lease deleted from outside ends the term and is not taken again for a lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::DeleteParams};
use mesh_testenv::{Options, TestEnv, client_from, proxy::Proxy};
use mesh_webhook::leader::{self, Leadership, LeaseSettings, LeaseTiming};
use tokio_util::sync::CancellationToken;

const TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "default".into(),
        name: "election-test".into(),
        identity: identity.into(),
        timing: TIMING,
    }
}

/// The term of `leadership` once it leads, within `timeout`.
async fn term(leadership: &mut Leadership, timeout: Duration) -> anyhow::Result<CancellationToken> {
    let term = tokio::time::timeout(timeout, leadership.wait_for(Option::is_some)).await??;
    term.clone()
        .ok_or_else(|| anyhow::anyhow!("waited for a term, got none"))
}

#[tokio::test]
async fn a_term_ends_at_the_renew_deadline_while_renewals_hang() -> anyhow::Result<()> {
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let proxy = Proxy::start(env.primary()).await?;
    let proxied = env.dir().join("through-proxy.kubeconfig");
    proxy.kubeconfig(&env.primary().kubeconfig, &env.primary().server, &proxied)?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let (mut first, _) = leader::spawn(
        client_from(&proxied).await?,
        settings("first"),
        shutdown.clone(),
    );
    let first_term = term(&mut first, Duration::from_secs(30)).await?;
    let (mut second, _) = leader::spawn(
        env.primary().client().await?,
        settings("second"),
        shutdown.clone(),
    );
    // While the first renews, the second only follows: watched for two lease durations.
    let renewing = Instant::now();
    while renewing.elapsed() < 2 * TIMING.lease_duration {
        assert!(second.borrow().is_none(), "two leaders while renewals pass");
        assert!(
            !first_term.is_cancelled(),
            "the leader stepped down unprompted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.freeze();
    let frozen_at = Instant::now();
    tokio::time::timeout(
        TIMING.renew_deadline + Duration::from_secs(1),
        first_term.cancelled(),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the term still runs {:?} after the partition",
            frozen_at.elapsed()
        )
    })?;
    assert!(
        first.borrow().is_none(),
        "the term ended, the standing says leading"
    );
    assert!(
        second.borrow().is_none(),
        "taken over {:?} after the partition, before the old term ended",
        frozen_at.elapsed()
    );

    let second_term = term(&mut second, Duration::from_secs(30)).await?;
    assert!(
        frozen_at.elapsed() > TIMING.renew_deadline,
        "taken over {:?} after the partition",
        frozen_at.elapsed()
    );

    // Reconnected, the first finds the Lease held and follows: watched for a lease duration.
    proxy.thaw();
    let thawed = Instant::now();
    while thawed.elapsed() < TIMING.lease_duration {
        assert!(first.borrow().is_none(), "two leaders after reconnecting");
        assert!(!second_term.is_cancelled(), "the new leader stepped down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A Lease deleted from outside (`kubectl delete lease`) says nothing of whether its holder's
/// term has ended: the leader steps down, and no replica that saw the Lease creates it again
/// before a whole lease duration after it went missing.
#[tokio::test]
async fn a_deleted_lease_ends_the_term_and_is_taken_only_a_lease_duration_later()
-> anyhow::Result<()> {
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let client = env.primary().client().await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (mut first, _) = leader::spawn(client.clone(), settings("first"), shutdown.clone());
    let first_term = term(&mut first, Duration::from_secs(30)).await?;
    let (mut second, _) = leader::spawn(client.clone(), settings("second"), shutdown.clone());
    // The second follows: it has seen the Lease.
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let followed = Instant::now();
    while followed.elapsed() < TIMING.lease_duration {
        assert!(second.borrow().is_none(), "two leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    leases
        .delete("election-test", &DeleteParams::default())
        .await?;
    let deleted_at = Instant::now();
    tokio::time::timeout(TIMING.lease_duration, first_term.cancelled())
        .await
        .map_err(|_| anyhow::anyhow!("the leader still leads its deleted Lease"))?;
    let next = tokio::select! {
        term = term(&mut first, Duration::from_secs(30)) => term?,
        term = term(&mut second, Duration::from_secs(30)) => term?,
    };
    assert!(
        deleted_at.elapsed() >= TIMING.lease_duration,
        "led again {:?} after the Lease was deleted",
        deleted_at.elapsed()
    );
    assert!(!next.is_cancelled());
    Ok(())
}
