//! Read-only views of a remote's workloads, with credentials kept apart from the sync
//! identity's: the view identity `attach --services-view` creates ([`setup::VIEW_ACCOUNT`],
//! its kubeconfig in Secret `cluster-<name>-view` on the primary) or, for a cluster without
//! one, istiod's reader from `attach --istio-remote-secret`, which may list pods too. The
//! stored sync token may not read workloads, and must not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

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
    /// Neither a view Secret nor an Istio remote secret.
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

/// Finds `cluster`'s view credentials on the primary: its view Secret, else its Istio remote
/// secret. Only a Secret that does not exist counts as absent: one the caller may not read (or
/// a primary that does not answer) is unusable, with why, as is one that is not what attach
/// recorded in `cluster` ([`mesh_core::recorded`]), and nothing is sent with it.
pub async fn credentials(
    primary: &Client,
    cluster: &MeshCluster,
    timeout: Duration,
) -> Credentials {
    credentials_with(primary, cluster, &mesh_state::remote_options(timeout)).await
}

/// [`credentials`] with a client of these timeouts (a watch needs a read timeout longer than
/// its quiet periods).
pub async fn credentials_with(
    primary: &Client,
    mc: &MeshCluster,
    options: &remote::RemoteOptions,
) -> Credentials {
    let name = mc.name_any();
    let cluster = name.as_str();
    // A refusal is not absence: "no view credentials" would send the caller to attach again
    // when what is missing is their right to read Secrets on the primary.
    let read = |source: Source, namespace: &'static str, name: String| {
        let api = Api::<Secret>::namespaced(primary.clone(), namespace);
        async move {
            match api.get_opt(&name).await {
                Ok(secret) => Ok(secret.map(|secret| (source, secret))),
                Err(e) => Err(Credentials::Unreadable {
                    source,
                    error: Error::kube(format!("cannot read Secret {namespace}/{name}"))(e).line(),
                }),
            }
        }
    };
    let view_secret = setup::view_secret_name(cluster);
    let found = match read(Source::View, MESH_NAMESPACE, view_secret).await {
        Ok(None) => {
            let istio_secret = setup::istio_secret_name(cluster);
            read(Source::IstioReader, setup::ISTIO_NAMESPACE, istio_secret).await
        }
        view => view,
    };
    let (source, secret) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return Credentials::None,
        Err(unreadable) => return unreadable,
    };
    let key = match source {
        Source::View => KUBECONFIG_KEY.to_owned(),
        // istiod reads the key named after the cluster.
        Source::IstioReader => cluster.to_owned(),
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
    use mesh_core::fake_apiserver::{json_response, status};

    use super::*;
    use crate::mesh_state::fixtures::cluster;

    /// A primary that answers every request with `code` and `reason`.
    fn primary_answering(code: http::StatusCode, reason: &'static str) -> Client {
        let server = tower::service_fn(move |_: http::Request<kube::client::Body>| async move {
            let (code, body) = status(
                code,
                reason,
                "secrets is forbidden: User \"dev\" cannot get",
            );
            Ok::<_, std::convert::Infallible>(json_response(code, &body))
        });
        Client::new(server, "default")
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
