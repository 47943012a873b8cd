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
    failure::{Failure, error_chain},
    kubeconfig::validate_stored,
    remote::Fingerprint,
    token::{self, Claims},
};

use crate::primary_write::to_primary;

/// How a renewal ended, but for a failure to tell (the `Err` of [`renew_token`], a
/// `TokenRenewalFailed` Event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The Secret is no longer the version the remote's client was built from (a rotate, an
    /// attach, or anyone's edit): nothing was written (a token is asked for only when the
    /// change came between the read and the write). The registry rebuilds the client from the
    /// new version, and a later sync renews from that one.
    Stale,
    /// The primary did not answer the read or the write of the Secret in time, which
    /// [`to_primary`] logged: an Event would go to that same primary. An unanswered write may
    /// still land; if not, the next try renews.
    PrimarySilent,
}

/// Asks the remote, through `remote` (the client of the registry entry, which `built_from`
/// says which version of the cluster's Secret it was built from, and whose token has the
/// time claims `stored`), for a new token of the ServiceAccount that token was issued for,
/// with the same lifetime, and writes it into that version of the Secret in place (a
/// conditional replace, so a concurrent rotate or attach wins). Only that version is used:
/// claims of a token written into the Secret since are not trusted, and a new token is never
/// written into a kubeconfig the client was not built from. Every replica's Secret watch then
/// rebuilds its client. The error is safe to show. Each call to the primary is bounded by
/// [`to_primary`]; the call to the remote by `remote`'s own call deadline
/// (`--remote-call-deadline`), as every call of a sync, and its failure is the remote's.
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
    let Some(read) = to_primary("token", secrets.get(name)).await else {
        return Ok(Renewal::PrimarySilent);
    };
    let mut secret = read.map_err(|e| format!("cannot read Secret {name}: {}", error_chain(&e)))?;
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
        .map_err(|e| no_token(&format!("{namespace}/{account}"), &e))?;
    let renewed = issued
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or("the remote cluster answered without a token")?;
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
    let replace = Default::default();
    match to_primary("token", secrets.replace(name, &replace, &secret)).await {
        None => Ok(Renewal::PrimarySilent),
        Some(Ok(_)) => Ok(Renewal::Renewed),
        // Written since it was read: that writer wins, and the token issued goes unused.
        Some(Err(kube::Error::Api(status))) if status.code == 409 => Ok(Renewal::Stale),
        Some(Err(e)) => Err(format!("cannot write Secret {name}: {}", error_chain(&e))),
    }
}

