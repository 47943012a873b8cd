//! What attach writes, for preflight's ownership check, the steps and the dry run alike.

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::{Api, Client, api::DynamicObject, config::Kubeconfig};
use mesh_core::{cluster::NamespaceScope, labels::SyncRule};

use super::plan::Plan;
use crate::{
    Result, kubeconfig,
    remote_setup::{self as setup, ClusterRecord, ReaderRole},
    render::Manifest,
};

/// Which cluster an object goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Remote,
    Primary,
}

/// The remote objects of this attach that do not depend on a token, in creation order.
pub(super) fn remote_objects(plan: &Plan) -> Result<Vec<Manifest>> {
    let name = &plan.name;
    let mut out = vec![
        Manifest::new(&setup::remote_namespace(name))?,
        Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, name))?,
        Manifest::new(&setup::sync_cluster_role(name))?,
        Manifest::new(&setup::cluster_role_binding(setup::SYNC_ACCOUNT, name))?,
        Manifest::new(&setup::sync_scope_policy(name, &plan.scoped, &plan.scope))?,
        Manifest::new(&setup::sync_scope_binding(name))?,
    ];
    out.extend(sync_token_objects(plan)?);
    if plan.guard.action().is_some() {
        out.push(Manifest::new(&setup::guard_policy(name, &plan.guard))?);
        out.push(Manifest::new(&setup::guard_binding(name, &plan.guard))?);
    }
    if let Some(istio) = &plan.istio {
        out.extend(istio_reader_objects(name, &istio.reader_role)?);
    }
    if plan.view.wanted() {
        out.extend(view_objects(name)?);
    }
    Ok(out)
}

/// Every object attach may create on the remote for cluster `name` besides the namespace,
/// whatever its flags, by the names detach deletes ([`setup::IDENTITIES`],
/// [`setup::token_secrets`], [`setup::TOKEN_RENEWAL`], the guard and the sync scope) and in
/// its order: nothing loses its confinement before the rights it confines. A takeover looks
/// at all of them: another primary's that this run does not write go.
pub(super) fn known_remote_objects(name: &str) -> Result<Vec<Manifest>> {
    // Only kind, name and namespace count here: the guard's and the scope's content do not.
    let guard = setup::Guard::new(mesh_core::cluster::RemoteGuard::Warn, "", "");
    let mut out = vec![
        Manifest::new(&setup::guard_binding(name, &guard))?,
        Manifest::new(&setup::guard_policy(name, &guard))?,
    ];
    for secret in setup::token_secrets() {
        let m = setup::token_secret(&secret, setup::SYNC_ACCOUNT, name);
        out.push(Manifest::new(&m)?);
    }
    out.push(Manifest::new(&setup::token_renewal_binding(name))?);
    out.push(Manifest::new(&setup::token_renewal_role(name))?);
    for account in setup::IDENTITIES {
        out.push(Manifest::new(&setup::cluster_role_binding(account, name))?);
    }
    out.push(Manifest::new(&setup::sync_scope_binding(name))?);
    let (rule, scope) = (SyncRule::default(), NamespaceScope::default());
    out.push(Manifest::new(&setup::sync_scope_policy(
        name, &rule, &scope,
    ))?);
    for account in setup::IDENTITIES {
        let role = ClusterRole {
            metadata: setup::meta(account, None, name),
            ..Default::default()
        };
        out.push(Manifest::new(&role)?);
        out.push(Manifest::new(&setup::service_account(account, name))?);
    }
    Ok(out)
}

/// Whether `a` and `b` are the same object (kind, namespace and name).
pub(super) fn same_object(a: &Manifest, b: &Manifest) -> bool {
    a.resource.kind == b.resource.kind && a.namespace == b.namespace && a.name == b.name
}

/// The sync account's token Secret; with --token-ttl, the Secret its time-bound token is bound
/// to, after the Role and binding that let the webhook renew that token.
pub(super) fn sync_token_objects(plan: &Plan) -> Result<Vec<Manifest>> {
    let name = &plan.name;
    Ok(match plan.token_ttl {
        Some(_) => vec![
            Manifest::new(&setup::token_renewal_role(name))?,
            Manifest::new(&setup::token_renewal_binding(name))?,
            Manifest::new(&setup::token_anchor_secret(setup::TOKEN_SECRET, name))?,
        ],
        None => vec![Manifest::new(&setup::token_secret(
            setup::TOKEN_SECRET,
            setup::SYNC_ACCOUNT,
            name,
        ))?],
    })
}

