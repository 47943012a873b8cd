//! Admin kubeconfigs with every credential inline, so they work with plain `kubectl
//! --kubeconfig` from any directory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::pki::ClusterPki;

pub fn admin_kubeconfig(cluster: &str, server: &str, pki: &ClusterPki) -> String {
    let user = format!("{cluster}-admin");
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
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": STANDARD.encode(&pki.admin_cert_pem),
                "client-key-data": STANDARD.encode(&pki.admin_key_pem),
            },
        }],
        "contexts": [{
            "name": cluster,
            "context": { "cluster": cluster, "user": user },
        }],
        "current-context": cluster,
    });
    // serde_yaml cannot fail on a json! value made of strings.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}
