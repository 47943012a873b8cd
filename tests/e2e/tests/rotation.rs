//! Token rotation: `kubectl mesh rotate` replaces the stored tokens while label changes flow,
//! revokes the old ones, survives an interruption, and repairs an expired token; status,
//! check, list and the webhook's metrics say when a token expires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{CONDITION_REACHABLE, MeshCluster},
};
use mesh_e2e::tokens::{answer_to, revoked, stored_kubeconfig, token_of, with_token};
use mesh_e2e::{
    create_everywhere, describe, eventually, fixtures::output, https_get, managed_labels,
    own_mesh_with, text,
};
use mesh_testenv::{TestEnv, mesh::Mesh, mesh::MeshOptions};

const DEADLINE: Duration = Duration::from_secs(60);
const SYNC_TOKEN: &str = "kubectl-mesh-sync-token";
const STANDBY: &str = "kubectl-mesh-sync-token-standby";

/// Names of the token Secrets on the remote.
async fn token_secrets(remote: &mesh_testenv::Cluster) -> anyhow::Result<Vec<String>> {
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

async fn mesh_command(env: &TestEnv, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = mesh_e2e::fixtures::plugin(env)?;
    cmd.args(args);
    output(cmd).await
}

/// `pushes_total` of the webhook by result, over every cluster.
async fn pushes(mesh: &Mesh) -> anyhow::Result<BTreeMap<String, f64>> {
    pushes_at(mesh.metrics_address(), &mesh.ca_pem()?).await
}

/// `pushes_total` by result of the replica whose metrics port is `addr`.
async fn pushes_at(addr: &str, ca: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let metrics = https_get(addr, ca, "/metrics").await?;
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("pushes_total{")) {
        let result = line
            .split("result=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        *out.entry(result.to_owned()).or_default() += count;
    }
    Ok(out)
}

async fn reachable_reason(env: &TestEnv, name: &str) -> anyhow::Result<Option<(String, String)>> {
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    Ok(mc
        .status
        .and_then(|s| s.condition(CONDITION_REACHABLE).cloned())
        .map(|c| (c.status, c.reason)))
}

#[tokio::test]
async fn rotation_under_a_stream_of_label_changes_loses_none_and_revokes_the_old_tokens()
-> anyhow::Result<()> {
    let mut options = MeshOptions::from_workspace()?;
    options.attach_args = vec!["--istio-remote-secret".into(), "--services-view".into()];
    let (env, mesh) = own_mesh_with(1, options).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let ns = create_everywhere(&env, "rotation").await?;

    let old_sync = stored_kubeconfig(
        &env,
        MESH_NAMESPACE,
        &format!("cluster-{name}"),
        "kubeconfig",
    )
    .await?;
    let old_view = stored_kubeconfig(
        &env,
        MESH_NAMESPACE,
        &format!("cluster-{name}-view"),
        "kubeconfig",
    )
    .await?;
    let old_istio = stored_kubeconfig(
        &env,
        "istio-system",
        &format!("istio-remote-secret-{name}"),
        &name,
    )
    .await?;
    for kc in [&old_sync, &old_view, &old_istio] {
        assert_eq!(answer_to(kc).await?, 201, "the attached tokens work");
    }
    let before = pushes(&mesh).await?;

    // A change every 100 ms on the primary for as long as the rotation runs.
    let primary = env.primary().client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let (primary, ns, stop) = (primary.clone(), ns.clone(), stop.clone());
        tokio::spawn(async move {
            let api: Api<Namespace> = Api::all(primary);
            let mut n = 0u32;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let patch =
                    serde_json::json!({"metadata": {"labels": {"istio.io/rev": format!("v{n}")}}});
                if let Err(e) = api
                    .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    failures.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let rotate = mesh_command(
        &env,
        &[
            "rotate",
            &name,
            "--remote-kubeconfig",
            &remote.kubeconfig.display().to_string(),
        ],
    )
    .await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (changes, failures) = changer.await?;
    assert!(rotate.status.success(), "rotate: {}", describe(&rotate));
    assert!(failures.is_empty(), "label changes failed: {failures:?}");
    eprintln!("rotation took {took:.2?} under {changes} label changes");
    assert!(changes >= 10, "only {changes} changes during the rotation");

    // No change lost: the remote ends with the last one.
    let last = BTreeMap::from([("istio.io/rev".to_owned(), format!("v{changes}"))]);
    eventually("the remote carries the last change", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&last)).then_some(()))
    })
    .await?;
    // And no push was refused (401) or failed otherwise during the rotation.
    let after = pushes(&mesh).await?;
    for result in ["forbidden", "failed", "unreachable", "timed_out"] {
        let grew =
            after.get(result).copied().unwrap_or(0.0) - before.get(result).copied().unwrap_or(0.0);
        assert_eq!(
            grew, 0.0,
            "pushes {result} during rotation: {before:?} -> {after:?}"
        );
    }
    assert!(
        after.get("applied").copied().unwrap_or(0.0)
            > before.get("applied").copied().unwrap_or(0.0),
        "no push applied: {after:?}"
    );

    // The old tokens are revoked, the new ones work.
    for (what, old, new) in [
        (
            "sync",
            &old_sync,
            stored_kubeconfig(
                &env,
                MESH_NAMESPACE,
                &format!("cluster-{name}"),
                "kubeconfig",
            )
            .await?,
        ),
        (
            "view",
            &old_view,
            stored_kubeconfig(
                &env,
                MESH_NAMESPACE,
                &format!("cluster-{name}-view"),
                "kubeconfig",
            )
            .await?,
        ),
        (
            "istio",
            &old_istio,
            stored_kubeconfig(
                &env,
                "istio-system",
                &format!("istio-remote-secret-{name}"),
                &name,
            )
            .await?,
        ),
    ] {
        assert_ne!(token_of(old)?, token_of(&new)?, "{what} token unchanged");
        revoked(&format!("the old {what} token"), old).await?;
        assert_eq!(answer_to(&new).await?, 201, "new {what} token refused");
    }
    // `kubectl auth whoami` with the old token, as a user would try it.
    let old_file = tempfile::NamedTempFile::new()?;
    std::fs::write(old_file.path(), &old_sync)?;
    let mut whoami = std::process::Command::new(env.binaries().kubectl());
    whoami
        .arg("--kubeconfig")
        .arg(old_file.path())
        .args(["auth", "whoami"]);
    let whoami = output(whoami).await?;
    assert!(
        !whoami.status.success(),
        "whoami with the old token: {}",
        describe(&whoami)
    );
    assert!(
        text(&whoami.stderr).contains("Unauthorized") || text(&whoami.stderr).contains("401"),
        "{}",
        describe(&whoami)
    );
    assert_eq!(
        token_secrets(remote).await?,
        vec![
            "kubectl-mesh-istio-reader-token".to_owned(),
            SYNC_TOKEN.to_owned(),
            "kubectl-mesh-view-token".to_owned()
        ],
        "one token Secret per identity, no standby left"
    );
    // The webhook reports the credentials it used: the stored Secret's version.
    let mc = Api::<MeshCluster>::all(primary.clone()).get(&name).await?;
    let stored = Api::<Secret>::namespaced(primary.clone(), MESH_NAMESPACE)
        .get(&format!("cluster-{name}"))
        .await?;
    assert_eq!(
        mc.status.and_then(|s| s.observed_credentials),
        stored.metadata.resource_version
    );

    // Detach leaves nothing behind, standbys included.
    let detach = mesh_command(
        &env,
        &[
            "detach",
            &name,
            "--remote-kubeconfig",
            &remote.kubeconfig.display().to_string(),
        ],
    )
    .await?;
    assert!(detach.status.success(), "{}", describe(&detach));
    assert!(token_secrets(remote).await.unwrap_or_default().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_interrupted_rotation_keeps_a_working_token_and_a_rerun_finishes_it()
-> anyhow::Result<()> {
    let (env, mesh) = own_mesh_with(1, MeshOptions::from_workspace()?).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let remote_kc = remote.kubeconfig.display().to_string();
    let ns = create_everywhere(&env, "interrupted").await?;
    let secret = format!("cluster-{name}");
    let old = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;

    // Without a webhook to use the new token, rotate stops after storing it, before revoking.
    env.stop_process(mesh_testenv::mesh::WEBHOOK_PROCESS)?;
    let rotate = mesh_command(
        &env,
        &[
            "rotate",
            &name,
            "--remote-kubeconfig",
            &remote_kc,
            "--timeout",
            "5s",
        ],
    )
    .await?;
    assert!(
        !rotate.status.success(),
        "rotate without a webhook: {}",
        describe(&rotate)
    );
    let err = text(&rotate.stderr);
    assert!(err.contains("the previous token still works"), "{err}");
    let midway = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;
    assert_ne!(
        token_of(&old)?,
        token_of(&midway)?,
        "the standby token is stored"
    );
    assert_eq!(
        answer_to(&old).await?,
        201,
        "the old token is not revoked yet"
    );
    assert_eq!(answer_to(&midway).await?, 201, "the stored token works");
    assert_eq!(
        token_secrets(remote).await?,
        vec![SYNC_TOKEN.to_owned(), STANDBY.to_owned()]
    );

    // The webhook back, the re-run finishes the job.
    mesh.start_webhook(&env).await?;
    let rerun = mesh_command(&env, &["rotate", &name, "--remote-kubeconfig", &remote_kc]).await?;
    assert!(rerun.status.success(), "re-run: {}", describe(&rerun));
    let last = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;
    revoked("the old token", &old).await?;
    revoked("the standby token", &midway).await?;
    assert_eq!(answer_to(&last).await?, 201);
    assert_eq!(token_secrets(remote).await?, vec![SYNC_TOKEN.to_owned()]);

    // And sync works with it.
    mesh_e2e::label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let expected = BTreeMap::from([("istio-injection".to_owned(), "enabled".to_owned())]);
    eventually("the change reaches the remote", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&expected)).then_some(()))
    })
    .await?;

    // --all reaches each remote through the context attach recorded: without it in the
    // kubeconfig, one line says what to pass and nothing changes; with it, every cluster
    // rotates.
    let refused = mesh_command(&env, &["rotate", "--all"]).await?;
    assert!(!refused.status.success(), "{}", describe(&refused));
    let err = text(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--remote-kubeconfig"), "{err}");
    assert_eq!(
        stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?,
        last
    );
    let mut all = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
    all.args(["rotate", "--all", "--context", &env.primary().name])
        .env(
            "KUBECONFIG",
            std::env::join_paths([&env.primary().kubeconfig, &remote.kubeconfig])?,
        );
    let all = output(all).await?;
    assert!(all.status.success(), "rotate --all: {}", describe(&all));
    revoked("the token before rotate --all", &last).await?;
    let last = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;

    // --dry-run names the steps and changes nothing.
    let dry = mesh_command(&env, &["rotate", &name, "--dry-run"]).await?;
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(
        text(&dry.stderr).contains("observedCredentials"),
        "{}",
        describe(&dry)
    );
    assert_eq!(
        stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?,
        last
    );
    Ok(())
}

