//! The Istio remote secret of each attached cluster (`attach --istio-remote-secret`): istiod
//! reads the remote with the kubeconfig in it, and never says why it cannot except in its log.
//! `check` does what istiod does first: it authenticates with those credentials and asks
//! whether they may list what istiod watches.
//!
//! [`facts`] is read with each cluster's other facts ([`super::facts::mesh`]), at once: a
//! remote that does not answer costs one timeout for both.

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Secret,
};
use kube::{Api, Client, api::PostParams};
use mesh_core::{cluster::MeshCluster, remote};

use super::answers::{Fetched, reached, refused};
use super::report::{CheckResult, Section};
use crate::{
    mesh_state::{self, RemoteError, RemoteResult, with_deadline},
    remote_setup as setup,
};

/// What istiod lists on a remote before it reports the cluster synced (a sample: a reader that
/// may not list one of these never syncs).
const WATCHED: [(&str, &str); 5] = [
    ("", "configmaps"),
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
];

/// What was read for one cluster's Istio remote secret.
#[derive(Debug)]
pub struct IstioSecretFacts {
    /// The secret on the primary (`None`: the cluster was attached without one).
    pub secret: Fetched<Secret>,
    /// What its credentials got from the remote, when there was a usable kubeconfig.
    pub reader: Option<Result<ReaderFacts, String>>,
}

/// What the remote answered the credentials of an Istio remote secret.
#[derive(Debug)]
pub struct ReaderFacts {
    /// Who they are.
    pub whoami: RemoteResult<SelfSubjectReview>,
    /// Resources of [`WATCHED`] they may not list (empty: all allowed); asked only when the
    /// remote answered who they are ([`reached`]).
    pub cannot_list: Option<RemoteResult<Vec<String>>>,
}

/// Reads `cluster`'s Istio remote secret on the primary and tries its credentials.
pub async fn facts(primary: &Client, cluster: &MeshCluster, timeout: Duration) -> IstioSecretFacts {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(primary.clone(), setup::ISTIO_NAMESPACE)
        .get_opt(&setup::istio_secret_name(&name))
        .await;
    let reader = match &secret {
        Ok(Some(secret)) => Some(reader_facts(secret, cluster, timeout).await),
        _ => None,
    };
    IstioSecretFacts { secret, reader }
}

async fn reader_facts(
    secret: &Secret,
    cluster: &MeshCluster,
    timeout: Duration,
) -> Result<ReaderFacts, String> {
    let name = &cluster.metadata.name.clone().unwrap_or_default();
    // istiod reads the key named after the cluster.
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(name))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| format!("the secret has no key {name}"))?;
    // As every client of a MeshCluster: only when it is the server and CA attach recorded.
    let client = remote::client_for_record(
        cluster,
        &setup::istio_secret_name(name),
        &yaml,
        &mesh_state::remote_options(timeout),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(read(&client, timeout).await)
}

/// Asks the remote who `client` is and, when it answered (a 403 too: it authenticated the
/// credentials), what of [`WATCHED`] they may not list: a remote that does not answer costs
/// one timeout, not two.
pub async fn read(client: &Client, timeout: Duration) -> ReaderFacts {
    let whoami = with_deadline(
        timeout,
        Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await;
    let cannot_list = if reached(&whoami) {
        Some(with_deadline(timeout, cannot_list(client)).await)
    } else {
        None
    };
    ReaderFacts {
        whoami,
        cannot_list,
    }
}

async fn cannot_list(client: &Client) -> Result<Vec<String>, kube::Error> {
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    let mut denied = Vec::new();
    for (group, resource) in WATCHED {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_owned()),
                    resource: Some(resource.to_owned()),
                    verb: Some("list".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push(resource.to_owned());
        }
    }
    Ok(denied)
}

/// Adds to each cluster's section of `sections` the check of its Istio remote secret, for
/// the `clusters` attached with one whose secret was read (`found`, in their order: nothing is
/// read of a cluster being detached, whose section is one line, and its detach deletes this
/// secret).
pub fn add_checks(
    clusters: &[MeshCluster],
    found: &[Option<IstioSecretFacts>],
    sections: &mut [Section],
) {
    let read = clusters.iter().zip(found);
    for (cluster, facts) in read.filter_map(|(c, f)| Some((c, f.as_ref()?))) {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let title = format!("cluster {name} (");
        let Some(result) = judge(&name, facts) else {
            continue;
        };
        if let Some(section) = sections.iter_mut().find(|s| s.name.starts_with(&title)) {
            section.checks.push(result);
        }
    }
}

