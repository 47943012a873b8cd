//! A real Istio control plane for the environment: istiod (`pilot-discovery`) runs out of
//! cluster against the primary, as a process of the environment, and every remote's
//! sidecar-injector webhook calls it. Built once per machine from the Go module proxy, like the
//! control planes, at a pinned version of Istio.
//!
//! What is applied comes from Istio's own charts, rendered by the pinned `istioctl manifest
//! generate`: on the primary its CustomResourceDefinitions and the ConfigMaps istiod reads
//! (mesh config, injection templates and values); on each remote the injector's
//! MutatingWebhookConfiguration with its client config pointed at the local istiod
//! (`/inject/cluster/<remote>/net/<network>`, so injected pods carry the remote's cluster ID) and,
//! unless told otherwise, the reader ClusterRole Istio's remote profile installs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::Build;
use crate::ports::{free_address, free_port};
use crate::{Cluster, TestEnv};

/// The pinned `istio.io/istio` module: Istio master, VERSION 1.31 (it publishes no tags).
pub const ISTIO_MODULE_VERSION: &str = "v0.0.0-20260827124520-eed52ebb66ad";
/// The version string stamped into the binaries.
pub const ISTIO_VERSION: &str = "1.31-dev";
/// istiod's namespace on the primary; where it looks for remote secrets.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The one network of the environment.
pub const NETWORK: &str = "network1";
/// The cluster ID istiod runs with: the primary's name in the environment.
pub const PRIMARY_CLUSTER_ID: &str = "primary";
/// The revision the first istiod serves.
pub const DEFAULT_REVISION: &str = "default";
/// Name Istio's remote profile gives the reader ClusterRole (suffixed by its namespace).
pub const READER_CLUSTER_ROLE: &str = "istio-reader-clusterrole-istio-system";

const BUILD_SCRIPT: &str = include_str!("../scripts/build-istio.sh");
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The cached `pilot-discovery` and `istioctl`.
#[derive(Clone, Debug)]
pub struct IstioBinaries {
    pub dir: PathBuf,
}

impl IstioBinaries {
    /// Returns the cached binaries (under [`Binaries::cache_root`], keyed by the pinned module
    /// version), building them first when missing (5-10 minutes on 2 cores, once per machine).
    ///
    /// [`Binaries::cache_root`]: crate::Binaries::cache_root
    pub fn ensure() -> anyhow::Result<Self> {
        let dir = Build {
            script: BUILD_SCRIPT,
            args: &[ISTIO_MODULE_VERSION, ISTIO_VERSION],
            outputs: &["pilot-discovery", "istioctl"],
            what: &format!("Istio {ISTIO_VERSION} (pilot-discovery, istioctl; 5-10 min)"),
        }
        .cached(&format!("istio-{ISTIO_MODULE_VERSION}"))?;
        Ok(Self { dir })
    }

    pub fn pilot_discovery(&self) -> PathBuf {
        self.dir.join("pilot-discovery")
    }

    pub fn istioctl(&self) -> PathBuf {
        self.dir.join("istioctl")
    }

