//! `kubectl mesh list`: the attached clusters.

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, Resource, ResourceExt};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, KUBECONFIG_KEY, MeshCluster},
};

use crate::{
    Context, Error, Result, age,
    credentials::{TokenExpiry, stored_token, token_expiry},
    kubeconfig,
    mesh_state::{self},
    output::{self, OutputFormat, Tabular},
    request_timeout::Unanswered,
};

/// List the attached clusters.
///
/// Shows what the webhook's reconciler last recorded in each MeshCluster's status; run
/// `kubectl mesh status` for a live view, `kubectl mesh check` to diagnose a cluster.
#[derive(Debug, clap::Args)]
pub struct List {}

impl List {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {} = self;
        let client = ctx.client().await?;
        let clusters = mesh_state::clusters(&client).await?;
        if clusters.is_empty() && ctx.output.is_table() {
            // kubectl's "No resources found": on stderr, so that stdout stays parseable.
            eprintln!("{}", mesh_state::NO_CLUSTERS);
            return Ok(());
        }
        // Only `-o wide` shows them: the others need no Secret read (nor the right to).
        let expiries = if shows_token_expiry(ctx.output) {
            token_expiries(&client, &clusters).await?
        } else {
            BTreeMap::new()
        };
        output::print_stdout(&render(ctx.output, &clusters, &expiries, Timestamp::now())?)?;
        for (name, expiry) in &expiries {
            match expiry {
                Err(why) => ctx.progress.warn(unread_line(name, why)),
                Ok(StoredToken::Missing { secret, detaching }) => {
                    let (warn, line) = missing_line(name, secret, *detaching);
                    if warn {
                        ctx.progress.warn(line);
                    }
                }
                Ok(StoredToken::Held(_)) => {}
            }
        }
        Ok(())
    }
}

/// Whether [`render`] in `format` shows the stored tokens' expiry.
fn shows_token_expiry(format: OutputFormat) -> bool {
    format == OutputFormat::Wide
}

/// Secrets read at once by [`token_expiries`]: a mesh of dozens of remotes is read in a few
/// round trips, without a burst of requests on the primary.
const SECRET_READS: usize = 8;

/// What the primary holds of a cluster's stored token, or why its Secret could not be read,
/// by cluster name.
pub(crate) type Expiries = BTreeMap<String, std::result::Result<StoredToken, String>>;

/// What the primary holds of a cluster's stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredToken {
    /// Its Secret holds a kubeconfig whose token expires so (`Unknown`: no token that tells).
    Held(TokenExpiry),
    /// Its Secret (named `secret`) is gone: deleted by hand, or by a detach under way
    /// (`detaching`). Nothing can reach the cluster with it, whatever its token was.
    Missing { secret: String, detaching: bool },
}

/// [`Expiries`] read from the Secrets attach stored the kubeconfigs in, [`SECRET_READS`] at
/// once; the map keeps them in name order whatever order they arrive in.
pub(crate) async fn token_expiries(client: &Client, clusters: &[MeshCluster]) -> Result<Expiries> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), MESH_NAMESPACE);
    let secrets = &secrets;
    stream::iter(clusters)
        .map(|cluster| async move {
            let name = &cluster.spec.secret_name;
            let doing = format!("cannot read Secret {MESH_NAMESPACE}/{name}");
            let expiry = match secrets.get_opt(name).await {
                Ok(Some(secret)) => Ok(StoredToken::Held(expiry_of(Some(&secret)))),
                Ok(None) => Ok(StoredToken::Missing {
                    secret: name.clone(),
                    detaching: mesh_state::is_being_detached(cluster),
                }),
                // A primary that does not answer in time would not for the next one either.
                Err(e) if Unanswered::within(&e).is_some() => {
                    return Err(Error::kube(doing)(e));
                }
                // Said apart from a token whose expiry is unknown: the caller's rights are what
                // is missing.
                Err(e) => Err(Error::kube(doing)(e).line()),
            };
            Ok((cluster.name_any(), expiry))
        })
        .buffer_unordered(SECRET_READS)
        .try_collect()
        .await
}

/// The line of a cluster whose stored token's Secret could not be read (`why`).
fn unread_line(name: &str, why: &str) -> String {
    format!("token of {name}: not read ({why})")
}