/// With --services-view: the read-only view account, its ClusterRole and binding, and its
/// token Secret.
pub(super) fn view_objects(name: &str) -> Result<Vec<Manifest>> {
    Ok(vec![
        Manifest::new(&setup::service_account(setup::VIEW_ACCOUNT, name))?,
        Manifest::new(&setup::view_cluster_role(name))?,
        Manifest::new(&setup::cluster_role_binding(setup::VIEW_ACCOUNT, name))?,
        Manifest::new(&setup::token_secret(
            setup::VIEW_TOKEN_SECRET,
            setup::VIEW_ACCOUNT,
            name,
        ))?,
    ])
}

/// `m`, a remote object, recorded as created by the primary `primary_id`.
pub(super) fn for_primary(mut m: Manifest, primary_id: &str) -> Manifest {
    setup::record_primary(&mut m.object, primary_id);
    m
}

/// With --istio-remote-secret: istiod's reader account, its rights (our ClusterRole only
/// where Istio's own is absent) and its token Secret.
pub(super) fn istio_reader_objects(name: &str, role: &ReaderRole) -> Result<Vec<Manifest>> {
    let mut out = vec![Manifest::new(&setup::service_account(
        setup::ISTIO_READER,
        name,
    ))?];
    if *role == ReaderRole::Own {
        out.push(Manifest::new(&setup::istio_reader_cluster_role(name))?);
    }
    out.push(Manifest::new(&setup::istio_reader_binding(role, name))?);
    out.push(Manifest::new(&setup::token_secret(
        setup::ISTIO_READER_TOKEN_SECRET,
        setup::ISTIO_READER,
        name,
    ))?);
    Ok(out)
}

/// The MeshCluster's record of this attach.
pub(super) fn cluster_record(plan: &Plan) -> ClusterRecord {
    ClusterRecord {
        name: plan.name.clone(),
        cluster_id: plan.cluster_id.clone(),
        server: plan.remote_target.server.clone(),
        ca_fingerprint: plan.ca_fingerprint.clone(),
        tls_server_name: plan.tls_server_name.clone(),
        guard: plan.guard.mode,
        primary_name: plan.guard.primary.name.clone(),
        remote_namespace_created: plan.remote_namespace.created_by_attach(),
        remote_context: plan.remote_context.clone(),
        scope: plan.scope.clone(),
    }
}

/// The stored kubeconfig for `token`, as YAML.
pub(super) fn stored_kubeconfig(remote_kc: &Kubeconfig, name: &str, token: &str) -> Result<String> {
    let kc = kubeconfig::sanitize(remote_kc, name, token)?;
    Ok(kubeconfig::to_yaml(&kc)?)
}

pub(super) fn dyn_api(client: &Client, m: &Manifest) -> Api<DynamicObject> {
    match &m.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &m.resource),
        None => Api::all_with(client.clone(), &m.resource),
    }
}

/// `Kind name` or `Kind namespace/name`.
pub(super) fn describe(m: &Manifest) -> String {
    match &m.namespace {
        Some(ns) => format!("{} {ns}/{}", m.resource.kind, m.name),
        None => format!("{} {}", m.resource.kind, m.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A takeover deletes another primary's objects among these that it does not write: every
    /// object some flag of attach writes must be there, or it would outlive the takeover.
    #[test]
    fn every_object_a_flag_writes_is_known() {
        let known = known_remote_objects("east").unwrap();
        let mut written = view_objects("east").unwrap();
        for role in [ReaderRole::Own, ReaderRole::Istio] {
            written.extend(istio_reader_objects("east", &role).unwrap());
        }
        written.extend([
            Manifest::new(&setup::token_renewal_role("east")).unwrap(),
            Manifest::new(&setup::token_renewal_binding("east")).unwrap(),
            Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, "east")).unwrap(),
            Manifest::new(&setup::sync_cluster_role("east")).unwrap(),
            Manifest::new(&setup::cluster_role_binding(setup::SYNC_ACCOUNT, "east")).unwrap(),
        ]);
        for m in written {
            assert!(
                known.iter().any(|k| same_object(k, &m)),
                "{} is not known",
                describe(&m)
            );
        }
        // Bindings go before what they bind, policies' bindings before the policies.
        let at = |kind: &str, name: &str| {
            known
                .iter()
                .position(|k| k.resource.kind == kind && k.name == name)
                .unwrap()
        };
        assert!(at("RoleBinding", setup::TOKEN_RENEWAL) < at("Role", setup::TOKEN_RENEWAL));
        for account in setup::IDENTITIES {
            assert!(at("ClusterRoleBinding", account) < at("ClusterRole", account));
        }
        for policy in [setup::GUARD, setup::SYNC_SCOPE] {
            assert!(
                at("ValidatingAdmissionPolicyBinding", policy)
                    < at("ValidatingAdmissionPolicy", policy)
            );
        }
    }
}
