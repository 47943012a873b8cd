//! Whether a namespace kubectl-mesh created may be deleted, by detach, uninstall or a failed
//! attach's rollback: only when it holds nothing besides kubectl-mesh's objects ([`why_keep`]). Every
//! namespaced kind the apiserver serves is listed, not a fixed few: deleting a namespace
//! deletes all of them (a Role, a PersistentVolumeClaim, a custom resource), so a kind left
//! unread is data lost. A kind that cannot be listed counts as holding something.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams},
    discovery::{Discovery, Scope, verbs},
};
use mesh_core::{failure, printable};

use crate::output::Progress;
use crate::remote_setup as setup;

/// Why the namespace `ns` kubectl-mesh created is kept rather than deleted ("it holds ...",
/// said after "kept: "); `None` when it holds nothing else and may go. `primary` as for
/// [`foreign_objects`].
pub async fn why_keep(
    client: &Client,
    ns: &str,
    primary: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    Ok(reason_to_keep(&foreign_objects(client, ns, primary).await?))
}

/// Deletes namespace `ns` if attach created it and it holds nothing else
/// ([`why_keep`]); otherwise keeps it, and says why when it holds more.
/// `owner`: the cluster whose label the namespace must carry and the primary it must be
/// recorded for, or `None` for a namespace shared by clusters (istio-system), which only
/// needs the managed-by label. Returns whether it was deleted.
pub async fn remove_namespace_if_unused(
    client: &Client,
    ns: &str,
    side: &str,
    owner: Option<(&str, &str)>,
    progress: Progress,
) -> Result<bool, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(found) = namespaces.get_opt(ns).await? else {
        return Ok(false);
    };
    if !created_by_attach(&found, owner) {
        return Ok(false);
    }
    let primary = owner.map(|(_, primary)| primary);
    if let Some(why) = why_keep(client, ns, primary).await? {
        progress.warn(format!("{side}: Namespace {ns} kept: {why}"));
        return Ok(false);
    }
    match namespaces.delete(ns, &DeleteParams::background()).await {
        Ok(_) => progress.ok(format!("{side}: Namespace {ns} deleted")),
        // Gone meanwhile: what was asked.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(true)
}

/// Whether the primary's istio-system is one attach created for Istio remote secrets (and
/// detach or uninstall may delete once it is empty); no when the caller may not read it
/// (detach asks for that right, uninstall leaves the namespace alone).
pub async fn istio_namespace_created(client: &Client) -> Result<bool, kube::Error> {
    match Api::<Namespace>::all(client.clone())
        .get_opt(setup::ISTIO_NAMESPACE)
        .await
    {
        Ok(found) => Ok(found.is_some_and(|ns| created_by_attach(&ns, None))),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether [`remove_namespace_if_unused`] may delete `ns` (once it holds nothing else): attach
/// created it, for `owner` (see there), and it is not being deleted already.
pub fn created_by_attach(ns: &Namespace, owner: Option<(&str, &str)>) -> bool {
    let ours = match owner {
        Some((cluster, primary)) => setup::is_ours_from(&ns.metadata, cluster, primary),
        None => {
            ns.labels().get(setup::MANAGED_BY_LABEL).map(String::as_str) == Some(mesh_core::MANAGER)
        }
    };
    ours && ns.metadata.deletion_timestamp.is_none()
}

/// The decision of [`why_keep`] once `others` (what [`foreign_objects`] found) is known.
fn reason_to_keep(others: &[String]) -> Option<String> {
    if others.iter().all(|o| o.contains(UNLISTED)) {
        // Kinds that could not be listed alone: it may hold nothing, but nobody can tell.
        return (!others.is_empty()).then(|| {
            format!(
                "what it holds could not be told ({})",
                printable::few(others)
            )
        });
    }
    Some(format!(
        "it holds objects attach did not create for this cluster ({})",
        printable::few(others)
    ))
}

/// How [`foreign_objects`] names a kind it could not list.
const UNLISTED: &str = "(could not be listed: ";

/// What `ns` holds that neither kubectl-mesh (for `primary`) nor Kubernetes put there, as
/// `<Kind> <name>`, plus `<plural> (could not be listed: ...)` for each kind that could not be
/// read. Without a `primary`, `ns` is shared by clusters (the primary's istio-system) and this
/// cluster's objects are gone already: a kubectl-mesh object left there belongs to another
/// cluster, and counts.
async fn foreign_objects(
    client: &Client,
    ns: &str,
    primary: Option<&str>,
) -> Result<Vec<String>, kube::Error> {
    // Aggregated discovery is two requests; servers without it get the per-group walk.
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(discovery) => discovery,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || is_event(&resource)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
            match metadata_of_all(&api).await {
                Ok(objects) => out.extend(
                    objects
                        .iter()
                        .filter(|meta| is_foreign(&resource.kind, meta, primary))
                        .map(|meta| {
                            let name = meta.name.as_deref().unwrap_or_default();
                            format!("{} {name}", resource.kind)
                        }),
                ),
                Err(e) => out.push(format!(
                    "{} {UNLISTED}{})",
                    resource.plural,
                    failure::error_chain(&e)
                )),
            }
        }
    }
    Ok(out)
}

