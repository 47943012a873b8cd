//! What a soak run recorded: every operation and its result, every fault, every namespace as
//! each cluster's watch showed it, the Lease's holders, each replica's writes to remotes as its
//! log states them, and the clusters as listed once the faults stopped. The checker reads
//! nothing else. Times are milliseconds since the run started, on this machine's clock (the
//! webhook replicas run on the same machine, so their log timestamps are comparable).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the run started.
pub type Ms = u64;

/// Index of a cluster in [`History::clusters`]: 0 is the primary, then the remotes.
pub type ClusterIx = usize;

pub const PRIMARY: ClusterIx = 0;

/// A namespace as one observation showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsState {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// The fields the mesh's field manager owns, as paths (`f:metadata/f:labels/f:key`), from
    /// the apiserver's managedFields.
    pub mesh_fields: Vec<String>,
}

/// One change a cluster's namespace watch delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observed {
    Seen(NsState),
    /// Deleted, or absent from a relist after the watch reconnected.
    Gone,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub at: Ms,
    pub cluster: ClusterIx,
    pub name: String,
    pub observed: Observed,
    /// Part of the first listing, before the run's operations started.
    pub initial: bool,
}

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// `kubectl label ns` of managed labels: set these, remove those (label, relabel, remove,
    /// and a switch between `istio-injection` and `istio.io/rev` in one edit).
    Label {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// The same with `--dry-run=server`: nothing may change anywhere.
    DryRun {
        set: BTreeMap<String, String>,
    },
    /// A managed-label value the primary's admission policy refuses (after the webhook saw it).
    Refused {
        set: BTreeMap<String, String>,
    },
    /// An unmanaged label or annotation (`annotation` true) edited on the primary.
    Unmanaged {
        key: String,
        value: String,
        annotation: bool,
    },
    Create,
    Delete,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    /// Refused by the primary's own policy, as planned.
    Refused,
    /// Refused for a reason of the workload's own making (not found, already exists, being
    /// deleted).
    Benign,
    /// Anything else (timeouts included).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: usize,
    pub start: Ms,
    pub end: Ms,
    pub cluster: ClusterIx,
    pub namespace: String,
    pub kind: OpKind,
    pub outcome: Outcome,
    /// kubectl's stderr, trimmed.
    pub detail: String,
}

/// What a fault did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// SIGSTOP, then SIGCONT at the end.
    Pause,
    /// kill -9, then started again at the end.
    Kill,
    /// The registered replica's connection to the primary frozen (the harness's TCP proxy).
    Freeze,
    /// The same connection frozen and thawed in turns (slow).
    Slow,
    /// The remote sync identity's ClusterRoleBinding deleted, then created again.
    Rbac,
    /// A managed label set directly on a remote (instantaneous).
    Drift {
        namespace: String,
        key: String,
        value: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub id: usize,
    pub kind: FaultKind,
    /// A cluster name (its apiserver, or its identity for RBAC and drift), a replica's name,
    /// or `proxy`.
    pub target: String,
    /// For a replica: whether it held the Lease when the fault began.
    pub was_leader: bool,
    pub start: Ms,
    /// When it was healed (for a kill, once the process answered again).
    pub end: Ms,
    /// Why injecting or healing failed, if it did.
    pub error: Option<String>,
}

/// The Lease's holder, whenever the primary's watch of it showed a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSeen {
    pub at: Ms,
    pub holder: Option<String>,
}

/// A write to a remote a replica's reconciler logged (`corrected remote labels`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaWrite {
    pub at: Ms,
    pub replica: String,
    pub cluster: String,
    pub namespace: String,
    pub change: String,
}

/// One call of the webhook the primary's apiserver gave up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailOpen {
    pub at: Ms,
    /// The webhook did not answer within the timeout (rather than refusing the connection or
    /// closing it).
    pub deadline: bool,
    pub line: String,
}

/// Every cluster's namespaces, listed once after the quiet period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: Ms,
    pub clusters: Vec<BTreeMap<String, NsState>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    /// The wall clock (Unix ms) at the run's zero.
    #[serde(default)]
    pub start_unix_ms: u64,
    /// Cluster names by index: `primary`, `remote-1`, ...
    pub clusters: Vec<String>,
    #[serde(flatten)]
    pub rule: Rule,
    /// The installed webhook timeout.
    pub webhook_timeout_ms: Ms,
    /// When the workload and the faults stopped.
    pub faults_stopped: Ms,
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    #[serde(flatten)]
    pub recorded: Recorded,
    pub snapshot: Option<Snapshot>,
}

