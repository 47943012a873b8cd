//! What the rotation tests share: the remote's token Secrets, running `rotate` and `detach`, the
//! stored sync kubeconfig and what the webhook reports about it.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use mesh_core::{MESH_NAMESPACE, cluster::CONDITION_REACHABLE};
use mesh_e2e::{
    OneRemote, carries, describe,
    fixtures::{mesh_command, mesh_invocation, output},
    https_get, pushes_by_result, text,
    tokens::stored_kubeconfig,
};
use mesh_testenv::{
    Cluster, TestEnv,
    mesh::{Mesh, MeshOptions},
};

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const SYNC_TOKEN: &str = "kubectl-mesh-sync-token";
pub const STANDBY: &str = "kubectl-mesh-sync-token-standby";

/// A mesh of its own with one remote, attached with `attach_args`, its webhook run with
/// `webhook_args` (rotation revokes the very tokens the webhook syncs with), and a namespace
/// named after `prefix` on every cluster.
pub async fn one_remote(
    attach_args: &[&str],
    webhook_args: &[&str],
    prefix: &str,
) -> anyhow::Result<OneRemote> {
    let mut options = MeshOptions::from_workspace()?;
    options.attach_args = attach_args.iter().map(|a| (*a).to_owned()).collect();
    options.webhook_args = webhook_args.iter().map(|a| (*a).to_owned()).collect();
    mesh_e2e::one_remote_mesh_with(options, prefix).await
}

/// Names of the token Secrets on the remote.
pub async fn token_secrets(remote: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Api::<Secret>::namespaced(remote.client().await?, MESH_NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// `kubectl mesh <verb> <remote> --remote-kubeconfig <its admin kubeconfig>` without colours,
/// not yet run (a test that interrupts it spawns it itself).
pub fn remote_command(env: &TestEnv, verb: &str, remote: &Cluster) -> anyhow::Result<Command> {
    let kubeconfig = remote.kubeconfig.to_string_lossy();
    mesh_invocation(
        env,
        &[verb, &remote.name, "--remote-kubeconfig", &kubeconfig],
    )
}

/// `kubectl mesh rotate <remote> --remote-kubeconfig <its admin kubeconfig>`, whatever its exit
/// status.
pub async fn rotate(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Output> {
    rotate_with(env, remote, &[]).await
}

/// [`rotate`] with `extra` arguments.
pub async fn rotate_with(
    env: &TestEnv,
    remote: &Cluster,
    extra: &[&str],
) -> anyhow::Result<Output> {
    let mut cmd = remote_command(env, "rotate", remote)?;
    cmd.args(extra);
    output(cmd).await
}

/// `kubectl mesh detach <remote> --remote-kubeconfig <its admin kubeconfig>`, whatever its
/// exit status.
pub async fn detach(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Output> {
    output(remote_command(env, "detach", remote)?).await
}

/// Sets `istio-injection=<value>` on namespace `ns` of the primary and waits until `remote`
/// carries it too: sync works.
pub async fn injection_syncs(
    env: &TestEnv,
    remote: &Cluster,
    ns: &str,
    value: &str,
) -> anyhow::Result<()> {
    mesh_e2e::label_on_primary(env, ns, &[&format!("istio-injection={value}")]).await?;
    let expected = BTreeMap::from([("istio-injection".to_owned(), value.to_owned())]);
    carries(remote, ns, &expected, DEADLINE).await
}

/// `kubectl mesh list -o wide`, whatever its exit status: the table it printed, and the run
/// described for a failure message.
pub async fn wide_list(env: &TestEnv) -> anyhow::Result<(String, String)> {
    let list = mesh_command(env, &["list", "-o", "wide"]).await?;
    Ok((text(&list.stdout), describe(&list)))
}

/// The sync kubeconfig stored for cluster `name` (Secret `kubectl-mesh/cluster-<name>`).
pub async fn stored_sync(env: &TestEnv, name: &str) -> anyhow::Result<String> {
    stored_kubeconfig(
        env,
        MESH_NAMESPACE,
        &format!("cluster-{name}"),
        "kubeconfig",
    )
    .await
}

/// `pushes_total` of the webhook by result, over every cluster.
pub async fn pushes(mesh: &Mesh) -> anyhow::Result<BTreeMap<String, f64>> {
    pushes_by_result(mesh.metrics_address(), &mesh.ca_pem()?).await
}

/// Status and reason of the MeshCluster's Reachable condition.
pub async fn reachable_reason(
    env: &TestEnv,
    name: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let reachable = mesh_e2e::cluster_condition(env, name, CONDITION_REACHABLE).await?;
    Ok(reachable.map(|c| (c.status, c.reason)))
}

/// The webhook's `token_expiry_seconds` line for cluster `name`, and its value.
pub async fn token_expiry(mesh: &Mesh, name: &str) -> anyhow::Result<(String, f64)> {
    let metrics = https_get(mesh.metrics_address(), &mesh.ca_pem()?, "/metrics").await?;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with(&format!("token_expiry_seconds{{cluster=\"{name}\"}}")))
        .ok_or_else(|| anyhow::anyhow!("no token_expiry_seconds for {name}: {metrics}"))?;
    let seconds: f64 = gauge.rsplit(' ').next().unwrap_or_default().parse()?;
    Ok((gauge.to_owned(), seconds))
}

/// `iat` and `exp` of a JWT.
pub fn issued_and_expires(token: &str) -> anyhow::Result<(i64, i64)> {
    let claims = mesh_core::token::claims(token)
        .ok_or_else(|| anyhow::anyhow!("the stored token is not a JWT"))?;
    Ok((
        claims.issued_at.map(|t| t.as_second()).unwrap_or_default(),
        claims.expires_at.map(|t| t.as_second()).unwrap_or_default(),
    ))
}
