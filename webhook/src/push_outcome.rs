//! What a push to a remote did, and the one description of it that warnings, Events, logs and
//! metric labels all take their words from.

use k8s_openapi::jiff::Timestamp;

use mesh_core::labels::{Labels, scope_remedy};
use mesh_core::printable;

/// What every remote must carry after a change on the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushIntent {
    /// Name of the namespace, equal on the primary and the remotes.
    pub namespace: String,
    /// The managed labels remotes must end with; keys absent here are removed there.
    pub labels: Labels,
}

/// How pushing a [`PushIntent`] to one remote ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushResult {
    /// The remote namespace was patched.
    Applied,
    /// The remote namespace already carried the labels; nothing was written.
    AlreadyInSync,
    /// The namespace does not exist on the remote; it is never created.
    NamespaceMissing,
    /// The cluster's namespace scope leaves the namespace alone there; nothing was written.
    OutOfScope,
    /// The remote's apiserver could not be reached.
    Unreachable(String),
    /// The cluster's stored credentials cannot be used (its Secret missing, a kubeconfig the
    /// rule of stored kubeconfigs refuses, not what attach recorded, a server that is another
    /// cluster): nothing was written.
    CredentialsUnusable(String),
    /// The cluster's namespace scope (`spec.scope`) cannot be used: nothing was sent, nor is
    /// anything written there until the scope is corrected.
    ScopeUnusable(String),
    /// The remote refused the stored credentials themselves (401): a token revoked, or expired
    /// (at `expired_at`, by its claims). Nothing was written, and no retry mends it.
    CredentialsRefused {
        message: String,
        expired_at: Option<Timestamp>,
    },
    /// The remote refused what kubectl-mesh's credentials may do (403).
    Forbidden(String),
    /// Any other error answered by the remote.
    Failed(String),
    /// No answer before the webhook's deadline.
    TimedOut,
    /// Not tried: the remote let a push run out its deadline a moment ago and has not answered
    /// since ([`Remote::is_silent`](mesh_core::remote::Remote::is_silent)); the reconciler brings it the change.
    NotWaited,
    /// Not pushed: a newer change of the namespace arrived while this one waited its turn,
    /// and pushes instead.
    Superseded,
    /// Not pushed: the deadline passed while an earlier push of the namespace still ran; the
    /// reconciler brings the change.
    Queued,
    /// Not pushed: the cluster's `MeshCluster` changed (or was attached) a moment ago, and its
    /// client is not built yet for it ([`Snapshot::rebuilding`](mesh_core::remote::Snapshot::rebuilding)); the reconciler brings the
    /// change once it is.
    Reconfiguring,
}

impl PushResult {
    /// Value of the `result` label of push metrics, and of the propagation annotation.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::AlreadyInSync => "in_sync",
            Self::NamespaceMissing => "missing",
            Self::OutOfScope => "out_of_scope",
            Self::Unreachable(_) => "unreachable",
            Self::CredentialsUnusable(_) => "credentials_unusable",
            Self::ScopeUnusable(_) => "scope_unusable",
            // Counted with every refusal, as before 401s were told apart.
            Self::CredentialsRefused { .. } | Self::Forbidden(_) => "forbidden",
            Self::Failed(_) => "failed",
            Self::TimedOut => "timed_out",
            Self::NotWaited => "not_waited",
            Self::Superseded => "superseded",
            Self::Queued => "queued",
            Self::Reconfiguring => "reconfiguring",
        }
    }

    /// Whether the remote now carries the intended labels.
    pub fn is_landed(&self) -> bool {
        matches!(self, Self::Applied | Self::AlreadyInSync)
    }
}

/// The outcome of one push to one remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// Name of the remote (its `MeshCluster`).
    pub cluster: String,
    /// How the push ended.
    pub result: PushResult,
}

