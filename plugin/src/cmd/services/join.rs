//! The join of the clusters' facts into rows, one per (namespace, name): for the command's
//! report at once, and for the dashboard a page at a time.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    ClusterFacts, ClusterRead, Key, Name, ObjectKey, PodCounts, ReadState, ReadyEndpoints,
    ServiceCell, ServiceFacts, ServiceRow, SliceFacts,
};

/// Ready endpoints by service and pods by namespace of one cluster.
type Aggregate<'a> = (
    BTreeMap<(&'a str, &'a str), usize>,
    Option<BTreeMap<&'a str, PodCounts>>,
);

/// The rows of a report, made one at a time from the clusters' facts: the dashboard writes
/// them out as they come, a page at a time, rather than holding tens of thousands at once.
pub struct Join<'a> {
    read: Vec<(&'a str, &'a ClusterFacts)>,
    /// Whether `read[0]` is the primary's (the first cluster given, when it was read): the
    /// primary is known by its place, never by its name, which a remote may carry too.
    primary: bool,
    /// Per readable cluster; empty when each page aggregates its own namespaces.
    aggregates: Vec<Aggregate<'a>>,
}

/// Ready endpoints by service and pods by namespace of one cluster, of `namespaces` alone
/// when given.
fn aggregate<'a>(
    facts: &'a ClusterFacts,
    namespaces: Option<&BTreeSet<&'a Name>>,
) -> Aggregate<'a> {
    // The first key of a namespace in a map by (namespace, hash of the name).
    let from = |ns: &Name| (Name::clone(ns), 0);
    let mut ready: BTreeMap<(&str, &str), ReadyEndpoints<'a>> = BTreeMap::new();
    let mut add_slice = |((ns, _), slice): (&'a ObjectKey, &'a SliceFacts)| {
        ready.entry((ns, &slice.service)).or_default().add(slice);
    };
    match namespaces {
        None => facts.slices.iter().for_each(&mut add_slice),
        Some(set) => {
            for ns in set {
                facts
                    .slices
                    .range_from(&from(ns))
                    .take_while(|((n, _), _)| n == *ns)
                    .for_each(&mut add_slice);
            }
        }
    }
    let pods = facts.pods.as_ref().map(|pods| {
        let mut counts: BTreeMap<&str, PodCounts> = BTreeMap::new();
        let mut add_pod = |((ns, _), sidecar): (&'a ObjectKey, &'a bool)| {
            let c = counts.entry(ns).or_default();
            if *sidecar {
                c.with_proxy += 1;
            } else {
                c.without_proxy += 1;
            }
        };
        match namespaces {
            None => pods.iter().for_each(&mut add_pod),
            Some(set) => {
                for ns in set {
                    pods.range_from(&from(ns))
                        .take_while(|((n, _), _)| n == *ns)
                        .for_each(&mut add_pod);
                }
            }
        }
        counts
    });
    let ready = ready.into_iter().map(|(k, r)| (k, r.count())).collect();
    (ready, pods)
}

/// The clusters whose facts were read, by name, and whether the first of them is the
/// primary (the first of `clusters`).
fn readable(clusters: &[ClusterRead]) -> (Vec<(&str, &ClusterFacts)>, bool) {
    let read = clusters
        .iter()
        .filter_map(|c| match &c.state {
            ReadState::Read(facts) => Some((c.name.as_str(), facts)),
            _ => None,
        })
        .collect();
    let primary = matches!(
        clusters.first(),
        Some(ClusterRead {
            state: ReadState::Read(_),
            ..
        })
    );
    (read, primary)
}

impl<'a> Join<'a> {
    /// Ready endpoints and pod counts, aggregated once per readable cluster. `clusters`:
    /// the primary first.
    pub fn new(clusters: &'a [ClusterRead]) -> Self {
        let (read, primary) = readable(clusters);
        let aggregates = read
            .iter()
            .map(|(_, facts)| aggregate(facts, None))
            .collect();
        Self {
            read,
            primary,
            aggregates,
        }
    }

    /// The join of `clusters` for [`Join::page`] alone: each page aggregates the endpoints
    /// and pods of its own namespaces rather than every cluster's all at once.
    pub fn paged(clusters: &'a [ClusterRead]) -> Self {
        let (read, primary) = readable(clusters);
        Self {
            read,
            primary,
            aggregates: Vec::new(),
        }
    }

