//! The stages of a detach, in the order [`super`] explains, and what an interruption (Ctrl-C,
//! SIGTERM, SIGHUP) does to them: the stage under way is finished (each leaves the cluster as
//! a re-run expects it: the MeshCluster, deleted last, still names the cluster), then detach
//! stops, saying on one line what is done and what is not, and that the same command run
//! again finishes it. Only waiting is cut short: for the remote's namespace to go (its
//! deletion is asked already, and a re-run waits for it again), and, with --strip-labels, for
//! the deleted guard to let the last label removals through (a re-run strips the rest). What a
//! stage did is said as it did it ([`Outcome`]): the remote's namespace, say, kept.

use crate::{
    Error, Result,
    cmd::attach::{Step, hooks::TestHooks},
    interrupt::Listener,
    output::Progress,
};
use mesh_core::MESH_NAMESPACE;

/// A stage of a detach; interruptions stop it between two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// The remote guard.
    Guard,
    /// The token Secrets (revoking the tokens), the token renewal rights and the
    /// identities' ClusterRoleBindings.
    Tokens,
    /// With --strip-labels, the managed labels of the remote's namespaces.
    Labels,
    /// The sync scope policy and its binding.
    SyncScope,
    /// The identities' ClusterRoles and ServiceAccounts.
    Identities,
    /// The remote's mesh namespace, when attach created it.
    RemoteNamespace,
    /// The primary's Secrets of the cluster, and istio-system when attach created it and it
    /// is empty then (one stage: a re-run without the Istio remote secret would not look).
    PrimarySecrets,
    /// The MeshCluster, last.
    MeshCluster,
}

impl Stage {
    fn on_remote(self) -> bool {
        !matches!(self, Self::PrimarySecrets | Self::MeshCluster)
    }

    /// What the stage is, done.
    fn done(self) -> String {
        match self {
            Self::Guard => "guard deleted".into(),
            Self::Tokens => "tokens revoked".into(),
            Self::Labels => "managed labels stripped".into(),
            Self::SyncScope => "sync scope deleted".into(),
            Self::Identities => "identities deleted".into(),
            Self::RemoteNamespace => format!("namespace {MESH_NAMESPACE} deleted"),
            Self::PrimarySecrets => "stored credentials deleted".into(),
            Self::MeshCluster => "MeshCluster deleted".into(),
        }
    }

    /// What the stage deals with, not done (or, `begun`, asked for but not done).
    fn left(self, begun: bool) -> String {
        match (self, begun) {
            (Self::Guard, _) => "guard".into(),
            (Self::Tokens, _) => "tokens".into(),
            (Self::Labels, _) => "managed labels".into(),
            (Self::SyncScope, _) => "sync scope".into(),
            (Self::Identities, _) => "identities".into(),
            (Self::RemoteNamespace, false) => format!("namespace {MESH_NAMESPACE}"),
            (Self::RemoteNamespace, true) => format!("namespace {MESH_NAMESPACE} (being deleted)"),
            (Self::PrimarySecrets, _) => "stored credentials".into(),
            (Self::MeshCluster, _) => "MeshCluster".into(),
        }
    }

    /// The stage under way, as an interruption says it finishes it.
    fn doing(self) -> String {
        match self {
            Self::Guard => "deleting the guard".into(),
            Self::Tokens => "revoking the tokens".into(),
            // Its retries stop: only the pass under way is finished.
            Self::Labels => "this pass of stripping the managed labels".into(),
            Self::SyncScope => "deleting the sync scope".into(),
            Self::Identities => "deleting the identities".into(),
            Self::RemoteNamespace => format!("deleting namespace {MESH_NAMESPACE}"),
            Self::PrimarySecrets => "deleting the stored credentials".into(),
            Self::MeshCluster => "deleting the MeshCluster".into(),
        }
    }

