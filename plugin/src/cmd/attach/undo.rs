//! What a run of attach changed, and how each change is put back when the run fails: an object
//! it created is deleted, one it updated gets its earlier content back, one it deleted is
//! created again. A re-run with other flags updates and deletes what an earlier attach made;
//! undoing only its creations would leave the remote enforcing flags the MeshCluster never
//! recorded.

use std::time::Duration;

use kube::{
    Client,
    api::{DynamicObject, PostParams},
};
use tokio::time::Instant;

use super::objects::{Side, describe, dyn_api};
use crate::{Error, Result, cmd::apply, render::Manifest, request_timeout::seconds};

/// One change a run made.
pub(super) enum Change {
    /// `m` did not exist.
    Created(Side, Manifest),
    /// `m` existed as `before`, and the run changed it.
    Updated(Side, Manifest, Box<DynamicObject>),
    /// `m` existed as `before`, and the run deleted it.
    Deleted(Side, Manifest, Box<DynamicObject>),
}

/// How a change was put back.
pub(super) enum Undone {
    /// The created object is deleted (a namespace may take a while to go).
    Deleted,
    /// Nothing to do: the create never landed.
    NothingToDo,
    /// The object has its earlier content again, or exists again.
    Restored,
}

impl Change {
    pub(super) fn side(&self) -> Side {
        match self {
            Self::Created(side, _) | Self::Updated(side, ..) | Self::Deleted(side, ..) => *side,
        }
    }

    /// Whether the run created the object (undone by deleting it).
    pub(super) fn is_creation(&self) -> bool {
        matches!(self, Self::Created(..))
    }

    pub(super) fn manifest(&self) -> &Manifest {
        match self {
            Self::Created(_, m) | Self::Updated(_, m, _) | Self::Deleted(_, m, _) => m,
        }
    }

    /// Puts the change back on `client`, the cluster of its side.
    pub(super) async fn undo(&self, client: &Client) -> Result<Undone> {
        match self {
            Self::Created(_, m) => Ok(match apply::delete(client, m).await? {
                apply::Deleted::Deleted => Undone::Deleted,
                apply::Deleted::NotFound => Undone::NothingToDo,
            }),
            Self::Updated(_, m, before) | Self::Deleted(_, m, before) => {
                restore(client, m, before).await.map(|()| Undone::Restored)
            }
        }
    }
}

/// Gives `m` the content `before` again: replaced over what is there now, or created again
/// when it is gone.
async fn restore(client: &Client, m: &Manifest, before: &DynamicObject) -> Result<()> {
    let api = dyn_api(client, m);
    let fail = |e| Error::kube(format!("cannot put back {}", describe(m)))(e);
    let mut earlier = before.clone();
    earlier.metadata.managed_fields = None;
    match api.get_opt(&m.name).await.map_err(fail)? {
        Some(now) => {
            earlier.metadata.resource_version = now.metadata.resource_version;
            api.replace(&m.name, &PostParams::default(), &earlier)
                .await
                .map_err(fail)?;
        }
        None => {
            let meta = &mut earlier.metadata;
            (meta.resource_version, meta.uid, meta.creation_timestamp) = (None, None, None);
            api.create(&PostParams::default(), &earlier)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// `work` if it ends before the rollback's `deadline`; `None` once that has passed, before or
/// while it ran, and then nothing more is asked of a cluster that may not answer at all.
pub(super) async fn by_deadline<F: Future>(deadline: Instant, work: F) -> Option<F::Output> {
    if Instant::now() >= deadline {
        return None;
    }
    tokio::time::timeout_at(deadline, work).await.ok()
}

/// Why a rollback under attach's `--timeout` of `timeout` left a change as it was.
pub(super) fn out_of_time(timeout: Duration) -> String {
    format!("the rollback ran past --timeout ({})", seconds(timeout))
}

/// What a hint says to run last: after a takeover whose revocations stand (`takeover`), only
/// an attach with --force finishes it.
pub(super) fn re_run(takeover: bool) -> &'static str {
    if takeover {
        "re-run attach with --force to finish the takeover"
    } else {
        "re-run attach"
    }
}

/// What the hint says of what a rollback could not undo: objects it created are deleted by
/// hand, those still there (a deletion the deadline cut off may have landed); what it changed is set again by an attach with the flags that made it (deleting a
/// changed sync scope by hand would leave the stored token unconfined).
pub(super) fn left_behind(undeleted: &[String], unrestored: &[String], takeover: bool) -> String {
    let mut parts = Vec::new();
    if !undeleted.is_empty() {
        parts.push(format!(
            "the rollback left {} behind: delete those still there by hand",
            undeleted.join(", ")
        ));
    }
    if unrestored.is_empty() {
        parts.push(format!("then {}", re_run(takeover)));
    } else {
        let force = if takeover { " and --force" } else { "" };
        parts.push(format!(
            "the rollback could not put back {}: re-run attach with the flags it was last \
             attached with{force}, which sets them again",
            unrestored.join(", ")
        ));
    }
    parts.join("; ")
}

/// What the error line adds when `--force` revoked other primaries' tokens (their kube-system
/// UIDs): a rollback cannot issue them again, so that primary no longer syncs the cluster.
pub(super) fn revoked_note(revoked: &[String]) -> String {
    match revoked {
        [] => String::new(),
        uids => format!(
            ", but the tokens of the primary with kube-system uid {} stay revoked (--force): \
             it can no longer sync this cluster",
            uids.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change the rollback could not put back was to be deleted by hand, as a creation is:
    /// for the sync scope that leaves the stored token unconfined.
    #[test]
    fn what_a_rollback_left_says_how_to_undo_each_kind() {
        let created = ["remote: ClusterRole kubectl-mesh-sync".to_owned()];
        let changed = ["remote: ValidatingAdmissionPolicy kubectl-mesh-sync-scope".to_owned()];
        assert_eq!(
            left_behind(&created, &[], false),
            "the rollback left remote: ClusterRole kubectl-mesh-sync behind: delete those \
             still there by hand; then re-run attach"
        );
        let both = left_behind(&created, &changed, false);
        assert!(
            both.starts_with("the rollback left remote: ClusterRole"),
            "{both}"
        );
        assert!(
            both.ends_with(
                "could not put back remote: ValidatingAdmissionPolicy kubectl-mesh-sync-scope: \
                 re-run attach with the flags it was last attached with, which sets them again"
            ),
            "{both}"
        );
        assert!(!left_behind(&[], &changed, false).contains("by hand"));
    }

    /// After a takeover whose revocations stand, a re-run without --force is refused (another
    /// primary's objects are there): the hint said "then re-run attach" whenever something
    /// was left.
    #[test]
    fn what_a_rollback_of_a_takeover_left_says_to_re_run_with_force() {
        let created = ["remote: ClusterRole kubectl-mesh-sync".to_owned()];
        let changed = ["remote: ValidatingAdmissionPolicy kubectl-mesh-sync-scope".to_owned()];
        assert!(
            left_behind(&created, &[], true)
                .ends_with("then re-run attach with --force to finish the takeover")
        );
        let both = left_behind(&created, &changed, true);
        assert!(
            both.ends_with("attached with and --force, which sets them again"),
            "{both}"
        );
    }
}
