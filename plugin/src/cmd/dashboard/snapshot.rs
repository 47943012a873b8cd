//! What the page receives: each snapshot of the live state, written as JSON and framed as
//! the server-sent event that carries it, and pages of services on request. The namespace
//! matrix and the services are judged as `status` and `services` judge them.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use mesh_core::cluster::MeshCluster;
use serde::Serialize;

use crate::cmd::list::ClusterRow;
use crate::cmd::services::{
    self, ClusterFacts, ClusterRead, Join, PRIMARY, PageRows, ReadState, Records,
};
use crate::cmd::status::{PodsRead, RemoteView, StatusReport, Totals, Unread};
use crate::credentials::TokenExpiry;
use crate::{mesh_state, view};

use super::live::{Live, MAX_EVENTS, ViewState, WorkloadWatches};
use super::reduce::{EventRow, NsFacts};

/// Service rows each snapshot carries: the first ones, as the page shows them unfiltered.
/// The page asks for others (a filter) with [`super::live::Feed::services_json`]: a mesh of
/// tens of thousands of services is never written out whole.
pub const SNAPSHOT_ROWS: usize = 500;

/// Rows of the namespace matrix judged at a time.
const MATRIX_CHUNK: usize = 100;

/// Why a remote's namespaces or services are not known yet: nothing was read of it so far.
const NOT_READ_YET: &str = "not read yet";

/// The state of a remote not read yet, in the clusters table, its matrix cells and its
/// services column: not one of `status`'s, which reads every cluster before it answers.
const PENDING: &str = "pending";

/// What the page receives.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot<'a> {
    generated_at: String,
    primary_error: Option<&'a str>,
    clusters: Vec<ClusterInfo>,
    /// `matrix` (a [`StatusReport`], kept from the last snapshot) and `services` (the first
    /// page of services) are written beside these.
    events: Vec<&'a EventRow>,
}

/// A page of [`services::ServicesReport`] as JSON: the columns, `total` rows matching the
/// filter, and those from `offset` on, each row made as it is written.
#[derive(Serialize)]
struct ServicesJson<'j, 'a> {
    clusters: Vec<PageColumn>,
    total: usize,
    offset: usize,
    services: PageRows<'j, 'a>,
}

/// A services column as the page gets it: as `services` judges it, or [`PENDING`] for a
/// remote whose services were not read yet.
#[derive(Serialize)]
#[serde(untagged)]
enum PageColumn {
    Judged(services::ClusterColumn),
    Pending { name: String, state: &'static str },
}

/// What is known of a remote's namespaces.
enum NamespacesRead<'a> {
    Read(&'a Records<String, NsFacts>),
    Unread(Unread),
    /// Nothing was read of it yet.
    Pending,
}

/// One remote in the clusters table.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterInfo {
    name: String,
    /// Whether it is being detached ([`mesh_state::is_being_detached`]), as `status` says:
    /// nothing syncs it, so its drift is not one to correct.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    detaching: bool,
    /// `reachable`, `unreachable` (no answer), `not-read` (answered, but could not be read
    /// with the stored credentials, as `status` tells them) or `pending` (not asked yet), as
    /// seen from here now.
    reachability: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The webhook's conditions and counts (MeshCluster status).
    reachable_condition: String,
    synced_condition: String,
    in_sync: String,
    drifted: String,
    missing: String,
    /// When the webhook last synced it (`status.lastSyncTime`), in milliseconds since the
    /// epoch; absent before its first sync. Times, not ages: the page reckons the ages and
    /// keeps them current, where an age written here would stop with the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_synced_at_ms: Option<i64>,
    /// When its stored token expires, in milliseconds since the epoch; absent when that is
    /// no time, which `token_expiry` then says (`never` or `unknown`, as `list` says it).
    #[serde(skip_serializing_if = "Option::is_none")]
    token_expires_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_expiry: Option<String>,
    /// `view`, `istio-reader`, `none` or `failed`.
    view: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    view_hint: Option<String>,
}

impl Live {
    /// The snapshot, framed as the event that carries it: everything but the services past
    /// the first [`SNAPSHOT_ROWS`].
    pub(super) fn snapshot(&mut self) -> Bytes {
        let now = Timestamp::now();
        let clusters = self.clusters_info(now);
        let matrix = match self.matrix.take() {
            Some(json) => json,
            // Plain data into memory: serializing cannot fail.
            None => self.matrix_json(MATRIX_CHUNK),
        };
        // `{"matrix":<kept>,"services":<first page>,` then the rest of the snapshot's object
        // after its `{`, all written in place.
        let mut buf = Vec::with_capacity(matrix.len() + 256 * 1024);
        buf.extend_from_slice(EVENT_PREFIX);
        buf.extend_from_slice(b"{\"matrix\":");
        buf.extend_from_slice(&matrix);
        buf.extend_from_slice(b",\"services\":");
        self.services_page("", 0, SNAPSHOT_ROWS, &mut buf);
        buf.push(b',');
        let mut events: Vec<&EventRow> = self.events.values().collect();
        events.sort_by(|a, b| b.time.cmp(&a.time));
        events.truncate(MAX_EVENTS);
        let snapshot = Snapshot {
            generated_at: now.to_string(),
            primary_error: self.primary_error.as_ref().map(|e| e.error.as_str()),
            clusters,
            events,
        };
        let rest = buf.len();
        // Plain data into memory: serializing cannot fail.
        serde_json::to_writer(&mut buf, &snapshot).unwrap_or_default();
        drop(snapshot);
        if buf.get(rest) == Some(&b'{') {
            buf.remove(rest);
        }
        buf.extend_from_slice(EVENT_SUFFIX);
        buf.shrink_to_fit();
        self.matrix = Some(matrix);
        // Names of objects deleted since the last snapshot.
        self.names.purge();
        Bytes::from(buf)
    }

