//! Install's check before it writes: the apiserver is asked, with a server-side dry run of the
//! very apply install then makes, whether it would accept every object (authorization, RBAC
//! escalation checks, admission, validation). Refused, install changes nothing.
//!
//! A dry run stores nothing, so an object whose check needs another one to exist sees it
//! missing: a namespaced object its namespace (the apiserver refuses content in a namespace
//! that does not exist), a binding the role it binds (a caller without `bind` on the role may
//! still bind it if they hold its rights, which the apiserver reads from the stored role).
//! Such an object, absent before the run, is created for real once its own check passes (on its
//! own it grants and holds nothing), and deleted again when anything is refused.
//!
//! Install also deletes what a run no longer installs (the client CA without
//! `--client-ca-file`, the in-cluster webhook with `--webhook-url`): each such object is read
//! before anything is applied, and the right to delete those that exist is asked first
//! ([`check_removals`]); absent ones are left alone, as RBAC refuses a delete before it looks
//! whether there is anything to delete.

use kube::Client;
use mesh_core::MESH_NAMESPACE;

use super::apply::{self, Deleted};
use crate::access::{self, Need, Target};
use crate::{
    Error, Result,
    render::{self, Manifest, Options},
};

/// An object install deletes once everything is applied: found before anything is applied,
/// or not readable by the caller (whether it exists is then unknown).
#[derive(Clone, Debug)]
pub struct Removal {
    /// The object.
    pub manifest: Manifest,
    /// Whether the caller could read it (it exists); when not, the right to read it is asked
    /// too.
    pub read: bool,
}

/// The rights install's reads and waits take, asked before it reads anything
/// ([`check_reads`]): `get` on what an earlier install left that it reads first (the mesh
/// namespace, whether attach holds it; the webhook configuration, for its rule and caBundle;
/// the TLS Secret, the certificate it keeps), and `list`/`watch` on the CRD, whose
/// establishment it watches for once applied. The reads it can do without (the Deployment,
/// the webhook's pods, what a run deletes) are not asked here.
fn read_needs() -> Result<Vec<Need<String>>> {
    let namespace = Manifest::new(&render::namespace())?;
    let configuration = Manifest::new(&render::mutating_webhook_configuration(
        &Options::default(),
        None,
    ))?;
    let secret = Need {
        group: String::new(),
        resource: "secrets".to_owned(),
        namespace: Some(MESH_NAMESPACE.to_owned()),
        name: Some(render::TLS_SECRET.to_owned()),
        verbs: vec!["get"],
    };
    let crd = Manifest::new(&render::crd())?;
    Ok(vec![
        Need::on(&namespace, &["get"]),
        Need::on(&configuration, &["get"]),
        secret,
        Need::on(&crd, &["list", "watch"]),
    ])
}

/// Refuses, in one line and before install reads or changes anything, when the caller lacks a
/// right its reads and waits take ([`read_needs`]): without it, the read answered a bare 403,
/// or the wait for the CRD failed once things were applied.
pub async fn check_reads(client: &Client, target: &Target) -> Result<()> {
    match access::missing_on(client, target, &read_needs()?).await? {
        None => Ok(()),
        Some(missing) => Err(read_refusal(&missing)),
    }
}

/// The refusal when the caller lacks `missing` (as [`access::missing_on`] says it) of the
/// rights install's reads and waits take.
fn read_refusal(missing: &str) -> Error {
    Error::Refused {
        what: format!("missing permissions {missing}; nothing was changed"),
        hint: "install reads what an earlier install left and watches its CRD become \
               established: ask for these rights, or run install as a cluster admin"
            .into(),
    }
}

/// The rights removing `removals` takes.
fn removal_needs(removals: &[Removal]) -> Vec<Need<String>> {
    removals
        .iter()
        .map(|r| {
            let verbs: &[&str] = if r.read {
                &["delete"]
            } else {
                &["get", "delete"]
            };
            Need::on(&r.manifest, verbs)
        })
        .collect()
}

/// Refuses, in one line and before anything is applied, when the caller lacks a right to
/// remove `removals` from `target` ([module docs](self)).
pub async fn check_removals(client: &Client, target: &Target, removals: &[Removal]) -> Result<()> {
    if removals.is_empty() {
        return Ok(());
    }
    match access::missing_on(client, target, &removal_needs(removals)).await? {
        None => Ok(()),
        Some(missing) => Err(removal_refusal(&missing)),
    }
}

