//! Prometheus metrics of the webhook and the reconciler, served on `/metrics`.
//!
//! One [`Metrics`] value is shared by every task of the process; families are keyed by the
//! `MeshCluster` name so a dashboard can show one line per attached cluster.

use std::{fmt, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use tokio_util::sync::CancellationToken;

use crate::{leader::Leadership, push_outcome::PushResult};

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the per-cluster families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// Labels of `pushes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub cluster: String,
    pub result: String,
}

/// Labels of `syncs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub cluster: String,
    pub result: String,
}

/// Labels of `admission_reviews_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Labels of `events_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub reason: String,
}

/// Buckets of `propagation_latency_seconds`: 5 ms to ~5 s, which spans a healthy remote and
/// one that runs into the push deadline.
#[derive(Clone, Copy, Debug)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 11))
    }
}

/// Outcome of an admission review, as counted by `admission_reviews_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The request could not be read (HTTP 400 or 413).
    Invalid,
    /// Allowed without any push: no managed label changed, the namespace is excluded, or a
    /// dry run.
    NoPush,
    /// Allowed with a change of managed labels to push: pushed to the remotes, or handed to
    /// a newer change of the namespace or to the reconciler when its turn came too late (each
    /// remote's outcome is in `pushes_total`).
    Pushed,
    /// Refused by the review.
    Denied,
    /// Refused before its body was read (HTTP 503): the bodies being read and handled at once
    /// would have passed the process's budget.
    Busy,
}

impl ReviewOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::NoPush => "no_push",
            Self::Pushed => "pushed",
            Self::Denied => "denied",
            Self::Busy => "busy",
        }
    }
}

