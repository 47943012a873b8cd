//! The status of a `MeshCluster` as the reconciler writes it: what one sync attempt found
//! ([`Attempt`]) becomes counts, `lastError` and the `Reachable` and `Synced` conditions
//! ([`next_status`]), written only when it says something new ([`status_needs_write`]).

use std::time::Duration;

use json_patch::{AddOperation, PatchOperation, TestOperation, jsonptr::PointerBuf};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::Value;

use mesh_core::{
    cluster::{
        CONDITION_REACHABLE, CONDITION_SYNCED, MISSING_NAMESPACES_LISTED, MeshCluster,
        MeshClusterStatus,
    },
    failure::{Failure, error_chain},
    printable::cut,
    remote,
    sync::SyncReport,
    token::{Claims, Standing},
};

/// Status and Event texts are cut here; the full story is in the logs.
pub(crate) const MAX_MESSAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the text, so it is not a `source` as well (it would print twice).
    #[error("cannot write the status of MeshCluster {name}: {}", error_chain(.cause))]
    WriteStatus { name: String, cause: kube::Error },
    #[error("cannot encode the status of MeshCluster {name}")]
    EncodeStatus {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one sync attempt found, as the status sees it.
#[derive(Clone, Debug)]
pub(crate) enum Attempt<'a> {
    /// A sync that ran to its end: made by [`Attempt::synced`], which judges one the remote
    /// stopped answering part-way a failure.
    Synced(&'a SyncReport),
    Failed {
        /// PascalCase condition reason.
        reason: &'static str,
        message: String,
        /// Whether the remote answered at all.
        answered: bool,
    },
    /// The remote answered and is the cluster attached, but its MeshCluster lets nothing be
    /// written (a scope that cannot be used): reachable, not synced.
    Unwritable {
        /// PascalCase condition reason.
        reason: &'static str,
        message: String,
    },
}

impl<'a> Attempt<'a> {
    /// What a sync's report says. A write the remote did not answer stopped the sync
    /// ([`SyncReport::stopped_at`]): the remote failed as a whole, as when it cannot be listed,
    /// not that one namespace.
    pub(crate) fn synced(report: &'a SyncReport) -> Self {
        let Some(stop) = report.stopped_at() else {
            return Self::Synced(report);
        };
        // Failures it answered before are counted here: the Synced condition, which would
        // name them, says only that this sync did not complete.
        let refused = match report.errors.len() - 1 {
            0 => String::new(),
            refused => format!(", {refused} refused"),
        };
        Self::Failed {
            reason: stop.failure.reason(),
            message: format!(
                "the remote stopped answering mid-sync ({} namespaces corrected{refused}, {} not \
                 written): namespace {}: {}",
                report.writes,
                report.unwritten + 1,
                stop.namespace,
                stop.message
            ),
            answered: false,
        }
    }

    pub(crate) fn failed(failure: Failure, message: String) -> Self {
        let reason = failure.reason();
        // A remote that refuses our credentials is no more usable than one that is down.
        let answered =
            failure.answered() && !matches!(failure, Failure::Forbidden | Failure::Unauthorized);
        Self::Failed {
            reason,
            message,
            answered,
        }
    }

    /// The remote's server could not be shown to be its cluster ([`remote::Remote::verify`]):
    /// a call that failed, or credentials that reach another cluster, which are as unusable as
    /// missing ones.
    pub(crate) fn unverified(error: &remote::Error) -> Self {
        match error.call_failure() {
            Some(failure) => Self::failed(failure, error.to_string()),
            None => Self::Failed {
                reason: error.reason(),
                message: error.to_string(),
                answered: false,
            },
        }
    }

    /// Whether the remote answered with usable credentials.
    pub(crate) fn reachable(&self) -> bool {
        match self {
            Self::Synced(_) | Self::Unwritable { .. } => true,
            Self::Failed { answered, .. } => *answered,
        }
    }

    /// The condition reason of an attempt that did not sync.
    pub(crate) fn failure_reason(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Synced(_) => None,
            Self::Failed {
                reason, message, ..
            }
            | Self::Unwritable { reason, message } => Some((reason, message)),
        }
    }
}

