//! The identity the primary's apiserver presents when it calls admission webhooks: a client
//! certificate of a CA of its own, given to the apiserver through an AdmissionConfiguration
//! (`--admission-control-config-file`) whose webhook plugins read a kubeconfig with user `*`
//! (any webhook host). A webhook started with `--client-ca-file` = [`WebhookClient::ca_cert`]
//! then serves the apiserver, and refuses anyone without such a certificate; with
//! `--client-allowed-names` = [`WebhookClient::name`], also a certificate of that CA issued to
//! another name ([`WebhookClient::other_cert`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::pki::{client_cert, new_ca};

/// The subject common name of the apiserver's webhook client certificate.
const APISERVER_NAME: &str = "kube-apiserver-webhook-client";

/// PEM files of the apiserver's webhook client identity and its admission configuration.
#[derive(Clone, Debug)]
pub struct WebhookClient {
    /// The subject common name of [`WebhookClient::cert`].
    pub name: String,
    /// The CA that signed [`WebhookClient::cert`]: what a webhook trusts callers with.
    pub ca_cert: PathBuf,
    /// The client certificate the apiserver presents.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// A certificate of the same CA issued to another name (`kubelet`), as a CA that signs more
    /// than the apiserver's certificate lets others hold.
    pub other_cert: PathBuf,
    /// Its key.
    pub other_key: PathBuf,
    /// The AdmissionConfiguration for `--admission-control-config-file`.
    pub admission_config: PathBuf,
}

impl WebhookClient {
    /// Generates the CA, the certificate and the configuration files under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, issuer) = new_ca("webhook-client-ca")?;
        let (cert_pem, key_pem) = client_cert(&issuer, APISERVER_NAME)?;
        let (other_cert_pem, other_key_pem) = client_cert(&issuer, "kubelet")?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            // `*` matches every webhook the apiserver calls, by URL or by Service.
            "users": [{
                "name": "*",
                "user": {
                    "client-certificate-data": STANDARD.encode(&cert_pem),
                    "client-key-data": STANDARD.encode(&key_pem),
                },
            }],
        });
        let kubeconfig = write("webhook-client.kubeconfig", &kubeconfig.to_string())?;
        let plugin = |name: &str| {
            json!({
                "name": name,
                "configuration": {
                    "apiVersion": "apiserver.config.k8s.io/v1",
                    "kind": "WebhookAdmissionConfiguration",
                    "kubeConfigFile": kubeconfig,
                },
            })
        };
        let admission = json!({
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [plugin("ValidatingAdmissionWebhook"), plugin("MutatingAdmissionWebhook")],
        });
        Ok(Self {
            name: APISERVER_NAME.to_owned(),
            ca_cert: write("ca.crt", &ca_pem)?,
            cert: write("client.crt", &cert_pem)?,
            key: write("client.key", &key_pem)?,
            other_cert: write("other-client.crt", &other_cert_pem)?,
            other_key: write("other-client.key", &other_key_pem)?,
            admission_config: write("admission-config.json", &admission.to_string())?,
        })
    }
}