    /// `istioctl manifest generate` with `--set` of each of `sets`: the documents of Istio's
    /// charts as JSON values.
    pub fn render(&self, sets: &[String]) -> anyhow::Result<Vec<Value>> {
        let mut cmd = Command::new(self.istioctl());
        cmd.args(["manifest", "generate"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let output = cmd.output().context("running istioctl")?;
        if !output.status.success() {
            bail!(
                "istioctl manifest generate failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = String::from_utf8(output.stdout).context("istioctl printed non-UTF-8")?;
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .context("parsing the output of istioctl manifest generate")?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        Ok(docs)
    }

    /// The reader ClusterRole ([`READER_CLUSTER_ROLE`]) Istio's charts render at this version
    /// with profile `profile` (`default`: what `istioctl create-remote-secret` binds on a
    /// multi-primary remote; `remote`: what the remote profile installs, with the writes of an
    /// external control plane).
    pub fn reader_cluster_role(&self, profile: &str) -> anyhow::Result<Value> {
        let mut sets = common_sets();
        sets.push(format!("profile={profile}"));
        let docs = self.render(&sets)?;
        docs.into_iter()
            .find(|d| kind_of(d) == "ClusterRole" && name_of(d) == READER_CLUSTER_ROLE)
            .with_context(|| {
                format!(
                    "istioctl's {profile} profile rendered no ClusterRole {READER_CLUSTER_ROLE}"
                )
            })
    }
}

/// How istiod runs.
#[derive(Clone, Debug, Default)]
pub struct IstioOptions {
    /// `ENABLE_NATIVE_SIDECARS`: istio-proxy injected as a restartable init container.
    pub native_sidecars: bool,
    /// Remotes left without the reader ClusterRole of Istio's remote profile (the others get
    /// it, as Istio installed there with that profile would).
    pub without_reader_role: Vec<String>,
}

/// One running istiod: the revision it serves and its addresses.
#[derive(Clone, Debug)]
pub struct Istiod {
    pub revision: String,
    /// Plain HTTP: `/ready`, `/debug/*`.
    pub http: String,
    /// TLS, the injection webhook (`/inject`).
    pub https: String,
    /// Prometheus metrics (`/metrics`).
    pub monitoring: String,
    grpc: String,
    secure_grpc: String,
    ctrlz_port: u16,
    native_sidecars: bool,
}

impl Istiod {
    /// Name of its process in the environment (and of its log, `<dir>/<name>.log`).
    pub fn process_name(&self) -> String {
        if self.revision == DEFAULT_REVISION {
            "istiod".to_owned()
        } else {
            format!("istiod-{}", self.revision)
        }
    }
}

/// A cluster as istiod sees it (`/debug/clusterz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSync {
    pub id: String,
    /// `synced`, `syncing`, `timeout`, ...
    pub status: String,
    /// `<namespace>/<name>` of the remote secret it came from (empty for the primary).
    pub secret: String,
}

/// Istio running for an environment. Its processes belong to the [`TestEnv`] and stop with it.
pub struct Istio {
    binaries: IstioBinaries,
    dir: PathBuf,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    ca_cert: PathBuf,
    istiods: Mutex<BTreeMap<String, Istiod>>,
}

impl Istio {
    /// Builds Istio if needed, installs its CRDs and configuration on the primary, starts
    /// istiod for revision `default` and points every remote's injector at it.
    pub async fn start(env: &TestEnv, options: IstioOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let binaries = tokio::task::spawn_blocking(IstioBinaries::ensure).await??;
        let dir = env.dir().join("istio");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, cert_pem, key_pem) = serving_pki()?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let istio = Self {
            ca_cert: write("ca.crt", &ca_pem)?,
            cert: write("istiod.crt", &cert_pem)?,
            key: write("istiod.key", &key_pem)?,
            ca_pem,
            binaries,
            dir,
            istiods: Mutex::default(),
        };
        let role = istio.binaries.reader_cluster_role("remote")?;
        for remote in env.remotes() {
            if !options.without_reader_role.contains(&remote.name) {
                apply(env, remote, std::slice::from_ref(&role), "reader-role").await?;
            }
        }
        istio
            .start_revision_with(env, DEFAULT_REVISION, options.native_sidecars)
            .await?;
        eprintln!("[istio] istiod ready: {:.2?}", started.elapsed());
        Ok(istio)
    }

    /// Starts one more istiod serving `revision` (its own ConfigMaps on the primary, its own
    /// injector on every remote, selecting `istio.io/rev=<revision>`).
    pub async fn start_revision(&self, env: &TestEnv, revision: &str) -> anyhow::Result<Istiod> {
        self.start_revision_with(env, revision, false).await
    }

    /// Restarts the istiod of `revision` as it ran: it reads every remote secret afresh.
    pub async fn restart(&self, env: &TestEnv, revision: &str) -> anyhow::Result<()> {
        self.restart_with(env, self.istiod(revision)?).await
    }

    async fn restart_with(&self, env: &TestEnv, istiod: Istiod) -> anyhow::Result<()> {
        env.stop_process(&istiod.process_name())?;
        self.spawn(env, &istiod)?;
        self.wait_ready(env, &istiod).await?;
        self.lock().insert(istiod.revision.clone(), istiod);
        Ok(())
    }

    /// Stops the istiod of `revision` and deletes its injector from every remote.
    pub async fn stop_revision(&self, env: &TestEnv, revision: &str) -> anyhow::Result<()> {
        let istiod = self.istiod(revision)?;
        env.stop_process(&istiod.process_name())?;
        for remote in env.remotes() {
            let mut delete = env.kubectl(remote);
            delete.args([
                "delete",
                "mutatingwebhookconfiguration",
                &injector_name(revision),
                "--ignore-not-found",
            ]);
            crate::mesh::run(delete).await?;
        }
        self.lock().remove(revision);
        Ok(())
    }

    /// The istiod serving `revision`.
    pub fn istiod(&self, revision: &str) -> anyhow::Result<Istiod> {
        self.lock()
            .get(revision)
            .cloned()
            .with_context(|| format!("no istiod runs for revision {revision}"))
    }

    /// The CA that signed istiod's serving certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The binaries this Istio runs (and `istioctl` to render its charts).
    pub fn binaries(&self) -> &IstioBinaries {
        &self.binaries
    }

    /// The clusters the default istiod knows, from its `/debug/clusterz`.
    pub async fn clusters(&self) -> anyhow::Result<Vec<ClusterSync>> {
        let istiod = self.istiod(DEFAULT_REVISION)?;
        let (status, body) = http_get(&istiod.http, "/debug/clusterz").await?;
        if status != 200 {
            bail!("istiod's /debug/clusterz answered {status}: {body}");
        }
        let entries: Vec<Value> =
            serde_json::from_str(&body).context("parsing istiod's /debug/clusterz")?;
        Ok(entries
            .iter()
            .map(|e| ClusterSync {
                id: text(e, "id"),
                status: text(e, "syncStatus"),
                secret: text(e, "secretName"),
            })
            .collect())
    }

    /// The default istiod's `istiod_remote_cluster_sync_status` samples set to 1: remote
    /// cluster ID → status.
    pub async fn sync_status_metric(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let istiod = self.istiod(DEFAULT_REVISION)?;
        let (status, body) = http_get(&istiod.monitoring, "/metrics").await?;
        if status != 200 {
            bail!("istiod's /metrics answered {status}");
        }
        Ok(parse_sync_status_metric(&body))
    }

    async fn start_revision_with(
        &self,
        env: &TestEnv,
        revision: &str,
        native_sidecars: bool,
    ) -> anyhow::Result<Istiod> {
        let docs = self.binaries.render(&primary_sets(revision))?;
        let primary: Vec<Value> = docs
            .iter()
            .filter(|d| {
                let kind = kind_of(d);
                kind == "CustomResourceDefinition"
                    || (kind == "ConfigMap"
                        && d.pointer("/metadata/namespace").and_then(Value::as_str)
                            == Some(ISTIO_NAMESPACE))
            })
            .cloned()
            .collect();
        let namespace = json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE},
        });
        apply(
            env,
            env.primary(),
            &[namespace],
            &format!("namespace-{revision}"),
        )
        .await?;
        apply(env, env.primary(), &primary, &format!("primary-{revision}")).await?;
        let mut established = env.kubectl(env.primary());
        established.args([
            "wait",
            "--for=condition=Established",
            "customresourcedefinition",
            "--all",
            "--timeout=60s",
        ]);
        crate::mesh::run(established).await?;