/// An unsigned JWT whose `exp` has passed.
///
/// A fake, on purpose: a real apiserver issues tokens for at least ten minutes
/// (TokenRequest's minimum), so a really expired one cannot be had on demand. The remote
/// refuses this one with 401 as it refuses an expired token; what is tested is that
/// kubectl-mesh tells it apart by its `exp` and that rotate repairs it.
fn expired_jwt() -> String {
    use base64::Engine as _;
    let enc = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        enc(serde_json::json!({"alg": "RS256"})),
        enc(
            serde_json::json!({"iat": now - 3600, "exp": now - 60, "sub": "system:serviceaccount:kubectl-mesh:kubectl-mesh-sync"})
        )
    )
}

#[tokio::test]
async fn an_expired_token_shows_in_status_check_list_and_metrics_and_rotate_repairs_it()
-> anyhow::Result<()> {
    let (env, mesh) = own_mesh_with(1, MeshOptions::from_workspace()?).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let ns = create_everywhere(&env, "expired").await?;
    let secret_name = format!("cluster-{name}");
    let secrets = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    let stored = stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?;
    let mut secret = secrets.get(&secret_name).await?;
    secret.data.get_or_insert_default().insert(
        "kubeconfig".to_owned(),
        k8s_openapi::ByteString(with_token(&stored, &expired_jwt())?.into_bytes()),
    );
    secrets
        .replace(&secret_name, &PostParams::default(), &secret)
        .await?;

    eventually("Reachable=False TokenExpired", DEADLINE, || async {
        Ok((reachable_reason(&env, &name).await?
            == Some(("False".to_owned(), "TokenExpired".to_owned())))
        .then_some(()))
    })
    .await?;
    let metrics = https_get(mesh.metrics_address(), &mesh.ca_pem()?, "/metrics").await?;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with(&format!("token_expiry_seconds{{cluster=\"{name}\"}}")))
        .ok_or_else(|| anyhow::anyhow!("no token_expiry_seconds for {name}: {metrics}"))?;
    let seconds: f64 = gauge.rsplit(' ').next().unwrap_or_default().parse()?;
    assert!(seconds < 0.0, "{gauge}");

    let check = mesh_command(&env, &["check"]).await?;
    assert!(
        !check.status.success(),
        "check passes with an expired token: {}",
        describe(&check)
    );
    let all = format!("{}{}", text(&check.stdout), text(&check.stderr));
    assert!(all.contains("expired"), "{all}");
    assert!(
        all.contains(&format!("kubectl mesh rotate {name}")),
        "{all}"
    );
    let list = mesh_command(&env, &["list", "-o", "wide"]).await?;
    assert!(
        text(&list.stdout).contains("expired"),
        "{}",
        describe(&list)
    );
    let wide = mesh_command(&env, &["status", "-o", "wide"]).await?;
    assert!(
        text(&wide.stderr).contains(&format!("token of {name}: expired")),
        "{}",
        describe(&wide)
    );

    let rotate = mesh_command(
        &env,
        &[
            "rotate",
            &name,
            "--remote-kubeconfig",
            &remote.kubeconfig.display().to_string(),
        ],
    )
    .await?;
    assert!(rotate.status.success(), "rotate: {}", describe(&rotate));
    eventually("Reachable=True", DEADLINE, || async {
        Ok(
            (reachable_reason(&env, &name).await?.map(|r| r.0) == Some("True".to_owned()))
                .then_some(()),
        )
    })
    .await?;
    mesh_e2e::label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let expected = BTreeMap::from([("istio-injection".to_owned(), "enabled".to_owned())]);
    eventually("the change reaches the remote", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&expected)).then_some(()))
    })
    .await?;
    let list = mesh_command(&env, &["list", "-o", "wide"]).await?;
    assert!(
        !text(&list.stdout).contains("expired"),
        "{}",
        describe(&list)
    );
    Ok(())
}