impl PushResult {
    /// How a push that did not put the labels on the remote is told; `None` when nothing is
    /// amiss (landed, nothing to write, or nothing to write to).
    pub fn miss(&self) -> Option<Miss<'_>> {
        let (what, next) = match self {
            Self::Applied
            | Self::AlreadyInSync
            | Self::NamespaceMissing
            | Self::OutOfScope
            | Self::Superseded => return None,
            Self::Unreachable(_) => ("unreachable".into(), Next::Retry),
            Self::CredentialsUnusable(_) => (
                "not pushed: its stored credentials cannot be used".into(),
                Next::RepairCredentials,
            ),
            Self::ScopeUnusable(_) => (
                "not pushed: its namespace scope cannot be used".into(),
                Next::FixScope,
            ),
            Self::CredentialsRefused {
                expired_at: Some(at),
                ..
            } => (
                format!("not pushed: its stored token expired at {at:.0}"),
                Next::Rotate,
            ),
            Self::CredentialsRefused { .. } => (
                "not pushed: it refuses the stored credentials".into(),
                Next::RepairCredentials,
            ),
            Self::Forbidden(_) => ("forbids the change".into(), Next::Retry),
            Self::Failed(_) => ("failed".into(), Next::Retry),
            Self::TimedOut => ("did not answer in time".into(), Next::Retry),
            Self::NotWaited => (
                "did not answer the last push, not waited for".into(),
                Next::Retry,
            ),
            Self::Queued => (
                "not pushed: an earlier change of the namespace was still being pushed at the \
                 deadline"
                    .into(),
                Next::Reconciler,
            ),
            // Also a cluster attached a moment ago: its client is built the same way.
            Self::Reconfiguring => (
                "not pushed yet: attached or changed a moment ago, its client is being built"
                    .into(),
                Next::Reconciler,
            ),
        };
        let detail = self.detail();
        Some(Miss { what, detail, next })
    }

    /// What the remote or its credentials said, where a miss has more to tell than its
    /// words: not for an expired token, whose expiry says it all.
    fn detail(&self) -> Option<&str> {
        match self {
            Self::Unreachable(error)
            | Self::CredentialsUnusable(error)
            | Self::ScopeUnusable(error)
            | Self::Forbidden(error)
            | Self::Failed(error)
            | Self::CredentialsRefused {
                message: error,
                expired_at: None,
            } => Some(error),
            Self::CredentialsRefused {
                expired_at: Some(_),
                ..
            }
            | Self::Applied
            | Self::AlreadyInSync
            | Self::NamespaceMissing
            | Self::OutOfScope
            | Self::TimedOut
            | Self::NotWaited
            | Self::Superseded
            | Self::Queued
            | Self::Reconfiguring => None,
        }
    }
}

/// A push that did not put the labels on a remote, as words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss<'a> {
    /// What happened, after the cluster's name: "unreachable", "not pushed: its stored
    /// credentials cannot be used".
    pub what: String,
    /// What the remote or its credentials said, whole: each reader shortens it to its room.
    pub detail: Option<&'a str>,
    /// What brings the change now.
    pub next: Next,
}

impl Miss<'_> {
    /// `<cluster> <what> (<detail>); <next>`, the detail one line of at most `detail_bytes`.
    pub fn line(&self, cluster: &str, detail_bytes: usize) -> String {
        let Self { what, detail, next } = self;
        let detail = detail
            .map(|detail| format!(" ({})", one_short_line(detail, detail_bytes)))
            .unwrap_or_default();
        format!("{cluster} {what}{detail}; {}", next.told(cluster))
    }
}

/// What brings a change a push did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The reconciler retries the cluster; it may land then.
    Retry,
    /// Nothing failed: the reconciler brings the change.
    Reconciler,
    /// No retry lands it until the stored credentials are repaired.
    RepairCredentials,
    /// No retry lands it until `kubectl mesh rotate` stores a new token.
    Rotate,
    /// Nothing is written there until the cluster's scope is corrected.
    FixScope,
}

impl Next {
    /// What to tell about `cluster`.
    pub fn told(self, cluster: &str) -> String {
        match self {
            Self::Retry => "the reconciler will retry".to_owned(),
            Self::Reconciler => "the reconciler brings the change".to_owned(),
            Self::RepairCredentials => "`kubectl mesh check` says how to repair them".to_owned(),
            Self::Rotate => format!("`kubectl mesh rotate {cluster}` issues a new one"),
            Self::FixScope => scope_remedy(cluster),
        }
    }
}

/// `k=v, k2=v2`.
pub fn summary(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a remote said as one short line: warnings and Event notes are single lines (and, as
/// everything a remote said, [`printable::one_line`]).
fn one_short_line(text: &str, bytes: usize) -> String {
    let flat = (printable::one_line(text).split_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    printable::cut(flat, bytes)
}
