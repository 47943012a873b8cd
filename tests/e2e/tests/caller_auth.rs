//! Only the primary's apiserver may call the webhook: the test environment gives it a client
//! certificate for webhook calls (an AdmissionConfiguration), and the mesh's webhook requires
//! one of that CA issued to the apiserver's name (`--client-ca-file`, `--client-allowed-names`).
//! A pod that reaches the webhook port and posts a hand-made AdmissionReview without one, or
//! with a certificate of that CA issued to another name, is refused at the handshake and
//! changes nothing on any remote; probes and metrics stay readable on their own port without a
//! certificate.

use std::time::Duration;

use anyhow::Context as _;
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::{
    Caller, create_everywhere, eventually, forged, https_get, managed_labels, shared_mesh,
    webhook_tls_client,
};

const DEADLINE: Duration = Duration::from_secs(30);
const CALLER_CHECK: &str = "webhook authenticates its callers (client certificates)";

#[tokio::test]
async fn a_forged_review_without_the_apiservers_certificate_changes_no_remote() -> anyhow::Result<()>
{
    let (env, mesh) = shared_mesh(2).await;
    let forged_ns = create_everywhere(env, "forged").await?;
    let control_ns = create_everywhere(env, "control").await?;

    // The handshake is refused, nothing HTTP is answered: without a client certificate, and
    // with one the apiserver's CA signed for another name.
    for (caller, alert) in [
        (
            Caller::Anonymous,
            rustls::AlertDescription::CertificateRequired,
        ),
        (
            Caller::OtherNameOfItsCa,
            rustls::AlertDescription::AccessDenied,
        ),
    ] {
        let stranger = webhook_tls_client(mesh, caller)?;
        let refused = tokio::time::timeout(
            DEADLINE,
            forged::post(
                &stranger,
                mesh.listen_address(),
                &forged::review(&forged_ns, "enabled"),
            ),
        )
        .await
        .context("the webhook answers or refuses in time")?;
        let error = refused.expect_err("a caller without the apiserver's certificate was served");
        let tls_error = error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert_eq!(
            tls_error,
            Some(&rustls::Error::AlertReceived(alert)),
            "{caller:?} not refused as it should be: {error:#}"
        );
    }

    // The control: the same kind of review with the apiserver's certificate is served and its
    // push lands on the remotes before the answer, so the forged one would have by now too.
    let apiserver = webhook_tls_client(mesh, Caller::Apiserver)?;
    let answer = forged::post(
        &apiserver,
        mesh.listen_address(),
        &forged::review(&control_ns, "enabled"),
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for remote in env.remotes() {
        eventually("the control review's push lands", DEADLINE, || async {
            let labels = managed_labels(remote, &control_ns)
                .await?
                .unwrap_or_default();
            Ok(
                (labels.get("istio-injection").map(String::as_str) == Some("enabled"))
                    .then_some(()),
            )
        })
        .await?;
        assert_eq!(
            managed_labels(remote, &forged_ns).await?,
            Some(Default::default()),
            "the forged review changed {}",
            remote.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn probes_and_metrics_are_served_without_a_client_certificate() -> anyhow::Result<()> {
    let (_env, mesh) = shared_mesh(2).await;
    let ca = mesh.ca_pem()?;
    for path in ["/healthz", "/readyz"] {
        let body = https_get(mesh.metrics_address(), &ca, path).await?;
        assert_eq!(body.trim(), "ok", "{path}");
    }
    let metrics = https_get(mesh.metrics_address(), &ca, "/metrics").await?;
    assert!(metrics.contains("admission_reviews_total"), "{metrics}");
    // The webhook port asks for a certificate even there.
    assert!(
        https_get(mesh.listen_address(), &ca, "/healthz")
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn check_reports_that_the_webhook_authenticates_its_callers() -> anyhow::Result<()> {
    let (_env, mesh) = shared_mesh(2).await;
    let report = CheckReport::of(mesh.plugin()).await?;
    assert_eq!(report.errors, 0, "{report:#?}");
    let line = report.check(CALLER_CHECK)?;
    assert_eq!(line.result, "ok", "{line:?}");
    assert_eq!(
        line.detail.as_deref(),
        Some(
            format!(
                "{} refuses a TLS handshake without a client certificate",
                mesh.webhook_url()
            )
            .as_str()
        )
    );
    Ok(())
}
