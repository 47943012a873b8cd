//! The soak's judge: pure logic over a recorded [`History`]. It reads no cluster; every
//! violation comes with the lines of history that show it.
//!
//! - convergence: in the final listing, every remote namespace's managed labels equal the
//!   primary's (none when the primary lacks the namespace or is deleting it);
//! - no phantom values: every managed-label value a remote's watch showed appear was, within
//!   the window before, the primary's value, or asked of the primary's apiserver by an
//!   operation (refused ones included, dry runs not), or set directly on that remote by a
//!   drift fault;
//! - no stale writer: no replica logged a write to a remote after another replica was seen
//!   holding the Lease, unless it was seen holding it again since;
//! - nothing else touched: on remotes, the mesh's field manager owns no field but managed
//!   labels, no unmanaged label or annotation changes, and no namespace appears or goes away
//!   but by the workload's own hand;
//! - the primary stayed writable: no edit failed because of the webhook, or (outside faults of
//!   the primary's own apiserver) failed at all or took longer than the webhook timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::history::{
    ClusterIx, FaultKind, History, Ms, Observed, Op, OpKind, Outcome, PRIMARY, Recorded,
    describe_event, describe_fault, describe_op,
};

/// The checker's tolerances.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// How far back a value's source may be: the longest a remote can be out of reach plus
    /// a resync period (a restarted remote's watch shows what was written while it was down).
    pub phantom_window: Ms,
    /// A replica's log timestamp may trail the moment of its write by this much.
    pub stale_slack_before: Ms,
    /// A replica's own acquisition of the Lease may be seen this much after its write (the
    /// Lease watch's latency, a primary restart's relist).
    pub stale_slack_after: Ms,
    /// The identity of the replica the primary's apiserver calls.
    pub registered: String,
    /// How long after a fault of the primary's apiserver its edits may still fail or wait.
    pub primary_recovery: Ms,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            phantom_window: 30_000,
            stale_slack_before: 500,
            stale_slack_after: 5_000,
            registered: "local-mesh-webhook".to_owned(),
            primary_recovery: 3_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    NotConverged,
    Phantom,
    StaleWriter,
    Touched,
    PrimaryNotWritable,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at: Ms,
    pub message: String,
    /// The history around it.
    pub excerpt: Vec<String>,
}

/// How long after a fault healed every remote first equalled the primary.
#[derive(Clone, Debug)]
pub struct Convergence {
    pub fault: usize,
    /// `None`: not before the end of the recorded watch events.
    pub after: Option<Ms>,
}

#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub convergence: Vec<Convergence>,
}

pub fn check(history: &History, config: &CheckConfig) -> Verdict {
    let mut violations = Vec::new();
    convergence(history, config, &mut violations);
    phantoms(history, config, &mut violations);
    stale_writers(history, config, &mut violations);
    touched(history, config, &mut violations);
    writable(history, config, &mut violations);
    violations.sort_by_key(|v| (v.kind, v.at));
    Verdict {
        violations,
        convergence: convergence_times(history),
    }
}

type Labels = BTreeMap<String, String>;

/// The managed labels a remote namespace must carry given the primary's namespace.
fn desired(history: &History, primary: Option<(&Labels, bool)>) -> Labels {
    match primary {
        Some((labels, false)) => history.managed_of(labels),
        _ => Labels::new(),
    }
}

fn convergence(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let Some(snapshot) = &history.snapshot else {
        out.push(Violation {
            kind: ViolationKind::NotConverged,
            at: history.faults_stopped,
            message: "no final listing of the clusters was recorded".to_owned(),
            excerpt: Vec::new(),
        });
        return;
    };
    let Some(primary) = snapshot.clusters.get(PRIMARY) else {
        return;
    };
    for (ix, remote) in snapshot.clusters.iter().enumerate().skip(1) {
        for (name, state) in remote {
            if history.is_excluded(name) {
                continue;
            }
            let want = desired(history, primary.get(name).map(|p| (&p.labels, p.deleting)));
            let have = history.managed_of(&state.labels);
            if want != have {
                out.push(Violation {
                    kind: ViolationKind::NotConverged,
                    at: snapshot.at,
                    message: format!(
                        "{} {name}: managed labels {have:?}, the primary's {want:?} ({})",
                        history.cluster_name(ix),
                        match primary.get(name) {
                            None => "absent on the primary",
                            Some(p) if p.deleting => "being deleted on the primary",
                            Some(_) => "present on the primary",
                        }
                    ),
                    excerpt: excerpt(history, config, name, snapshot.at),
                });
            }
        }
    }
}