    /// The (namespace, name) of every readable cluster's services, sorted, each once: the
    /// clusters' sorted keys merged as they are read, not a set of tens of thousands of them.
    fn keys(&self) -> impl Iterator<Item = &'a Key> + '_ {
        let mut heads: Vec<_> = self
            .read
            .iter()
            .map(|&(_, facts)| facts.services.keys().peekable())
            .collect();
        std::iter::from_fn(move || {
            let next = heads.iter_mut().filter_map(|h| h.peek().copied()).min()?;
            for head in &mut heads {
                if head.peek() == Some(&next) {
                    head.next();
                }
            }
            Some(next)
        })
    }

    /// One row per (namespace, name), sorted.
    pub fn rows(&self) -> impl Iterator<Item = ServiceRow> + '_ {
        self.keys().map(|key| self.row(&self.aggregates, key))
    }

    /// Rows (namespace, name).
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.keys().next().is_none()
    }

    /// The rows whose `namespace/name` contains `filter` (all when empty), sorted: how many,
    /// and `limit` of them from `offset`.
    pub fn page(&self, filter: &str, offset: usize, limit: usize) -> (usize, Vec<ServiceRow>) {
        let (total, rows) = self.page_rows(filter, offset, limit);
        (total, rows.rows().collect())
    }

    /// [`Join::page`], its rows made one at a time as they are read or serialized.
    pub fn page_rows(
        &self,
        filter: &str,
        offset: usize,
        limit: usize,
    ) -> (usize, PageRows<'_, 'a>) {
        let mut text = String::new();
        let mut matches = |key: &&Key| {
            filter.is_empty() || {
                text.clear();
                text.push_str(&key.0);
                text.push('/');
                text.push_str(&key.1);
                text.contains(filter)
            }
        };
        let mut total = 0;
        let mut keys: Vec<&Key> = Vec::new();
        for key in self.keys().filter(|k| matches(k)) {
            if total >= offset && keys.len() < limit {
                keys.push(key);
            }
            total += 1;
        }
        let local = if self.aggregates.len() == self.read.len() {
            Vec::new()
        } else {
            let namespaces: BTreeSet<&Name> = keys.iter().map(|k| &k.0).collect();
            self.read
                .iter()
                .map(|(_, facts)| aggregate(facts, Some(&namespaces)))
                .collect()
        };
        (
            total,
            PageRows {
                join: self,
                local,
                keys,
            },
        )
    }

    fn row(&self, aggregates: &[Aggregate<'_>], key: &Key) -> ServiceRow {
        let present: Vec<&ServiceFacts> = self
            .read
            .iter()
            .filter_map(|(_, f)| f.services.get(key))
            .collect();
        let first = present[0];
        let ports_match = present.iter().all(|s| s.ports == first.ports);
        let type_ = if present.iter().all(|s| s.type_ == first.type_) {
            first.type_.to_string()
        } else {
            "mixed".to_owned()
        };
        let mut cells = self
            .read
            .iter()
            .zip(aggregates)
            .map(|((name, facts), (ready, pods))| {
                let here = facts.services.get(key);
                let cell = ServiceCell {
                    exists: here.is_some(),
                    type_: here.map(|s| s.type_.to_string()),
                    ports: here
                        .filter(|s| s.ports != first.ports)
                        .map(|s| s.ports.to_vec()),
                    ready_endpoints: ready.get(&(&*key.0, &*key.1)).copied().unwrap_or(0),
                    injected: facts
                        .injection
                        .as_ref()
                        .map(|inj| inj.contains_key(&*key.0)),
                    pods: pods
                        .as_ref()
                        .map(|p| p.get(&*key.0).copied().unwrap_or_default()),
                };
                ((*name).to_owned(), cell)
            });
        let primary = if self.primary {
            cells.next().map(|(_, cell)| cell)
        } else {
            None
        };
        ServiceRow {
            namespace: key.0.to_string(),
            name: key.1.to_string(),
            type_,
            ports: first.ports.to_vec(),
            ports_match,
            primary,
            clusters: cells.collect(),
        }
    }
}

/// A page of a [`Join`]'s rows, each made when it is read.
pub struct PageRows<'j, 'a> {
    join: &'j Join<'a>,
    /// The page's own aggregates, when the join has none.
    local: Vec<Aggregate<'a>>,
    keys: Vec<&'a Key>,
}

impl PageRows<'_, '_> {
    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = ServiceRow> + '_ {
        let aggregates = if self.local.is_empty() {
            &self.join.aggregates
        } else {
            &self.local
        };
        self.keys.iter().map(|k| self.join.row(aggregates, k))
    }
}

impl Serialize for PageRows<'_, '_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = serializer.serialize_seq(None)?;
        for row in self.rows() {
            seq.serialize_element(&row)?;
        }
        seq.end()
    }
}
