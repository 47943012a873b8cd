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
    /// attach, or anyone's edit): nothing was written (a token is asked for only when the
    /// change came between the read and the write). The registry rebuilds the client from the
    /// new version, and a later sync renews from that one.
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
    match secrets.replace(name, &Default::default(), &secret).await {
        Ok(_) => Ok(Renewal::Renewed),
        // Written since it was read: that writer wins, and the token issued goes unused.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Renewal::Stale),
        Err(e) => Err(format!("cannot write Secret {name}: {}", error_chain(&e))),
    }
}

/// The rule of stored kubeconfigs ([`validate_stored`]), for the kubeconfig of Secret `name`.
fn check_stored(name: &str, yaml: &str) -> Result<(), String> {
    let kubeconfig = Kubeconfig::from_yaml(yaml)
        .map_err(|_| format!("the kubeconfig in Secret {name} is not valid YAML"))?;
    validate_stored(&kubeconfig)
        .map_err(|reason| format!("the kubeconfig in Secret {name} is refused: {reason}"))
}

#[cfg(test)]
mod tests {
    use hyper::{Method, StatusCode};
    use mesh_core::{
        fake_apiserver::{answering, status},
        fixtures::{jwt, mesh_cluster, stored_credentials},
    };
    use serde_json::{Value, json};

    use super::*;

    /// A client of a server that answers each request with `answer(method, path)`.
    fn serving(answer: fn(&Method, &str) -> (StatusCode, Value)) -> Client {
        answering(answer).0
    }

    /// A token of ServiceAccount mesh/east, valid for an hour.
    fn east_token(issued_at: i64) -> String {
        jwt(json!({
            "sub": "system:serviceaccount:mesh:east",
            "iat": issued_at, "exp": issued_at + 3600,
        }))
    }

    fn kubeconfig(token: &str) -> String {
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "east",
            "clusters": [{"name": "east", "cluster": {"server": "https://east.example"}}],
            "users": [{"name": "east", "user": {"token": token}}],
            "contexts": [{"name": "east", "context": {"cluster": "east", "user": "east"}}],
        })
        .to_string()
    }

    /// Someone wrote the Secret between the renewal's read and its write: the conditional
    /// replace is refused with 409, and that writer wins. A fake primary, since no real
    /// apiserver can be made to lose that race on demand.
    #[tokio::test]
    async fn a_secret_written_since_it_was_read_is_left_to_its_writer() {
        let primary = serving(|method, path| match (method, path) {
            (&Method::GET, "/api/v1/namespaces/mesh/secrets/cluster-east") => {
                let secret = stored_credentials("east", &kubeconfig(&east_token(1_000)));
                (StatusCode::OK, serde_json::to_value(secret).unwrap())
            }
            (&Method::PUT, "/api/v1/namespaces/mesh/secrets/cluster-east") => status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            ),
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        let remote = serving(|method, path| match (method, path) {
            (&Method::POST, "/api/v1/namespaces/mesh/serviceaccounts/east/token") => {
                let issued = json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": []},
                    "status": {"token": east_token(2_000),
                        "expirationTimestamp": "2000-01-01T00:00:00Z"},
                });
                (StatusCode::CREATED, issued)
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        let cluster = mesh_cluster("east", "uid-of-east");
        let stored = stored_credentials("east", &kubeconfig(&east_token(1_000)));
        let built_from = Fingerprint::of(&cluster, Some(&stored));
        let claims = token::claims(&east_token(1_000)).expect("claims");
        let renewed = renew_token(&primary, "mesh", &cluster, &remote, &built_from, claims).await;
        assert_eq!(renewed, Ok(Renewal::Stale));
    }
}