    /// One remote per row of the clusters table.
    fn clusters_info(&self, now: Timestamp) -> Vec<ClusterInfo> {
        self.clusters
            .values()
            .map(|c| {
                let name = c.name_any();
                let remote = self.remotes.get(&name);
                let expiry = remote
                    .and_then(|r| r.expiry)
                    .unwrap_or(TokenExpiry::Unknown);
                let row = ClusterRow::new(c, expiry, now);
                let token_expires_at_ms = match expiry {
                    TokenExpiry::At(at) => Some(at.as_millisecond()),
                    TokenExpiry::Never | TokenExpiry::Unknown => None,
                };
                let (reachability, error) = match remote.and_then(|r| r.probe.as_ref()) {
                    None => (PENDING, None),
                    Some(Ok(())) => ("reachable", None),
                    Some(Err(e)) if e.unanswered => ("unreachable", Some(e.error.clone())),
                    Some(Err(e)) => ("not-read", Some(e.error.clone())),
                };
                let (view, view_hint) = match remote.map(|r| &r.view) {
                    None | Some(ViewState::Pending) => ("pending".to_owned(), None),
                    Some(ViewState::NoCredentials { istio_unread }) => {
                        let enable = view::enable_command(&name);
                        let hint = match istio_unread {
                            None => enable,
                            Some(why) => {
                                format!("{}; run `{enable}`", view::no_credentials(Some(why)))
                            }
                        };
                        ("none".to_owned(), Some(hint))
                    }
                    Some(ViewState::Failed(e)) => ("failed".to_owned(), Some(e.clone())),
                    // Read, until a watch of its workloads fails.
                    Some(ViewState::Read(source)) => {
                        match remote.and_then(|r| r.workloads.error()) {
                            Some(e) => ("failed".to_owned(), Some(e.to_owned())),
                            None => (source.to_string(), None),
                        }
                    }
                };
                ClusterInfo {
                    name,
                    detaching: mesh_state::is_being_detached(c),
                    reachability,
                    error,
                    reachable_condition: row.reachable,
                    synced_condition: row.synced,
                    in_sync: row.in_sync,
                    drifted: row.drifted,
                    missing: row.missing,
                    last_synced_at_ms: last_synced_at_ms(c),
                    token_expires_at_ms,
                    token_expiry: token_expires_at_ms.is_none().then_some(row.token_expiry),
                    view,
                    view_hint,
                }
            })
            .collect()
    }

