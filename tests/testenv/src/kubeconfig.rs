//! Kubeconfigs with every credential inline, so they work with plain `kubectl --kubeconfig`
//! from any directory: an admin's (client certificate) and a ServiceAccount's (token).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::pki::ClusterPki;

pub fn admin_kubeconfig(cluster: &str, server: &str, pki: &ClusterPki) -> String {
    let user = json!({
        "client-certificate-data": STANDARD.encode(&pki.admin_cert_pem),
        "client-key-data": STANDARD.encode(&pki.admin_key_pem),
    });
    kubeconfig(cluster, &format!("{cluster}-admin"), server, pki, user)
}

/// A kubeconfig that authenticates as `user` with a bearer `token`.
pub fn token_kubeconfig(
    cluster: &str,
    user: &str,
    server: &str,
    pki: &ClusterPki,
    token: &str,
) -> String {
    kubeconfig(cluster, user, server, pki, json!({ "token": token }))
}

fn kubeconfig(
    cluster: &str,
    user: &str,
    server: &str,
    pki: &ClusterPki,
    credentials: serde_json::Value,
) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(&pki.ca_pem),
            },
        }],
        "users": [{ "name": user, "user": credentials }],
        "contexts": [{
            "name": cluster,
            "context": { "cluster": cluster, "user": user },
        }],
        "current-context": cluster,
    });
    // serde_yaml cannot fail on a json! value made of strings.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}
