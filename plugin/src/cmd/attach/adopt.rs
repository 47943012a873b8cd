//! `--adopt-remote-labels`: the remote's managed labels copied onto the primary's namespaces
//! before the first sync, and taken off again when attach rolls back.

use json_patch::{PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use mesh_core::{
    failure,
    labels::{LabelDiff, Labels, SyncRule},
};
use serde_json::Value;

use tokio::time::Instant;

use super::undo::by_deadline;
use crate::{Error, Result, output::Progress, preview::Adoption, render::FIELD_MANAGER};

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// Gives the primary's namespace the remote's managed labels, only if it still has none:
/// the write is conditional on the namespace as read.
pub(super) async fn adopt(
    primary: &Client,
    rule: &SyncRule,
    adoption: &Adoption,
    cluster: &str,
    progress: Progress,
) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(primary.clone());
    let name = &adoption.namespace;
    let changed = || Error::Refused {
        what: format!(
            "namespace {name} changed on the primary while attaching (it has managed labels now)"
        ),
        hint: "nothing is adopted over the primary's own labels; re-run attach to see the new \
               preview"
            .into(),
    };
    let current = namespaces.get(name).await.map_err(Error::kube(format!(
        "cannot read namespace {name} on the primary"
    )))?;
    if !rule.managed_of(current.metadata.labels.as_ref()).is_empty() {
        return Err(changed());
    }
    let diff = LabelDiff {
        namespace: name.clone(),
        set: adoption.labels.clone(),
        remove: Default::default(),
    };
    let patch = Patch::Json::<()>(diff.to_json_patch(&current));
    match namespaces.patch(name, &params(), &patch).await {
        Ok(_) => {}
        Err(e) if failure::Failure::of(&e) == failure::Failure::Conflict => return Err(changed()),
        Err(e) => {
            return Err(Error::kube(format!(
                "cannot label namespace {name} on the primary"
            ))(e));
        }
    }
    progress.ok(format!(
        "primary: namespace {name} adopted {} from {cluster}",
        diff.describe()
    ));
    Ok(())
}

/// Takes adopted labels off the primary again, newest first, where they are still as
/// adopted, until the rollback's deadline (and why it is `late` once passed); returns what
/// could not be taken off.
pub(super) async fn unadopt(
    primary: &Client,
    mut adopted: Vec<Adoption>,
    deadline: Instant,
    late: &str,
    progress: Progress,
) -> Vec<String> {
    let namespaces: Api<Namespace> = Api::all(primary.clone());
    let mut left = Vec::new();
    while let Some(adoption) = adopted.pop() {
        let name = &adoption.namespace;
        let patch = Patch::Json::<()>(unadoption(&adoption.labels));
        let failed = match by_deadline(deadline, namespaces.patch(name, &params(), &patch)).await {
            Some(Ok(_)) => {
                progress.warn(format!(
                    "rolled back: primary: namespace {name} adopts nothing"
                ));
                continue;
            }
            // Not as adopted (never written, or changed since): left as it is.
            Some(Err(e))
                if matches!(
                    failure::Failure::of(&e),
                    failure::Failure::Conflict
                        | failure::Failure::Other
                        | failure::Failure::NotFound
                ) =>
            {
                continue;
            }
            Some(Err(e)) => failure::error_chain(&e),
            None => late.to_owned(),
        };
        progress.fail(format!("rollback: primary: namespace {name}: {failed}"));
        left.push(format!("primary: labels adopted on namespace {name}"));
    }
    left
}

/// The JSON patch that takes the `adopted` labels off a namespace if it still carries them as
/// adopted, and nothing else: a managed label set on the primary since stays (it is the
/// primary's now, and its removal would be pushed to every remote).
fn unadoption(adopted: &Labels) -> json_patch::Patch {
    let path = |key: &str| PointerBuf::from_tokens(["metadata", "labels", key]);
    let tests = adopted.iter().map(|(key, value)| {
        PatchOperation::Test(TestOperation {
            path: path(key),
            value: Value::String(value.clone()),
        })
    });
    let removals =
        (adopted.keys()).map(|key| PatchOperation::Remove(RemoveOperation { path: path(key) }));
    json_patch::Patch(tests.chain(removals).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fixtures::{MetadataExt, labels, ns};

    /// The rollback's patch made every managed key absent: a label set on the primary while
    /// attach ran, then taken off by the rollback, was pushed off every remote as well.
    #[test]
    fn unadopting_takes_off_only_what_was_adopted_and_only_as_adopted() {
        let adopted = labels(&[("istio-injection", "enabled")]);
        let since = ns("shop")
            .label("istio-injection", "enabled")
            .label("istio.io/rev", "canary")
            .label("team", "a");
        let mut namespace = serde_json::to_value(since).unwrap();
        json_patch::patch(&mut namespace, &unadoption(&adopted)).unwrap();
        let left = &namespace["metadata"]["labels"];
        assert_eq!(
            *left,
            serde_json::json!({"istio.io/rev": "canary", "team": "a"})
        );
        // Changed since: left as it is.
        let changed = ns("shop").label("istio-injection", "disabled");
        let mut namespace = serde_json::to_value(changed).unwrap();
        assert!(json_patch::patch(&mut namespace, &unadoption(&adopted)).is_err());
    }
}
