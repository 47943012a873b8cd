//! A stored kubeconfig whose server is edited by hand (to a relaying proxy, say): nothing is
//! sent there, the cluster shows `Reachable=False` with reason `CredentialsMismatch`, and
//! `rotate` issues no token (it would store the new ones in the edited kubeconfig).

use std::time::Duration;

use mesh_e2e::{describe, fixtures, reachable, text, unreachable_for};

use crate::support::{one_remote, rotate, token_secrets};

#[tokio::test]
async fn a_stored_server_edited_by_hand_is_never_reached_nor_rotated() -> anyhow::Result<()> {
    let (env, _mesh, remote, _ns) = one_remote(&[], &[], "edited").await?;
    let name = remote.name.clone();
    reachable(&env, &name).await?;

    // A listener of the test's own: whatever was sent to the edited server would arrive here.
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let decoy_url = format!("https://{}", decoy.local_addr()?);
    fixtures::edit_stored_server(&env, &name, &decoy_url).await?;

    let reachable = unreachable_for(&env, &name, "CredentialsMismatch").await?;
    assert!(
        reachable.message.contains(&format!(
            "its server \"{decoy_url}\" is not \"{}\"",
            remote.server
        )) && reachable.message.contains("restore the Secret"),
        "{reachable:?}"
    );

    let tokens = token_secrets(&remote).await?;
    let rotated = rotate(&env, &remote).await?;
    let said = format!("{}{}", text(&rotated.stdout), text(&rotated.stderr));
    assert!(
        !rotated.status.success()
            && said.contains("is not what attach recorded")
            && said.contains("no token is issued"),
        "{}",
        describe(&rotated)
    );
    assert_eq!(
        token_secrets(&remote).await?,
        tokens,
        "rotate issued a token"
    );

    let reached = tokio::time::timeout(Duration::from_millis(500), decoy.accept()).await;
    assert!(reached.is_err(), "something connected to the edited server");
    Ok(())
}

/// The name a stored kubeconfig checks the server's certificate against decides which
/// certificate its CA may vouch for: one added by hand (`localhost`, a name the remote's own
/// certificate carries, so the edited client would work) is refused like an edited server.
#[tokio::test]
async fn a_stored_tls_server_name_edited_by_hand_is_refused() -> anyhow::Result<()> {
    let (env, _mesh, remote, _ns) = one_remote(&[], &[], "tls-name").await?;
    let name = remote.name.clone();
    reachable(&env, &name).await?;

    fixtures::edit_stored_cluster(&env, &name, |cluster| {
        cluster.tls_server_name = Some("localhost".to_owned());
    })
    .await?;
    let reachable = unreachable_for(&env, &name, "CredentialsMismatch").await?;
    assert!(
        reachable
            .message
            .contains("its TLS server name \"localhost\""),
        "{reachable:?}"
    );
    Ok(())
}
