//! THE sync rule (to be completed): which labels are managed and what a remote must carry.

/// Labels kubectl-mesh keeps equal between the primary and every remote, by default.
pub const DEFAULT_MANAGED_LABELS: [&str; 3] =
    ["istio-injection", "istio.io/rev", "istio.io/dataplane-mode"];

/// Namespaces never synced, by default: the cluster's own and the mesh's.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 4] =
    ["kube-system", "kube-public", "kube-node-lease", crate::MESH_NAMESPACE];
