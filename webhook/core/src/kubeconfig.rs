//! THE rule of stored kubeconfigs: what a kubeconfig kept in a Secret on the primary may hold.
//!
//! Attach writes such kubeconfigs; the webhook, the reconciler and the plugin's commands read
//! them back. Whoever can write a Secret in the mesh namespace must not be able to make any of
//! them run a program, read a file of the machine it runs on, talk plain HTTP or skip TLS
//! verification, so every reader checks this same rule before a byte is sent to the server.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use kube::config::{AuthInfo, Cluster, Kubeconfig};

use crate::printable;

/// Most bytes of a name or server URL of a stored kubeconfig that a message quotes: whoever
/// wrote the Secret chose them, of any length, and a refusal is logged at every admission
/// review and kept in status and Events.
pub const MAX_QUOTED: usize = 200;

/// Why a stored kubeconfig breaks the rule: one line, never quoting a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

fn refuse(reason: String) -> Result<(), Refused> {
    Err(Refused(reason))
}

/// Checks the rule: one cluster, user and context, all with the same name, which is the
/// current context; an https server; inline certificate-authority data only, valid base64;
/// a bearer token or an inline client certificate and key; no exec plugin, auth provider,
/// token file, file path, basic auth, impersonation, proxy or skipped TLS verification.
pub fn validate_stored(kc: &Kubeconfig) -> Result<(), Refused> {
    let ([cluster], [user], [context]) = (
        kc.clusters.as_slice(),
        kc.auth_infos.as_slice(),
        kc.contexts.as_slice(),
    ) else {
        return refuse(format!(
            "it must hold exactly one cluster, user and context, not {}, {} and {}",
            kc.clusters.len(),
            kc.auth_infos.len(),
            kc.contexts.len()
        ));
    };
    let name = &cluster.name;
    let quoted = quoted_name(name);
    if user.name != *name || context.name != *name {
        return refuse(format!(
            "cluster {quoted}, user {} and context {} must share one name",
            quoted_name(&user.name),
            quoted_name(&context.name)
        ));
    }
    if kc.current_context.as_deref() != Some(name.as_str()) {
        return refuse(format!("current-context must be {quoted}"));
    }
    match &context.context {
        Some(c) if c.cluster == *name && c.user.as_deref() == Some(name.as_str()) => {}
        _ => {
            return refuse(format!(
                "context {quoted} must refer to cluster {quoted} and user {quoted}"
            ));
        }
    }

    let Some(c) = &cluster.cluster else {
        return refuse(format!("cluster {quoted} is empty"));
    };
    // Every field named, none with `..`: a field a new kube learns fails to build here until
    // the rule says whether a stored kubeconfig may hold it.
    let Cluster {
        server,
        insecure_skip_tls_verify,
        certificate_authority,
        certificate_authority_data,
        proxy_url,
        // Recorded by attach (`recorded::tls_server_name`); the rest change nothing sent.
        tls_server_name: _,
        disable_compression: _,
        extensions: _,
        other: _,
    } = c;
    match server.as_deref() {
        Some(s) if s.starts_with("https://") => {}
        Some(s) => {
            let s = quoted_server(s, ServerShown::Host);
            return refuse(format!("server {s} of cluster {quoted} is not https"));
        }
        None => return refuse(format!("cluster {quoted} has no server")),
    }
    if certificate_authority.is_some() {
        return refuse(format!(
            "cluster {quoted} reads its certificate authority from a file"
        ));
    }
    if *insecure_skip_tls_verify == Some(true) {
        return refuse(format!("cluster {quoted} skips TLS verification"));
    }
    if proxy_url.is_some() {
        return refuse(format!("cluster {quoted} uses a proxy"));
    }
    if let Some(b64) = certificate_authority_data.as_deref()
        && BASE64.decode(unwrapped_base64(b64)).is_err()
    {
        return refuse(format!(
            "certificate-authority-data of cluster {quoted} is not valid base64"
        ));
    }

    let Some(u) = &user.auth_info else {
        return refuse(format!("user {quoted} has no credentials"));
    };
    let AuthInfo {
        username,
        password,
        token,
        token_file,
        client_certificate,
        client_certificate_data,
        client_key,
        client_key_data,
        impersonate,
        impersonate_uid,
        impersonate_groups,
        impersonate_user_extra,
        auth_provider,
        exec,
        extensions: _,
        other: _,
    } = u;
    // The plugin's command line is not quoted: it may carry a credential.
    if exec.is_some() {
        return refuse(format!("user {quoted} runs an exec plugin"));
    }
    if let Some(provider) = auth_provider {
        return refuse(format!(
            "user {quoted} uses the auth provider {}",
            quoted_name(&provider.name)
        ));
    }
    if token_file.is_some() {
        return refuse(format!("user {quoted} reads its token from a file"));
    }
    if client_certificate.is_some() || client_key.is_some() {
        return refuse(format!(
            "user {quoted} reads a client certificate or key from a file"
        ));
    }
    if username.is_some() || password.is_some() {
        return refuse(format!("user {quoted} uses a username and password"));
    }
    // Sent as Impersonate-* headers: the stored identity would act as another.
    if impersonate.is_some()
        || impersonate_uid.is_some()
        || impersonate_groups.is_some()
        || impersonate_user_extra.is_some()
    {
        return refuse(format!("user {quoted} impersonates another identity"));
    }
    let has_token = token.is_some();
    let has_cert = client_certificate_data.is_some() && client_key_data.is_some();
    if !has_token && !has_cert {
        return refuse(format!("user {quoted} has no token"));
    }
    Ok(())
}