/// The primary's managed labels of each namespace over time: from each moment on, until the
/// next.
fn primary_timelines(history: &History) -> HashMap<&str, Vec<(Ms, Labels)>> {
    let mut timelines: HashMap<&str, Vec<(Ms, Labels)>> = HashMap::new();
    let on_primary = history
        .recorded
        .events
        .iter()
        .filter(|e| e.cluster == PRIMARY);
    for event in on_primary {
        let labels = match &event.observed {
            Observed::Seen(state) => history.managed_of(&state.labels),
            Observed::Gone => Labels::new(),
        };
        timelines
            .entry(event.name.as_str())
            .or_default()
            .push((event.at, labels));
    }
    timelines
}

/// Whether the primary's `namespace` carried `key=value` at some moment of `[from, to]`.
fn primary_had(
    timeline: Option<&Vec<(Ms, Labels)>>,
    key: &str,
    value: &str,
    from: Ms,
    to: Ms,
) -> bool {
    let Some(timeline) = timeline else {
        return false;
    };
    timeline.iter().enumerate().any(|(i, (since, labels))| {
        let until = timeline.get(i + 1).map_or(Ms::MAX, |(next, _)| *next);
        *since <= to && until >= from && labels.get(key).map(String::as_str) == Some(value)
    })
}

fn phantoms(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let timelines = primary_timelines(history);
    let mut asked: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.ops.iter().filter(|o| o.cluster == PRIMARY) {
        if matches!(op.kind, OpKind::Label { .. } | OpKind::Refused { .. }) {
            asked.entry(op.namespace.as_str()).or_default().push(op);
        }
    }
    // The managed labels last seen on each remote namespace (by uid: a relist after a
    // reconnect shows the same namespace again, a new one has a new uid).
    let mut last: HashMap<(ClusterIx, &str), Labels> = HashMap::new();
    let on_remotes = history
        .recorded
        .events
        .iter()
        .filter(|e| e.cluster != PRIMARY);
    for event in on_remotes {
        let Observed::Seen(state) = &event.observed else {
            continue;
        };
        let now = history.managed_of(&state.labels);
        let before = last.insert((event.cluster, state.uid.as_str()), now.clone());
        if event.initial || history.is_excluded(&event.name) {
            continue;
        }
        for (key, value) in &now {
            if before.as_ref().and_then(|b| b.get(key)) == Some(value) {
                continue;
            }
            let from = event.at.saturating_sub(config.phantom_window);
            let by_primary = primary_had(
                timelines.get(event.name.as_str()),
                key,
                value,
                from,
                event.at,
            );
            let by_op = asked.get(event.name.as_str()).is_some_and(|ops| {
                ops.iter().any(|op| {
                    op.start >= from
                        && op.start <= event.at
                        && match &op.kind {
                            OpKind::Label { set, .. } | OpKind::Refused { set } => {
                                set.get(key) == Some(value)
                            }
                            _ => false,
                        }
                })
            });
            let by_drift = history.faults.iter().any(|f| {
                f.start >= from
                    && f.start <= event.at
                    && f.target == history.cluster_name(event.cluster)
                    && matches!(&f.kind, FaultKind::Drift { namespace, key: k, value: v }
                        if *namespace == event.name && k == key && v == value)
            });
            if !(by_primary || by_op || by_drift) {
                out.push(Violation {
                    kind: ViolationKind::Phantom,
                    at: event.at,
                    message: format!(
                        "{} {} showed {key}={value}, which neither the primary carried nor \
                         anyone asked for in the {} ms before",
                        history.cluster_name(event.cluster),
                        event.name,
                        config.phantom_window
                    ),
                    excerpt: excerpt(history, config, &event.name, event.at),
                });
            }
        }
    }
}

