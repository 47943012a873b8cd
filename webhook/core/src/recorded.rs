//! THE rule that ties a stored kubeconfig to what attach recorded in its `MeshCluster`.
//!
//! A stored kubeconfig that passes [`crate::kubeconfig::validate_stored`] may still name any
//! https server and trust any CA: whoever can edit the Secret could point it at a TLS proxy of
//! their own, which relays every request (bearer token included) to the real apiserver, so
//! even the check of the cluster's identity ([`crate::remote::Remote::verify`]) passes. The
//! `MeshCluster` (cluster-scoped, harder to edit than a Secret) records the server
//! (`spec.server`), a fingerprint of the CA (`spec.caFingerprint`) and the name the server's
//! certificate is checked against (`spec.tlsServerName`) attach stored; every
//! client built from a stored kubeconfig for a `MeshCluster` checks them first, before a byte
//! is sent anywhere.
//!
//! A `MeshCluster` attached before the fingerprint was recorded is checked on its server only.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use kube::config::Kubeconfig;
use sha2::{Digest as _, Sha256};

use crate::{
    cluster::MeshClusterSpec,
    kubeconfig::{MAX_QUOTED, ServerShown, quoted_server, unwrapped_base64},
    printable::{one_line, quoted},
};

/// Prefix of [`ca_fingerprint`]'s value.
const SHA256: &str = "sha256:";

/// What differs between a stored kubeconfig and its `MeshCluster`'s record: one line, naming
/// the server or the CA, never quoting a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(String);

/// The fingerprint attach records of a stored kubeconfig's CA: `sha256:<hex>` of the decoded
/// certificate-authority-data of its (first) cluster, whitespace in the base64 ignored; of no
/// bytes at all when it holds none (the system's roots), so that a CA added later differs too.
/// `None` when the data is not valid base64 (which the rule of stored kubeconfigs refuses).
pub fn ca_fingerprint(kc: &Kubeconfig) -> Option<String> {
    let data = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .unwrap_or_default();
    let bytes = BASE64.decode(unwrapped_base64(data)).ok()?;
    Some(fingerprint_of(&bytes))
}

/// The name a stored kubeconfig checks its server's certificate against, when it sets one
/// (`tls-server-name`): attach records it as well, since it decides which certificate the CA
/// may vouch for.
pub fn tls_server_name(kc: &Kubeconfig) -> Option<String> {
    kc.clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.tls_server_name.clone())
}

/// `sha256:<hex>` of `bytes`.
fn fingerprint_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(SHA256.len() + 2 * digest.len());
    out.push_str(SHA256);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Checks that `kc` (a stored kubeconfig, already through the rule of stored kubeconfigs) is
/// what attach recorded in `spec`: its server equals `spec.server` (a trailing slash aside),
/// and, when a CA fingerprint is recorded, its CA hashes to `spec.caFingerprint` and its TLS
/// server name is `spec.tlsServerName` (both absent, or equal).
pub fn check(kc: &Kubeconfig, spec: &MeshClusterSpec) -> Result<(), Mismatch> {
    let cluster = kc.clusters.first().and_then(|c| c.cluster.as_ref());
    let server = cluster
        .and_then(|c| c.server.as_deref())
        .unwrap_or_default();
    if trimmed(server) != trimmed(&spec.server) {
        return Err(Mismatch(format!(
            "its server {} is not {}, the one attach recorded",
            quoted_server(server, ServerShown::HostAndPath),
            quoted_server(&spec.server, ServerShown::HostAndPath)
        )));
    }
    if let Some(recorded) = spec.ca_fingerprint.as_deref() {
        let stored = ca_fingerprint(kc);
        if stored.as_deref() != Some(recorded) {
            return Err(Mismatch(format!(
                "its certificate authority ({}) is not the one attach recorded ({})",
                stored.as_deref().map_or("unreadable".into(), short),
                short(recorded)
            )));
        }
        // Recorded with the fingerprint: a record of a CA alone predates both.
        let name = tls_server_name(kc);
        if name != spec.tls_server_name {
            let shown = |name: Option<&str>| name.map_or("none".into(), |n| quoted(n, MAX_QUOTED));
            return Err(Mismatch(format!(
                "its TLS server name {} is not the one attach recorded ({})",
                shown(name.as_deref()),
                shown(spec.tls_server_name.as_deref())
            )));
        }
    }
    Ok(())
}

fn trimmed(server: &str) -> &str {
    server.trim_end_matches('/')
}

