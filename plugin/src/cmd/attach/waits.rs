//! What attach waits for: a namespace to go, and with `--wait` the first sync (each through
//! [`poll::until`]); the remote's token is [`crate::tokens`]'s.

use std::ops::ControlFlow::{Break, Continue};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Client};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{CONDITION_SYNCED, MeshCluster, MeshClusterStatus},
    printable,
};

use crate::poll::{self, Late};
use crate::{Error, Result};

/// Waits until the namespace `name` is gone.
pub(crate) async fn wait_namespace_gone(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let look = async || {
        let found = api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("cannot read Namespace {name}")))?;
        Ok(if found.is_none() {
            Break(())
        } else {
            Continue(())
        })
    };
    poll::until(timeout, Duration::from_millis(250), look, |()| Late {
        what: format!("Namespace {name} to be deleted"),
        hint: format!(
            "`kubectl get ns {name} -o yaml` shows what holds it (its conditions); re-run once \
             it is gone, or with a longer --timeout"
        ),
    })
    .await
}

/// Waits until the reconciler reports the cluster Synced with the spec and the credentials
/// this run wrote.
pub(super) async fn wait_synced(
    primary: &Client,
    name: &str,
    timeout: Duration,
) -> Result<MeshCluster> {
    let clusters: Api<MeshCluster> = Api::all(primary.clone());
    let secrets: Api<Secret> = Api::namespaced(primary.clone(), MESH_NAMESPACE);
    let look = async || {
        let mc = clusters
            .get(name)
            .await
            .map_err(Error::kube(format!("cannot read MeshCluster {name}")))?;
        let stored = secrets
            .get_opt(&mc.spec.secret_name)
            .await
            .map_err(Error::kube(format!(
                "cannot read Secret {MESH_NAMESPACE}/{}",
                mc.spec.secret_name
            )))?;
        let stored_version = stored.and_then(|s| s.metadata.resource_version);
        Ok(if synced_now(&mc, stored_version.as_deref()) {
            Break(mc)
        } else {
            Continue(mc.status.unwrap_or_default())
        })
    };
    poll::until(timeout, Duration::from_millis(500), look, |status| {
        let last = status
            .condition(CONDITION_SYNCED)
            .map(|c| format!(" (last: {} {}: {})", c.status, c.reason, c.message))
            .unwrap_or_else(|| " (no status was ever written: no reconciler runs)".into());
        Late {
            what: format!("the first sync of {name}, which is attached{last}"),
            hint: format!(
                "check that mesh-webhook runs (`kubectl -n {MESH_NAMESPACE} get pods`), or sync \
                 once from here: `kubectl mesh sync --cluster {name}`"
            ),
        }
    })
    .await
}

/// Whether the cluster's last sync used its current spec and the stored credentials of
/// `stored_version`: on a re-run, the status still says `Synced` of the sync before it.
fn synced_now(mc: &MeshCluster, stored_version: Option<&str>) -> bool {
    let Some(status) = &mc.status else {
        return false;
    };
    let spec_seen = match (status.observed_generation, mc.metadata.generation) {
        (Some(observed), Some(current)) => observed >= current,
        (None, Some(_)) => false,
        (_, None) => true,
    };
    status.is_true(CONDITION_SYNCED)
        && spec_seen
        && status.observed_credentials.as_deref() == stored_version
}

/// One line about a sync's result, from the MeshCluster's status.
pub(super) fn sync_summary(name: &str, status: &MeshClusterStatus) -> String {
    let mut line = format!(
        "{name} in sync: {} namespaces carry the primary's labels, {} drifted and corrected",
        status.namespaces_in_sync, status.namespaces_drifted
    );
    match status.missing_count() {
        0 => line.push_str(", none missing"),
        count => line.push_str(&format!(
            ", missing on the remote: {}",
            printable::first_few(&status.missing_namespaces, count, printable::FEW)
        )),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh_state::fixtures::{cluster, condition};

    /// `east` at generation 2, Synced by a sync of `observed` generation with `credentials`.
    fn synced_east(observed: Option<i64>, credentials: Option<&str>) -> MeshCluster {
        let mut east = cluster("east", "https://10.0.0.1:6443", "2026-12-01T00:00:00Z");
        east.metadata.generation = Some(2);
        let status = east.status.get_or_insert_with(Default::default);
        status.conditions = vec![condition(CONDITION_SYNCED, "True")];
        status.observed_generation = observed;
        status.observed_credentials = credentials.map(str::to_owned);
        east
    }

    #[test]
    fn a_re_run_waits_for_a_sync_of_its_own_spec_and_credentials() {
        assert!(synced_now(&synced_east(Some(2), Some("7")), Some("7")));
        // The sync before the re-run: an older spec, or the credentials it replaced.
        assert!(!synced_now(&synced_east(Some(1), Some("7")), Some("7")));
        assert!(!synced_now(&synced_east(None, Some("7")), Some("7")));
        assert!(!synced_now(&synced_east(Some(2), Some("6")), Some("7")));
        // Never synced.
        let mut east = synced_east(Some(2), Some("7"));
        east.status = None;
        assert!(!synced_now(&east, Some("7")));
    }

    #[test]
    fn summary_names_missing_namespaces() {
        let status = MeshClusterStatus {
            namespaces_in_sync: 3,
            namespaces_drifted: 1,
            missing_namespaces: vec!["shop".into()],
            ..Default::default()
        };
        assert_eq!(
            sync_summary("east", &status),
            "east in sync: 3 namespaces carry the primary's labels, 1 drifted and corrected, \
             missing on the remote: shop"
        );
        let status = MeshClusterStatus {
            missing_namespaces: (0..100).map(|i| format!("ns-{i:03}")).collect(),
            namespaces_missing: 20_000,
            ..Default::default()
        };
        assert!(
            sync_summary("east", &status).ends_with("ns-003, ns-004 and 19995 more"),
            "{}",
            sync_summary("east", &status)
        );
    }
}
