//! What `status` reads of each remote: its namespaces and injectors with the stored
//! credentials, its pods with the view credentials.

use std::time::Duration;

use kube::{Client, ResourceExt};
use mesh_core::cluster::MeshCluster;

use super::{InjectorsUnread, PodsRead, RemoteView, Unread};
use crate::{mesh_state, view};

/// Reads `cluster`'s namespaces and injectors with its stored credentials, under `timeout`;
/// with `with_pods`, its pods with its view credentials.
pub(super) async fn read_view(
    primary: &Client,
    cluster: &MeshCluster,
    timeout: Duration,
    with_pods: bool,
) -> RemoteView {
    let pods = async {
        if !with_pods {
            return PodsRead::NotAsked;
        }
        let found = view::lookup(primary, cluster, &mesh_state::remote_options(timeout)).await;
        match found.credentials {
            view::Credentials::None => PodsRead::NoCredentials {
                istio_unread: found.istio_unread,
            },
            view::Credentials::Unusable { source, error }
            | view::Credentials::Unreadable { source, error } => PodsRead::Failed { source, error },
            view::Credentials::Found { source, client } => match view::pods(&client).await {
                Ok(pods) => PodsRead::Read { source, pods },
                Err(e) => PodsRead::Failed {
                    source,
                    error: e.to_string(),
                },
            },
        }
    };
    // Each call is bounded by `timeout`, not the whole read: see `mesh_state::list_all`.
    let read = async {
        let client = mesh_state::remote_client(primary, cluster, timeout).await?;
        let (namespaces, injectors) = tokio::join!(
            mesh_state::remote_namespaces(&client),
            mesh_state::remote_injectors(&client),
        );
        // Unknown, not an error: the namespaces still tell drift.
        let injectors = injectors.map_err(|e| InjectorsUnread::of(&e));
        Ok::<_, mesh_state::RemoteError>((namespaces?, injectors))
    };
    let (read, pods) = tokio::join!(read, pods);
    let (namespaces, injectors) = match read {
        Ok((namespaces, injectors)) => (Ok(namespaces), Some(injectors)),
        Err(e) => (Err(Unread::of(&e)), None),
    };
    RemoteView {
        name: cluster.name_any(),
        scope: cluster.spec.scope.clone(),
        detaching: mesh_state::is_being_detached(cluster),
        namespaces,
        injectors,
        pods,
    }
}