    /// The namespaces' managed labels on every cluster ([`StatusReport`]) as JSON, judged
    /// [`MATRIX_CHUNK`] rows at a time: the judge reads Namespace objects, rebuilt for the
    /// rows it judges, and a few thousand of them at once took megabytes.
    pub(super) fn matrix_json(&self, chunk: usize) -> Vec<u8> {
        let rows = self.matrix_rows();
        let mut chunks = rows.chunks(chunk.max(1));
        // The columns do not depend on the rows: no row is judged for them.
        let columns = self.matrix_of(&[]).clusters;
        let pending: Vec<&str> = columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| matches!(self.namespaces_read(name), NamespacesRead::Pending))
            .collect();
        let mut totals = Totals::default();
        let mut buf = Vec::new();
        buf.extend_from_slice(b"{\"clusters\":");
        // Plain data into memory: serializing cannot fail.
        if pending.is_empty() {
            serde_json::to_writer(&mut buf, &columns).unwrap_or_default();
        } else {
            let mut columns = serde_json::to_value(&columns).unwrap_or_default();
            for column in columns.as_array_mut().into_iter().flatten() {
                if pending.iter().any(|name| column["name"] == *name) {
                    column["pending"] = true.into();
                }
            }
            serde_json::to_writer(&mut buf, &columns).unwrap_or_default();
        }
        buf.extend_from_slice(b",\"namespaces\":[");
        let mut first = true;
        for rows in chunks.by_ref() {
            let report = self.matrix_of(rows);
            for row in &report.namespaces {
                if !first {
                    buf.push(b',');
                }
                first = false;
                if pending.is_empty() {
                    serde_json::to_writer(&mut buf, row).unwrap_or_default();
                    continue;
                }
                // `status` judges them not read; the page says they are being read.
                let mut row = serde_json::to_value(row).unwrap_or_default();
                for name in &pending {
                    if let Some(cell) = row["clusters"].get_mut(*name) {
                        cell["state"] = PENDING.into();
                    }
                }
                serde_json::to_writer(&mut buf, &row).unwrap_or_default();
            }
            totals += report.totals;
        }
        // The totals' own fields close the object, as `status -o json` writes them.
        let totals = serde_json::to_vec(&totals).unwrap_or_default();
        buf.extend_from_slice(b"],");
        buf.extend_from_slice(totals.strip_prefix(b"{").unwrap_or_default());
        // Kept until a namespace changes: without room to grow.
        buf.shrink_to_fit();
        buf
    }

    /// The matrix's rows, as [`StatusReport::compute`] chooses them when given none: the
    /// namespaces with a managed label on the primary or on a remote whose namespaces are
    /// judged, outside the rule's exclusions.
    fn matrix_rows(&self) -> Vec<&str> {
        // Not known (not readable): nothing to judge the remotes against.
        let Some(primary) = &self.primary_namespaces else {
            return Vec::new();
        };
        let rule = &self.rule;
        let judged = self.clusters.iter().filter_map(|(name, cluster)| {
            rule.within(&cluster.spec.scope).ok()?;
            self.remote_namespaces(name).ok()
        });
        let rows: BTreeSet<&str> = std::iter::once(primary)
            .chain(judged)
            .flatten()
            .filter(|(name, ns)| ns.carries(rule) && !rule.is_excluded(name))
            .map(|(name, _)| name.as_str())
            .collect();
        rows.into_iter().collect()
    }

    /// The namespaces of a remote, or why they are not known.
    fn namespaces_read(&self, name: &str) -> NamespacesRead<'_> {
        match self.remotes.get(name) {
            None => NamespacesRead::Pending,
            // A failing watch's map is what the remote was, not what it is: a token revoked
            // under it must not leave the last one read looking current.
            Some(r) => match (&r.probe, &r.namespaces_error, &r.namespaces) {
                (Some(Err(e)), _, _) | (_, Some(e), _) => NamespacesRead::Unread(e.clone()),
                (_, None, Some(map)) => NamespacesRead::Read(map),
                (_, None, None) => NamespacesRead::Pending,
            },
        }
    }

    /// [`Live::namespaces_read`] as the judge of `status` takes it: one not read yet is not
    /// read, which [`Live::matrix_json`] then tells apart.
    fn remote_namespaces(&self, name: &str) -> Result<&Records<String, NsFacts>, Unread> {
        match self.namespaces_read(name) {
            NamespacesRead::Read(map) => Ok(map),
            NamespacesRead::Unread(unread) => Err(unread),
            NamespacesRead::Pending => Err(Unread {
                error: NOT_READ_YET.to_owned(),
                unanswered: false,
            }),
        }
    }

    /// Every remote as the judge reads it, with the Namespace objects `rebuild` makes of its
    /// namespaces.
    fn remote_views(
        &self,
        rebuild: impl Fn(&Records<String, NsFacts>) -> Vec<Namespace>,
    ) -> Vec<RemoteView> {
        self.clusters
            .iter()
            .map(|(name, cluster)| RemoteView {
                name: name.clone(),
                scope: cluster.spec.scope.clone(),
                detaching: mesh_state::is_being_detached(cluster),
                namespaces: self.remote_namespaces(name).map(&rebuild),
                injectors: None,
                pods: PodsRead::NotAsked,
            })
            .collect()
    }

    /// The matrix of `rows` alone (none: its columns only); Namespace objects are rebuilt
    /// for them alone.
    fn matrix_of(&self, rows: &[&str]) -> StatusReport {
        let rebuild = |map: &Records<String, NsFacts>| -> Vec<Namespace> {
            rows.iter()
                .filter_map(|name| Some(map.get(*name)?.namespace(name)))
                .collect()
        };
        let requested: Vec<String> = rows.iter().map(|&n| n.to_owned()).collect();
        self.judge(rebuild, &requested)
    }

    /// `status`'s judge over the Namespace objects `rebuild` makes of each cluster's facts.
    fn judge(
        &self,
        rebuild: impl Fn(&Records<String, NsFacts>) -> Vec<Namespace>,
        requested: &[String],
    ) -> StatusReport {
        let primary: BTreeMap<String, Namespace> = (self.primary_namespaces.iter())
            .flat_map(&rebuild)
            .map(|ns| (ns.name_any(), ns))
            .collect();
        let views = self.remote_views(rebuild);
        StatusReport::compute(&self.rule, &primary, &views, requested)
    }

    /// [`Live::services_page`] on its own.
    pub(super) fn services_json(&mut self, filter: &str, offset: usize, limit: usize) -> Bytes {
        let mut json = Vec::new();
        self.services_page(filter, offset, limit, &mut json);
        Bytes::from(json)
    }

    /// The services whose `namespace/name` contains `filter`: how many, and `limit` of them
    /// from `offset`, joined across clusters as `kubectl mesh services` joins them, as JSON
    /// written to `out`.
    fn services_page(&mut self, filter: &str, offset: usize, limit: usize, out: &mut Vec<u8>) {
        // Facts are moved out and back rather than cloned: the join borrows them as the
        // CLI's reads, and a copy of tens of thousands of records is what this avoids.
        let names: Vec<String> = self.clusters.keys().cloned().collect();
        let mut primary = workloads_read(
            &self.primary_workloads,
            &mut self.primary_facts,
            PRIMARY_CREDENTIALS,
        );
        if let Some(ReadState::Read(facts)) = &mut primary {
            // Unknown while its namespaces are not, and why when they cannot be read.
            facts.injection = self.primary_namespaces.as_ref().map(injection_of);
            facts.injection_unread = self.primary_error.as_ref().map(|e| e.error.clone());
        }
        let mut states = vec![(PRIMARY.to_owned(), primary)];
        for name in &names {
            let state = match self.remotes.get_mut(name) {
                None => None,
                Some(r) => match (&r.probe, &r.view) {
                    // Its services are read with the view credentials: only a remote that
                    // does not answer at all is unreachable for them.
                    (Some(Err(e)), _) if e.unanswered => Some(ReadState::Unreachable {
                        error: e.error.clone(),
                    }),
                    (_, ViewState::Pending) => None,
                    (_, ViewState::NoCredentials { istio_unread }) => {
                        Some(ReadState::NoCredentials {
                            enable: view::enable_command(name),
                            istio_unread: istio_unread.clone(),
                        })
                    }
                    (_, ViewState::Failed(error)) => Some(ReadState::Failed {
                        credentials: "view".into(),
                        error: error.clone(),
                    }),
                    (_, ViewState::Read(_)) => {
                        let mut read = workloads_read(&r.workloads, &mut r.facts, "view");
                        if let Some(ReadState::Read(facts)) = &mut read {
                            facts.injection = r.namespaces.as_ref().map(injection_of);
                        }
                        read
                    }
                },
            };
            states.push((name.clone(), state));
        }
        // Clusters whose services were not read yet: read as unreachable by the join (no
        // cells), shown as pending.
        let pending: Vec<bool> = states.iter().map(|(_, state)| state.is_none()).collect();
        let reads: Vec<ClusterRead> = states
            .into_iter()
            .map(|(name, state)| ClusterRead {
                name,
                state: state.unwrap_or_else(|| ReadState::Unreachable {
                    error: NOT_READ_YET.into(),
                }),
            })
            .collect();
        let join = Join::paged(&reads);
        let (total, services) = join.page_rows(filter, offset, limit);
        let clusters = services::columns(&reads)
            .into_iter()
            .zip(pending)
            .map(|(column, pending)| match pending {
                true => PageColumn::Pending {
                    name: column.name,
                    state: PENDING,
                },
                false => PageColumn::Judged(column),
            })
            .collect();
        let page = ServicesJson {
            clusters,
            total,
            offset,
            services,
        };
        // Plain data into memory: serializing cannot fail.
        serde_json::to_writer(out, &page).unwrap_or_default();
        drop(page);
        drop(join);
        // Back by position, not by name: a remote may be named `primary` (an older version
        // allowed it), and its facts are not the primary's.
        let mut reads = reads.into_iter();
        if let Some(ClusterRead {
            state: ReadState::Read(facts),
            ..
        }) = reads.next()
        {
            self.primary_facts = facts;
        }
        for (name, read) in names.iter().zip(reads) {
            if let (ReadState::Read(facts), Some(r)) = (read.state, self.remotes.get_mut(name)) {
                r.facts = facts;
            }
        }
    }
}