/// The check of one cluster's Istio remote secret; `None` when it has none.
pub fn judge(name: &str, facts: &IstioSecretFacts) -> Option<CheckResult> {
    let what = "istiod's remote secret reads the cluster";
    let reattach = format!(
        "re-run `kubectl mesh attach` for {name} with --istio-remote-secret: it issues istiod a \
         new token and the rights it needs"
    );
    let secret = format!(
        "{}/{}",
        setup::ISTIO_NAMESPACE,
        setup::istio_secret_name(name)
    );
    match &facts.secret {
        Ok(None) => return None,
        // Refused before the apiserver looks whether it exists: the caller's rights are what is
        // missing, and most clusters have none (attach without --istio-remote-secret).
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Some(CheckResult::warning(
                what,
                format!(
                    "not checked: you may not read Secret {secret} ({})",
                    s.message
                ),
                format!(
                    "check as a caller who may get Secrets in {}",
                    setup::ISTIO_NAMESPACE
                ),
            ));
        }
        Err(e) => {
            return Some(CheckResult::kube_failure(
                what,
                &format!("reading Secret {secret}"),
                e,
            ));
        }
        Ok(Some(_)) => {}
    }
    let reader = match facts.reader.as_ref()? {
        Ok(reader) => reader,
        Err(e) => return Some(CheckResult::error(what, format!("{secret}: {e}"), reattach)),
    };
    // Whichever read the cluster refused: a token revoked between the two is refused by the
    // second only.
    let failed = |e: &RemoteError| {
        let detail = if e.is_forbidden() {
            format!("the cluster refuses the token in {secret} ({e}): istiod cannot read it")
        } else {
            format!("{secret}: {e}")
        };
        CheckResult::error(what, detail, &reattach)
    };
    // A 403 is an answer: the cluster accepted the token, and only forbids the review (as the
    // cluster's own check of its stored credentials judges it).
    if let Err(e) = &reader.whoami
        && !refused(e)
    {
        return Some(failed(e));
    }
    // Asked whenever whoami got an answer, as it did here.
    let listed = reader.cannot_list.as_ref()?;
    Some(match listed {
        Ok(denied) if denied.is_empty() => CheckResult::ok(what, Some(secret)),
        Ok(denied) => CheckResult::error(
            what,
            format!(
                "the token in {secret} may not list {}: istiod never syncs the cluster",
                denied.join(", ")
            ),
            &reattach,
        ),
        // Accepted, but not let ask: what istiod may list is not known.
        Err(e) if refused(e) => CheckResult::warning(
            what,
            format!(
                "not checked: the cluster accepts the token in {secret} but refuses it a \
                 SelfSubjectAccessReview ({e})"
            ),
            &reattach,
        ),
        Err(e) => failed(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    fn with_secret(reader: Result<ReaderFacts, String>) -> IstioSecretFacts {
        IstioSecretFacts {
            secret: Ok(Some(Secret::default())),
            reader: Some(reader),
        }
    }

    fn answered(cannot_list: Vec<String>) -> ReaderFacts {
        ReaderFacts {
            whoami: Ok(SelfSubjectReview::default()),
            cannot_list: Some(Ok(cannot_list)),
        }
    }

    fn forbidden() -> RemoteError {
        RemoteError::Call(kube::Error::Api(
            kube::core::Status::failure("selfsubjectreviews is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ))
    }

    fn unauthorized() -> RemoteError {
        RemoteError::Call(kube::Error::Api(
            kube::core::Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        ))
    }

    #[test]
    fn a_cluster_without_istio_secret_has_no_check() {
        let facts = IstioSecretFacts {
            secret: Ok(None),
            reader: None,
        };
        assert_eq!(judge("east", &facts), None);
    }

    /// RBAC refuses before looking whether the Secret exists: a caller without rights in
    /// istio-system is told so, without failing clusters that have no such Secret.
    #[test]
    fn a_caller_refused_the_secret_gets_a_warning_not_a_failure() {
        let facts = IstioSecretFacts {
            secret: Err(kube::Error::Api(
                kube::core::Status::failure("secrets is forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            )),
            reader: None,
        };
        let result = judge("east", &facts).unwrap();
        assert_eq!(result.result, super::super::Outcome::Warning);
        assert_eq!(
            result.detail.as_deref(),
            Some(
                "not checked: you may not read Secret istio-system/istio-remote-secret-east \
                 (secrets is forbidden)"
            )
        );
        assert!(
            result.hint_mentions("Secrets in istio-system"),
            "{result:?}"
        );
    }

    #[test]
    fn accepted_credentials_that_may_list_everything_pass() {
        let result = judge("east", &with_secret(Ok(answered(vec![])))).unwrap();
        assert_eq!(result.result, super::super::Outcome::Ok);
    }

    /// The check of `facts`, asserted to fail with a detail that says `detail`.
    fn fails_saying(facts: &IstioSecretFacts, detail: &str) -> CheckResult {
        let result = judge("east", facts).unwrap();
        assert_eq!(result.result, super::super::Outcome::Error);
        assert!(
            result.detail.as_deref().unwrap().contains(detail),
            "{result:?}"
        );
        result
    }

    #[test]
    fn a_revoked_token_fails_and_says_to_reattach() {
        let facts = with_secret(Ok(ReaderFacts {
            whoami: Err(unauthorized()),
            cannot_list: None,
        }));
        let result = fails_saying(&facts, "refuses the token");
        assert!(result.hint_mentions("--istio-remote-secret"), "{result:?}");
    }

    #[test]
    fn a_token_revoked_between_the_reads_fails_alike() {
        let facts = with_secret(Ok(ReaderFacts {
            whoami: Ok(SelfSubjectReview::default()),
            cannot_list: Some(Err(unauthorized())),
        }));
        fails_saying(&facts, "refuses the token");
    }

    /// A 403 is the cluster's answer: it accepted the token and forbids only the review, as
    /// the check of the stored credentials judges it. What the token may list decides.
    #[test]
    fn a_token_forbidden_to_review_who_it_is_is_judged_by_what_it_may_list() {
        let may_list = with_secret(Ok(ReaderFacts {
            whoami: Err(forbidden()),
            cannot_list: Some(Ok(vec![])),
        }));
        let result = judge("east", &may_list).unwrap();
        assert_eq!(
            result,
            CheckResult::ok(
                "istiod's remote secret reads the cluster",
                Some("istio-system/istio-remote-secret-east".into())
            )
        );
        let may_not = with_secret(Ok(ReaderFacts {
            whoami: Err(forbidden()),
            cannot_list: Some(Ok(vec!["pods".into()])),
        }));
        fails_saying(&may_not, "may not list pods");
    }

    /// Accepted, but refused the access review too: what it may list is not known.
    #[test]
    fn a_token_forbidden_every_review_is_not_checked() {
        let facts = with_secret(Ok(ReaderFacts {
            whoami: Err(forbidden()),
            cannot_list: Some(Err(forbidden())),
        }));
        let result = judge("east", &facts).unwrap();
        assert_eq!(result.result, super::super::Outcome::Warning, "{result:?}");
        assert_eq!(
            result.detail.as_deref(),
            Some(
                "not checked: the cluster accepts the token in \
                 istio-system/istio-remote-secret-east but refuses it a SelfSubjectAccessReview \
                 (selfsubjectreviews is forbidden)"
            )
        );
    }

    /// A remote that never answers who the credentials are is not asked what they may list:
    /// it costs one timeout, not two. (Paused time: the elapsed time is the timeouts, exactly.)
    #[tokio::test(start_paused = true)]
    async fn a_remote_that_does_not_answer_is_asked_once() {
        let (client, requests) = silent();
        const TIMEOUT: Duration = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let facts = read(&client, TIMEOUT).await;
        assert_eq!(started.elapsed(), TIMEOUT);
        assert!(
            matches!(facts.whoami, Err(RemoteError::TimedOut(_))),
            "{facts:?}"
        );
        assert!(facts.cannot_list.is_none(), "{facts:?}");
        assert_eq!(
            *requests.lock().unwrap(),
            ["POST /apis/authentication.k8s.io/v1/selfsubjectreviews"]
        );
    }

    /// A client of a remote that never answers, and the requests it was sent.
    fn silent() -> (Client, Arc<Mutex<Vec<String>>>) {
        let requests = Arc::<Mutex<Vec<String>>>::default();
        let seen = requests.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let line = format!("{} {}", request.method(), request.uri().path());
            seen.lock().unwrap().push(line);
            std::future::pending::<Result<http::Response<kube::client::Body>, Infallible>>()
        });
        (Client::new(service, "default"), requests)
    }

    /// Refused the review of who they are (403), the credentials are still asked what they
    /// may list: the remote authenticated them.
    #[tokio::test]
    async fn a_token_forbidden_to_review_who_it_is_is_asked_what_it_may_list() {
        use mesh_core::fake_apiserver::{answering, status};
        let (client, requests) = answering(|_, path| {
            if path.ends_with("/selfsubjectreviews") {
                return status(http::StatusCode::FORBIDDEN, "Forbidden", "forbidden");
            }
            let review = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {}, "status": {"allowed": true},
            });
            (http::StatusCode::CREATED, review)
        });
        let facts = read(&client, Duration::from_secs(5)).await;
        assert!(
            matches!(&facts.cannot_list, Some(Ok(denied)) if denied.is_empty()),
            "{facts:?}"
        );
        assert_eq!(
            requests.all().len(),
            1 + WATCHED.len(),
            "{:?}",
            requests.all()
        );
    }

    #[test]
    fn a_reader_missing_a_watched_resource_fails_naming_it() {
        let facts = with_secret(Ok(answered(vec!["configmaps".into()])));
        fails_saying(&facts, "may not list configmaps");
    }

    /// A cluster being detached gets one line ([`super::super::cluster::judge_mesh`]): its
    /// facts are not read ([`super::super::facts::mesh`]), nor is its Istio remote secret, nor
    /// is a line about it added to that section. A cluster beside it that was read is checked.
    #[tokio::test]
    async fn a_cluster_being_detached_gets_no_istio_check() {
        use mesh_core::fake_apiserver::{answering, status};
        let east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let leaving = crate::mesh_state::fixtures::being_detached(east, "example.com/backup");
        let west = mesh_core::fixtures::mesh_cluster("west", "uid-of-west");
        let clusters = serde_json::json!({
            "apiVersion": "kubectl-mesh.io/v1alpha1", "kind": "MeshClusterList",
            "metadata": {}, "items": [leaving, west],
        });
        // West's Istio remote secret has no key of the cluster, which fails the check; its
        // stored credentials are missing.
        let (primary, requests) = answering(move |_, path| {
            let body = match path {
                "/apis/kubectl-mesh.io/v1alpha1/meshclusters" => clusters.clone(),
                "/api/v1/namespaces" => serde_json::json!({
                    "apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [],
                }),
                "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-west" => {
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "istio-remote-secret-west", "namespace": "istio-system"},
                    })
                }
                _ => return status(http::StatusCode::NOT_FOUND, "NotFound", "not found"),
            };
            (http::StatusCode::OK, body)
        });
        let mesh = super::super::facts::mesh(
            &primary,
            &kube::config::Kubeconfig::default(),
            &mesh_core::labels::SyncRule::default(),
            Duration::from_secs(5),
        )
        .await;
        let super::super::facts::MeshFacts::Attached(attached) = mesh else {
            panic!("not attached: {mesh:?}");
        };
        let section = |name: &str| Section {
            name: format!("cluster {name} (https://{name})"),
            checks: Vec::new(),
        };
        let mut sections = vec![section("east"), section("west")];
        add_checks(&attached.clusters, &attached.istio_secrets, &mut sections);
        assert!(sections[0].checks.is_empty(), "{sections:?}");
        assert_eq!(sections[1].checks.len(), 1, "{sections:?}");
        let istio_reads: Vec<String> = requests
            .all()
            .into_iter()
            .filter(|r| r.contains("istio"))
            .collect();
        assert_eq!(
            istio_reads,
            ["GET /api/v1/namespaces/istio-system/secrets/istio-remote-secret-west"]
        );
    }
}
