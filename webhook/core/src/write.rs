//! THE remote label writer: one conditional write of a namespace's managed labels, with one
//! retry after a conflict (a push's refused bet, below, is not one: the read-diff-write it
//! falls back to gets its own retry). The webhook's push, the reconciler's sync and `detach
//! --strip-labels` (a sync against an empty primary) all write through it.
//!
//! Every write is a JSON patch the apiserver applies only if the remote is still as the writer
//! believes: the resourceVersion it read ([`LabelDiff::to_json_patch`]), or the managed labels the
//! primary had before a change ([`SyncRule::guarded_patch`]; only those it carried: JSON Patch
//! cannot test that a key is absent, so a push from no managed labels is applied whatever the
//! remote holds, and a later sync corrects a push that landed late). A refused patch means
//! someone wrote in between; the namespace is read again, the desired labels asked for again
//! ([`Desired::again`]: the primary may have moved on too), and one more write is tried.

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use crate::{
    FIELD_MANAGER,
    failure::{Failure, error_chain},
    labels::{LabelDiff, Labels, SyncRule},
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

/// The managed labels the namespace must carry, as the writer asks for them.
pub trait Desired {
    /// Before the first write.
    fn labels(&self) -> Labels;

    /// After a conflict, once the namespace was read again: what moved the remote on may be a
    /// newer primary (a webhook push), so a caller whose [`Desired::labels`] can be older than
    /// that (a primary listed once) reads it again. A failed read ends the write.
    fn again(&self) -> impl Future<Output = kube::Result<Labels>> + Send {
        std::future::ready(Ok(self.labels()))
    }
}

/// Labels that cannot be older than the remote (a push's own change, an empty primary).
impl<F: Fn() -> Labels> Desired for F {
    fn labels(&self) -> Labels {
        self()
    }
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
    /// The remote's scope leaves the namespace alone; nothing was written.
    OutOfScope,
    /// The remote refused or did not answer; `diff` is the change attempted, when one was.
    Failed {
        failure: Failure,
        message: String,
        diff: Option<LabelDiff>,
        /// The resourceVersion of the remote namespace whose patch of `diff` was refused with
        /// an answer the same patch of it unchanged would get again (an admission policy's
        /// denial, rights the credentials lack); none for any other failure.
        refused_at: Option<String>,
    },
}

/// Makes the managed labels of namespace `name` on the remote behind `api` equal `desired`'s.
pub async fn write_managed_labels(
    api: &Api<Namespace>,
    rule: &SyncRule,
    name: &str,
    desired: impl Desired,
    known: Known<'_>,
) -> Written {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    if rule.is_excluded(name) {
        return Written::OutOfScope;
    }
    let mut current = match known {
        Known::Read(namespace) => Some(*namespace),
        Known::Nothing => None,
        // A selector is matched against the namespace as read, and the write is conditional
        // on that read: a bet without reading could write a namespace out of scope.
        Known::Expecting { .. } if rule.selects_by_labels() => None,
        Known::Expecting { labels, refused } => {
            let want = desired.labels();
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
                    _ => return failed(&error, None, None),
                },
            }
        }
    };
    let mut retried = false;
    // The write a conflict refused, until the labels are asked for again.
    let mut conflicted = None;
    // The version of the namespace that write was refused at.
    let mut conflicted_at = None;
    loop {
        let namespace = match current.take() {
            Some(namespace) => namespace,
            None => match api.get_opt(name).await {
                Ok(Some(namespace)) => namespace,
                Ok(None) => return Written::Missing,
                Err(error) => return failed(&error, None, None),
            },
        };
        if !rule.covers(&namespace) {
            return Written::OutOfScope;
        }
        let want = match conflicted.take() {
            None => desired.labels(),
            Some(attempted) => match desired.again().await {
                Ok(want) => want,
                Err(error) => {
                    return Written::Failed {
                        failure: Failure::of(&error),
                        message: format!(
                            "cannot read the primary's namespace again: {}",
                            error_chain(&error)
                        ),
                        diff: Some(attempted),
                        refused_at: None,
                    };
                }
            },
        };
        let diff = rule.diff(&want, &namespace);
        if diff.is_empty() {
            return Written::AlreadyInSync;
        }
        let patch = diff.to_json_patch(&namespace);
        match api.patch(name, &params, &Patch::Json::<()>(patch)).await {
            Ok(_) => return Written::Applied { diff },
            Err(error) if !retried && Failure::of(&error) == Failure::Conflict => {
                tracing::debug!(namespace = %name, "remote namespace changed under us, reading it again");
                retried = true;
                conflicted = Some(diff);
                conflicted_at = namespace.metadata.resource_version;
            }
            Err(error) if Failure::of(&error) == Failure::NotFound => return Written::Missing,
            Err(error) => {
                // A 422 again, of a namespace nobody wrote in between, was no failed `test`
                // of its version: the remote refuses the labels (an admission policy).
                let raced = retried && conflicted_at != namespace.metadata.resource_version;
                // Keyed by the version patched: after a conflict, the one read again.
                let refused_at = lasting(&error, raced)
                    .then(|| namespace.metadata.resource_version.clone())
                    .flatten();
                return failed(&error, Some(diff), refused_at);
            }
        }
    }
}

