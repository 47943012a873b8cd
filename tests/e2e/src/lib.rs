//! Helpers shared by the integration tests in `tests/`: one environment per test binary,
//! waiting on conditions with deadlines; HTTPS servers and clients are in [`https`].
#![forbid(unsafe_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_testenv::{Options, TestEnv};
use tokio::sync::OnceCell;

pub mod browser;
pub mod callers;
pub mod check_report;
pub mod fixtures;
pub mod forged;
pub mod https;
pub mod in_cluster;
pub mod istio_mesh;
pub mod signals;
pub mod tokens;

pub use https::{Caller, HttpsServer, TestCertificate, https_get, webhook_tls_client};
pub use mesh_testenv;

/// The environment shared by every test of one test binary: starting control planes per test
/// would cost seconds each. Tests isolate themselves by namespace names ([`unique_name`]).
/// The environment's watchdog stops the processes when the test binary exits.
pub async fn shared_env(remotes: usize) -> &'static TestEnv {
    static ENV: OnceCell<TestEnv> = OnceCell::const_new();
    let options = Options {
        remotes,
        ..Options::default()
    };
    shared(&ENV, "the test environment", TestEnv::start(options)).await
}

/// What `cell` holds for the whole test binary, made by `start` when a test first needs it. A
/// start that fails fails each test that needs it, with the cause.
pub async fn shared<T>(
    cell: &'static OnceCell<T>,
    what: &str,
    start: impl Future<Output = anyhow::Result<T>>,
) -> &'static T {
    cell.get_or_init(|| async {
        start
            .await
            .unwrap_or_else(|error| panic!("starting {what}: {error:#}"))
    })
    .await
}

/// The shared environment with the mesh installed, `mesh-webhook` running as a local process
/// and every remote attached (the same setup as the demo).
pub async fn shared_mesh(remotes: usize) -> (&'static TestEnv, &'static mesh_testenv::mesh::Mesh) {
    static MESH: OnceCell<mesh_testenv::mesh::Mesh> = OnceCell::const_new();
    let env = shared_env(remotes).await;
    let start = async {
        let options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
        mesh_testenv::mesh::Mesh::start(env, options).await
    };
    (env, shared(&MESH, "the mesh", start).await)
}

/// A mesh of its own, for a test that stops processes or needs other webhook settings: a
/// primary and `remotes` remotes, all attached, with `mesh-webhook` resyncing every
/// `resync_period` (the shared mesh's period when `None`).
pub async fn own_mesh(
    remotes: usize,
    resync_period: Option<Duration>,
) -> anyhow::Result<(TestEnv, mesh_testenv::mesh::Mesh)> {
    let mut options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
    if let Some(period) = resync_period {
        options.resync_period = period;
    }
    own_mesh_with(remotes, options).await
}

/// [`own_mesh`] with every mesh option chosen by the test (a custom rule, webhook flags).
pub async fn own_mesh_with(
    remotes: usize,
    options: mesh_testenv::mesh::MeshOptions,
) -> anyhow::Result<(TestEnv, mesh_testenv::mesh::Mesh)> {
    let env = TestEnv::start(Options::with_remotes(remotes)).await?;
    let mesh = mesh_testenv::mesh::Mesh::start(&env, options).await?;
    Ok((env, mesh))
}

/// What [`one_remote_mesh`] starts: the environment (bound for the whole test, as `_env` if
/// unused: dropping it stops every process), the mesh, its remote (`env.remotes()[0]`) and
/// the namespace's name.
pub type OneRemote = (
    TestEnv,
    mesh_testenv::mesh::Mesh,
    mesh_testenv::Cluster,
    String,
);

/// How most tests of a mesh of their own open: [`own_mesh`] with one remote, and a namespace
/// named after `prefix` on every cluster.
pub async fn one_remote_mesh(
    resync_period: Option<Duration>,
    prefix: &str,
) -> anyhow::Result<OneRemote> {
    let (env, mesh) = own_mesh(1, resync_period).await?;
    with_namespace(env, mesh, prefix).await
}