/// What the time-bound token of the sync account needs on the remote to be renewed by the
/// webhook: `create` on `serviceaccounts/token` for that one ServiceAccount.
async fn grant_token_renewal(remote: &mesh_testenv::Cluster) -> anyhow::Result<()> {
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

/// `iat` and `exp` of a JWT.
fn issued_and_expires(token: &str) -> anyhow::Result<(i64, i64)> {
    let claims = mesh_core::token::claims(token)
        .ok_or_else(|| anyhow::anyhow!("the stored token is not a JWT"))?;
    Ok((
        claims.issued_at.map(|t| t.as_second()).unwrap_or_default(),
        claims.expires_at.map(|t| t.as_second()).unwrap_or_default(),
    ))
}

/// The leader renews a time-bound stored token after `--token-renew-fraction` of its
/// lifetime, with the sync account's own right to a new token, and sync goes on with it. The
/// apiserver issues tokens for ten minutes at least, so the renewal is forced within seconds by
/// a fraction of 0.01 (six seconds). The time-bound token is minted here with the TokenRequest
/// API, as the admin would; without the right to renew, each attempt is an Event.
#[tokio::test]
async fn the_leader_renews_a_time_bound_token_and_sync_goes_on_with_the_new_one()
-> anyhow::Result<()> {
    let mut options = MeshOptions::from_workspace()?;
    options.webhook_args = vec!["--token-renew-fraction".into(), "0.01".into()];
    let (env, mesh) = own_mesh_with(1, options).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let ns = create_everywhere(&env, "renewal").await?;
    let secret_name = format!("cluster-{name}");
    let secrets = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NAMESPACE);

    // A ten-minute token of the sync account, stored in place of the long-lived one.
    let request = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        remote.client().await?,
        MESH_NAMESPACE,
    )
    .create_token_request("kubectl-mesh-sync", &PostParams::default(), &request)
    .await?
    .status
    .map(|s| s.token)
    .unwrap_or_default();
    let stored = stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?;
    let mut secret = secrets.get(&secret_name).await?;
    secret.data.get_or_insert_default().insert(
        "kubeconfig".to_owned(),
        k8s_openapi::ByteString(with_token(&stored, &minted)?.into_bytes()),
    );
    secrets
        .replace(&secret_name, &PostParams::default(), &secret)
        .await?;
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
        token_of(&stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?)?,
        minted,
        "a failed renewal leaves the stored token as it was"
    );

    grant_token_renewal(remote).await?;
    let renewed = eventually("the stored token renewed", DEADLINE, || async {
        let token =
            token_of(&stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?)?;
        Ok((token != minted).then_some(token))
    })
    .await?;
    let (issued, expires) = issued_and_expires(&renewed)?;
    assert!(issued >= minted_at, "renewed token issued before the first");
    assert!(
        (expires - issued - 600).abs() <= 1,
        "the renewed token keeps the lifetime: {issued}..{expires}"
    );
    assert_eq!(
        answer_to(&stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?)
            .await?,
        201
    );

    // Sync goes on with the renewed token, through further renewals.
    for value in ["enabled", "disabled"] {
        mesh_e2e::label_on_primary(&env, &ns, &[&format!("istio-injection={value}")]).await?;
        let expected = BTreeMap::from([("istio-injection".to_owned(), value.to_owned())]);
        eventually("the change reaches the remote", DEADLINE, || async {
            Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&expected)).then_some(()))
        })
        .await?;
        eventually("a further renewal", DEADLINE, || async {
            let token = token_of(
                &stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?,
            )?;
            Ok((token != renewed && token != minted).then_some(()))
        })
        .await?;
    }
    assert_eq!(
        reachable_reason(&env, &name).await?.map(|r| r.0).as_deref(),
        Some("True")
    );
    let metrics = https_get(mesh.metrics_address(), &mesh.ca_pem()?, "/metrics").await?;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with(&format!("token_expiry_seconds{{cluster=\"{name}\"}}")))
        .ok_or_else(|| anyhow::anyhow!("no token_expiry_seconds for {name}"))?;
    let seconds: f64 = gauge.rsplit(' ').next().unwrap_or_default().parse()?;
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
    let mut options = MeshOptions::from_workspace()?;
    options.attach_args = vec!["--token-ttl".into(), "10m".into()];
    options.webhook_args = vec!["--token-renew-fraction".into(), "0.01".into()];
    let (env, _mesh) = own_mesh_with(1, options).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let remote_kc = remote.kubeconfig.display().to_string();
    let ns = create_everywhere(&env, "ttl").await?;
    let secret_name = format!("cluster-{name}");
    let stored_token = || async {
        token_of(&stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?)
    };

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
        !token_secrets(remote)
            .await?
            .contains(&SYNC_TOKEN.to_owned()),
        "a long-lived token Secret exists"
    );
    let list = mesh_command(&env, &["list", "-o", "wide"]).await?;
    assert!(
        text(&list.stdout).contains(" in "),
        "no expiry in list: {}",
        describe(&list)
    );

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
    mesh_e2e::label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let expected = BTreeMap::from([("istio-injection".to_owned(), "enabled".to_owned())]);
    eventually("the change reaches the remote", DEADLINE, || async {
        Ok((managed_labels(remote, &ns).await?.as_ref() == Some(&expected)).then_some(()))
    })
    .await?;

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

    let before = stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?;
    let rotate = mesh_command(&env, &["rotate", &name, "--remote-kubeconfig", &remote_kc]).await?;
    assert!(rotate.status.success(), "rotate: {}", describe(&rotate));
    revoked("the token before rotation", &before).await?;
    let after = stored_kubeconfig(&env, MESH_NAMESPACE, &secret_name, "kubeconfig").await?;
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
    let mut dry = mesh_e2e::fixtures::plugin(&env)?;
    dry.arg("attach").arg(&remote.kubeconfig).args([
        "--name",
        &name,
        "--token-ttl",
        "10m",
        "--dry-run",
    ]);
    let dry = output(dry).await?;
    assert!(dry.status.success(), "{}", describe(&dry));
    let yaml = text(&dry.stdout);
    assert!(yaml.contains("serviceaccounts/token"), "{yaml}");
    assert!(yaml.contains("kubectl-mesh-sync-token-renewal"), "{yaml}");
    assert!(
        !yaml.contains("kubernetes.io/service-account-token"),
        "{yaml}"
    );

    // A re-run of attach without --token-ttl refuses to switch quietly.
    let mut attach = mesh_e2e::fixtures::plugin(&env)?;
    attach
        .arg("attach")
        .arg(&remote.kubeconfig)
        .args(["--name", &name, "--yes"]);
    let attach = output(attach).await?;
    assert!(!attach.status.success(), "{}", describe(&attach));
    assert!(
        text(&attach.stderr).contains("time-bound"),
        "{}",
        describe(&attach)
    );

    let detach = mesh_command(&env, &["detach", &name, "--remote-kubeconfig", &remote_kc]).await?;
    assert!(detach.status.success(), "{}", describe(&detach));
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

