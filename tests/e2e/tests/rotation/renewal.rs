//! Time-bound stored tokens: the leader renews them with the sync account's own right, and
//! `attach --token-ttl` stores one that `rotate` revokes.

use std::process::Output;

use k8s_openapi::api::{admissionregistration::v1::ValidatingAdmissionPolicy, core::v1::Secret};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use mesh_core::MESH_NAMESPACE;
use mesh_e2e::tokens::{answer_to, mint_token, revoked, store_token, token_of};
use mesh_e2e::{
    assert_success, describe, eventually,
    fixtures::{mesh_command, output, plugin},
    text,
};
use mesh_testenv::{Cluster, TestEnv};

use crate::support::{
    DEADLINE, SYNC_TOKEN, detach, injection_syncs, issued_and_expires, one_remote,
    reachable_reason, rotate, stored_sync, token_expiry, token_secrets, wide_list,
};

/// What the time-bound token of the sync account needs on the remote to be renewed by the
/// webhook: `create` on `serviceaccounts/token` for that one ServiceAccount.
async fn grant_token_renewal(remote: &Cluster) -> anyhow::Result<()> {
    let client = remote.client().await?;
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubectl-mesh-sync-token-renewal", "namespace": MESH_NAMESPACE},
        "rules": [{
            "apiGroups": [""],
            "resources": ["serviceaccounts/token"],
            "resourceNames": ["kubectl-mesh-sync"],
            "verbs": ["create"],
        }],
    }))?;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubectl-mesh-sync-token-renewal", "namespace": MESH_NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "kubectl-mesh-sync-token-renewal",
            },
            "subjects": [{
                "kind": "ServiceAccount",
                "name": "kubectl-mesh-sync",
                "namespace": MESH_NAMESPACE,
            }],
        }))?;
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), MESH_NAMESPACE)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client, MESH_NAMESPACE)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// `kubectl mesh attach <remote's admin kubeconfig> --name <remote> <extra>`, once more, whatever
/// its exit status.
async fn attach_again(env: &TestEnv, remote: &Cluster, extra: &[&str]) -> anyhow::Result<Output> {
    let mut attach = plugin(env)?;
    attach
        .arg("attach")
        .arg(&remote.kubeconfig)
        .args(["--name", &remote.name])
        .args(extra);
    output(attach).await
}

/// The leader renews a time-bound stored token after `--token-renew-fraction` of its
/// lifetime, with the sync account's own right to a new token, and sync goes on with it. The
/// apiserver issues tokens for ten minutes at least, so the renewal is forced within seconds by
/// a fraction of 0.01 (six seconds). The time-bound token is minted here with the TokenRequest
/// API, as the admin would; without the right to renew, each attempt is an Event.
#[tokio::test]
async fn the_leader_renews_a_time_bound_token_and_sync_goes_on_with_the_new_one()
-> anyhow::Result<()> {
    let (env, mesh, remote, ns) =
        one_remote(&[], &["--token-renew-fraction", "0.01"], "renewal").await?;
    let name = remote.name.clone();

    // A ten-minute token of the sync account, stored in place of the long-lived one.
    let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        remote.client().await?,
        MESH_NAMESPACE,
    );
    let minted = mint_token(&accounts, "kubectl-mesh-sync", 600).await?;
    store_token(&env, &format!("cluster-{name}"), &minted).await?;
    let (minted_at, _) = issued_and_expires(&minted)?;

    // Not allowed to renew yet: the failure is an Event on the MeshCluster, sync goes on.
    let events = Api::<k8s_openapi::api::events::v1::Event>::all(env.primary().client().await?);
    eventually("a TokenRenewalFailed Event", DEADLINE, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("TokenRenewalFailed")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            })
            .then_some(()))
    })
    .await?;
    assert_eq!(
        token_of(&stored_sync(&env, &name).await?)?,
        minted,
        "a failed renewal leaves the stored token as it was"
    );

    grant_token_renewal(&remote).await?;
    let renewed = eventually("the stored token renewed", DEADLINE, || async {
        let token = token_of(&stored_sync(&env, &name).await?)?;
        Ok((token != minted).then_some(token))
    })
    .await?;
    let (issued, expires) = issued_and_expires(&renewed)?;
    assert!(issued >= minted_at, "renewed token issued before the first");
    assert!(
        (expires - issued - 600).abs() <= 1,
        "the renewed token keeps the lifetime: {issued}..{expires}"
    );
    assert_eq!(answer_to(&stored_sync(&env, &name).await?).await?, 201);

    // Sync goes on with the renewed token, through further renewals.
    for value in ["enabled", "disabled"] {
        injection_syncs(&env, &remote, &ns, value).await?;
        eventually("a further renewal", DEADLINE, || async {
            let token = token_of(&stored_sync(&env, &name).await?)?;
            Ok((token != renewed && token != minted).then_some(()))
        })
        .await?;
    }
    assert_eq!(
        reachable_reason(&env, &name).await?.map(|r| r.0).as_deref(),
        Some("True")
    );
    let (gauge, seconds) = token_expiry(&mesh, &name).await?;
    assert!((500.0..=600.0).contains(&seconds), "{gauge}");
    Ok(())
}

