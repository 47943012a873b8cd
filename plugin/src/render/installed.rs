//! The webhook's Deployment as installed, read back: what `check` judges, and what a re-run of
//! `install` would change.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};

use super::WEBHOOK;

/// The containers of a Deployment's pod template.
pub fn pod_containers(deployment: &Deployment) -> &[Container] {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default()
}

/// The webhook's container (the first, when none has its name).
pub fn webhook_container(deployment: &Deployment) -> Option<&Container> {
    let containers = pod_containers(deployment);
    containers
        .iter()
        .find(|c| c.name == WEBHOOK)
        .or(containers.first())
}

/// The image the webhook's container runs.
pub fn image(deployment: &Deployment) -> Option<&str> {
    webhook_container(deployment)?.image.as_deref()
}

/// The replicas the Deployment asks for.
pub fn replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref()?.replicas
}