/// The metadata of every object `api` lists: metadata only where the server can (it spares
/// reading Secrets' data), the whole objects from an aggregated API that cannot.
async fn metadata_of_all(api: &Api<DynamicObject>) -> Result<Vec<ObjectMeta>, kube::Error> {
    let params = ListParams::default();
    match api.list_metadata(&params).await {
        Ok(list) => Ok(list.items.into_iter().map(|o| o.metadata).collect()),
        Err(_) => Ok(api
            .list(&params)
            .await?
            .items
            .into_iter()
            .map(|o| o.metadata)
            .collect()),
    }
}

/// Events record what happened to other objects; they are not content of their own.
fn is_event(resource: &ApiResource) -> bool {
    resource.kind == "Event" && (resource.group.is_empty() || resource.group == "events.k8s.io")
}

/// Whether an object of `kind` with `meta` is someone else's: not what Kubernetes gives every
/// namespace, and not kubectl-mesh's for `primary` (see [`foreign_objects`]).
fn is_foreign(kind: &str, meta: &ObjectMeta, primary: Option<&str>) -> bool {
    let name = meta.name.as_deref().unwrap_or_default();
    let every_namespace_has_it = matches!(
        (kind, name),
        ("ServiceAccount", "default") | ("ConfigMap", "kube-root-ca.crt")
    );
    if every_namespace_has_it {
        return false;
    }
    let Some(primary) = primary else {
        return true;
    };
    let ours = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(setup::MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(mesh_core::MANAGER)
        && setup::primary_of(meta).is_none_or(|o| o == primary);
    !ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, labels: &[(&str, &str)], primary: Option<&str>) -> ObjectMeta {
        let mut meta = ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        if let Some(primary) = primary {
            meta.annotations =
                Some([(setup::PRIMARY_ANNOTATION.to_string(), primary.into())].into());
        }
        meta
    }

    const OURS: (&str, &str) = (setup::MANAGED_BY_LABEL, mesh_core::MANAGER);

    #[test]
    fn what_every_namespace_gets_is_nobodys() {
        for primary in [Some("p"), None] {
            assert!(!is_foreign(
                "ServiceAccount",
                &meta("default", &[], None),
                primary
            ));
            assert!(!is_foreign(
                "ConfigMap",
                &meta("kube-root-ca.crt", &[], None),
                primary
            ));
            assert!(is_foreign("Secret", &meta("default", &[], None), primary));
        }
    }

    #[test]
    fn any_other_kind_is_foreign_unless_this_primary_made_it() {
        assert!(is_foreign("Role", &meta("app", &[], None), Some("p")));
        assert!(is_foreign(
            "PersistentVolumeClaim",
            &meta("data", &[], None),
            Some("p")
        ));
        assert!(!is_foreign(
            "Role",
            &meta("r", &[OURS], Some("p")),
            Some("p")
        ));
        assert!(!is_foreign("Role", &meta("r", &[OURS], None), Some("p")));
        assert!(is_foreign(
            "Role",
            &meta("r", &[OURS], Some("q")),
            Some("p")
        ));
    }

    #[test]
    fn in_a_shared_namespace_another_clusters_object_is_foreign() {
        assert!(is_foreign("Secret", &meta("s", &[OURS], Some("p")), None));
    }

    #[test]
    fn a_namespace_goes_only_when_it_holds_nothing_else() {
        assert_eq!(reason_to_keep(&[]), None);
        let others = ["ConfigMap someone-elses".to_owned()];
        assert_eq!(
            reason_to_keep(&others).as_deref(),
            Some(
                "it holds objects attach did not create for this cluster (ConfigMap someone-elses)"
            )
        );
        // A kind that could not be listed keeps it as well, without claiming it holds anything.
        let unread = ["widgets (could not be listed: forbidden)".to_owned()];
        assert_eq!(
            reason_to_keep(&unread).as_deref(),
            Some("what it holds could not be told (widgets (could not be listed: forbidden))")
        );
        let both = [unread[0].clone(), others[0].clone()];
        assert!(reason_to_keep(&both).is_some_and(|why| why.starts_with("it holds objects")));
    }

    #[test]
    fn only_events_are_skipped() {
        let event = |group: &str, kind: &str| ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: "x".into(),
        };
        assert!(is_event(&event("", "Event")));
        assert!(is_event(&event("events.k8s.io", "Event")));
        assert!(!is_event(&event("example.com", "Event")));
        assert!(!is_event(&event("", "Endpoints")));
    }
}