/// [`one_remote_mesh`] with every mesh option chosen by the test.
pub async fn one_remote_mesh_with(
    options: mesh_testenv::mesh::MeshOptions,
    prefix: &str,
) -> anyhow::Result<OneRemote> {
    let (env, mesh) = own_mesh_with(1, options).await?;
    with_namespace(env, mesh, prefix).await
}

async fn with_namespace(
    env: TestEnv,
    mesh: mesh_testenv::mesh::Mesh,
    prefix: &str,
) -> anyhow::Result<OneRemote> {
    let ns = create_everywhere(&env, prefix).await?;
    let remote = env.remotes()[0].clone();
    Ok((env, mesh, remote, ns))
}

/// A resync period no test outlives: in a mesh started with it, only the webhook (and the
/// reconciler's reaction to events) can make a remote change, never the periodic full sync.
pub const NO_RESYNC: Duration = Duration::from_secs(3600);

/// `kubectl apply -f -` of `yaml` on `cluster`.
pub async fn kubectl_apply(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    yaml: &str,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::from(env.kubectl(cluster));
    cmd.args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("piped stdin")?;
    stdin.write_all(yaml.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "kubectl apply: {}", describe(&out));
    Ok(())
}

/// `kubectl <args>` on `cluster`, which must succeed; returns its stdout.
pub async fn kubectl(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    args: &[&str],
) -> anyhow::Result<String> {
    Ok(String::from_utf8(
        kubectl_output(env, cluster, args).await?.stdout,
    )?)
}

/// `kubectl <args>` on `cluster`, which must succeed; returns its output, for the warnings
/// kubectl prints on stderr.
pub async fn kubectl_output(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut cmd = env.kubectl(cluster);
    cmd.args(args);
    run(cmd).await
}

/// `kubectl label namespace <ns> --overwrite <args>` on the primary; returns kubectl's stderr,
/// where the webhook's warnings say where the change landed.
pub async fn label_on_primary(env: &TestEnv, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let cmd = label_command(env, env.primary(), ns, args);
    Ok(String::from_utf8(run(cmd).await?.stderr)?)
}

/// `kubectl label namespace NS --overwrite LABELS...` on `cluster`.
fn label_command(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    ns: &str,
    labels: &[&str],
) -> std::process::Command {
    let mut cmd = env.kubectl(cluster);
    cmd.args(["label", "namespace", ns, "--overwrite"])
        .args(labels);
    cmd
}

/// A DNS-1123 name unique within this test run.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` until it yields `Some`, failing after `timeout` with the last state seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(error) => bail!("{what}: not true within {timeout:?}; last error: {error:#}"),
                None => bail!("{what}: not true within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub use mesh_testenv::mesh::run;

/// How long a test waits for what should happen soon, where it has no bound of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Sum of the samples of `metric` a webhook replica serves on `/metrics` (e.g.
/// `admission_reviews_total`: every review it answered, whatever the outcome).
pub async fn metric_sum(addr: &str, ca_pem: &str, metric: &str) -> anyhow::Result<f64> {
    let metrics = https_get(addr, ca_pem, "/metrics").await?;
    Ok(metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Asserts kubectl's warnings say the change reached every remote of `env`: pushed by the
/// webhook ("<change> on remote-1, ..."), or found already there because the reconciler, which
/// sees the push as soon as it starts, got to a remote first (the README's known limits).
pub fn assert_landed(env: &TestEnv, warnings: &str, change: &str) {
    for remote in env.remotes() {
        let name = remote.name.as_str();
        assert!(
            warnings.lines().any(|line| line.contains("kubectl-mesh: ")
                && line.contains(name)
                && (line.contains(change) || line.contains("already in sync"))),
            "{name} not reported as landed; kubectl printed: {warnings}"
        );
    }
    assert!(
        !warnings.contains("retry"),
        "a remote missed the change; kubectl printed: {warnings}"
    );
}

/// Every admission review the replica whose metrics port is `addr` answered, whatever the
/// outcome.
pub async fn reviews_answered(addr: &str, ca_pem: &str) -> anyhow::Result<f64> {
    metric_sum(addr, ca_pem, "admission_reviews_total").await
}

/// `pushes_total` by result, summed over every cluster, of the replica whose metrics port is
/// `addr`.
pub async fn pushes_by_result(
    addr: &str,
    ca_pem: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let metrics = https_get(addr, ca_pem, "/metrics").await?;
    let mut out = std::collections::BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("pushes_total{")) {
        let result = line
            .split("result=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        *out.entry(result.to_owned()).or_default() += count;
    }
    Ok(out)
}

/// Points the primary's webhook configuration at the replica listening on `listen`. The
/// apiserver picks the new URL up asynchronously, so callers relabel until it has served.
pub async fn route_admission_to(env: &TestEnv, listen: &str) -> anyhow::Result<()> {
    let mut route = env.kubectl(env.primary());
    route.args([
        "patch",
        "mutatingwebhookconfiguration",
        kubectl_mesh::render::WEBHOOK_CONFIGURATION,
        "--type=json",
        "-p",
        &serde_json::json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url",
                 "value": format!("https://{listen}/mutate")}])
        .to_string(),
    ]);
    run(route).await?;
    Ok(())
}

