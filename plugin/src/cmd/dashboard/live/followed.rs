//! The tasks that follow one remote for the dashboard: whether it answers (and its stored
//! token's expiry), its namespaces with the stored credentials, and its workloads with the
//! view credentials.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use mesh_core::{MESH_NAMESPACE, cluster::MeshCluster, remote};
use tokio::task::JoinHandle;

use super::{
    LIST_PAGE, Live, Shared, ViewState, WATCH_CLIENT, Which, follow, retry_after, watch_workloads,
};
use crate::cmd::dashboard::reduce::{Change, Staged, note_failure, reduce_namespace};
use crate::cmd::list::expiry_of;
use crate::cmd::services::wire;
use crate::cmd::status::Unread;
use crate::mesh_state::{self, RemoteError};
use crate::view;

/// How often each remote is asked whether it answers, and how long it has to answer.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Every this many probes (a minute), the stored token's expiry is read again.
const EXPIRY_EVERY_PROBES: u64 = 30;

/// What a task that follows one remote works with.
#[derive(Clone)]
struct Followed {
    primary: Client,
    shared: Arc<Shared>,
    cluster: MeshCluster,
    which: Which,
}

/// The tasks that follow one remote: its reachability, the expiry of its stored token, its
/// namespaces, and, with view credentials, its workloads.
pub(super) fn watch_remote(
    primary: &Client,
    shared: &Arc<Shared>,
    cluster: &MeshCluster,
    which: &Which,
) -> Vec<JoinHandle<()>> {
    let remote = Followed {
        primary: primary.clone(),
        shared: shared.clone(),
        cluster: cluster.clone(),
        which: which.clone(),
    };
    vec![
        tokio::spawn(probe_remote(remote.clone())),
        tokio::spawn(read_remote_workloads(remote.clone())),
        tokio::spawn(follow_remote_namespaces(remote)),
    ]
}

/// Whether it answers now: a watch on a frozen server would wait for ever.
async fn probe_remote(followed: Followed) {
    let secrets: Api<Secret> = Api::namespaced(followed.primary.clone(), MESH_NAMESPACE);
    for round in 0u64.. {
        // The stored token changes when it is rotated: its expiry is read again now and then.
        if round % EXPIRY_EVERY_PROBES == 0 {
            let secret = secrets
                .get_opt(&followed.cluster.spec.secret_name)
                .await
                .ok()
                .flatten();
            let expiry = expiry_of(secret.as_ref());
            followed.shared.update_if(|live| {
                let r = live.remote(&followed.which);
                r.is_some_and(|r| r.expiry.replace(expiry) != Some(expiry))
            });
        }
        // The probe asks the one thing that also proves the server is this cluster, as
        // `status` reads it: a failure tells a remote that did not answer from one not read.
        let answer = mesh_state::remote_client(&followed.primary, &followed.cluster, PROBE_TIMEOUT);
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Unread::of(&e)),
            Err(_) => Err(Unread::of(&RemoteError::TimedOut(PROBE_TIMEOUT))),
        };
        followed.shared.update_if(|live| {
            let changed = (live.remote(&followed.which)).is_some_and(|r| r.record_probe(probe));
            if changed {
                live.matrix = None;
            }
            changed
        });
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Its workloads, with the view credentials.
async fn read_remote_workloads(followed: Followed) {
    let found = view::lookup(&followed.primary, &followed.cluster, &WATCH_CLIENT).await;
    let state = match found.credentials {
        view::Credentials::None => ViewState::NoCredentials {
            istio_unread: found.istio_unread,
        },
        view::Credentials::Unusable { error, .. } | view::Credentials::Unreadable { error, .. } => {
            ViewState::Failed(error)
        }
        view::Credentials::Found { source, client } => {
            let tasks = watch_workloads(&client, &followed.shared, Some(followed.which.clone()));
            followed
                .shared
                .update(|live| match live.remote(&followed.which) {
                    Some(r) => r.tasks.handles.extend(tasks),
                    // Detached or built again meanwhile: nothing to watch.
                    None => tasks.iter().for_each(JoinHandle::abort),
                });
            ViewState::Read(source)
        }
    };
    followed.shared.update(|live| {
        if let Some(r) = live.remote(&followed.which) {
            r.view = state;
        }
    });
}

/// Its namespaces, with the stored credentials; a client that cannot be built (the Secret
/// missing or unusable) is tried again, less and less often.
async fn follow_remote_namespaces(followed: Followed) {
    let mut failures = 0;
    let client = loop {
        match remote::client_for_cluster(
            &followed.primary,
            MESH_NAMESPACE,
            &followed.cluster,
            &WATCH_CLIENT,
        )
        .await
        {
            Ok(client) => break client,
            Err(e) => {
                let error = Unread::of(&RemoteError::from(e));
                followed.shared.update(|live| {
                    if let Some(r) = live.remote(&followed.which) {
                        r.namespaces_error = Some(error);
                    }
                    live.matrix = None;
                });
                failures += 1;
                tokio::time::sleep(retry_after(failures)).await;
            }
        }
    };
    follow(
        Api::<wire::Namespace>::all(client),
        remote::watch_config().page_size(LIST_PAGE),
        followed.shared.clone(),
        on_remote_namespaces(followed.which),
    )
    .await;
}

/// How a change of the namespaces of the remote `which` is applied: to its namespaces, and to
/// whether they can be read ([`super::RemoteLive::namespaces_error`]). They are not known
/// until listed whole ([`Staged`]).
fn on_remote_namespaces(which: Which) -> impl FnMut(&mut Live, Change<wire::Namespace>) + Send {
    let mut staged = Staged::default();
    move |live, change| {
        live.matrix = None;
        let Some(r) = live.remote(&which) else {
            return;
        };
        note_failure(&mut r.namespaces_error, &change);
        if matches!(change, Change::Failed(_)) {
            return;
        }
        staged.apply(&mut r.namespaces, change, reduce_namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{INJECTED, namespace, with_east};
    use super::*;

    /// The states of the cells of `east` in the matrix, for the namespaces `a` and `b`.
    fn cells(live: &Live) -> [serde_json::Value; 2] {
        let json: serde_json::Value = serde_json::from_slice(&live.matrix_json(100)).unwrap();
        ["a", "b"].map(|name| {
            let rows = json["namespaces"].as_array().unwrap();
            let row = rows.iter().find(|row| row["name"] == name);
            row.unwrap_or_else(|| panic!("no {name} in {json}"))["clusters"]["east"]["state"]
                .clone()
        })
    }

    /// A remote's namespaces, listed a page at a time, were shown as read from the start of
    /// the list: every namespace it had not reached yet looked missing there.
    #[test]
    fn a_remote_half_listed_is_pending_not_missing() {
        let (mut live, east) = with_east();
        let mut on = on_remote_namespaces(east);
        on(&mut live, Change::Restart);
        on(&mut live, Change::Apply(namespace("a", &INJECTED)));
        assert_eq!(cells(&live), ["pending", "pending"]);
        on(&mut live, Change::Listed);
        assert_eq!(cells(&live), ["in-sync", "missing"]);
    }
}
