//! THE remote label writer: one conditional write of a namespace's managed labels, with one
//! retry after a conflict. The webhook's push, the reconciler's sync and `detach
//! --strip-labels` (a sync against an empty primary) all write through it.
//!
//! Every write is a JSON patch the apiserver applies only if the remote is still as the writer
//! believes: the resourceVersion it read ([`LabelDiff::to_json_patch`]), or the managed labels the
//! primary had before a change ([`SyncRule::guarded_patch`]). A refused patch means someone wrote
//! in between; the namespace is read again, the desired labels asked for again (the primary may
//! have moved on too), and one more write is tried.

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use crate::{
    FIELD_MANAGER,
    labels::{LabelDiff, Labels, SyncRule},
    remote::{Failure, error_chain},
};

/// What the writer knows of the remote namespace before it writes.
pub enum Known<'a> {
    /// Nothing: read it first.
    Nothing,
    /// The namespace as just read (a sync's LIST).
    Read(Box<Namespace>),
    /// A bet: the remote carries `labels`, the managed labels the primary had before the change
    /// (true of every converged remote). One guarded patch, no read; when the remote refuses the
    /// bet, `refused` is set before the read starts (so a deadline cutting the push short still
    /// tells) and the write goes on as with [`Known::Nothing`].
    Expecting {
        labels: &'a Labels,
        refused: &'a AtomicBool,
    },
}

/// How one write ended.
#[derive(Debug)]
pub enum Written {
    /// The managed labels now equal the desired ones; `diff` is what changed.
    Applied { diff: LabelDiff },
    /// The remote already carried them.
    AlreadyInSync,
    /// The namespace does not exist on the remote (or went away while being written).
    Missing,
    /// The remote refused or did not answer; `diff` is the change attempted, when one was.
    Failed {
        failure: Failure,
        message: String,
        diff: Option<LabelDiff>,
    },
}

/// Makes the managed labels of namespace `name` on the remote behind `api` equal `desired()`.
/// `desired` is called again after a conflict, so that a caller reading the primary answers with
/// what is true then.
pub async fn write_managed_labels(
    api: &Api<Namespace>,
    rule: &SyncRule,
    name: &str,
    desired: impl Fn() -> Labels,
    known: Known<'_>,
) -> Written {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let mut current = match known {
        Known::Read(namespace) => Some(*namespace),
        Known::Nothing => None,
        Known::Expecting { labels, refused } => {
            let want = desired();
            let patch = rule.guarded_patch(labels, &want);
            match api.patch(name, &params, &Patch::Json::<()>(patch)).await {
                Ok(_) => {
                    return Written::Applied {
                        diff: LabelDiff::between(rule, name, labels, &want),
                    };
                }
                Err(error) => match Failure::of(&error) {
                    // Refused bet (a failed `test` is a 422), or anything the read path may
                    // explain better.
                    Failure::Conflict | Failure::Other => {
                        tracing::debug!(namespace = %name, error = %error_chain(&error), "remote not in the expected state, reading it");
                        refused.store(true, Ordering::Relaxed);
                        None
                    }
                    Failure::NotFound => return Written::Missing,
                    _ => return failed(&error, None),
                },
            }
        }
    };
    let mut retried = false;
    loop {
        let namespace = match current.take() {
            Some(namespace) => namespace,
            None => match api.get_opt(name).await {
                Ok(Some(namespace)) => namespace,
                Ok(None) => return Written::Missing,
                Err(error) => return failed(&error, None),
            },
        };
        let diff = rule.diff(&desired(), &namespace);
        if diff.is_empty() {
            return Written::AlreadyInSync;
        }
        let patch = diff.to_json_patch(&namespace);
        match api.patch(name, &params, &Patch::Json::<()>(patch)).await {
            Ok(_) => return Written::Applied { diff },
            Err(error) if !retried && Failure::of(&error) == Failure::Conflict => {
                tracing::debug!(namespace = %name, "remote namespace changed under us, reading it again");
                retried = true;
            }
            Err(error) if Failure::of(&error) == Failure::NotFound => return Written::Missing,
            Err(error) => return failed(&error, Some(diff)),
        }
    }
}

fn failed(error: &kube::Error, diff: Option<LabelDiff>) -> Written {
    Written::Failed {
        failure: Failure::of(error),
        message: error_chain(error),
        diff,
    }
}