/// `status.lastSyncTime` of `cluster` in milliseconds since the epoch; `None` when absent or
/// unreadable, which the page shows as `list` does (`<none>`).
fn last_synced_at_ms(cluster: &MeshCluster) -> Option<i64> {
    let time = cluster.status.as_ref()?.last_sync_time.as_deref()?;
    time.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// The credentials the primary's workloads are watched with, as a column that failed names
/// them (`with the kubeconfig credentials: ...`): the caller's own.
const PRIMARY_CREDENTIALS: &str = "kubeconfig";

/// A cluster's workloads, watched with the `credentials` named, as the join reads them:
/// failed while a watch of them fails (what was read is no longer current), not read yet
/// (`None`) until every watch listed, else read (`facts`, moved out).
fn workloads_read(
    watches: &WorkloadWatches,
    facts: &mut ClusterFacts,
    credentials: &str,
) -> Option<ReadState> {
    if let Some(error) = watches.error() {
        return Some(ReadState::Failed {
            credentials: credentials.to_owned(),
            error: error.to_owned(),
        });
    }
    watches
        .listed()
        .then(|| ReadState::Read(std::mem::take(facts)))
}

/// Namespaces whose labels ask for sidecars, as [`ClusterFacts::injection`] holds them.
fn injection_of(namespaces: &Records<String, NsFacts>) -> BTreeMap<String, String> {
    namespaces
        .iter()
        .filter(|(_, ns)| !ns.labels.is_empty())
        .filter_map(|(name, ns)| {
            Some((
                name.clone(),
                services::extract_injection(&ns.namespace(name))?,
            ))
        })
        .collect()
}

/// How a snapshot is framed: one server-sent event `state` (JSON has no raw newline).
pub const EVENT_PREFIX: &[u8] = b"event: state\ndata: ";
pub const EVENT_SUFFIX: &[u8] = b"\n\n";

/// The JSON of a framed snapshot; empty before the first one.
pub fn json_of(framed: &Bytes) -> Bytes {
    if framed.len() < EVENT_PREFIX.len() + EVENT_SUFFIX.len() {
        return Bytes::new();
    }
    framed.slice(EVENT_PREFIX.len()..framed.len() - EVENT_SUFFIX.len())
}

#[cfg(test)]
mod tests {
    use mesh_core::labels::SyncRule;

    use super::*;
    use crate::cmd::dashboard::live::RemoteLive;
    use crate::cmd::dashboard::reduce::{Change, reduce_namespace};
    use crate::cmd::services::wire;
    use crate::mesh_state::fixtures::cluster;
    use mesh_core::cluster::MeshClusterStatus;
    use mesh_core::fixtures::labelled;

    /// Namespaces as a watch keeps them.
    fn kept(namespaces: &[(&str, &[(&str, &str)])]) -> Records<String, NsFacts> {
        namespaces
            .iter()
            .filter_map(|(name, labels)| {
                let (name, ns) = reduce_namespace(&wire::Namespace {
                    metadata: labelled(name, labels).metadata,
                })?;
                Some((name, ns?))
            })
            .collect()
    }

    /// A primary and three remotes: one read (drift, a missing namespace, one labelled only
    /// there, an excluded one), one that does not answer, one not read yet.
    fn live() -> Live {
        let mut live = Live::new(SyncRule::default());
        let on = [("istio-injection", "enabled")];
        let off = [("istio-injection", "disabled")];
        let rev = [("istio.io/rev", "canary")];
        live.primary_namespaces = Some(kept(&[
            ("a", &on),
            ("b", &[]),
            ("c", &rev),
            ("d", &on),
            ("e", &on),
            ("kube-system", &on),
            ("f", &[("team", "x")]),
        ]));
        live.primary_workloads = WorkloadWatches::all_listed();
        for name in ["remote-1", "remote-2", "remote-3"] {
            live.clusters.insert(
                name.to_owned(),
                cluster(name, "https://10.0.0.1:6443", "2026-12-01T00:00:00Z"),
            );
        }
        let mut read = RemoteLive::default();
        read.probe = Some(Ok(()));
        read.workloads = WorkloadWatches::all_listed();
        read.namespaces = Some(kept(&[
            ("a", &on),
            ("b", &off),
            ("c", &[]),
            ("e", &on),
            ("g", &rev),
            ("kube-system", &off),
        ]));
        live.remotes.insert("remote-1".to_owned(), read);
        let mut silent = RemoteLive::default();
        silent.probe = Some(Err(Unread {
            error: "no answer within 3s".to_owned(),
            unanswered: true,
        }));
        silent.namespaces = Some(kept(&[("h", &on)]));
        live.remotes.insert("remote-2".to_owned(), silent);
        live
    }

    /// The page's matrix as `status` judges it: a remote the page says is being read
    /// (`pending`) is one `status` could not read.
    fn as_status_judges(mut matrix: serde_json::Value) -> serde_json::Value {
        for column in matrix["clusters"].as_array_mut().unwrap() {
            column.as_object_mut().unwrap().remove("pending");
        }
        for row in matrix["namespaces"].as_array_mut().unwrap() {
            for cell in row["clusters"].as_object_mut().unwrap().values_mut() {
                if cell["state"] == PENDING {
                    cell["state"] = "not-read".into();
                }
            }
        }
        matrix
    }

    /// A remote not read yet, for its first seconds, was shown as one whose stored
    /// credentials could not be read or used (`not read` in the matrix) and its services as
    /// unreachable: it is pending until read. Remotes read keep their states.
    #[test]
    fn a_remote_not_read_yet_is_pending_until_read() {
        let unread = |unanswered| {
            Some(Err(Unread {
                error: "refused or silent".to_owned(),
                unanswered,
            }))
        };
        let listed = || Some(kept(&[("a", &[("istio-injection", "enabled")])]));
        let read = || ViewState::Read(view::Source::View);
        // What remote-1 is, then its reachability, its cell of namespace `a` and its services
        // column.
        let cases = [
            (
                "never asked",
                None,
                None,
                ViewState::Pending,
                ["pending"; 3],
            ),
            (
                "answers, nothing listed yet",
                Some(Ok(())),
                None,
                ViewState::Pending,
                ["reachable", "pending", "pending"],
            ),
            (
                "namespaces listed, services not yet",
                Some(Ok(())),
                listed(),
                ViewState::Pending,
                ["reachable", "in-sync", "pending"],
            ),
            (
                "read",
                Some(Ok(())),
                listed(),
                read(),
                ["reachable", "in-sync", "read"],
            ),
            (
                "does not answer",
                unread(true),
                None,
                ViewState::Pending,
                ["unreachable"; 3],
            ),
            (
                "its stored credentials refused, its view ones read",
                unread(false),
                None,
                read(),
                ["not-read", "not-read", "read"],
            ),
        ];
        for (what, probe, namespaces, view, expected) in cases {
            let mut live = live();
            let remote = live.remotes.get_mut("remote-1").unwrap();
            (remote.probe, remote.namespaces, remote.view) = (probe, namespaces, view);
            let json: serde_json::Value =
                serde_json::from_slice(&json_of(&live.snapshot())).unwrap();
            let named = |list: &serde_json::Value, name: &str| {
                list.as_array()
                    .and_then(|all| all.iter().find(|c| c["name"] == name))
                    .cloned()
                    .unwrap_or_else(|| panic!("{what}: no {name} in {list}"))
            };
            let states = |name: &str| {
                let cell = &json["matrix"]["namespaces"][0];
                assert_eq!(cell["name"], "a", "{what}");
                [
                    named(&json["clusters"], name)["reachability"].clone(),
                    cell["clusters"][name]["state"].clone(),
                    named(&json["services"]["clusters"], name)["state"].clone(),
                ]
            };
            assert_eq!(states("remote-1"), expected, "{what}: {json}");
            let pending = named(&json["matrix"]["clusters"], "remote-1")
                .get("pending")
                .cloned();
            assert_eq!(
                pending.is_some(),
                expected[1] == PENDING,
                "{what}: {pending:?}"
            );
            // Never asked (no entry yet) and silent, whatever remote-1 is.
            assert_eq!(states("remote-3"), ["pending"; 3], "{what}: {json}");
            assert_eq!(states("remote-2"), ["unreachable"; 3], "{what}: {json}");
        }
    }

    #[test]
    fn the_matrix_judged_in_chunks_is_the_whole_matrix() {
        let live = live();
        // The judge over every namespace of every cluster, as `status` runs it.
        let all = |map: &Records<String, NsFacts>| -> Vec<Namespace> {
            map.iter().map(|(name, ns)| ns.namespace(name)).collect()
        };
        let whole = live.judge(all, &[]);
        assert_eq!(
            whole
                .namespaces
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e", "g"],
            "h is only on a remote that does not answer, kube-system is excluded"
        );
        assert!(whole.totals.drifted > 0 && whole.totals.missing > 0);
        let whole = serde_json::to_value(&whole).unwrap();
        for chunk in [1, 2, 4, 100] {
            let chunked: serde_json::Value =
                serde_json::from_slice(&live.matrix_json(chunk)).unwrap();
            assert_eq!(as_status_judges(chunked), whole, "{chunk} rows at a time");
        }
    }

    #[test]
    fn an_empty_mesh_has_an_empty_matrix() {
        let live = Live::new(SyncRule::default());
        let json: serde_json::Value = serde_json::from_slice(&live.matrix_json(100)).unwrap();
        let empty = StatusReport::compute(&live.rule, &BTreeMap::new(), &[], &[]);
        assert_eq!(json, serde_json::to_value(&empty).unwrap());
    }

    #[test]
    fn a_snapshot_is_one_json_object() {
        let mut live = live();
        let framed = live.snapshot();
        assert!(framed.starts_with(EVENT_PREFIX) && framed.ends_with(EVENT_SUFFIX));
        let json: serde_json::Value = serde_json::from_slice(&json_of(&framed)).unwrap();
        let keys: BTreeSet<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "matrix",
                "services",
                "generatedAt",
                "primaryError",
                "clusters",
                "events"
            ])
        );
        assert_eq!(json["matrix"]["namespaces"].as_array().unwrap().len(), 6);
        assert_eq!(json["services"]["total"], 0);
        assert_eq!(json["services"]["clusters"][0]["name"], PRIMARY);
        assert_eq!(json["clusters"].as_array().unwrap().len(), 3);
        // The page does not show apiserver URLs: they are not sent.
        assert_eq!(json["clusters"][0]["name"], "remote-1");
        assert_eq!(json["clusters"][0].get("server"), None);
    }

    /// "Last sync" and "Token expires" were sent as ages, made with the snapshot: a quiet mesh
    /// makes no new one, and the page said `12s` for as long as the webhook stayed silent.
    /// They are sent as times, whose ages the page reckons; no time is said as `list` says it.
    #[test]
    fn the_last_sync_and_the_token_expiry_are_sent_as_times() {
        let mut live = live();
        let synced = "2026-03-01T11:59:48Z";
        let expires: Timestamp = "2026-03-02T00:00:00Z".parse().unwrap();
        let last_sync = |time: &str| MeshClusterStatus {
            last_sync_time: Some(time.to_owned()),
            ..MeshClusterStatus::default()
        };
        live.clusters.get_mut("remote-1").unwrap().status = Some(last_sync(synced));
        live.clusters.get_mut("remote-2").unwrap().status = Some(last_sync("yesterday"));
        live.remotes.get_mut("remote-1").unwrap().expiry = Some(TokenExpiry::At(expires));
        live.remotes.get_mut("remote-2").unwrap().expiry = Some(TokenExpiry::Never);
        let json: serde_json::Value = serde_json::from_slice(&json_of(&live.snapshot())).unwrap();
        let clusters = &json["clusters"];
        let info = |i: usize, name: &str| {
            assert_eq!(clusters[i]["name"], name, "{clusters}");
            let info = clusters[i].as_object().unwrap().clone();
            let times = ["lastSyncedAtMs", "tokenExpiresAtMs", "tokenExpiry"];
            times.map(|key| info.get(key).cloned())
        };
        let ms = |t: Timestamp| Some(t.as_millisecond().into());
        assert_eq!(
            info(0, "remote-1"),
            [ms(synced.parse().unwrap()), ms(expires), None]
        );
        // A time it cannot read is none, as `list` shows it.
        assert_eq!(info(1, "remote-2"), [None, None, Some("never".into())]);
        // Never synced, its token not read yet.
        assert_eq!(info(2, "remote-3"), [None, None, Some("unknown".into())]);
        for cluster in clusters.as_array().unwrap() {
            assert_eq!(cluster.get("lastSync"), None, "no age: {cluster}");
        }
    }

    /// A remote whose namespace watch fails now (its token revoked under it) while the probe,
    /// with a fresh client, says it answers: the matrix cannot read it, though the map read
    /// before it failed is still there.
    #[test]
    fn a_remote_whose_namespace_watch_fails_cannot_be_read_despite_an_older_map() {
        let mut live = live();
        let error = "Unauthorized (401)";
        let remote = live.remotes.get_mut("remote-1").unwrap();
        assert!(remote.namespaces.is_some() && matches!(remote.probe, Some(Ok(()))));
        remote.namespaces_error = Some(Unread {
            error: error.to_owned(),
            unanswered: false,
        });
        let json: serde_json::Value = serde_json::from_slice(&live.matrix_json(100)).unwrap();
        let named = |list: &str, name: &str| {
            json[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| entry["name"] == name)
                .cloned()
        };
        let column = named("clusters", "remote-1").unwrap();
        assert_eq!(column["reachable"], false, "{column}");
        assert_eq!(column["error"], error, "{column}");
        let row = named("namespaces", "a").unwrap();
        assert!(
            row["clusters"]["remote-1"].is_null()
                || row["clusters"]["remote-1"]["state"] == "not-read",
            "the labels read before it failed are not shown as current: {row}"
        );
        assert_eq!(
            named("namespaces", "g"),
            None,
            "g is labelled only on remote-1, which cannot be read"
        );
    }

    /// A remote that answered but could not be read (its token refused, its Secret not what
    /// attach recorded) was shown as unreachable, as one that does not answer: `status` tells
    /// them apart, and so does the page now.
    #[test]
    fn a_remote_not_read_is_not_unreachable() {
        let mut live = live();
        let refused = "the kubeconfig in secret cluster-remote-1 is refused: server mismatch";
        let remote = live.remotes.get_mut("remote-1").unwrap();
        remote.probe = Some(Err(Unread {
            error: refused.to_owned(),
            unanswered: false,
        }));
        remote.view = ViewState::Read(view::Source::View);
        let info = live.clusters_info(Timestamp::now());
        let reachability = |name: &str| {
            let c = info.iter().find(|c| c.name == name).unwrap();
            (c.reachability, c.error.as_deref())
        };
        assert_eq!(reachability("remote-1"), ("not-read", Some(refused)));
        assert_eq!(
            reachability("remote-2"),
            ("unreachable", Some("no answer within 3s"))
        );
        let matrix: serde_json::Value = serde_json::from_slice(&live.matrix_json(100)).unwrap();
        let a = &matrix["namespaces"][0];
        assert_eq!(a["name"], "a");
        assert_eq!(a["clusters"]["remote-1"]["state"], "not-read", "{a}");
        assert_eq!(a["clusters"]["remote-2"]["state"], "unreachable", "{a}");
        // Its services are read with the view credentials, not the refused ones.
        let services: serde_json::Value =
            serde_json::from_slice(&live.services_json("", 0, 10)).unwrap();
        assert_eq!(services["clusters"][1]["state"], "read", "{services}");
        assert_eq!(
            services["clusters"][2]["state"], "unreachable",
            "{services}"
        );
    }

    /// No view Secret and an Istio remote secret the dashboard's caller was refused: the page
    /// said only that the cluster had no view credentials, where `services` says the secret
    /// was refused.
    #[test]
    fn no_credentials_says_when_the_istio_secret_was_refused() {
        let mut live = live();
        let refused = "cannot read Secret istio-system/istio-remote-secret-remote-1: forbidden";
        live.remotes.get_mut("remote-1").unwrap().view = ViewState::NoCredentials {
            istio_unread: Some(refused.to_owned()),
        };
        let info = live.clusters_info(Timestamp::now());
        assert_eq!(info[0].view, "none");
        assert_eq!(
            info[0].view_hint.as_deref(),
            Some(
                format!(
                    "no view credentials, and {refused}; run `kubectl mesh attach <kubeconfig> \
                     --name remote-1 --services-view`"
                )
                .as_str()
            )
        );
        let services: serde_json::Value =
            serde_json::from_slice(&live.services_json("", 0, 10)).unwrap();
        let column = &services["clusters"][1];
        assert_eq!(column["state"], "no-credentials", "{column}");
        assert_eq!(column["error"], refused, "{column}");
    }

    /// A remote whose workloads were read with view credentials and whose watch of them fails
    /// now: its services column and its view say so, as for credentials that fail.
    #[test]
    fn a_remote_whose_view_watch_fails_cannot_be_read() {
        let mut live = live();
        let error = "Unauthorized (401)";
        let remote = live.remotes.get_mut("remote-1").unwrap();
        remote.view = ViewState::Read(view::Source::View);
        let services = |live: &mut Live| -> serde_json::Value {
            serde_json::from_slice(&live.services_json("", 0, 10)).unwrap()
        };
        assert_eq!(services(&mut live)["clusters"][1]["state"], "read");
        let remote = live.remotes.get_mut("remote-1").unwrap();
        let failed = Change::<wire::Service>::Failed(Unread {
            error: error.to_owned(),
            unanswered: false,
        });
        remote.workloads.record("Service", &failed);
        let json = services(&mut live);
        let column = &json["clusters"][1];
        assert_eq!(column["name"], "remote-1");
        assert_eq!(column["state"], "failed", "{column}");
        assert!(
            column["error"].as_str().unwrap().contains(error),
            "{column}"
        );
        let info = live.clusters_info(Timestamp::now());
        assert_eq!(info[0].name, "remote-1");
        assert_eq!(info[0].view, "failed");
        assert_eq!(info[0].view_hint.as_deref(), Some(error));
        // Listed again: read.
        let remote = live.remotes.get_mut("remote-1").unwrap();
        remote
            .workloads
            .record("Service", &Change::<wire::Service>::Listed);
        assert_eq!(services(&mut live)["clusters"][1]["state"], "read");
        assert_eq!(live.clusters_info(Timestamp::now())[0].view, "view");
    }

    /// A cluster being detached (its MeshCluster deleted, held by someone's finalizer) was
    /// shown as any other, its drift as one the webhook corrects: nothing syncs it any more.
    #[test]
    fn a_cluster_being_detached_is_marked_as_status_marks_it() {
        let mut live = live();
        let leaving = live.clusters.get_mut("remote-1").unwrap();
        leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
        let json: serde_json::Value = serde_json::from_slice(&json_of(&live.snapshot())).unwrap();
        let named = |clusters: &serde_json::Value, name: &str| {
            clusters
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("no {name} in {clusters}"))
        };
        let info = |name: &str| named(&json["clusters"], name);
        assert_eq!(info("remote-1")["detaching"], true, "{json}");
        assert_eq!(info("remote-2").get("detaching"), None, "{json}");
        // The matrix's columns, as `status -o json` writes them.
        let matrix = &json["matrix"];
        let column = |name: &str| named(&matrix["clusters"], name);
        assert_eq!(column("remote-1")["detaching"], true, "{matrix}");
        assert_eq!(column("remote-2").get("detaching"), None, "{matrix}");
        let status = live.matrix_of(&live.matrix_rows());
        assert_eq!(
            as_status_judges(matrix.clone()),
            serde_json::to_value(&status).unwrap()
        );
        // Its drift is not counted, as `status` does not count it.
        assert_eq!(matrix["drifted"], 0, "{matrix}");
        // Its cells still say what differs.
        assert_eq!(matrix["namespaces"][1]["name"], "b");
        assert_eq!(
            matrix["namespaces"][1]["clusters"]["remote-1"]["state"],
            "drifted"
        );
    }

    /// A remote named `primary` (an older version allowed the name): its services stay its
    /// own after a page of services is written, and the primary's stay the primary's.
    #[test]
    fn a_remote_named_primary_keeps_its_own_services() {
        let service = |name: &str| {
            let mut s = wire::Service::default();
            s.metadata.name = Some(name.to_owned());
            s.metadata.namespace = Some("shop".to_owned());
            s
        };
        let mut live = Live::new(SyncRule::default());
        live.clusters.insert(
            PRIMARY.to_owned(),
            cluster(PRIMARY, "https://10.0.0.1:6443", "2026-12-01T00:00:00Z"),
        );
        let mut remote = RemoteLive::default();
        remote.probe = Some(Ok(()));
        remote.namespaces = Some(Records::default());
        remote.view = ViewState::Read(view::Source::View);
        remote.workloads = WorkloadWatches::all_listed();
        live.primary_workloads = WorkloadWatches::all_listed();
        for name in ["remote-a", "remote-b"] {
            remote.facts.apply_service(&mut live.names, &service(name));
        }
        live.remotes.insert(PRIMARY.to_owned(), remote);
        live.primary_facts
            .apply_service(&mut live.names, &service("on-primary"));
        for _ in 0..2 {
            let json: serde_json::Value =
                serde_json::from_slice(&live.services_json("", 0, 10)).unwrap();
            assert_eq!(json["total"], 3, "{json}");
            assert_eq!(live.primary_facts.services.len(), 1);
            assert_eq!(live.remotes[PRIMARY].facts.services.len(), 2);
        }
    }
}
