//! `kubectl mesh check`: diagnose the installation and every attached cluster, in the style
//! of `linkerd check`: one section per concern, one line per check, `✓` passed, `‼` worth a
//! look, `×` broken (and exit status 1).
//!
//! Remotes are checked with the credentials kubectl-mesh stored for them: what passes here is
//! what the webhook can do. The one exception is the remote guard of a cluster attached by an
//! older kubectl-mesh, whose credentials may not read it: that is read through the remote's
//! context in the user's kubeconfig, when it has one.
//!
//! [`facts`] makes every read; [`install`], [`cluster`], [`rights`] and [`istio_secret`] judge
//! what was read without a cluster ([`istio_secret`] also has the reads of the Istio remote
//! secrets, which [`facts::mesh`] makes); [`report`] is what they conclude and [`render`]
//! prints it.

pub mod answers;
pub mod caller_auth;
pub mod caller_probe;
pub mod cluster;
pub mod facts;
pub mod guard;
pub mod install;
pub mod istio_secret;
pub mod render;
pub mod report;
pub mod rights;

use std::time::Duration;

use jiff::Timestamp;
use kube::Client;

pub use self::report::{CheckReport, CheckResult, Outcome, Section};
use crate::output::plural;
use crate::{Context, Error, Result, mesh_state::DEFAULT_REMOTE_TIMEOUT, output};

/// Check the installation, the webhook and every attached cluster.
///
/// Remotes are checked with the credentials stored for them, their guard included (for a
/// cluster attached by an older version, whose credentials may not read it, with the remote's
/// context in your kubeconfig). Exits with status 1 when any check fails (×); warnings (‼)
/// do not change the exit status.
#[derive(Debug, clap::Args)]
pub struct Check {
    /// How long each call to a remote may take, its answer included.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REMOTE_TIMEOUT, value_parser = crate::parse_duration)]
    pub remote_timeout: Duration,
}

impl Check {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self { remote_timeout } = self;
        let (client, user_kubeconfig) = ctx.client_and_kubeconfig().await?;
        let report = check_all(&client, &user_kubeconfig, remote_timeout, Timestamp::now()).await?;
        output::print_stdout(&render::render(&report, ctx.output)?)?;
        if report.errors > 0 {
            return Err(Error::Refused {
                what: format!("{} failed", plural(report.errors, "check")),
                hint: "fix what the × lines say and re-run `kubectl mesh check`".into(),
            });
        }
        Ok(())
    }
}

/// Runs every check against the primary `client` and the attached remotes. Fails, with
/// nothing checked, only when the primary does not answer within `--request-timeout`: every
/// check would say so after as long again.
pub async fn check_all(
    client: &Client,
    user_kubeconfig: &kube::config::Kubeconfig,
    remote_timeout: Duration,
    now: Timestamp,
) -> Result<CheckReport> {
    let facts = facts::install(client).await;
    if let Err(e) = &facts.crd
        && let Some(unanswered) = crate::request_timeout::Unanswered::within(e)
    {
        return Err(unanswered.refusal("cannot read the MeshCluster CRD"));
    }
    let installation = install::judge(&facts, now);
    let mut sections = vec![installation.section];
    // Without the CRD there are no MeshClusters to check.
    if installation.crd_established {
        let mesh = facts::mesh(client, user_kubeconfig, &installation.rule, remote_timeout).await;
        let mut clusters = cluster::judge_mesh(&mesh, &installation.rule, now);
        if let facts::MeshFacts::Attached(attached) = &mesh {
            let found = &attached.istio_secrets;
            istio_secret::add_checks(&attached.clusters, found, &mut clusters);
        }
        sections.extend(clusters);
    }
    Ok(CheckReport::new(sections))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, StatusCode};
    use kube::CustomResourceExt as _;
    use mesh_core::cluster::MeshCluster;
    use mesh_core::fake_apiserver::{json_response, status};
    use serde_json::json;

    /// Each cluster's Istio remote secret is read beside its stored credentials, not after
    /// them: a primary (or a remote) slow to answer costs one answer's time, not two. (Paused
    /// time: the elapsed time is the fake's delays, exactly.)
    #[tokio::test(start_paused = true)]
    async fn the_istio_remote_secret_is_read_beside_the_stored_credentials() {
        const ANSWER: Duration = Duration::from_secs(5);
        let mut crd = serde_json::to_value(MeshCluster::crd()).unwrap();
        crd["status"] = json!({"conditions": [{"type": "Established", "status": "True"}]});
        let west = mesh_core::fixtures::mesh_cluster("west", "uid-of-west");
        let clusters = json!({
            "apiVersion": "kubectl-mesh.io/v1alpha1", "kind": "MeshClusterList",
            "metadata": {}, "items": [west],
        });
        // Every Secret is answered after `ANSWER`: not found.
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let path = request.uri().path().to_owned();
            let (crd, clusters) = (crd.clone(), clusters.clone());
            async move {
                let (code, body) = match path.as_str() {
                    p if p.ends_with(MeshCluster::crd_name()) => (StatusCode::OK, crd),
                    "/apis/kubectl-mesh.io/v1alpha1/meshclusters" => (StatusCode::OK, clusters),
                    "/api/v1/namespaces" => (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "NamespaceList",
                            "metadata": {}, "items": []}),
                    ),
                    p => {
                        if p.contains("/secrets/") {
                            tokio::time::sleep(ANSWER).await;
                        }
                        status(StatusCode::NOT_FOUND, "NotFound", "not found")
                    }
                };
                Ok::<_, std::convert::Infallible>(json_response(code, &body))
            }
        });
        let primary = Client::new(service, "default");
        let started = tokio::time::Instant::now();
        let report = check_all(
            &primary,
            &kube::config::Kubeconfig::default(),
            Duration::from_secs(60),
            Timestamp::UNIX_EPOCH,
        )
        .await
        .unwrap();
        assert!(
            report
                .sections
                .iter()
                .any(|s| s.name.starts_with("cluster west")),
            "{report:?}"
        );
        assert_eq!(started.elapsed(), ANSWER);
    }
}