/// Every metric family of the process, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    propagation_latency: Family<ClusterLabels, Histogram, LatencyBuckets>,
    pushes: Family<PushLabels, Counter>,
    pushes_read_first: Family<ClusterLabels, Counter>,
    drift_corrections: Family<ClusterLabels, Counter>,
    cluster_reachable: Family<ClusterLabels, Gauge>,
    admission_reviews: Family<OutcomeLabels, Counter>,
    syncs: Family<SyncLabels, Counter>,
    sync_lists: Family<ClusterLabels, Counter>,
    leader: Gauge,
    pushes_in_flight: Gauge,
    body_budget: Gauge,
    body_in_use: Gauge,
    token_expiry: Family<ClusterLabels, Gauge>,
    events_dropped: Family<EventLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let propagation_latency = Family::new_with_constructor(LatencyBuckets);
        let pushes = Family::<PushLabels, Counter>::default();
        let pushes_read_first = Family::<ClusterLabels, Counter>::default();
        let drift_corrections = Family::<ClusterLabels, Counter>::default();
        let cluster_reachable = Family::<ClusterLabels, Gauge>::default();
        let admission_reviews = Family::<OutcomeLabels, Counter>::default();
        let syncs = Family::<SyncLabels, Counter>::default();
        let sync_lists = Family::<ClusterLabels, Counter>::default();
        let leader = Gauge::default();
        let pushes_in_flight = Gauge::default();
        let body_budget = Gauge::default();
        let body_in_use = Gauge::default();
        let token_expiry = Family::<ClusterLabels, Gauge>::default();
        let events_dropped = Family::<EventLabels, Counter>::default();
        // prometheus-client appends `_total` to counters: register the bare names.
        registry.register(
            "propagation_latency_seconds",
            "Time to push one label change to one remote cluster from the admission webhook",
            propagation_latency.clone(),
        );
        registry.register(
            "pushes",
            "Label pushes made by the admission webhook, by cluster and result",
            pushes.clone(),
        );
        registry.register(
            "pushes_read_first",
            "Label pushes whose one-patch bet on the remote's previous labels did not land \
             (refused as a conflict, or failed in a way a read may explain), so that the \
             remote was read and diffed first",
            pushes_read_first.clone(),
        );
        registry.register(
            "drift_corrections",
            "Remote namespaces whose managed labels the reconciler corrected",
            drift_corrections.clone(),
        );
        registry.register(
            "cluster_reachable",
            "1 when the last attempt to talk to the remote cluster succeeded, else 0",
            cluster_reachable.clone(),
        );
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by outcome",
            admission_reviews.clone(),
        );
        registry.register(
            "syncs",
            "Full syncs of a remote cluster run by the reconciler, by result",
            syncs.clone(),
        );
        registry.register(
            "sync_lists",
            "Syncs that listed the remote's namespaces because its namespace watch was not \
             current (the others read what the watch holds)",
            sync_lists.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not published because too many waited for a slow primary, by reason",
            events_dropped.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and reconciles, else 0",
            leader.clone(),
        );
        registry.register(
            "pushes_in_flight",
            "Pushes of this replica that stand in for the primary until its watch shows them \
             persisted or their time runs out",
            pushes_in_flight.clone(),
        );
        registry.register(
            "admission_body_budget_bytes",
            "Bytes the bodies of admission reviews being read and handled may hold at once \
             (--review-body-budget-mib); past it, reviews are answered 503",
            body_budget.clone(),
        );
        registry.register(
            "admission_body_in_use_bytes",
            "Bytes the bodies of admission reviews being read and handled hold now",
            body_in_use.clone(),
        );
        registry.register(
            "token_expiry_seconds",
            "Seconds until the stored token of the remote cluster expires (negative once \
             expired); absent for a token without expiry",
            token_expiry.clone(),
        );
        Self {
            registry,
            propagation_latency,
            pushes,
            pushes_read_first,
            drift_corrections,
            cluster_reachable,
            admission_reviews,
            syncs,
            sync_lists,
            leader,
            pushes_in_flight,
            body_budget,
            body_in_use,
            token_expiry,
            events_dropped,
        }
    }

    /// Records `count` Events of `reason` not published: their queue was full.
    pub fn events_dropped(&self, reason: &str, count: u64) {
        self.events_dropped
            .get_or_create(&EventLabels {
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    /// Sets the `pushes_in_flight` gauge (read when metrics are scraped).
    pub fn set_pushes_in_flight(&self, pushes: usize) {
        self.pushes_in_flight
            .set(i64::try_from(pushes).unwrap_or(i64::MAX));
    }

    /// Sets the `admission_body_budget_bytes` and `admission_body_in_use_bytes` gauges (read
    /// when metrics are scraped, so that reviews pay nothing for them).
    pub fn set_body_budget(&self, capacity: usize, in_use: usize) {
        self.body_budget
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        self.body_in_use
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }

    /// Keeps the `leader` gauge equal to this replica's standing until `stop`.
    pub async fn follow_leadership(
        self: Arc<Self>,
        mut leadership: Leadership,
        stop: CancellationToken,
    ) {
        loop {
            let leading = leadership.borrow_and_update().is_some();
            self.leader.set(i64::from(leading));
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { break },
                () = stop.cancelled() => break,
            }
        }
        self.leader.set(0);
    }

    /// Records one push of the admission path.
    pub fn observe_push(&self, cluster: &str, result: &PushResult, elapsed: Duration) {
        self.propagation_latency
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        self.count_push(cluster, result);
    }

    /// Counts one push to `cluster` by its result, without its latency: for a push not made.
    pub fn count_push(&self, cluster: &str, result: &PushResult) {
        self.pushes
            .get_or_create(&PushLabels {
                cluster: cluster.to_owned(),
                result: result.metric_label().to_owned(),
            })
            .inc();
    }

    /// Records one push whose one-patch bet did not land, so that its remote was read first.
    pub fn push_read_first(&self, cluster: &str) {
        self.pushes_read_first
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .inc();
    }

    /// Records remote namespaces corrected by the reconciler.
    pub fn drift_corrected(&self, cluster: &str, namespaces: u64) {
        let counter = self.drift_corrections.get_or_create(&ClusterLabels {
            cluster: cluster.to_owned(),
        });
        counter.inc_by(namespaces);
    }

    /// Records a sync that had to list the remote's namespaces.
    pub fn remote_listed(&self, cluster: &str) {
        self.sync_lists
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .inc();
    }

    /// Records whether the last attempt to reach the cluster succeeded.
    pub fn set_reachable(&self, cluster: &str, reachable: bool) {
        self.cluster_reachable
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .set(i64::from(reachable));
    }

    /// Records the end of one full sync; `result` is "ok" or the reason of the cluster's
    /// status condition (`Unreachable`, `TokenExpired`, ...).
    pub fn sync_finished(&self, cluster: &str, result: &str) {
        self.syncs
            .get_or_create(&SyncLabels {
                cluster: cluster.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records how long the cluster's stored token has left; `None` for one without expiry.
    pub fn set_token_expiry(&self, cluster: &str, seconds: Option<i64>) {
        let labels = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        match seconds {
            Some(seconds) => {
                self.token_expiry.get_or_create(&labels).set(seconds);
            }
            None => {
                self.token_expiry.remove(&labels);
            }
        }
    }

    /// Records one answered admission review.
    pub fn admission_review(&self, outcome: ReviewOutcome) {
        self.admission_reviews
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// Drops the gauges of a detached cluster so it stops showing as unreachable. Counters stay:
    /// they are cumulative and a scraper expects them not to vanish.
    pub fn forget_cluster(&self, cluster: &str) {
        self.forget_observations(cluster);
        self.propagation_latency.remove(&ClusterLabels {
            cluster: cluster.to_owned(),
        });
    }

    /// Drops what only the leader's syncs of `cluster` observe (whether it answers, when its
    /// token expires): a replica that stops leading no longer updates them, and the leader's
    /// are the ones that count.
    pub fn forget_observations(&self, cluster: &str) {
        let labels = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        self.cluster_reachable.remove(&labels);
        self.token_expiry.remove(&labels);
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_expected_names() {
        let metrics = Metrics::new();
        metrics.observe_push("east", &PushResult::Applied, Duration::from_millis(20));
        metrics.observe_push("east", &PushResult::TimedOut, Duration::from_secs(2));
        metrics.push_read_first("east");
        metrics.drift_corrected("east", 3);
        metrics.set_reachable("east", true);
        metrics.admission_review(ReviewOutcome::Pushed);
        metrics.sync_finished("east", "ok");
        metrics.set_token_expiry("east", Some(3600));
        metrics.set_token_expiry("west", Some(60));
        metrics.set_token_expiry("west", None);
        metrics.events_dropped("PropagationFailed", 2);
        metrics.set_body_budget(64 << 20, 4096);
        let text = metrics.encode().expect("encode");
        for expected in [
            "admission_body_budget_bytes 67108864",
            "admission_body_in_use_bytes 4096",
            r#"token_expiry_seconds{cluster="east"} 3600"#,
            "propagation_latency_seconds_bucket{",
            r#"pushes_total{cluster="east",result="applied"} 1"#,
            r#"pushes_read_first_total{cluster="east"} 1"#,
            r#"drift_corrections_total{cluster="east"} 3"#,
            r#"cluster_reachable{cluster="east"} 1"#,
            r#"admission_reviews_total{outcome="pushed"} 1"#,
            r#"syncs_total{cluster="east",result="ok"} 1"#,
            r#"events_dropped_total{reason="PropagationFailed"} 2"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        assert!(
            !text.contains(r#"token_expiry_seconds{cluster="west"}"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn the_leader_gauge_follows_the_election() {
        let metrics = Arc::new(Metrics::new());
        let (standing, leadership) = tokio::sync::watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(metrics.clone().follow_leadership(leadership, stop.clone()));
        let gauge_becomes = |value: &'static str| {
            let metrics = metrics.clone();
            async move {
                let line = format!("leader {value}");
                while !metrics.encode().expect("encode").lines().any(|l| l == line) {
                    tokio::task::yield_now().await;
                }
            }
        };
        let wait = |value| tokio::time::timeout(Duration::from_secs(5), gauge_becomes(value));
        wait("0").await.expect("not leading at first");
        standing.send_replace(Some(CancellationToken::new()));
        wait("1").await.expect("leading");
        standing.send_replace(None);
        wait("0").await.expect("stepped down");
        stop.cancel();
        task.await.expect("stops");
    }

    #[test]
    fn forgetting_a_cluster_drops_its_gauge() {
        let metrics = Metrics::new();
        metrics.set_reachable("gone", false);
        metrics.forget_cluster("gone");
        let text = metrics.encode().expect("encode");
        assert!(
            !text.contains(r#"cluster_reachable{cluster="gone"}"#),
            "{text}"
        );
    }
}
