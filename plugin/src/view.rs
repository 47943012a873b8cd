//! Read-only views of a remote's workloads, with credentials kept apart from the sync
//! identity's: the view identity `attach --services-view` creates ([`setup::VIEW_ACCOUNT`],
//! its kubeconfig in Secret `cluster-<name>-view` on the primary) or, for a cluster without
//! one, istiod's reader from `attach --istio-remote-secret`, which may list pods too. The
//! stored sync token may not read workloads, and must not.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client, ResourceExt};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{KUBECONFIG_KEY, MeshCluster},
    failure, remote,
};

use crate::{
    Error,
    mesh_state::{self, RemoteResult},
    remote_setup as setup,
};

/// Whose credentials a view reads with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The view identity of `--services-view`.
    View,
    /// istiod's reader, from the Istio remote secret.
    IstioReader,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::View => "view",
            Self::IstioReader => "istio-reader",
        })
    }
}

/// The view credentials of one cluster, as found on the primary.
pub enum Credentials {
    /// Neither a view Secret nor an Istio remote secret (or, past an absent view Secret, one
    /// the caller may not read: see [`Lookup::istio_unread`]).
    None,
    /// A client of the remote made of them.
    Found { source: Source, client: Client },
    /// They exist but cannot be used (why, in one line).
    Unusable { source: Source, error: String },
    /// The primary did not give their Secret (refused the caller, or did not answer): why, in
    /// one line. Attaching again would not help.
    Unreadable { source: Source, error: String },
}

/// The command that gives `cluster` a view identity.
pub fn enable_command(cluster: &str) -> String {
    format!("kubectl mesh attach <kubeconfig> --name {cluster} --services-view")
}

/// "no view credentials", and why the Istio remote secret was not read when the caller was
/// refused it ([`Lookup::istio_unread`]): the caller's rights may be what is missing.
pub fn no_credentials(istio_unread: Option<&str>) -> String {
    match istio_unread {
        None => "no view credentials".to_owned(),
        Some(why) => format!("no view credentials, and {why}"),
    }
}

/// A cluster's view credentials, and what the caller may want to know of them.
pub struct Lookup {
    pub credentials: Credentials,
    /// Why the Istio remote secret could not be read, when it was refused past an absent view
    /// Secret and the cluster is taken to have no view credentials: the caller may lack rights
    /// in istio-system rather than the cluster credentials.
    pub istio_unread: Option<String>,
}

/// Finds `mc`'s view credentials on the primary, with a client of these timeouts (a watch
/// needs a read timeout longer than its quiet periods): its view Secret, else its Istio
/// remote secret. Only a Secret that does not exist counts as absent: one the caller may not
/// read (or a primary that does not answer) is unusable, with why, as is one that is not what
/// attach recorded in `mc` ([`mesh_core::recorded`]), and nothing is sent with it. Past an
/// absent view Secret, an Istio remote secret the caller may not read is taken as absent too
/// (`choose` says why), and why it was not read is kept.
pub async fn lookup(primary: &Client, mc: &MeshCluster, options: &remote::RemoteOptions) -> Lookup {
    let name = mc.name_any();
    let cluster = name.as_str();
    let read = |namespace: &'static str, name: String| {
        let api = Api::<Secret>::namespaced(primary.clone(), namespace);
        async move {
            match api.get_opt(&name).await {
                Ok(Some(secret)) => SecretRead::Found(Box::new(secret)),
                Ok(None) => SecretRead::Absent,
                Err(e) => {
                    let refused = matches!(&e, kube::Error::Api(s) if s.code == 403);
                    let error =
                        Error::kube(format!("cannot read Secret {namespace}/{name}"))(e).line();
                    SecretRead::Failed { refused, error }
                }
            }
        }
    };
    let view = read(MESH_NAMESPACE, setup::view_secret_name(cluster)).await;
    let istio = match view {
        SecretRead::Absent => {
            Some(read(setup::ISTIO_NAMESPACE, setup::istio_secret_name(cluster)).await)
        }
        _ => None,
    };
    let (source, secret) = match choose(view, istio) {
        Choice::Use(source, secret) => (source, secret),
        Choice::None { istio_unread } => {
            return Lookup {
                credentials: Credentials::None,
                istio_unread,
            };
        }
        Choice::Unreadable { source, error } => {
            return Lookup {
                credentials: Credentials::Unreadable { source, error },
                istio_unread: None,
            };
        }
    };
    Lookup {
        credentials: from_secret(mc, source, &secret, options).await,
        istio_unread: None,
    }
}

