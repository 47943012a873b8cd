//! Renewal of a time-bound stored token (`attach --token-ttl`), by the leading replica.

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Secret, ServiceAccount},
    },
};
use kube::{Api, Client};
use mesh_core::{
    cluster::{KUBECONFIG_KEY, MeshCluster},
    failure::error_chain,
    token,
};

/// Asks the remote, with the stored credentials, for a new token of the ServiceAccount the
/// stored one was issued for, with the same lifetime, and writes it into the cluster's Secret
/// in place (conditional on the version read, so a concurrent rotate or attach wins). Every
/// replica's Secret watch then rebuilds its client. The error is safe to show.
pub async fn renew_token(
    primary: &Client,
    mesh_namespace: &str,
    cluster: &MeshCluster,
    client: &Client,
) -> Result<(), String> {
    let name = &cluster.spec.secret_name;
    let secrets: Api<Secret> = Api::namespaced(primary.clone(), mesh_namespace);
    let mut secret = secrets
        .get(name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {}", error_chain(&e)))?;
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("Secret {name} holds no kubeconfig"))?;
    let current = token::kubeconfig_token(&yaml)
        .ok_or_else(|| format!("the kubeconfig in Secret {name} holds no token"))?;
    let lifetime = token::claims(&current)
        .and_then(|c| c.lifetime())
        .map(|l| l.as_secs())
        .ok_or("the stored token has no lifetime (iat, exp)")?;
    let (namespace, account) = token::service_account(&current)
        .ok_or("the stored token was not issued for a ServiceAccount")?;
    // Bound to the same Secret as the token it replaces, so that deleting that Secret
    // (`kubectl mesh rotate`, detach) revokes the renewed one too.
    let bound_object_ref = token::bound_secret(&current).map(|(name, uid)| BoundObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Secret".to_owned()),
        name: Some(name),
        uid: Some(uid),
    });
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(lifetime),
            bound_object_ref,
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&account, &Default::default(), &request)
        .await
        .map_err(|e| {
            format!(
                "the remote refused a token for ServiceAccount {namespace}/{account} (it needs \
                 create on serviceaccounts/token for itself): {}",
                error_chain(&e)
            )
        })?;
    let renewed = issued
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or("the remote answered without a token")?;
    let yaml = token::with_kubeconfig_token(&yaml, &renewed)
        .ok_or_else(|| format!("the kubeconfig in Secret {name} cannot be rewritten"))?;
    secret
        .data
        .get_or_insert_default()
        .insert(KUBECONFIG_KEY.to_owned(), ByteString(yaml.into_bytes()));
    secrets
        .replace(name, &Default::default(), &secret)
        .await
        .map_err(|e| format!("cannot write Secret {name}: {}", error_chain(&e)))?;
    Ok(())
}
