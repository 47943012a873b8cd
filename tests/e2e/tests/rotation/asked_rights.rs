//! Rotate asks for every right it uses before it changes anything: a caller lacking one is
//! refused in one line, with no token issued, revoked or stored.

use anyhow::ensure;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use mesh_core::MESH_NAMESPACE;
use mesh_e2e::{text, tokens::token_of};
use mesh_testenv::Cluster;
use serde_json::json;

use crate::support::*;
use mesh_e2e::callers::{Grant, kubeconfig_granting, mesh_as, refused_in_one_line, unchanged};

/// Every Secret in the remote's mesh namespace (token Secrets and the Secrets time-bound
/// tokens are bound to), with its uid: one deleted and created anew differs.
async fn remote_secrets(remote: &Cluster) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> =
        Api::<Secret>::namespaced(remote.client().await?, MESH_NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|s| {
                (
                    s.metadata.name.unwrap_or_default(),
                    s.metadata.uid.unwrap_or_default(),
                )
            })
            .collect();
    out.sort();
    Ok(out)
}

/// A time-bound token (`attach --token-ttl`) is replaced through the TokenRequest API, and every
/// new token is stored on the primary: a caller who may do everything else but request a token
/// on the remote, or replace the stored kubeconfig on the primary, is refused before the first
/// token Secret is created, not with a standby token issued and never stored.
#[tokio::test]
async fn rotate_by_a_caller_lacking_a_right_changes_nothing() -> anyhow::Result<()> {
    let (env, _mesh, remote, _ns) = one_remote(&["--token-ttl", "10m"], &[], "rights").await?;
    let name = remote.name.clone();
    let dir = tempfile::tempdir()?;
    let admin_remote = remote.kubeconfig.to_string_lossy().into_owned();

    // On the primary: all rotate reads, no Secret replaced.
    let primary_reader = kubeconfig_granting(
        env.primary(),
        dir.path(),
        &[Grant::everywhere(json!([
            {"apiGroups": [""], "resources": ["namespaces", "secrets"], "verbs": ["get"]},
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["get", "list"]},
        ]))],
    )
    .await?;
    // On the remote: ServiceAccounts read, token Secrets read, created and deleted, no token
    // requested.
    let remote_without_token_requests = kubeconfig_granting(
        &remote,
        dir.path(),
        &[
            Grant::everywhere(json!([
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
            ])),
            Grant::within(
                MESH_NAMESPACE,
                json!([
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]},
                    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
                ]),
            ),
        ],
    )
    .await?;
    let remote_without_token_requests =
        remote_without_token_requests.to_string_lossy().into_owned();

    let cases = [
        (
            "may not replace the stored kubeconfig",
            primary_reader.as_path(),
            admin_remote.as_str(),
            "missing permissions on the primary",
            "secrets in namespace kubectl-mesh (update)",
        ),
        (
            "may not request a token",
            env.primary().kubeconfig.as_path(),
            remote_without_token_requests.as_str(),
            "missing permissions on remote cluster",
            "serviceaccounts/token in namespace kubectl-mesh (create)",
        ),
    ];
    let mut failures = Vec::new();
    for (case, primary_kubeconfig, remote_kubeconfig, where_, missing) in cases {
        let secrets_before = remote_secrets(&remote).await?;
        let stored_before =
            mesh_core::token::bound_secret(&token_of(&stored_sync(&env, &name).await?)?);
        let out = mesh_as(
            primary_kubeconfig,
            &["rotate", &name, "--remote-kubeconfig", remote_kubeconfig],
        )
        .await?;
        let outcome = async {
            let line = refused_in_one_line(&out, case)?;
            ensure!(
                line.contains(where_) && line.contains(missing),
                "{case}: {line}"
            );
            let secrets_after = remote_secrets(&remote).await?;
            unchanged(
                case,
                "the remote's Secrets",
                &secrets_before,
                &secrets_after,
            )?;
            // Renewed by the webhook or not, the stored token is bound to the same Secret.
            let stored_after =
                mesh_core::token::bound_secret(&token_of(&stored_sync(&env, &name).await?)?);
            unchanged(case, "the stored token", &stored_before, &stored_after)
        }
        .await;
        if let Err(e) = outcome {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // With every right, the time-bound token is rotated.
    let out = rotate(&env, &remote).await?;
    assert!(out.status.success(), "rotate: {}", text(&out.stderr));
    let stored = token_of(&stored_sync(&env, &name).await?)?;
    assert_eq!(
        mesh_core::token::bound_secret(&stored)
            .map(|s| s.0)
            .as_deref(),
        Some(SYNC_TOKEN)
    );
    Ok(())
}