/// Full syncs the replica serving metrics on `addr` has finished (`syncs_total`).
pub async fn syncs(addr: &str, ca_pem: &str) -> anyhow::Result<f64> {
    metric_sum(addr, ca_pem, "syncs_total").await
}

/// Full syncs the mesh's webhook has finished (`syncs_total`).
pub async fn mesh_syncs(mesh: &mesh_testenv::mesh::Mesh) -> anyhow::Result<f64> {
    syncs(mesh.metrics_address(), &mesh.ca_pem()?).await
}

/// Waits until the mesh's webhook has finished `n` more full syncs than `from` (a count of
/// [`mesh_syncs`]).
pub async fn more_syncs_than(
    mesh: &mesh_testenv::mesh::Mesh,
    from: f64,
    n: f64,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(what, timeout, || async {
        Ok((mesh_syncs(mesh).await? >= from + n).then_some(()))
    })
    .await
}

/// The identity of the webhook replica holding the reconciler's Lease on the primary.
pub async fn lease_holder(primary: &kube::Client) -> anyhow::Result<Option<String>> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(primary.clone(), mesh_core::MESH_NAMESPACE);
    Ok(leases
        .get_opt("mesh-webhook")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// The condition of type `kind` (e.g. [`mesh_core::cluster::CONDITION_REACHABLE`]) in the
/// status of MeshCluster `cluster`, if it has one.
pub async fn cluster_condition(
    env: &TestEnv,
    cluster: &str,
    kind: &str,
) -> anyhow::Result<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>> {
    let api: kube::Api<mesh_core::cluster::MeshCluster> =
        kube::Api::all(env.primary().client().await?);
    Ok(api
        .get(cluster)
        .await?
        .status
        .and_then(|s| s.condition(kind).cloned()))
}

/// Waits until the primary holds an Event of `reason` about the object named `regarding` (a
/// namespace, a MeshCluster); returns it.
pub async fn event_about(
    env: &TestEnv,
    reason: &str,
    regarding: &str,
    timeout: Duration,
) -> anyhow::Result<k8s_openapi::api::events::v1::Event> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::all(env.primary().client().await?);
    eventually(
        &format!("a {reason} Event about {regarding}"),
        timeout,
        || async {
            let found = events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                });
            Ok(found)
        },
    )
    .await
}

