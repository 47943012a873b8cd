//! Floods of admission reviews, sent as the apiserver would (with its client certificate: a
//! caller that has it, or an apiserver gone wrong), cost the remotes a bounded number of
//! writes, and what the webhook holds of them (its pushes in flight) is forgotten once their
//! time runs out.
//!
//! The reviews are hand-made: no real apiserver sends a hundred reviews of one change at once.

use std::time::Duration;

use mesh_e2e::{
    Caller, eventually, forged, managed_labels, metric_sum, one_remote_mesh, own_mesh,
    webhook_tls_client,
};
use mesh_testenv::mesh::Mesh;

const DEADLINE: Duration = Duration::from_secs(30);

/// Sends every review at once, each on a connection of its own opened beforehand (so that
/// they arrive together, not paced by TLS handshakes); fails unless every one was answered 200.
async fn flood(mesh: &Mesh, addr: &str, reviews: Vec<String>) -> anyhow::Result<()> {
    let connector = webhook_tls_client(mesh, Caller::Apiserver)?;
    let connections =
        futures::future::try_join_all(reviews.iter().map(|_| forged::connect(&connector, addr)))
            .await?;
    let answers = futures::future::join_all(
        connections
            .into_iter()
            .zip(&reviews)
            .map(|(mut tls, review)| async move { forged::send(&mut tls, addr, review).await }),
    )
    .await;
    for answer in answers {
        let answer = answer?;
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_hundred_reviews_of_one_change_cost_each_remote_two_pushes() -> anyhow::Result<()> {
    let (_env, mesh, remote, ns) = one_remote_mesh(None, "flooded").await?;
    let (metrics, ca) = (mesh.metrics_address(), mesh.ca_pem()?);
    let made = |result: &'static str| {
        let series = format!(
            r#"pushes_total{{cluster="{}",result="{result}"}}"#,
            remote.name
        );
        let ca = ca.clone();
        async move { metric_sum(metrics, &ca, &series).await }
    };

    let reviewed = || metric_sum(metrics, &ca, r#"admission_reviews_total{outcome="pushed"}"#);
    let reviewed_before = reviewed().await?;
    let reviews = vec![forged::review(&ns, "disabled"); 100];
    flood(&mesh, mesh.listen_address(), reviews).await?;

    // The change landed (so pushes were made at all)...
    assert_eq!(
        managed_labels(&remote, &ns).await?.unwrap_or_default()["istio-injection"],
        "disabled"
    );
    // ...by at most the push that ran and the newest that waited; the others were dropped.
    let pushed = made("applied").await? + made("in_sync").await?;
    assert_eq!(
        reviewed().await? - reviewed_before,
        100.0,
        "every review was answered as a push"
    );
    assert!(
        (1.0..=2.0).contains(&pushed),
        "{pushed} pushes reached {} for 100 reviews of one change",
        remote.name
    );
    Ok(())
}

#[tokio::test]
async fn forged_pushes_on_a_follower_are_forgotten_when_their_time_runs_out() -> anyhow::Result<()>
{
    let (env, mesh) = own_mesh(1, None).await?;
    // Not the Lease holder: it reconciles nothing, so nothing there reads its in-flight map.
    let follower = mesh.start_replica(&env, "follower").await?;
    let ca = mesh.ca_pem()?;
    let reviews = (0..20)
        .map(|n| forged::review(&format!("forged-{n}"), "disabled"))
        .collect();
    flood(&mesh, &follower.listen, reviews).await?;
    let standing = metric_sum(&follower.metrics, &ca, "pushes_in_flight ").await?;
    assert_eq!(standing, 20.0, "each forged push stands in for the primary");

    // Gone once their time (10 s) runs out, on the follower too.
    eventually(
        "the follower forgets the forged pushes",
        DEADLINE,
        || async {
            let standing = metric_sum(&follower.metrics, &ca, "pushes_in_flight ").await?;
            Ok((standing == 0.0).then_some(()))
        },
    )
    .await?;
    Ok(())
}