/// The refusal when the caller lacks `missing` (as [`access::missing_on`] says it) of the
/// rights to remove what a run no longer installs.
fn removal_refusal(missing: &str) -> Error {
    Error::Refused {
        what: format!("missing permissions {missing}; nothing was changed"),
        hint: "this run deletes what it no longer installs: ask for these rights, or run \
               install as a cluster admin"
            .into(),
    }
}

/// Asks the apiserver whether it would accept every object of `manifests` ([module
/// docs](self)); on a refusal, deletes what the check itself created and says, on one line,
/// which object was refused, why, and what to do.
pub async fn check(client: &Client, manifests: &[Manifest]) -> Result<()> {
    let mut created = Vec::new();
    let Err(refused) = check_each(client, manifests, &mut created).await else {
        return Ok(());
    };
    let mut left = Vec::new();
    for m in created.iter().rev() {
        match apply::delete(client, m).await {
            Ok(Deleted::Deleted | Deleted::NotFound) => {}
            Err(e) => left.push(format!("{} ({})", m.describe(), e.what())),
        }
    }
    Err(Error::Refused {
        what: format!("{}; {}", refused.what(), outcome(&left)),
        hint: refused.hint(),
    })
}

/// What a refused check left: nothing, or what it could not delete again.
fn outcome(left: &[String]) -> String {
    if left.is_empty() {
        "nothing was changed".to_owned()
    } else {
        format!(
            "created for the check and not deleted again: {} (delete by hand)",
            left.join(", ")
        )
    }
}

async fn check_each<'a>(
    client: &Client,
    manifests: &'a [Manifest],
    created: &mut Vec<&'a Manifest>,
) -> Result<()> {
    for m in check_order(manifests) {
        if is_namespace(m) {
            match apply::get(client, m).await? {
                Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
                    return Err(terminating(m));
                }
                Some(_) => dry_run(client, m).await?,
                None => create(client, m, created).await?,
            }
            continue;
        }
        match apply::apply_dry_run(client, m).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // A binding of a role this install creates, which does not exist yet: it is
                // checked against the role once that is there.
                let Some(role) = bound_role(m, manifests) else {
                    return Err(refusal(m, kube::Error::Api(s)));
                };
                if apply::get(client, role).await?.is_some() {
                    return Err(refusal(m, kube::Error::Api(s)));
                }
                create(client, role, created).await?;
                dry_run(client, m).await?;
            }
            Err(e) => return Err(refusal(m, e)),
        }
    }
    Ok(())
}

async fn dry_run(client: &Client, m: &Manifest) -> Result<()> {
    apply::apply_dry_run(client, m)
        .await
        .map(drop)
        .map_err(|e| refusal(m, e))
}

/// Applies `m`, absent before, for real: another object's check needs it.
async fn create<'a>(
    client: &Client,
    m: &'a Manifest,
    created: &mut Vec<&'a Manifest>,
) -> Result<()> {
    // Recorded first: a write that failed on the way back may still have been made.
    created.push(m);
    apply::apply_as(client, m, false)
        .await
        .map(drop)
        .map_err(|e| refusal(m, e))
}

/// The order of the check: cluster-scoped objects (namespaces apart), which need nothing of
/// this install, then the namespaces, then the namespaced objects; the order of the apply
/// within each.
fn check_order(manifests: &[Manifest]) -> Vec<&Manifest> {
    let cluster = manifests
        .iter()
        .filter(|m| m.namespace.is_none() && !is_namespace(m));
    let namespaces = manifests.iter().filter(|m| is_namespace(m));
    let namespaced = manifests.iter().filter(|m| m.namespace.is_some());
    cluster.chain(namespaces).chain(namespaced).collect()
}

fn is_namespace(m: &Manifest) -> bool {
    m.resource.group.is_empty() && m.resource.kind == "Namespace"
}

