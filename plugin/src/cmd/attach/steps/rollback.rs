//! The rollback of a run that failed or was interrupted: what it changed is put back, newest
//! first, and the one line the command fails with says what could not be.

use kube::Client;

use super::Run;
use crate::cmd::attach::{
    adopt,
    objects::{Side, describe},
    step::Step,
    undo::{Change, Undone, left_behind, revoked_note},
    waits::wait_namespace_gone,
};
use crate::{Error, Result, namespace_contents};

impl Run<'_> {
    /// Why a namespace this run created is kept ([`namespace_contents::why_keep`]; its objects
    /// are deleted before it, newest first): someone else may have put something there
    /// meanwhile, e.g. another attach its Istio remote secret in the primary's istio-system.
    /// `None` for any other change, or a namespace that may go.
    async fn why_keep(&self, change: &Change, client: &Client) -> Result<Option<String>> {
        let m = change.manifest();
        if !change.is_creation() || m.resource.kind != "Namespace" {
            return Ok(None);
        }
        // The primary's istio-system is shared by clusters: another's object there counts.
        let primary = match change.side() {
            Side::Remote => Some(self.plan.primary_id.as_str()),
            Side::Primary => None,
        };
        namespace_contents::why_keep(client, &m.name, primary)
            .await
            .map_err(Error::kube(format!(
                "cannot tell what {} holds besides this attach's objects",
                describe(m)
            )))
    }

    /// Puts back what this run changed, newest first, and turns `err` into the one line the
    /// command fails with.
    pub(in crate::cmd::attach) async fn roll_back(&mut self, err: Error) -> Error {
        let step = self.step.map_or("preparation", Step::name);
        let progress = self.progress;
        progress.fail(format!("step {step} failed: {}", err.what()));
        let undo = if self.changes.is_empty() && self.adopted.is_empty() {
            "had changed nothing, so nothing was rolled back"
        } else {
            "was rolled back"
        };
        let revoked = revoked_note(&self.revoked);
        let adopted = std::mem::take(&mut self.adopted);
        // What the rollback could not undo: changes to put back, creations to delete.
        let mut unrestored =
            adopt::unadopt(&self.plan.primary, &self.plan.rule, adopted, progress).await;
        let mut undeleted = Vec::new();
        while let Some(change) = self.changes.pop() {
            let label = self.side_label(change.side()).to_owned();
            let client = self.client(change.side()).clone();
            let m = change.manifest();
            match self.why_keep(&change, &client).await {
                Ok(None) => {}
                Ok(Some(kept)) => {
                    progress.warn(format!("rolled back: {label}: {} {kept}", describe(m)));
                    continue;
                }
                Err(e) => {
                    progress.fail(format!("rollback: {label}: {}", e.what()));
                    undeleted.push(format!("{label}: {}", describe(m)));
                    continue;
                }
            }
            match change.undo(&client).await {
                // Its create was interrupted before the apiserver stored it.
                Ok(Undone::NothingToDo) => {}
                Ok(Undone::Deleted) => {
                    if m.resource.kind == "Namespace" {
                        // Gone for real before the next attach, which would otherwise find
                        // it terminating.
                        if let Err(e) = wait_namespace_gone(&client, &m.name, self.timeout).await {
                            progress.warn(format!("rolled back: {label}: {}", e.what()));
                        }
                    }
                    progress.warn(format!("rolled back: {label}: {} deleted", describe(m)));
                }
                Ok(Undone::Restored) => {
                    progress.warn(format!("rolled back: {label}: {} put back", describe(m)));
                }
                Err(e) => {
                    progress.fail(format!("rollback: {label}: {}", e.what()));
                    let left = if change.is_creation() {
                        &mut undeleted
                    } else {
                        &mut unrestored
                    };
                    left.push(format!("{label}: {}", describe(m)));
                }
            }
        }
        let what = format!(
            "attaching {} failed at step {step} and {undo}{revoked}: {}",
            self.plan.name,
            err.what()
        );
        let hint = if undeleted.is_empty() && unrestored.is_empty() {
            if !self.revoked.is_empty() {
                format!(
                    "{}; then re-run attach with --force to finish the takeover",
                    err.hint()
                )
            } else if err.hint().contains("re-run attach") {
                err.hint()
            } else {
                format!("{}; then re-run attach", err.hint())
            }
        } else {
            format!("{}; {}", err.hint(), left_behind(&undeleted, &unrestored))
        };
        Error::Refused { what, hint }
    }
}