/// The installed sync rule: the label keys it manages and the namespaces it leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub managed: Vec<String>,
    pub excluded: Vec<String>,
}

impl Rule {
    /// Whether `key` is a managed label key.
    pub fn manages(&self, key: &str) -> bool {
        self.managed.iter().any(|m| m == key)
    }
}

/// What was recorded while the workload and the faults ran: the watches' events and Lease
/// holders, and the logs of the replicas and of the primary's apiserver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub events: Vec<WatchEvent>,
    pub leases: Vec<LeaseSeen>,
    pub writes: Vec<ReplicaWrite>,
    /// The pushes (admission's writes) the replicas logged, whatever their outcome (`change`
    /// holds it): a push given up on may still land.
    #[serde(default)]
    pub pushes: Vec<ReplicaWrite>,
    /// Every call of the webhook the primary's apiserver gave up on and let the edit through
    /// without (its log's "failing open" lines).
    #[serde(default)]
    pub fail_opens: Vec<FailOpen>,
}

impl History {
    pub fn cluster_name(&self, ix: ClusterIx) -> &str {
        self.clusters.get(ix).map(String::as_str).unwrap_or("?")
    }

    pub fn cluster_ix(&self, name: &str) -> Option<ClusterIx> {
        self.clusters.iter().position(|c| c == name)
    }

    /// The managed labels of `labels`.
    pub fn managed_of(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels
            .iter()
            .filter(|(k, _)| self.rule.manages(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn is_excluded(&self, namespace: &str) -> bool {
        self.rule.excluded.iter().any(|e| e == namespace)
    }

    /// What the remotes' watches showed of the namespaces the mesh syncs (not excluded ones).
    pub fn synced_remote_events(&self) -> impl Iterator<Item = &WatchEvent> {
        self.recorded
            .events
            .iter()
            .filter(|e| e.cluster != PRIMARY && !self.is_excluded(&e.name))
    }
}

/// One line of history for a report excerpt.
pub fn describe_op(history: &History, op: &Op) -> String {
    format!(
        "{:>8} ms  op #{} on {} {}: {:?} -> {:?} ({} ms){}",
        op.start,
        op.id,
        history.cluster_name(op.cluster),
        op.namespace,
        op.kind,
        op.outcome,
        op.end.saturating_sub(op.start),
        if op.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", truncate(&op.detail, 160))
        }
    )
}

pub fn describe_event(history: &History, event: &WatchEvent) -> String {
    let what = match &event.observed {
        Observed::Seen(state) => format!(
            "managed {:?}{}",
            history.managed_of(&state.labels),
            if state.deleting { " (deleting)" } else { "" }
        ),
        Observed::Gone => "gone".to_owned(),
    };
    format!(
        "{:>8} ms  {} shows {}: {what}",
        event.at,
        history.cluster_name(event.cluster),
        event.name
    )
}

pub fn describe_fault(fault: &Fault) -> String {
    format!(
        "{:>8} ms  fault #{} {:?} of {}{} until {} ms{}",
        fault.start,
        fault.id,
        fault.kind,
        fault.target,
        if fault.was_leader {
            " (the leader)"
        } else {
            ""
        },
        fault.end,
        fault
            .error
            .as_deref()
            .map(|e| format!(" [error: {}]", truncate(e, 120)))
            .unwrap_or_default()
    )
}

pub fn truncate(text: &str, max: usize) -> String {
    let line = text.replace('\n', " ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `soak-history.json` is read back (`--recheck`): the rule and what was recorded stand
    /// in it as fields of the history itself, in its order.
    #[test]
    fn the_history_is_one_flat_json_object() {
        let json = serde_json::to_string(&History::default()).unwrap();
        assert_eq!(
            json,
            r#"{"seed":0,"start_unix_ms":0,"clusters":[],"managed":[],"excluded":[],"webhook_timeout_ms":0,"faults_stopped":0,"ops":[],"faults":[],"events":[],"leases":[],"writes":[],"pushes":[],"fail_opens":[],"snapshot":null}"#
        );
        let read: History = serde_json::from_str(&json).unwrap();
        assert_eq!(read, History::default());
    }
}
