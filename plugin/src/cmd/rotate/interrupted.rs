//! What an interrupted rotation (Ctrl-C, SIGTERM, SIGHUP) says. Rotate stops between two of
//! its writes, never within one, and a wait ends at once: as the rotation deletes a token
//! Secret only while the stored kubeconfig holds another token in use, every such point leaves
//! a working stored token, and a re-run goes on from what it finds. The line says which token
//! is stored, whether the old one is revoked yet, and what running rotate again does.

use mesh_core::MESH_NAMESPACE;

use super::{DEFAULT_TIMEOUT, Holder, Rotate};
use crate::{Context, Error, interrupt::Rerun, remote_setup as setup};

/// How far one identity's rotation got when it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The token stored before the rotation still is; with `standby_issued`, a new one was
    /// issued in the standby Secret, and not stored; `expired`: the stored one has expired.
    Unchanged { standby_issued: bool, expired: bool },
    /// The standby's token is stored; the old one, the own Secret's, is not revoked.
    OnStandby,
    /// The old token is revoked; the standby's is stored.
    Revoked,
    /// The own Secret's new token is stored; the standby's is not revoked yet.
    Back,
}

/// Where one identity's rotation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stopped {
    pub(super) holder: Holder,
    pub(super) phase: Phase,
    /// Whether the old token (the own Secret's before the rotation) still worked: `None` when
    /// that cannot be told (a time-bound token whose expiry this run did not see).
    pub(super) old_works: Option<bool>,
}

/// A rotation interrupted where `stopped` says, in cluster `cluster`, after the tokens of
/// `rotated` (and before those of `later`); with `--all`, after the clusters `clusters_done`
/// and before `clusters_left`; `rerun` finishes it ([`rerun`]).
pub(super) struct Interruption<'a> {
    pub(super) cluster: &'a str,
    pub(super) stopped: Stopped,
    pub(super) rotated: &'a [Holder],
    pub(super) later: &'a [Holder],
    pub(super) rerun: &'a str,
    pub(super) clusters_done: &'a [String],
    pub(super) clusters_left: &'a [String],
}

impl Interruption<'_> {
    /// The error rotate fails with: one line.
    pub(super) fn error(&self) -> Error {
        let Stopped {
            holder,
            phase,
            old_works,
        } = self.stopped;
        let account = format!("ServiceAccount {MESH_NAMESPACE}/{}", holder.account());
        let own = format!("Secret {MESH_NAMESPACE}/{}", holder.token_secret());
        let standby = format!(
            "Secret {MESH_NAMESPACE}/{}",
            setup::standby_secret(holder.token_secret())
        );
        let (now, purpose) = match phase {
            Phase::Unchanged {
                standby_issued,
                expired,
            } => {
                let stored = if expired {
                    format!("the stored token of {account} is unchanged, and has expired")
                } else {
                    format!("the stored token of {account} is unchanged and valid")
                };
                let issued = if standby_issued {
                    format!("; a new one issued in {standby} is not stored (a re-run revokes it)")
                } else {
                    String::new()
                };
                let purpose = if expired { "replace it" } else { "rotate it" };
                (format!("{stored}{issued}"), purpose)
            }
            Phase::OnStandby => {
                let old = match old_works {
                    Some(true) => "is not revoked yet, and still valid",
                    Some(false) => "had expired, and is not revoked yet",
                    None => "is not revoked yet",
                };
                (
                    format!(
                        "the new token of {account} ({standby}) is stored and valid; the old \
                         one ({own}) {old}"
                    ),
                    "revoke it",
                )
            }
            Phase::Revoked => (
                format!(
                    "the old token of {account} is revoked, and the one stored ({standby}) is \
                     valid"
                ),
                "finish the rotation",
            ),
            Phase::Back => (
                format!(
                    "the old token of {account} is revoked and the new one ({own}) stored and \
                     valid; the standby one ({standby}) is not revoked yet, and still valid"
                ),
                "revoke it",
            ),
        };
        let tokens = |holders: &[Holder]| {
            let accounts: Vec<&str> = holders.iter().map(|h| h.account()).collect();
            let s = if holders.len() > 1 { "s" } else { "" };
            format!("the token{s} of {}", accounts.join(", "))
        };
        let mut said = vec!["interrupted".to_owned()];
        if !self.clusters_done.is_empty() {
            said.push(format!("{} rotated", self.clusters_done.join(", ")));
        }
        let mut in_cluster = Vec::new();
        if !self.rotated.is_empty() {
            in_cluster.push(format!("{} rotated", tokens(self.rotated)));
        }
        in_cluster.push(now);
        if !self.later.is_empty() {
            in_cluster.push(format!("{} not rotated yet", tokens(self.later)));
        }
        said.push(format!("{}: {}", self.cluster, in_cluster.join("; ")));
        if !self.clusters_left.is_empty() {
            said.push(format!("{} not rotated yet", self.clusters_left.join(", ")));
        }
        let rest = !self.later.is_empty() || !self.clusters_left.is_empty();
        let purpose = match (phase, rest) {
            (Phase::Unchanged { .. }, true) => "rotate them".to_owned(),
            (_, true) => format!("{purpose} and rotate the rest"),
            (_, false) => purpose.to_owned(),
        };
        Error::Refused {
            what: said.join("; "),
            hint: format!("run `{}` again to {purpose}", self.rerun),
        }
    }
}

