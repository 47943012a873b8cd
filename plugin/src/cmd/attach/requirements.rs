//! What attach requires of each cluster before it creates anything: the rights of the caller
//! on both sides, and on the remote the admission policy API the sync scope and guard use.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use mesh_core::{GROUP, MESH_NAMESPACE};

use crate::{
    Error, Result,
    access::{Need, Target},
    remote_setup::{self as setup, ReaderRole},
    render,
};

/// The group-version of the admission policies the sync scope and the guard are.
pub(super) const ADMISSION_POLICY_VERSION: &str = "admissionregistration.k8s.io/v1";

/// The sync scope and the guard are ValidatingAdmissionPolicies and their bindings, served
/// as [`ADMISSION_POLICY_VERSION`] from Kubernetes 1.30 on. `served` is what the remote's
/// discovery lists of that group-version (`None`: it serves none of it). Rights checks pass
/// for resources a cluster does not serve, and reads of them find nothing: without this, an
/// older remote would get its first objects before the sync scope failed to be written.
pub(super) fn refuse_without_admission_policies(
    target: &Target,
    served: Option<&APIResourceList>,
) -> Result<()> {
    let serves = |resource: &str| {
        served.is_some_and(|list| list.resources.iter().any(|r| r.name == resource))
    };
    if setup::GUARD_RESOURCES.into_iter().all(serves) {
        return Ok(());
    }
    Err(Error::Refused {
        what: format!(
            "{} does not serve ValidatingAdmissionPolicy ({ADMISSION_POLICY_VERSION}, \
             Kubernetes 1.30 or later)",
            target.label
        ),
        hint: "upgrade it, then re-run attach".into(),
    })
}

/// The rights attach needs on the objects it writes: `update` for a rollback, which puts back
/// the earlier content of what a re-run changed.
const RW: &[&str] = &["get", "create", "patch", "update", "delete"];

/// What attach needs on the remote; `istio`: the ClusterRole istiod's reader gets there, with
/// --istio-remote-secret.
pub(super) fn remote_needs(view: bool, token_ttl: bool, istio: Option<&ReaderRole>) -> Vec<Need> {
    let mut needs = vec![
        // get/list/watch/patch too: RBAC lets a user grant only rights they hold.
        Need::cluster(
            "",
            "namespaces",
            &["get", "list", "watch", "patch", "create", "delete"],
        ),
        Need::namespaced("", "serviceaccounts", MESH_NAMESPACE, RW),
        Need::namespaced("", "secrets", MESH_NAMESPACE, RW),
        Need::cluster("rbac.authorization.k8s.io", "clusterroles", RW),
        Need::cluster("rbac.authorization.k8s.io", "clusterrolebindings", RW),
    ];
    // Admission policies: the sync scope is always written, the guard unless it is off (and
    // the sync account's ClusterRole grants `get` on them, which RBAC lets only a holder do).
    for resource in setup::GUARD_RESOURCES {
        needs.push(Need::cluster(setup::ADMISSION_GROUP, resource, RW));
    }
    // Granted to the sync account so that injectors can be read: again only by a holder.
    needs.extend(setup::injector_read_rights());
    if view {
        // Granted to the view account: again only by a holder.
        needs.extend(setup::view_rights());
    }
    if token_ttl {
        // The renewal Role and its binding, and the right it grants, used by attach too.
        needs.push(Need::namespaced(
            "rbac.authorization.k8s.io",
            "roles",
            MESH_NAMESPACE,
            RW,
        ));
        needs.push(Need::namespaced(
            "rbac.authorization.k8s.io",
            "rolebindings",
            MESH_NAMESPACE,
            RW,
        ));
        needs.push(Need::token_request());
    }
    match istio {
        // Its ClusterRole, and the binding to it, are granted only by a holder of its rules.
        Some(ReaderRole::Own) => needs.extend(setup::istio_reader_rights()),
        // Binding to a ClusterRole attach did not write: `bind` on it (RBAC's other way,
        // holding all of Istio's rules, would make the answer depend on its Istio version).
        Some(ReaderRole::Istio) => needs.push(
            Need::cluster("rbac.authorization.k8s.io", "clusterroles", &["bind"])
                .named(setup::ISTIO_OWN_READER_ROLE),
        ),
        None => {}
    }
    needs
}

pub(super) fn primary_needs(istio: bool, adopt: bool) -> Vec<Need> {
    // Listed for the first sync's preview; patched to adopt the remote's labels.
    let namespaces: &[&str] = if adopt {
        &["get", "list", "patch"]
    } else {
        &["get", "list"]
    };
    let mut needs = vec![
        Need::cluster("", "namespaces", namespaces),
        Need::namespaced("", "secrets", MESH_NAMESPACE, RW),
        Need::cluster(
            GROUP,
            "meshclusters",
            &["get", "list", "create", "patch", "delete"],
        ),
        // It records the installed sync rule, which the guard and the sync scope follow.
        Need::cluster(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            &["get"],
        )
        .named(render::WEBHOOK_CONFIGURATION),
    ];
    if istio {
        needs.push(Need::namespaced("", "secrets", setup::ISTIO_NAMESPACE, RW));
    }
    needs
}
