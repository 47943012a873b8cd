//! What keeps a webhook replica running through voluntary disruptions (`kubectl drain`, node
//! upgrades): a PodDisruptionBudget, and replicas spread over nodes where the cluster has them.

use k8s_openapi::{
    api::{
        core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use mesh_core::MESH_NAMESPACE;

use super::{WEBHOOK, meta, selector_labels};

/// Evictions take the webhook's pods one at a time: with both on a drained node, the second
/// waits until the first runs again elsewhere, so admission and the leader's sync go on.
///
/// Rendered whatever `--replicas` is: maxUnavailable 1 never blocks a drain of a single
/// replica (a minAvailable would), and a Deployment scaled later by hand is covered.
///
/// A replica that runs but is not ready may always be evicted: by default the budget counts
/// only ready pods, so webhooks that never get ready (a primary they cannot list, an image
/// that fails its probes) would hold every drain of their nodes for as long as they fail.
pub fn pod_disruption_budget() -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(webhook_pods()),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Replicas on different nodes where the scheduler can: preferred, not required, so that a
/// one-node cluster, or a node down, still runs them all.
pub(super) fn spread_over_nodes() -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(webhook_pods()),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The webhook's pods, as the Deployment selects them.
fn webhook_pods() -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels()),
        ..Default::default()
    }
}
