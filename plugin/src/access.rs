//! Reaching a cluster and asking it what the caller may do, before changing anything:
//! the preflight of `attach` and `detach`.
//!
//! Every check here is read-only (SelfSubjectAccessReviews are not stored), so a refused
//! command leaves nothing behind, and every failure is one line naming the cluster.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Namespace,
};
use kube::{Api, Client, api::PostParams, config::Kubeconfig};

use crate::{Error, Result, kubeconfig};

/// How long connecting to an apiserver may take: a remote that is down must fail the
/// preflight in seconds, not after the OS gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// SelfSubjectAccessReviews in flight at once.
const REVIEW_CONCURRENCY: usize = 8;

/// One cluster as a command reaches it, for messages.
#[derive(Clone, Debug)]
pub struct Target {
    /// How messages name it: "the primary", "remote cluster east".
    pub label: String,
    /// Its API server URL.
    pub server: String,
    /// What to check when it cannot be reached: "the server address in east.yaml".
    pub where_configured: String,
}

/// A client for `context` of `kc` (or its current one) with short timeouts.
pub async fn client(kc: Kubeconfig, context: Option<&str>) -> Result<Client> {
    let name = kubeconfig::select(&kc, context)?.context.to_owned();
    let mut config = kubeconfig::client_config(kc, Some(&name)).await?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    Client::try_from(config).map_err(|source| {
        kubeconfig::Error::Client {
            context: name,
            source,
        }
        .into()
    })
}

/// Whether an error means the request never got an answer from the apiserver.
pub fn is_unreachable(err: &kube::Error) -> bool {
    !matches!(err, kube::Error::Api(_) | kube::Error::Auth(_))
}

/// The cause of a transport failure in a few words: "connection refused", "connection timed
/// out", "invalid peer certificate: UnknownIssuer"; else the innermost cause.
pub fn transport_cause(err: &kube::Error) -> String {
    let mut innermost = err.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "connection timed out".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        let text = c.to_string();
        if text.contains("deadline has elapsed") || text.contains("timed out") {
            return "timed out".into();
        }
        if !text.is_empty() {
            innermost = text;
        }
        cause = c.source();
    }
    innermost
}

/// The one-line error for a request to `target` that failed before anything was changed.
pub fn request_error(target: &Target, doing: &str, err: kube::Error) -> Error {
    match &err {
        e if is_unreachable(e) => Error::Refused {
            what: format!(
                "cannot reach {} at {}: {}",
                target.label,
                target.server,
                transport_cause(e)
            ),
            hint: format!(
                "check {} and that the cluster is up",
                target.where_configured
            ),
        },
        kube::Error::Api(s) if s.code == 401 => Error::Refused {
            what: format!(
                "{} at {} did not accept the credentials",
                target.label, target.server
            ),
            hint: format!(
                "refresh the credentials in {}; `kubectl auth whoami` shows whom they name",
                target.where_configured
            ),
        },
        kube::Error::Auth(_) => Error::Refused {
            what: format!(
                "cannot get credentials for {}: {}",
                target.label,
                crate::describe_kube(&err)
            ),
            hint: format!(
                "check the user in {}; `kubectl auth whoami` must work with it",
                target.where_configured
            ),
        },
        _ => Error::Refused {
            what: format!(
                "cannot {doing} on {}: {}",
                target.label,
                crate::describe_kube(&err)
            ),
            hint: "check the cluster's state with kubectl and re-run the command".into(),
        },
    }
}

/// Rights a command needs on one kind of object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// API group ("" for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Namespace of namespaced objects.
    pub namespace: Option<String>,
    /// Verbs needed.
    pub verbs: Vec<&'static str>,
}

impl Need {
    /// `verbs` on cluster-scoped `resource` of `group`.
    pub fn cluster(group: &'static str, resource: &'static str, verbs: &[&'static str]) -> Self {
        Self {
            group,
            resource,
            namespace: None,
            verbs: verbs.to_vec(),
        }
    }

    /// `verbs` on `resource` of `group` in `namespace`.
    pub fn namespaced(
        group: &'static str,
        resource: &'static str,
        namespace: &str,
        verbs: &[&'static str],
    ) -> Self {
        Self {
            group,
            resource,
            namespace: Some(namespace.to_owned()),
            verbs: verbs.to_vec(),
        }
    }

    /// `resource` as kubectl spells it: `secrets`, `clusterroles.rbac.authorization.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// Asks `client`'s cluster, one SelfSubjectAccessReview per verb, which of `needs` the caller
/// lacks. Returns them as phrases: `secrets in namespace kubectl-mesh (create/delete)`.
pub async fn missing(client: &Client, needs: &[Need]) -> Result<Vec<String>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let checks = needs
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.verbs.iter().map(move |v| (i, n, *v)));
    let answers: Vec<Result<(usize, &'static str, bool), kube::Error>> = stream::iter(checks)
        .map(|(i, need, verb)| {
            let api = api.clone();
            async move {
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            group: Some(need.group.to_owned()),
                            resource: Some(need.resource.to_owned()),
                            namespace: need.namespace.clone(),
                            verb: Some(verb.to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let answer = api.create(&PostParams::default(), &review).await?;
                Ok((i, verb, answer.status.is_some_and(|s| s.allowed)))
            }
        })
        .buffered(REVIEW_CONCURRENCY)
        .collect()
        .await;
    let mut denied: BTreeMap<usize, Vec<&'static str>> = BTreeMap::new();
    for answer in answers {
        let (i, verb, allowed) = answer?;
        if !allowed {
            denied.entry(i).or_default().push(verb);
        }
    }
    Ok(denied
        .into_iter()
        .filter_map(|(i, verbs)| {
            let need = needs.get(i)?;
            let mut phrase = need.qualified();
            if let Some(ns) = &need.namespace {
                phrase.push_str(&format!(" in namespace {ns}"));
            }
            Some(format!("{phrase} ({})", verbs.join("/")))
        })
        .collect())
}

/// The identity of a cluster: the UID of its kube-system namespace.
pub async fn cluster_id(client: &Client) -> Result<String, kube::Error> {
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    Ok(ns.metadata.uid.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connection_is_named_plainly() {
        let err = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        )));
        assert!(is_unreachable(&err));
        assert_eq!(transport_cause(&err), "connection refused");
        let target = Target {
            label: "remote cluster east".into(),
            server: "https://127.0.0.1:1".into(),
            where_configured: "the server address in east.yaml".into(),
        };
        let line = request_error(&target, "read", err).line();
        assert_eq!(
            line,
            "cannot reach remote cluster east at https://127.0.0.1:1: connection refused; \
             check the server address in east.yaml and that the cluster is up"
        );
    }

    #[test]
    fn unauthorized_is_about_credentials() {
        let err = kube::Error::Api(
            kube::core::Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        );
        assert!(!is_unreachable(&err));
        let target = Target {
            label: "the primary".into(),
            server: "https://p".into(),
            where_configured: "context main of your kubeconfig".into(),
        };
        let line = request_error(&target, "read", err).line();
        assert!(
            line.starts_with("the primary at https://p did not accept"),
            "{line}"
        );
    }

    #[test]
    fn needs_are_spelled_like_kubectl() {
        let n = Need::cluster("rbac.authorization.k8s.io", "clusterroles", &["create"]);
        assert_eq!(n.qualified(), "clusterroles.rbac.authorization.k8s.io");
        let n = Need::namespaced("", "secrets", "kubectl-mesh", &["get"]);
        assert_eq!(n.qualified(), "secrets");
    }
}