/// A merge patch of MeshCluster `cluster` on the primary, as `kubectl patch --type merge` would
/// send it (an edit by hand, around the plugin's checks).
pub async fn patch_mesh_cluster(
    env: &TestEnv,
    cluster: &str,
    patch: &serde_json::Value,
) -> anyhow::Result<()> {
    let api: kube::Api<mesh_core::cluster::MeshCluster> =
        kube::Api::all(env.primary().client().await?);
    let params = kube::api::PatchParams::default();
    api.patch(cluster, &params, &kube::api::Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Waits until MeshCluster `cluster`'s `Reachable` condition is True; returns it.
pub async fn reachable(
    env: &TestEnv,
    cluster: &str,
) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    reachable_is(env, cluster, "True", None).await
}

/// Waits until MeshCluster `cluster`'s `Reachable` condition is False for `reason` (e.g.
/// `CredentialsMismatch`); returns it.
pub async fn unreachable_for(
    env: &TestEnv,
    cluster: &str,
    reason: &str,
) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    reachable_is(env, cluster, "False", Some(reason)).await
}

/// Waits until `cluster`'s `Reachable` condition has `status` (and `reason`, if given).
async fn reachable_is(
    env: &TestEnv,
    cluster: &str,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let what = format!(
        "{cluster} Reachable={status} {}",
        reason.unwrap_or_default()
    );
    eventually(what.trim_end(), DEFAULT_TIMEOUT, || async {
        let reachable =
            cluster_condition(env, cluster, mesh_core::cluster::CONDITION_REACHABLE).await?;
        Ok(reachable.filter(|c| c.status == status && reason.is_none_or(|r| c.reason == r)))
    })
    .await
}

/// Label keys kubectl-mesh manages (the default rule).
pub const MANAGED_LABELS: [&str; 3] = mesh_core::labels::DEFAULT_MANAGED_LABELS;

/// All namespaces of a cluster, through its admin credentials.
pub async fn namespaces(
    cluster: &mesh_testenv::Cluster,
) -> anyhow::Result<kube::Api<k8s_openapi::api::core::v1::Namespace>> {
    Ok(kube::Api::all(cluster.client().await?))
}

/// Creates namespace `name` on `cluster`.
pub async fn create_namespace(cluster: &mesh_testenv::Cluster, name: &str) -> anyhow::Result<()> {
    create_labelled_namespace(cluster, name, &[]).await
}

/// Creates namespace `name` on `cluster` carrying the labels `pairs`, with its admin
/// credentials: a namespace as it stood before the test's first step.
pub async fn create_labelled_namespace(
    cluster: &mesh_testenv::Cluster,
    name: &str,
    pairs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    ns.metadata.labels = Some(labels(pairs));
    namespaces(cluster)
        .await?
        .create(&Default::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name} on {}", cluster.name))?;
    Ok(())
}

/// Creates a namespace with a fresh name on every cluster of `env`; returns the name.
pub async fn create_everywhere(env: &TestEnv, prefix: &str) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    for cluster in env.clusters() {
        create_namespace(cluster, &name).await?;
    }
    Ok(name)
}

/// The managed labels of a namespace (None when the namespace does not exist there).
pub async fn managed_labels(
    cluster: &mesh_testenv::Cluster,
    name: &str,
) -> anyhow::Result<Option<std::collections::BTreeMap<String, String>>> {
    Ok(stored_labels(cluster, name).await?.map(|labels| {
        labels
            .into_iter()
            .filter(|(k, _)| MANAGED_LABELS.contains(&k.as_str()))
            .collect()
    }))
}

/// Every label namespace `name` carries on `cluster` (None when it does not exist there).
async fn stored_labels(
    cluster: &mesh_testenv::Cluster,
    name: &str,
) -> anyhow::Result<Option<std::collections::BTreeMap<String, String>>> {
    let ns = namespaces(cluster).await?.get_opt(name).await?;
    Ok(ns.map(|ns| ns.metadata.labels.unwrap_or_default()))
}

/// Asserts that namespace `ns` carries exactly the managed labels `expected` on every remote,
/// read at once: the webhook pushes before it answers, so a change is there when kubectl
/// returns. `context` (what was done, what kubectl said) goes into the failure message.
pub async fn assert_remotes(
    env: &TestEnv,
    ns: &str,
    expected: &std::collections::BTreeMap<String, String>,
    context: &str,
) -> anyhow::Result<()> {
    for remote in env.remotes() {
        assert_eq!(
            managed_labels(remote, ns).await?.as_ref(),
            Some(expected),
            "managed labels of {ns} on {} right after kubectl returned, {context}",
            remote.name
        );
    }
    Ok(())
}

