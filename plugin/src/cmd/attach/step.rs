//! The steps of an attach: their order, their names (for `--fail-after` in tests and for
//! messages), and which of them create something a rollback deletes.

/// The steps of an attach, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The mesh namespace on the remote (created only when absent).
    RemoteNamespace,
    /// The sync ServiceAccount.
    ServiceAccount,
    /// Its ClusterRole.
    ClusterRole,
    /// Its ClusterRoleBinding.
    ClusterRoleBinding,
    /// The policy confining it to the managed labels (before its token exists).
    SyncScopePolicy,
    /// That policy's binding.
    SyncScopeBinding,
    /// Its token Secret.
    TokenSecret,
    /// Waiting for kube-controller-manager to fill the token.
    Token,
    /// Waiting until the remote enforces the sync scope on that token (before it is stored).
    SyncScopeEnforced,
    /// The guard's ValidatingAdmissionPolicy.
    GuardPolicy,
    /// The guard's binding.
    GuardBinding,
    /// With --istio-remote-secret: istiod's reader account and its token, on the remote.
    IstioReader,
    /// With --services-view: the read-only view account and its token, on the remote.
    ViewIdentity,
    /// The stored kubeconfig on the primary.
    PrimarySecret,
    /// With --istio-remote-secret: the Istio remote secret on the primary.
    IstioRemoteSecret,
    /// With --services-view: the view identity's kubeconfig on the primary.
    ViewSecret,
    /// With --adopt-remote-labels: the remote's managed labels copied to the primary.
    AdoptLabels,
    /// The MeshCluster.
    MeshCluster,
    /// The primary's Secrets made owned by the MeshCluster.
    OwnerReferences,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Self; 19] = [
        Self::RemoteNamespace,
        Self::ServiceAccount,
        Self::ClusterRole,
        Self::ClusterRoleBinding,
        Self::SyncScopePolicy,
        Self::SyncScopeBinding,
        Self::TokenSecret,
        Self::Token,
        Self::SyncScopeEnforced,
        Self::GuardPolicy,
        Self::GuardBinding,
        Self::IstioReader,
        Self::ViewIdentity,
        Self::PrimarySecret,
        Self::IstioRemoteSecret,
        Self::ViewSecret,
        Self::AdoptLabels,
        Self::MeshCluster,
        Self::OwnerReferences,
    ];

    /// The name of the step in progress lines and errors (and in the test hooks).
    pub fn name(self) -> &'static str {
        match self {
            Self::RemoteNamespace => "remote-namespace",
            Self::ServiceAccount => "service-account",
            Self::ClusterRole => "cluster-role",
            Self::ClusterRoleBinding => "cluster-role-binding",
            Self::SyncScopePolicy => "sync-scope-policy",
            Self::SyncScopeBinding => "sync-scope-binding",
            Self::TokenSecret => "token-secret",
            Self::Token => "token",
            Self::SyncScopeEnforced => "sync-scope-enforced",
            Self::GuardPolicy => "guard-policy",
            Self::GuardBinding => "guard-binding",
            Self::IstioReader => "istio-reader",
            Self::ViewIdentity => "view-identity",
            Self::PrimarySecret => "primary-secret",
            Self::IstioRemoteSecret => "istio-remote-secret",
            Self::ViewSecret => "view-secret",
            Self::AdoptLabels => "adopt-labels",
            Self::MeshCluster => "mesh-cluster",
            Self::OwnerReferences => "owner-references",
        }
    }

    /// The step named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the step may create objects: what an interruption during it may leave
    /// behind, and so what `KUBECTL_MESH_STALL_IN` can name. Waiting for the token and
    /// making the Secrets owned only read or update.
    pub fn creates(self) -> bool {
        match self {
            // Adopting labels writes labels on existing namespaces; the rollback puts them
            // back as they were.
            Self::Token | Self::SyncScopeEnforced | Self::AdoptLabels | Self::OwnerReferences => {
                false
            }
            Self::RemoteNamespace
            | Self::ServiceAccount
            | Self::ClusterRole
            | Self::ClusterRoleBinding
            | Self::SyncScopePolicy
            | Self::SyncScopeBinding
            | Self::TokenSecret
            | Self::GuardPolicy
            | Self::GuardBinding
            | Self::IstioReader
            | Self::ViewIdentity
            | Self::PrimarySecret
            | Self::IstioRemoteSecret
            | Self::ViewSecret
            | Self::MeshCluster => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.name()), Some(step));
        }
        assert_eq!(Step::parse("nope"), None);
    }
}
