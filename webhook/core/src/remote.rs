//! Clients of the remote clusters, built from the kubeconfig Secrets of their `MeshCluster`s.
//!
//! [`Remotes`] is the registry shared by the admission path (which pushes to every entry) and
//! the reconciler (which keeps it up to date). An entry is rebuilt only when the Secret's
//! `resourceVersion` or the `MeshCluster`'s generation changes, so rotated credentials take
//! effect without a restart and an unchanged Secret never churns connections. Until then, an
//! entry built for another `MeshCluster` than the one watched now is not handed out.
//!
//! Credentials never reach a log line: errors about a kubeconfig carry what is wrong with it,
//! never its content.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError},
};

use crate::{
    call_limits::{CallLimitsLayer, DEFAULT_MAX_ANSWER_ELEMENTS, WEBHOOK_MAX_ANSWER_LINE},
    cluster::{KUBECONFIG_KEY, MeshCluster, NamespaceScope},
    failure::{Failure, error_chain},
    printable::one_line,
    token::Claims,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secret {namespace}/{name} not found")]
    SecretMissing { namespace: String, name: String },

    // Variants whose text quotes their cause have no `source` (it would print twice).
    #[error("cannot read secret {namespace}/{name}: {}", error_chain(.cause))]
    ReadSecret {
        namespace: String,
        name: String,
        cause: kube::Error,
    },

    #[error("secret {namespace}/{name} has no {key:?} key")]
    KeyMissing {
        namespace: String,
        name: String,
        key: &'static str,
    },

    #[error("the kubeconfig in secret {name} is not UTF-8")]
    NotUtf8 {
        name: String,
        #[source]
        source: std::str::Utf8Error,
    },

    // The parser's message may quote the document, so only a fixed text is kept.
    #[error("the kubeconfig in secret {name} is not valid YAML")]
    Yaml { name: String },

    #[error("the kubeconfig in secret {name} is unusable")]
    Kubeconfig {
        name: String,
        #[source]
        source: KubeconfigError,
    },

    #[error("the kubeconfig in secret {name} is refused: {reason}")]
    Refused { name: String, reason: String },

    #[error("cannot build a client from the kubeconfig in secret {name}")]
    Client {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "the kubeconfig in secret {secret} is not what attach recorded for {cluster}: {what}; \
         nothing is sent there; restore the Secret, or attach {cluster} again (`kubectl mesh \
         attach <its kubeconfig> --name {cluster}`)"
    )]
    CredentialsMismatch {
        secret: String,
        cluster: String,
        /// [`crate::recorded::Mismatch`]: what differs, never a credential.
        what: String,
    },

    #[error(
        "secret {secret} reaches another cluster than {cluster} (id {found}, not {expected}): \
         nothing is written there; restore the Secret, or attach {cluster} again"
    )]
    OtherCluster {
        secret: String,
        cluster: String,
        found: String,
        expected: String,
    },

    #[error(
        "cannot read which cluster the kubeconfig in secret {secret} reaches (its kube-system \
         namespace): {}",
        error_chain(.cause)
    )]
    IdentityUnread { secret: String, cause: kube::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reasons of [`Error::reason`]: the stored credentials are missing, unreadable, unusable, not
/// what attach recorded, or reach another cluster than the one attached.
pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
pub const INVALID_CREDENTIALS: &str = "InvalidCredentials";
pub const CREDENTIALS_MISMATCH: &str = "CredentialsMismatch";
pub const CLUSTER_MISMATCH: &str = "ClusterMismatch";

impl Error {
    /// Short PascalCase reason for a status condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretMissing { .. } | Self::KeyMissing { .. } => CREDENTIALS_MISSING,
            Self::ReadSecret { .. } => SECRET_UNREADABLE,
            Self::NotUtf8 { .. }
            | Self::Yaml { .. }
            | Self::Kubeconfig { .. }
            | Self::Refused { .. }
            | Self::Client { .. } => INVALID_CREDENTIALS,
            Self::CredentialsMismatch { .. } => CREDENTIALS_MISMATCH,
            Self::OtherCluster { .. } => CLUSTER_MISMATCH,
            Self::IdentityUnread { cause, .. } => Failure::of(cause).reason(),
        }
    }

    /// How the call failed, for the errors that are a failed call to the remote (which, unlike
    /// unusable credentials, may pass on their own).
    pub fn call_failure(&self) -> Option<Failure> {
        self.failed_call().map(Failure::of)
    }

    /// The error of the call to the remote, for the errors that are a failed call.
    pub fn failed_call(&self) -> Option<&kube::Error> {
        match self {
            Self::IdentityUnread { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

/// Timeouts and bounds of remote clients. Short on purpose: a dead remote must fail within the
/// admission deadline instead of holding a namespace edit on the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    /// Longest a whole call may take, its answer included ([`crate::call_limits`]), but for
    /// the answer of a watch where `watches_last`.
    pub call_deadline: Option<Duration>,
    /// The deadline bounds a watch until its answer starts: for clients that watch, whose
    /// watches last minutes by design and whose lists must end all the same.
    pub watches_last: bool,
    /// Most bytes an answer may bring without a line break ([`crate::call_limits`]): every
    /// remote client is bounded, since a stored kubeconfig may point at any server. Lists are
    /// read in pages ([`crate::list`]), far below it.
    pub max_answer_line: usize,
    /// Most JSON elements an answer (a watch's event) may hold ([`crate::call_limits`]): what
    /// parsing makes of an answer grows with them, up to tenfold its bytes.
    pub max_answer_elements: usize,
}

/// [`RemoteOptions::call_deadline`] by default: a page of a remote's namespaces fits in it
/// many times over on a slow link.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(30);

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            call_deadline: Some(DEFAULT_CALL_DEADLINE),
            watches_last: false,
            max_answer_line: WEBHOOK_MAX_ANSWER_LINE,
            max_answer_elements: DEFAULT_MAX_ANSWER_ELEMENTS,
        }
    }
}