/// The role of `manifests` that `binding` (a ClusterRoleBinding or RoleBinding) binds.
fn bound_role<'a>(binding: &Manifest, manifests: &'a [Manifest]) -> Option<&'a Manifest> {
    const RBAC: &str = "rbac.authorization.k8s.io";
    let binds = |kind: &str| binding.resource.group == RBAC && binding.resource.kind == kind;
    if !binds("ClusterRoleBinding") && !binds("RoleBinding") {
        return None;
    }
    let role_ref = &binding.object["roleRef"];
    let kind = role_ref["kind"].as_str()?;
    let name = role_ref["name"].as_str()?;
    // A RoleBinding's Role is in its own namespace; a ClusterRole in none.
    let namespace = (kind == "Role")
        .then(|| binding.namespace.clone())
        .flatten();
    manifests.iter().find(|m| {
        m.resource.group == RBAC
            && m.resource.kind == kind
            && m.name == name
            && m.namespace == namespace
    })
}

/// Whether the apiserver's answer is a refusal for want of rights: RBAC authorization (`...
/// is forbidden: User "..." cannot create resource ...`) or its escalation check (`... is
/// forbidden: user "..." ... is attempting to grant RBAC permissions not currently held`), not
/// admission (a webhook's or policy's denial) nor validation.
fn wants_rights(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => {
            s.code == 403 && s.message.to_ascii_lowercase().contains("forbidden: user ")
        }
        _ => false,
    }
}

/// The error of `m`'s check, refused with `err`: what to ask for when rights are wanting.
fn refusal(m: &Manifest, err: kube::Error) -> Error {
    let wants_rights = wants_rights(&err);
    let err = Error::kube(format!("cannot apply {}", m.describe()))(err);
    if !wants_rights {
        return err;
    }
    Error::Refused {
        what: err.what(),
        hint: rights_hint(m),
    }
}

/// What to ask for when the check of `m` was refused for want of rights: the verbs of a
/// server-side apply, `create` (the object may be absent) and `patch`; those on what a run
/// deletes are asked apart ([`check_removals`]).
fn rights_hint(m: &Manifest) -> String {
    let resource = if m.resource.group.is_empty() {
        m.resource.plural.clone()
    } else {
        format!("{}.{}", m.resource.plural, m.resource.group)
    };
    let place = m
        .namespace
        .as_deref()
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    let what = format!("create and patch {resource}{place}");
    let role = m.object["roleRef"]["kind"]
        .as_str()
        .zip(m.object["roleRef"]["name"].as_str());
    let rights = match (m.resource.kind.as_str(), role) {
        ("ClusterRole" | "Role", _) => format!(
            "{what} and to grant what {} grants (hold those rights, or the `escalate` verb on \
             {resource})",
            m.describe()
        ),
        ("ClusterRoleBinding" | "RoleBinding", Some((kind, name))) => {
            format!("{what} and to bind {kind} {name} (the `bind` verb on it, or hold its rights)")
        }
        _ => what,
    };
    format!("ask for the rights to {rights}, or run install as a cluster admin")
}