    /// The step of attach that `KUBECTL_MESH_STALL_IN` names to stall this stage after its
    /// first deletion (stripping labels creates nothing in attach, and has none).
    fn stall_step(self) -> Option<Step> {
        Some(match self {
            Self::Guard => Step::GuardPolicy,
            Self::Tokens => Step::TokenSecret,
            Self::Labels => return None,
            Self::SyncScope => Step::SyncScopePolicy,
            Self::Identities => Step::ServiceAccount,
            Self::RemoteNamespace => Step::RemoteNamespace,
            Self::PrimarySecrets => Step::PrimarySecret,
            Self::MeshCluster => Step::MeshCluster,
        })
    }
}

/// How the work of a stage ended, as [`Stages::run`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Done, as said.
    Done(String),
    /// Asked for: done once [`Stages::wait_end`] has seen it end.
    Asked,
    /// Cut short by an interruption, begun and not done, as said: detach stops there.
    CutShort(String),
}

/// What the work of a stage returns, and how it says that stage ended.
pub(super) trait Outcome {
    fn ended(&self, stage: Stage) -> Ended;
}

/// Work that either does all of its stage or fails.
impl Outcome for () {
    fn ended(&self, stage: Stage) -> Ended {
        Ended::Done(stage.done())
    }
}

/// Why the remote's mesh namespace is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kept {
    /// Attach did not create it: it existed before (its labels do not say attach created it).
    ExistedBefore,
    /// Another primary (the uid of its kube-system) attached the cluster since.
    OtherPrimary(String),
    /// It holds what attach did not create, as said (`it holds ...`, or that what it holds
    /// could not be told).
    Holds(String),
}

/// What the remote's namespace stage did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NamespaceOutcome {
    /// There was none (a re-run after its deletion).
    Gone,
    /// Its deletion is asked (by this run or an earlier one): being deleted.
    Deleting,
    /// Kept, and why.
    Kept(Kept),
}

impl Outcome for NamespaceOutcome {
    fn ended(&self, _: Stage) -> Ended {
        let ns = format!("namespace {MESH_NAMESPACE}");
        match self {
            Self::Gone => Ended::Done(format!("{ns} gone")),
            Self::Deleting => Ended::Asked,
            Self::Kept(why) => Ended::Done(format!("{ns} kept ({})", why.said())),
        }
    }
}

impl Kept {
    /// Why, as the progress line and the interruption say it.
    pub(super) fn said(&self) -> String {
        match self {
            Self::ExistedBefore => "it existed before attach".into(),
            Self::OtherPrimary(uid) => {
                format!("another primary (kube-system uid {uid}) attached this cluster since")
            }
            Self::Holds(what) => what.clone(),
        }
    }
}

/// What stripping the managed labels did: stripped from every namespace the rule covers, or
/// cut short by an interruption while the deleted guard still refused `left` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LabelsOutcome {
    Stripped,
    Interrupted { left: Vec<String> },
}

impl Outcome for LabelsOutcome {
    fn ended(&self, stage: Stage) -> Ended {
        match self {
            Self::Stripped => Ended::Done(stage.done()),
            Self::Interrupted { left } => {
                let s = if left.len() == 1 { "" } else { "s" };
                Ended::CutShort(format!(
                    "managed labels (still on namespace{s} {}, whose removal the deleted guard \
                     refused until the interruption)",
                    and_list(left)
                ))
            }
        }
    }
}

/// The stall hook of a detach's stages, for the work of a stage to call.
#[derive(Clone, Debug)]
pub(super) struct Stall {
    listener: Listener,
    hooks: TestHooks,
    progress: Progress,
}

impl Stall {
    /// When `KUBECTL_MESH_STALL_IN` names `stage`, whose first deletion `deleted` says:
    /// waits as if its answer had not come, until an interruption (which the stage then
    /// finishes past).
    pub(super) async fn after(&self, stage: Stage, deleted: impl FnOnce() -> String) {
        let stalled = self
            .hooks
            .stall_if_in(stage.stall_step(), self.progress, deleted);
        self.listener.unless(stalled).await;
    }

