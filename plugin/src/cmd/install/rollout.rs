//! What `install --wait` waits for, under one deadline: the webhook Deployment's rollout, then,
//! while a replaced certificate's CA is still trusted, the pods serving the previous one to go.

use std::ops::ControlFlow::{Break, Continue};
use std::time::{Duration, Instant};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use mesh_core::MESH_NAMESPACE;

use crate::cmd::apply;
use crate::{Error, Result, output::Progress, poll, render};

/// Everything `--wait` waits for, under one deadline `timeout` from now: the rollout, then, with
/// `current` (the fingerprint of the certificate served from now on), the pods serving another
/// one to go. A timeout says `timeout`, the whole wait's, whichever part it ended.
pub(super) async fn wait_webhook(
    client: &Client,
    current: Option<&str>,
    timeout: Duration,
    progress: Progress,
) -> Result<()> {
    // No deadline (`timeout` too long for the clock): each part may take all of it.
    let deadline = poll::deadline(timeout);
    let left = || deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
    let whole = |e| match e {
        Error::Timeout { what, hint, .. } => Error::Timeout {
            what,
            after: format!("{}s", timeout.as_secs()),
            hint,
        },
        e => e,
    };
    wait_available(client, left()).await.map_err(whole)?;
    progress.ok(format!("Deployment {} available", render::WEBHOOK));
    if let Some(fingerprint) = current {
        wait_previous_pods_gone(client, fingerprint, left())
            .await
            .map_err(whole)?;
    }
    Ok(())
}

/// The webhook's pods that serve another certificate than `fingerprint` (their
/// [`render::SERVING_CERT_ANNOTATION`]), terminating ones included: a rollout is done while
/// old pods still terminate, and one may yet answer a call on a connection the apiserver keeps
/// open, which fails (and is let through unpushed) once their CA is no longer trusted. A pod
/// that ended (evicted, or stopped by a node shutdown) serves nothing, though it stays listed
/// until someone deletes it.
fn serving_another(pods: &[Pod], fingerprint: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| !has_ended(p))
        .filter(|p| {
            p.annotations()
                .get(render::SERVING_CERT_ANNOTATION)
                .map(String::as_str)
                != Some(fingerprint)
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// Whether `pod`'s containers have all stopped for good (phase `Succeeded` or `Failed`).
fn has_ended(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether a pod of the webhook serves another certificate than `fingerprint` now
/// ([`serving_another`]); a caller who may not list them cannot tell, and is answered yes.
pub(super) async fn pods_serving_another(client: &Client, fingerprint: &str) -> Result<bool> {
    match webhook_pods(client).await {
        Ok(pods) => Ok(!serving_another(&pods, fingerprint).is_empty()),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(true),
        Err(e) => Err(unlisted(e)),
    }
}

/// The webhook's pods.
async fn webhook_pods(client: &Client) -> kube::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), MESH_NAMESPACE);
    let pods = ListParams::default().labels(&render::webhook_pod_selector());
    Ok(api.list(&pods).await?.items)
}

/// A list of the webhook's pods that failed with `e`.
fn unlisted(e: kube::Error) -> Error {
    Error::kube(format!(
        "cannot list the pods of Deployment {MESH_NAMESPACE}/{}",
        render::WEBHOOK
    ))(e)
}

/// Waits until no pod of the webhook serves another certificate than `fingerprint`
/// ([`serving_another`]).
async fn wait_previous_pods_gone(
    client: &Client,
    fingerprint: &str,
    timeout: Duration,
) -> Result<()> {
    let look = async || {
        let found = webhook_pods(client).await.map_err(unlisted)?;
        let old = serving_another(&found, fingerprint);
        Ok(if old.is_empty() {
            Break(())
        } else {
            Continue(old)
        })
    };
    let late = |old: Vec<String>| poll::Late {
        what: format!(
            "the webhook's pods serving the previous certificate to end ({})",
            mesh_core::printable::few(&old)
        ),
        hint: "the webhook configuration trusts both CAs meanwhile: re-run install without \
               --rotate-certs once they are gone to stop trusting the previous one"
            .into(),
    };
    poll::until(timeout, Duration::from_secs(1), look, late).await
}

