//! What the soak records while it runs, beside the operations and faults: every cluster's
//! namespaces as their watches show them, the Lease's holders, and afterwards each replica's
//! writes from its log and a final listing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt};
use tokio::task::JoinSet;

use super::Clock;
use super::history::{
    ClusterIx, FailOpen, LeaseSeen, Ms, NsState, Observed, ReplicaWrite, WatchEvent,
};

/// A namespace as the history keeps it.
pub fn state_of(ns: &Namespace) -> NsState {
    let mut mesh_fields = Vec::new();
    for entry in ns.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() == Some(mesh_core::FIELD_MANAGER)
            && let Some(fields) = &entry.fields_v1
        {
            leaves(&fields.0, String::new(), &mut mesh_fields);
        }
    }
    NsState {
        uid: ns.metadata.uid.clone().unwrap_or_default(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
        annotations: ns.metadata.annotations.clone().unwrap_or_default(),
        deleting: ns.metadata.deletion_timestamp.is_some(),
        mesh_fields,
    }
}

/// The leaf paths of a managedFields `fieldsV1` tree.
fn leaves(value: &serde_json::Value, prefix: String, out: &mut Vec<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}/{key}")
                };
                leaves(child, path, out);
            }
        }
        _ => out.push(prefix),
    }
}

/// The watches of a run; [`Recorder::finish`] stops them and hands over what they saw.
pub struct Recorder {
    events: Arc<Mutex<Vec<WatchEvent>>>,
    leases: Arc<Mutex<Vec<LeaseSeen>>>,
    /// The Lease's holder as last seen, for faults aimed at the leader.
    pub holder: Arc<Mutex<Option<String>>>,
    /// Set once the workload starts: events before are the initial listing.
    started: Arc<std::sync::atomic::AtomicBool>,
    tasks: JoinSet<()>,
}

impl Recorder {
    /// Watches every cluster's namespaces and the primary's Lease `lease`; returns once every
    /// watch has listed.
    pub async fn start(
        clients: Vec<kube::Client>,
        lease: &str,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let mut recorder = Self {
            events: Arc::default(),
            leases: Arc::default(),
            holder: Arc::default(),
            started: Arc::default(),
            tasks: JoinSet::new(),
        };
        let primary = clients.first().cloned().context_missing()?;
        let mut listed = Vec::new();
        for (cluster, client) in clients.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            listed.push(rx);
            recorder.tasks.spawn(watch_namespaces(
                cluster,
                client,
                clock.clone(),
                recorder.events.clone(),
                recorder.started.clone(),
                tx,
            ));
        }
        recorder.tasks.spawn(watch_lease(
            primary,
            lease.to_owned(),
            clock,
            recorder.leases.clone(),
            recorder.holder.clone(),
        ));
        for rx in listed {
            tokio::time::timeout(std::time::Duration::from_secs(60), rx)
                .await
                .map_err(|_| anyhow::anyhow!("a namespace watch did not list within 60s"))?
                .map_err(|_| anyhow::anyhow!("a namespace watch ended"))?;
        }
        Ok(recorder)
    }

    pub fn mark_started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the watches; returns the namespace events and the Lease's holders.
    pub fn finish(mut self) -> (Vec<WatchEvent>, Vec<LeaseSeen>) {
        self.tasks.abort_all();
        let mut events = std::mem::take(&mut *lock(&self.events));
        events.sort_by_key(|e| e.at);
        (events, std::mem::take(&mut *lock(&self.leases)))
    }
}

trait ContextMissing<T> {
    fn context_missing(self) -> anyhow::Result<T>;
}

impl<T> ContextMissing<T> for Option<T> {
    fn context_missing(self) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow::anyhow!("no cluster to watch"))
    }
}

/// The watches retry every 200 ms: a watch that waits seconds to reconnect after its
/// apiserver came back would date what happened meanwhile late.
struct Retry;

impl Iterator for Retry {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        Some(std::time::Duration::from_millis(200))
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn watch_namespaces(
    cluster: ClusterIx,
    client: kube::Client,
    clock: Clock,
    events: Arc<Mutex<Vec<WatchEvent>>>,
    started: Arc<std::sync::atomic::AtomicBool>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let mut listed = Some(listed);
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut relisted: BTreeSet<String> = BTreeSet::new();
    let stream = watcher(Api::<Namespace>::all(client), watcher::Config::default()).backoff(Retry);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let at = clock.now();
        let initial = !started.load(std::sync::atomic::Ordering::SeqCst);
        let record = |name: String, observed: Observed| {
            lock(&events).push(WatchEvent {
                at,
                cluster,
                name,
                observed,
                initial,
            });
        };
        match event {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(ns)) => {
                let name = ns.name_any();
                relisted.insert(name.clone());
                known.insert(name.clone());
                record(name, Observed::Seen(state_of(&ns)));
            }
            Ok(watcher::Event::InitDone) => {
                for gone in known.difference(&relisted).cloned().collect::<Vec<_>>() {
                    known.remove(&gone);
                    record(gone, Observed::Gone);
                }
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            Ok(watcher::Event::Apply(ns)) => {
                let name = ns.name_any();
                known.insert(name.clone());
                record(name, Observed::Seen(state_of(&ns)));
            }
            Ok(watcher::Event::Delete(ns)) => {
                let name = ns.name_any();
                known.remove(&name);
                record(name, Observed::Gone);
            }
            Err(_) => {}
        }
    }
}