fn stale_writers(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    unattributed(history, config, out);
    let leases = &history.recorded.leases;
    for write in &history.recorded.writes {
        let cutoff = write.at.saturating_sub(config.stale_slack_before);
        let last = leases.iter().rposition(|l| l.at <= cutoff);
        let holds = |l: &&super::history::LeaseSeen| l.holder.as_deref() == Some(&write.replica);
        let ok = match last {
            Some(i) if holds(&&leases[i]) => true,
            Some(i) => leases[i + 1..]
                .iter()
                .take_while(|l| l.at <= write.at + config.stale_slack_after)
                .any(|l| holds(&l)),
            None => leases
                .iter()
                .take_while(|l| l.at <= write.at + config.stale_slack_after)
                .any(|l| holds(&l)),
        };
        if !ok {
            let holder = last
                .and_then(|i| leases[i].holder.clone())
                .unwrap_or_else(|| "nobody".to_owned());
            let mut lines: Vec<String> = leases
                .iter()
                .filter(|l| l.at + 30_000 >= write.at && l.at <= write.at + 5_000)
                .map(|l| format!("{:>8} ms  Lease held by {:?}", l.at, l.holder))
                .collect();
            lines.push(format!(
                "{:>8} ms  {} wrote {} {}: {}",
                write.at, write.replica, write.cluster, write.namespace, write.change
            ));
            lines.sort();
            out.push(Violation {
                kind: ViolationKind::StaleWriter,
                at: write.at,
                message: format!(
                    "{} wrote {} {} ({}) while {holder} held the Lease",
                    write.replica, write.cluster, write.namespace, write.change
                ),
                excerpt: lines,
            });
        }
    }
}

/// The remote's own evidence that the logs are complete: every change of a remote
/// namespace's managed labels that its watch showed follows a push or a correction some
/// replica logged for that cluster and namespace (a push given up on may land later, hence the
/// window), or a drift fault made on it. A write no replica accounts for is one the stale
/// writer check could not see.
fn unattributed(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let Recorded { writes, pushes, .. } = &history.recorded;
    let mut last: HashMap<(ClusterIx, &str), Labels> = HashMap::new();
    for event in history.synced_remote_events() {
        let Observed::Seen(state) = &event.observed else {
            continue;
        };
        let now = history.managed_of(&state.labels);
        let before = last
            .insert((event.cluster, state.uid.as_str()), now.clone())
            .unwrap_or_default();
        if event.initial || before == now {
            continue;
        }
        let cluster = history.cluster_name(event.cluster);
        let from = event.at.saturating_sub(config.phantom_window);
        let to = event.at + config.stale_slack_after;
        let logged = writes.iter().chain(pushes).any(|w| {
            w.cluster == cluster && w.namespace == event.name && w.at >= from && w.at <= to
        });
        let drifted = history.faults.iter().any(|f| {
            f.target == cluster
                && f.start >= from
                && f.start <= event.at
                && matches!(&f.kind, FaultKind::Drift { namespace, .. } if *namespace == event.name)
        });
        if !(logged || drifted) {
            out.push(Violation {
                kind: ViolationKind::StaleWriter,
                at: event.at,
                message: format!(
                    "{cluster} {}: managed labels went from {before:?} to {now:?}, and no \
                     replica logged a write there in the {} ms before",
                    event.name, config.phantom_window
                ),
                excerpt: excerpt(history, config, &event.name, event.at),
            });
        }
    }
}

/// Whether a field the mesh's field manager owns on a remote is a managed label.
fn mesh_may_own(history: &History, path: &str) -> bool {
    match path.strip_prefix("f:metadata/f:labels/") {
        Some(".") => true,
        Some(rest) => rest
            .strip_prefix("f:")
            .is_some_and(|key| history.rule.manages(key)),
        None => false,
    }
}