/// Where a Deployment's rollout stands, read as `kubectl rollout status` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the current template and is available; no old pod is left.
    Done,
    /// Not yet: what it waits for.
    Waiting(String),
    /// The rollout will not finish by itself: why.
    Failed(String),
}

/// The rollout state of `d` (its spec and status), following kubectl's
/// `DeploymentStatusViewer`: the controller has seen the current generation; every replica
/// of the spec is updated; no old replica is left (old pods may keep the Deployment
/// `Available` while the new ones crash); every updated replica is available. A `Progressing`
/// condition False with reason `ProgressDeadlineExceeded` fails it at once.
pub fn rollout(d: &Deployment) -> Rollout {
    let status = d.status.clone().unwrap_or_default();
    if status.observed_generation < d.metadata.generation {
        return Rollout::Waiting("the controller to observe the new spec".into());
    }
    let stalled = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = stalled {
        let why = c.message.as_deref().unwrap_or_default();
        return Rollout::Failed(format!(
            "Deployment {}/{} exceeded its progress deadline{}",
            d.metadata.namespace.as_deref().unwrap_or(MESH_NAMESPACE),
            d.metadata.name.as_deref().unwrap_or(render::WEBHOOK),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", mesh_core::printable::one_line(why))
            }
        ));
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        Rollout::Waiting(format!("{updated} of {wanted} new replicas updated"))
    } else if replicas > updated {
        Rollout::Waiting(format!(
            "{} old replicas pending termination",
            replicas - updated
        ))
    } else if available < updated {
        Rollout::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ))
    } else {
        Rollout::Done
    }
}

/// Waits until the webhook Deployment has rolled out ([`rollout`]); fails at once when its
/// progress deadline is exceeded, and says on a timeout what it was still waiting for.
async fn wait_available(client: &Client, timeout: Duration) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), MESH_NAMESPACE);
    let hint = "check the pods: `kubectl -n kubectl-mesh get pods` and `kubectl -n kubectl-mesh \
                describe deploy mesh-webhook`";
    let last = std::sync::Arc::new(std::sync::Mutex::new(Rollout::Waiting(
        "the Deployment to exist".into(),
    )));
    let seen = last.clone();
    let waited = apply::wait_for(
        api,
        render::WEBHOOK,
        &format!(
            "Deployment {MESH_NAMESPACE}/{} to roll out",
            render::WEBHOOK
        ),
        timeout,
        hint,
        move |d: Option<&Deployment>| {
            let state = d.map_or_else(
                || Rollout::Waiting("the Deployment to exist".into()),
                rollout,
            );
            let ended = !matches!(state, Rollout::Waiting(_));
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
            ended
        },
    )
    .await;
    let last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    waited_for_rollout(waited, last, hint)
}