impl RemoteOptions {
    /// These options for a client that watches: its reads wait out a quiet watch, and the
    /// deadline still ends every other call, the watcher's lists and relists among them.
    pub fn watching(self) -> Self {
        Self {
            read_timeout: WATCH_READ_TIMEOUT,
            watches_last: true,
            ..self
        }
    }
}

/// How long each watch request (to a remote, or from the webhook to the primary) lasts before
/// its apiserver ends it and the watcher resumes where it was. A connection that died without a word (a NAT or a load balancer that
/// dropped an idle flow tells neither end) delivers nothing, not even that end: only
/// [`WATCH_READ_TIMEOUT`] tells, and what the watch showed is trusted until then. Kube's
/// default, 290 s, would leave a sync reading a dead watch's view for five minutes.
pub const WATCH_SECONDS: u32 = 50;

/// Read timeout of the clients that watch a cluster: a live watch request ends within
/// [`WATCH_SECONDS`], so a connection silent this long is dead. (The short read timeout of
/// [`RemoteOptions`] would cut every quiet watch and reopen it, for nothing.)
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(70);

/// What every watch asks: [`WATCH_SECONDS`] per request.
pub fn watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().timeout(WATCH_SECONDS)
}

/// What an entry was built from; a different value means the client must be rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub cluster_uid: Option<String>,
    pub cluster_generation: Option<i64>,
    pub secret_uid: Option<String>,
    pub secret_version: Option<String>,
}

impl Fingerprint {
    pub fn of(cluster: &MeshCluster, secret: Option<&Secret>) -> Self {
        Self {
            cluster_uid: cluster.metadata.uid.clone(),
            cluster_generation: cluster.metadata.generation,
            secret_uid: secret.and_then(|s| s.metadata.uid.clone()),
            secret_version: secret.and_then(|s| s.metadata.resource_version.clone()),
        }
    }
}

/// A client for one remote, or why there is none.
#[derive(Clone)]
pub enum RemoteState {
    Ready(Client),
    /// The credentials are missing or unusable; the text is safe to show and log.
    Unavailable {
        reason: &'static str,
        message: String,
    },
}

impl RemoteState {
    /// No client, because of `error`. Its whole chain is the message: an unusable kubeconfig
    /// keeps kube's reason as its source, not in its own text.
    fn unavailable(error: &Error) -> Self {
        Self::Unavailable {
            reason: error.reason(),
            message: error_chain(error),
        }
    }
}

impl std::fmt::Debug for RemoteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("Ready"),
            Self::Unavailable { reason, message } => f
                .debug_struct("Unavailable")
                .field("reason", reason)
                .field("message", message)
                .finish(),
        }
    }
}

/// One attached cluster as the process currently sees it.
#[derive(Clone)]
pub struct Remote {
    name: String,
    state: RemoteState,
    /// The same credentials with [`WATCH_READ_TIMEOUT`], for long-running watches.
    watch_client: Option<Client>,
    fingerprint: Fingerprint,
    /// The cluster's namespace scope (see [`SyncRule::within`](crate::labels::SyncRule::within)).
    scope: NamespaceScope,
    /// The time claims of the stored token, when it is a JWT.
    token: Option<Claims>,
    /// Until when pushes do not wait for this remote (see [`Remote::is_silent`]).
    silent_until: Arc<Mutex<Option<Instant>>>,
    /// The cluster its server must be ([`Remote::verify`]); `None` for a test's remote.
    identity: Option<Identity>,
    /// The id its server answered with, once read.
    found_id: Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Clients print nothing useful (and kube's does not print at all).
        f.debug_struct("Remote")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// A remote with a ready client, e.g. one built by a test.
    pub fn new(name: impl Into<String>, client: Client) -> Self {
        Self::in_state(
            name.into(),
            RemoteState::Ready(client.clone()),
            Some(client),
        )
    }

    /// A remote whose credentials cannot be used.
    pub fn unavailable(name: impl Into<String>, error: &Error) -> Self {
        Self::in_state(name.into(), RemoteState::unavailable(error), None)
    }

    /// A remote bound to no MeshCluster: no scope, token or identity known.
    fn in_state(name: String, state: RemoteState, watch_client: Option<Client>) -> Self {
        Self {
            name,
            state,
            watch_client,
            fingerprint: Fingerprint::default(),
            token: None,
            scope: NamespaceScope::default(),
            silent_until: Arc::default(),
            identity: None,
            found_id: Arc::default(),
        }
    }

    /// Proves that this entry's server is the cluster attach recorded before anything is
    /// written through it: a Secret edited to point elsewhere, or a MeshCluster naming another
    /// cluster's Secret, would otherwise have one cluster's labels written on another. The id
    /// is read once per entry (a changed Secret or MeshCluster makes a new one); a failed read
    /// is tried again by the next caller. An entry without a client has nothing to prove.
    pub async fn verify(&self) -> Result<()> {
        let (Some(identity), RemoteState::Ready(client)) = (&self.identity, &self.state) else {
            return Ok(());
        };
        let found = self
            .found_id
            .get_or_try_init(|| identity.read(client))
            .await?;
        identity.check(found)
    }

    /// Whether pushes should not wait for this remote: one ran out its deadline a moment ago
    /// and nothing has answered since. A frozen remote then holds one primary edit for the
    /// push deadline, not every one; the reconciler brings it the changes once it answers.
    pub fn is_silent(&self) -> bool {
        self.silence().is_some_and(|until| Instant::now() < until)
    }

    /// A push ran out its deadline: pushes do not wait for this remote for `quiet`, unless it
    /// answers something before.
    pub fn went_silent(&self, quiet: Duration) {
        *self.silence() = Some(Instant::now() + quiet);
    }

    /// The remote answered a request: pushes wait for it again.
    pub fn answered(&self) {
        *self.silence() = None;
    }

    fn silence(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.silent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The `MeshCluster` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> &RemoteState {
        &self.state
    }

    pub fn client(&self) -> Option<&Client> {
        match &self.state {
            RemoteState::Ready(client) => Some(client),
            RemoteState::Unavailable { .. } => None,
        }
    }

    /// A client for watches of this remote (see [`WATCH_READ_TIMEOUT`]).
    pub fn watch_client(&self) -> Option<&Client> {
        self.watch_client.as_ref()
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Which of the remote's namespaces may be written.
    pub fn scope(&self) -> &NamespaceScope {
        &self.scope
    }

    /// The same remote bound to `cluster`'s identity and scope, as [`Remotes::refresh`] builds
    /// it (a test's remote, built from a client).
    pub fn with_identity(mut self, cluster: &MeshCluster) -> Self {
        self.identity = Some(Identity::of(cluster));
        self.scope = cluster.spec.scope.clone();
        self
    }

    /// When the stored token was issued and expires, if it is a JWT.
    pub fn token(&self) -> Option<Claims> {
        self.token
    }

    /// The same remote holding a stored token with `claims`, as [`Remotes::refresh`] reads
    /// them from the Secret (a test's remote, built from a client).
    pub fn with_token(mut self, claims: Claims) -> Self {
        self.token = Some(claims);
        self
    }
}

/// The registry of remote clients, keyed by `MeshCluster` name. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Remotes {
    entries: Arc<RwLock<Entries>>,
    options: RemoteOptions,
}

#[derive(Debug, Default)]
struct Entries {
    built: BTreeMap<String, Arc<Remote>>,
    /// The uid and generation of each attached `MeshCluster` as last watched, once
    /// [`Remotes::observe`] is called.
    attached: Option<BTreeMap<String, Incarnation>>,
}

/// A `MeshCluster`'s uid and generation.
type Incarnation = (Option<String>, Option<i64>);

/// The attached clusters at one instant ([`Remotes::snapshot`]).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The entries [`Remotes::get`] hands out, ordered by name.
    pub current: Vec<Arc<Remote>>,
    /// The attached clusters, by name, whose entry is not built yet for their `MeshCluster` as
    /// watched now (it changed, or was attached or created again, a moment ago): nothing
    /// reaches them until [`Remotes::refresh`] builds it.
    pub rebuilding: Vec<String>,
}

impl Entries {
    /// Whether `remote` was built for the `MeshCluster` of its name as last watched: until
    /// [`Remotes::refresh`] rebuilds it, the entry of a cluster deleted, changed (its server,
    /// scope or identity) or created again under the same name would reach what is no longer
    /// attached. An entry bound to no `MeshCluster` (a test's) has nothing to be compared with.
    fn is_current(&self, remote: &Remote) -> bool {
        let built = &remote.fingerprint;
        built.cluster_uid.is_none()
            || self.attached.as_ref().is_none_or(|attached| {
                attached.get(&remote.name).is_some_and(|(uid, generation)| {
                    built.cluster_uid == *uid && built.cluster_generation == *generation
                })
            })
    }
}

impl Remotes {
    pub fn new(options: RemoteOptions) -> Self {
        Self {
            entries: Arc::default(),
            options,
        }
    }

