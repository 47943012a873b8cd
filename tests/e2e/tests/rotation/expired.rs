//! An expired stored token: status, check, list and the webhook's metrics say so, and
//! `rotate` repairs it.

use mesh_e2e::tokens::store_token;
use mesh_e2e::{
    assert_success, describe, fixtures::mesh_command, reachable, text, unreachable_for,
};

use crate::support::{injection_syncs, one_remote, rotate, rotate_with, token_expiry, wide_list};

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
    let (env, mesh, remote, ns) = one_remote(&[], &[], "expired").await?;
    let name = remote.name.clone();
    store_token(&env, &format!("cluster-{name}"), &expired_jwt()).await?;

    unreachable_for(&env, &name, "TokenExpired").await?;
    let (gauge, seconds) = token_expiry(&mesh, &name).await?;
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
    let (table, run) = wide_list(&env).await?;
    assert!(table.contains("expired"), "{run}");
    let wide = mesh_command(&env, &["status", "-o", "wide"]).await?;
    assert!(
        text(&wide.stderr).contains(&format!("token of {name}: expired")),
        "{}",
        describe(&wide)
    );

    // Without a webhook to use the token it stores, rotate stops; it cannot say the previous
    // token still works: it had expired.
    env.stop_process(mesh_testenv::mesh::WEBHOOK_PROCESS)?;
    let stopped = rotate_with(&env, &remote, &["--timeout", "3s"]).await?;
    assert!(!stopped.status.success(), "{}", describe(&stopped));
    let err = text(&stopped.stderr);
    assert!(
        err.contains("the previous token had expired") && !err.contains("still works"),
        "{err}"
    );
    mesh.start_webhook(&env).await?;

    let rotated = rotate(&env, &remote).await?;
    assert_success(&rotated);
    reachable(&env, &name).await?;
    injection_syncs(&env, &remote, &ns, "enabled").await?;
    let (table, run) = wide_list(&env).await?;
    assert!(!table.contains("expired"), "{run}");
    Ok(())
}
