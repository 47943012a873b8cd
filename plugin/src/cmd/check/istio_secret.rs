//! The Istio remote secret of each attached cluster (`attach --istio-remote-secret`): istiod
//! reads the remote with the kubeconfig in it, and never says why it cannot except in its log.
//! `check` does what istiod does first: it authenticates with those credentials and asks
//! whether they may list what istiod watches.

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Secret,
};
use kube::{Api, Client, api::PostParams};
use mesh_core::{cluster::MeshCluster, remote};

use futures::future::join_all;

use super::facts::{Attached, Fetched};
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
    /// Resources of [`WATCHED`] they may not list (empty: all allowed).
    pub cannot_list: RemoteResult<Vec<String>>,
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
    let whoami = with_deadline(
        timeout,
        Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await;
    let cannot_list = with_deadline(timeout, cannot_list(&client)).await;
    Ok(ReaderFacts {
        whoami,
        cannot_list,
    })
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
/// the clusters attached with one and read ([`Attached::read`]: a cluster being detached has
/// a one-line section, and its detach deletes this secret).
pub async fn add_checks(
    primary: &Client,
    attached: &Attached,
    sections: &mut [Section],
    timeout: Duration,
) {
    let clusters: Vec<&MeshCluster> = attached.read().collect();
    let found = join_all(clusters.iter().map(|c| facts(primary, c, timeout))).await;
    for (cluster, facts) in clusters.into_iter().zip(&found) {
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
    if let Err(e) = &reader.whoami {
        return Some(failed(e));
    }
    Some(match &reader.cannot_list {
        Ok(denied) if denied.is_empty() => CheckResult::ok(what, Some(secret)),
        Ok(denied) => CheckResult::error(
            what,
            format!(
                "the token in {secret} may not list {}: istiod never syncs the cluster",
                denied.join(", ")
            ),
            &reattach,
        ),
        Err(e) => failed(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(reader: Result<ReaderFacts, String>) -> IstioSecretFacts {
        IstioSecretFacts {
            secret: Ok(Some(Secret::default())),
            reader: Some(reader),
        }
    }

    fn answered(cannot_list: Vec<String>) -> ReaderFacts {
        ReaderFacts {
            whoami: Ok(SelfSubjectReview::default()),
            cannot_list: Ok(cannot_list),
        }
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
            cannot_list: Err(unauthorized()),
        }));
        let result = fails_saying(&facts, "refuses the token");
        assert!(result.hint_mentions("--istio-remote-secret"), "{result:?}");
    }

    #[test]
    fn a_token_revoked_between_the_reads_fails_alike() {
        let facts = with_secret(Ok(ReaderFacts {
            whoami: Ok(SelfSubjectReview::default()),
            cannot_list: Err(unauthorized()),
        }));
        fails_saying(&facts, "refuses the token");
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
        use super::super::facts::ClusterFacts;
        use mesh_core::fake_apiserver::answering;
        // A secret without the cluster's key, which fails the check.
        let (primary, requests) = answering(|_, path| {
            let name = path.rsplit('/').next().unwrap_or_default();
            let secret = serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "istio-system"},
            });
            (http::StatusCode::OK, secret)
        });
        let east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let leaving = crate::mesh_state::fixtures::being_detached(east, "example.com/backup");
        let west = mesh_core::fixtures::mesh_cluster("west", "uid-of-west");
        let attached = Attached {
            clusters: vec![leaving, west],
            primary_namespaces: Ok(Default::default()),
            remotes: vec![None, Some(ClusterFacts::SecretMissing)],
        };
        let section = |name: &str| Section {
            name: format!("cluster {name} (https://{name})"),
            checks: Vec::new(),
        };
        let mut sections = vec![section("east"), section("west")];
        add_checks(&primary, &attached, &mut sections, Duration::from_secs(5)).await;
        assert!(sections[0].checks.is_empty(), "{sections:?}");
        assert_eq!(sections[1].checks.len(), 1, "{sections:?}");
        assert_eq!(
            requests.all(),
            ["GET /api/v1/namespaces/istio-system/secrets/istio-remote-secret-west"]
        );
    }
}
