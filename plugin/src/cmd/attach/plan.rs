//! The plan: what preflight found out, and everything the steps and the dry run read.

use std::time::Duration;

use kube::{Client, config::Kubeconfig};
use mesh_core::{
    cluster::{MeshCluster, NamespaceScope},
    labels::SyncRule,
};

use crate::{
    access::Target,
    preview::Preview,
    remote_setup::{Guard, ReaderRole},
    render::Manifest,
};

/// What preflight found out: everything the steps need.
pub(super) struct Plan {
    pub(super) name: String,
    pub(super) primary: Client,
    pub(super) remote: Client,
    pub(super) remote_target: Target,
    /// The remote's kubeconfig, reduced to the chosen context (for the stored one).
    pub(super) remote_kc: Kubeconfig,
    /// The fingerprint of the CA the stored kubeconfigs trust, recorded in the MeshCluster
    /// ([`mesh_core::recorded`]).
    pub(super) ca_fingerprint: Option<String>,
    /// The name the stored kubeconfigs check the server's certificate against, recorded too.
    pub(super) tls_server_name: Option<String>,
    pub(super) remote_context: String,
    pub(super) cluster_id: String,
    /// The primary's id (UID of its kube-system), recorded on every remote object.
    pub(super) primary_id: String,
    /// `Some` when the remote holds this cluster's objects from another primary, and --force
    /// takes them over: that primary's tokens are deleted, what this run writes is recorded
    /// for this one, and the rest of that primary's goes. That rest, the leftovers: the other
    /// primary's objects of this cluster that this run does not write (an identity not asked
    /// for, the token renewal rights, the guard with `--remote-guard=off`), in the order they
    /// are deleted: none is left granting what this run's flags do not.
    pub(super) takeover: Option<Vec<Manifest>>,
    /// The installed sync rule: what the guard and the sync scope cover.
    pub(super) rule: SyncRule,
    /// That rule within the cluster's `scope`: the namespaces the sync account may write.
    pub(super) scoped: SyncRule,
    pub(super) guard: Guard,
    pub(super) existing: Option<MeshCluster>,
    pub(super) remote_namespace: NamespaceState,
    pub(super) istio: Option<IstioPlan>,
    /// Whether the view identity is written (see [`ViewPlan`]).
    pub(super) view: ViewPlan,
    /// Which of the remote's namespaces kubectl-mesh may write.
    pub(super) scope: NamespaceScope,
    /// What the first sync will change on the remote (and what is adopted before it).
    pub(super) preview: Preview,
    /// `--token-ttl`: a time-bound sync token instead of a long-lived one.
    pub(super) token_ttl: Option<Duration>,
    /// What preflight could not tell, said once it passed (a refusal is one line).
    pub(super) warnings: Vec<String>,
}

/// The read-only view identity (`--services-view`); also whether istiod's reader is
/// (`--istio-remote-secret`, see [`IstioPlan::kept`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ViewPlan {
    /// Not asked for, and not there.
    None,
    /// Asked for with --services-view.
    Asked,
    /// Not asked for, but an earlier attach of this cluster created it: a re-run keeps it
    /// (and refreshes it) rather than silently revoke what someone asked for before; detach
    /// removes it.
    Kept,
}

impl ViewPlan {
    pub(super) fn wanted(self) -> bool {
        self != Self::None
    }

    /// What attach tells the user about the view identity of cluster `name`, if anything.
    pub(super) fn notice(self, name: &str) -> Option<String> {
        (self == Self::Kept).then(|| {
            format!(
                "{name}: view identity kept (attached with --services-view before; \
                 `kubectl mesh detach {name}` removes it)"
            )
        })
    }
}

/// With --istio-remote-secret: whether istio-system exists on the primary, and the ClusterRole
/// istiod's reader account gets on the remote.
pub(super) struct IstioPlan {
    pub(super) namespace_exists: bool,
    pub(super) reader_role: ReaderRole,
    /// Not asked for, but an earlier attach stored the Istio remote secret: a re-run keeps
    /// istiod's reader and rewrites the secret, as it does the view identity's, so that istiod
    /// follows a new server or CA of the remote.
    pub(super) kept: bool,
}

impl IstioPlan {
    /// What attach tells the user about istiod's reader of cluster `name`, if anything.
    pub(super) fn notice(&self, name: &str) -> Option<String> {
        self.kept.then(|| {
            format!(
                "{name}: Istio remote secret kept and refreshed (attached with \
                 --istio-remote-secret before; `kubectl mesh detach {name}` removes it)"
            )
        })
    }
}

/// The mesh namespace on the remote, before attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NamespaceState {
    /// Absent: attach creates it.
    Absent,
    /// Being deleted (a detach or rollback a moment ago): attach waits, then creates it.
    Terminating,
    /// Created by an earlier attach of this cluster.
    Ours,
    /// Created by someone else: used as is, never labelled or deleted.
    Foreign,
}

impl NamespaceState {
    pub(super) fn created_by_attach(self) -> bool {
        !matches!(self, Self::Foreign)
    }
}