/// Ctrl-C after each step of a rotation leaves stored credentials that work; a re-run then
/// ends with one token Secret and every token stored along the way revoked.
#[tokio::test]
async fn ctrl_c_at_any_step_leaves_working_credentials_and_a_rerun_revokes_the_rest()
-> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (env, _mesh) = own_mesh_with(1, MeshOptions::from_workspace()?).await?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let remote_kc = remote.kubeconfig.display().to_string();
    let secret = format!("cluster-{name}");
    let mut seen_stored =
        vec![stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?];

    // A whole rotation prints seven lines (five when a previous one stopped on the standby):
    // interrupt after the first, then the second... line of successive runs.
    let mut interruptions = 0;
    for after in 1..=6 {
        let mut child =
            tokio::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?)
                .arg("--kubeconfig")
                .arg(&env.primary().kubeconfig)
                .args(["rotate", &name, "--remote-kubeconfig", &remote_kc])
                .env("NO_COLOR", "1")
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut printed = Vec::new();
        let mut finished = false;
        while printed.len() < after {
            match tokio::time::timeout(DEADLINE, lines.next_line()).await?? {
                Some(line) => printed.push(line),
                None => {
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
            assert!(status.success(), "rotate failed: {printed:?}");
        } else {
            let pid = child.id().expect("running").to_string();
            let interrupted = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()?;
            assert!(interrupted.success());
            let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
            // It may have finished between its last line and the signal.
            if !status.success() {
                interruptions += 1;
            }
        }

        let stored = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;
        assert_eq!(
            answer_to(&stored).await?,
            201,
            "stopped after {printed:?}: the stored token does not work"
        );
        if seen_stored.last() != Some(&stored) {
            seen_stored.push(stored);
        }
    }
    assert!(
        interruptions >= 4,
        "only {interruptions} rotations were interrupted"
    );

    let rerun = mesh_command(&env, &["rotate", &name, "--remote-kubeconfig", &remote_kc]).await?;
    assert!(rerun.status.success(), "re-run: {}", describe(&rerun));
    let last = stored_kubeconfig(&env, MESH_NAMESPACE, &secret, "kubeconfig").await?;
    assert_eq!(answer_to(&last).await?, 201);
    assert!(
        seen_stored.len() >= 3,
        "the interruptions stored {} tokens",
        seen_stored.len()
    );
    for (i, stored) in seen_stored.iter().enumerate() {
        revoked(&format!("stored token {i}"), stored).await?;
    }
    assert_eq!(token_secrets(remote).await?, vec![SYNC_TOKEN.to_owned()]);
    Ok(())
}