/// The refusal when the namespace `m` is being deleted: nothing can be created in it.
fn terminating(m: &Manifest) -> Error {
    Error::Refused {
        what: format!("{} is being deleted", m.describe()),
        hint: format!(
            "wait until it is gone (`kubectl get namespace {}`), then re-run install",
            m.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(options: &Options) -> Vec<Manifest> {
        let cert = render::generate_serving_cert(&render::serving_sans(None)).unwrap();
        render::render(options, &cert).unwrap()
    }

    fn described(list: &[&Manifest]) -> Vec<String> {
        list.iter().map(|m| m.describe()).collect()
    }

    #[test]
    fn cluster_scoped_objects_are_checked_first_then_the_namespace_then_the_rest() {
        let all = manifests(&Options::default());
        let order = check_order(&all);
        assert_eq!(order.len(), all.len());
        let kinds: Vec<&str> = order.iter().map(|m| m.resource.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
                "Namespace",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Role",
                "RoleBinding",
                "Secret",
                "Deployment",
                "PodDisruptionBudget",
                "Service",
                "NetworkPolicy",
            ]
        );
        // Every namespaced object comes after every namespace.
        let first_namespaced = order.iter().position(|m| m.namespace.is_some()).unwrap();
        assert!(order[first_namespaced..].iter().all(|m| !is_namespace(m)));
    }

    #[test]
    fn bindings_find_the_role_they_bind() {
        let all = manifests(&Options::default());
        let by_kind = |kind: &str| all.iter().find(|m| m.resource.kind == kind).unwrap();
        let cluster_role = bound_role(by_kind("ClusterRoleBinding"), &all).unwrap();
        assert_eq!(cluster_role.resource.kind, "ClusterRole");
        assert_eq!(cluster_role.name, by_kind("ClusterRole").name);
        let role = bound_role(by_kind("RoleBinding"), &all).unwrap();
        assert_eq!(described(&[role]), described(&[by_kind("Role")]));
        assert_eq!(role.namespace, by_kind("RoleBinding").namespace);
        // Anything else binds nothing; a role of another name is not this install's.
        assert!(bound_role(by_kind("Deployment"), &all).is_none());
        let mut other = by_kind("ClusterRoleBinding").clone();
        other.object["roleRef"]["name"] = "cluster-admin".into();
        assert!(bound_role(&other, &all).is_none());
        // A RoleBinding in another namespace binds a Role there, not install's.
        let mut elsewhere = by_kind("RoleBinding").clone();
        elsewhere.namespace = Some("default".into());
        assert!(bound_role(&elsewhere, &all).is_none());
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "message": message, "reason": "Forbidden", "code": code,
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn a_refusal_for_want_of_rights_names_the_object_and_the_rights() {
        let all = manifests(&Options::default());
        let binding = all
            .iter()
            .find(|m| m.resource.kind == "ClusterRoleBinding")
            .unwrap();
        let denied = api_error(
            403,
            "clusterrolebindings.rbac.authorization.k8s.io is forbidden: User \
             \"system:serviceaccount:default:alice\" cannot create resource \
             \"clusterrolebindings\" in API group \"rbac.authorization.k8s.io\" at the cluster \
             scope",
        );
        let line = refusal(binding, denied).line();
        assert_eq!(
            line,
            format!(
                "cannot apply ClusterRoleBinding {name}: clusterrolebindings.rbac.authorization.k8s.io \
                 is forbidden: User \"system:serviceaccount:default:alice\" cannot create \
                 resource \"clusterrolebindings\" in API group \"rbac.authorization.k8s.io\" at \
                 the cluster scope; ask for the rights to create and patch \
                 clusterrolebindings.rbac.authorization.k8s.io and to bind ClusterRole {role} (the \
                 `bind` verb on it, or hold its rights), or run install as a cluster admin",
                name = binding.name,
                role = bound_role(binding, &all).unwrap().name,
            )
        );
        let role = all.iter().find(|m| m.resource.kind == "Role").unwrap();
        let escalation = api_error(
            403,
            "roles.rbac.authorization.k8s.io \"mesh-webhook\" is forbidden: user \"alice\" \
             (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not \
             currently held",
        );
        let hint = refusal(role, escalation).hint();
        assert!(
            hint.starts_with(
                "ask for the rights to create and patch roles.rbac.authorization.k8s.io in \
                 namespace kubectl-mesh and to grant what Role mesh-webhook grants"
            ),
            "{hint}"
        );
        let secret = all.iter().find(|m| m.resource.kind == "Secret").unwrap();
        assert_eq!(
            rights_hint(secret),
            "ask for the rights to create and patch secrets in namespace kubectl-mesh, or run \
             install as a cluster admin"
        );
    }

    #[test]
    fn admission_denials_and_other_errors_keep_their_own_hint() {
        let all = manifests(&Options::default());
        let ns = all.iter().find(|m| is_namespace(m)).unwrap();
        let denied = api_error(
            403,
            "admission webhook \"policy.example.com\" denied the request: no such namespace",
        );
        assert!(!wants_rights(&denied));
        let err = refusal(ns, denied);
        assert!(
            err.what()
                .starts_with("cannot apply Namespace kubectl-mesh: admission webhook")
        );
        assert!(!err.hint().contains("cluster admin"), "{}", err.hint());
        assert!(!wants_rights(&api_error(422, "forbidden: user \"x\"")));
    }

    /// What a run deletes is asked up front: `delete` on what it found, `get` too on what it
    /// could not read; the refusal is one line saying that nothing was changed.
    #[test]
    fn removals_ask_to_delete_what_exists_and_to_read_what_could_not_be_read() {
        let config_map = Manifest::new(&render::client_ca_config_map("")).unwrap();
        let service = Manifest::new(&render::service()).unwrap();
        let removals = [
            Removal {
                manifest: config_map,
                read: true,
            },
            Removal {
                manifest: service,
                read: false,
            },
        ];
        let needs = removal_needs(&removals);
        let asked: Vec<_> = needs
            .iter()
            .map(|n| (n.resource.as_str(), n.name.as_deref(), n.verbs.clone()))
            .collect();
        assert_eq!(
            asked,
            [
                ("configmaps", Some("mesh-webhook-client-ca"), vec!["delete"]),
                ("services", Some("mesh-webhook"), vec!["get", "delete"]),
            ]
        );
        assert!(
            needs
                .iter()
                .all(|n| n.namespace.as_deref() == Some("kubectl-mesh"))
        );
        assert_eq!(
            removal_refusal("on the primary (https://10.0.0.1:6443): services named x (delete)")
                .line(),
            "missing permissions on the primary (https://10.0.0.1:6443): services named x \
             (delete); nothing was changed; this run deletes what it no longer installs: ask for \
             these rights, or run install as a cluster admin"
        );
    }

    /// Install's first reads and its wait for the CRD are asked up front, on the very objects,
    /// and refused in one line saying that nothing was changed.
    #[test]
    fn reads_and_the_wait_for_the_crd_are_asked_up_front() {
        let needs = read_needs().unwrap();
        let asked: Vec<_> = needs
            .iter()
            .map(|n| {
                (
                    n.group.as_str(),
                    n.resource.as_str(),
                    n.namespace.as_deref(),
                    n.name.as_deref(),
                    n.verbs.clone(),
                )
            })
            .collect();
        assert_eq!(
            asked,
            [
                ("", "namespaces", None, Some("kubectl-mesh"), vec!["get"]),
                (
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                    None,
                    Some(render::WEBHOOK_CONFIGURATION),
                    vec!["get"],
                ),
                (
                    "",
                    "secrets",
                    Some("kubectl-mesh"),
                    Some("mesh-webhook-tls"),
                    vec!["get"],
                ),
                (
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    Some("meshclusters.kubectl-mesh.io"),
                    vec!["list", "watch"],
                ),
            ]
        );
        // The names are those install reads and applies.
        let all = manifests(&Options::default());
        for (kind, need) in [
            ("Namespace", &needs[0]),
            ("MutatingWebhookConfiguration", &needs[1]),
            ("Secret", &needs[2]),
            ("CustomResourceDefinition", &needs[3]),
        ] {
            let m = all.iter().find(|m| m.resource.kind == kind).unwrap();
            assert_eq!(
                (m.name.as_str(), m.namespace.as_deref()),
                (need.name.as_deref().unwrap(), need.namespace.as_deref()),
                "{kind}"
            );
        }
        assert_eq!(
            read_refusal(
                "on the primary (https://10.0.0.1:6443): \
                 customresourcedefinitions.apiextensions.k8s.io named x (list/watch)"
            )
            .line(),
            "missing permissions on the primary (https://10.0.0.1:6443): \
             customresourcedefinitions.apiextensions.k8s.io named x (list/watch); nothing was \
             changed; install reads what an earlier install left and watches its CRD become \
             established: ask for these rights, or run install as a cluster admin"
        );
    }

    #[test]
    fn a_refused_check_says_what_it_could_not_undo() {
        assert_eq!(outcome(&[]), "nothing was changed");
        assert_eq!(
            outcome(&["Namespace kubectl-mesh (cannot delete Namespace kubectl-mesh: x)".into()]),
            "created for the check and not deleted again: Namespace kubectl-mesh (cannot delete \
             Namespace kubectl-mesh: x) (delete by hand)"
        );
        let all = manifests(&Options::default());
        let ns = all.iter().find(|m| is_namespace(m)).unwrap();
        assert_eq!(
            terminating(ns).line(),
            "Namespace kubectl-mesh is being deleted; wait until it is gone (`kubectl get \
             namespace kubectl-mesh`), then re-run install"
        );
    }
}