    /// After the `nth` deletion (counted from 0) of a stage that deletes several objects:
    /// [`Self::after`] the first one, nothing after the others.
    pub(super) async fn after_nth(
        &self,
        nth: usize,
        stage: Stage,
        deleted: impl FnOnce() -> String,
    ) {
        if nth == 0 {
            self.after(stage, deleted).await;
        }
    }
}

/// A detach's stages: the ones it plans, those done, and the listening to interruptions.
pub(super) struct Stages {
    cluster: String,
    /// The command that finishes the detach.
    rerun: String,
    planned: Vec<Stage>,
    /// The stages done, each as said.
    done: Vec<(Stage, String)>,
    /// A stage begun and not done, as said: asked for and its end not awaited, or cut short.
    begun: Option<(Stage, String)>,
    listener: Listener,
    hooks: TestHooks,
    progress: Progress,
}

impl Stages {
    /// Listens to interruptions from now on, for a detach of `cluster` by `rerun` that will
    /// go through `planned`.
    pub(super) fn start(
        cluster: &str,
        rerun: String,
        planned: Vec<Stage>,
        hooks: TestHooks,
        progress: Progress,
    ) -> Self {
        Self {
            cluster: cluster.to_owned(),
            rerun,
            planned,
            done: Vec::new(),
            begun: None,
            listener: Listener::start(),
            hooks,
            progress,
        }
    }

    /// Where the stages' work says what it does.
    pub(super) fn progress(&self) -> Progress {
        self.progress
    }

    /// Whether the detach goes through `stage`: one it does not is neither run nor said.
    pub(super) fn planned(&self, stage: Stage) -> bool {
        self.planned.contains(&stage)
    }

    /// The listening to interruptions, for a stage's work that waits.
    pub(super) fn listener(&self) -> &Listener {
        &self.listener
    }

    /// The stall hook, for the stages' work.
    pub(super) fn stall(&self) -> Stall {
        Stall {
            listener: self.listener.clone(),
            hooks: self.hooks,
            progress: self.progress,
        }
    }

    /// Runs `work`, the whole of `stage` (a planned one), unless an interruption came before
    /// it; one that comes meanwhile lets it finish (said at once), and stops the next. The
    /// stage is then done as its [`Outcome`] says; cut short, detach stops here.
    pub(super) async fn run<T: Outcome>(
        &mut self,
        stage: Stage,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        debug_assert!(self.planned(stage), "{stage:?} is not planned");
        self.stop_if_interrupted()?;
        let mut work = std::pin::pin!(work);
        let listener = self.listener.clone();
        let finished = tokio::select! {
            biased;
            finished = &mut work => Some(finished),
            () = listener.signalled() => None,
        };
        let finished = match finished {
            Some(finished) => finished,
            None => {
                self.progress.info(format!(
                    "interrupted: stopping after {}; Ctrl-C is ignored until then",
                    stage.doing()
                ));
                work.await
            }
        }?;
        match finished.ended(stage) {
            Ended::Done(said) => self.done.push((stage, said)),
            Ended::Asked => {}
            Ended::CutShort(said) => {
                self.begun = Some((stage, said));
                return Err(self.interrupted());
            }
        }
        Ok(finished)
    }

    /// `wait`, the end of `stage` (asked for, [`Ended::Asked`]), unless an interruption comes
    /// first: then detach stops, with `stage` under way.
    pub(super) async fn wait_end(
        &mut self,
        stage: Stage,
        wait: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        if let Some(waited) = self.listener.unless(wait).await {
            waited?;
            self.done.push((stage, stage.done()));
            return Ok(());
        }
        self.begun = Some((stage, stage.left(true)));
        Err(self.interrupted())
    }

    /// Stops here, between two stages, when an interruption came.
    pub(super) fn stop_if_interrupted(&self) -> Result<()> {
        if self.listener.received() {
            return Err(self.interrupted());
        }
        Ok(())
    }

