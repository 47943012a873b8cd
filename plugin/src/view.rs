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
}

/// The command that gives `cluster` a view identity.
pub fn enable_command(cluster: &str) -> String {
    format!("kubectl mesh attach <kubeconfig> --name {cluster} --services-view")
}

/// Finds `cluster`'s view credentials on the primary: its view Secret, else its Istio remote
/// secret. A Secret the caller may not read counts as absent; one that is not what attach
/// recorded in `cluster` ([`mesh_core::recorded`]) is unusable, and nothing is sent with it.
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
    let read = |namespace: &str, name: String| {
        let api = Api::<Secret>::namespaced(primary.clone(), namespace);
        async move { api.get_opt(&name).await.ok().flatten() }
    };
    let found = match read(MESH_NAMESPACE, setup::view_secret_name(cluster)).await {
        Some(secret) => Some((Source::View, secret, KUBECONFIG_KEY.to_owned())),
        None => read(setup::ISTIO_NAMESPACE, setup::istio_secret_name(cluster))
            .await
            // istiod reads the key named after the cluster.
            .map(|secret| (Source::IstioReader, secret, cluster.to_owned())),
    };
    let Some((source, secret, key)) = found else {
        return Credentials::None;
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
