//! Renewal of a time-bound stored token (`attach --token-ttl`), by the leading replica.

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Secret, ServiceAccount},
    },
};
use kube::{Api, Client, config::Kubeconfig};
use mesh_core::{
    cluster::{KUBECONFIG_KEY, MeshCluster},
    failure::error_chain,
    kubeconfig::validate_stored,
    remote::Fingerprint,
    token::{self, Claims},
};

/// What a renewal that met no error did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The Secret is no longer the version the remote's client was built from (a rotate, an
    /// attach, or anyone's edit): nothing was asked for nor written. The registry rebuilds the
    /// client from the new version, and a later sync renews from that one.
    Stale,
}

/// Asks the remote, through `remote` (the client of the registry entry, which `built_from`
/// says which version of the cluster's Secret it was built from, and whose token has the
/// time claims `stored`), for a new token of the ServiceAccount that token was issued for,
/// with the same lifetime, and writes it into that version of the Secret in place (a
/// conditional replace, so a concurrent rotate or attach wins). Only that version is used:
/// claims of a token written into the Secret since are not trusted, and a new token is never
/// written into a kubeconfig the client was not built from. Every replica's Secret watch then
/// rebuilds its client. The error is safe to show.
pub async fn renew_token(
    primary: &Client,
    mesh_namespace: &str,
    cluster: &MeshCluster,
    remote: &Client,
    built_from: &Fingerprint,
    stored: Claims,
) -> Result<Renewal, String> {
    let name = &cluster.spec.secret_name;
    let (Some(uid), Some(version)) = (&built_from.secret_uid, &built_from.secret_version) else {
        return Err(format!("the client was not built from Secret {name}"));
    };
    let secrets: Api<Secret> = Api::namespaced(primary.clone(), mesh_namespace);
    let mut secret = secrets
        .get(name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {}", error_chain(&e)))?;
    if secret.metadata.uid.as_ref() != Some(uid)
        || secret.metadata.resource_version.as_ref() != Some(version)
    {
        return Ok(Renewal::Stale);
    }
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("Secret {name} holds no kubeconfig"))?;
    check_stored(name, &yaml)?;
    // The token of the very version the client was built from, hence the entry's own.
    let current = token::kubeconfig_token(&yaml)
        .ok_or_else(|| format!("the kubeconfig in Secret {name} holds no token"))?;
    if token::claims(&current) != Some(stored) {
        return Ok(Renewal::Stale);
    }
    let lifetime = stored
        .lifetime()
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
    let issued = Api::<ServiceAccount>::namespaced(remote.clone(), &namespace)
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
    check_stored(name, &yaml)?;
    // On the version read, which is the one the client was built from.
    secret.metadata.uid = Some(uid.clone());
    secret.metadata.resource_version = Some(version.clone());
    secret
        .data
        .get_or_insert_default()
        .insert(KUBECONFIG_KEY.to_owned(), ByteString(yaml.into_bytes()));
    secrets
        .replace(name, &Default::default(), &secret)
        .await
        .map_err(|e| format!("cannot write Secret {name}: {}", error_chain(&e)))?;
    Ok(Renewal::Renewed)
}

/// The rule of stored kubeconfigs ([`validate_stored`]), for the kubeconfig of Secret `name`.
fn check_stored(name: &str, yaml: &str) -> Result<(), String> {
    let kubeconfig = Kubeconfig::from_yaml(yaml)
        .map_err(|_| format!("the kubeconfig in Secret {name} is not valid YAML"))?;
    validate_stored(&kubeconfig)
        .map_err(|reason| format!("the kubeconfig in Secret {name} is refused: {reason}"))
}
