//! Callers with some rights only: a kubeconfig for a ServiceAccount bound to hand-made
//! ClusterRoles, to show that a command asks for every right it uses before it changes
//! anything, and how a refusal reads.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{text, tokens::mint_token, unique_name};
use anyhow::Context as _;
use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding},
};
use kube::{Api, api::PostParams, config::Kubeconfig};
use mesh_testenv::Cluster;
use serde_json::{Value, json};

/// Rules granted everywhere (a ClusterRoleBinding), or in one namespace (a RoleBinding there).
pub struct Grant<'a> {
    pub namespace: Option<&'a str>,
    pub rules: Value,
}

impl<'a> Grant<'a> {
    /// `rules` everywhere.
    pub fn everywhere(rules: Value) -> Self {
        Grant {
            namespace: None,
            rules,
        }
    }

    /// `rules` in `namespace` only.
    pub fn within(namespace: &'a str, rules: Value) -> Self {
        Grant {
            namespace: Some(namespace),
            rules,
        }
    }
}

/// A kubeconfig in `dir` for a new ServiceAccount of `cluster` holding exactly `grants`.
pub async fn kubeconfig_granting(
    cluster: &Cluster,
    dir: &Path,
    grants: &[Grant<'_>],
) -> anyhow::Result<PathBuf> {
    let client = cluster.client().await?;
    let account = unique_name("e2e-limited");
    let subjects = json!([{"kind": "ServiceAccount", "name": account, "namespace": "default"}]);
    for (i, grant) in grants.iter().enumerate() {
        let role_name = format!("{account}-{i}");
        let role: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": role_name},
            "rules": grant.rules,
        }))?;
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await?;
        let binding = json!({
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": subjects,
        });
        match grant.namespace {
            None => {
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&PostParams::default(), &serde_json::from_value(binding)?)
                    .await?;
            }
            Some(ns) => {
                Api::<RoleBinding>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &serde_json::from_value(binding)?)
                    .await?;
            }
        }
    }
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": account}}))?,
        )
        .await?;
    let token = mint_token(&accounts, &account, 3600).await?;
    let admin = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let ca = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("no CA in the admin kubeconfig")?;
    let name = &cluster.name;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": account}}],
        "current-context": name,
    });
    let path = dir.join(format!("{account}.yaml"));
    std::fs::write(&path, kubeconfig.to_string())?;
    Ok(path)
}

/// `kubectl-mesh --kubeconfig <kubeconfig> <args>` without colours, whatever its exit status.
pub async fn mesh_as(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("NO_COLOR", "1");
    crate::fixtures::output(cmd).await
}

/// The command failed with exactly one line on stderr, `error: ...`; returns that line.
pub fn refused_in_one_line(out: &Output, what: &str) -> anyhow::Result<String> {
    let err = text(&out.stderr);
    anyhow::ensure!(!out.status.success(), "{what} succeeded: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    anyhow::ensure!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "{what}: stderr is not one error line:\n{err}"
    );
    Ok(lines[0].to_owned())
}

/// `Ok` when `after` is `before`, else an error naming the `case` and what changed: a refused
/// command must leave everything as it was.
pub fn unchanged<T: PartialEq + std::fmt::Debug>(
    case: &str,
    what: &str,
    before: &T,
    after: &T,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        after == before,
        "{case}: {what} changed: {before:?} -> {after:?}"
    );
    Ok(())
}
