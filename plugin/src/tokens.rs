//! How a remote identity gets its token: a long-lived one, which kube-controller-manager puts
//! into the identity's token Secret ([`wait_token`]), or a time-bound one bound to that Secret
//! ([`mint_bound_token`]); attach and rotate both issue them.

use std::ops::ControlFlow::{Break, Continue};
use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{Api, Client, api::PostParams};
use mesh_core::MESH_NAMESPACE;

use crate::poll::{self, Late};
use crate::{Error, Result};

/// Waits until kube-controller-manager has put a token into the Secret `secret`; `command`
/// (attach, rotate) is the one issuing it, to re-run if the Secret goes.
pub async fn wait_token(
    remote: &Client,
    cluster: &str,
    secret: &str,
    command: &str,
    timeout: Duration,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(remote.clone(), MESH_NAMESPACE);
    let look = async || {
        let found = api.get_opt(secret).await.map_err(Error::kube(format!(
            "cannot read Secret {MESH_NAMESPACE}/{secret} on {cluster}"
        )))?;
        let Some(found) = found else {
            return Err(disappeared(cluster, secret, command));
        };
        let token = found
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .and_then(|t| String::from_utf8(t.0.clone()).ok())
            .filter(|t| !t.is_empty());
        Ok(token.map_or(Continue(()), Break))
    };
    poll::until(timeout, Duration::from_millis(200), look, |()| Late {
        what: format!(
            "a token in Secret {MESH_NAMESPACE}/{secret} on {cluster} (it is filled by \
             kube-controller-manager)"
        ),
        hint: format!(
            "check that the remote's kube-controller-manager runs its serviceaccount-token \
             controller: `kubectl -n {MESH_NAMESPACE} describe secret {secret}` on {cluster}"
        ),
    })
    .await
}

/// The token Secret `secret` went before its token was filled in.
fn disappeared(cluster: &str, secret: &str, command: &str) -> Error {
    Error::Refused {
        what: format!(
            "Secret {MESH_NAMESPACE}/{secret} on {cluster} disappeared before its token was \
             issued (kube-controller-manager deletes token Secrets whose ServiceAccount was \
             replaced)"
        ),
        hint: format!("re-run {command}"),
    }
}

/// A token of ServiceAccount `account` from the TokenRequest API, valid for `ttl` and only as
/// long as the Secret `anchor` exists (deleting it revokes the token).
pub async fn mint_bound_token(
    remote: &Client,
    account: &str,
    anchor: &Secret,
    ttl: Duration,
) -> Result<String, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                name: anchor.metadata.name.clone(),
                uid: anchor.metadata.uid.clone(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(remote.clone(), MESH_NAMESPACE)
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token Secret gone mid-rotation said to re-run attach; rotate's own re-run repairs it
    /// (the stored credentials still work).
    #[test]
    fn a_token_secret_gone_says_to_re_run_the_command_issuing_it() {
        let line = disappeared("east", "kubectl-mesh-sync-token-b", "rotate").line();
        assert!(
            line.starts_with("Secret kubectl-mesh/kubectl-mesh-sync-token-b on east disappeared")
                && line.ends_with("; re-run rotate"),
            "{line}"
        );
    }
}