/// The rotate that finishes an interrupted `rotate`, run with `ctx`: the cluster or --all, and
/// every flag that decides what it reaches and how long it waits. Without the remote's
/// kubeconfig or context given, a re-run would not reach the remote.
pub(super) fn rerun(rotate: &Rotate, ctx: &Context) -> String {
    let command = Rerun::new("rotate");
    let command = match &rotate.name {
        Some(name) if !rotate.all => command.word(name),
        _ => command.flag("--all", true),
    };
    command
        .remote_admin(&rotate.remote_admin)
        .timeout(rotate.timeout, DEFAULT_TIMEOUT)
        .primary(ctx)
        .line()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(phase: Phase, old_works: Option<bool>) -> String {
        interrupted(phase, old_works, &[], &[]).error().line()
    }

    fn interrupted<'a>(
        phase: Phase,
        old_works: Option<bool>,
        rotated: &'a [Holder],
        later: &'a [Holder],
    ) -> Interruption<'a> {
        Interruption {
            cluster: "east",
            stopped: Stopped {
                holder: Holder::Sync,
                phase,
                old_works,
            },
            rotated,
            later,
            rerun: "kubectl mesh rotate east",
            clusters_done: &[],
            clusters_left: &[],
        }
    }

    /// Stopped after the new token is stored and before the old one is revoked, rotate says
    /// that the old one is still valid and that a re-run revokes it; it never says so of one
    /// that had expired.
    #[test]
    fn stopped_before_the_revocation_it_says_the_old_token_is_still_valid() {
        assert_eq!(
            line(Phase::OnStandby, Some(true)),
            "interrupted; east: the new token of ServiceAccount kubectl-mesh/kubectl-mesh-sync \
             (Secret kubectl-mesh/kubectl-mesh-sync-token-standby) is stored and valid; the old \
             one (Secret kubectl-mesh/kubectl-mesh-sync-token) is not revoked yet, and still \
             valid; run `kubectl mesh rotate east` again to revoke it"
        );
        let expired = line(Phase::OnStandby, Some(false));
        assert!(
            expired.contains("had expired, and is not revoked yet"),
            "{expired}"
        );
        assert!(!expired.contains("still valid"), "{expired}");
        let unknown = line(Phase::OnStandby, None);
        assert!(
            unknown.contains("token) is not revoked yet; run"),
            "{unknown}"
        );
    }

    /// Every phase says which token is stored and valid, and what a re-run does.
    #[test]
    fn every_phase_says_what_is_stored_and_what_a_re_run_does() {
        let unchanged = |standby_issued, expired| Phase::Unchanged {
            standby_issued,
            expired,
        };
        let said = line(unchanged(false, false), Some(true));
        assert_eq!(
            said,
            "interrupted; east: the stored token of ServiceAccount \
             kubectl-mesh/kubectl-mesh-sync is unchanged and valid; run `kubectl mesh rotate \
             east` again to rotate it"
        );
        let said = line(unchanged(true, false), Some(true));
        assert!(
            said.contains(
                "; a new one issued in Secret kubectl-mesh/kubectl-mesh-sync-token-standby is \
                 not stored (a re-run revokes it);"
            ),
            "{said}"
        );
        let said = line(unchanged(false, true), Some(false));
        assert!(said.contains("is unchanged, and has expired;"), "{said}");
        assert!(said.ends_with("again to replace it"), "{said}");
        let said = line(Phase::Revoked, Some(true));
        assert!(
            said.contains("is revoked, and the one stored (Secret kubectl-mesh/kubectl-mesh-sync-token-standby) is valid;"),
            "{said}"
        );
        assert!(said.ends_with("again to finish the rotation"), "{said}");
        let said = line(Phase::Back, Some(true));
        assert!(
            said.contains("the standby one (Secret kubectl-mesh/kubectl-mesh-sync-token-standby) is not revoked yet, and still valid;"),
            "{said}"
        );
        assert!(said.ends_with("again to revoke it"), "{said}");
    }

    /// The rotate an interruption says to run again for `args`, checked to parse back.
    fn rerun_of(args: &[&str]) -> String {
        crate::interrupt::rerun_parsed_back(args, |command, ctx| {
            let crate::Command::Rotate(rotate) = command else {
                panic!("{args:?}: not a rotate");
            };
            rerun(rotate, ctx)
        })
    }

    /// An interrupted `rotate east --remote-kubeconfig F` said to run `rotate east`, which
    /// cannot reach the remote without it. The rotate to run again is the same one: the
    /// remote's kubeconfig and context, a --timeout given and the primary's flags, quoted.
    #[test]
    fn the_rotate_to_run_again_is_the_same_command() {
        assert_eq!(
            rerun_of(&[
                "rotate",
                "east",
                "--remote-kubeconfig",
                "/tmp/my kubeconfigs/east.yaml",
                "--remote-context",
                "admin@east",
                "--timeout",
                "5s",
                "--context",
                "main",
            ]),
            "kubectl mesh rotate east --remote-kubeconfig '/tmp/my kubeconfigs/east.yaml' \
             --remote-context admin@east --timeout 5s --context main"
        );
        assert_eq!(rerun_of(&["rotate", "east"]), "kubectl mesh rotate east");
        assert_eq!(
            rerun_of(&[
                "--kubeconfig",
                "/p.yaml",
                "rotate",
                "--all",
                "--timeout",
                "2m"
            ]),
            "kubectl mesh rotate --all --timeout 120s --kubeconfig /p.yaml"
        );
        // The hint of the line is that command.
        let said = rerun_of(&["rotate", "east", "--remote-kubeconfig", "e.yaml"]);
        let mut stopped = interrupted(Phase::Revoked, Some(true), &[], &[]);
        stopped.rerun = &said;
        assert!(
            stopped.error().line().ends_with(
                "run `kubectl mesh rotate east --remote-kubeconfig e.yaml` again to finish the \
                 rotation"
            ),
            "{}",
            stopped.error().line()
        );
    }

    /// What else the run rotated and did not is said too, and `--all` is what is run again.
    #[test]
    fn the_other_identities_and_clusters_are_said_too() {
        let later = [Holder::View, Holder::Istio];
        let mut stopped = interrupted(Phase::OnStandby, Some(true), &[], &later);
        let said = stopped.error().line();
        assert!(
            said.contains(
                "; the tokens of kubectl-mesh-view, kubectl-mesh-istio-reader not rotated yet;"
            ),
            "{said}"
        );
        assert!(
            said.ends_with("again to revoke it and rotate the rest"),
            "{said}"
        );
        let (done, left) = (["west".to_owned()], ["north".to_owned()]);
        stopped.stopped.holder = Holder::View;
        stopped.stopped.phase = Phase::Unchanged {
            standby_issued: false,
            expired: false,
        };
        stopped.rotated = &[Holder::Sync];
        stopped.later = &[];
        stopped.rerun = "kubectl mesh rotate --all";
        stopped.clusters_done = &done;
        stopped.clusters_left = &left;
        assert_eq!(
            stopped.error().line(),
            "interrupted; west rotated; east: the token of kubectl-mesh-sync rotated; the \
             stored token of ServiceAccount kubectl-mesh/kubectl-mesh-view is unchanged and \
             valid; north not rotated yet; run `kubectl mesh rotate --all` again to rotate them"
        );
    }
}
