//! What the `kubectl-mesh` plugin and the `mesh-webhook` process must agree on, without a
//! server stack: the sync rule, the `MeshCluster` resource, the rule of stored kubeconfigs,
//! clients of attached clusters built only through that rule, the engine that compares and
//! writes remote labels, whether Istio injects where the labels ask, and the keys both sides
//! read and write.
#![forbid(unsafe_code)]

/// [`GROUP`] as a literal, so that `concat!` can build constant label and annotation keys
/// from it (a `const &str` cannot be concatenated at compile time). Defined before the
/// modules so that they can use it.
macro_rules! group_literal {
    () => {
        "kubectl-mesh.io"
    };
}

pub mod call_limits;
pub mod cluster;
pub mod duration;
pub mod failure;
#[cfg(any(test, feature = "testing"))]
pub mod fake_apiserver;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod injection;
pub mod kubeconfig;
pub mod labels;
pub mod list;
pub mod printable;
pub mod recorded;
pub mod remote;
pub mod retry_after;
pub mod sync;
pub mod token;
pub mod write;

/// Namespace on the primary that holds the webhook, its serving certificate and the
/// kubeconfig Secrets of attached clusters.
pub const MESH_NAMESPACE: &str = "kubectl-mesh";

/// Value of `app.kubernetes.io/managed-by` on everything kubectl-mesh creates, on both sides.
pub const MANAGER: &str = "kubectl-mesh";

/// API group of kubectl-mesh's own resources and prefix of its labels and annotations.
pub const GROUP: &str = group_literal!();

/// Field manager of every label write on a remote, by the webhook, the reconciler or the CLI.
pub const FIELD_MANAGER: &str = MANAGER;

/// Environment variable of `mesh-webhook --managed-labels`: how the Deployment that
/// `kubectl mesh install` renders passes the installed rule (comma-separated).
pub const MANAGED_LABELS_ENV: &str = "MESH_WEBHOOK_MANAGED_LABELS";

/// Environment variable of `mesh-webhook --excluded-namespaces` (see [`MANAGED_LABELS_ENV`]).
pub const EXCLUDED_NAMESPACES_ENV: &str = "MESH_WEBHOOK_EXCLUDED_NAMESPACES";