/// The start of a fingerprint, enough to tell two apart in a message.
fn short(fingerprint: &str) -> String {
    let shown: String = one_line(fingerprint)
        .chars()
        .take(SHA256.len() + 12)
        .collect();
    if shown.len() < fingerprint.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mesh_cluster;

    /// A stored kubeconfig of `server` trusting `ca` (base64 as given).
    fn stored(server: &str, ca: Option<&str>) -> Kubeconfig {
        let ca = ca.map_or(String::new(), |ca| {
            format!(", certificate-authority-data: \"{ca}\"")
        });
        Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: east, cluster: {{server: \"{server}\"{ca}}}}}]\n\
             users: [{{name: east, user: {{token: s3cr3t-token}}}}]\n\
             contexts: [{{name: east, context: {{cluster: east, user: east}}}}]\n\
             current-context: east\n"
        ))
        .expect("parse")
    }

    fn spec(server: &str, ca_fingerprint: Option<String>) -> MeshClusterSpec {
        let mut spec = mesh_cluster("east", "uid").spec;
        spec.server = server.to_owned();
        spec.ca_fingerprint = ca_fingerprint;
        spec
    }

    const CA: &str = "Q0EgYnl0ZXM="; // "CA bytes"
    const OTHER_CA: &str = "b3RoZXIgQ0E="; // "other CA"

    #[test]
    fn the_fingerprint_is_of_the_decoded_bytes() {
        let fingerprint = ca_fingerprint(&stored("https://a", Some(CA))).expect("valid");
        assert_eq!(fingerprint, fingerprint_of(b"CA bytes"));
        assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 64);
        // Wrapped base64 is the same CA.
        let wrapped = ca_fingerprint(&stored("https://a", Some("Q0Eg\n  Ynl0ZXM=")));
        assert_eq!(wrapped.as_deref(), Some(fingerprint.as_str()));
        // No CA data is the fingerprint of nothing, not no fingerprint.
        let none = ca_fingerprint(&stored("https://a", None));
        assert_eq!(none, Some(fingerprint_of(b"")));
        assert_eq!(ca_fingerprint(&stored("https://a", Some("%%%"))), None);
    }

    #[test]
    fn what_attach_recorded_passes() {
        let kc = stored("https://10.0.0.1:6443", Some(CA));
        let recorded = ca_fingerprint(&kc);
        assert_eq!(check(&kc, &spec("https://10.0.0.1:6443", recorded)), Ok(()));
        assert_eq!(check(&kc, &spec("https://10.0.0.1:6443/", None)), Ok(()));
    }

    #[test]
    fn another_server_is_named_without_its_userinfo() {
        let kc = stored("https://admin:hunter2@10.9.9.9:443/", Some(CA));
        let recorded = ca_fingerprint(&kc);
        let mismatch = check(&kc, &spec("https://10.0.0.1:6443", recorded))
            .expect_err("another server")
            .to_string();
        assert_eq!(
            mismatch,
            "its server \"https://10.9.9.9:443/\" is not \"https://10.0.0.1:6443\", the one \
             attach recorded"
        );
    }

    /// The query and fragment of a URL may carry a credential (`?access_token=`), and the
    /// message goes to status, Events and logs.
    #[test]
    fn another_server_is_named_without_its_query_or_fragment() {
        let kc = stored("https://10.9.9.9/k?access_token=s3cr3t#s3cr3t", Some(CA));
        let mismatch = check(&kc, &spec("https://10.0.0.1:6443", None))
            .expect_err("another server")
            .to_string();
        assert_eq!(
            mismatch,
            "its server \"https://10.9.9.9/k\" is not \"https://10.0.0.1:6443\", the one \
             attach recorded"
        );
    }

    /// Which certificate the CA may vouch for is the stored TLS server name's choice: one added,
    /// changed or removed by hand is refused where the record has a fingerprint.
    #[test]
    fn another_tls_server_name_is_refused_when_a_fingerprint_is_recorded() {
        let with_name = |name: Option<&str>| {
            let mut kc = stored("https://a", Some(CA));
            if let Some(cluster) = kc.clusters[0].cluster.as_mut() {
                cluster.tls_server_name = name.map(str::to_owned);
            }
            kc
        };
        let recorded = |name: Option<&str>| {
            let mut spec = spec("https://a", ca_fingerprint(&with_name(name)));
            spec.tls_server_name = name.map(str::to_owned);
            spec
        };
        assert_eq!(check(&with_name(None), &recorded(None)), Ok(()));
        assert_eq!(
            check(&with_name(Some("api")), &recorded(Some("api"))),
            Ok(())
        );
        let refusal = |stored, attached| {
            check(&with_name(stored), &recorded(attached))
                .expect_err("another name")
                .to_string()
        };
        assert_eq!(
            refusal(Some("localhost"), None),
            "its TLS server name \"localhost\" is not the one attach recorded (none)"
        );
        assert_eq!(
            refusal(Some("evil"), Some("api")),
            "its TLS server name \"evil\" is not the one attach recorded (\"api\")"
        );
        assert_eq!(
            refusal(None, Some("api")),
            "its TLS server name none is not the one attach recorded (\"api\")"
        );
        // A record without a fingerprint predates both: checked on its server only.
        let mut old = recorded(None);
        old.ca_fingerprint = None;
        assert_eq!(check(&with_name(Some("localhost")), &old), Ok(()));
    }

    #[test]
    fn another_ca_is_refused_when_one_is_recorded() {
        let recorded = ca_fingerprint(&stored("https://a", Some(CA)));
        let kc = stored("https://a", Some(OTHER_CA));
        let mismatch = check(&kc, &spec("https://a", recorded.clone()))
            .expect_err("another CA")
            .to_string();
        let shown = &recorded.as_deref().expect("valid")[..19];
        assert!(
            mismatch.starts_with("its certificate authority (sha256:")
                && mismatch.ends_with(&format!("is not the one attach recorded ({shown}…)")),
            "{mismatch}"
        );
        // A CA added where attach stored none differs too.
        let none = ca_fingerprint(&stored("https://a", None));
        assert!(check(&kc, &spec("https://a", none)).is_err());
        // Attached before fingerprints were recorded: the server only.
        assert_eq!(check(&kc, &spec("https://a", None)), Ok(()));
    }
}
