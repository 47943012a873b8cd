//! Kubeconfigs: the user's (to reach the primary and, during attach, a remote) and the stored
//! ones (the credentials kubectl-mesh keeps for each attached cluster).
//!
//! A user's kubeconfig may use anything kubectl understands: files, exec plugins, client
//! certificates. A stored kubeconfig is read later, by another process on another machine
//! (the webhook in the primary), so it must be self-contained and must not make that process
//! run or read anything: one cluster, one user and one context all named by the cluster
//! name, inline `certificate-authority-data` and a bearer token. The same rule as istiod's
//! remote-secret sanitizer.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, KubeconfigError, NamedAuthInfo,
    NamedCluster, NamedContext,
};

/// What went wrong with a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig path was given and none could be found.
    #[error("no kubeconfig found")]
    NotFound,
    /// A kubeconfig file could not be read.
    #[error("cannot read kubeconfig {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A kubeconfig file could not be parsed, or merged with the others.
    #[error("cannot load kubeconfig {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// The default kubeconfig (`~/.kube/config`) could not be read or parsed.
    #[error("cannot load the default kubeconfig")]
    LoadDefault(#[source] LoadError),
    /// Neither `--context` nor `current-context` names a context.
    #[error("the kubeconfig has no current context")]
    NoCurrentContext,
    /// The named context does not exist.
    #[error("context {context:?} not found in the kubeconfig")]
    ContextNotFound {
        /// The name asked for.
        context: String,
        /// The names there are.
        available: Vec<String>,
    },
    /// A context names a cluster that does not exist.
    #[error(
        "context {context:?} refers to cluster {cluster:?}, which the kubeconfig does not define"
    )]
    ClusterNotFound {
        /// The context.
        context: String,
        /// The missing cluster.
        cluster: String,
    },
    /// A context names a user that does not exist.
    #[error("context {context:?} refers to user {user:?}, which the kubeconfig does not define")]
    UserNotFound {
        /// The context.
        context: String,
        /// The missing user.
        user: String,
    },
    /// A cluster has no `server`.
    #[error("cluster {cluster:?} has no server URL")]
    NoServer {
        /// The cluster.
        cluster: String,
    },
    /// A certificate-authority file could not be read. The path comes from the kubeconfig's
    /// text, so it is quoted: a line break in it must not split the error line.
    #[error("cannot read certificate-authority file {path:?} of cluster {cluster:?}")]
    ReadCa {
        /// The cluster.
        cluster: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Inline `certificate-authority-data` is not base64.
    #[error("certificate-authority-data of cluster {cluster:?} is not valid base64")]
    BadCaData {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: base64::DecodeError,
    },
    /// A kubeconfig could not be turned into a client configuration.
    #[error("cannot use context {context:?}")]
    Config {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// A client could not be built from a valid configuration.
    #[error("cannot create a Kubernetes client for context {context:?}")]
    Client {
        /// The context.
        context: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A stored kubeconfig breaks the rule of stored kubeconfigs.
    #[error("stored kubeconfig refused: {0}")]
    Refused(String),
    /// A cluster name cannot name Kubernetes objects.
    #[error("invalid cluster name {name:?}: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        why: String,
    },
    /// A kubeconfig could not be written or read as YAML.
    #[error("invalid kubeconfig YAML")]
    Yaml(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::NotFound => "pass --kubeconfig or set KUBECONFIG".into(),
            Self::Read { .. } => "check the path given with --kubeconfig or KUBECONFIG".into(),
            Self::Load { .. } | Self::LoadDefault(_) => {
                "check the file with `kubectl config view`, or pass another with --kubeconfig"
                    .into()
            }
            Self::NoCurrentContext => {
                "pass --context, or run `kubectl config use-context <name>`".into()
            }
            Self::ContextNotFound { available, .. } if available.is_empty() => {
                "the kubeconfig defines no context; check --kubeconfig".into()
            }
            Self::ContextNotFound { available, .. } => {
                let names: Vec<String> = available.iter().map(|n| quote_odd(n)).collect();
                format!("use one of: {}", names.join(", "))
            }
            Self::ClusterNotFound { .. } | Self::UserNotFound { .. } | Self::NoServer { .. } => {
                "fix the kubeconfig; `kubectl config view` shows it".into()
            }
            Self::ReadCa { .. } => "check that the file exists and is readable".into(),
            Self::BadCaData { .. } => {
                "certificate-authority-data must be the base64 of a PEM certificate".into()
            }
            Self::Config { .. } | Self::Client { .. } => {
                "check that `kubectl --context <name> get ns` works with this kubeconfig".into()
            }
            Self::Refused(_) => "stored kubeconfigs carry only a bearer token and inline \
                certificate-authority-data; re-run `kubectl mesh attach` to recreate it"
                .into(),
            Self::InvalidName { .. } => "choose another with --name: lowercase letters, digits \
                and '-', at most 63 characters, starting and ending with a letter or digit"
                .into(),
            Self::Yaml(_) => "check the kubeconfig's YAML".into(),
        }
    }
}

