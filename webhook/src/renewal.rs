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

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex, PoisonError},
    };

    use base64::Engine as _;
    use http_body_util::BodyExt;
    use hyper::StatusCode;
    use mesh_core::{
        fake_apiserver::{json_response, status},
        fixtures::{mesh_cluster, stored_credentials},
    };
    use serde_json::{Value, json};

    use super::*;

    /// Every request an apiserver received: "METHOD path" and body.
    type Requests = Arc<Mutex<Vec<(String, Value)>>>;

    /// A client of an apiserver that answers with `answer` and keeps every request in `log`.
    fn apiserver(
        log: &Requests,
        answer: impl Fn(&str, &Value) -> (StatusCode, Value) + Clone + Send + Sync + 'static,
    ) -> Client {
        let log = log.clone();
        let service = tower::service_fn(move |request: hyper::Request<kube::client::Body>| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.expect("body").to_bytes();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let call = format!("{} {}", parts.method, parts.uri.path());
                let (code, answer) = answer(&call, &body);
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((call, body));
                Ok::<_, Infallible>(json_response(code, &answer))
            }
        });
        Client::new(service, "default")
    }

    fn calls(log: &Requests) -> Vec<String> {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().map(|(call, _)| call.clone()).collect()
    }

    const SECRET_PATH: &str = "/api/v1/namespaces/mesh/secrets/cluster-east";
    const TOKEN_PATH: &str = "/api/v1/namespaces/mesh-remote/serviceaccounts/mesh-east/token";
    const RENEWED: &str = "renewed.token.of-the-remote";

    /// A primary holding `secret` as Secret cluster-east of namespace mesh: GET reads it, PUT
    /// replaces it if its resourceVersion and UID are the stored ones.
    fn primary(log: &Requests, secret: Secret) -> Client {
        let stored = Arc::new(Mutex::new(serde_json::to_value(secret).expect("json")));
        apiserver(log, move |call, body| {
            let mut stored = stored.lock().unwrap_or_else(PoisonError::into_inner);
            match call.strip_suffix(SECRET_PATH) {
                Some("GET ") => (StatusCode::OK, stored.clone()),
                Some("PUT ")
                    if body["metadata"]["resourceVersion"]
                        != stored["metadata"]["resourceVersion"]
                        || body["metadata"]["uid"] != stored["metadata"]["uid"] =>
                {
                    status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    )
                }
                Some("PUT ") => {
                    *stored = body.clone();
                    (StatusCode::OK, body.clone())
                }
                _ => status(StatusCode::NOT_FOUND, "NotFound", "no route"),
            }
        })
    }

    /// A remote that issues [`RENEWED`] to ServiceAccount mesh-remote/mesh-east.
    fn remote(log: &Requests) -> Client {
        apiserver(log, |call, body| {
            if call != format!("POST {TOKEN_PATH}") {
                return status(StatusCode::NOT_FOUND, "NotFound", "no route");
            }
            let mut issued = body.clone();
            issued["status"] = json!({
                "token": RENEWED,
                "expirationTimestamp": "2030-01-01T00:00:00Z",
            });
            (StatusCode::CREATED, issued)
        })
    }

    /// An unsigned JWT with `claims`.
    fn jwt(claims: &Value) -> String {
        let encode = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!(
            "{}.{}.sig",
            encode(&json!({"alg": "RS256"})),
            encode(claims)
        )
    }

    /// A bound token of mesh-remote/mesh-east, issued at 1000 for an hour.
    fn issued_token() -> String {
        jwt(&json!({
            "sub": "system:serviceaccount:mesh-remote:mesh-east",
            "iat": 1000, "exp": 4600,
            "kubernetes.io": {"secret": {"name": "mesh-token-east", "uid": "uid-mesh-token"}},
        }))
    }

    fn kubeconfig(server: &str, token: &str) -> String {
        format!(
            "{{apiVersion: v1, kind: Config, current-context: east, \
             clusters: [{{name: east, cluster: {{server: '{server}', \
             certificate-authority-data: ''}}}}], \
             users: [{{name: east, user: {{token: '{token}'}}}}], \
             contexts: [{{name: east, context: {{cluster: east, user: east}}}}]}}"
        )
    }

    /// The Secret the registry entry of east was built from (version 1).
    fn built_from() -> Secret {
        stored_credentials("east", &kubeconfig("https://east:6443", &issued_token()))
    }

    /// What `renew_token` returns for the entry built from [`built_from`] over a primary
    /// holding `now`, with the requests the primary and the remote received.
    async fn renew(now: Secret) -> (Result<Renewal, String>, Requests, Requests) {
        let (primary_log, remote_log) = (Requests::default(), Requests::default());
        let cluster = mesh_cluster("east", "uid-east");
        let built = built_from();
        let renewed = renew_token(
            &primary(&primary_log, now),
            "mesh",
            &cluster,
            &remote(&remote_log),
            &Fingerprint::of(&cluster, Some(&built)),
            mesh_core::remote::stored_token_claims(&built).expect("a JWT"),
        )
        .await;
        (renewed, primary_log, remote_log)
    }

    #[tokio::test]
    async fn renews_the_token_of_the_version_the_client_was_built_from_into_it() {
        let (renewed, primary_log, remote_log) = renew(built_from()).await;
        assert_eq!(renewed, Ok(Renewal::Renewed));
        let remote_log = remote_log.lock().unwrap_or_else(PoisonError::into_inner);
        let [(call, request)] = remote_log.as_slice() else {
            panic!("{remote_log:?}");
        };
        assert_eq!(call, &format!("POST {TOKEN_PATH}"));
        assert_eq!(request["spec"]["expirationSeconds"], json!(3600));
        let bound = &request["spec"]["boundObjectRef"];
        assert_eq!(bound["name"], json!("mesh-token-east"));
        assert_eq!(bound["uid"], json!("uid-mesh-token"));
        let primary_log = primary_log.lock().unwrap_or_else(PoisonError::into_inner);
        let [(get, _), (put, written)] = primary_log.as_slice() else {
            panic!("{primary_log:?}");
        };
        assert_eq!(get, &format!("GET {SECRET_PATH}"));
        assert_eq!(put, &format!("PUT {SECRET_PATH}"));
        assert_eq!(written["metadata"]["resourceVersion"], json!("1"));
        assert_eq!(written["metadata"]["uid"], json!("uid-secret-east"));
        let written: Secret = serde_json::from_value(written.clone()).expect("a Secret");
        let yaml = &written.data.expect("data")[KUBECONFIG_KEY].0;
        let yaml = std::str::from_utf8(yaml).expect("utf-8");
        assert_eq!(token::kubeconfig_token(yaml).as_deref(), Some(RENEWED));
        let kubeconfig = Kubeconfig::from_yaml(yaml).expect("kubeconfig");
        assert_eq!(validate_stored(&kubeconfig), Ok(()));
        let server = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone());
        assert_eq!(server.as_deref(), Some("https://east:6443"));
    }

    /// Someone who may update the Secret (not read it) wrote another server and a forged
    /// token, unbound and of a lifetime of their choosing, after the client was built; or the
    /// Secret was deleted and created again. No token is asked for, nothing is written.
    #[tokio::test]
    async fn a_secret_changed_since_the_client_was_built_is_neither_renewed_nor_written() {
        let forged = jwt(&json!({
            "sub": "system:serviceaccount:mesh-remote:mesh-east",
            "iat": 0, "exp": 315_360_000,
        }));
        let mut edited = stored_credentials("east", &kubeconfig("https://evil", &forged));
        edited.metadata.resource_version = Some("2".to_owned());
        let mut recreated = built_from();
        recreated.metadata.uid = Some("uid-secret-east-again".to_owned());
        for now in [edited, recreated] {
            let (renewed, primary_log, remote_log) = renew(now).await;
            assert_eq!(renewed, Ok(Renewal::Stale));
            assert_eq!(calls(&remote_log), Vec::<String>::new());
            assert_eq!(calls(&primary_log), [format!("GET {SECRET_PATH}")]);
        }
    }

    /// A kubeconfig that breaks the rule of stored kubeconfigs is never written with a new
    /// token in it (nor is one asked for).
    #[tokio::test]
    async fn a_kubeconfig_that_breaks_the_rule_is_neither_renewed_nor_written() {
        let plain = stored_credentials("east", &kubeconfig("http://east:6443", &issued_token()));
        let (renewed, primary_log, remote_log) = renew(plain).await;
        let error = renewed.expect_err("renewed");
        assert!(error.contains("not https"), "{error}");
        assert_eq!(calls(&remote_log), Vec::<String>::new());
        assert_eq!(calls(&primary_log), [format!("GET {SECRET_PATH}")]);
    }
}