    /// The entry of `name`, unless it was built for another `MeshCluster` than the one
    /// attached now ([`Remotes::observe`]).
    pub fn get(&self, name: &str) -> Option<Arc<Remote>> {
        let entries = self.read();
        entries
            .built
            .get(name)
            .filter(|remote| entries.is_current(remote))
            .cloned()
    }

    /// Every entry [`Remotes::get`] hands out, and the attached clusters it hands out none of.
    pub fn snapshot(&self) -> Snapshot {
        let entries = self.read();
        let is_current = |name: &String| {
            (entries.built.get(name)).is_some_and(|remote| entries.is_current(remote))
        };
        Snapshot {
            current: (entries.built.values())
                .filter(|remote| entries.is_current(remote))
                .cloned()
                .collect(),
            rebuilding: (entries.attached.iter())
                .flat_map(BTreeMap::keys)
                .filter(|name| !is_current(name))
                .cloned()
                .collect(),
        }
    }

    /// Adds or replaces an entry as is.
    pub fn insert(&self, remote: Remote) {
        self.write()
            .built
            .insert(remote.name.clone(), Arc::new(remote));
    }

    /// Keeps only the entries for which `keep` holds, current or not.
    pub fn retain(&self, mut keep: impl FnMut(&Remote) -> bool) {
        self.write().built.retain(|_, remote| keep(remote));
    }

    /// The `MeshCluster`s as their watch shows them now: from then on an entry is handed out
    /// only while it was built for the attached one of its name, however late the rebuild.
    pub fn observe<'a>(&self, clusters: impl IntoIterator<Item = &'a MeshCluster>) {
        let attached = clusters
            .into_iter()
            .filter(|cluster| cluster.is_attached())
            .map(|cluster| {
                let meta = &cluster.metadata;
                (cluster.name_any(), (meta.uid.clone(), meta.generation))
            })
            .collect();
        self.write().attached = Some(attached);
    }