/// Waits until namespace `ns` on `cluster` carries exactly the managed labels `expected`.
pub async fn carries(
    cluster: &mesh_testenv::Cluster,
    ns: &str,
    expected: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(
        &format!("{ns} on {} carries {expected:?}", cluster.name),
        timeout,
        || async {
            Ok((managed_labels(cluster, ns).await?.as_ref() == Some(expected)).then_some(()))
        },
    )
    .await
}

/// Merges `labels` (a JSON object; `null` removes a key) into the labels of namespace `ns` on
/// `cluster` with its admin credentials, as a hand edit there would.
pub async fn edit_labels(
    cluster: &mesh_testenv::Cluster,
    ns: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    patch_labels(cluster.client().await?, ns, labels).await?;
    Ok(())
}

/// Merges `labels` (a JSON object; `null` removes a key) into the labels of namespace `ns`
/// through `client`, whichever identity it holds; the apiserver's answer, refusals included.
pub async fn patch_labels(
    client: kube::Client,
    ns: &str,
    labels: serde_json::Value,
) -> kube::Result<k8s_openapi::api::core::v1::Namespace> {
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .patch(
            ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
}

/// `kubectl label namespace <ns> <labels> --overwrite` on `cluster`, whatever its result.
pub async fn label_namespace(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    ns: &str,
    labels: &[&str],
) -> anyhow::Result<std::process::Output> {
    fixtures::output(label_command(env, cluster, ns, labels)).await
}

/// Labels namespace `ns` on `cluster` with kubectl until `outcome` of kubectl's answer is
/// `Some`, with new values every attempt (`labels` of the attempt's number, from 1) so that
/// each one is an edit: the apiserver loads admission webhooks and policies asynchronously,
/// and the first edits may pass before they are in force.
pub async fn relabel_until<T, Fut>(
    env: &TestEnv,
    cluster: &mesh_testenv::Cluster,
    ns: &str,
    what: &str,
    labels: impl Fn(u32) -> Vec<String>,
    outcome: impl Fn(std::process::Output) -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let mut attempt = 0;
    eventually(what, DEFAULT_TIMEOUT, || {
        attempt += 1;
        let labels = labels(attempt);
        let outcome = &outcome;
        async move {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            outcome(label_namespace(env, cluster, ns, &labels).await?).await
        }
    })
    .await
}

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The managed labels `istio-injection=enabled` leaves.
pub fn injection_enabled() -> std::collections::BTreeMap<String, String> {
    labels(&[("istio-injection", "enabled")])
}

/// A command's output as text, lossy.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `line` is one of the lines of `text`, whole: a line of a command's report.
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Fails unless `found` holds each of `expected`, whole, naming every one it lacks (not only
/// the first) beside what it holds.
pub fn holds_all<T: AsRef<str>>(
    what: &str,
    found: impl IntoIterator<Item = T>,
    expected: &[&str],
) -> anyhow::Result<()> {
    let found: Vec<String> = found.into_iter().map(|f| f.as_ref().to_owned()).collect();
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|e| !found.iter().any(|f| f == e))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{what} lacks {missing:?}; it holds {found:#?}"
    );
    Ok(())
}

/// Fails unless none of `found` contains `fragment`, naming those that do.
pub fn none_mentions<T: AsRef<str>>(
    what: &str,
    found: impl IntoIterator<Item = T>,
    fragment: &str,
) -> anyhow::Result<()> {
    let mentioning: Vec<String> = found
        .into_iter()
        .filter(|f| f.as_ref().contains(fragment))
        .map(|f| f.as_ref().to_owned())
        .collect();
    anyhow::ensure!(
        mentioning.is_empty(),
        "{what} mentions {fragment:?}: {mentioning:#?}"
    );
    Ok(())
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Asserts that a command succeeded, failing the calling test with its exit status, stdout and
/// stderr ([`describe`]) when it did not.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "the command failed: {}",
        describe(out)
    );
}