/// How reading one Secret on the primary ended.
#[derive(Debug)]
enum SecretRead {
    Found(Box<Secret>),
    /// It does not exist.
    Absent,
    /// The primary did not give it: refused the caller (403) or not; why, in one line.
    Failed {
        refused: bool,
        error: String,
    },
}

/// Which Secret a cluster's view credentials come from.
#[derive(Debug)]
enum Choice {
    Use(Source, Box<Secret>),
    /// None: see [`Lookup::istio_unread`].
    None {
        istio_unread: Option<String>,
    },
    Unreadable {
        source: Source,
        error: String,
    },
}

/// Decides from the read of the view Secret and, when it was absent, that of the Istio
/// remote secret. A refusal of the view Secret is not absence: "no view credentials" would
/// send the caller to attach again when what is missing is their right to read Secrets on
/// the primary. Past an absent view Secret, a refused Istio remote secret is: attach
/// `--services-view` is then what gives the cluster view credentials either way (a caller
/// refused istio-system could not use istiod's reader), and the refusal is said beside it.
fn choose(view: SecretRead, istio: Option<SecretRead>) -> Choice {
    match (view, istio) {
        (SecretRead::Found(secret), _) => Choice::Use(Source::View, secret),
        (SecretRead::Failed { error, .. }, _) => Choice::Unreadable {
            source: Source::View,
            error,
        },
        (SecretRead::Absent, Some(SecretRead::Found(secret))) => {
            Choice::Use(Source::IstioReader, secret)
        }
        (SecretRead::Absent, None | Some(SecretRead::Absent)) => {
            Choice::None { istio_unread: None }
        }
        (
            SecretRead::Absent,
            Some(SecretRead::Failed {
                refused: true,
                error,
            }),
        ) => Choice::None {
            istio_unread: Some(error),
        },
        (
            SecretRead::Absent,
            Some(SecretRead::Failed {
                refused: false,
                error,
            }),
        ) => Choice::Unreadable {
            source: Source::IstioReader,
            error,
        },
    }
}

/// The credentials in `secret`, found as `source`.
async fn from_secret(
    mc: &MeshCluster,
    source: Source,
    secret: &Secret,
    options: &remote::RemoteOptions,
) -> Credentials {
    let key = match source {
        Source::View => KUBECONFIG_KEY.to_owned(),
        // istiod reads the key named after the cluster.
        Source::IstioReader => mc.name_any(),
    };
    let Some(yaml) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    else {
        return Credentials::Unusable {
            source,
            error: format!("Secret {} has no key {key}", secret.name_any()),
        };
    };
    // Through the rule of stored kubeconfigs and the MeshCluster's record, as every remote
    // client is built.
    match remote::client_for_record(mc, &secret.name_any(), &yaml, options).await {
        Ok(client) => Credentials::Found { source, client },
        Err(e) => Credentials::Unusable {
            source,
            error: failure::error_chain(&e),
        },
    }
}

/// Every pod of the remote, by namespace.
pub async fn pods(client: &Client) -> RemoteResult<BTreeMap<String, Vec<Pod>>> {
    let pods: Vec<Pod> = mesh_state::list_all(client).await?;
    let mut by_namespace: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        by_namespace
            .entry(pod.namespace().unwrap_or_default())
            .or_default()
            .push(pod);
    }
    Ok(by_namespace)
}

#[cfg(test)]
mod tests {
    use mesh_core::fake_apiserver::{answering, status};

    use super::*;
    use crate::mesh_state::fixtures::cluster;
    use std::time::Duration;

    /// The credentials [`lookup`] finds, each call under `timeout`.
    async fn credentials(primary: &Client, mc: &MeshCluster, timeout: Duration) -> Credentials {
        lookup(primary, mc, &mesh_state::remote_options(timeout))
            .await
            .credentials
    }

    /// A primary that answers every request with `code` and `reason`.
    fn primary_answering(code: http::StatusCode, reason: &'static str) -> Client {
        let refused = "secrets is forbidden: User \"dev\" cannot get";
        answering(move |_, _| status(code, reason, refused)).0
    }