/// A replica that does not lead (and so never writes status) reloads the stored credentials
/// when rotate replaces them: its pushes go on with the new token once the old one is revoked.
#[tokio::test]
async fn a_follower_replica_pushes_with_the_rotated_token() -> anyhow::Result<()> {
    let (env, mesh) = own_mesh_with(1, MeshOptions::from_workspace()?).await?;
    let ca = mesh.ca_pem()?;
    let remote = &env.remotes()[0];
    let name = remote.name.clone();
    let ns = create_everywhere(&env, "follower").await?;
    let follower = mesh.start_replica(&env, "replica-b").await?;
    let mut route = env.kubectl(env.primary());
    route.args([
        "patch",
        "mutatingwebhookconfiguration",
        kubectl_mesh::render::WEBHOOK_CONFIGURATION,
        "--type=json",
        "-p",
        &serde_json::json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url",
                 "value": format!("https://{}/mutate", follower.listen)}])
        .to_string(),
    ]);
    mesh_e2e::run(route).await?;
    // The apiserver picks the new URL up asynchronously: relabel until the follower pushed.
    let mut revision = 0;
    eventually("the follower pushes", DEADLINE, || {
        revision += 1;
        let (env, ns, ca, follower) = (&env, &ns, &ca, &follower);
        async move {
            mesh_e2e::label_on_primary(env, ns, &[&format!("istio.io/rev=r{revision}")]).await?;
            let pushed = pushes_at(&follower.metrics, ca).await?;
            Ok((pushed.get("applied").copied().unwrap_or(0.0) > 0.0).then_some(()))
        }
    })
    .await?;

    let old = stored_kubeconfig(
        &env,
        MESH_NAMESPACE,
        &format!("cluster-{name}"),
        "kubeconfig",
    )
    .await?;
    let rotate = mesh_command(
        &env,
        &[
            "rotate",
            &name,
            "--remote-kubeconfig",
            &remote.kubeconfig.display().to_string(),
        ],
    )
    .await?;
    assert!(rotate.status.success(), "rotate: {}", describe(&rotate));
    revoked("the old token", &old).await?;

    let before = pushes_at(&follower.metrics, &ca).await?;
    for value in ["after-1", "after-2", "after-3"] {
        let warnings =
            mesh_e2e::label_on_primary(&env, &ns, &[&format!("istio.io/rev={value}")]).await?;
        assert!(
            !warnings.contains("forbidden") && !warnings.contains("401"),
            "{warnings}"
        );
    }
    let after = pushes_at(&follower.metrics, &ca).await?;
    let grew = |result: &str| {
        after.get(result).copied().unwrap_or(0.0) - before.get(result).copied().unwrap_or(0.0)
    };
    assert_eq!(grew("forbidden"), 0.0, "{before:?} -> {after:?}");
    assert_eq!(grew("applied"), 3.0, "{before:?} -> {after:?}");
    Ok(())
}