/// The line of a cluster whose stored kubeconfig Secret `secret` is gone, and whether it is
/// a warning: only attach stores it again, unless a detach deletes the cluster anyway.
fn missing_line(name: &str, secret: &str, detaching: bool) -> (bool, String) {
    let what = format!("token of {name}: Secret {MESH_NAMESPACE}/{secret} not found");
    if detaching {
        (false, format!("{what} ({name} is being detached)"))
    } else {
        (
            true,
            format!("{what}; re-run `kubectl mesh attach` for {name} to store fresh credentials"),
        )
    }
}

/// One line per cluster on its stored token (`status -o wide`), and whether it is a warning.
pub fn token_lines(expiries: &Expiries, now: Timestamp) -> Vec<(bool, String)> {
    expiries
        .iter()
        .map(|(name, expiry)| match expiry {
            Err(why) => (true, unread_line(name, why)),
            Ok(StoredToken::Held(expiry)) => expiry_line(name, *expiry, now),
            Ok(StoredToken::Missing { secret, detaching }) => {
                missing_line(name, secret, *detaching)
            }
        })
        .collect()
}

/// [`token_lines`]' line of a token that was read.
fn expiry_line(name: &str, expiry: TokenExpiry, now: Timestamp) -> (bool, String) {
    match expiry {
        TokenExpiry::Never => (false, format!("token of {name}: long-lived, never expires")),
        TokenExpiry::Unknown => (true, format!("token of {name}: expiry unknown")),
        TokenExpiry::At(at) if at <= now => (
            true,
            format!(
                "token of {name}: {} ({at:.0}); `kubectl mesh rotate {name}` issues a new one",
                age::until(at, now)
            ),
        ),
        TokenExpiry::At(at) => (
            false,
            format!("token of {name}: expires {} ({at:.0})", age::until(at, now)),
        ),
    }
}

/// The expiry of the token in a stored-kubeconfig Secret.
pub fn expiry_of(secret: Option<&Secret>) -> TokenExpiry {
    secret
        .and_then(|s| s.data.as_ref()?.get(KUBECONFIG_KEY))
        .and_then(|yaml| std::str::from_utf8(&yaml.0).ok())
        .and_then(|yaml| kubeconfig::parse_stored(yaml).ok())
        .and_then(|stored| stored_token(&stored))
        .map_or(TokenExpiry::Unknown, |token| token_expiry(&token))
}

/// The output of `list` for `clusters` at time `now`: a table, or the resources themselves.
pub fn render(
    format: OutputFormat,
    clusters: &[MeshCluster],
    expiries: &Expiries,
    now: Timestamp,
) -> Result<String> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let rows: Vec<ClusterRow> = clusters
                .iter()
                .map(|c| match expiries.get(&c.name_any()) {
                    Some(Err(_)) => ClusterRow {
                        token_expiry: "unreadable".to_owned(),
                        ..ClusterRow::new(c, TokenExpiry::Unknown, now)
                    },
                    Some(Ok(StoredToken::Missing { .. })) => ClusterRow {
                        token_expiry: MISSING.to_owned(),
                        ..ClusterRow::new(c, TokenExpiry::Unknown, now)
                    },
                    Some(Ok(StoredToken::Held(expiry))) => ClusterRow::new(c, *expiry, now),
                    None => ClusterRow::new(c, TokenExpiry::Unknown, now),
                })
                .collect();
            Ok(output::table(
                &ClusterRow::headers(wide),
                rows.iter().map(|r| r.row(wide)),
            ))
        }
        OutputFormat::Json | OutputFormat::Yaml => {
            let values = clusters
                .iter()
                .map(resource_value)
                .collect::<Result<Vec<_>>>()?;
            // Always a List, as `kubectl get -o json|yaml` prints: one shape for scripts,
            // whether none, one or many clusters are attached.
            output::render_list_document(format, values)
        }
    }
}