/// `Reachable=True`: the remote answered with valid credentials.
const CONNECTED: &str = "Connected";
const CONNECTED_MESSAGE: &str = "the remote answered with valid credentials";

/// Reason of a remote's refusal of a stored token that has expired.
pub(crate) const TOKEN_EXPIRED: &str = "TokenExpired";

/// A refusal of the credentials whose token has expired says so, and what repairs it: the
/// remote's own answer (401) cannot tell an expired token from a revoked one.
pub(crate) fn with_token_expiry<'a>(
    attempt: Attempt<'a>,
    token: Option<Claims>,
    cluster: &str,
    now: Timestamp,
) -> Attempt<'a> {
    match (&attempt, token) {
        (
            Attempt::Failed {
                reason: "Forbidden",
                message,
                ..
            },
            Some(claims),
        ) if claims.standing(now) == Standing::Expired => {
            let at = claims.expires_at.unwrap_or(now);
            Attempt::Failed {
                reason: TOKEN_EXPIRED,
                message: format!(
                    "the stored token expired at {at:.0}; `kubectl mesh rotate {cluster}` issues \
                     a new one ({message})"
                ),
                answered: false,
            }
        }
        _ => attempt,
    }
}

/// The status after `attempt`, keeping what the attempt did not learn from `prev`.
pub(crate) fn next_status(
    prev: Option<&MeshClusterStatus>,
    attempt: &Attempt<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> MeshClusterStatus {
    let mut next = prev.cloned().unwrap_or_default();
    next.observed_generation = generation;
    // (status, reason, message) of `Reachable`, then of `Synced`.
    let connected = || ("True", CONNECTED, CONNECTED_MESSAGE.to_owned());
    let (reachable, synced) = match attempt {
        Attempt::Synced(report) => {
            let in_sync = report.in_sync_after();
            let corrected = report.writes;
            // Whole seconds, as Kubernetes writes its own timestamps.
            next.last_sync_time = Some(format!("{now:.0}"));
            next.namespaces_in_sync = u32::try_from(in_sync).unwrap_or(u32::MAX);
            next.missing_namespaces = listed_missing(&report.missing);
            next.namespaces_missing = u32::try_from(report.missing.len()).unwrap_or(u32::MAX);
            next.namespaces_drifted = corrected;
            next.last_sync_writes = report.writes;
            next.last_error = report.errors.first().map(|e| {
                cut(
                    format!("namespace {}: {}", e.namespace, e.message),
                    MAX_MESSAGE,
                )
            });
            let synced = if report.errors.is_empty() {
                let mut message = format!("{in_sync} namespaces carry the primary's labels");
                if corrected > 0 {
                    message.push_str(&format!(" ({corrected} corrected)"));
                }
                if !report.missing.is_empty() {
                    message.push_str(&format!(
                        "; {} absent on the remote: {}",
                        report.missing.len(),
                        list(&report.missing)
                    ));
                }
                ("True", "InSync", message)
            } else {
                let failed: Vec<String> =
                    report.errors.iter().map(|e| e.namespace.clone()).collect();
                let message = format!(
                    "{} namespaces could not be corrected: {}",
                    failed.len(),
                    list(&failed)
                );
                ("False", "WriteFailed", message)
            };
            (connected(), synced)
        }
        Attempt::Unwritable { reason, message } => {
            let message = cut(message.clone(), MAX_MESSAGE);
            next.last_error = Some(message.clone());
            (connected(), ("False", *reason, message))
        }
        Attempt::Failed {
            reason,
            message,
            answered,
        } => {
            let message = cut(message.clone(), MAX_MESSAGE);
            next.last_error = Some(message.clone());
            let reachable = if *answered { "True" } else { "False" };
            (
                (reachable, *reason, message),
                (
                    "Unknown",
                    *reason,
                    "the last sync did not complete; Reachable says why".to_owned(),
                ),
            )
        }
    };
    for (type_, (status, reason, message)) in
        [(CONDITION_REACHABLE, reachable), (CONDITION_SYNCED, synced)]
    {
        set_condition(
            &mut next.conditions,
            type_,
            status,
            reason,
            message,
            generation,
            now,
        );
    }
    next
}

/// The names `missingNamespaces` carries: the first [`MISSING_NAMESPACES_LISTED`] by name.
fn listed_missing(missing: &[String]) -> Vec<String> {
    let mut names: Vec<&String> = missing.iter().collect();
    names.sort_unstable();
    names
        .into_iter()
        .take(MISSING_NAMESPACES_LISTED)
        .cloned()
        .collect()
}

/// Sets a condition, keeping `lastTransitionTime` unless its status changes.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = cut(message, MAX_MESSAGE);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = Time(now);
                condition.status = status.to_owned();
            }
            condition.reason = reason.to_owned();
            condition.message = message;
            condition.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Whether `next` is worth a status write: something other than `lastSyncTime` changed, or
