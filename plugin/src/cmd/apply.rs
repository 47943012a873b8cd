//! Applying and deleting rendered objects on a cluster, shared by install, uninstall and the
//! commands that create objects on remotes.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::wait::{Condition, await_condition, conditions},
};

use crate::{Error, Result, render::FIELD_MANAGER, render::Manifest};

fn api(client: &Client, m: &Manifest) -> Api<DynamicObject> {
    match &m.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &m.resource),
        None => Api::all_with(client.clone(), &m.resource),
    }
}

/// Server-side applies `m` with field manager `kubectl-mesh`, taking over fields another
/// manager set (install is the authority over what it renders).
pub async fn apply(client: &Client, m: &Manifest) -> Result<DynamicObject> {
    apply_as(client, m, false)
        .await
        .map_err(Error::kube(format!("cannot apply {}", m.describe())))
}

/// [`apply`] with `dryRun=All`: the apiserver answers as it would to the write (authorization,
/// RBAC escalation checks, admission, validation) and stores nothing. Its own error, so that
/// the caller can tell why.
pub async fn apply_dry_run(client: &Client, m: &Manifest) -> Result<DynamicObject, kube::Error> {
    apply_as(client, m, true).await
}

/// [`apply`], for real or as a dry run, with the apiserver's own error.
pub async fn apply_as(
    client: &Client,
    m: &Manifest,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api(client, m)
        .patch(&m.name, &params, &Patch::Apply(&m.object))
        .await
}

/// The object `m` names as the cluster holds it, if it exists.
pub async fn get(client: &Client, m: &Manifest) -> Result<Option<DynamicObject>> {
    api(client, m)
        .get_opt(&m.name)
        .await
        .map_err(Error::kube(format!("cannot read {}", m.describe())))
}

/// What [`delete`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Deletion requested (it may finish later, e.g. a namespace's).
    Deleted,
    /// There was nothing to delete.
    NotFound,
}

/// Deletes `m` in the background (dependents go with it); a missing object is not an error,
/// so uninstall and detach can be re-run.
pub async fn delete(client: &Client, m: &Manifest) -> Result<Deleted> {
    match api(client, m)
        .delete(&m.name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(Deleted::Deleted),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Deleted::NotFound),
        Err(e) => Err(Error::kube(format!("cannot delete {}", m.describe()))(e)),
    }
}

/// Waits until `cond` holds for the object `name` of `api`, at most `timeout`.
pub async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    hint: &str,
    cond: impl Condition<K>,
) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api, name, cond)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => match crate::request_timeout::Unanswered::within(&e) {
            Some(late) => Err(late.refusal(&format!("cannot watch {what}"))),
            None => Err(Error::Refused {
                what: format!("cannot watch {what}: {e}"),
                hint: "check that the cluster is reachable and re-run the command".into(),
            }),
        },
        Err(_) => Err(Error::Timeout {
            what: what.to_owned(),
            after: format!("{}s", timeout.as_secs()),
            hint: hint.to_owned(),
        }),
    }
}

/// Waits until the CRD `name` is Established, so that its objects can be created at once.
pub async fn wait_crd_established(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    wait_for(
        Api::<CustomResourceDefinition>::all(client.clone()),
        name,
        &format!("CustomResourceDefinition {name} to be established"),
        timeout,
        "check `kubectl get crd -o yaml` for its conditions, or re-run with a longer --timeout",
        conditions::is_crd_established(),
    )
    .await
}

/// Whether a write that failed with `e` certainly changed nothing: the apiserver answered and
/// refused it. A write whose answer never came (a timeout, a broken connection) or that failed
/// on the server's side may have been stored, so a change recorded to be put back stays
/// recorded; putting back a change that never landed changes nothing.
pub fn stored_nothing(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if (400..500).contains(&status.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", "Reason").with_code(code),
        ))
    }

    #[test]
    fn only_a_refusal_the_apiserver_answered_stored_nothing() {
        for code in [400, 403, 404, 409, 422, 429] {
            assert!(stored_nothing(&answered(code)), "{code}");
        }
        // The server failed while writing, or no answer came: it may be stored.
        assert!(!stored_nothing(&answered(500)));
        assert!(!stored_nothing(&answered(504)));
        let unanswered = kube::Error::Service("deadline has elapsed".into());
        assert!(!stored_nothing(&unanswered));
    }
}