/// A MeshCluster as `kubectl get -o yaml` shows it: apiVersion and kind set, managedFields
/// left out.
fn resource_value(cluster: &MeshCluster) -> Result<serde_json::Value> {
    let mut cluster = cluster.clone();
    cluster.metadata.managed_fields = None;
    let mut value = serde_json::to_value(&cluster).map_err(Error::serialize("JSON"))?;
    if let Some(map) = value.as_object_mut() {
        // `MeshCluster::new` sets them; objects read from the apiserver may lack them.
        map.insert("apiVersion".into(), MeshCluster::api_version(&()).into());
        map.insert("kind".into(), MeshCluster::kind(&()).into());
    }
    Ok(value)
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRow {
    /// Name of the MeshCluster.
    pub name: String,
    /// UID of the remote's kube-system namespace.
    pub cluster_id: String,
    /// API server URL.
    pub server: String,
    /// Status of the `Reachable` condition.
    pub reachable: String,
    /// Status of the `Synced` condition.
    pub synced: String,
    /// Namespaces in sync at the last sync.
    pub in_sync: String,
    /// Primary namespaces with labels absent on the remote.
    pub missing: String,
    /// Namespaces the last sync corrected.
    pub drifted: String,
    /// Age of the last sync.
    pub last_sync: String,
    /// When the stored token expires.
    pub token_expiry: String,
    /// Age of the MeshCluster.
    pub age: String,
}

/// The TOKEN-EXPIRY cell of a cluster whose stored kubeconfig Secret is gone
/// ([`StoredToken::Missing`]).
const MISSING: &str = "missing";

/// The SYNCED cell of a cluster being detached ([`mesh_state::is_being_detached`]), which
/// `sync` refuses and sends the admin to `list` to watch.
const DETACHING: &str = "Detaching";

impl ClusterRow {
    /// The row of `cluster`, whose stored token expires as `expiry`, at time `now`.
    pub fn new(cluster: &MeshCluster, expiry: TokenExpiry, now: Timestamp) -> Self {
        let status = cluster.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .condition(type_)
                .map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())
        };
        // Counts mean something only once a sync has run.
        let synced_once = status.last_sync_time.is_some();
        let count = |n: usize| {
            if synced_once {
                n.to_string()
            } else {
                age::NONE.to_owned()
            }
        };
        let token_expiry = match expiry {
            TokenExpiry::Never => "never".to_owned(),
            TokenExpiry::Unknown => "unknown".to_owned(),
            TokenExpiry::At(at) => age::until(at, now),
        };
        Self {
            name: cluster.name_any(),
            cluster_id: cluster.spec.cluster_id.clone(),
            server: cluster.spec.server.clone(),
            reachable: condition(CONDITION_REACHABLE),
            // Nothing syncs it any more: its last Synced would say otherwise.
            synced: if mesh_state::is_being_detached(cluster) {
                DETACHING.to_owned()
            } else {
                condition(CONDITION_SYNCED)
            },
            in_sync: count(status.namespaces_in_sync as usize),
            missing: count(status.missing_count()),
            drifted: count(status.namespaces_drifted as usize),
            last_sync: age::since_rfc3339(status.last_sync_time.as_deref(), now),
            token_expiry,
            age: cluster
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(|| age::NONE.to_owned(), |t| age::since(t.0, now)),
        }
    }
}