/// Why the remote cluster gave no token for ServiceAccount `account`: one that did not answer
/// (in time) is not said to refuse, and only a 403 is a missing permission (a 401 refuses the
/// token itself).
fn no_token(account: &str, error: &kube::Error) -> String {
    let cause = error_chain(error);
    let failure = Failure::of(error);
    if !failure.answered() {
        format!(
            "the remote cluster did not answer the TokenRequest for ServiceAccount {account}: {cause}"
        )
    } else if failure == Failure::Forbidden {
        format!(
            "the remote cluster refused a token for ServiceAccount {account} (it needs create \
             on serviceaccounts/token for itself): {cause}"
        )
    } else {
        format!("the remote cluster refused a token for ServiceAccount {account}: {cause}")
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
    use std::{convert::Infallible, time::Duration};

    use hyper::{Method, Request, StatusCode};
    use mesh_core::{
        call_limits::CallLimitsLayer,
        fake_apiserver::{answering, json_response, status},
        fixtures::{jwt, mesh_cluster, stored_credentials},
        remote::DEFAULT_CALL_DEADLINE,
    };
    use serde_json::{Value, json};
    use tower::Layer;

    use super::*;

    const SECRET: &str = "/api/v1/namespaces/mesh/secrets/cluster-east";
    const TOKEN_REQUEST: &str = "/api/v1/namespaces/mesh/serviceaccounts/east/token";

    /// A client of a server that answers each request with `answer(method, path)`.
    fn serving(answer: fn(&Method, &str) -> (StatusCode, Value)) -> Client {
        answering(answer).0
    }

    /// A client of a server that answers as `answer` says, and never when it says `None`, each
    /// call ended by `deadline` as a remote client's are ([`mesh_core::call_limits`]).
    fn stalling(
        answer: fn(&Method, &str) -> Option<(StatusCode, Value)>,
        deadline: Option<Duration>,
    ) -> Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let answer = answer(request.method(), request.uri().path());
            async move {
                match answer {
                    Some((code, body)) => Ok::<_, Infallible>(json_response(code, &body)),
                    None => std::future::pending().await,
                }
            }
        });
        let limits = CallLimitsLayer::new(deadline, None);
        Client::new(limits.layer(service), "default")
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

    /// The primary's answer to a read of Secret cluster-east: the kubeconfig of a token issued
    /// at 1000, the one [`renew`] renews.
    fn stored_secret() -> (StatusCode, Value) {
        let secret = stored_credentials("east", &kubeconfig(&east_token(1_000)));
        (StatusCode::OK, serde_json::to_value(secret).unwrap())
    }

    /// The remote's answer to the TokenRequest: a token issued at 2000.
    fn issued_token() -> (StatusCode, Value) {
        let issued = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": []},
            "status": {"token": east_token(2_000), "expirationTimestamp": "2000-01-01T00:00:00Z"},
        });
        (StatusCode::CREATED, issued)
    }

    /// The renewal of cluster east's token issued at 1000, by a client built from the Secret
    /// [`stored_secret`] holds.
    async fn renew(primary: &Client, remote: &Client) -> Result<Renewal, String> {
        let cluster = mesh_cluster("east", "uid-of-east");
        let stored = stored_credentials("east", &kubeconfig(&east_token(1_000)));
        let built_from = Fingerprint::of(&cluster, Some(&stored));
        let claims = token::claims(&east_token(1_000)).expect("claims");
        renew_token(primary, "mesh", &cluster, remote, &built_from, claims).await
    }

    /// Someone wrote the Secret between the renewal's read and its write: the conditional
    /// replace is refused with 409, and that writer wins. A fake primary, since no real
    /// apiserver can be made to lose that race on demand.
    #[tokio::test]
    async fn a_secret_written_since_it_was_read_is_left_to_its_writer() {
        let primary = serving(|method, path| match (method, path) {
            (&Method::GET, SECRET) => stored_secret(),
            (&Method::PUT, SECRET) => status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            ),
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        let remote = serving(|method, path| match (method, path) {
            (&Method::POST, TOKEN_REQUEST) => issued_token(),
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        assert_eq!(renew(&primary, &remote).await, Ok(Renewal::Stale));
    }

    /// A remote whose TokenRequest outlasts the primary's bound, within its own call deadline:
    /// its failure, told as the remote's (an error, which the worker makes a
    /// `TokenRenewalFailed` Event), not as the primary's silence. A fake remote, since no real
    /// apiserver can be made to hang a TokenRequest on demand.
    #[tokio::test(start_paused = true)]
    async fn a_remote_slow_to_give_a_token_is_told_as_the_remote_s_failure() {
        let primary = serving(|method, path| match (method, path) {
            (&Method::GET, SECRET) => stored_secret(),
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        let remote = stalling(|_, _| None, Some(DEFAULT_CALL_DEADLINE));
        let error = renew(&primary, &remote).await.expect_err("no token came");
        assert!(
            error.starts_with("the remote cluster did not answer the TokenRequest"),
            "{error}"
        );
    }

    /// The primary that does not take the renewed token in time is the primary's silence
    /// (logged as such), not a failure of the remote's. A fake primary, since no real
    /// apiserver can be made to hang one write on demand.
    #[tokio::test(start_paused = true)]
    async fn a_primary_slow_to_take_the_token_is_the_primary_s_silence() {
        let primary = stalling(
            |method, path| match (method, path) {
                (&Method::GET, SECRET) => Some(stored_secret()),
                _ => None,
            },
            None,
        );
        let remote = serving(|method, path| match (method, path) {
            (&Method::POST, TOKEN_REQUEST) => issued_token(),
            _ => status(StatusCode::NOT_FOUND, "NotFound", path),
        });
        assert_eq!(renew(&primary, &remote).await, Ok(Renewal::PrimarySilent));
    }
}