/// `lastSyncTime` is `refresh` old. A converged cluster thus costs one status write per
/// `refresh`, not one per resync.
pub(crate) fn status_needs_write(
    prev: Option<&MeshClusterStatus>,
    next: &MeshClusterStatus,
    refresh: Duration,
) -> bool {
    let Some(prev) = prev else { return true };
    let comparable = |s: &MeshClusterStatus| MeshClusterStatus {
        last_sync_time: None,
        ..s.clone()
    };
    if comparable(prev) != comparable(next) {
        return true;
    }
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    match (parse(&prev.last_sync_time), parse(&next.last_sync_time)) {
        (Some(prev), Some(next)) => {
            let age = next.duration_since(prev);
            age >= SignedDuration::try_from(refresh).unwrap_or(SignedDuration::MAX)
        }
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Writes `status`, whole, as the status of `cluster`, the object the sync read: the leader is
/// the one writer of a MeshCluster's status.
pub async fn write_status(
    primary: &Client,
    cluster: &MeshCluster,
    status: &MeshClusterStatus,
) -> Result<()> {
    let name = cluster.name_any();
    let patch = status_patch(status, cluster.metadata.uid.as_deref()).map_err(|source| {
        Error::EncodeStatus {
            name: name.clone(),
            source,
        }
    })?;
    Api::<MeshCluster>::all(primary.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|cause| Error::WriteStatus { name, cause })?;
    Ok(())
}

/// The JSON Patch that makes `status` the status. With `uid`, it first tests the object's
/// uid: a MeshCluster deleted and created again under its name while the sync ran refuses the
/// old object's status (the status subresource ignores the metadata of a merge patch, so a
/// uid there would be no precondition).
pub(crate) fn status_patch(
    status: &MeshClusterStatus,
    uid: Option<&str>,
) -> Result<json_patch::Patch, serde_json::Error> {
    let mut ops = Vec::new();
    if let Some(uid) = uid {
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "uid"]),
            value: Value::String(uid.to_owned()),
        }));
    }
    // `add` replaces a member that exists: fields cleared in `status` go.
    ops.push(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["status"]),
        value: serde_json::to_value(status)?,
    }));
    Ok(json_patch::Patch(ops))
}