async fn watch_lease(
    primary: kube::Client,
    name: String,
    clock: Clock,
    leases: Arc<Mutex<Vec<LeaseSeen>>>,
    holder: Arc<Mutex<Option<String>>>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(
        Api::<Lease>::namespaced(primary, mesh_core::MESH_NAMESPACE),
        config,
    )
    .backoff(Retry);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let lease = match event {
            Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => l,
            _ => continue,
        };
        let now = lease.spec.and_then(|s| s.holder_identity);
        let mut seen = lock(&leases);
        if seen.last().map(|l| &l.holder) != Some(&now) {
            seen.push(LeaseSeen {
                at: clock.now(),
                holder: now.clone(),
            });
            *lock(&holder) = now;
        }
    }
}

/// The writes to remotes that `identity`'s reconciler logged (JSON lines) in `log`.
pub fn replica_writes(log: &Path, identity: &str, clock: &Clock) -> Vec<ReplicaWrite> {
    logged(log, identity, clock, &["corrected remote labels"], "change")
}

/// The pushes `identity` logged in `log`, whatever their outcome.
pub fn replica_pushes(log: &Path, identity: &str, clock: &Clock) -> Vec<ReplicaWrite> {
    logged(
        log,
        identity,
        clock,
        &["push done", "push failed", "push timed out"],
        "outcome",
    )
}

fn logged(
    log: &Path,
    identity: &str,
    clock: &Clock,
    messages: &[&str],
    change: &str,
) -> Vec<ReplicaWrite> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| messages.iter().any(|m| l.contains(m)))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| messages.contains(&m))
        })
        .filter_map(|v| {
            let at = clock.from_rfc3339(v.get("timestamp")?.as_str()?)?;
            let field = |k: &str| {
                v.get(k)
                    .or_else(|| v.get("span").and_then(|s| s.get(k)))
                    .and_then(|x| x.as_str())
                    .unwrap_or("?")
                    .to_owned()
            };
            Some(ReplicaWrite {
                at,
                replica: identity.to_owned(),
                cluster: field("cluster"),
                namespace: field("namespace"),
                change: field(change),
            })
        })
        .collect()
}

/// The calls of the webhook the primary's apiserver gave up on, from its log (klog lines
/// `W1201 08:36:18.506415 ... failing open ...`, which carry no year: the clock's is used).
pub fn fail_opens(log: &Path, clock: &Clock) -> Vec<FailOpen> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    let year = clock.year();
    text.lines()
        .filter(|l| l.contains("failing open"))
        .filter_map(|line| {
            let (month, day) = (line.get(1..3)?, line.get(3..5)?);
            let time = line.get(6..21)?;
            let at = clock.from_rfc3339(&format!("{year}-{month}-{day}T{time}Z"))?;
            Some(FailOpen {
                at,
                deadline: line.contains("deadline exceeded"),
                line: super::history::truncate(line, 300),
            })
        })
        .collect()
}

/// Every cluster's namespaces, listed now.
pub async fn list_all(
    clients: &[kube::Client],
    at: Ms,
) -> anyhow::Result<Vec<BTreeMap<String, NsState>>> {
    let mut out = Vec::new();
    for client in clients {
        let list = Api::<Namespace>::all(client.clone())
            .list(&Default::default())
            .await?;
        out.push(
            list.items
                .iter()
                .map(|ns| (ns.name_any(), state_of(ns)))
                .collect(),
        );
    }
    let _ = at;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_fields_become_leaf_paths() {
        let tree =
            serde_json::json!({"f:metadata": {"f:labels": {".": {}, "f:istio-injection": {}}}});
        let mut out = Vec::new();
        leaves(&tree, String::new(), &mut out);
        assert_eq!(
            out,
            vec![
                "f:metadata/f:labels/.",
                "f:metadata/f:labels/f:istio-injection"
            ]
        );
    }

    #[test]
    fn reads_corrections_from_a_json_log() {
        let log = log_file(
            "replica.log",
            concat!(
                r#"{"timestamp":"2026-12-01T08:00:01.500000Z","level":"INFO","message":"corrected remote labels","namespace":"soak-1","change":"+istio-injection=enabled","span":{"cluster":"remote-2","name":"cluster"}}"#,
                "\n",
                r#"{"timestamp":"2026-12-01T08:00:02Z","level":"INFO","message":"push done"}"#,
                "\nnot json\n"
            ),
        );
        let writes = replica_writes(&log, "a", &eight_o_clock());
        assert_eq!(
            writes,
            vec![ReplicaWrite {
                at: 1_500,
                replica: "a".into(),
                cluster: "remote-2".into(),
                namespace: "soak-1".into(),
                change: "+istio-injection=enabled".into(),
            }]
        );
    }

    #[test]
    fn reads_fail_opens_from_the_apiserver_log() {
        let log = log_file(
            "kube-apiserver.log",
            concat!(
                "I1201 08:00:01.000000   21287 other.go:1] hello\n",
                "W1201 08:00:02.250000   21287 dispatcher.go:210] Failed calling webhook, failing open namespaces.kubectl-mesh.io: failed calling webhook: Post \"https://127.0.0.1:1/mutate?timeout=5s\": context deadline exceeded\n",
                "W1201 08:00:03.500000   21287 dispatcher.go:210] Failed calling webhook, failing open namespaces.kubectl-mesh.io: dial tcp 127.0.0.1:1: connect: connection refused\n",
            ),
        );
        let fails = fail_opens(&log, &eight_o_clock());
        assert_eq!(
            fails.iter().map(|f| (f.at, f.deadline)).collect::<Vec<_>>(),
            vec![(2_250, true), (3_500, false)]
        );
    }

    /// A log file `name` holding `text`, in this process's temporary directory.
    fn log_file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-bench-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(name);
        std::fs::write(&log, text).unwrap();
        log
    }

    /// The clock of a soak started at 2026-12-01T08:00:00Z, the day of the logs above.
    fn eight_o_clock() -> Clock {
        Clock::at_unix_ms(1_796_112_000_000)
    }
}
