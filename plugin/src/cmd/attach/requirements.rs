//! What attach requires of each cluster before it creates anything: the rights of the caller
//! on both sides, on the remote the admission policy API the sync scope and guard use, and a
//! name that is free (not the primary's column, not a MeshCluster being deleted).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::ResourceExt;
use mesh_core::{GROUP, MESH_NAMESPACE, cluster::MeshCluster};

use crate::{
    Error, Result,
    access::{Need, Target},
    output,
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
/// `force`: a takeover reads every object attach knows for the cluster (the token renewal Role
/// and RoleBinding among them); deleting another primary's it does not write is asked once
/// they are found ([`takeover_needs`]).
pub(super) fn remote_needs(
    view: bool,
    token_ttl: bool,
    istio: Option<&ReaderRole>,
    force: bool,
) -> Vec<Need> {
    let mut needs = vec![
        // get/list/watch/patch too: RBAC lets a user grant only rights they hold; update for
        // a rollback, as [`RW`].
        Need::cluster(
            "",
            "namespaces",
            &[
                "get", "list", "watch", "patch", "create", "update", "delete",
            ],
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
    // The renewal Role and its binding: written with --token-ttl, looked for in a takeover.
    let renewal_verbs = match (token_ttl, force) {
        (true, _) => Some(RW),
        (false, true) => Some(&["get"][..]),
        (false, false) => None,
    };
    if let Some(verbs) = renewal_verbs {
        for resource in ["roles", "rolebindings"] {
            needs.push(Need::namespaced(
                "rbac.authorization.k8s.io",
                resource,
                MESH_NAMESPACE,
                verbs,
            ));
        }
    }
    if token_ttl {
        // The right the renewal Role grants, used by attach too.
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

/// What deleting another primary's object of this cluster that a takeover does not write
/// (`kind` `name`, a binding to the ClusterRole `role_ref`) needs beyond [`remote_needs`]
/// with `force`: a rollback creates it again, and RBAC lets only a holder of a role's rules
/// create that role or a binding to it (or `bind` on it).
pub(super) fn takeover_needs(kind: &str, name: &str, role_ref: Option<&str>) -> Vec<Need> {
    let role = matches!(
        kind,
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
    );
    if !role {
        return Vec::new();
    }
    match name {
        // Deleted, and created again by a rollback.
        setup::TOKEN_RENEWAL => vec![
            Need::token_request(),
            Need::namespaced(
                "rbac.authorization.k8s.io",
                if kind == "Role" {
                    "roles"
                } else {
                    "rolebindings"
                },
                MESH_NAMESPACE,
                RW,
            ),
        ],
        setup::VIEW_ACCOUNT => setup::view_rights(),
        setup::ISTIO_READER if role_ref == Some(setup::ISTIO_OWN_READER_ROLE) => vec![
            Need::cluster("rbac.authorization.k8s.io", "clusterroles", &["bind"])
                .named(setup::ISTIO_OWN_READER_ROLE),
        ],
        setup::ISTIO_READER => setup::istio_reader_rights(),
        // The sync account's are written by every attach, never deleted.
        _ => Vec::new(),
    }
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
        // update for a rollback, as [`RW`].
        Need::cluster(
            GROUP,
            "meshclusters",
            &["get", "list", "create", "patch", "update", "delete"],
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

/// The refusal of an attach under the name of a MeshCluster being deleted: held by someone
/// else's finalizer, it would be "updated", the reconciler would leave it alone, and once it
/// goes the garbage collector would delete the Secrets this run stored (they are owned by it).
pub(super) fn being_deleted(mc: &MeshCluster) -> Error {
    let name = mc.name_any();
    let held_by = mc.finalizers().join(", ");
    Error::Refused {
        what: format!(
            "MeshCluster {name} is being deleted (held by the finalizers {held_by}); nothing was \
             changed"
        ),
        hint: format!(
            "wait until `kubectl get meshcluster {name}` finds it no more (or remove what holds \
             it), then re-run attach"
        ),
    }
}

/// A remote may not be named [`output::PRIMARY`]: `status` and `services` show the primary
/// under that name, beside one column (and JSON key) per remote. Nor may its name end in
/// `-view`: its stored kubeconfig's Secret would be named as the view credentials of another
/// cluster ([`setup::view_secret_name`]), which that one could then never have. Checked once
/// the remote is known not to be the primary itself, which is the better answer when its
/// context is named so, and for a new cluster only: one an older version attached under that
/// name may still be updated by a re-run (`attached`).
pub(super) fn refuse_reserved_name(name: &str, attached: bool) -> Result<()> {
    let why = if attached {
        return Ok(());
    } else if name == output::PRIMARY {
        "status and services show the primary under it".to_owned()
    } else if let Some(other) = name.strip_suffix("-view") {
        format!(
            "Secret {} would hold its stored kubeconfig, the name of cluster {other:?}'s view \
             credentials",
            setup::cluster_secret_name(name)
        )
    } else {
        return Ok(());
    };
    Err(Error::Refused {
        what: format!("the cluster name {name:?} is reserved: {why}"),
        hint: "pass --name <other> to attach this cluster under another name".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asks(needs: &[Need], resource: &str, verb: &str) -> bool {
        needs
            .iter()
            .any(|n| n.resource == resource && n.verbs.contains(&verb))
    }

    #[test]
    fn a_takeover_may_delete_the_token_renewal_rights_without_token_ttl() {
        for resource in ["roles", "rolebindings"] {
            assert!(!asks(
                &remote_needs(false, false, None, false),
                resource,
                "get"
            ));
            let kind = if resource == "roles" {
                "Role"
            } else {
                "RoleBinding"
            };
            let found = takeover_needs(kind, setup::TOKEN_RENEWAL, None);
            for verb in RW {
                assert!(asks(&found, resource, verb), "{resource} {verb}");
            }
        }
        // The right the Role grants: only to put back another primary's, or to use it.
        assert!(!asks(
            &remote_needs(false, false, None, true),
            "serviceaccounts/token",
            "create"
        ));
        assert!(asks(
            &remote_needs(false, true, None, false),
            "serviceaccounts/token",
            "create"
        ));
    }

    /// `--force` with nothing of another primary's to take over asked every right on the
    /// token renewal Role and RoleBinding, which only a takeover that finds them deletes: a
    /// caller without them was refused a plain re-run.
    #[test]
    fn force_alone_only_looks_for_the_renewal_role() {
        let needs = remote_needs(false, false, None, true);
        for resource in ["roles", "rolebindings"] {
            assert!(asks(&needs, resource, "get"), "{resource}");
            for verb in ["create", "delete", "update"] {
                assert!(!asks(&needs, resource, verb), "{resource} {verb}");
            }
        }
        let ttl = remote_needs(false, true, None, true);
        assert!(asks(&ttl, "roles", "create") && asks(&ttl, "rolebindings", "delete"));
        assert!(!asks(
            &remote_needs(false, false, None, false),
            "roles",
            "get"
        ));
    }

    #[test]
    fn putting_back_another_primarys_role_needs_what_it_grants() {
        let renewal = takeover_needs("Role", setup::TOKEN_RENEWAL, None);
        assert!(asks(&renewal, "serviceaccounts/token", "create"));
        assert!(asks(&renewal, "roles", "delete"));
        let binding = takeover_needs(
            "RoleBinding",
            setup::TOKEN_RENEWAL,
            Some(setup::TOKEN_RENEWAL),
        );
        assert!(asks(&binding, "rolebindings", "delete"));
        assert!(asks(&binding, "rolebindings", "create"));
        assert_eq!(
            takeover_needs("ClusterRole", setup::VIEW_ACCOUNT, None).len(),
            setup::view_rights().len()
        );
        let own = takeover_needs(
            "ClusterRoleBinding",
            setup::ISTIO_READER,
            Some(setup::ISTIO_READER),
        );
        assert_eq!(own.len(), setup::istio_reader_rights().len());
        let istio_s = takeover_needs(
            "ClusterRoleBinding",
            setup::ISTIO_READER,
            Some(setup::ISTIO_OWN_READER_ROLE),
        );
        assert_eq!(istio_s[0].verbs, ["bind"]);
        assert_eq!(istio_s[0].name, Some(setup::ISTIO_OWN_READER_ROLE));
        // Nothing more to delete the rest.
        for (kind, name) in [
            ("ServiceAccount", setup::VIEW_ACCOUNT),
            ("Secret", setup::VIEW_TOKEN_SECRET),
            ("ValidatingAdmissionPolicy", setup::GUARD),
            ("ClusterRole", setup::SYNC_ACCOUNT),
        ] {
            assert!(takeover_needs(kind, name, None).is_empty(), "{kind} {name}");
        }
    }

    /// A rollback puts back what a re-run changed with an update (PUT): the remote's mesh
    /// namespace and the MeshCluster were written without it being asked, so a caller who
    /// may not update them got a rollback that could not put them back.
    #[test]
    fn every_object_a_rollback_may_put_back_is_asked_to_be_updated() {
        let remote = remote_needs(false, false, None, false);
        let primary = primary_needs(false, false);
        for (needs, resource) in [(&remote, "namespaces"), (&primary, "meshclusters")] {
            assert!(asks(needs, resource, "update"), "{resource}");
        }
    }

    #[test]
    fn the_primary_s_column_is_no_cluster_name() {
        let err = refuse_reserved_name(output::PRIMARY, false).unwrap_err();
        assert_eq!(
            err.line(),
            "the cluster name \"primary\" is reserved: status and services show the primary \
             under it; pass --name <other> to attach this cluster under another name"
        );
        for name in ["east", "primary-2", "my-primary", "view", "east-viewer"] {
            assert!(refuse_reserved_name(name, false).is_ok(), "{name}");
        }
        // Attached under it by an older version: a re-run still updates it.
        assert!(refuse_reserved_name(output::PRIMARY, true).is_ok());
        assert!(refuse_reserved_name("east-view", true).is_ok());
    }

    /// Cluster `east-view`'s Secret is `cluster-east-view`, the name of `east`'s view
    /// credentials: attaching `east --services-view` beside it was refused with a hint to
    /// detach `east-view`, a healthy cluster.
    #[test]
    fn a_name_ending_in_view_is_reserved_for_view_credentials() {
        let line = refuse_reserved_name("east-view", false).unwrap_err().line();
        assert_eq!(
            line,
            "the cluster name \"east-view\" is reserved: Secret cluster-east-view would hold its \
             stored kubeconfig, the name of cluster \"east\"'s view credentials; pass --name \
             <other> to attach this cluster under another name"
        );
        assert_eq!(setup::view_secret_name("east"), "cluster-east-view");
    }
}