    /// A primary that has no view Secret and refuses the caller the Istio remote secret.
    fn primary_without_view_refusing_istio() -> Client {
        let (primary, _) = answering(|_, path| {
            if path.contains("/namespaces/istio-system/") {
                status(
                    http::StatusCode::FORBIDDEN,
                    "Forbidden",
                    "secrets is forbidden: User \"dev\" cannot get",
                )
            } else {
                status(http::StatusCode::NOT_FOUND, "NotFound", "not found")
            }
        });
        primary
    }

    /// A cluster attached without --services-view or --istio-remote-secret, read by a caller
    /// who may not read istio-system: it said "cannot read" (the Istio reader's credentials)
    /// rather than that the cluster has no view credentials and what gives it some.
    #[tokio::test]
    async fn no_view_secret_and_a_refused_istio_secret_is_no_credentials() {
        let east = cluster("east", "https://10.0.0.2:6443", "2026-01-01T00:00:00Z");
        let options = mesh_state::remote_options(Duration::from_secs(5));
        let primary = primary_without_view_refusing_istio();
        let found = lookup(&primary, &east, &options).await;
        match found.credentials {
            Credentials::None => {}
            Credentials::Unreadable { source, error } => {
                panic!("said unreadable with the {source} credentials: {error}")
            }
            Credentials::Unusable { error, .. } => panic!("said unusable: {error}"),
            Credentials::Found { .. } => panic!("found"),
        }
        let why = found.istio_unread.unwrap_or_default();
        assert!(
            why.starts_with(
                "cannot read Secret istio-system/istio-remote-secret-east: secrets is forbidden"
            ),
            "{why}"
        );
    }

    /// Which Secret is used, from how each read ended.
    #[test]
    fn choose_decides_from_both_reads() {
        let found = || SecretRead::Found(Box::default());
        let failed = |refused| SecretRead::Failed {
            refused,
            error: "why".into(),
        };
        let chosen = |view, istio| match choose(view, istio) {
            Choice::Use(source, _) => format!("use {source}"),
            Choice::None { istio_unread } => format!("none {istio_unread:?}"),
            Choice::Unreadable { source, error } => format!("unreadable {source}: {error}"),
        };
        assert_eq!(chosen(found(), None), "use view");
        assert_eq!(chosen(failed(true), None), "unreadable view: why");
        assert_eq!(chosen(failed(false), None), "unreadable view: why");
        assert_eq!(
            chosen(SecretRead::Absent, Some(found())),
            "use istio-reader"
        );
        assert_eq!(
            chosen(SecretRead::Absent, Some(SecretRead::Absent)),
            "none None"
        );
        // Refused: no view credentials, and why the Istio remote secret was not read.
        assert_eq!(
            chosen(SecretRead::Absent, Some(failed(true))),
            r#"none Some("why")"#
        );
        // Not answered: it may well be there.
        assert_eq!(
            chosen(SecretRead::Absent, Some(failed(false))),
            "unreadable istio-reader: why"
        );
    }

    /// A caller who may not read Secrets in kubectl-mesh was told the cluster had no view
    /// credentials, and to attach it with --services-view.
    #[tokio::test]
    async fn a_secret_that_cannot_be_read_is_not_absent() {
        let east = cluster("east", "https://10.0.0.2:6443", "2026-01-01T00:00:00Z");
        let timeout = Duration::from_secs(5);
        let forbidden = primary_answering(http::StatusCode::FORBIDDEN, "Forbidden");
        match credentials(&forbidden, &east, timeout).await {
            Credentials::Unreadable { source, error } => {
                assert_eq!(source, Source::View);
                assert!(
                    error.starts_with(
                        "cannot read Secret kubectl-mesh/cluster-east-view: secrets is forbidden"
                    ),
                    "{error}"
                );
            }
            Credentials::None => panic!("a forbidden Secret read as absent"),
            Credentials::Unusable { error, .. } => panic!("said unusable: {error}"),
            Credentials::Found { .. } => panic!("found"),
        }
        let absent = primary_answering(http::StatusCode::NOT_FOUND, "NotFound");
        assert!(matches!(
            credentials(&absent, &east, timeout).await,
            Credentials::None
        ));
    }
}
