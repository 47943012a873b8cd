//! The webhook's NetworkPolicy: its pods accept connections on the webhook port (the
//! apiserver's calls) and the metrics port (probes and scrapes), and on nothing else.

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use mesh_core::MESH_NAMESPACE;

use super::{WEBHOOK, meta, selector_labels};

/// Container port names of the webhook pod that the policy opens.
const OPEN_PORTS: [&str; 2] = ["https", "metrics"];

pub fn network_policy() -> NetworkPolicy {
    let ports = OPEN_PORTS
        .iter()
        .map(|name| NetworkPolicyPort {
            port: Some(IntOrString::String((*name).to_owned())),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        })
        .collect();
    NetworkPolicy {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels()),
                ..Default::default()
            }),
            // The apiserver calls from addresses no selector can name (host network, another
            // VPC): the port is the boundary; who may talk through it is mTLS's job.
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(ports),
            }]),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ..Default::default()
        }),
    }
}
