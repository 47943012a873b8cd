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

/// What a caller rotating tokens needs on the primary without Istio: the Secrets in
/// kubectl-mesh, the MeshClusters, and kube-system (the primary's id); not istio-system.
async fn caller_without_istio_system(
    env: &mesh_testenv::TestEnv,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    kubeconfig_granting(
        env.primary(),
        dir,
        &[
            Grant::everywhere(json!([
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
                {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["get", "list"]},
            ])),
            Grant::within(
                MESH_NAMESPACE,
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"]}]),
            ),
        ],
    )
    .await
}

/// A cluster attached without --istio-remote-secret has no Istio reader, as its remote says: a
/// caller who may not read istio-system rotates it, and its dry run names no Istio step.
#[tokio::test]
async fn rotate_without_an_istio_reader_needs_no_right_in_istio_system() -> anyhow::Result<()> {
    let (env, _mesh, remote, _ns) = one_remote(&[], &[], "no-istio").await?;
    let name = remote.name.clone();
    let dir = tempfile::tempdir()?;
    let caller = caller_without_istio_system(&env, dir.path()).await?;
    let admin_remote = remote.kubeconfig.to_string_lossy().into_owned();
    let rotate = [
        "rotate",
        name.as_str(),
        "--remote-kubeconfig",
        &admin_remote,
    ];

    let dry = mesh_as(&caller, &[rotate.as_slice(), &["--dry-run"]].concat()).await?;
    let said = text(&dry.stderr);
    assert!(dry.status.success(), "{said}");
    assert!(
        said.contains("kubectl-mesh/kubectl-mesh-sync:") && !said.contains("istio"),
        "{said}"
    );
    let before = token_of(&stored_sync(&env, &name).await?)?;
    let out = mesh_as(&caller, &rotate).await?;
    assert!(out.status.success(), "rotate: {}", text(&out.stderr));
    assert_ne!(token_of(&stored_sync(&env, &name).await?)?, before);
    Ok(())
}

/// The tokens stored on the primary for `name`: the sync kubeconfig's and the Istio remote
/// secret's.
async fn stored_tokens(env: &mesh_testenv::TestEnv, name: &str) -> anyhow::Result<[String; 2]> {
    let istio = mesh_e2e::tokens::stored_kubeconfig(
        env,
        "istio-system",
        &format!("istio-remote-secret-{name}"),
        name,
    )
    .await?;
    Ok([token_of(&stored_sync(env, name).await?)?, token_of(&istio)?])
}

/// The Istio reader may read every Secret on the remote, the rotated sync token included: a
/// caller who may replace the stored kubeconfigs in kubectl-mesh but may not read istio-system
/// is refused in one line (which rights, where, whom to ask) rather than told the tokens were
/// rotated with the reader's old token still valid; its dry run says the same, or, without the
/// remote's kubeconfig, that it cannot tell.
#[tokio::test]
async fn rotate_by_a_caller_who_may_not_read_istio_system_changes_nothing() -> anyhow::Result<()> {
    let (env, _mesh, remote, _ns) =
        one_remote(&["--istio-remote-secret"], &[], "istio-rights").await?;
    let name = remote.name.clone();
    let dir = tempfile::tempdir()?;
    let admin_remote = remote.kubeconfig.to_string_lossy().into_owned();
    let caller = caller_without_istio_system(&env, dir.path()).await?;

    let secrets_before = remote_secrets(&remote).await?;
    let stored_before = stored_tokens(&env, &name).await?;
    let mut lines = Vec::new();
    for (case, extra) in [
        ("rotate", [].as_slice()),
        ("rotate --dry-run", ["--dry-run"].as_slice()),
    ] {
        let mut args = vec![
            "rotate",
            name.as_str(),
            "--remote-kubeconfig",
            &admin_remote,
        ];
        args.extend(extra);
        let out = mesh_as(&caller, &args).await?;
        let line = refused_in_one_line(&out, case)?;
        for said in [
            "has an Istio reader",
            "secrets in namespace istio-system (get/update)",
            "ask a cluster admin",
        ] {
            ensure!(line.contains(said), "{case}: {said:?} not in {line}");
        }
        unchanged(
            case,
            "the remote's Secrets",
            &secrets_before,
            &remote_secrets(&remote).await?,
        )?;
        unchanged(
            case,
            "the stored tokens",
            &stored_before,
            &stored_tokens(&env, &name).await?,
        )?;
        lines.push(line);
    }
    assert_eq!(lines[0], lines[1], "the dry run refuses as the run does");

    // Without the remote's kubeconfig the dry run cannot ask the remote: it says so.
    let out = mesh_as(&caller, &["rotate", &name, "--dry-run"]).await?;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot tell whether it has an Istio reader"),
        "{err}"
    );

    // With the rights, the Istio reader's token is rotated with the others.
    let out = rotate(&env, &remote).await?;
    assert!(out.status.success(), "rotate: {}", text(&out.stderr));
    let stored_after = stored_tokens(&env, &name).await?;
    assert_ne!(stored_after[0], stored_before[0], "the sync token");
    assert_ne!(
        stored_after[1], stored_before[1],
        "the Istio reader's token"
    );
    Ok(())
}