/// `attach --token-ttl`: the stored token is time-bound and bound to the Secret attach made
/// for it, the webhook renews it (forced within seconds by a fraction of 0.01 of its ten
/// minutes), sync goes on, `rotate` revokes it while it is being renewed, and detach removes
/// the renewal right.
#[tokio::test]
async fn attach_with_a_token_ttl_stores_a_renewed_bound_token_that_rotate_revokes()
-> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote(
        &["--token-ttl", "10m"],
        &["--token-renew-fraction", "0.01"],
        "ttl",
    )
    .await?;
    let name = remote.name.clone();
    let stored_token = || async { token_of(&stored_sync(&env, &name).await?) };

    let first = stored_token().await?;
    let (issued, expires) = issued_and_expires(&first)?;
    assert_eq!(expires - issued, 600, "a ten-minute token");
    assert_eq!(
        mesh_core::token::bound_secret(&first)
            .map(|s| s.0)
            .as_deref(),
        Some(SYNC_TOKEN),
        "bound to the Secret attach made"
    );
    // No long-lived token of the sync account on the remote.
    assert!(
        !token_secrets(&remote)
            .await?
            .contains(&SYNC_TOKEN.to_owned()),
        "a long-lived token Secret exists"
    );
    let (table, run) = wide_list(&env).await?;
    assert!(table.contains(" in "), "no expiry in list: {run}");

    let renewed = eventually("the webhook renews the token", DEADLINE, || async {
        let token = stored_token().await?;
        Ok((token != first).then_some(token))
    })
    .await?;
    assert_eq!(
        mesh_core::token::bound_secret(&renewed)
            .map(|s| s.0)
            .as_deref(),
        Some(SYNC_TOKEN)
    );
    injection_syncs(&env, &remote, &ns, "enabled").await?;

    // check: the time-bound token has time left, and its renewal right is no excess.
    let check = mesh_command(&env, &["check", "-o", "json"]).await?;
    let report = mesh_e2e::check_report::CheckReport::parse(&check)?;
    for description in [
        "credentials do not expire soon",
        "credentials have exactly the rights label sync needs",
    ] {
        let entry = report
            .cluster_check(&name, description)
            .ok_or_else(|| anyhow::anyhow!("no check {description:?}: {report:?}"))?;
        assert_eq!(entry.result, "ok", "{entry:?}");
    }
    assert!(
        report
            .cluster_check(&name, "credentials do not expire soon")
            .and_then(|e| e.detail.as_deref())
            .is_some_and(|d| d.starts_with("token expires in")),
        "{report:?}"
    );

    let before = stored_sync(&env, &name).await?;
    let rotated = rotate(&env, &remote).await?;
    assert_success(&rotated);
    revoked("the token before rotation", &before).await?;
    let after = stored_sync(&env, &name).await?;
    assert_eq!(answer_to(&after).await?, 201);
    let (issued, expires) = issued_and_expires(&token_of(&after)?)?;
    assert_eq!(expires - issued, 600, "rotate keeps the lifetime");
    let anchors: Vec<String> = Api::<Secret>::namespaced(remote.client().await?, MESH_NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.starts_with(SYNC_TOKEN))
        .collect();
    assert_eq!(anchors, vec![SYNC_TOKEN.to_owned()], "no standby left");

    // The dry run shows the renewal right and a Secret without a token.
    let dry = attach_again(&env, &remote, &["--token-ttl", "10m", "--dry-run"]).await?;
    assert_success(&dry);
    let yaml = text(&dry.stdout);
    assert!(yaml.contains("serviceaccounts/token"), "{yaml}");
    assert!(yaml.contains("kubectl-mesh-sync-token-renewal"), "{yaml}");
    assert!(
        !yaml.contains("kubernetes.io/service-account-token"),
        "{yaml}"
    );

    // A re-run of attach without --token-ttl refuses to switch quietly, before it changes
    // anything: the scope it was also given does not reach the remote.
    let attach = attach_again(
        &env,
        &remote,
        &["--yes", "--exclude-namespaces", "kept-out"],
    )
    .await?;
    assert!(!attach.status.success(), "{}", describe(&attach));
    let refusal = text(&attach.stderr);
    assert!(
        refusal.contains("time-bound") && refusal.trim_end().lines().count() == 1,
        "{}",
        describe(&attach)
    );
    let sync_scope = Api::<ValidatingAdmissionPolicy>::all(remote.client().await?)
        .get("kubectl-mesh-sync-scope")
        .await?;
    assert!(
        !serde_json::to_string(&sync_scope)?.contains("kept-out"),
        "the refused re-run changed the remote's sync scope"
    );

    let detached = detach(&env, &remote).await?;
    assert_success(&detached);
    let roles =
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(remote.client().await?, MESH_NAMESPACE);
    assert!(
        roles
            .get_opt("kubectl-mesh-sync-token-renewal")
            .await
            .ok()
            .flatten()
            .is_none(),
        "the renewal Role is left"
    );
    Ok(())
}