        let istiod = Istiod {
            revision: revision.to_owned(),
            http: free_address()?,
            https: free_address()?,
            monitoring: free_address()?,
            grpc: free_address()?,
            secure_grpc: free_address()?,
            ctrlz_port: free_port()?,
            native_sidecars,
        };
        self.spawn(env, &istiod)?;
        self.wait_ready(env, &istiod).await?;
        self.lock().insert(revision.to_owned(), istiod.clone());

        let injector = docs
            .iter()
            .find(|d| kind_of(d) == "MutatingWebhookConfiguration")
            .context("istioctl rendered no injector MutatingWebhookConfiguration")?;
        for remote in env.remotes() {
            let webhook = self.remote_injector(injector, &istiod, remote)?;
            apply(env, remote, &[webhook], &format!("injector-{revision}")).await?;
        }
        Ok(istiod)
    }

    /// Istio's injector configuration for `remote`: the rendered one, every webhook calling
    /// `istiod` by URL with the remote's cluster ID and network in the path.
    fn remote_injector(
        &self,
        rendered: &Value,
        istiod: &Istiod,
        remote: &Cluster,
    ) -> anyhow::Result<Value> {
        let mut webhook = rendered.clone();
        let url = format!(
            "https://{}/inject/cluster/{}/net/{NETWORK}",
            istiod.https, remote.name
        );
        let metadata = json!({
            "name": injector_name(&istiod.revision),
            "labels": rendered.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        });
        webhook["metadata"] = metadata;
        let hooks = webhook
            .get_mut("webhooks")
            .and_then(Value::as_array_mut)
            .context("the rendered injector has no webhooks")?;
        for hook in hooks {
            hook["clientConfig"] = json!({
                "url": url,
                "caBundle": STANDARD.encode(&self.ca_pem),
            });
        }
        Ok(webhook)
    }

    fn spawn(&self, env: &TestEnv, istiod: &Istiod) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.binaries.pilot_discovery());
        cmd.arg("discovery")
            .arg("--kubeconfig")
            .arg(&env.primary().kubeconfig)
            .args(["--clusterID", PRIMARY_CLUSTER_ID])
            .args(["--httpAddr", &istiod.http])
            .args(["--httpsAddr", &istiod.https])
            .args(["--grpcAddr", &istiod.grpc])
            .args(["--secureGRPCAddr", &istiod.secure_grpc])
            .args(["--monitoringAddr", &istiod.monitoring])
            .args(["--ctrlz_port", &istiod.ctrlz_port.to_string()])
            .arg("--tlsCertFile")
            .arg(&self.cert)
            .arg("--tlsKeyFile")
            .arg(&self.key)
            .arg("--caCertFile")
            .arg(&self.ca_cert)
            .env("POD_NAMESPACE", ISTIO_NAMESPACE)
            .env("POD_NAME", istiod.process_name())
            .env("REVISION", &istiod.revision)
            .env("CLUSTER_ID", PRIMARY_CLUSTER_ID)
            .env("ENABLE_NATIVE_SIDECARS", istiod.native_sidecars.to_string())
            .env("PILOT_ENABLE_ANALYSIS", "false");
        env.spawn_process(&istiod.process_name(), cmd)?;
        Ok(())
    }

    async fn wait_ready(&self, env: &TestEnv, istiod: &Istiod) -> anyhow::Result<()> {
        env.wait_until(
            &format!("istiod ({}) not ready", istiod.revision),
            &env.dir().join(format!("{}.log", istiod.process_name())),
            READY_TIMEOUT,
            Duration::from_millis(200),
            || async { matches!(http_get(&istiod.http, "/ready").await, Ok((200, _))) },
        )
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Istiod>> {
        self.istiods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where this Istio keeps its certificates and rendered manifests.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Name of the injector configuration of `revision` on remotes, as Istio names it.
pub fn injector_name(revision: &str) -> String {
    if revision == DEFAULT_REVISION {
        "istio-sidecar-injector".to_owned()
    } else {
        format!("istio-sidecar-injector-{revision}")
    }
}

fn common_sets() -> Vec<String> {
    [
        format!("values.global.network={NETWORK}"),
        "values.global.meshID=mesh1".to_owned(),
        "values.global.hub=docker.io/istio".to_owned(),
        "values.global.tag=1.31.0".to_owned(),
    ]
    .into()
}

fn primary_sets(revision: &str) -> Vec<String> {
    let mut sets = common_sets();
    sets.push(format!(
        "values.global.multiCluster.clusterName={PRIMARY_CLUSTER_ID}"
    ));
    if revision != DEFAULT_REVISION {
        sets.push(format!("revision={revision}"));
    }
    sets
}

/// Applies `docs` server-side on `cluster` (written to `<istio dir>/<name>.<cluster>.json`).
async fn apply(env: &TestEnv, cluster: &Cluster, docs: &[Value], name: &str) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let path = env
        .dir()
        .join("istio")
        .join(format!("{name}.{}.json", cluster.name));
    std::fs::write(&path, list.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut apply = env.kubectl(cluster);
    apply
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&path);
    crate::mesh::run(apply).await?;
    Ok(())
}

/// A CA and a serving certificate for 127.0.0.1 signed by it: (CA, certificate, key) PEMs.
fn serving_pki() -> anyhow::Result<(String, String, String)> {
    let (ca_pem, issuer) = crate::pki::new_ca("istiod-ca")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.distinguished_name.push(DnType::CommonName, "istiod");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// `GET http://<address><path>` over HTTP/1.0: status and body.
async fn http_get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .context("connecting to istiod timed out")??;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .context("reading istiod's answer timed out")??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("istiod's answer has no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("istiod's answer has no status")?;
    Ok((status, body.to_owned()))
}

/// `istiod_remote_cluster_sync_status{cluster="X",...,status="S"} 1` lines: X → S.
fn parse_sync_status_metric(text: &str) -> BTreeMap<String, String> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    text.lines()
        .filter(|l| l.starts_with("istiod_remote_cluster_sync_status{"))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v.trim() == "1"))
        .filter_map(|l| Some((label(l, "cluster")?, label(l, "status")?)))
        .collect()
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_status_metric_keeps_the_current_status_of_each_cluster() {
        let text = "# HELP istiod_remote_cluster_sync_status x\n\
            istiod_remote_cluster_sync_status{cluster=\"remote-1\",status=\"synced\"} 1\n\
            istiod_remote_cluster_sync_status{cluster=\"remote-1\",status=\"timeout\"} 0\n\
            istiod_remote_cluster_sync_status{cluster=\"remote-2\",status=\"timeout\"} 1\n";
        assert_eq!(
            parse_sync_status_metric(text),
            BTreeMap::from([
                ("remote-1".to_owned(), "synced".to_owned()),
                ("remote-2".to_owned(), "timeout".to_owned()),
            ])
        );
    }
}