/// A name from a kubeconfig as printed in a one-line message: as it is, or quoted and
/// escaped when it holds whitespace or control characters (a line break in a context name
/// must not split the `error:` line).
fn quote_odd(name: &str) -> String {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("{name:?}")
    } else {
        name.to_owned()
    }
}

/// kube's error loading a kubeconfig, told without the lines the YAML parser quotes around a
/// fault: those of a kubeconfig hold tokens and keys, and errors end up in terminals and CI
/// logs.
#[derive(Debug)]
pub struct LoadError(KubeconfigError);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KubeconfigError::Parse(e) => {
                write!(
                    f,
                    "failed to parse kubeconfig YAML: {}",
                    e.without_snippet()
                )
            }
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Loads the user's kubeconfig: the file `path` (`--kubeconfig`), or else the files listed
/// in KUBECONFIG merged by kubectl's rules, or else `~/.kube/config`.
pub fn load(path: Option<&Path>) -> Result<Kubeconfig> {
    match path {
        Some(path) => read_from(path),
        None => {
            // The files kube is about to read, for the check of `refuse_odd_utf16`.
            let paths: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
                Some(list) => std::env::split_paths(&list)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
                None => std::env::home_dir()
                    .map(|home| home.join(".kube").join("config"))
                    .into_iter()
                    .collect(),
            };
            for path in &paths {
                refuse_odd_utf16(path)?;
            }
            Kubeconfig::read().map_err(|source| match source {
                KubeconfigError::FindPath => Error::NotFound,
                source => Error::LoadDefault(LoadError(source)),
            })
        }
    }
}

/// [`Kubeconfig::read_from`], after [`refuse_odd_utf16`].
fn read_from(path: &Path) -> Result<Kubeconfig> {
    refuse_odd_utf16(path)?;
    Kubeconfig::read_from(path).map_err(|e| load_error(path, e))
}

/// Refuses a file that starts with a UTF-16 byte-order mark but has an odd number of bytes
/// (a truncated file): kube-client 5.0 decodes UTF-16 kubeconfigs two bytes at a time and
/// panics on the last, lone byte. Anything else, unreadable files included, is left to kube.
fn refuse_odd_utf16(path: &Path) -> Result<()> {
    use std::io::Read as _;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bom = [0u8; 2];
    if len % 2 == 1
        && file.read_exact(&mut bom).is_ok()
        && matches!(bom, [0xFF, 0xFE] | [0xFE, 0xFF])
    {
        return Err(Error::Read {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "UTF-16 text with an odd number of bytes",
            ),
        });
    }
    Ok(())
}

/// kube's read error names the path again; ours already does.
fn load_error(path: &Path, err: KubeconfigError) -> Error {
    match err {
        KubeconfigError::ReadConfig(source, _) => Error::Read {
            path: path.to_owned(),
            source,
        },
        source => Error::Load {
            path: path.to_owned(),
            source: LoadError(source),
        },
    }
}

