//! Floods of admission reviews, sent as the apiserver would (with its client certificate: a
//! caller that has it, or an apiserver gone wrong), cost the remotes a bounded number of
//! writes and leave the webhook's memory as it was.
//!
//! The reviews are hand-made: no real apiserver sends a hundred reviews of one change at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::{create_everywhere, eventually, managed_labels, metric_sum, own_mesh};
use mesh_testenv::mesh::Mesh;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// An UPDATE review of namespace `name` that adds `istio-injection=<value>`.
fn forged_review(name: &str, value: &str) -> String {
    let namespace = |labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}})
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("forged-{name}-{value}"),
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "name": name,
            "operation": "UPDATE",
            "userInfo": {"username": "forger"},
            "object": namespace(json!({"istio-injection": value})),
            "oldObject": namespace(json!({})),
            "dryRun": false,
        }
    })
    .to_string()
}

/// A TLS client presenting the apiserver's webhook client certificate.
fn apiserver_client(mesh: &Mesh) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = mesh
        .client_identity()
        .context("the test mesh requires client certificates")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(mesh.ca_pem()?.as_bytes()) {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(&identity.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&identity.key)?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends every review at once, each on a connection of its own opened beforehand (so that
/// they arrive together, not paced by TLS handshakes); fails unless every one was answered 200.
async fn flood(mesh: &Mesh, addr: &str, reviews: Vec<String>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = apiserver_client(mesh)?;
    let connections = futures::future::try_join_all(reviews.iter().map(|_| async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        anyhow::Ok(connector.connect(name, tcp).await?)
    }))
    .await?;
    let answers = futures::future::join_all(connections.into_iter().zip(&reviews).map(
        |(mut tls, review)| async move {
            let request = format!(
                "POST /mutate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{review}",
                review.len()
            );
            tls.write_all(request.as_bytes()).await?;
            tls.flush().await?;
            let mut response = Vec::new();
            // The server may close without close_notify; what was read is what counts.
            let _ = tls.read_to_end(&mut response).await;
            let response = String::from_utf8_lossy(&response);
            anyhow::Ok(response.lines().next().unwrap_or_default().to_owned())
        },
    ))
    .await;
    for answer in answers {
        let answer = answer?;
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_hundred_reviews_of_one_change_cost_each_remote_two_pushes() -> anyhow::Result<()> {
    let (env, mesh) = own_mesh(1, None).await?;
    let remote = &env.remotes()[0];
    let ns = create_everywhere(&env, "flooded").await?;
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
    let reviews = vec![forged_review(&ns, "disabled"); 100];
    flood(&mesh, mesh.listen_address(), reviews).await?;

    // The change landed (so pushes were made at all)...
    assert_eq!(
        managed_labels(remote, &ns).await?.unwrap_or_default()["istio-injection"],
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
        .map(|n| forged_review(&format!("forged-{n}"), "disabled"))
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
