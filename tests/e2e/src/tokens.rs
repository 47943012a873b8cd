//! Stored credentials as the tests look at them: the kubeconfigs kubectl-mesh keeps in
//! Secrets on the primary, their tokens, and whether a remote still accepts one.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::{
    authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{Api, api::PostParams};
use mesh_core::MESH_NAMESPACE;
use mesh_core::remote::{RemoteOptions, client_from_kubeconfig};
use mesh_testenv::{Cluster, TestEnv};

use crate::eventually;

/// A token of service account `name`, valid `seconds`, minted with the TokenRequest API as an
/// admin would.
pub async fn mint_token(
    accounts: &Api<ServiceAccount>,
    name: &str,
    seconds: i64,
) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest returned no status")?
        .token)
}

/// The kubeconfig stored in Secret `namespace/name` on the primary under `key`.
pub async fn stored_kubeconfig(
    env: &TestEnv,
    namespace: &str,
    name: &str,
    key: &str,
) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(env.primary().client().await?, namespace)
        .get(name)
        .await?;
    let data = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| anyhow::anyhow!("no {key} in {namespace}/{name}"))?;
    Ok(String::from_utf8(data.0)?)
}

pub fn token_of(kubeconfig: &str) -> anyhow::Result<String> {
    let kc: serde_yaml::Value = serde_yaml::from_str(kubeconfig)?;
    kc["users"][0]["user"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token in the stored kubeconfig"))
}

/// `kubeconfig` with its token replaced.
pub fn with_token(kubeconfig: &str, token: &str) -> anyhow::Result<String> {
    let mut kc: serde_yaml::Value = serde_yaml::from_str(kubeconfig)?;
    kc["users"][0]["user"]["token"] = token.into();
    Ok(serde_yaml::to_string(&kc)?)
}

/// Replaces the token of the kubeconfig stored in Secret `kubectl-mesh/<secret>` on the
/// primary, the way an admin would edit it by hand.
pub async fn store_token(env: &TestEnv, secret: &str, token: &str) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    let stored = stored_kubeconfig(env, MESH_NAMESPACE, secret, "kubeconfig").await?;
    let mut object = secrets.get(secret).await?;
    object.data.get_or_insert_default().insert(
        "kubeconfig".to_owned(),
        k8s_openapi::ByteString(with_token(&stored, token)?.into_bytes()),
    );
    secrets
        .replace(secret, &PostParams::default(), &object)
        .await?;
    Ok(())
}

/// The HTTP status the remote answers "who am I" (a SelfSubjectReview, which any
/// authenticated account may create) asked with `kubeconfig`: 201, or 401 for a token it
/// does not accept.
pub async fn answer_to(kubeconfig: &str) -> anyhow::Result<u16> {
    let client = client_from_kubeconfig("probe", kubeconfig, &RemoteOptions::default()).await?;
    let review = SelfSubjectReview::default();
    match Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(_) => Ok(201),
        Err(kube::Error::Api(s)) => Ok(s.code),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the remote refuses `kubeconfig`'s token. Not at once: the apiserver caches a
/// successful token authentication for 10 s (`TokenSuccessCacheTTL`).
pub async fn revoked(what: &str, kubeconfig: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{what} refused with 401"),
        Duration::from_secs(30),
        || async { Ok((answer_to(kubeconfig).await? == 401).then_some(())) },
    )
    .await
}

/// Deletes the token Secret `secret` in the mesh namespace of `cluster`: the token it holds is
/// refused from then on (see [`revoked`] for when).
pub async fn revoke(env: &TestEnv, cluster: &Cluster, secret: &str) -> anyhow::Result<()> {
    crate::kubectl(
        env,
        cluster,
        &["delete", "secret", "-n", MESH_NAMESPACE, secret],
    )
    .await?;
    Ok(())
}
