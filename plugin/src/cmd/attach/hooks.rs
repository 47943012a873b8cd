//! Test hooks of attach, compiled in only with the cargo feature `test-hooks` (the e2e tests
//! enable it; `cargo build -p kubectl-mesh` and release builds do not, and then the variables
//! below are ignored).
//!
//! `KUBECTL_MESH_FAIL_AFTER=<step>` ([`FAIL_AFTER_ENV`]) makes attach fail right after that
//! step, so that tests can check the rollback of every stage. It names a step of
//! [`Step::ALL`]; any other value is refused before anything is done.
//! `KUBECTL_MESH_STALL_IN=<step>` ([`STALL_IN_ENV`]) makes the first object that step creates
//! or changes look like a request still waiting for its answer once the apiserver has stored
//! it, so that tests can interrupt attach (Ctrl-C) exactly there. It names a step that creates objects
//! ([`Step::creates`]); a step that creates nothing is refused, as it could never stall.
//! `kubectl mesh scope` stalls the same way in the remote policies it updates
//! (`guard-policy`, `sync-scope-policy`); `kubectl mesh detach` after the first deletion of the
//! stage whose objects that step creates (`token-secret`: the tokens), and `kubectl mesh rotate`
//! after it stores a token Secret (`token-secret`) or the stored kubeconfig (`primary-secret`);
//! in those two, an interruption ends the stall as the late answer would. `kubectl mesh status` stalls before it reads the
//! remotes when it names [`STATUS_READS`], and goes on at SIGUSR1 ([`stall_status`]).

use std::ffi::OsString;

use super::Step;
use crate::{Result, output::Progress};

/// Environment variable of the failure-injection test hook: attach fails right after the
/// step it names (see [`Step::name`]) and rolls back.
pub const FAIL_AFTER_ENV: &str = "KUBECTL_MESH_FAIL_AFTER";

/// Environment variable of the interruption test hook: the first object the named step
/// creates or changes is stored, then attach waits as if the answer had not come.
pub const STALL_IN_ENV: &str = "KUBECTL_MESH_STALL_IN";

/// What attach (or scope) says when the interruption hook stalls it, for a test to wait on.
pub const STALLED: &str = "stalling as if its answer had not come";

/// What `KUBECTL_MESH_STALL_IN` names to stall `kubectl mesh status` before it reads the
/// remotes (no step of attach: status creates nothing).
pub const STATUS_READS: &str = "status-reads";