impl Tabular for ClusterRow {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["name"];
        if wide {
            h.push("cluster-id");
        }
        h.extend([
            "server",
            "reachable",
            "synced",
            "in-sync",
            "missing",
            "drifted",
            "last-sync",
        ]);
        if wide {
            h.push("token-expiry");
        }
        h.push("age");
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut r = vec![self.name.clone()];
        if wide {
            r.push(self.cluster_id.clone());
        }
        r.extend([
            self.server.clone(),
            self.reachable.clone(),
            self.synced.clone(),
            self.in_sync.clone(),
            self.missing.clone(),
            self.drifted.clone(),
            self.last_sync.clone(),
        ]);
        if wide {
            r.push(self.token_expiry.clone());
        }
        r.push(self.age.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh_state::fixtures::{cluster, condition, with_status};
    use crate::request_timeout::RequestTimeout;
    use mesh_core::cluster::MeshClusterStatus;

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    /// `list` read every stored kubeconfig Secret, whatever it printed.
    #[test]
    fn token_expiries_are_read_only_for_the_format_that_shows_them() {
        let expiring = TokenExpiry::At(Timestamp::from_second(1_900_000_000).unwrap());
        let expiries: Expiries = clusters()
            .iter()
            .map(|c| (c.name_any(), Ok(StoredToken::Held(expiring))))
            .collect();
        for format in [
            OutputFormat::Table,
            OutputFormat::Wide,
            OutputFormat::Json,
            OutputFormat::Yaml,
        ] {
            let with = render(format, &clusters(), &expiries, now()).unwrap();
            let without = render(format, &clusters(), &BTreeMap::new(), now()).unwrap();
            assert_eq!(with != without, shows_token_expiry(format), "{format:?}");
        }
    }

    fn clusters() -> Vec<MeshCluster> {
        vec![
            with_status(
                cluster("east", "https://10.0.0.1:6443", "2026-02-27T09:30:00Z"),
                MeshClusterStatus {
                    conditions: vec![
                        condition(CONDITION_REACHABLE, "True"),
                        condition(CONDITION_SYNCED, "True"),
                    ],
                    last_sync_time: Some("2026-03-01T11:59:48Z".into()),
                    namespaces_in_sync: 42,
                    missing_namespaces: vec!["payments".into()],
                    namespaces_drifted: 2,
                    last_sync_writes: 2,
                    ..Default::default()
                },
            ),
            with_status(
                cluster(
                    "west-long-name",
                    "https://10.0.0.2:6443",
                    "2026-03-01T11:57:00Z",
                ),
                MeshClusterStatus {
                    conditions: vec![
                        condition(CONDITION_REACHABLE, "False"),
                        condition(CONDITION_SYNCED, "Unknown"),
                    ],
                    last_sync_time: Some("2026-03-01T11:58:00Z".into()),
                    last_error: Some("connection refused".into()),
                    ..Default::default()
                },
            ),
            cluster("fresh", "https://10.0.0.3:6443", "2026-03-01T11:59:59Z"),
        ]
    }

    fn expiries() -> Expiries {
        let at = "2026-03-02T11:00:00Z".parse().unwrap();
        BTreeMap::from([
            (
                "east".to_owned(),
                Ok(StoredToken::Held(TokenExpiry::At(at))),
            ),
            (
                "west-long-name".to_owned(),
                Ok(StoredToken::Held(TokenExpiry::Never)),
            ),
        ])
    }

    /// A Secret holding a stored kubeconfig whose token is `token`.
    fn stored_secret(token: &str) -> Secret {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {{server: \"https://10.0.0.1:6443\", certificate-authority-data: \"\"}}\nusers:\n- name: east\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: east\n  context: {{cluster: east, user: east}}\ncurrent-context: east\n"
        );
        Secret {
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_owned(),
                k8s_openapi::ByteString(yaml.into_bytes()),
            )])),
            ..Secret::default()
        }
    }

    /// A deleted MeshCluster held by someone's finalizer shows as detaching, whatever its last
    /// sync recorded.
    #[test]
    fn a_cluster_being_detached_shows_so() {
        let mut leaving = clusters().remove(0);
        let row = |c: &MeshCluster| ClusterRow::new(c, TokenExpiry::Never, now());
        assert_eq!(row(&leaving).synced, "True");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(row(&leaving).synced, DETACHING);
    }

    #[test]
    fn token_lines_say_when_and_what_repairs_an_expired_one() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let expiries = BTreeMap::from([
            (
                "a".to_owned(),
                Ok(StoredToken::Held(TokenExpiry::At(
                    Timestamp::from_second(1_000_000 + 7200).unwrap(),
                ))),
            ),
            (
                "b".to_owned(),
                Ok(StoredToken::Held(TokenExpiry::At(
                    Timestamp::from_second(1_000_000 - 60).unwrap(),
                ))),
            ),
            ("c".to_owned(), Ok(StoredToken::Held(TokenExpiry::Never))),
        ]);
        let lines = token_lines(&expiries, now);
        assert_eq!(
            lines[0],
            (
                false,
                "token of a: expires in 120m (1970-01-12T15:46:40Z)".to_owned()
            )
        );
        assert!(lines[1].0);
        assert!(lines[1].1.contains("expired 60s ago"), "{lines:?}");
        assert!(lines[1].1.contains("`kubectl mesh rotate b`"), "{lines:?}");
        assert_eq!(
            lines[2],
            (false, "token of c: long-lived, never expires".to_owned())
        );
    }

    #[test]
    fn token_expiry_is_read_from_the_stored_token() {
        let expiring = crate::credentials::tests::jwt(serde_json::json!({"exp": 1_800_000_000}));
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            expiry_of(Some(&stored_secret(&expiring))),
            TokenExpiry::At(at)
        );
        let lasting = crate::credentials::tests::jwt(serde_json::json!({"sub": "x"}));
        assert_eq!(
            expiry_of(Some(&stored_secret(&lasting))),
            TokenExpiry::Never
        );
        assert_eq!(
            expiry_of(Some(&stored_secret("not-a-jwt"))),
            TokenExpiry::Unknown
        );
        assert_eq!(expiry_of(None), TokenExpiry::Unknown);
    }

    /// A primary answering each Secret read after `delay`, the n-th cluster's Secret missing
    /// when n is odd, its client's requests under `timeout`; the most reads it held at once.
    fn slow_secrets(
        delay: std::time::Duration,
        timeout: RequestTimeout,
    ) -> (Client, std::sync::Arc<std::sync::Mutex<(usize, usize)>>) {
        use mesh_core::fake_apiserver::{json_response, status};
        let lasting = crate::credentials::tests::jwt(serde_json::json!({"sub": "x"}));
        let in_flight = std::sync::Arc::new(std::sync::Mutex::new((0_usize, 0_usize)));
        let seen = in_flight.clone();
        let server = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (seen, lasting) = (seen.clone(), lasting.clone());
            async move {
                {
                    let mut held = seen.lock().expect("lock");
                    held.0 += 1;
                    held.1 = held.1.max(held.0);
                }
                tokio::time::sleep(delay).await;
                seen.lock().expect("lock").0 -= 1;
                let name = request.uri().path().rsplit('/').next().unwrap_or_default();
                let n: usize = name.trim_start_matches("cluster-c").parse().unwrap_or(1);
                let answer = if n % 2 == 1 {
                    let (code, body) = status(http::StatusCode::NOT_FOUND, "NotFound", "gone");
                    json_response(code, &body)
                } else {
                    let mut secret = stored_secret(&lasting);
                    secret.metadata.name = Some(name.to_owned());
                    let body = serde_json::to_value(&secret).expect("json");
                    json_response(http::StatusCode::OK, &body)
                };
                Ok::<_, std::convert::Infallible>(answer)
            }
        });
        let target = crate::access::Target {
            label: "the primary".into(),
            server: "https://10.0.0.1:6443".into(),
            where_configured: "its server".into(),
        };
        let server = tower::Layer::layer(&crate::request_timeout::layer(&target, timeout), server);
        (Client::new(server, "default"), in_flight)
    }

    fn many_clusters(count: usize) -> Vec<MeshCluster> {
        (0..count)
            .map(|n| {
                cluster(
                    &format!("c{n:02}"),
                    "https://10.0.0.1:6443",
                    "2026-03-01T00:00:00Z",
                )
            })
            .collect()
    }

    /// A Secret the caller may not read is said so, not shown as a token of unknown expiry.
    #[tokio::test]
    async fn a_secret_not_read_is_not_an_unknown_expiry() {
        let primary = mesh_core::fake_apiserver::FakeApiserver::default();
        primary.state().forbidden = true;
        let clusters = many_clusters(1);
        let expiries = token_expiries(&primary.client(), &clusters)
            .await
            .expect("answered");
        let why = expiries["c00"].clone().expect_err("refused");
        assert!(
            why.starts_with("cannot read Secret kubectl-mesh/cluster-c00"),
            "{why}"
        );
        let lines = token_lines(&expiries, now());
        assert_eq!(lines, [(true, format!("token of c00: not read ({why})"))]);
        let table = render(OutputFormat::Wide, &clusters, &expiries, now()).unwrap();
        assert!(table.contains("unreadable"), "{table}");
    }

    /// A stored kubeconfig Secret that is gone was shown as a token of unknown expiry
    /// (`unknown`, "expiry unknown"), where nothing can reach the cluster until attach stores
    /// it again; of a cluster being detached, it is what detach does.
    #[tokio::test]
    async fn a_missing_secret_is_not_an_unknown_expiry() {
        let primary = mesh_core::fake_apiserver::FakeApiserver::default();
        let mut clusters = many_clusters(2);
        clusters[1].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let expiries = token_expiries(&primary.client(), &clusters)
            .await
            .expect("answered");
        assert_eq!(
            expiries["c00"],
            Ok(StoredToken::Missing {
                secret: "cluster-c00".into(),
                detaching: false
            })
        );
        assert_eq!(
            token_lines(&expiries, now()),
            [
                (
                    true,
                    "token of c00: Secret kubectl-mesh/cluster-c00 not found; re-run `kubectl \
                     mesh attach` for c00 to store fresh credentials"
                        .to_owned()
                ),
                (
                    false,
                    "token of c01: Secret kubectl-mesh/cluster-c01 not found (c01 is being \
                     detached)"
                        .to_owned()
                ),
            ]
        );
        let table = render(OutputFormat::Wide, &clusters, &expiries, now()).unwrap();
        let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert!(cells.contains(&MISSING), "{table}");
        assert!(!table.contains("unknown"), "{table}");
    }

    /// A primary too slow for `--request-timeout` is said so, not shown as unknown expiries.
    #[tokio::test(start_paused = true)]
    async fn token_expiries_of_a_primary_too_slow_are_an_error() {
        let timeout = RequestTimeout(Some(std::time::Duration::from_millis(500)));
        let (client, _) = slow_secrets(std::time::Duration::from_secs(1), timeout);
        let error = token_expiries(&client, &many_clusters(3))
            .await
            .expect_err("late");
        assert!(
            error
                .line()
                .starts_with("cannot read Secret kubectl-mesh/cluster-c0")
                && error
                    .line()
                    .contains("the primary at https://10.0.0.1:6443 did not answer within 0.5s"),
            "{}",
            error.line()
        );
    }

    /// The Secrets are read a few at once, not one after another nor all together, and every
    /// cluster gets its expiry under its own name, whatever order the answers came in.
    #[tokio::test(start_paused = true)]
    async fn token_expiries_are_read_a_few_at_once() {
        let delay = std::time::Duration::from_secs(1);
        let (client, in_flight) = slow_secrets(delay, RequestTimeout(None));
        let clusters = many_clusters(20);
        let started = tokio::time::Instant::now();
        let expiries = token_expiries(&client, &clusters).await.expect("read");
        let took = started.elapsed();
        let names: Vec<&str> = expiries.keys().map(String::as_str).collect();
        let expected: Vec<String> = (0..20).map(|n| format!("c{n:02}")).collect();
        assert_eq!(
            names,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        for (n, name) in expected.iter().enumerate() {
            let want = if n % 2 == 1 {
                StoredToken::Missing {
                    secret: format!("cluster-{name}"),
                    detaching: false,
                }
            } else {
                StoredToken::Held(TokenExpiry::Never)
            };
            assert_eq!(expiries[name], Ok(want), "{name}");
        }
        assert_eq!(
            in_flight.lock().expect("lock").1,
            SECRET_READS,
            "reads at once"
        );
        // 20 reads, 8 at once: three rounds of one delay each, not twenty.
        assert!(took < delay * 4, "{took:?}");
    }

    #[test]
    fn missing_counts_namespaces_past_the_listed_ones() {
        let capped = |listed: usize, counted: u32| {
            with_status(
                cluster("east", "https://10.0.0.1:6443", "2026-02-27T09:30:00Z"),
                MeshClusterStatus {
                    last_sync_time: Some("2026-03-01T11:59:48Z".into()),
                    missing_namespaces: (0..listed).map(|i| format!("ns-{i}")).collect(),
                    namespaces_missing: counted,
                    ..Default::default()
                },
            )
        };
        let row = |c: &MeshCluster| ClusterRow::new(c, TokenExpiry::Never, now()).missing;
        assert_eq!(row(&capped(100, 25_000)), "25000");
        // Written before namespacesMissing existed: the list is whole.
        assert_eq!(row(&capped(3, 0)), "3");
    }

    #[test]
    fn table_snapshot() {
        let text = render(OutputFormat::Table, &clusters(), &expiries(), now()).unwrap();
        insta::assert_snapshot!("list_table", text);
    }

    #[test]
    fn wide_snapshot() {
        let text = render(OutputFormat::Wide, &clusters(), &expiries(), now()).unwrap();
        insta::assert_snapshot!("list_wide", text);
    }

    #[test]
    fn json_and_yaml_are_the_resources() {
        let text = render(OutputFormat::Json, &clusters(), &expiries(), now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["kind"], "MeshCluster");
        assert_eq!(v["items"][0]["apiVersion"], "kubectl-mesh.io/v1alpha1");
        assert_eq!(v["items"][0]["status"]["namespacesInSync"], 42);
        assert_eq!(v["items"][1]["spec"]["server"], "https://10.0.0.2:6443");

        // One cluster is a List of one, in either format.
        let one = render(OutputFormat::Json, &clusters()[..1], &expiries(), now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["items"].as_array().map(Vec::len)),
            (Some("List"), Some(1))
        );
        let yaml = render(OutputFormat::Yaml, &clusters()[..1], &expiries(), now()).unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["kind"], "List", "{yaml}");
        assert_eq!(v["items"][0]["kind"], "MeshCluster", "{yaml}");
        assert!(yaml.contains("clusterId: east-"), "{yaml}");
    }

    #[test]
    fn empty_json_and_yaml_are_empty_lists() {
        let v: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &[], &expiries(), now()).unwrap())
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": []})
        );
        let yaml = render(OutputFormat::Yaml, &[], &expiries(), now()).unwrap();
        assert_eq!(yaml, "apiVersion: v1\nitems: []\nkind: List\n");
    }
}
