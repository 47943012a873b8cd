//! The webhook's identity on the primary and its rights: its ServiceAccount, what it may do
//! cluster-wide, in the mesh namespace and, for its Events, in [`EVENTS_NAMESPACE`].

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use mesh_core::MESH_NAMESPACE;

use super::{
    CLUSTER_ROLE, EVENTS_NAMESPACE, EVENTS_ROLE, Manifest, Result, WEBHOOK, meta, strings,
};

/// The webhook's ServiceAccount.
pub fn service_account() -> ServiceAccount {
    ServiceAccount {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        ..Default::default()
    }
}

/// An RBAC rule of `verbs` on `resources` of API `groups`.
pub(crate) fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// What the webhook may do cluster-wide, and no more than its code does: read namespaces (it
/// changes them only through its admission answers), read MeshClusters and patch their status.
/// Its Events are [`events_role`]'s.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(CLUSTER_ROLE, None, Some(WEBHOOK)),
        rules: Some(vec![
            rule(&[""], &["namespaces"], &["get", "list", "watch"]),
            rule(
                &[mesh_core::GROUP],
                &["meshclusters"],
                &["get", "list", "watch"],
            ),
            rule(&[mesh_core::GROUP], &["meshclusters/status"], &["patch"]),
        ]),
        ..Default::default()
    }
}

/// A reference to the RBAC `kind` (Role, ClusterRole) named `name`.
pub(crate) fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

/// The ServiceAccount `name` of [`MESH_NAMESPACE`], as a binding's subject.
pub(crate) fn mesh_service_account(name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: name.to_owned(),
        namespace: Some(MESH_NAMESPACE.to_owned()),
        ..Default::default()
    }
}

/// Binds [`cluster_role`] to the webhook's ServiceAccount.
pub fn cluster_role_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(CLUSTER_ROLE, None, Some(WEBHOOK)),
        role_ref: role_ref("ClusterRole", CLUSTER_ROLE),
        subjects: Some(vec![mesh_service_account(WEBHOOK)]),
    }
}

/// What the webhook may do in the mesh namespace only: read the kubeconfig Secrets of
/// attached clusters (never Secrets elsewhere) and hold its leader-election Lease.
pub fn role() -> Role {
    Role {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        rules: Some(vec![
            // update: the leader writes renewed time-bound tokens into the stored kubeconfigs.
            rule(&[""], &["secrets"], &["get", "list", "watch", "update"]),
            // Its own Lease only; a create cannot be narrowed by name.
            rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            PolicyRule {
                resource_names: Some(vec![WEBHOOK.to_owned()]),
                ..rule(&["coordination.k8s.io"], &["leases"], &["get", "update"])
            },
        ]),
    }
}

/// Binds [`role`] to the webhook's ServiceAccount.
pub fn role_binding() -> RoleBinding {
    RoleBinding {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        role_ref: role_ref("Role", WEBHOOK),
        subjects: Some(vec![mesh_service_account(WEBHOOK)]),
    }
}

/// The webhook's Events, in [`EVENTS_NAMESPACE`] only, of the API kube's Recorder writes:
/// create, and patch for a repeat (it reads none). Not cluster-wide: a stolen token could
/// otherwise forge Events in any namespace, kube-system's included.
pub fn events_role() -> Role {
    Role {
        metadata: meta(EVENTS_ROLE, Some(EVENTS_NAMESPACE), Some(WEBHOOK)),
        rules: Some(vec![rule(
            &["events.k8s.io"],
            &["events"],
            &["create", "patch"],
        )]),
    }
}

/// Binds [`events_role`] to the webhook's ServiceAccount.
pub fn events_role_binding() -> RoleBinding {
    RoleBinding {
        metadata: meta(EVENTS_ROLE, Some(EVENTS_NAMESPACE), Some(WEBHOOK)),
        role_ref: role_ref("Role", EVENTS_ROLE),
        subjects: Some(vec![mesh_service_account(WEBHOOK)]),
    }
}

/// The webhook's identity and rights, in the order install applies them: what is bound before
/// its binding.
pub(super) fn manifests() -> Result<Vec<Manifest>> {
    Ok(vec![
        Manifest::new(&service_account())?,
        Manifest::new(&cluster_role())?,
        Manifest::new(&cluster_role_binding())?,
        Manifest::new(&role())?,
        Manifest::new(&role_binding())?,
        Manifest::new(&events_role())?,
        Manifest::new(&events_role_binding())?,
    ])
}