/// In `status`, before it reads the remotes: when `KUBECTL_MESH_STALL_IN` names
/// [`STATUS_READS`], says [`STALLED`] and waits until the process gets SIGUSR1 (listened to
/// before the line is written), so that a test can change the clusters at that point. Returns
/// at once otherwise, and in a build without the hooks.
pub(crate) async fn stall_status(progress: Progress) {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(STALL_IN_ENV).is_some_and(|step| step == STATUS_READS) {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::user_defined1()) {
            Ok(mut resume) => {
                progress.info(format!(
                    "before reading the remotes; {STALLED} ({STALL_IN_ENV}={STATUS_READS}); \
                     SIGUSR1 goes on"
                ));
                resume.recv().await;
            }
            Err(e) => progress.warn(format!("{STALL_IN_ENV}: cannot listen to SIGUSR1: {e}")),
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = progress;
}

pub(crate) use imp::TestHooks;

impl TestHooks {
    /// The hooks the process environment asks for.
    pub(crate) fn from_env() -> Result<Self> {
        Self::read(|variable| std::env::var_os(variable))
    }
}

#[cfg(feature = "test-hooks")]
mod imp {
    use super::*;
    use crate::Error;

    /// The steps the hooks name.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) struct TestHooks {
        fail_after: Option<Step>,
        stall_in: Option<Step>,
    }

    impl TestHooks {
        /// Reads both hooks through `lookup` (the environment, or a test's own).
        pub(in crate::cmd::attach) fn read(
            lookup: impl Fn(&str) -> Option<OsString>,
        ) -> Result<Self> {
            Ok(Self {
                fail_after: step_named_by(FAIL_AFTER_ENV, lookup(FAIL_AFTER_ENV))?,
                stall_in: able_to_stall(step_named_by(STALL_IN_ENV, lookup(STALL_IN_ENV))?)?,
            })
        }

        /// Fails when the failure hook names `step`, which has just been done.
        pub(in crate::cmd::attach) fn fail_after(&self, step: Step) -> Result<()> {
            if self.fail_after == Some(step) {
                return Err(Error::Refused {
                    what: format!(
                        "injected failure after step {} ({FAIL_AFTER_ENV})",
                        step.name()
                    ),
                    hint: format!("unset {FAIL_AFTER_ENV}: it is a test hook"),
                });
            }
            Ok(())
        }

        /// Whether the stall hook names `step`.
        pub(in crate::cmd::attach) fn stalls_in(&self, step: Option<Step>) -> bool {
            self.stall_in.is_some() && self.stall_in == step
        }

        /// When the stall hook names `step`, whose object `stored` was just created or
        /// changed: says so and never returns (only Ctrl-C ends the run).
        pub(crate) async fn stall_if_in(
            &self,
            step: Option<Step>,
            progress: Progress,
            stored: impl FnOnce() -> String,
        ) {
            if self.stalls_in(step) {
                progress.info(format!("{}; {STALLED} ({STALL_IN_ENV})", stored()));
                std::future::pending::<()>().await;
            }
        }
    }

    /// `step` of the stall hook, if it creates objects: one that creates nothing could never
    /// stall, and a test relying on it would pass without a stall.
    fn able_to_stall(step: Option<Step>) -> Result<Option<Step>> {
        match step {
            Some(step) if !step.creates() => Err(Error::Refused {
                what: format!(
                    "{STALL_IN_ENV}={} names a step that creates nothing",
                    step.name()
                ),
                hint: format!(
                    "use one of: {}, or unset it (it is a test hook)",
                    Step::ALL
                        .into_iter()
                        .filter(|s| s.creates())
                        .map(Step::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            step => Ok(step),
        }
    }

    /// The step `value` names; an unknown name is an error, so a typo cannot make a test pass.
    fn step_named_by(variable: &str, value: Option<OsString>) -> Result<Option<Step>> {
        let Some(value) = value else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        if value.is_empty() {
            return Ok(None);
        }
        Step::parse(&value).map(Some).ok_or_else(|| Error::Refused {
            what: format!("{variable}={value} names no step of attach"),
            hint: format!(
                "use one of: {}, or unset it (it is a test hook)",
                Step::ALL.map(Step::name).join(", ")
            ),
        })
    }
}

#[cfg(not(feature = "test-hooks"))]
mod imp {
    use super::*;

    /// No hooks in this build: whatever the environment says, every step runs normally.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) struct TestHooks;

    impl TestHooks {
        /// Ignores `lookup`: this build has no hooks.
        pub(in crate::cmd::attach) fn read(
            _lookup: impl Fn(&str) -> Option<OsString>,
        ) -> Result<Self> {
            Ok(Self)
        }

        /// Never fails.
        pub(in crate::cmd::attach) fn fail_after(&self, _step: Step) -> Result<()> {
            Ok(())
        }

        /// Never stalls (asked by the tests only: [`Self::stall_if_in`] returns at once).
        #[cfg(test)]
        pub(in crate::cmd::attach) fn stalls_in(&self, _step: Option<Step>) -> bool {
            false
        }

        /// Returns at once.
        pub(crate) async fn stall_if_in(
            &self,
            _step: Option<Step>,
            _progress: Progress,
            _stored: impl FnOnce() -> String,
        ) {
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both variables set to `value`.
    fn both_set_to(value: &'static str) -> impl Fn(&str) -> Option<OsString> {
        move |_| Some(OsString::from(value))
    }

    // Runs in both builds: `cargo test -p kubectl-mesh` proves a build without the feature
    // ignores the variables; with `--features test-hooks` it proves they work.
    #[test]
    fn hooks_act_only_in_a_build_with_the_test_hooks_feature() {
        let enabled = cfg!(feature = "test-hooks");
        let hooks = TestHooks::read(both_set_to("mesh-cluster")).expect("a step of attach");
        assert_eq!(hooks.fail_after(Step::MeshCluster).is_err(), enabled);
        assert!(hooks.fail_after(Step::Token).is_ok());
        assert_eq!(hooks.stalls_in(Some(Step::MeshCluster)), enabled);
        assert!(!hooks.stalls_in(Some(Step::Token)));
        assert!(!hooks.stalls_in(None));
        assert_eq!(
            TestHooks::read(both_set_to("no-such-step")).is_err(),
            enabled
        );
    }

    #[test]
    fn stall_hook_refuses_a_step_that_creates_nothing() {
        let stall_in_token =
            |variable: &str| (variable == STALL_IN_ENV).then(|| OsString::from("token"));
        let read = TestHooks::read(stall_in_token);
        if !cfg!(feature = "test-hooks") {
            assert!(read.is_ok(), "{read:?}");
            return;
        }
        let line = read.expect_err("token creates nothing").line();
        for said in [
            "KUBECTL_MESH_STALL_IN=token names a step that creates nothing",
            "use one of: remote-namespace, service-account,",
        ] {
            assert!(line.contains(said), "{line}");
        }
        assert!(!line.contains("owner-references"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn unset_or_empty_variables_set_no_hook() {
        for hooks in [
            TestHooks::read(|_| None).expect("unset"),
            TestHooks::read(both_set_to("")).expect("empty"),
        ] {
            assert!(Step::ALL.into_iter().all(|s| hooks.fail_after(s).is_ok()));
            assert!(!Step::ALL.into_iter().any(|s| hooks.stalls_in(Some(s))));
        }
    }
}