/// Base64 of a stored kubeconfig as every reader takes it: kubeconfigs written by hand
/// sometimes wrap it, so whitespace is dropped.
pub fn unwrapped_base64(b64: &str) -> String {
    b64.split_whitespace().collect()
}

/// `kc` with its certificate-authority data [`unwrapped_base64`], for kube to build a client
/// from: the rule and the fingerprint read a wrapped CA as the CA it encodes, and kube's
/// decoding refuses whitespace.
pub fn with_unwrapped_ca(mut kc: Kubeconfig) -> Kubeconfig {
    for cluster in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        if let Some(b64) = &mut cluster.certificate_authority_data {
            *b64 = unwrapped_base64(b64);
        }
    }
    kc
}

/// A name of a stored kubeconfig (of its cluster, user, context or auth provider) as a message
/// quotes it.
fn quoted_name(name: &str) -> String {
    printable::quoted(name, MAX_QUOTED)
}

/// How much of a server URL a message quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerShown {
    /// Its scheme and host (with port): enough to say which server is refused.
    Host,
    /// Its path as well: two servers behind one proxy differ only there.
    HostAndPath,
}

/// `server` as far as a message may quote it: never a `user:password@`, query or fragment,
/// which may carry a credential (`?access_token=`); one line, at most [`MAX_QUOTED`] bytes.
pub fn quoted_server(server: &str, shown: ServerShown) -> String {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = match shown {
        ServerShown::Host => "",
        ServerShown::HostAndPath => path,
    };
    let url = match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    };
    printable::quoted(&url, MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: east
  cluster: {server: "https://127.0.0.1:1", certificate-authority-data: ""}
users:
- name: east
  user: {token: s3cr3t-token}
contexts:
- name: east
  context: {cluster: east, user: east}
current-context: east
"#;

    /// The reason `STORED` with `from` replaced by `to` is refused for.
    fn refused(from: &str, to: &str) -> String {
        let yaml = STORED.replace(from, to);
        assert_ne!(yaml, STORED, "{from:?} not in the fixture");
        let kc = Kubeconfig::from_yaml(&yaml).expect("parse");
        let reason = validate_stored(&kc).expect_err("accepted").to_string();
        assert!(!reason.contains("s3cr3t"), "{reason}");
        reason
    }

    #[test]
    fn accepts_what_attach_writes() {
        let kc = Kubeconfig::from_yaml(STORED).expect("parse");
        assert_eq!(validate_stored(&kc), Ok(()));
    }

    #[test]
    fn refuses_what_would_run_a_program_or_read_a_file() {
        let exec = "{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}";
        assert!(refused("{token: s3cr3t-token}", exec).contains("exec plugin"));
        assert!(refused("{token: s3cr3t-token}", "{tokenFile: /etc/passwd}").contains("file"));
        let ca = r#"{server: "https://127.0.0.1:1", certificate-authority: /etc/ca}"#;
        assert!(
            refused(
                r#"{server: "https://127.0.0.1:1", certificate-authority-data: ""}"#,
                ca
            )
            .contains("from a file")
        );
    }

    #[test]
    fn refuses_plain_http_skipped_verification_and_several_clusters() {
        assert!(refused("https://127.0.0.1:1", "http://127.0.0.1:1").contains("not https"));
        let skip = r#"{server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}"#;
        assert!(
            refused(
                r#"{server: "https://127.0.0.1:1", certificate-authority-data: ""}"#,
                skip
            )
            .contains("skips TLS verification")
        );
        let two =
            "clusters:\n- name: west\n  cluster: {server: \"https://127.0.0.1:2\"}\n- name: east";
        assert!(refused("clusters:\n- name: east", two).contains("exactly one cluster"));
    }

    /// kube sends these as Impersonate-* headers: a Secret edited to add them passed.
    #[test]
    fn refuses_impersonation() {
        for field in [
            "as: admin",
            "as-uid: \"0\"",
            "as-groups: [system:masters]",
            "as-user-extra: {scopes: [all]}",
        ] {
            let impersonating = format!("{{token: s3cr3t-token, {field}}}");
            let reason = refused("{token: s3cr3t-token}", &impersonating);
            assert!(
                reason.contains("impersonates another identity"),
                "{field}: {reason}"
            );
        }
    }

    #[test]
    fn refusing_a_server_never_quotes_its_userinfo_path_or_query() {
        let reason = refused("https://127.0.0.1:1", "http://u:s3cr3t@h");
        assert!(reason.contains(r#"server "http://h" "#), "{reason}");
        let reason = refused("https://127.0.0.1:1", "http://h:8/p?t=s3cr3t#s3cr3t");
        assert!(reason.contains(r#"server "http://h:8" "#), "{reason}");
        let reason = refused("https://127.0.0.1:1", "u:s3cr3t@h/x");
        assert!(reason.contains(r#"server "h" "#), "{reason}");
    }

    /// A refusal is logged at every admission review and shown in status and Events: a name
    /// of any length must not make it as long.
    #[test]
    fn refusing_quotes_a_name_bounded() {
        let long = "c".repeat(100_000);
        let reason = refused(
            "contexts:\n- name: east",
            &format!("contexts:\n- name: {long}"),
        );
        assert!(reason.contains("must share one name"), "{reason}");
        assert!(reason.len() < 1024, "{} bytes", reason.len());
        let provider = format!("{{auth-provider: {{name: {long}}}}}");
        let reason = refused("{token: s3cr3t-token}", &provider);
        assert!(reason.contains("uses the auth provider \"ccc"), "{reason}");
        assert!(reason.len() < 1024, "{} bytes", reason.len());
    }
}