/// One context of a kubeconfig with the cluster and user it names.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    /// Name of the context.
    pub context: &'a str,
    /// Name of its cluster.
    pub cluster_name: &'a str,
    /// The cluster.
    pub cluster: &'a Cluster,
    /// Name of its user, if it names one.
    pub user_name: Option<&'a str>,
    /// The user, if it names one.
    pub auth: Option<&'a AuthInfo>,
    /// Default namespace of the context.
    pub namespace: Option<&'a str>,
}

impl Selected<'_> {
    /// The API server URL.
    pub fn server(&self) -> Result<&str> {
        self.cluster
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::NoServer {
                cluster: self.cluster_name.to_owned(),
            })
    }

    /// The cluster's CA bundle (PEM), read from inline data only: call
    /// [`inline_certificate_authority`] first to include a file.
    pub fn ca_data(&self) -> Result<Option<Vec<u8>>> {
        decode_ca(self.cluster_name, self.cluster)
    }
}

/// The context named `context`, or the current one, with its cluster and user.
pub fn select<'a>(kc: &'a Kubeconfig, context: Option<&str>) -> Result<Selected<'a>> {
    let name = context
        .or(kc.current_context.as_deref())
        .filter(|n| !n.is_empty())
        .ok_or(Error::NoCurrentContext)?;
    let named =
        kc.contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::ContextNotFound {
                context: name.to_owned(),
                available: kc.contexts.iter().map(|c| c.name.clone()).collect(),
            })?;
    // A context without a body is valid YAML but names nothing; treat it like a missing cluster.
    let ctx = named
        .context
        .as_ref()
        .ok_or_else(|| Error::ClusterNotFound {
            context: named.name.clone(),
            cluster: String::new(),
        })?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| Error::ClusterNotFound {
            context: named.name.clone(),
            cluster: ctx.cluster.clone(),
        })?;
    let (user_name, auth) = match ctx.user.as_deref() {
        None => (None, None),
        Some(user) => {
            let auth = kc
                .auth_infos
                .iter()
                .find(|u| u.name == user)
                .ok_or_else(|| Error::UserNotFound {
                    context: named.name.clone(),
                    user: user.to_owned(),
                })?;
            (Some(user), auth.auth_info.as_ref())
        }
    };
    Ok(Selected {
        context: &named.name,
        cluster_name: &ctx.cluster,
        cluster,
        user_name,
        auth,
        namespace: ctx.namespace.as_deref(),
    })
}

/// A client configuration for the context named `context`, or the current one.
pub async fn client_config(kc: Kubeconfig, context: Option<&str>) -> Result<kube::Config> {
    let name = select(&kc, context)?.context.to_owned();
    let options = KubeConfigOptions {
        context: Some(name.clone()),
        cluster: None,
        user: None,
    };
    kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|source| Error::Config {
            context: name,
            source,
        })
}

/// A client for the context named `context`, or the current one.
pub async fn client(kc: Kubeconfig, context: Option<&str>) -> Result<kube::Client> {
    let name = select(&kc, context)?.context.to_owned();
    let config = client_config(kc, Some(&name)).await?;
    mesh_core::retry_after::client(config).map_err(|source| Error::Client {
        context: name,
        source,
    })
}