    fn interrupted(&self) -> Error {
        let left: Vec<(Stage, String)> = (self.planned.iter())
            .filter(|stage| !self.done.iter().any(|(done, _)| done == *stage))
            .map(|stage| match &self.begun {
                Some((begun, said)) if begun == stage => (*stage, said.clone()),
                _ => (*stage, stage.left(false)),
            })
            .collect();
        interrupted(&self.cluster, &self.done, &left, &self.rerun)
    }
}

/// The error of a detach of `cluster` interrupted with `done` done and `left` not, each as
/// said: what is which, side by side, and that `rerun` finishes it.
fn interrupted(
    cluster: &str,
    done: &[(Stage, String)],
    left: &[(Stage, String)],
    rerun: &str,
) -> Error {
    let sides = |on_remote: bool, stages: Vec<String>| {
        let side = if on_remote { "remote" } else { "primary" };
        (!stages.is_empty()).then(|| format!("the {side}'s {}", and_list(&stages)))
    };
    let by_side = |stages: &[(Stage, String)]| {
        let on = |remote: bool| {
            let on_side = stages
                .iter()
                .filter(|(stage, _)| stage.on_remote() == remote);
            sides(remote, on_side.map(|(_, said)| said.clone()).collect())
        };
        [on(true), on(false)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = if done.is_empty() {
        format!("interrupted before anything of {cluster} was deleted")
    } else {
        format!(
            "interrupted; {cluster} is detached in part: done: {}; not done: {}",
            by_side(done),
            by_side(left)
        )
    };
    Error::Refused {
        what,
        hint: format!("run the same `{rerun}` again to finish it"),
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: [Stage; 8] = [
        Stage::Guard,
        Stage::Tokens,
        Stage::Labels,
        Stage::SyncScope,
        Stage::Identities,
        Stage::RemoteNamespace,
        Stage::PrimarySecrets,
        Stage::MeshCluster,
    ];

    fn line(done: &[Stage], left: &[(Stage, bool)]) -> String {
        let done: Vec<(Stage, String)> = done.iter().map(|s| (*s, s.done())).collect();
        let left: Vec<(Stage, String)> = left.iter().map(|(s, b)| (*s, s.left(*b))).collect();
        said(&done, &left)
    }

    fn said(done: &[(Stage, String)], left: &[(Stage, String)]) -> String {
        interrupted(
            "east",
            done,
            left,
            "kubectl mesh detach east --strip-labels",
        )
        .line()
    }

    /// An interruption once the remote's namespace stage was done said "namespace
    /// kubectl-mesh deleted" even when it was kept (it existed before attach, or holds other
    /// objects), or was only being deleted: the stage says what it did.
    #[test]
    fn the_remote_namespace_is_said_as_the_stage_left_it() {
        let stage = Stage::RemoteNamespace;
        let holds = "it holds objects attach did not create for this cluster (ConfigMap \
                     kubectl-mesh/app)";
        let ended = |outcome: NamespaceOutcome| outcome.ended(stage);
        assert_eq!(
            ended(NamespaceOutcome::Kept(Kept::Holds(holds.into()))),
            Ended::Done(format!("namespace kubectl-mesh kept ({holds})"))
        );
        assert_eq!(
            ended(NamespaceOutcome::Kept(Kept::ExistedBefore)),
            Ended::Done("namespace kubectl-mesh kept (it existed before attach)".into())
        );
        assert_eq!(
            ended(NamespaceOutcome::Kept(Kept::OtherPrimary("uid-b".into()))),
            Ended::Done(
                "namespace kubectl-mesh kept (another primary (kube-system uid uid-b) attached \
                 this cluster since)"
                    .into()
            )
        );
        assert_eq!(
            ended(NamespaceOutcome::Gone),
            Ended::Done("namespace kubectl-mesh gone".into())
        );
        // Done only once it is gone (Stages::wait_end).
        assert_eq!(ended(NamespaceOutcome::Deleting), Ended::Asked);

        let Ended::Done(kept) = ended(NamespaceOutcome::Kept(Kept::ExistedBefore)) else {
            unreachable!()
        };
        let mut done: Vec<(Stage, String)> = [Stage::Guard, Stage::Tokens, Stage::SyncScope]
            .iter()
            .map(|s| (*s, s.done()))
            .collect();
        done.push((stage, kept));
        let said = said(
            &done,
            &[(Stage::MeshCluster, Stage::MeshCluster.left(false))],
        );
        assert!(
            said.contains(
                "done: the remote's guard deleted, tokens revoked, sync scope deleted and \
                 namespace kubectl-mesh kept (it existed before attach); not done: the \
                 primary's MeshCluster;"
            ),
            "{said}"
        );
        assert!(!said.contains("deleted;"), "{said}");
    }

    /// Stripping labels interrupted while the deleted guard still refused some says which
    /// namespaces keep them, among what is not done.
    #[test]
    fn labels_cut_short_are_said_not_done() {
        let stage = Stage::Labels;
        assert_eq!(
            LabelsOutcome::Stripped.ended(stage),
            Ended::Done("managed labels stripped".into())
        );
        let cut = LabelsOutcome::Interrupted {
            left: vec!["shop".into(), "web".into()],
        };
        let Ended::CutShort(left) = cut.ended(stage) else {
            panic!("{cut:?} is done");
        };
        let done: Vec<(Stage, String)> = [Stage::Guard, Stage::Tokens]
            .iter()
            .map(|s| (*s, s.done()))
            .collect();
        let said = said(
            &done,
            &[
                (stage, left),
                (Stage::SyncScope, Stage::SyncScope.left(false)),
            ],
        );
        assert_eq!(
            said,
            "interrupted; east is detached in part: done: the remote's guard deleted and tokens \
             revoked; not done: the remote's managed labels (still on namespaces shop and web, \
             whose removal the deleted guard refused until the interruption) and sync scope; run \
             the same `kubectl mesh detach east --strip-labels` again to finish it"
        );
    }

    /// One line says what is done and what is not, on which side, and the command that
    /// finishes the detach.
    #[test]
    fn an_interruption_says_what_is_done_and_what_is_not_on_each_side() {
        let left: Vec<(Stage, bool)> = EVERY[2..].iter().map(|s| (*s, false)).collect();
        assert_eq!(
            line(&EVERY[..2], &left),
            "interrupted; east is detached in part: done: the remote's guard deleted and \
             tokens revoked; not done: the remote's managed labels, sync scope, identities and \
             namespace kubectl-mesh, the primary's stored credentials and MeshCluster; run the \
             same `kubectl mesh detach east --strip-labels` again to finish it"
        );
        let done = [Stage::Guard, Stage::Tokens, Stage::SyncScope];
        let left = [(Stage::RemoteNamespace, true), (Stage::MeshCluster, false)];
        let said = line(&done, &left);
        assert!(
            said.contains(
                "not done: the remote's namespace kubectl-mesh (being deleted), the primary's \
                 MeshCluster;"
            ),
            "{said}"
        );
        let said = line(&EVERY[..7], &[(Stage::MeshCluster, false)]);
        assert!(
            said.contains(
                "the primary's stored credentials deleted; not done: the primary's MeshCluster;"
            ),
            "{said}"
        );
        assert_eq!(
            line(&[], &[(Stage::Guard, false)]),
            "interrupted before anything of east was deleted; run the same `kubectl mesh \
             detach east --strip-labels` again to finish it"
        );
    }

    /// Every stage that deletes something can be stalled by the test hook, each by its own
    /// step.
    #[test]
    fn every_stage_but_stripping_labels_has_a_step_of_its_own_to_stall_in() {
        let steps: Vec<Step> = EVERY.iter().filter_map(|s| s.stall_step()).collect();
        assert_eq!(steps.len(), EVERY.len() - 1);
        for (i, step) in steps.iter().enumerate() {
            assert!(step.creates(), "{step:?}");
            assert!(!steps[i + 1..].contains(step), "{step:?} twice");
        }
    }
}