    /// Brings the entry of `cluster` up to date with its Secret (looked up by the caller in
    /// `namespace`). Returns the new entry when it was (re)built, `None` when unchanged.
    pub async fn refresh(
        &self,
        cluster: &MeshCluster,
        namespace: &str,
        secret: Option<&Secret>,
    ) -> Option<Arc<Remote>> {
        let name = cluster.name_any();
        let fingerprint = Fingerprint::of(cluster, secret);
        if self
            .read()
            .built
            .get(&name)
            .is_some_and(|r| r.fingerprint == fingerprint)
        {
            return None;
        }
        let watching = self.options.watching();
        let mut watch_client = None;
        let state = match client_from_secret(namespace, cluster, secret, &self.options).await {
            Ok(client) => {
                tracing::info!(cluster = %name, "built remote client");
                // The same stored kubeconfig, which just passed: this cannot fail
                // differently.
                watch_client = client_from_secret(namespace, cluster, secret, &watching)
                    .await
                    .ok();
                RemoteState::Ready(client)
            }
            Err(error) => {
                let chain = error_chain(&error);
                tracing::warn!(cluster = %name, error = %chain, "remote credentials unusable");
                RemoteState::unavailable(&error)
            }
        };
        let remote = Arc::new(Remote {
            fingerprint,
            token: secret.and_then(stored_token_claims),
            scope: cluster.spec.scope.clone(),
            identity: Some(Identity::of(cluster)),
            ..Remote::in_state(name.clone(), state, watch_client)
        });
        self.write().built.insert(name, remote.clone());
        Some(remote)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        // The map is always left consistent (single inserts/removes), so a poisoned lock is safe
        // to keep using.
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The time claims of the bearer token in a cluster Secret's kubeconfig, when there is one.
pub fn stored_token_claims(secret: &Secret) -> Option<Claims> {
    let data = secret.data.as_ref()?.get(KUBECONFIG_KEY)?;
    let token = crate::token::kubeconfig_token(std::str::from_utf8(&data.0).ok()?)?;
    crate::token::claims(&token)
}

/// Reads the Secret of `cluster` from the primary (in `namespace`, the mesh namespace) and
/// builds the client of the remote: what a one-shot command such as `kubectl mesh sync` needs.
pub async fn client_for_cluster(
    primary: &Client,
    namespace: &str,
    cluster: &MeshCluster,
    options: &RemoteOptions,
) -> Result<Client> {
    let name = &cluster.spec.secret_name;
    let secret = Api::<Secret>::namespaced(primary.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|cause| Error::ReadSecret {
            namespace: namespace.to_owned(),
            name: name.clone(),
            cause,
        })?;
    client_from_secret(namespace, cluster, secret.as_ref(), options).await
}

/// The identity of a cluster: the UID of its kube-system namespace, which attach records as the
/// `MeshCluster`'s `spec.clusterId`.
pub async fn cluster_id(client: &Client) -> Result<String, kube::Error> {
    let kube_system = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    Ok(kube_system.metadata.uid.unwrap_or_default())
}

/// Most characters of a foreign cluster id quoted in an error (a uid has 36).
const MAX_QUOTED_ID: usize = 64;

/// The cluster a client built from a `MeshCluster`'s Secret must reach.
#[derive(Clone, Debug)]
pub struct Identity {
    cluster: String,
    secret: String,
    /// `spec.clusterId`.
    expected: String,
}

impl Identity {
    pub fn of(cluster: &MeshCluster) -> Self {
        Self {
            cluster: cluster.name_any(),
            secret: cluster.spec.secret_name.clone(),
            expected: cluster.spec.cluster_id.clone(),
        }
    }

    /// The id of the cluster `client` reaches ([`cluster_id`]).
    pub async fn read(&self, client: &Client) -> Result<String> {
        cluster_id(client)
            .await
            .map_err(|cause| Error::IdentityUnread {
                secret: self.secret.clone(),
                cause,
            })
    }

    /// Whether `found`, the id a client's server answered with, is this cluster's.
    pub fn check(&self, found: &str) -> Result<()> {
        if found == self.expected {
            return Ok(());
        }
        // Whatever answered chose this text, and it travels into status, Events and warnings:
        // quoted inert, and no longer than a uid.
        let found: String = one_line(found).chars().take(MAX_QUOTED_ID).collect();
        Err(Error::OtherCluster {
            secret: self.secret.clone(),
            cluster: self.cluster.clone(),
            found,
            expected: self.expected.clone(),
        })
    }
}

/// Builds the client of `cluster`'s remote from its Secret (`spec.secretName`, looked up by
/// the caller in `namespace`), through [`client_for_record`].
pub async fn client_from_secret(
    namespace: &str,
    cluster: &MeshCluster,
    secret: Option<&Secret>,
    options: &RemoteOptions,
) -> Result<Client> {
    let secret_name = &cluster.spec.secret_name;
    let secret = secret.ok_or_else(|| Error::SecretMissing {
        namespace: namespace.to_owned(),
        name: secret_name.to_owned(),
    })?;
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .ok_or_else(|| Error::KeyMissing {
            namespace: namespace.to_owned(),
            name: secret_name.to_owned(),
            key: KUBECONFIG_KEY,
        })?;
    let yaml = std::str::from_utf8(&data.0).map_err(|source| Error::NotUtf8 {
        name: secret_name.to_owned(),
        source,
    })?;
    client_for_record(cluster, secret_name, yaml, options).await
}

/// Builds a client of `cluster`'s remote from a kubeconfig stored for it (in Secret `name`:
/// its sync, view or Istio credentials), after checking it against the rule of stored
/// kubeconfigs ([`crate::kubeconfig::validate_stored`]) and against what attach recorded in
/// the MeshCluster ([`crate::recorded::check`]): a kubeconfig edited to name another server
/// or trust another CA is refused before anything is sent.
pub async fn client_for_record(
    cluster: &MeshCluster,
    name: &str,
    yaml: &str,
    options: &RemoteOptions,
) -> Result<Client> {
    let kubeconfig = parse_stored(name, yaml)?;
    check_record(cluster, name, &kubeconfig)?;
    build_client(name, kubeconfig, options).await
}

/// [`crate::recorded::check`] as an [`Error`] about Secret `name` of `cluster`.
pub fn check_record(cluster: &MeshCluster, name: &str, kubeconfig: &Kubeconfig) -> Result<()> {
    crate::recorded::check(kubeconfig, &cluster.spec).map_err(|mismatch| {
        Error::CredentialsMismatch {
            secret: name.to_owned(),
            cluster: cluster.name_any(),
            what: mismatch.to_string(),
        }
    })
}

/// Builds a client from a stored kubeconfig after checking it against the rule of stored
/// kubeconfigs ([`crate::kubeconfig::validate_stored`]), for one not (yet) recorded in a
/// MeshCluster (attach's own, before it records it); a MeshCluster's go through
/// [`client_for_record`]. `name` only labels errors.
pub async fn client_from_kubeconfig(
    name: &str,
    yaml: &str,
    options: &RemoteOptions,
) -> Result<Client> {
    let kubeconfig = parse_stored(name, yaml)?;
    build_client(name, kubeconfig, options).await
}

/// Gives each request on `config`'s connections `timeout` to be written and answered, counted
/// from when it is sent. Without the reset, the time a pooled connection sat idle counts
/// against the next answer, and a healthy cluster looks dead after a quiet minute.
pub fn time_each_request(config: &mut kube::Config, timeout: Duration) {
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.reset_reader_on_write = true;
}

/// Parses a stored kubeconfig and checks it with the rule of stored kubeconfigs.
fn parse_stored(name: &str, yaml: &str) -> Result<Kubeconfig> {
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|source| match source {
        KubeconfigError::Parse(_) => Error::Yaml {
            name: name.to_owned(),
        },
        source => Error::Kubeconfig {
            name: name.to_owned(),
            source,
        },
    })?;
    crate::kubeconfig::validate_stored(&kubeconfig).map_err(|reason| Error::Refused {
        name: name.to_owned(),
        reason: reason.to_string(),
    })?;
    Ok(kubeconfig)
}

async fn build_client(
    name: &str,
    kubeconfig: Kubeconfig,
    options: &RemoteOptions,
) -> Result<Client> {
    let kubeconfig = crate::kubeconfig::with_unwrapped_ca(kubeconfig);
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            name: name.to_owned(),
            source,
        })?;
    config.connect_timeout = Some(options.connect_timeout);
    time_each_request(&mut config, options.read_timeout);
    let client = crate::retry_after::client_builder(config).map_err(|source| Error::Client {
        name: name.to_owned(),
        source,
    })?;
    let mut limits = CallLimitsLayer::new(options.call_deadline, Some(options.max_answer_line))
        .max_elements(options.max_answer_elements);
    if options.watches_last {
        limits = limits.watches_last();
    }
    Ok(client.with_layer(&limits).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fake_apiserver::FakeApiserver,
        fixtures::{
            SilentServer, TOKEN_KUBECONFIG, assert_chain_ends_with, assert_each_cause_prints_once,
            mesh_cluster, refused_connection, stored_credentials,
        },
    };
    use k8s_openapi::ByteString;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server that accepts connections and never answers the TLS handshake: the connect
    /// timeout ends the call, and the error says that it timed out.
    #[tokio::test]
    async fn a_connect_that_times_out_says_so() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let silent = SilentServer::start().await;
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("CA");
        let yaml = kubeconfig_of(&silent.url, &ca.cert);
        let options = RemoteOptions {
            connect_timeout: Duration::from_millis(300),
            read_timeout: Duration::from_secs(30),
            call_deadline: None,
            ..RemoteOptions::default()
        };
        let client = client_from_kubeconfig("east-creds", &yaml, &options)
            .await
            .expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let error = api
            .list(&Default::default())
            .await
            .expect_err("no handshake");
        assert_eq!(Failure::of(&error), Failure::TimedOut, "{error}");
        assert_chain_ends_with(&error, "(Connect): timed out");
    }

    /// [`TOKEN_KUBECONFIG`] for `server`, whose serving certificate is `ca`.
    fn kubeconfig_of(server: &str, ca: &rcgen::Certificate) -> String {
        use base64::Engine as _;
        let ca_data = base64::engine::general_purpose::STANDARD.encode(ca.pem());
        TOKEN_KUBECONFIG
            .replace("https://127.0.0.1:1", server)
            .replace(
                r#"certificate-authority-data: """#,
                &format!("certificate-authority-data: {ca_data}"),
            )
    }

    /// A TLS server on 127.0.0.1 that answers every request 503, as a load balancer without
    /// backends does (no real apiserver answers 503 for namespaces on demand); its URL and
    /// how many requests it has answered.
    async fn answering_unavailable() -> (String, rcgen::Certificate, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (acceptor, cert) = local_tls();
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let server = listening(move |connection| {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(connection).await else {
                    return;
                };
                let mut buffer = [0; 4096];
                // Requests without a body: one read each is enough here.
                while let Ok(read) = tls.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no backend","code":503}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        })
        .await;
        (server, cert, answered)
    }

    /// A TLS acceptor serving a certificate for 127.0.0.1, and that certificate.
    fn local_tls() -> (tokio_rustls::TlsAcceptor, rcgen::Certificate) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .expect("server config");
        (tokio_rustls::TlsAcceptor::from(Arc::new(config)), key.cert)
    }

    /// A remote that answers every request with the start of a list, then a byte of it every
    /// 100 ms, never ending it: each read gets bytes long before its timeout. No apiserver can
    /// be made to answer so on demand.
    async fn trickling_a_list() -> (String, rcgen::Certificate) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (acceptor, cert) = local_tls();
        let server = listening(move |connection| {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(connection).await else {
                    return;
                };
                let mut request = [0; 4096];
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             transfer-encoding: chunked\r\n\r\n";
                if tls.read(&mut request).await.is_err()
                    || tls.write_all(start.as_bytes()).await.is_err()
                {
                    return;
                }
                while tls.write_all(b"1\r\n \r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        })
        .await;
        (server, cert)
    }

    /// A remote that answers every request with a namespace list whose one label value has
    /// `size` bytes, on one line. No apiserver holds such a namespace.
    async fn answering_a_label_of(size: usize) -> (String, rcgen::Certificate) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (acceptor, cert) = local_tls();
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"NamespaceList","metadata":{{}},"items":[{{"metadata":{{"name":"big","labels":{{"big":"{}"}}}}}}]}}"#,
            "x".repeat(size)
        ) + "\n";
        let body = Arc::new(body);
        let server = listening(move |connection| {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(connection).await else {
                    return;
                };
                let mut request = [0; 4096];
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if tls.read(&mut request).await.is_ok() && tls.write_all(head.as_bytes()).await.is_ok() {
                    let _ = tls.write_all(body.as_bytes()).await;
                }
            });
        })
        .await;
        (server, cert)
    }

    /// kube-client holds an answer's bytes twice while it parses them: the webhook's clients
    /// refuse one past 16 MiB, not 64, which three times over would pass its memory limit.
    #[tokio::test]
    async fn the_webhook_s_clients_refuse_an_answer_past_16_mib() {
        let (server, cert) = answering_a_label_of(20 << 20).await;
        let yaml = kubeconfig_of(&server, &cert);
        let options = RemoteOptions::default();
        let client = client_from_kubeconfig("east-creds", &yaml, &options)
            .await
            .expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let error = api.list(&Default::default()).await.expect_err("refused");
        let chain = error_chain(&error);
        assert!(chain.contains("ran past 16 MiB"), "{chain}");
    }

    /// The watch client lists too (the watcher's first list, and each relist): a remote that
    /// trickled that list, a byte well within the read timeout at a time, held the watch of it
    /// for ever.
    #[tokio::test]
    async fn a_list_through_the_watch_client_ends_with_the_call_deadline() {
        let (server, cert) = trickling_a_list().await;
        let options = RemoteOptions {
            call_deadline: Some(Duration::from_millis(500)),
            ..RemoteOptions::default()
        };
        let yaml = kubeconfig_of(&server, &cert);
        let client = client_from_kubeconfig("east-creds", &yaml, &options.watching())
            .await
            .expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let params = kube::api::ListParams::default();
        let listed = tokio::time::timeout(Duration::from_secs(10), api.list(&params)).await;
        let error = listed
            .expect("ended by the call deadline")
            .expect_err("never whole");
        assert_eq!(Failure::of(&error), Failure::TimedOut, "{error}");
    }

    /// A listener on a free port of 127.0.0.1, its https URL; it hands each connection it
    /// accepts to `accepted`, until the test ends.
    async fn listening(mut accepted: impl FnMut(tokio::net::TcpStream) + Send + 'static) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                accepted(connection);
            }
        });
        url
    }

    /// kube would retry a 503 by itself, up to 15 times and minutes in all: a push would spend
    /// its deadline and be reported timed out, a sync would hold its worker.
    #[tokio::test]
    async fn an_unavailable_remote_is_reported_at_its_first_answer() {
        let (server, cert, answered) = answering_unavailable().await;
        let options = RemoteOptions {
            call_deadline: None,
            ..RemoteOptions::default()
        };
        let client = client_from_kubeconfig("east-creds", &kubeconfig_of(&server, &cert), &options)
            .await
            .expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let error = tokio::time::timeout(Duration::from_secs(10), api.list(&Default::default()))
            .await
            .expect("answered within seconds")
            .expect_err("503");
        assert_eq!(Failure::of(&error), Failure::Unreachable, "{error}");
        assert_eq!(answered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn errors_print_each_cause_once() {
        let unread = Error::ReadSecret {
            namespace: "kubectl-mesh".into(),
            name: "cluster-east".into(),
            cause: refused_connection(),
        };
        assert!(
            unread.to_string().ends_with("connection refused"),
            "{unread}"
        );
        assert_each_cause_prints_once(&unread);
        let unproved = Error::IdentityUnread {
            secret: "cluster-east".into(),
            cause: refused_connection(),
        };
        assert_each_cause_prints_once(&unproved);
    }

    #[test]
    fn a_foreign_id_is_quoted_inert_and_short() {
        let identity = Identity {
            cluster: "east".into(),
            secret: "cluster-east".into(),
            expected: "uid-east".into(),
        };
        let hostile = format!("uid\x1b[2J{}", "x".repeat(500));
        let text = identity
            .check(&hostile)
            .expect_err("another id")
            .to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("(id uid\\u{1b}[2Jxxx"), "{text}");
        assert!(text.len() < 300, "{text}");
        assert!(identity.check("uid-east").is_ok());
    }

    #[tokio::test]
    async fn errors_never_quote_the_kubeconfig() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exec = TOKEN_KUBECONFIG.replace(
            "token: s3cr3t-token",
            "exec: {apiVersion: client.authentication.k8s.io/v1, command: s3cr3t}",
        );
        let refused = [
            (
                "invalid YAML",
                "users: [ {name: x, user: {token: s3cr3t-token}} ] ]",
            ),
            ("an exec plugin", exec.as_str()),
        ];
        for (what, kubeconfig) in refused {
            let Err(err) =
                client_from_kubeconfig("east-creds", kubeconfig, &RemoteOptions::default()).await
            else {
                panic!("{what} accepted");
            };
            let chain = error_chain(&err);
            assert!(!chain.contains("s3cr3t"), "{what}: {chain}");
        }
    }

    /// kube's reason for refusing a kubeconfig that passed the rule (here, client certificate
    /// and key data that are no PEM) reaches status, Events and logs, once, without the
    /// credentials.
    #[tokio::test]
    async fn an_unusable_kubeconfig_says_why_once_and_never_its_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificate = "client-certificate-data: eA==\n    client-key-data: eQ==";
        let instead_of_the_token = TOKEN_KUBECONFIG.replace("token: s3cr3t-token", certificate);
        let beside_the_token = TOKEN_KUBECONFIG.replace(
            "token: s3cr3t-token",
            &format!("token: s3cr3t-token\n    {certificate}"),
        );
        let cluster = mesh_cluster("east", "uid");
        for kubeconfig in [instead_of_the_token, beside_the_token] {
            let secret = stored_credentials("east", &kubeconfig);
            let remote = Remotes::default()
                .refresh(&cluster, "ns", Some(&secret))
                .await
                .expect("built");
            let RemoteState::Unavailable { reason, message } = remote.state() else {
                panic!("a client was built: {kubeconfig}");
            };
            assert_eq!(*reason, INVALID_CREDENTIALS);
            let why = "identity PEM is missing a private key";
            assert!(
                message.starts_with(
                    "cannot build a client from the kubeconfig in secret cluster-east: "
                ) && message.matches(why).count() == 1,
                "{message}"
            );
            for credential in ["s3cr3t", "eA==", "eQ=="] {
                assert!(!message.contains(credential), "{message}");
            }
            let Err(error) =
                client_from_secret("ns", &cluster, Some(&secret), &RemoteOptions::default()).await
            else {
                panic!("a client was built: {kubeconfig}");
            };
            let unavailable = Remote::unavailable("east", &error);
            assert!(
                matches!(unavailable.state(), RemoteState::Unavailable { message: m, .. } if m == message),
                "{:?}",
                unavailable.state()
            );
        }
    }

    /// The rule and the fingerprint take a CA whose base64 is wrapped (as kubeconfigs written
    /// by hand have it) for the same CA; so does the client.
    #[tokio::test]
    async fn a_wrapped_ca_is_the_same_ca() {
        use base64::Engine as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("CA");
        let as_attached = kubeconfig_of("https://127.0.0.1:1", &ca.cert);
        let data = base64::engine::general_purpose::STANDARD.encode(ca.cert.pem());
        let lines: Vec<&str> = data
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64"))
            .collect();
        let wrapped = as_attached.replace(
            &format!("certificate-authority-data: {data}"),
            &format!(
                "certificate-authority-data: |\n      {}",
                lines.join("\n      ")
            ),
        );
        assert_ne!(wrapped, as_attached);
        let mut cluster = mesh_cluster("east", "uid");
        cluster.spec.ca_fingerprint =
            crate::recorded::ca_fingerprint(&Kubeconfig::from_yaml(&as_attached).expect("parse"));
        let built = client_for_record(
            &cluster,
            "cluster-east",
            &wrapped,
            &RemoteOptions::default(),
        )
        .await;
        assert!(
            built.is_ok(),
            "{}",
            built.err().map(|e| error_chain(&e)).unwrap_or_default()
        );
    }

    #[test]
    fn the_stored_tokens_claims_are_read() {
        let token = crate::token::tests::jwt(serde_json::json!({"iat": 10, "exp": 610}));
        let secret = Secret {
            data: Some(
                [(
                    KUBECONFIG_KEY.to_owned(),
                    ByteString(
                        TOKEN_KUBECONFIG
                            .replace("s3cr3t-token", &token)
                            .into_bytes(),
                    ),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let claims = stored_token_claims(&secret).expect("claims");
        assert_eq!(claims.expires_at.map(|t| t.as_second()), Some(610));
        assert_eq!(claims.issued_at.map(|t| t.as_second()), Some(10));
        assert_eq!(stored_token_claims(&Secret::default()), None);
    }

    /// A remote for `east` whose server answers `kube-system`'s id as `uid-kube-system`.
    fn serving_kube_system(cluster_id: &str) -> (FakeApiserver, Remote) {
        let api = FakeApiserver::default().with_namespace("kube-system", &[]);
        let remote =
            Remote::new("east", api.client()).with_identity(&mesh_cluster("east", cluster_id));
        (api, remote)
    }

    #[tokio::test]
    async fn a_server_that_is_the_recorded_cluster_is_read_once() {
        let (api, remote) = serving_kube_system("uid-kube-system");
        remote.verify().await.expect("the recorded cluster");
        remote.verify().await.expect("still the recorded cluster");
        assert_eq!(api.state().gets, 1);
    }

    #[tokio::test]
    async fn a_server_that_is_another_cluster_is_refused() {
        let (_api, remote) = serving_kube_system("uid-of-east");
        let error = remote.verify().await.expect_err("another cluster");
        assert_eq!(error.reason(), "ClusterMismatch");
        assert_eq!(
            error.to_string(),
            "secret cluster-east reaches another cluster than east (id uid-kube-system, not \
             uid-of-east): nothing is written there; restore the Secret, or attach east again"
        );
    }

    #[tokio::test]
    async fn an_id_that_could_not_be_read_is_read_again() {
        let (api, remote) = serving_kube_system("uid-kube-system");
        api.state().forbidden = true;
        let error = remote.verify().await.expect_err("refused");
        assert_eq!(error.call_failure(), Some(Failure::Forbidden));
        api.state().forbidden = false;
        remote.verify().await.expect("read on the second call");
    }

    /// A listener that counts the connections made to it (and never answers): a stored
    /// kubeconfig's server that must never be reached.
    async fn counting_connections() -> (String, Arc<AtomicUsize>) {
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let mut open = Vec::new();
        let url = listening(move |connection| {
            counter.fetch_add(1, Ordering::Relaxed);
            open.push(connection);
        })
        .await;
        (url, connections)
    }

    /// The entry `Remotes::refresh` builds for `cluster` from a Secret holding `kubeconfig`,
    /// once asked to prove its identity (which, with a client, would send a request).
    async fn refreshed(cluster: &MeshCluster, kubeconfig: &str) -> Arc<Remote> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let remotes = Remotes::new(RemoteOptions {
            connect_timeout: Duration::from_millis(300),
            ..RemoteOptions::default()
        });
        let secret = stored_credentials("east", kubeconfig);
        let remote = remotes
            .refresh(cluster, "ns", Some(&secret))
            .await
            .expect("built");
        let _ = remote.verify().await;
        remote
    }

    fn mismatch_message(remote: &Remote) -> &str {
        match remote.state() {
            RemoteState::Unavailable {
                reason: "CredentialsMismatch",
                message,
            } => message,
            state => panic!("not refused as a mismatch: {state:?}"),
        }
    }

    /// A Secret edited to point at another server (a relaying proxy with a CA of its own) is
    /// refused before anything reaches that server.
    #[tokio::test]
    async fn a_stored_server_other_than_the_recorded_one_is_never_reached() {
        let (proxy, connections) = counting_connections().await;
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("CA");
        // The MeshCluster records https://127.0.0.1:1, as attach stored it.
        let cluster = mesh_cluster("east", "uid-kube-system");
        let remote = refreshed(&cluster, &kubeconfig_of(&proxy, &ca.cert)).await;
        let message = mismatch_message(&remote);
        assert_eq!(
            message,
            format!(
                "the kubeconfig in secret cluster-east is not what attach recorded for east: its \
                 server \"{proxy}\" is not \"https://127.0.0.1:1\", the one attach recorded; \
                 nothing is sent there; restore the Secret, or attach east again (`kubectl mesh \
                 attach <its kubeconfig> --name east`)"
            )
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(remote.client().is_none() && remote.watch_client().is_none());
        assert_eq!(
            connections.load(Ordering::Relaxed),
            0,
            "the proxy was reached"
        );
    }

    /// The recorded server, trusted through another CA than attach stored (a proxy on the
    /// path presenting its own certificate): refused before anything is sent.
    #[tokio::test]
    async fn a_stored_ca_other_than_the_recorded_one_is_never_used() {
        let (server, connections) = counting_connections().await;
        let attached = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("CA");
        let forged = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("CA");
        let as_attached = kubeconfig_of(&server, &attached.cert);
        let mut cluster = mesh_cluster("east", "uid-kube-system");
        cluster.spec.server = server.clone();
        cluster.spec.ca_fingerprint =
            crate::recorded::ca_fingerprint(&Kubeconfig::from_yaml(&as_attached).expect("parse"));
        let remote = refreshed(&cluster, &kubeconfig_of(&server, &forged.cert)).await;
        let message = mismatch_message(&remote);
        assert!(
            message.contains(": its certificate authority (sha256:")
                && message.contains("is not the one attach recorded (sha256:"),
            "{message}"
        );
        assert_eq!(
            connections.load(Ordering::Relaxed),
            0,
            "the server was reached"
        );

        // The CA attach stored, at a trailing slash of difference: built.
        cluster.spec.server = format!("{server}/");
        let remote = refreshed(&cluster, &as_attached).await;
        assert!(remote.client().is_some(), "{:?}", remote.state());
    }

    /// A MeshCluster deleted and created again under its name (perhaps with another Secret and
    /// server), or changed, or on its way out: its old entry reaches nothing, even before the
    /// rebuild.
    #[tokio::test]
    async fn an_entry_is_never_handed_out_for_another_mesh_cluster() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let incarnation = |uid: &str, generation| {
            let mut cluster = mesh_cluster("east", "uid");
            cluster.metadata.uid = Some(uid.to_owned());
            cluster.metadata.generation = Some(generation);
            cluster
        };
        let first = incarnation("uid-1", 1);
        let secret = stored_credentials("east", TOKEN_KUBECONFIG);
        let remotes = Remotes::default();
        remotes.observe([&first]);
        assert_eq!(
            remotes.snapshot().rebuilding,
            ["east"],
            "attached, not built yet"
        );
        let built = remotes
            .refresh(&first, "ns", Some(&secret))
            .await
            .expect("built");
        assert!(remotes.get("east").is_some_and(|r| Arc::ptr_eq(&r, &built)));

        let again = incarnation("uid-2", 1);
        let changed = incarnation("uid-1", 2);
        let mut leaving = first.clone();
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        // Still attached, as another MeshCluster: said to be rebuilt, not passed over.
        let rebuilding = ["east".to_owned()];
        for (watched, rebuilding) in [
            (vec![&again], &rebuilding[..]),
            (vec![&changed], &rebuilding),
            (vec![&leaving], &[]),
            (vec![], &[]),
        ] {
            remotes.observe(watched.iter().copied());
            assert!(remotes.get("east").is_none(), "{watched:?}");
            let snapshot = remotes.snapshot();
            assert!(snapshot.current.is_empty(), "{watched:?}");
            assert_eq!(snapshot.rebuilding, rebuilding, "{watched:?}");
        }

        remotes.observe([&again]);
        let rebuilt = remotes
            .refresh(&again, "ns", Some(&secret))
            .await
            .expect("rebuilt");
        assert!(
            remotes
                .get("east")
                .is_some_and(|r| Arc::ptr_eq(&r, &rebuilt))
        );
        let snapshot = remotes.snapshot();
        assert_eq!(snapshot.current.len(), 1);
        assert!(snapshot.rebuilding.is_empty(), "{snapshot:?}");
    }

    #[tokio::test]
    async fn registry_rebuilds_only_when_the_secret_changes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cluster = mesh_cluster("east", "uid");
        let mut secret = stored_credentials("east", TOKEN_KUBECONFIG);
        let remotes = Remotes::default();
        let built = remotes
            .refresh(&cluster, "ns", Some(&secret))
            .await
            .expect("built");
        assert!(built.client().is_some(), "{:?}", built.state());
        // An opaque token has no claims to read.
        assert_eq!(built.token(), None);
        assert!(
            remotes
                .refresh(&cluster, "ns", Some(&secret))
                .await
                .is_none()
        );

        secret.metadata.resource_version = Some("2".into());
        assert!(
            remotes
                .refresh(&cluster, "ns", Some(&secret))
                .await
                .is_some()
        );

        let gone = remotes
            .refresh(&cluster, "ns", None)
            .await
            .expect("rebuilt");
        assert!(
            matches!(
                gone.state(),
                RemoteState::Unavailable {
                    reason: "CredentialsMissing",
                    ..
                }
            ),
            "{:?}",
            gone.state()
        );
        // Kept, unusable: its entry says why.
        let kept = remotes.get("east").expect("kept");
        assert!(Arc::ptr_eq(&kept, &gone));
    }
}