/// How a call failed; `diff` the change attempted, when one was.
fn failed(error: &kube::Error, diff: Option<LabelDiff>, refused_at: Option<String>) -> Written {
    Written::Failed {
        failure: Failure::of(error),
        message: error_chain(error),
        diff,
        refused_at,
    }
}

/// Whether a patch refused with `error` would be refused again unchanged: a 4xx other than
/// a timeout, conflict or rate limit. Not a 401 (the client refreshes its token, no Secret
/// changes), nor a 422 `raced` by another writer (a `test` of a namespace still being
/// written).
fn lasting(error: &kube::Error, raced: bool) -> bool {
    matches!(error, kube::Error::Api(status)
        if (400..500).contains(&status.code)
            && ![401, 408, 409, 429].contains(&status.code)
            && !(raced && status.code == 422))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;
    use crate::{cluster::NamespaceScope, fake_apiserver::FakeApiserver, fixtures::labels};

    fn unowned_by_platform() -> NamespaceScope {
        NamespaceScope {
            exclude_namespaces: vec!["gateways".into()],
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "platform/owned".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                }]),
                match_labels: None,
            }),
        }
    }

    fn counts(remote: &FakeApiserver) -> (usize, usize) {
        let state = remote.0.lock().expect("lock");
        (state.gets, state.patches)
    }

    #[tokio::test]
    async fn a_selector_scope_reads_first_and_spares_what_it_does_not_select() {
        let remote = FakeApiserver::default()
            .with_namespace(
                "infra",
                &[("platform/owned", "yes"), ("istio-injection", "enabled")],
            )
            .with_namespace("shop", &[]);
        let rule = SyncRule::default().within(&unowned_by_platform()).unwrap();
        let api = Api::all(remote.client());
        let refused = AtomicBool::new(false);
        let before = labels(&[("istio-injection", "enabled")]);
        let bet = Known::Expecting {
            labels: &before,
            refused: &refused,
        };
        let written = write_managed_labels(&api, &rule, "infra", Labels::new, bet).await;
        assert!(matches!(written, Written::OutOfScope), "{written:?}");
        assert_eq!(counts(&remote), (1, 0), "read, never patched");

        let none = Labels::new();
        let bet = Known::Expecting {
            labels: &none,
            refused: &refused,
        };
        let wanted = || labels(&[("istio-injection", "enabled")]);
        let written = write_managed_labels(&api, &rule, "shop", wanted, bet).await;
        assert!(matches!(written, Written::Applied { .. }), "{written:?}");
        assert_eq!(
            counts(&remote),
            (2, 1),
            "read first, then one conditional patch"
        );
    }

    #[tokio::test]
    async fn a_namespace_excluded_by_name_is_never_asked_for() {
        let remote =
            FakeApiserver::default().with_namespace("gateways", &[("istio-injection", "enabled")]);
        let rule = SyncRule::default().within(&unowned_by_platform()).unwrap();
        let api = Api::all(remote.client());
        let written =
            write_managed_labels(&api, &rule, "gateways", Labels::new, Known::Nothing).await;
        assert!(matches!(written, Written::OutOfScope), "{written:?}");
        assert_eq!(counts(&remote), (0, 0));
    }

    /// A `test` failing again after a conflict is a namespace still being written, not a
    /// refusal for good.
    #[tokio::test]
    async fn a_second_conflict_is_not_a_lasting_refusal() {
        let remote = FakeApiserver::default().with_namespace("shop", &[]);
        remote.state().interfere = vec![("team".into(), "a".into()), ("team".into(), "b".into())];
        let api = Api::all(remote.client());
        let wanted = || labels(&[("istio-injection", "enabled")]);
        let written =
            write_managed_labels(&api, &SyncRule::default(), "shop", wanted, Known::Nothing).await;
        assert!(
            matches!(
                written,
                Written::Failed {
                    failure: Failure::Conflict,
                    refused_at: None,
                    ..
                }
            ),
            "{written:?}"
        );
        assert_eq!(
            counts(&remote),
            (2, 2),
            "read, patched, read again, patched"
        );
    }

    /// An admission policy that sets no reason refuses with a 422, as a failed `test` does:
    /// refused again at the version read again, which nobody wrote, it is a refusal for good,
    /// not a conflict to try at every sync.
    #[tokio::test]
    async fn a_422_again_at_an_unchanged_version_is_a_lasting_refusal() {
        let remote = FakeApiserver::default().with_namespace("shop", &[]);
        remote.state().invalid_namespaces.insert("shop".to_owned());
        let api = Api::all(remote.client());
        let wanted = || labels(&[("istio-injection", "enabled")]);
        let written =
            write_managed_labels(&api, &SyncRule::default(), "shop", wanted, Known::Nothing).await;
        let Written::Failed { refused_at, .. } = &written else {
            panic!("{written:?}");
        };
        assert!(refused_at.is_some(), "{written:?}");
        assert_eq!(
            counts(&remote),
            (2, 2),
            "read, patched, read again, patched"
        );
    }

    /// A 401 passes once the client refreshed its token, which no Secret change announces.
    #[test]
    fn an_unauthorized_patch_is_not_a_lasting_refusal() {
        let error = |code| {
            let status = kube::core::Status::failure("no", "Reason").with_code(code);
            kube::Error::Api(status.boxed())
        };
        assert!(!lasting(&error(401), false));
        assert!(lasting(&error(403), false));
        assert!(lasting(&error(403), true));
    }
}
