//! The CA the webhook authenticates its callers with (`install --client-ca-file`): stored in a
//! ConfigMap of the mesh namespace (a CA certificate is public), mounted into the webhook's pod
//! and named by its `--client-ca-file`. The webhook re-reads the file when the kubelet updates
//! the mount, so re-running install with a new CA needs no restart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use mesh_core::MESH_NAMESPACE;

use super::{WEBHOOK, meta};

/// The ConfigMap holding the client CA.
pub const CLIENT_CA_CONFIG_MAP: &str = "mesh-webhook-client-ca";
/// Its key, also the file name in the mount.
pub const CLIENT_CA_KEY: &str = "ca.crt";
/// Where the Deployment mounts it.
pub const CLIENT_CA_DIR: &str = "/etc/mesh-webhook/client-ca";
/// The webhook's flag that turns client authentication on.
pub const CLIENT_CA_FLAG: &str = "--client-ca-file";
/// The webhook's flag naming the certificates it accepts of that CA.
pub const CLIENT_ALLOWED_NAMES_FLAG: &str = "--client-allowed-names";
/// Its environment variable.
pub const CLIENT_ALLOWED_NAMES_ENV: &str = "MESH_WEBHOOK_CLIENT_ALLOWED_NAMES";
/// Its environment variable (what a Deployment edited by hand may use instead).
pub const CLIENT_CA_ENV: &str = "MESH_WEBHOOK_CLIENT_CA_FILE";

const VOLUME: &str = "client-ca";

/// How the webhook authenticates its callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM of the CA whose client certificates the webhook requires.
    pub ca_pem: String,
    /// Subject common names a caller's certificate must carry, one of them; empty accepts any
    /// certificate the CA signed.
    pub allowed_names: Vec<String>,
}

/// The ConfigMap holding `pem`, the CA certificate(s).
pub fn client_ca_config_map(pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(CLIENT_CA_CONFIG_MAP, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        data: Some(BTreeMap::from([(CLIENT_CA_KEY.to_owned(), pem.to_owned())])),
        ..Default::default()
    }
}

/// `--client-ca-file=<the mounted file>` and, with names, `--client-allowed-names=a,b`.
pub fn client_auth_args(auth: &ClientAuth) -> Vec<String> {
    let mut args = vec![format!("{CLIENT_CA_FLAG}={CLIENT_CA_DIR}/{CLIENT_CA_KEY}")];
    if !auth.allowed_names.is_empty() {
        args.push(format!(
            "{CLIENT_ALLOWED_NAMES_FLAG}={}",
            auth.allowed_names.join(",")
        ));
    }
    args
}

/// The same flags for a webhook started by hand with the CA file at `ca_file`, as one
/// shell-ready line (a common name may hold spaces).
pub fn client_auth_command_line(ca_file: &str, auth: &ClientAuth) -> String {
    let mut line = format!("{CLIENT_CA_FLAG} {}", shell_word(ca_file));
    if !auth.allowed_names.is_empty() {
        line.push_str(&format!(
            " {CLIENT_ALLOWED_NAMES_FLAG} {}",
            shell_word(&auth.allowed_names.join(","))
        ));
    }
    line
}

/// `word` as a POSIX shell reads it back: as it is when it holds nothing special, else in
/// single quotes.
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

pub(super) fn volume() -> Volume {
    Volume {
        name: VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: CLIENT_CA_CONFIG_MAP.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn volume_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME.to_owned(),
        mount_path: CLIENT_CA_DIR.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Coverage, Options, ServingCert, deployment, render, serving_sans};
    use super::*;

    #[test]
    fn a_webhook_started_by_hand_is_told_its_flags_shell_ready() {
        let auth = |names: &[&str]| ClientAuth {
            ca_pem: String::new(),
            allowed_names: names.iter().map(|n| n.to_string()).collect(),
        };
        assert_eq!(
            client_auth_command_line("/etc/ca.crt", &auth(&[])),
            "--client-ca-file /etc/ca.crt"
        );
        assert_eq!(
            client_auth_command_line("my certs/ca.crt", &auth(&["kube-apiserver", "Kube API"])),
            "--client-ca-file 'my certs/ca.crt' --client-allowed-names 'kube-apiserver,Kube API'"
        );
        assert_eq!(
            client_auth_command_line("/ca", &auth(&["o'brien"])),
            "--client-ca-file /ca --client-allowed-names 'o'\\''brien'"
        );
    }

    #[test]
    fn the_client_ca_is_stored_mounted_and_passed() {
        let pem = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
        let options = Options {
            client_auth: Some(ClientAuth {
                ca_pem: pem.to_owned(),
                allowed_names: vec!["kube-apiserver".into(), "front-proxy".into()],
            }),
            ..Options::default()
        };
        let d = serde_json::to_value(deployment(&options)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.contains(&"--client-ca-file=/etc/mesh-webhook/client-ca/ca.crt"),
            "{args:?}"
        );
        assert!(
            args.contains(&"--client-allowed-names=kube-apiserver,front-proxy"),
            "{args:?}"
        );
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "client-ca" && m["mountPath"] == CLIENT_CA_DIR)
        );
        assert!(pod["volumes"].as_array().unwrap().iter().any(|v| {
            v["name"] == "client-ca" && v["configMap"]["name"] == CLIENT_CA_CONFIG_MAP
        }));

        let cert = ServingCert {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            coverage: Coverage {
                sans: serving_sans(None),
                not_after: None,
            },
        };
        let stored = render(&options, &cert)
            .unwrap()
            .into_iter()
            .find(|m| m.describe() == format!("ConfigMap {CLIENT_CA_CONFIG_MAP}"))
            .expect("the ConfigMap is applied");
        assert_eq!(stored.object["data"][CLIENT_CA_KEY], pem);

        // Without names: any certificate of the CA.
        let any_name = Options {
            client_auth: Some(ClientAuth {
                ca_pem: pem.to_owned(),
                allowed_names: Vec::new(),
            }),
            ..Options::default()
        };
        let d = serde_json::to_string(&deployment(&any_name)).unwrap();
        assert!(!d.contains("--client-allowed-names"), "{d}");

        // Without a CA: no flag, no mount, no ConfigMap.
        let plain = serde_json::to_value(deployment(&Options::default())).unwrap();
        assert!(!plain.to_string().contains("client-ca"));
        let objects = render(&Options::default(), &cert).unwrap();
        assert!(!objects.iter().any(|m| m.resource.kind == "ConfigMap"));
    }
}