fn touched(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let unmanaged = |labels: &Labels| -> Labels {
        labels
            .iter()
            .filter(|(k, _)| !history.rule.manages(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let remote_op = |cluster: ClusterIx, name: &str, at: Ms, create: bool| {
        history.ops.iter().any(|op| {
            op.cluster == cluster
                && op.namespace == name
                && op.start <= at
                && if create {
                    op.kind == OpKind::Create
                } else {
                    op.kind == OpKind::Delete
                }
        })
    };
    let mut first: HashMap<(ClusterIx, &str), (Labels, Labels)> = HashMap::new();
    let mut reported: BTreeSet<(ClusterIx, &str, &str)> = BTreeSet::new();
    // The mesh's own namespace is written by attach, under the same field manager.
    for event in history.synced_remote_events() {
        let remote = history.cluster_name(event.cluster);
        let mut flag = |what: &'static str, message: String| {
            // One violation per namespace and kind: the same cause shows in every later event.
            if reported.insert((event.cluster, event.name.as_str(), what)) {
                out.push(Violation {
                    kind: ViolationKind::Touched,
                    at: event.at,
                    message,
                    excerpt: excerpt(history, config, &event.name, event.at),
                });
            }
        };
        let state = match &event.observed {
            Observed::Seen(state) => state,
            Observed::Gone => {
                if !event.initial && !remote_op(event.cluster, &event.name, event.at, false) {
                    flag(
                        "gone",
                        format!("{remote} {}: deleted, and not by the workload", event.name),
                    );
                }
                continue;
            }
        };
        let foreign: Vec<&String> = state
            .mesh_fields
            .iter()
            .filter(|p| !mesh_may_own(history, p))
            .collect();
        if !foreign.is_empty() {
            flag(
                "fields",
                format!(
                    "{remote} {}: the mesh's field manager owns {foreign:?}",
                    event.name
                ),
            );
        }
        let now = (unmanaged(&state.labels), state.annotations.clone());
        match first.get(&(event.cluster, state.uid.as_str())) {
            None => {
                if !event.initial && !remote_op(event.cluster, &event.name, event.at, true) {
                    flag(
                        "created",
                        format!("{remote} {}: created, and not by the workload", event.name),
                    );
                }
                first.insert((event.cluster, state.uid.as_str()), now);
            }
            Some(was) if *was != now => flag(
                "unmanaged",
                format!(
                    "{remote} {}: unmanaged labels and annotations went from {was:?} to {now:?}",
                    event.name
                ),
            ),
            Some(_) => {}
        }
    }
}

fn writable(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let primary_faults: Vec<(Ms, Ms)> = history
        .faults
        .iter()
        .filter(|f| {
            f.target == history.cluster_name(PRIMARY)
                && matches!(f.kind, FaultKind::Pause | FaultKind::Kill)
        })
        .map(|f| (f.start, f.end + config.primary_recovery))
        .collect();
    for op in history.ops.iter().filter(|o| o.cluster == PRIMARY) {
        let during_fault = primary_faults
            .iter()
            .any(|(from, to)| op.start <= *to && op.end >= *from);
        let took = op.end.saturating_sub(op.start);
        let problem = if op.outcome == Outcome::Failed && op.detail.contains("webhook") {
            format!("failed because of the webhook after {took} ms")
        } else if op.outcome == Outcome::Failed && !during_fault {
            format!("failed after {took} ms with the primary's apiserver up")
        } else {
            continue;
        };
        out.push(Violation {
            kind: ViolationKind::PrimaryNotWritable,
            at: op.start,
            message: format!("op #{} on {}: {problem}", op.id, op.namespace),
            excerpt: faults_around(history, op.start, op.end, describe_op(history, op)),
        });
    }
    // The apiserver's word on how long the webhook held an edit: it gives a call up at the
    // webhook timeout and lets the edit through. That may happen while the replica it calls is
    // stopped or killed, or while the apiserver itself was; otherwise the webhook held an edit
    // for the whole timeout (or refused the connection).
    let excused: Vec<(Ms, Ms)> = history
        .faults
        .iter()
        .filter(|f| {
            matches!(f.kind, FaultKind::Pause | FaultKind::Kill)
                && (f.target == history.cluster_name(PRIMARY) || f.target == config.registered)
        })
        .map(|f| {
            (
                f.start,
                f.end + history.webhook_timeout_ms + config.primary_recovery,
            )
        })
        .collect();
    for fail in &history.recorded.fail_opens {
        if excused
            .iter()
            .any(|(from, to)| fail.at >= *from && fail.at <= *to)
        {
            continue;
        }
        out.push(Violation {
            kind: ViolationKind::PrimaryNotWritable,
            at: fail.at,
            message: format!(
                "the primary's apiserver gave up on the webhook ({}) with neither it nor the \
                 apiserver stopped",
                if fail.deadline {
                    "no answer within the timeout"
                } else {
                    "no connection"
                }
            ),
            excerpt: faults_around(
                history,
                fail.at.saturating_sub(history.webhook_timeout_ms),
                fail.at,
                format!("{:>8} ms  apiserver: {}", fail.at, fail.line),
            ),
        });
    }
}

/// `first`, then the faults that overlap `[from, to]`.
fn faults_around(history: &History, from: Ms, to: Ms, first: String) -> Vec<String> {
    std::iter::once(first)
        .chain(
            history
                .faults
                .iter()
                .filter(|f| f.start <= to && f.end >= from)
                .map(describe_fault),
        )
        .collect()
}

/// For every fault, the first moment after it healed at which every remote namespace's managed
/// labels equalled the primary's, as the watches showed them.
fn convergence_times(history: &History) -> Vec<Convergence> {
    let mut events: Vec<_> = history.recorded.events.iter().collect();
    events.sort_by_key(|e| e.at);
    let mut pending: Vec<(Ms, usize)> = history.faults.iter().map(|f| (f.end, f.id)).collect();
    pending.sort();
    let mut pending = pending.into_iter().peekable();
    let mut state: Vec<BTreeMap<&str, (Labels, bool)>> =
        vec![BTreeMap::new(); history.clusters.len()];
    let mut mismatched: BTreeSet<&str> = BTreeSet::new();
    let mut done = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let at = events[i].at;
        // Faults healed while everything was equal: nothing to catch up.
        if mismatched.is_empty() {
            while let Some((_, id)) = pending.next_if(|(end, _)| *end < at) {
                done.push(Convergence {
                    fault: id,
                    after: Some(0),
                });
            }
        }
        // Every event of the same instant first.
        while i < events.len() && events[i].at == at {
            let event = events[i];
            if let Some(cluster) = state.get_mut(event.cluster) {
                match &event.observed {
                    Observed::Seen(s) => {
                        cluster.insert(&event.name, (history.managed_of(&s.labels), s.deleting));
                    }
                    Observed::Gone => {
                        cluster.remove(event.name.as_str());
                    }
                }
            }
            let name = event.name.as_str();
            if !history.is_excluded(name) {
                let want = desired(history, state[PRIMARY].get(name).map(|(l, d)| (l, *d)));
                let off = state
                    .iter()
                    .skip(1)
                    .any(|c| c.get(name).is_some_and(|(l, _)| *l != want));
                if off {
                    mismatched.insert(name);
                } else {
                    mismatched.remove(name);
                }
            }
            i += 1;
        }
        if mismatched.is_empty() {
            while let Some((end, id)) = pending.next_if(|(end, _)| *end <= at) {
                done.push(Convergence {
                    fault: id,
                    after: Some(at - end),
                });
            }
        }
    }
    done.extend(pending.map(|(_, id)| Convergence {
        fault: id,
        after: None,
    }));
    done.sort_by_key(|c| c.fault);
    done
}

/// The operations, faults and watch events of `namespace` around `at`.
fn excerpt(history: &History, config: &CheckConfig, namespace: &str, at: Ms) -> Vec<String> {
    let from = at.saturating_sub(config.phantom_window);
    let to = at + 2_000;
    let within = |t: Ms| (from..=to).contains(&t);
    let ops = history
        .ops
        .iter()
        .filter(|o| o.namespace == namespace && within(o.start))
        .map(|o| (o.start, describe_op(history, o)));
    let Recorded { events, .. } = &history.recorded;
    let events = events
        .iter()
        .filter(|e| e.name == namespace && within(e.at))
        .map(|e| (e.at, describe_event(history, e)));
    // A fault counts when it overlaps the window.
    let faults = history
        .faults
        .iter()
        .filter(|f| f.start <= to && f.end >= from)
        .map(|f| (f.start, describe_fault(f)));
    let mut lines: Vec<(Ms, String)> = ops.chain(events).chain(faults).collect();
    lines.sort_by_key(|(at, _)| *at);
    let keep = lines.len().saturating_sub(24);
    lines.into_iter().skip(keep).map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::super::history::{
        FailOpen, Fault, LeaseSeen, NsState, ReplicaWrite, Rule, Snapshot, WatchEvent,
    };
    use super::*;

    const INJ: &str = "istio-injection";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ns(uid: &str, pairs: &[(&str, &str)]) -> NsState {
        NsState {
            uid: uid.to_owned(),
            labels: labels(pairs),
            ..NsState::default()
        }
    }

    fn seen(at: Ms, cluster: ClusterIx, name: &str, state: NsState) -> WatchEvent {
        WatchEvent {
            at,
            cluster,
            name: name.to_owned(),
            observed: Observed::Seen(state),
            initial: false,
        }
    }

    /// The primary's watch showing its namespace `shop` with the labels `pairs`.
    fn primary_shows(at: Ms, pairs: &[(&str, &str)]) -> WatchEvent {
        seen(at, PRIMARY, "shop", ns("p", pairs))
    }

    /// The remote's watch showing its namespace `shop` with the labels `pairs`.
    fn remote_shows(at: Ms, pairs: &[(&str, &str)]) -> WatchEvent {
        seen(at, 1, "shop", ns("r", pairs))
    }

    fn label_op(id: usize, start: Ms, name: &str, pairs: &[(&str, &str)]) -> Op {
        Op {
            id,
            start,
            end: start + 100,
            cluster: PRIMARY,
            namespace: name.to_owned(),
            kind: OpKind::Label {
                set: labels(pairs),
                remove: Vec::new(),
            },
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }

    /// An edit of `shop` on the primary at 5,000 that failed with `detail`.
    fn failed_edit(id: usize, detail: &str) -> Op {
        Op {
            outcome: Outcome::Failed,
            detail: detail.to_owned(),
            ..label_op(id, 5_000, "shop", &[])
        }
    }

    fn fault(id: usize, kind: FaultKind, target: &str, start: Ms, end: Ms) -> Fault {
        Fault {
            id,
            kind,
            target: target.to_owned(),
            was_leader: false,
            start,
            end,
            error: None,
        }
    }

    fn lease_held_by(at: Ms, holder: &str) -> LeaseSeen {
        LeaseSeen {
            at,
            holder: Some(holder.to_owned()),
        }
    }

    /// The primary's apiserver giving up on the webhook after the whole timeout.
    fn webhook_given_up_on(at: Ms) -> FailOpen {
        FailOpen {
            at,
            deadline: true,
            line: "Failed calling webhook, failing open".into(),
        }
    }

    /// A clean run: one namespace on the primary and one remote, labelled once, converged.
    fn clean() -> History {
        let initial = |event| WatchEvent {
            initial: true,
            ..event
        };
        History {
            seed: 1,
            start_unix_ms: 0,
            clusters: vec!["primary".into(), "remote-1".into()],
            rule: Rule {
                managed: vec![INJ.into(), "istio.io/rev".into()],
                excluded: vec!["kube-system".into()],
            },
            webhook_timeout_ms: 5_000,
            faults_stopped: 20_000,
            ops: vec![label_op(0, 1_000, "shop", &[(INJ, "enabled")])],
            faults: vec![fault(0, FaultKind::Pause, "remote-1", 2_000, 4_000)],
            recorded: Recorded {
                events: vec![
                    initial(primary_shows(0, &[])),
                    initial(remote_shows(0, &[])),
                    remote_shows(1_050, &[(INJ, "enabled")]),
                    primary_shows(1_080, &[(INJ, "enabled")]),
                    remote_shows(4_500, &[(INJ, "enabled")]),
                ],
                leases: vec![lease_held_by(500, "a")],
                writes: vec![ReplicaWrite {
                    at: 1_045,
                    replica: "a".into(),
                    cluster: "remote-1".into(),
                    namespace: "shop".into(),
                    change: "+istio-injection=enabled".into(),
                }],
                pushes: Vec::new(),
                fail_opens: Vec::new(),
            },
            snapshot: Some(Snapshot {
                at: 25_000,
                clusters: vec![
                    BTreeMap::from([("shop".into(), ns("p", &[(INJ, "enabled")]))]),
                    BTreeMap::from([("shop".into(), ns("r", &[(INJ, "enabled")]))]),
                ],
            }),
        }
    }

    /// The clean history with `edit` made to it.
    fn clean_but(edit: impl FnOnce(&mut History)) -> History {
        let mut history = clean();
        edit(&mut history);
        history
    }

    /// The clean history with `event` shown by a watch too.
    fn clean_and_shown(event: WatchEvent) -> History {
        clean_but(|h| h.recorded.events.push(event))
    }

    /// The clean history's replica write again, at `at`.
    fn write_again_at(history: &History, at: Ms) -> ReplicaWrite {
        ReplicaWrite {
            at,
            ..history.recorded.writes[0].clone()
        }
    }

    fn verdict_on(history: &History) -> Verdict {
        check(history, &CheckConfig::default())
    }

    fn kinds(history: &History) -> Vec<ViolationKind> {
        verdict_on(history)
            .violations
            .iter()
            .map(|v| v.kind)
            .collect()
    }

    fn violations_of(verdict: &Verdict, kind: ViolationKind) -> Vec<&Violation> {
        verdict
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .collect()
    }

    #[test]
    fn a_clean_history_has_no_violation_and_converges_after_its_fault() {
        let verdict = verdict_on(&clean());
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.convergence.len(), 1);
        // Equal when it healed (at 4,000): the last event before left both sides alike.
        assert_eq!(verdict.convergence[0].after, Some(0));
    }

    #[test]
    fn a_remote_left_unlike_the_primary_is_not_converged() {
        let history = clean_but(|h| {
            let remote = &mut h.snapshot.as_mut().unwrap().clusters[1];
            remote.insert("shop".into(), ns("r", &[(INJ, "disabled")]));
            // A namespace the primary lacks must carry no managed label.
            remote.insert("only-here".into(), ns("x", &[("istio.io/rev", "canary")]));
        });
        let verdict = verdict_on(&history);
        let not_converged = violations_of(&verdict, ViolationKind::NotConverged);
        assert_eq!(not_converged.len(), 2, "{not_converged:#?}");
        assert!(
            not_converged.iter().any(|v| v.message.contains("disabled")),
            "{not_converged:#?}"
        );
        let cases = [
            // A namespace being deleted on the primary must carry none either.
            (
                "shop being deleted on the primary",
                clean_but(|h| {
                    let primary = &mut h.snapshot.as_mut().unwrap().clusters[PRIMARY];
                    primary.get_mut("shop").unwrap().deleting = true;
                }),
            ),
            // No final listing at all is not convergence.
            ("no final listing", clean_but(|h| h.snapshot = None)),
        ];
        for (case, history) in cases {
            assert_eq!(kinds(&history), vec![ViolationKind::NotConverged], "{case}");
        }
    }

    #[test]
    fn a_value_nobody_asked_for_is_a_phantom_with_its_history() {
        let history = clean_and_shown(remote_shows(6_000, &[(INJ, "disabled")]));
        let verdict = verdict_on(&history);
        let phantoms = violations_of(&verdict, ViolationKind::Phantom);
        let phantom = phantoms.first().expect("a phantom");
        assert!(
            phantom.message.contains("istio-injection=disabled"),
            "{}",
            phantom.message
        );
        assert!(
            phantom.excerpt.iter().any(|l| l.contains("op #0")),
            "{:#?}",
            phantom.excerpt
        );
    }

    #[test]
    fn a_dry_run_value_on_a_remote_is_a_phantom() {
        let history = clean_but(|h| {
            h.ops.push(Op {
                kind: OpKind::DryRun {
                    set: labels(&[(INJ, "dry")]),
                },
                ..label_op(1, 5_000, "shop", &[])
            });
            h.recorded.events.push(remote_shows(5_050, &[(INJ, "dry")]));
        });
        assert!(kinds(&history).contains(&ViolationKind::Phantom));
    }

    #[test]
    fn asked_refused_and_drifted_values_are_no_phantoms_within_the_window() {
        let mut history = clean_but(|h| {
            h.ops.push(Op {
                kind: OpKind::Refused {
                    set: labels(&[(INJ, "refused-1")]),
                },
                outcome: Outcome::Refused,
                ..label_op(1, 5_000, "shop", &[])
            });
            let drift = FaultKind::Drift {
                namespace: "shop".into(),
                key: INJ.into(),
                value: "drift-1".into(),
            };
            h.faults.push(fault(1, drift, "remote-1", 6_000, 6_000));
            h.recorded.events.extend([
                remote_shows(5_050, &[(INJ, "refused-1")]),
                remote_shows(6_020, &[(INJ, "drift-1")]),
                remote_shows(7_000, &[(INJ, "enabled")]),
            ]);
        });
        assert_eq!(kinds(&history), Vec::<ViolationKind>::new());
        // The same drift, but on another remote than the one it was made on: a phantom.
        history.faults[1].target = "remote-2".into();
        assert_eq!(kinds(&history), vec![ViolationKind::Phantom]);
        // A value asked for long before the window: a phantom too.
        let history = clean_but(|h| {
            h.recorded
                .events
                .push(remote_shows(90_000, &[(INJ, "other")]));
            h.ops.push(label_op(1, 2_000, "shop", &[(INJ, "other")]));
            // Written by a replica (its reconciler, say, from a stale view), not by no one.
            h.recorded.writes.push(write_again_at(h, 89_990));
        });
        assert_eq!(kinds(&history), vec![ViolationKind::Phantom]);
    }

    #[test]
    fn a_write_after_losing_the_lease_is_a_stale_writer() {
        let mut history = clean_but(|h| {
            h.recorded.leases.push(lease_held_by(3_000, "b"));
            h.recorded.writes.push(write_again_at(h, 3_600));
        });
        let verdict = verdict_on(&history);
        let stale = violations_of(&verdict, ViolationKind::StaleWriter);
        assert_eq!(stale.len(), 1, "{:#?}", verdict.violations);
        assert!(
            stale[0].message.contains("while b held"),
            "{}",
            stale[0].message
        );
        // Taken back before the write (seen a little after it): fine.
        history.recorded.leases.push(lease_held_by(3_700, "a"));
        assert_eq!(kinds(&history), Vec::<ViolationKind>::new());
        // A replica that never held it.
        let history = clean_but(|h| h.recorded.writes[0].replica = "c".into());
        assert_eq!(kinds(&history), vec![ViolationKind::StaleWriter]);
    }

    #[test]
    fn a_remote_change_no_replica_logged_is_reported() {
        // The clean history's change at 1,050 is a push's.
        let mut history = clean_but(|h| {
            h.recorded.pushes.push(ReplicaWrite {
                change: "applied".into(),
                ..write_again_at(h, 1_040)
            })
        });
        assert_eq!(kinds(&history), Vec::<ViolationKind>::new());
        history.recorded.pushes.clear();
        history.recorded.writes.clear();
        let violations = verdict_on(&history).violations;
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].kind, ViolationKind::StaleWriter);
        assert!(
            violations[0].message.contains("no replica logged"),
            "{}",
            violations[0].message
        );
    }

    #[test]
    fn anything_but_managed_labels_written_on_a_remote_is_touched() {
        let enabled = || ns("r", &[(INJ, "enabled")]);
        let cases = [
            (
                "a field owned by the mesh that is no managed label",
                NsState {
                    mesh_fields: vec![
                        "f:metadata/f:labels/.".into(),
                        "f:metadata/f:labels/f:istio-injection".into(),
                        "f:metadata/f:annotations/f:note".into(),
                    ],
                    ..enabled()
                },
            ),
            (
                "an unmanaged label that changed",
                ns("r", &[(INJ, "enabled"), ("team", "x")]),
            ),
            (
                "an annotation",
                NsState {
                    annotations: labels(&[("a", "b")]),
                    ..enabled()
                },
            ),
        ];
        for (case, state) in cases {
            let history = clean_and_shown(seen(5_000, 1, "shop", state));
            assert_eq!(kinds(&history), vec![ViolationKind::Touched], "{case}");
        }
        // A namespace that appears on a remote without the workload creating it, and one that
        // goes away without the workload deleting it.
        let mut history = clean_but(|h| {
            h.recorded.events.push(seen(5_000, 1, "new", ns("n", &[])));
            h.recorded.events.push(WatchEvent {
                observed: Observed::Gone,
                ..remote_shows(6_000, &[])
            });
        });
        assert_eq!(
            kinds(&history),
            vec![ViolationKind::Touched, ViolationKind::Touched]
        );
        // The same by the workload's hand: fine.
        for (kind, name) in [(OpKind::Create, "new"), (OpKind::Delete, "shop")] {
            history.ops.push(Op {
                cluster: 1,
                kind,
                ..label_op(history.ops.len(), 4_000, name, &[])
            });
        }
        history.snapshot.as_mut().unwrap().clusters[1].remove("shop");
        assert_eq!(kinds(&history), Vec::<ViolationKind>::new());
    }

    #[test]
    fn an_edit_failed_or_held_by_the_webhook_means_the_primary_was_not_writable() {
        let history = clean_but(|h| {
            h.ops.push(failed_edit(
                1,
                "Internal error occurred: failed calling webhook \"kubectl-mesh\"",
            ));
            h.ops.push(failed_edit(2, "etcdserver: request timed out"));
            // The apiserver gave up on the webhook: held for the whole timeout.
            h.recorded.fail_opens.push(webhook_given_up_on(7_000));
        });
        assert_eq!(kinds(&history), vec![ViolationKind::PrimaryNotWritable; 3]);
        // While the primary's own apiserver was down, failing edits are its fault; while the
        // replica it calls was stopped, the apiserver giving up on it is expected.
        let mut history = clean_but(|h| {
            h.faults
                .push(fault(1, FaultKind::Kill, "primary", 4_000, 6_000));
            h.faults.push(fault(
                2,
                FaultKind::Pause,
                "local-mesh-webhook",
                20_000,
                22_000,
            ));
            h.ops.push(failed_edit(1, "connection refused"));
            // Slow, but the apiserver did not give up on the webhook: not the webhook's doing.
            h.ops.push(Op {
                end: 5_000 + 9_000,
                ..label_op(2, 5_000, "shop", &[])
            });
            h.recorded.fail_opens.push(webhook_given_up_on(26_000));
        });
        assert_eq!(kinds(&history), Vec::<ViolationKind>::new());
        history.recorded.fail_opens[0].at = 40_000;
        assert_eq!(kinds(&history), vec![ViolationKind::PrimaryNotWritable]);
    }

    #[test]
    fn convergence_time_is_unknown_when_a_remote_never_caught_up() {
        let history = clean_and_shown(primary_shows(3_000, &[(INJ, "disabled")]));
        // 4,500 shows the remote still at "enabled": never converged after the fault.
        assert_eq!(verdict_on(&history).convergence[0].after, None);
    }
}