/// What a wait for the rollout, `waited`, says once `last` was the rollout's state: a failed
/// rollout is refused at once, a timeout says what it still waited for.
fn waited_for_rollout(waited: Result<()>, last: Rollout, hint: &str) -> Result<()> {
    match (waited, last) {
        (Ok(()), Rollout::Failed(what)) => Err(Error::Refused {
            what,
            hint: hint.into(),
        }),
        (Err(Error::Timeout { what, after, hint }), Rollout::Waiting(pending)) => {
            Err(Error::Timeout {
                what: format!("{what} ({pending})"),
                after,
                hint,
            })
        }
        (waited, _) => waited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    /// A webhook Deployment of `wanted` replicas at generation 2, with `status` (JSON).
    fn deployment(wanted: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mesh-webhook", "namespace": "kubectl-mesh", "generation": 2},
            "spec": {
                "replicas": wanted,
                "selector": {"matchLabels": {"app": "mesh-webhook"}},
                "template": {"spec": {"containers": [{"name": "webhook"}]}},
            },
            "status": status,
        }))
        .unwrap()
    }

    fn available() -> serde_json::Value {
        serde_json::json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"})
    }

    fn waiting(what: &str) -> Rollout {
        Rollout::Waiting(what.into())
    }

    /// A pod of the webhook named `name`, in `phase`, serving the certificate of `fingerprint`.
    fn webhook_pod(name: &str, fingerprint: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: fingerprint
                    .map(|f| [(render::SERVING_CERT_ANNOTATION.to_owned(), f.to_owned())].into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    /// `install --rotate-certs --wait` stopped trusting the previous CA once the rollout was
    /// done, while pods serving the previous certificate still terminated and answered.
    #[test]
    fn pods_of_the_previous_certificate_count_until_gone() {
        let mut terminating = webhook_pod("old-terminating", Some("sha-old"), "Running");
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            webhook_pod("new", Some("sha-new"), "Running"),
            terminating,
            webhook_pod("older-than-the-annotation", None, "Running"),
        ];
        assert_eq!(
            serving_another(&pods, "sha-new"),
            ["old-terminating", "older-than-the-annotation"]
        );
        assert!(serving_another(&pods[..1], "sha-new").is_empty());
    }

    /// An evicted pod stays listed, in phase Failed, until someone deletes it: it serves
    /// nothing, and must not keep the previous CA trusted for ever.
    #[test]
    fn pods_that_ended_serve_no_certificate() {
        let ended = [
            webhook_pod("evicted", Some("sha-old"), "Failed"),
            webhook_pod("done", Some("sha-old"), "Succeeded"),
        ];
        assert!(serving_another(&ended, "sha-new").is_empty());
        let running = [
            webhook_pod("old", Some("sha-old"), "Running"),
            webhook_pod("starting", Some("sha-old"), "Pending"),
        ];
        assert_eq!(serving_another(&running, "sha-new"), ["old", "starting"]);
    }

    /// Asserts that a Deployment of 2 replicas with `status` (JSON) is still rolling out,
    /// waiting for what `expected` says, for each `(status, expected)` of `cases`.
    #[track_caller]
    fn assert_waits(cases: impl IntoIterator<Item = (serde_json::Value, &'static str)>) {
        for (status, expected) in cases {
            let d = deployment(2, status.clone());
            assert_eq!(rollout(&d), waiting(expected), "{status}");
        }
    }

    #[test]
    fn rollout_waits_while_old_pods_keep_the_deployment_available() {
        assert_waits([
            // A new image crash-looping: the new ReplicaSet's pod is updated but not
            // available, the old pods still are, and the Deployment says Available.
            (
                serde_json::json!({
                    "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                    "availableReplicas": 2, "readyReplicas": 2, "unavailableReplicas": 1,
                    "conditions": [available(), {"type": "Progressing", "status": "True",
                                                 "reason": "ReplicaSetUpdated"}],
                }),
                "1 of 2 new replicas updated",
            ),
            // Every new pod created, none available yet, the old ones still there.
            (
                serde_json::json!({
                    "observedGeneration": 2, "replicas": 4, "updatedReplicas": 2,
                    "availableReplicas": 2, "conditions": [available()],
                }),
                "2 old replicas pending termination",
            ),
            // The old pods gone, a new one not yet available.
            (
                serde_json::json!({
                    "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                    "availableReplicas": 1, "conditions": [available()],
                }),
                "1 of 2 updated replicas available",
            ),
        ]);
    }

    /// A rollout past its progress deadline ends the wait refused at once; a timeout says
    /// what it still waited for; a finished rollout is no error.
    #[test]
    fn the_wait_says_how_the_rollout_ended() {
        let timeout = || Error::Timeout {
            what: "Deployment kubectl-mesh/mesh-webhook to roll out".into(),
            after: "2m".into(),
            hint: "check the pods".into(),
        };
        let failed = waited_for_rollout(Ok(()), Rollout::Failed("past its deadline".into()), "h");
        assert_eq!(failed.unwrap_err().line(), "past its deadline; h");
        let pending = Rollout::Waiting("1 of 2 updated replicas available".into());
        let late = waited_for_rollout(Err(timeout()), pending, "h").unwrap_err();
        assert_eq!(
            late.line(),
            "timed out after 2m waiting for Deployment kubectl-mesh/mesh-webhook to roll out \
             (1 of 2 updated replicas available); check the pods"
        );
        assert!(waited_for_rollout(Ok(()), Rollout::Done, "h").is_ok());
    }

    #[test]
    fn rollout_waits_for_the_controller_to_observe_the_generation() {
        let observe = "the controller to observe the new spec";
        assert_waits([
            (
                serde_json::json!({
                    "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                    "availableReplicas": 2, "conditions": [available()],
                }),
                observe,
            ),
            // No status at all yet.
            (serde_json::Value::Null, observe),
        ]);
    }

    #[test]
    fn rollout_is_done_when_every_replica_is_updated_and_available() {
        let done = deployment(
            2,
            serde_json::json!({
                "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                "availableReplicas": 2, "readyReplicas": 2,
                "conditions": [available(), {"type": "Progressing", "status": "True",
                                             "reason": "NewReplicaSetAvailable"}],
            }),
        );
        assert_eq!(rollout(&done), Rollout::Done);
    }

    #[test]
    fn rollout_fails_at_once_past_its_progress_deadline() {
        let stuck = deployment(
            2,
            serde_json::json!({
                "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                "availableReplicas": 2,
                "conditions": [available(), {
                    "type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"mesh-webhook-5d9\" has timed out progressing.",
                }],
            }),
        );
        assert_eq!(
            rollout(&stuck),
            Rollout::Failed(
                "Deployment kubectl-mesh/mesh-webhook exceeded its progress deadline \
                 (ReplicaSet \"mesh-webhook-5d9\" has timed out progressing.)"
                    .into()
            )
        );
        // A deadline exceeded by an earlier generation is not this one's.
        let mut next = stuck.clone();
        next.metadata.generation = Some(3);
        assert_eq!(
            rollout(&next),
            waiting("the controller to observe the new spec")
        );
    }

    /// A primary whose webhook Deployment has rolled out once it answers, `after`, and whose
    /// pod `old` serves the previous certificate for ever.
    fn rolled_out_after(after: Duration) -> Client {
        use mesh_core::fake_apiserver::json_response;
        let done = deployment(
            1,
            serde_json::json!({
                "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                "availableReplicas": 1, "conditions": [available()],
            }),
        );
        let deployments = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "DeploymentList",
            "metadata": {"resourceVersion": "1"}, "items": [done],
        });
        let pods = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
            "items": [{"metadata": {
                "name": "old",
                "annotations": {render::SERVING_CERT_ANNOTATION: "sha-old"},
            }}],
        });
        let server = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (deployments, pods) = (deployments.clone(), pods.clone());
            async move {
                let watch = req.uri().query().unwrap_or_default().contains("watch=true");
                let body = match req.uri().path().rsplit('/').next() {
                    Some("deployments") if !watch => {
                        tokio::time::sleep(after).await;
                        deployments
                    }
                    Some("pods") if !watch => pods,
                    // No change to watch for.
                    _ => std::future::pending().await,
                };
                Ok::<_, std::convert::Infallible>(json_response(http::StatusCode::OK, &body))
            }
        });
        Client::new(server, "default")
    }

    /// `install --wait --timeout 1e19` panicked once everything was applied: a deadline that
    /// far is past what the clock can count to, and is none. (The apiserver is a stand-in
    /// answering a rolled-out Deployment at once: a unit test has no real one.)
    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_is_no_deadline() {
        let client = rolled_out_after(Duration::ZERO);
        wait_webhook(&client, None, Duration::MAX, Progress::quiet())
            .await
            .expect("rolled out");
    }

    /// `install --rotate-certs --wait` gave the rollout and then the pods of the previous
    /// certificate each the whole --timeout: a rollout that took most of it made the wait last
    /// nearly twice as long.
    #[tokio::test]
    async fn the_rollout_and_the_previous_pods_share_one_timeout() {
        let timeout = Duration::from_secs(4);
        let client = rolled_out_after(Duration::from_secs(3));
        let started = Instant::now();
        let late = wait_webhook(&client, Some("sha-new"), timeout, Progress::quiet())
            .await
            .expect_err("the old pod stays");
        let took = started.elapsed();
        // The pods are looked at every second: the wait ends at the first look past the deadline.
        assert!(took < timeout + Duration::from_millis(1500), "{took:?}");
        assert_eq!(
            late.what(),
            "timed out after 4s waiting for the webhook's pods serving the previous certificate \
             to end (old)"
        );
    }
}