/// The admission reviews the mesh's webhook has answered, per outcome (`pushed`, `no_push`,
/// ...), from `admission_reviews_total` on its `/metrics`: a request the apiserver did not
/// send (matchConditions) counts nowhere.
pub async fn admission_reviews(
    mesh: &mesh_testenv::mesh::Mesh,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let metrics = https_get(mesh.metrics_address(), &mesh.ca_pem()?, "/metrics").await?;
    let mut reviews = std::collections::BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("admission_reviews_total{outcome=\"") else {
            continue;
        };
        let (outcome, count) = rest
            .split_once("\"} ")
            .with_context(|| format!("unexpected metric line {line:?}"))?;
        let count: f64 = count
            .parse()
            .with_context(|| format!("unexpected metric line {line:?}"))?;
        reviews.insert(outcome.to_owned(), count);
    }
    Ok(reviews)
}

/// Reviews answered with `outcome`, and in all (see [`admission_reviews`]).
pub async fn reviews_with_outcome(
    mesh: &mesh_testenv::mesh::Mesh,
    outcome: &str,
) -> anyhow::Result<(f64, f64)> {
    let reviews = admission_reviews(mesh).await?;
    Ok((
        reviews.get(outcome).copied().unwrap_or_default(),
        reviews.values().sum(),
    ))
}

/// `remote-1, remote-2`, as the webhook's warnings list the remotes.
pub fn remote_names(env: &TestEnv) -> String {
    env.remotes()
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every label of a namespace but the apiserver's own `kubernetes.io/metadata.name` (None
/// when the namespace does not exist there): what a custom rule manages or leaves alone.
pub async fn namespace_labels(
    cluster: &mesh_testenv::Cluster,
    name: &str,
) -> anyhow::Result<Option<std::collections::BTreeMap<String, String>>> {
    Ok(stored_labels(cluster, name).await?.map(|mut labels| {
        labels.remove("kubernetes.io/metadata.name");
        labels
    }))
}

/// A client from the kubeconfig attach stored on the primary for cluster `name`, read from its
/// Secret as the webhook reads it; and that kubeconfig.
pub async fn stored_client(
    env: &TestEnv,
    name: &str,
) -> anyhow::Result<(kube::Client, kube::config::Kubeconfig)> {
    stored_client_on(env.primary(), name).await
}

/// [`stored_client`] from the Secret on `primary`.
pub async fn stored_client_on(
    primary: &mesh_testenv::Cluster,
    name: &str,
) -> anyhow::Result<(kube::Client, kube::config::Kubeconfig)> {
    let secret = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        primary.client().await?,
        mesh_core::MESH_NAMESPACE,
    )
    .get(&format!("cluster-{name}"))
    .await?;
    client_from_secret(&secret, "kubeconfig").await
}

/// A client from the kubeconfig under `key` of a Secret attach stored (`kubeconfig` in the
/// sync's and the view's, the cluster's name in Istio's remote secret), and that kubeconfig.
pub async fn client_from_secret(
    secret: &k8s_openapi::api::core::v1::Secret,
    key: &str,
) -> anyhow::Result<(kube::Client, kube::config::Kubeconfig)> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("no {key} key in Secret {:?}", secret.metadata.name))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&data.0)?)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &Default::default()).await?;
    Ok((kube::Client::try_from(config)?, kubeconfig))
}

/// The MutatingWebhookConfiguration `kubectl mesh install` left on the primary, and its one
/// webhook.
pub async fn installed_webhook(
    env: &TestEnv,
) -> anyhow::Result<(
    k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    k8s_openapi::api::admissionregistration::v1::MutatingWebhook,
)> {
    let configuration = kube::Api::<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    >::all(env.primary().client().await?)
    .get(kubectl_mesh::render::WEBHOOK_CONFIGURATION)
    .await?;
    let webhook = configuration
        .webhooks
        .iter()
        .flatten()
        .next()
        .cloned()
        .context("the webhook configuration has no webhook")?;
    Ok((configuration, webhook))
}