/// Namespace lists in status messages.
fn list(names: &[String]) -> String {
    mesh_core::printable::first_few(names, names.len(), 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{
        labels::LabelDiff,
        sync::{ChangeStatus, NamespaceChange, NamespaceError, SyncMode},
    };
    use serde_json::json;

    #[test]
    fn errors_print_each_cause_once() {
        use mesh_core::fixtures::{assert_each_cause_prints_once, refused_connection};
        assert_each_cause_prints_once(&Error::WriteStatus {
            name: "east".into(),
            cause: refused_connection(),
        });
    }

    #[test]
    fn an_expired_token_is_told_apart_from_other_refusals() {
        let now = Timestamp::from_second(10_000).unwrap();
        let claims = |exp: i64| Claims {
            issued_at: Some(Timestamp::from_second(0).unwrap()),
            expires_at: Some(Timestamp::from_second(exp).unwrap()),
        };
        let refused = || Attempt::failed(Failure::Forbidden, "401 Unauthorized".to_owned());
        let Attempt::Failed {
            reason,
            message,
            answered,
        } = with_token_expiry(refused(), Some(claims(9_000)), "east", now)
        else {
            panic!("not a failure");
        };
        assert_eq!(reason, TOKEN_EXPIRED);
        assert!(message.contains("kubectl mesh rotate east"), "{message}");
        assert!(message.contains("401 Unauthorized"), "{message}");
        assert!(!answered);
        let status = next_status(
            None,
            &with_token_expiry(refused(), Some(claims(9_000)), "east", now),
            Some(1),
            now,
        );
        let reachable = status.condition(CONDITION_REACHABLE).unwrap();
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", TOKEN_EXPIRED)
        );

        // Still valid, no expiry, or another failure: left as it was.
        for (attempt, token) in [
            (refused(), Some(claims(20_000))),
            (refused(), None),
            (
                Attempt::failed(Failure::Unreachable, "refused".to_owned()),
                Some(claims(9_000)),
            ),
        ] {
            let Attempt::Failed { reason, .. } = with_token_expiry(attempt, token, "east", now)
            else {
                panic!("not a failure");
            };
            assert_ne!(reason, TOKEN_EXPIRED);
        }
    }

    fn report(in_sync: usize, corrected: &[&str], missing: &[&str], errors: &[&str]) -> SyncReport {
        SyncReport {
            mode: SyncMode::Apply,
            changes: corrected
                .iter()
                .map(|ns| NamespaceChange {
                    diff: LabelDiff {
                        namespace: (*ns).to_owned(),
                        ..LabelDiff::default()
                    },
                    status: ChangeStatus::Applied,
                })
                .collect(),
            in_sync,
            missing: missing.iter().map(|s| (*s).to_owned()).collect(),
            errors: errors
                .iter()
                .map(|ns| NamespaceError {
                    namespace: (*ns).to_owned(),
                    diff: LabelDiff::default(),
                    failure: Failure::Forbidden,
                    message: "forbidden".to_owned(),
                })
                .collect(),
            writes: u32::try_from(corrected.len()).expect("small"),
            unwritten: 0,
            stopped_in: None,
            out_of_scope: Vec::new(),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
    }

    #[test]
    fn successful_sync_fills_status_and_conditions() {
        let report = report(4, &["a", "b"], &["m"], &[]);
        let status = next_status(None, &Attempt::Synced(&report), Some(3), at(0));
        assert_eq!(status.namespaces_in_sync, 6);
        assert_eq!(status.namespaces_drifted, 2);
        assert_eq!(status.last_sync_writes, 2);
        assert_eq!(status.missing_namespaces, ["m"]);
        assert_eq!(status.namespaces_missing, 1);
        assert_eq!(status.last_error, None);
        assert_eq!(status.observed_generation, Some(3));
        assert!(status.is_true(CONDITION_REACHABLE));
        assert!(status.is_true(CONDITION_SYNCED));
        let synced = status.condition(CONDITION_SYNCED).expect("synced");
        assert_eq!(synced.reason, "InSync");
        assert!(synced.message.contains("2 corrected"), "{}", synced.message);
        assert!(
            synced.message.contains("absent on the remote: m"),
            "{}",
            synced.message
        );
        assert_eq!(synced.observed_generation, Some(3));
    }

    #[test]
    fn missing_namespaces_are_capped_and_counted() {
        // A nearly empty remote under a primary with tens of thousands of labelled namespaces.
        let names: Vec<String> = (0..50_000).rev().map(|i| format!("ci-{i:05}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let report = report(0, &[], &names, &[]);
        let status = next_status(None, &Attempt::Synced(&report), Some(1), at(0));

        let first: Vec<String> = (0..MISSING_NAMESPACES_LISTED)
            .map(|i| format!("ci-{i:05}"))
            .collect();
        assert_eq!(status.missing_namespaces, first);
        assert_eq!(status.namespaces_missing, 50_000);
        assert_eq!(status.missing_count(), 50_000);
        let synced = status.condition(CONDITION_SYNCED).expect("synced");
        assert!(
            synced.message.contains("50000 absent on the remote"),
            "{}",
            synced.message
        );
        let patch = status_patch(&status, None).expect("encode");
        assert_eq!(
            patched(json!({}), &patch)["status"]["namespacesMissing"],
            50_000
        );
        let size = serde_json::to_vec(&patch).expect("encode").len();
        assert!(size < 16 * 1024, "status patch of {size} bytes");
    }

    #[test]
    fn write_errors_make_synced_false() {
        let report = report(1, &[], &[], &["x"]);
        let status = next_status(None, &Attempt::Synced(&report), None, at(0));
        assert!(status.is_true(CONDITION_REACHABLE));
        let synced = status.condition(CONDITION_SYNCED).expect("synced");
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "WriteFailed")
        );
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("namespace x"))
        );
    }

    #[test]
    fn a_sync_the_remote_stopped_answering_is_unreachable_not_a_write_failure() {
        let before = next_status(
            None,
            &Attempt::Synced(&report(5, &[], &[], &[])),
            None,
            at(0),
        );
        let mut stopped = report(4, &["a"], &[], &["b", "c"]);
        stopped.errors[0].failure = Failure::Unreachable;
        stopped.errors[0].message = "connection refused".to_owned();
        stopped.unwritten = 7;
        stopped.stopped_in = Some("b".to_owned());

        let after = next_status(Some(&before), &Attempt::synced(&stopped), None, at(60));
        let reachable = after.condition(CONDITION_REACHABLE).expect("reachable");
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "Unreachable")
        );
        let message = &reachable.message;
        assert!(
            message.contains("1 namespaces corrected, 1 refused, 8 not written"),
            "{message}"
        );
        assert!(
            message.ends_with("namespace b: connection refused"),
            "{message}"
        );
        assert_eq!(after.namespaces_in_sync, 5, "counts of the last whole sync");
        assert!(!Attempt::synced(&stopped).reachable());
    }

    #[test]
    fn unreachable_keeps_counts_and_flips_reachable() {
        let report = report(5, &[], &["m"], &[]);
        let before = next_status(None, &Attempt::Synced(&report), Some(1), at(0));
        let failed = Attempt::failed(Failure::Unreachable, "connection refused".to_owned());
        let after = next_status(Some(&before), &failed, Some(1), at(60));
        assert_eq!(after.namespaces_in_sync, 5);
        assert_eq!(after.missing_namespaces, ["m"]);
        assert_eq!(
            after.last_sync_time, before.last_sync_time,
            "only successful syncs count"
        );
        assert_eq!(after.last_error.as_deref(), Some("connection refused"));
        let reachable = after.condition(CONDITION_REACHABLE).expect("reachable");
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "Unreachable")
        );
        assert_eq!(reachable.last_transition_time, Time(at(60)));
        assert_eq!(
            after.condition(CONDITION_SYNCED).expect("synced").status,
            "Unknown"
        );
        assert!(!failed.reachable());
        assert!(!Attempt::failed(Failure::Forbidden, String::new()).reachable());
        assert!(Attempt::failed(Failure::Other, String::new()).reachable());
    }

    /// A scope that cannot be used made the remote `Reachable=False`, though it answered and
    /// is the cluster attached: its admin went after the network.
    #[test]
    fn an_unwritable_cluster_is_reachable_and_not_synced() {
        let report = report(5, &[], &[], &[]);
        let before = next_status(None, &Attempt::Synced(&report), Some(1), at(0));
        let unwritable = Attempt::Unwritable {
            reason: "ScopeInvalid",
            message: "spec.scope cannot be used".to_owned(),
        };
        let after = next_status(Some(&before), &unwritable, Some(2), at(60));
        let reachable = after.condition(CONDITION_REACHABLE).expect("reachable");
        assert_eq!(reachable.status, "True");
        assert_eq!(reachable.last_transition_time, Time(at(0)));
        let synced = after.condition(CONDITION_SYNCED).expect("synced");
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "ScopeInvalid")
        );
        assert_eq!(synced.message, "spec.scope cannot be used");
        assert_eq!(
            after.last_error.as_deref(),
            Some("spec.scope cannot be used")
        );
        assert_eq!(after.namespaces_in_sync, 5, "counts of the last whole sync");
        assert!(unwritable.reachable());
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Synced",
            "True",
            "InSync",
            "3".into(),
            None,
            at(0),
        );
        set_condition(
            &mut conditions,
            "Synced",
            "True",
            "InSync",
            "4".into(),
            None,
            at(10),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(at(0)));
        assert_eq!(conditions[0].message, "4");
        set_condition(
            &mut conditions,
            "Synced",
            "False",
            "WriteFailed",
            "x".into(),
            None,
            at(20),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(20)));
    }

    #[test]
    fn steady_state_does_not_write_status_every_resync() {
        let refresh = Duration::from_secs(300);
        let steady = report(5, &[], &[], &[]);
        let first = next_status(None, &Attempt::Synced(&steady), Some(1), at(0));
        assert!(status_needs_write(None, &first, refresh));
        let again = next_status(Some(&first), &Attempt::Synced(&steady), Some(1), at(60));
        assert!(
            !status_needs_write(Some(&first), &again, refresh),
            "only lastSyncTime moved"
        );
        let later = next_status(Some(&first), &Attempt::Synced(&steady), Some(1), at(300));
        assert!(
            status_needs_write(Some(&first), &later, refresh),
            "lastSyncTime refresh"
        );

        let drift = report(4, &["a"], &[], &[]);
        let corrected = next_status(Some(&first), &Attempt::Synced(&drift), Some(1), at(61));
        assert!(status_needs_write(Some(&first), &corrected, refresh));
        let spec_changed = next_status(Some(&first), &Attempt::Synced(&steady), Some(2), at(62));
        assert!(status_needs_write(Some(&first), &spec_changed, refresh));
    }

    /// `object` with `patch` applied, as the apiserver applies it.
    fn patched(mut object: Value, patch: &json_patch::Patch) -> Value {
        json_patch::patch(&mut object, patch).expect("patch applies");
        object
    }

    #[test]
    fn status_patch_replaces_the_status_and_clears_fields() {
        let old = json!({"metadata": {"uid": "u1"}, "status": {
            "lastError": "boom", "missingNamespaces": ["a"], "namespacesMissing": 1,
        }});
        let cleared = MeshClusterStatus::default();
        let patch = status_patch(&cleared, Some("u1")).expect("encode");
        let status = patched(old.clone(), &patch)["status"].clone();
        assert_eq!(status, serde_json::to_value(&cleared).expect("encode"));
        assert_eq!(status["lastError"], Value::Null);
        // Another object under the name: the test fails, nothing is written.
        let mut recreated = old;
        recreated["metadata"]["uid"] = json!("u2");
        let patch = status_patch(&cleared, Some("u1")).expect("encode");
        assert!(json_patch::patch(&mut recreated, &patch).is_err());
    }

    #[test]
    fn namespace_lists_say_how_many_more() {
        let names: Vec<String> = (0..12).map(|i| format!("ns{i}")).collect();
        assert!(list(&names).ends_with(" and 2 more"));
    }
}
