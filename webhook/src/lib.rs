//! Shared library of kubectl-mesh: the sync rule, the `MeshCluster` resource and the
//! machinery of the `mesh-webhook` process. The `kubectl-mesh` plugin links it so that the CLI
//! and the webhook apply exactly the same rule.
#![forbid(unsafe_code)]

/// [`GROUP`] as a literal, so that `concat!` can build constant label and annotation keys
/// from it (a `const &str` cannot be concatenated at compile time). Defined before the
/// modules so that they can use it.
macro_rules! group_literal {
    () => {
        "kubectl-mesh.io"
    };
}

pub mod admission;
pub mod args;
pub mod cluster;
pub mod in_flight;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod propagate;
pub mod reconcile;
pub mod remote;
mod remote_watch;
pub mod server;
pub mod sync;
pub mod tls;

/// Namespace on the primary that holds the webhook, its serving certificate and the
/// kubeconfig Secrets of attached clusters.
pub const MESH_NAMESPACE: &str = "kubectl-mesh";

/// Value of `app.kubernetes.io/managed-by` on everything kubectl-mesh creates, on both sides.
pub const MANAGER: &str = "kubectl-mesh";

/// API group of kubectl-mesh's own resources and prefix of its labels and annotations.
pub const GROUP: &str = group_literal!();