/// Reads a kubeconfig the user gave for a remote cluster and keeps only the chosen context
/// (or the current one), its cluster and its user, with a certificate-authority *file*
/// inlined as `certificate-authority-data`. The user's credentials are kept as they are
/// (files and exec plugins included): they are used once, from this machine, to create the
/// service account whose token is stored.
pub fn read_remote(path: &Path, context: Option<&str>) -> Result<Kubeconfig> {
    let kc = read_from(path)?;
    let sel = select(&kc, context)?;
    let mut cluster = sel.cluster.clone();
    inline_certificate_authority(sel.cluster_name, &mut cluster)?;
    let context_name = sel.context.to_owned();
    let named_context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .cloned()
        .ok_or_else(|| Error::ContextNotFound {
            context: context_name.clone(),
            available: Vec::new(),
        })?;
    Ok(Kubeconfig {
        clusters: vec![NamedCluster {
            name: sel.cluster_name.to_owned(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: match (sel.user_name, sel.auth) {
            (Some(name), auth) => vec![NamedAuthInfo {
                name: name.to_owned(),
                auth_info: auth.cloned(),
                ..Default::default()
            }],
            (None, _) => Vec::new(),
        },
        contexts: vec![named_context],
        current_context: Some(context_name),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    })
}

/// Replaces a cluster's `certificate-authority` file with inline `certificate-authority-data`.
/// Inline data wins when both are set, as in client-go; the path is dropped either way.
pub fn inline_certificate_authority(cluster_name: &str, cluster: &mut Cluster) -> Result<()> {
    let Some(path) = cluster.certificate_authority.take() else {
        return Ok(());
    };
    if cluster.certificate_authority_data.is_none() {
        let pem = std::fs::read(&path).map_err(|source| Error::ReadCa {
            cluster: cluster_name.to_owned(),
            path: PathBuf::from(&path),
            source,
        })?;
        cluster.certificate_authority_data = Some(BASE64.encode(pem));
    }
    Ok(())
}

/// A kubeconfig for one attached cluster as kubectl-mesh stores it: cluster, user and
/// context all named `cluster_name`, bearer-token auth, CA inline.
pub fn build_stored_kubeconfig(
    cluster_name: &str,
    server: &str,
    ca_data: Option<&[u8]>,
    token: &str,
) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: cluster_name.to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority_data: ca_data.map(|pem| BASE64.encode(pem)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: cluster_name.to_owned(),
            auth_info: Some(token_auth(token)),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: cluster_name.to_owned(),
            context: Some(Context {
                cluster: cluster_name.to_owned(),
                user: Some(cluster_name.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(cluster_name.to_owned()),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    }
}

/// An `AuthInfo` holding only a bearer token.
fn token_auth(token: &str) -> AuthInfo {
    // `AuthInfo::token` is a `secrecy::SecretString`; going through serde builds it without
    // making `secrecy` a dependency of its own, and keeps the token out of `Debug` output.
    let mut auth = AuthInfo::default();
    if let Ok(with_token) =
        serde_json::from_value::<AuthInfo>(serde_json::json!({ "token": token }))
    {
        auth.token = with_token.token;
    }
    auth
}

/// The stored kubeconfig for `remote`'s current cluster: its server and CA (file inlined),
/// the given token, everything else dropped, all named `cluster_name`. Checked with
/// [`validate_stored`] before it is returned.
pub fn sanitize(remote: &Kubeconfig, cluster_name: &str, token: &str) -> Result<Kubeconfig> {
    validate_cluster_name(cluster_name)?;
    let sel = select(remote, None)?;
    let mut cluster = sel.cluster.clone();
    inline_certificate_authority(sel.cluster_name, &mut cluster)?;
    if cluster.insecure_skip_tls_verify == Some(true)
        && cluster.certificate_authority_data.is_none()
    {
        return Err(Error::Refused(format!(
            "cluster {:?} skips TLS verification and has no certificate-authority-data; \
             add the remote's CA to the kubeconfig you attach with",
            sel.cluster_name
        )));
    }
    // A stored kubeconfig may not route the webhook's calls (the webhook refuses one with a
    // proxy): attaching such a cluster would succeed and then never sync.
    if cluster.proxy_url.is_some() {
        return Err(Error::Refused(format!(
            "cluster {:?} is reached through proxy-url, which a stored kubeconfig may not name; \
             attach with a kubeconfig without it (set HTTPS_PROXY instead; mesh-webhook uses \
             the HTTPS_PROXY of its own environment)",
            sel.cluster_name
        )));
    }
    let ca = decode_ca(sel.cluster_name, &cluster)?;
    let mut stored = build_stored_kubeconfig(cluster_name, sel.server()?, ca.as_deref(), token);
    // A server reached through another name (an SSH tunnel, a load balancer) keeps working.
    if let Some(c) = stored.clusters.first_mut().and_then(|c| c.cluster.as_mut()) {
        c.tls_server_name = cluster.tls_server_name.clone();
    }
    validate_stored(&stored)?;
    Ok(stored)
}

/// Checks the rule of stored kubeconfigs, which the webhook applies too
/// ([`mesh_core::kubeconfig::validate_stored`]).
pub fn validate_stored(kc: &Kubeconfig) -> Result<()> {
    mesh_core::kubeconfig::validate_stored(kc)
        .map_err(|refused| Error::Refused(refused.to_string()))
}

/// Serializes a kubeconfig as YAML (the form stored in a Secret).
pub fn to_yaml(kc: &Kubeconfig) -> Result<String> {
    serde_yaml::to_string(kc).map_err(|e| Error::Yaml(Box::new(e)))
}

/// Parses a stored kubeconfig and checks it with [`validate_stored`].
pub fn parse_stored(yaml: &str) -> Result<Kubeconfig> {
    let kc = Kubeconfig::from_yaml(yaml).map_err(|e| match e {
        // The parser's message quotes the lines around the fault, and the lines of a stored
        // kubeconfig hold its token; errors end up in terminals, CI logs and check reports.
        KubeconfigError::Parse(parse) => Error::Yaml(parse.without_snippet().to_string().into()),
        other => Error::Yaml(Box::new(other)),
    })?;
    validate_stored(&kc)?;
    Ok(kc)
}

/// Checks that a cluster name can name Kubernetes objects and label values: a DNS-1123 label.
pub fn validate_cluster_name(name: &str) -> Result<()> {
    match crate::object_names::dns_label_problem(name) {
        Some(why) => Err(Error::InvalidName {
            name: name.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

fn decode_ca(cluster_name: &str, cluster: &Cluster) -> Result<Option<Vec<u8>>> {
    cluster
        .certificate_authority_data
        .as_deref()
        .map(|b64| {
            // Kubeconfigs written by hand sometimes wrap the base64; tolerate whitespace.
            let compact: String = b64.split_whitespace().collect();
            BASE64.decode(compact).map_err(|source| Error::BadCaData {
                cluster: cluster_name.to_owned(),
                source,
            })
        })
        .transpose()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn stored() -> Kubeconfig {
        build_stored_kubeconfig("east", "https://127.0.0.1:6443", Some(CA), "s3cr3t")
    }

    fn with_user(edit: impl FnOnce(&mut AuthInfo)) -> Kubeconfig {
        let mut kc = stored();
        edit(kc.auth_infos[0].auth_info.as_mut().unwrap());
        kc
    }

    fn refused(kc: &Kubeconfig) -> String {
        match validate_stored(kc) {
            Err(Error::Refused(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn built_kubeconfig_is_valid_and_named_by_cluster() {
        let kc = stored();
        validate_stored(&kc).unwrap();
        let yaml = to_yaml(&kc).unwrap();
        assert!(yaml.contains("token: s3cr3t"), "{yaml}");
        assert!(yaml.contains("certificate-authority-data:"), "{yaml}");
        assert!(yaml.contains("current-context: east"), "{yaml}");
        let back = parse_stored(&yaml).unwrap();
        let sel = select(&back, None).unwrap();
        assert_eq!(
            (sel.context, sel.cluster_name, sel.user_name),
            ("east", "east", Some("east"))
        );
        assert_eq!(sel.server().unwrap(), "https://127.0.0.1:6443");
        assert_eq!(sel.ca_data().unwrap().as_deref(), Some(CA));
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let text = format!("{:?}", stored());
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn refuses_exec_plugins() {
        let kc = with_user(|u| {
            u.exec = serde_json::from_value(serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "aws",
            }))
            .unwrap();
        });
        assert!(refused(&kc).contains("runs an exec plugin"));
    }

    #[test]
    fn refuses_auth_providers() {
        let kc = with_user(|u| {
            u.auth_provider = serde_json::from_value(serde_json::json!({
                "name": "gcp", "config": {}
            }))
            .unwrap();
        });
        assert!(refused(&kc).contains("auth provider \"gcp\""));
    }

    #[test]
    fn refuses_credentials_from_files_and_basic_auth() {
        let cases = [
            (
                with_user(|u| u.token_file = Some("/var/run/token".into())),
                "token from a file",
            ),
            (
                with_user(|u| u.client_certificate = Some("/home/me/cert.pem".into())),
                "client certificate or key from a file",
            ),
            (
                with_user(|u| u.client_key = Some("/home/me/key.pem".into())),
                "client certificate or key from a file",
            ),
            (
                with_user(|u| u.username = Some("admin".into())),
                "username and password",
            ),
        ];
        for (kc, refusal) in cases {
            let message = refused(&kc);
            assert!(message.contains(refusal), "{message}");
        }
    }

    #[test]
    fn refuses_ca_files_and_insecure() {
        let mut kc = stored();
        kc.clusters[0]
            .cluster
            .as_mut()
            .unwrap()
            .certificate_authority = Some("/ca.crt".into());
        assert!(refused(&kc).contains("certificate authority from a file"));
        let mut kc = stored();
        kc.clusters[0]
            .cluster
            .as_mut()
            .unwrap()
            .insecure_skip_tls_verify = Some(true);
        assert!(refused(&kc).contains("skips TLS verification"));
    }

    #[test]
    fn refuses_mismatched_names_and_extra_entries() {
        let mut kc = stored();
        kc.auth_infos[0].name = "admin".into();
        assert!(refused(&kc).contains("must share one name"));
        let mut kc = stored();
        kc.clusters.push(kc.clusters[0].clone());
        assert!(refused(&kc).contains("exactly one cluster"));
        let mut kc = stored();
        kc.current_context = None;
        assert!(refused(&kc).contains("current-context"));
    }

    #[test]
    fn refuses_plain_http_and_missing_token() {
        let kc = build_stored_kubeconfig("east", "http://127.0.0.1:8080", None, "t");
        assert!(refused(&kc).contains("not https"));
        let kc = with_user(|u| u.token = None);
        assert!(refused(&kc).contains("has no token"));
    }

    #[test]
    fn accepts_inline_client_certificate_data() {
        let kc = with_user(|u| {
            *u = serde_json::from_value(serde_json::json!({
                "client-certificate-data": BASE64.encode(b"cert"),
                "client-key-data": BASE64.encode(b"key"),
            }))
            .unwrap();
        });
        validate_stored(&kc).unwrap();
    }

    #[test]
    fn parse_stored_refuses_exec_from_yaml() {
        let yaml = r#"
apiVersion: v1
kind: Config
current-context: east
clusters:
- name: east
  cluster: {server: "https://1.2.3.4"}
contexts:
- name: east
  context: {cluster: east, user: east}
users:
- name: east
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}
"#;
        let err = parse_stored(yaml).unwrap_err();
        assert!(err.to_string().contains("exec plugin"), "{err}");
        assert!(err.hint().contains("bearer token"));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn user_kubeconfig(dir: &Path) -> PathBuf {
        write(dir, "ca.crt", std::str::from_utf8(CA).unwrap());
        write(
            dir,
            "config",
            include_str!("../tests/data/user-kubeconfig.yaml"),
        )
    }

    #[test]
    fn read_remote_inlines_ca_file_and_keeps_one_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = user_kubeconfig(dir.path());
        let kc = read_remote(&path, None).unwrap();
        assert_eq!(kc.contexts.len(), 1);
        assert_eq!(kc.clusters.len(), 1);
        assert_eq!(kc.current_context.as_deref(), Some("admin@east"));
        let sel = select(&kc, None).unwrap();
        assert_eq!(sel.cluster.certificate_authority, None);
        assert_eq!(sel.ca_data().unwrap().as_deref(), Some(CA));
        assert_eq!(sel.namespace, Some("team-a"));
        // The user's own credentials may use files: they are used once, locally.
        let auth = sel.auth.unwrap();
        assert!(
            auth.client_certificate
                .as_deref()
                .unwrap()
                .ends_with("admin.crt")
        );

        let stored = sanitize(&kc, "east", "tok").unwrap();
        let s = select(&stored, None).unwrap();
        assert_eq!((s.context, s.cluster_name), ("east", "east"));
        assert_eq!(s.ca_data().unwrap().as_deref(), Some(CA));
        assert_eq!(s.cluster.tls_server_name.as_deref(), Some("api.east"));
        let u = s.auth.unwrap();
        assert!(u.client_certificate.is_none());
        assert!(u.token.is_some());
        // The token given, not the user's own (`abc`).
        let doc = serde_json::to_value(&stored).unwrap();
        assert_eq!(doc["users"][0]["user"]["token"], "tok");

        let west = read_remote(&path, Some("admin@west")).unwrap();
        assert_eq!(
            select(&west, None).unwrap().server().unwrap(),
            "https://127.0.0.1:7443"
        );
    }

    #[test]
    fn missing_ca_file_and_unknown_context_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = user_kubeconfig(dir.path());
        let err = read_remote(&path, Some("nope")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "context \"nope\" not found in the kubeconfig"
        );
        assert_eq!(err.hint(), "use one of: admin@east, admin@west");
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        let err = read_remote(&path, None).unwrap_err();
        assert!(matches!(err, Error::ReadCa { .. }), "{err:?}");
    }

    #[test]
    fn load_reads_the_given_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = user_kubeconfig(dir.path());
        let kc = load(Some(&path)).unwrap();
        assert_eq!(kc.contexts.len(), 2);
        assert_eq!(select(&kc, None).unwrap().context, "admin@east");
        let err = load(Some(&dir.path().join("missing"))).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err:?}");
        assert!(err.hint().contains("--kubeconfig"));
    }

    /// The YAML parser quotes the lines around a fault, and those of a kubeconfig hold tokens
    /// and keys: the error of a file that does not parse says where, not what is there.
    #[test]
    fn a_kubeconfig_that_does_not_parse_is_told_without_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let text = "apiVersion: v1\nusers:\n- name: admin\n  user:\n    token: s3cr3t-token\n \
                    client-key-data: [unclosed\n";
        std::fs::write(&path, text).unwrap();
        let err = crate::Error::from(load(Some(&path)).unwrap_err());
        let line = err.line();
        assert!(line.starts_with("cannot load kubeconfig "), "{line}");
        assert!(line.contains("line "), "says where: {line}");
        assert!(!line.contains("s3cr3t-token"), "{line}");
    }

    /// A cluster entry with only its server set.
    fn server(url: &str) -> Cluster {
        Cluster {
            server: Some(url.into()),
            ..Default::default()
        }
    }

    /// A user's kubeconfig whose one context `c` points at `cluster`.
    pub(crate) fn user_with_cluster(cluster: Cluster) -> Kubeconfig {
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "c".into(),
                cluster: Some(cluster),
                ..Default::default()
            }],
            contexts: vec![NamedContext {
                name: "c".into(),
                context: Some(Context {
                    cluster: "c".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            current_context: Some("c".into()),
            ..Default::default()
        }
    }

    #[test]
    fn sanitize_refuses_insecure_without_ca() {
        let kc = user_with_cluster(Cluster {
            insecure_skip_tls_verify: Some(true),
            ..server("https://1.2.3.4")
        });
        assert!(matches!(sanitize(&kc, "c", "t"), Err(Error::Refused(_))));
    }

    #[test]
    fn sanitize_refuses_a_proxy_the_webhook_cannot_use() {
        let kc = user_with_cluster(Cluster {
            proxy_url: Some("http://proxy:3128".into()),
            ..server("https://1.2.3.4")
        });
        match sanitize(&kc, "c", "t") {
            Err(Error::Refused(message)) => assert!(message.contains("proxy-url"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn cluster_names() {
        validate_cluster_name("east-1").unwrap();
        for bad in ["", "East", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?}");
        }
        // Said in the words `install --excluded-namespaces` uses for the same rule.
        assert_eq!(
            validate_cluster_name("East").unwrap_err().to_string(),
            "invalid cluster name \"East\": it may hold only lowercase letters, digits and '-'"
        );
    }
}
