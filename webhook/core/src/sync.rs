//! THE sync engine: make one remote's namespaces carry the primary's managed labels.
//!
//! Used by the reconciler for every attached cluster and by `kubectl mesh sync` from the CLI,
//! so both apply exactly the same rule ([`SyncRule::planner`]) the same way:
//! - one LIST of the remote's namespaces ([`sync_remote`]), or what a current watch of them
//!   keeps ([`sync_watched`], the reconciler's periodic sync), then only the namespaces that
//!   differ are written; a converged remote costs zero writes;
//! - every write is a JSON patch that tests the resourceVersion it was computed from; on a
//!   conflict that namespace is read again and re-planned once;
//! - the primary is read *after* the remote, and again after a conflict ([`PrimaryView`]): a
//!   webhook push that lands between the two reads changes the remote's resourceVersion, so a
//!   plan made from an older primary does not overwrite it. Unless the primary, read again,
//!   has not stored the change yet (its request is still being admitted): the reconciler lays
//!   its pushes in flight over the primary for that moment; a one-shot `kubectl mesh sync` may
//!   undo such a push, which the reconciler brings back once the change is stored;
//! - namespaces missing on the remote are reported, never created;
//! - a write the remote does not answer (unreachable, timed out) ends the writing: the remote
//!   is gone for every namespace, not for that one ([`SyncReport::stopped_at`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta},
};

use crate::{
    failure::{Failure, error_chain},
    labels::{LabelDiff, Labels, SyncRule, Verdict},
    list,
    write::{Desired, Known, Written, write_managed_labels},
};

/// Remote namespaces written concurrently: enough to converge a cluster with hundreds of
/// namespaces in a few round trips, few enough not to look like a flood to its apiserver.
const WRITE_CONCURRENCY: usize = 8;

/// A list of namespaces a sync could not make, the remote's or the primary's. The cause is in
/// the text, so it is not a `source` as well (it would print twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot list the {whose}'s namespaces: {}", error_chain(.call))]
pub struct Error {
    whose: &'static str,
    /// The call that failed.
    pub call: kube::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The list of the remote's namespaces failed.
    pub fn remote(call: kube::Error) -> Self {
        Self {
            whose: "remote",
            call,
        }
    }

    /// The list of the primary's namespaces failed.
    pub fn primary(call: kube::Error) -> Self {
        Self {
            whose: "primary",
            call,
        }
    }

    /// How the call failed, for conditions and backoff.
    pub fn failure(&self) -> Failure {
        Failure::of(&self.call)
    }
}

/// Where a sync reads the primary's namespaces. It is asked after the remote was read, and
/// again for one namespace after a write conflict ([`PrimaryView::namespace_again`]), so that
/// it answers with what is true *now*.
/// It is asked one namespace at a time: a sync never copies the whole primary.
pub trait PrimaryView: Sync {
    /// One primary namespace, if it exists.
    fn namespace(&self, name: &str) -> Option<Namespace>;

    /// The names of the primary namespaces that carry managed labels of `rule`.
    fn labelled(&self, rule: &SyncRule) -> Vec<String>;

    /// One primary namespace, after a write conflict showed the remote moved on since the plan
    /// (most likely a webhook push of a newer primary edit). A view kept current (a watch's
    /// store) answers as [`PrimaryView::namespace`]; one read once must read it again.
    fn namespace_again(
        &self,
        name: &str,
    ) -> impl Future<Output = kube::Result<Option<Namespace>>> + Send {
        std::future::ready(Ok(self.namespace(name)))
    }
}

/// A fixed set: a primary that cannot change during the sync (none at all, a test's).
impl PrimaryView for BTreeMap<String, Namespace> {
    fn namespace(&self, name: &str) -> Option<Namespace> {
        self.get(name).cloned()
    }

    fn labelled(&self, rule: &SyncRule) -> Vec<String> {
        self.iter()
            .filter(|(_, ns)| !rule.desired(Some(ns)).is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Whether [`sync_remote`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Write the differences.
    #[default]
    Apply,
    /// Compute and report the differences, write nothing.
    DryRun,
    /// Write the differences, and keep in the report only the first [`KEPT_CHANGES`] changes
    /// written (the counts stay whole): a reconciler tells corrections by their count past a
    /// few, and a cold sync of thousands of namespaces on many remotes at once would otherwise
    /// hold every change of every remote.
    Reconcile,
}

/// The changes written that a [`SyncMode::Reconcile`] report keeps.
pub const KEPT_CHANGES: usize = 32;

/// What happened to one remote namespace whose managed labels differed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeStatus {
    /// Written.
    Applied,
    /// Would be written ([`SyncMode::DryRun`]).
    Planned,
}

/// One remote namespace that differed from the primary.
#[derive(Debug)]
pub struct NamespaceChange {
    /// The labels set and removed (or that would be). After a conflict, the re-planned diff.
    pub diff: LabelDiff,
    pub status: ChangeStatus,
}

/// A remote namespace that could not be written.
#[derive(Clone, Debug)]
pub struct NamespaceError {
    pub namespace: String,
    /// The change that was attempted.
    pub diff: LabelDiff,
    pub failure: Failure,
    pub message: String,
}

/// The result of one sync of one remote.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub mode: SyncMode,
    /// Namespaces that differed, in name order ([`SyncMode::Reconcile`]: the first
    /// [`KEPT_CHANGES`] written).
    pub changes: Vec<NamespaceChange>,
    /// Namespaces whose managed labels already equalled the primary's (including any found
    /// fixed by someone else when re-read after a conflict).
    pub in_sync: usize,
    /// Primary namespaces with managed labels that do not exist on the remote.
    pub missing: Vec<String>,
    /// Namespaces that differed and could not be written, in name order. One the remote did
    /// not answer stopped the sync ([`SyncReport::stopped_at`]).
    pub errors: Vec<NamespaceError>,
    /// Namespaces that differed and were not written, or whose write was abandoned, because
    /// the sync stopped: zero unless [`SyncReport::stopped_at`] says why.
    pub unwritten: usize,
    /// The namespace whose unanswered write stopped the sync ([`SyncReport::stopped_at`]).
    pub stopped_in: Option<String>,
    /// Write requests that succeeded.
    pub writes: u32,
    /// Remote namespaces the cluster's scope leaves alone, in name order.
    pub out_of_scope: Vec<String>,
}

impl SyncReport {
    /// Whether the remote needed (or, dry, would need) no write and nothing failed.
    pub fn is_converged(&self) -> bool {
        self.changes.is_empty() && self.errors.is_empty()
    }

    /// Namespaces carrying the primary's labels once this sync is done (for a dry run: the
    /// ones that already do).
    pub fn in_sync_after(&self) -> usize {
        self.in_sync + self.writes as usize
    }

    /// The changes actually written.
    pub fn applied(&self) -> impl Iterator<Item = &NamespaceChange> {
        self.changes
            .iter()
            .filter(|c| c.status == ChangeStatus::Applied)
    }

    /// The write the remote did not answer, nor a read asked after it, after which this sync
    /// wrote nothing more (see [`SyncReport::unwritten`]): the remote failed as a whole, as a
    /// failed LIST does, though what it wrote before is in the report. Also in
    /// [`SyncReport::errors`].
    pub fn stopped_at(&self) -> Option<&NamespaceError> {
        let namespace = self.stopped_in.as_deref()?;
        self.errors.iter().find(|e| e.namespace == namespace)
    }
}

/// Writes the remote refused for good ([`Written::Failed`]'s `refused_at`), by namespace: a sync
/// given them sends none of them again while the remote namespace (its resourceVersion) and
/// the change (from the primary's labels) are what they were, and reports each refused as it
/// was. Whoever keeps them forgets them when something else may change the answer (new
/// credentials, a retry of the refused writes, the periodic full resync).
#[derive(Debug, Default)]
pub struct Refusals(BTreeMap<String, Refusal>);

#[derive(Debug)]
struct Refusal {
    /// The resourceVersion of the remote namespace whose patch was refused.
    resource_version: String,
    error: NamespaceError,
}

impl Refusals {
    /// The refusal `diff` of remote namespace `ns` would meet again.
    fn of(&self, ns: &Namespace, diff: &LabelDiff) -> Option<&NamespaceError> {
        let refusal = self.0.get(&diff.namespace)?;
        let unchanged = ns.metadata.resource_version.as_deref()
            == Some(refusal.resource_version.as_str())
            && refusal.error.diff == *diff;
        unchanged.then_some(&refusal.error)
    }
}

/// The primary's namespaces keyed by name: the `primary` argument of [`sync_remote`] for a
/// one-shot sync (the reconciler reads its watch cache instead). Read in pages and trimmed as
/// they come, as a remote's are: a big primary over a slow link, read for every remote at
/// once, must not pass the request timeout on each.
pub async fn primary_namespaces(primary: &Client) -> Result<BTreeMap<String, Namespace>> {
    let api: Api<Namespace> = Api::all(primary.clone());
    let kept = list::in_pages(&api, &ListParams::default(), |ns| {
        (ns.name_any(), primary_trimmed(ns.metadata))
    })
    .await
    .map_err(Error::primary)?;
    Ok(kept.into_iter().collect())
}

/// A primary namespace as the CLI reads it: what [`SyncRule::desired`] reads (labels,
/// deletionTimestamp), its name, and its UID (`kubectl mesh check` tells a primary by its
/// kube-system's). No rule is at hand, so every label is kept: they are few.
fn primary_trimmed(meta: ObjectMeta) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            labels: meta.labels,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// Syncs one remote against the primary's namespaces, as `primary` shows them.
///
/// Fails only when the remote's namespaces cannot be listed; errors writing single namespaces
/// are in [`SyncReport::errors`], and a remote that stops answering part-way is in
/// [`SyncReport::stopped_at`].
pub async fn sync_remote(
    rule: &SyncRule,
    primary: &impl PrimaryView,
    remote: &Client,
    mode: SyncMode,
) -> Result<SyncReport> {
    sync_listed(rule, primary, remote, mode, &mut Refusals::default()).await
}

/// [`sync_remote`], sending none of the writes `refusals` holds, which then holds those this
/// sync was refused ([`Refusals`]).
pub async fn sync_listed(
    rule: &SyncRule,
    primary: &impl PrimaryView,
    remote: &Client,
    mode: SyncMode,
    refusals: &mut Refusals,
) -> Result<SyncReport> {
    let sync = Syncing::new(rule, primary, remote, mode);
    let listed = list_namespaces(&sync.api, rule).await?;
    Ok(sync_seen(sync, listed, refusals).await)
}

/// [`sync_remote`] for a one-shot sync (`kubectl mesh sync`): the primary's namespaces are
/// listed right after the remote's, never before, so that a label set on the primary (and
/// pushed to the remote) while the sync runs is not undone from an older list.
pub async fn sync_from_primary(
    rule: &SyncRule,
    primary: &Client,
    remote: &Client,
    mode: SyncMode,
) -> Result<SyncReport> {
    let listed = list_namespaces(&Api::all(remote.clone()), rule).await?;
    let primary = ListedPrimary {
        namespaces: primary_namespaces(primary).await?,
        api: Api::all(primary.clone()),
    };
    let sync = Syncing::new(rule, &primary, remote, mode);
    Ok(sync_seen(sync, listed, &mut Refusals::default()).await)
}

/// The primary as a one-shot sync has it: listed once, so a namespace whose write met a
/// conflict is read from the primary again (a push of a newer edit is what moves a remote on).
struct ListedPrimary {
    namespaces: BTreeMap<String, Namespace>,
    api: Api<Namespace>,
}

impl PrimaryView for ListedPrimary {
    fn namespace(&self, name: &str) -> Option<Namespace> {
        self.namespaces.namespace(name)
    }

    fn labelled(&self, rule: &SyncRule) -> Vec<String> {
        self.namespaces.labelled(rule)
    }

    async fn namespace_again(&self, name: &str) -> kube::Result<Option<Namespace>> {
        self.api.get_opt(name).await
    }
}

/// [`sync_remote`] from the namespaces a watch keeps (`seen`: each with the resourceVersion its
/// write is conditional on and at least the labels of [`SyncRule::keys_read`]) instead of a
/// full LIST; one LIST of a single namespace first, so that credentials revoked or a remote gone
/// since the watch last spoke fail the sync as the full LIST would have. The writes
/// `refusals` holds are not sent, as in [`sync_listed`].
pub async fn sync_watched(
    rule: &SyncRule,
    primary: &impl PrimaryView,
    remote: &Client,
    seen: impl IntoIterator<Item = Namespace>,
    mode: SyncMode,
    refusals: &mut Refusals,
) -> Result<SyncReport> {
    let sync = Syncing::new(rule, primary, remote, mode);
    sync.api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(Error::remote)?;
    Ok(sync_seen(sync, seen, refusals).await)
}

/// What a sync of one remote works with, whichever way the remote's namespaces were read.
struct Syncing<'a, P> {
    rule: &'a SyncRule,
    primary: &'a P,
    /// The remote's namespaces.
    api: Api<Namespace>,
    mode: SyncMode,
}

impl<'a, P: PrimaryView> Syncing<'a, P> {
    fn new(rule: &'a SyncRule, primary: &'a P, remote: &Client, mode: SyncMode) -> Self {
        Self {
            rule,
            primary,
            api: Api::all(remote.clone()),
            mode,
        }
    }
}

/// [`sync_remote`] without its LIST: `seen` is every namespace of the remote as just read by
/// other means (a watch known to be current), each with the resourceVersion its write will be
/// conditional on and at least the labels the rule reads ([`SyncRule::keys_read`]).
async fn sync_seen(
    sync: Syncing<'_, impl PrimaryView>,
    seen: impl IntoIterator<Item = Namespace>,
    refusals: &mut Refusals,
) -> SyncReport {
    let Syncing {
        rule,
        primary,
        api,
        mode,
    } = sync;
    let mut report = SyncReport {
        mode,
        ..SyncReport::default()
    };
    let mut planner = rule.planner();
    let (mut in_sync, mut out_of_scope, mut differing) = (0, Vec::new(), 0);
    let mut written = 0;
    // Refused as they were, not sent: the remote would answer the same.
    let mut held = Vec::new();
    let mut refused = BTreeMap::new();
    {
        let remembered = &*refusals;
        // Each change is written as the plan finds it, a few at a time: neither the plan nor
        // the namespaces it changes are held whole, which a cold sync of thousands of
        // namespaces would do once per remote at the same time. The primary is read after the
        // remote was (see the module documentation).
        let mut changes = seen.into_iter().filter_map(|ns| {
            match planner.consider(|name| primary.namespace(name), &ns) {
                Verdict::Seen => None,
                Verdict::OutOfScope(name) => {
                    out_of_scope.push(name);
                    None
                }
                Verdict::InSync(_) => {
                    in_sync += 1;
                    None
                }
                Verdict::Differs(diff) => {
                    if let Some(error) = remembered.of(&ns, &diff) {
                        held.push(error.clone());
                        return None;
                    }
                    differing += 1;
                    Some((diff, ns))
                }
            }
        });
        if mode == SyncMode::DryRun {
            report.changes = changes
                .map(|(diff, _)| NamespaceChange {
                    diff,
                    status: ChangeStatus::Planned,
                })
                .collect();
        } else {
            let mut writes = stream::iter(changes.by_ref())
                .map(|(diff, ns)| write(&api, rule, primary, diff, ns))
                .buffer_unordered(WRITE_CONCURRENCY);
            while let Some(outcome) = writes.next().await {
                let unanswered = outcome.unanswered().map(str::to_owned);
                if let Some(refusal) = outcome.refusal() {
                    refused.insert(outcome.namespace.clone(), refusal);
                }
                report.record(outcome);
                written += 1;
                // A write can go unanswered for one namespace alone (a remote admission
                // webhook that hangs on some); the remote answering nothing more cannot.
                if let Some(namespace) = unanswered
                    && !answers(&api).await
                {
                    // Every other write would wait out its timeout or be refused as well.
                    // Dropping the stream abandons the writes in flight.
                    report.stopped_in = Some(namespace);
                    break;
                }
            }
            drop(writes);
            // The rest is only planned: the counts (and the names missing, which the planner
            // knows once it saw every namespace) stay whole.
            changes.for_each(drop);
        }
    }
    if mode != SyncMode::DryRun {
        report.unwritten = differing - written;
        // What is neither held nor refused again was written, or changed, or not planned.
        for error in &held {
            if let Some((name, refusal)) = refusals.0.remove_entry(&error.namespace) {
                refused.insert(name, refusal);
            }
        }
        refusals.0 = refused;
    }
    report.errors.append(&mut held);
    report.in_sync += in_sync;
    report.out_of_scope.append(&mut out_of_scope);
    report
        .missing
        .append(&mut planner.missing(primary.labelled(rule)));
    report
        .changes
        .sort_by(|a, b| a.diff.namespace.cmp(&b.diff.namespace));
    report.errors.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    report.missing.sort();
    report.out_of_scope.sort();
    report
}

impl Outcome {
    /// The namespace, when the remote did not answer its write.
    fn unanswered(&self) -> Option<&str> {
        matches!(self.written, Written::Failed { failure, .. } if !failure.answered())
            .then_some(self.namespace.as_str())
    }

    /// What to remember of a write the remote refused for good.
    fn refusal(&self) -> Option<Refusal> {
        let Written::Failed {
            failure,
            message,
            diff: Some(diff),
            refused_at: Some(refused_at),
        } = &self.written
        else {
            return None;
        };
        Some(Refusal {
            resource_version: refused_at.clone(),
            error: NamespaceError {
                namespace: self.namespace.clone(),
                diff: diff.clone(),
                failure: *failure,
                message: message.clone(),
            },
        })
    }
}

/// Whether the remote answers a read of one namespace (its answer may be a refusal).
async fn answers(api: &Api<Namespace>) -> bool {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(error) => Failure::of(&error).answered(),
    }
}

impl SyncReport {
    /// Counts how the write of one differing namespace ended.
    fn record(&mut self, outcome: Outcome) {
        let Outcome {
            namespace,
            written,
            wanted,
            ..
        } = outcome;
        match written {
            Written::Applied { diff } => {
                self.writes += 1;
                if self.mode != SyncMode::Reconcile || self.changes.len() < KEPT_CHANGES {
                    self.changes.push(NamespaceChange {
                        diff,
                        status: ChangeStatus::Applied,
                    });
                }
            }
            Written::AlreadyInSync => self.in_sync += 1,
            // Its labels moved out of the selector between the read and the write.
            Written::OutOfScope => self.out_of_scope.push(namespace),
            Written::Missing => {
                if wanted {
                    self.missing.push(namespace);
                }
            }
            Written::Failed {
                failure,
                message,
                diff,
                ..
            } => self.errors.push(NamespaceError {
                diff: diff.unwrap_or_else(|| LabelDiff {
                    namespace: namespace.clone(),
                    ..LabelDiff::default()
                }),
                namespace,
                failure,
                message,
            }),
        }
    }
}

/// Every namespace of a remote, read in pages ([`list::in_pages`]) and trimmed at once to what
/// a sync reads ([`trimmed_for`]): a remote with thousands of namespaces is never held with the
/// annotations, field-ownership records and status that are most of a Namespace's bytes. One
/// that no apiserver could hold ([`could_be_real`]) is not kept.
async fn list_namespaces(api: &Api<Namespace>, rule: &SyncRule) -> Result<Vec<Namespace>> {
    let keys = rule.keys_read();
    real_namespaces(api, |meta| trimmed_for(&keys, meta))
        .await
        .map_err(Error::remote)
}

/// Every namespace `api` lists that an apiserver could hold ([`could_be_real`]), read in pages
/// within the bounds of [`list::in_pages`], each made at once by `keep` (from its metadata)
/// into what the caller holds: how a sync reads a remote, and the plugin too.
pub async fn real_namespaces<T>(
    api: &Api<Namespace>,
    mut keep: impl FnMut(ObjectMeta) -> T,
) -> kube::Result<Vec<T>> {
    let kept = list::in_pages(api, &ListParams::default(), |ns| {
        could_be_real(&ns.metadata).then(|| keep(ns.metadata))
    })
    .await?;
    Ok(kept.into_iter().flatten().collect())
}

/// The longest namespace name and label value an apiserver accepts.
pub const MAX_NAME: usize = 63;

/// Whether an apiserver could hold a namespace of `meta`: its name is a DNS-1123 label and
/// no label value is longer than one may be. A remote whose server is not a real apiserver
/// could otherwise make each kept namespace as large as it pleases.
pub fn could_be_real(meta: &ObjectMeta) -> bool {
    let name_ok = meta.name.as_deref().is_some_and(|name| {
        let inner = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let bytes = name.as_bytes();
        (1..=MAX_NAME).contains(&bytes.len())
            && bytes.first().copied().is_some_and(inner)
            && bytes.last().copied().is_some_and(inner)
            && bytes.iter().all(|&c| inner(c) || c == b'-')
    });
    name_ok && (meta.labels.iter().flatten()).all(|(_, value)| value.len() <= MAX_NAME)
}

/// A remote namespace as a sync needs it: its name, the resourceVersion a write is conditional
/// on, and the labels among `keys` ([`SyncRule::keys_read`]).
fn trimmed_for(keys: &BTreeSet<String>, meta: ObjectMeta) -> Namespace {
    let labels = meta.labels.map(|labels| {
        labels
            .into_iter()
            .filter(|(key, _)| keys.contains(key))
            .collect()
    });
    Namespace {
        metadata: ObjectMeta {
            name: meta.name,
            resource_version: meta.resource_version,
            labels,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// How the write of one differing namespace ended, with the namespace it was about.
struct Outcome {
    namespace: String,
    written: Written,
    /// Whether the primary wanted labels there, for a namespace found missing.
    wanted: bool,
}

async fn write(
    api: &Api<Namespace>,
    rule: &SyncRule,
    primary: &impl PrimaryView,
    diff: LabelDiff,
    current: Namespace,
) -> Outcome {
    let name = diff.namespace.clone();
    // The plan's diff is what the writer recomputes from the same namespace and primary; the
    // primary is asked again only after a conflict.
    let desired = FromPrimary {
        rule,
        primary,
        name: &name,
    };
    let known = Known::Read(Box::new(current));
    let written = write_managed_labels(api, rule, &name, desired, known).await;
    match &written {
        Written::Applied { diff } => {
            tracing::info!(namespace = %name, change = %diff.describe(), "corrected remote labels");
        }
        Written::Failed { message, .. } => {
            tracing::warn!(namespace = %name, error = %message, "cannot correct remote labels");
        }
        Written::AlreadyInSync | Written::Missing | Written::OutOfScope => {}
    }
    let wanted = matches!(written, Written::Missing) && !desired.labels().is_empty();
    Outcome {
        namespace: name,
        written,
        wanted,
    }
}

/// The labels remote namespace `name` must carry, as `primary` shows its namesake.
struct FromPrimary<'a, P> {
    rule: &'a SyncRule,
    primary: &'a P,
    name: &'a str,
}

// By hand: a derive would ask `P: Copy` of the view it only borrows.
impl<P> Clone for FromPrimary<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for FromPrimary<'_, P> {}

impl<P: PrimaryView> Desired for FromPrimary<'_, P> {
    fn labels(&self) -> Labels {
        self.rule
            .desired(self.primary.namespace(self.name).as_ref())
    }

    async fn again(&self) -> kube::Result<Labels> {
        let namespace = self.primary.namespace_again(self.name).await?;
        Ok(self.rule.desired(namespace.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::{FakeApiserver, State as FakeApiserverState};
    use crate::fixtures::{
        assert_each_cause_prints_once, by_name, labelled, labels, refused_connection,
    };

    #[test]
    fn errors_print_each_cause_once() {
        assert_each_cause_prints_once(&Error::remote(refused_connection()));
        assert_each_cause_prints_once(&Error::primary(refused_connection()));
    }

    /// The primary's namespaces by name, each with exactly the labels given.
    fn primary(entries: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, Namespace> {
        by_name(entries.iter().map(|(name, pairs)| labelled(name, pairs)))
    }

    /// `total` namespaces, injected on the primary and plain on the remote: names, remote,
    /// primary.
    fn injected_on_primary_only(
        total: usize,
    ) -> (Vec<String>, FakeApiserver, BTreeMap<String, Namespace>) {
        let names: Vec<String> = (0..total).map(|n| format!("ns-{n:05}")).collect();
        let remote = names.iter().fold(FakeApiserver::default(), |remote, name| {
            remote.with_namespace(name, &[])
        });
        let labelled: Vec<(&str, &[(&str, &str)])> = names
            .iter()
            .map(|name| (name.as_str(), &[("istio-injection", "enabled")][..]))
            .collect();
        let primary = primary(&labelled);
        (names, remote, primary)
    }

    /// One applying sync of `remote` with the default rule; panics if it fails.
    async fn apply_default_rule(
        primary: &BTreeMap<String, Namespace>,
        remote: &FakeApiserver,
    ) -> SyncReport {
        sync_remote(
            &SyncRule::default(),
            primary,
            &remote.client(),
            SyncMode::Apply,
        )
        .await
        .expect("sync")
    }

    /// A hook of the fake apiserver: `edit` of namespace `shop` on the primary, pushed to the
    /// remote at once, as the webhook does while a sync runs.
    fn pushed_meanwhile(
        primary: &FakeApiserver,
        remote: &FakeApiserver,
        edit: fn(&mut serde_json::Value),
    ) -> Box<dyn FnOnce() + Send> {
        let (primary, remote) = (primary.clone(), remote.clone());
        Box::new(move || {
            primary.edit("shop", edit);
            remote.edit("shop", edit);
        })
    }

    /// `kubectl mesh sync` of `remote` from `primary` with the default rule; panics if it fails.
    async fn one_shot_sync(primary: &FakeApiserver, remote: &FakeApiserver) -> SyncReport {
        sync_from_primary(
            &SyncRule::default(),
            &primary.client(),
            &remote.client(),
            SyncMode::Apply,
        )
        .await
        .expect("sync")
    }

    /// `kubectl mesh sync` listed the primary once before it reached the remotes: a label set
    /// on the primary in between, and pushed to a remote, was removed there again.
    #[tokio::test]
    async fn a_one_shot_sync_keeps_a_label_set_on_the_primary_while_it_runs() {
        let primary = FakeApiserver::default().with_namespace("shop", &[]);
        let remote = FakeApiserver::default().with_namespace("shop", &[]);
        let enable = |ns: &mut serde_json::Value| {
            ns["metadata"]["labels"]["istio-injection"] = "enabled".into();
        };
        remote.state().before_next_list = Some(pushed_meanwhile(&primary, &remote, enable));

        let report = one_shot_sync(&primary, &remote).await;
        assert_eq!(remote.labels("shop")["istio-injection"], "enabled");
        assert_eq!((report.writes, report.in_sync), (0, 1));
    }

    /// After a conflict the one-shot sync re-planned from the primary it had listed before: a
    /// newer primary label, pushed to the remote in between, was overwritten with the old one.
    #[tokio::test]
    async fn a_conflict_re_plans_from_the_primary_as_it_is_now() {
        let primary =
            FakeApiserver::default().with_namespace("shop", &[("istio-injection", "enabled")]);
        let remote = FakeApiserver::default().with_namespace("shop", &[]);
        let canary = |ns: &mut serde_json::Value| {
            ns["metadata"]["labels"] = serde_json::json!({"istio.io/rev": "canary"});
        };
        remote.state().before_next_patch = Some(pushed_meanwhile(&primary, &remote, canary));

        let report = one_shot_sync(&primary, &remote).await;
        let canary = BTreeMap::from([("istio.io/rev".to_owned(), "canary".to_owned())]);
        assert_eq!(remote.labels("shop"), canary);
        assert_eq!((report.writes, report.in_sync), (0, 1), "{report:?}");
    }

    /// The primary was read in one request, whole: on a big primary over a slow link, past the
    /// request timeout.
    #[tokio::test]
    async fn reads_a_large_primary_in_pages_keeping_what_is_read() {
        let total = 2 * list::PAGE as usize + 1;
        let injected = [("istio-injection", "enabled")];
        let primary = (0..total).fold(FakeApiserver::default(), |primary, n| {
            primary.with_namespace(&format!("ns-{n:05}"), &injected)
        });

        let read = primary_namespaces(&primary.client()).await.expect("list");
        assert_eq!(read.len(), total, "every page was read");
        assert_eq!(primary.state().lists, 3);
        let last = format!("ns-{:05}", total - 1);
        let kept = ObjectMeta {
            name: Some(last.clone()),
            uid: Some(format!("uid-{last}")),
            labels: Some(labels(&injected)),
            ..ObjectMeta::default()
        };
        assert_eq!(read[&last].metadata, kept);
    }

    #[tokio::test]
    async fn reads_a_large_remote_in_pages() {
        let total = 2 * list::PAGE as usize + 1;
        let (names, remote, primary) = injected_on_primary_only(total);

        let report = apply_default_rule(&primary, &remote).await;
        assert_eq!(report.changes.len(), total, "every page was read");
        assert!(report.missing.is_empty(), "{:?}", report.missing);
        assert_eq!(remote.state().lists, 3);
        assert_eq!(
            remote.labels(&names[total - 1])["istio-injection"],
            "enabled"
        );
    }

    /// A remote whose server is not a real apiserver could list namespaces as large as it
    /// pleases (a stand-in: no apiserver holds such a name): a sync keeps none of them.
    #[tokio::test]
    async fn a_namespace_no_apiserver_could_hold_is_not_kept() {
        let huge = "x".repeat(64 * 1024);
        let long_value = "v".repeat(MAX_NAME + 1);
        let injected = [("istio-injection", "enabled")];
        let remote = FakeApiserver::default()
            .with_namespace(&huge, &injected)
            .with_namespace("shop", &[("istio.io/rev", long_value.as_str())])
            .with_namespace("cart", &injected);
        let report = apply_default_rule(&primary(&[]), &remote).await;
        let written: Vec<&str> = (report.changes.iter())
            .map(|c| c.diff.namespace.as_str())
            .collect();
        assert_eq!(written, ["cart"]);
    }

    #[tokio::test]
    async fn writes_begin_before_the_remote_is_read_whole() {
        // A cold sync of many remotes at once held every remote's plan and changed namespaces
        // whole before its first write; each change must be written as it is found instead.
        let total = 10 * WRITE_CONCURRENCY;
        let (_, remote, primary) = injected_on_primary_only(total);
        let as_read: Vec<Namespace> = remote
            .state()
            .namespaces
            .values()
            .map(|ns| serde_json::from_value(ns.clone()).expect("a namespace"))
            .collect();
        let writes_when_read = std::sync::Mutex::new(Vec::new());
        let seen = as_read.into_iter().inspect(|_| {
            let writes = remote.state().writes;
            writes_when_read.lock().expect("lock").push(writes);
        });

        let rule = SyncRule::default();
        let refusals = &mut Refusals::default();
        let client = remote.client();
        let sync = Syncing::new(&rule, &primary, &client, SyncMode::Apply);
        let report = sync_seen(sync, seen, refusals).await;
        assert_eq!(report.writes as usize, total);
        let writes_when_read = writes_when_read.into_inner().expect("lock");
        assert!(
            writes_when_read[total - 1] >= total - WRITE_CONCURRENCY - 1,
            "writes done when each namespace was read: {writes_when_read:?}"
        );
    }

    #[tokio::test]
    async fn a_reconciling_sync_counts_every_change_and_keeps_a_few() {
        let total = 3 * KEPT_CHANGES;
        let (_, remote, primary) = injected_on_primary_only(total);
        let rule = SyncRule::default();
        let report = sync_remote(&rule, &primary, &remote.client(), SyncMode::Reconcile)
            .await
            .expect("sync");
        assert_eq!(report.writes as usize, total);
        assert_eq!(report.in_sync_after(), total);
        assert_eq!(report.changes.len(), KEPT_CHANGES);
        assert!(report.applied().count() == KEPT_CHANGES && !report.is_converged());
        assert_eq!(remote.state().writes, total);
    }

    #[tokio::test]
    async fn converges_then_makes_zero_writes() {
        let remote = FakeApiserver::default()
            .with_namespace("a", &[("istio-injection", "disabled"), ("team", "x")])
            .with_namespace("b", &[("istio.io/rev", "old")])
            .with_namespace("c", &[]);
        let primary = primary(&[
            ("a", &[("istio-injection", "enabled")]),
            ("b", &[]),
            ("c", &[]),
            ("d", &[("istio-injection", "enabled")]),
        ]);
        let rule = SyncRule::default();

        let dry = sync_remote(&rule, &primary, &remote.client(), SyncMode::DryRun)
            .await
            .expect("sync");
        assert_eq!(dry.changes.len(), 2);
        assert!(
            dry.changes
                .iter()
                .all(|c| c.status == ChangeStatus::Planned)
        );
        assert_eq!(remote.state().writes, 0, "dry run never writes");

        let report = sync_remote(&rule, &primary, &remote.client(), SyncMode::Apply)
            .await
            .expect("sync");
        let changed: Vec<_> = report
            .applied()
            .map(|c| c.diff.namespace.as_str())
            .collect();
        assert_eq!(changed, vec!["a", "b"]);
        assert_eq!(report.writes, 2);
        assert_eq!(report.missing, vec!["d".to_owned()]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(remote.labels("a")["istio-injection"], "enabled");
        assert_eq!(remote.labels("a")["team"], "x");
        assert!(!remote.labels("b").contains_key("istio.io/rev"));
        assert!(
            !remote.state().namespaces.contains_key("d"),
            "never created"
        );

        let again = sync_remote(&rule, &primary, &remote.client(), SyncMode::Apply)
            .await
            .expect("sync");
        assert!(again.is_converged(), "{again:?}");
        assert_eq!(again.writes, 0);
        assert_eq!(remote.state().writes, 2);
    }

    #[tokio::test]
    async fn conflict_re_reads_and_re_plans_once() {
        let remote = FakeApiserver::default().with_namespace("a", &[]);
        remote.state().interfere = vec![("team".into(), "y".into())];
        let primary = primary(&[("a", &[("istio-injection", "enabled")])]);
        let report = apply_default_rule(&primary, &remote).await;
        assert_eq!(report.writes, 1);
        assert_eq!(remote.state().patches, 2);
        assert_eq!(remote.labels("a")["istio-injection"], "enabled");
        assert_eq!(remote.labels("a")["team"], "y");
    }

    #[tokio::test]
    async fn one_shot_sync_from_two_clusters() {
        let primary_api = FakeApiserver::default()
            .with_namespace("a", &[("istio-injection", "enabled")])
            .with_namespace("b", &[]);
        let remote = FakeApiserver::default().with_namespace("a", &[]);
        let primary = primary_namespaces(&primary_api.client())
            .await
            .expect("list");
        assert_eq!(primary.keys().collect::<Vec<_>>(), ["a", "b"]);
        let rule = SyncRule::default();
        let (primary, remote_client) = (primary_api.client(), remote.client());
        let report = sync_from_primary(&rule, &primary, &remote_client, SyncMode::Apply)
            .await
            .expect("sync");
        assert_eq!(report.in_sync_after(), 1);
        assert_eq!(remote.labels("a")["istio-injection"], "enabled");
    }

    #[tokio::test]
    async fn a_remote_gone_dark_mid_sync_stops_the_writes() {
        // The fake stops answering after a few writes: a real apiserver cannot be made to go
        // dark between two writes of one sync.
        let total = 10 * WRITE_CONCURRENCY;
        let (_, remote, primary) = injected_on_primary_only(total);
        remote.state().dark_after_writes = Some(WRITE_CONCURRENCY);

        let report = apply_default_rule(&primary, &remote).await;
        let stopped = report.stopped_at().expect("the sync says it stopped");
        assert_eq!(stopped.failure, Failure::Unreachable);
        assert_eq!(report.errors.len(), 1, "one failure, not one per namespace");
        assert_eq!(report.writes as usize, WRITE_CONCURRENCY);
        assert_eq!(report.unwritten, total - WRITE_CONCURRENCY - 1);
        // At most the writes already in flight when the first went unanswered.
        let refused = remote.state().refused;
        assert!(refused <= WRITE_CONCURRENCY, "{refused} writes tried after");
    }

    #[tokio::test]
    async fn a_namespace_refused_or_timed_out_alone_does_not_stop_the_sync() {
        type Refuse = fn(&mut FakeApiserverState, String);
        let cases: [(&str, Refuse, Failure); 2] = [
            (
                "forbidden",
                |s, ns| {
                    s.forbidden_namespaces.insert(ns);
                },
                Failure::Forbidden,
            ),
            // Unanswered, yet the remote still answers: a hanging webhook of its own.
            (
                "timed out",
                |s, ns| {
                    s.timed_out_namespaces.insert(ns);
                },
                Failure::Unreachable,
            ),
        ];
        for (case, refuse, failure) in cases {
            let total = 4 * WRITE_CONCURRENCY;
            let (names, remote, primary) = injected_on_primary_only(total);
            refuse(&mut remote.state(), names[1].clone());

            let report = apply_default_rule(&primary, &remote).await;
            assert_eq!(report.writes as usize, total - 1, "{case}");
            assert_eq!(report.errors.len(), 1, "{case}");
            assert_eq!(report.errors[0].failure, failure, "{case}");
            assert!(
                report.stopped_at().is_none() && report.unwritten == 0,
                "{case}"
            );
        }
    }

    /// A write the remote refuses for good (an admission policy) is not sent again while
    /// neither the remote namespace nor the primary's labels change; one that went unanswered
    /// is.
    #[tokio::test]
    async fn a_lasting_refusal_is_not_sent_again_until_something_changes() {
        let remote = FakeApiserver::default()
            .with_namespace("app", &[])
            .with_namespace("slow", &[])
            .with_namespace("web", &[]);
        remote.state().forbidden_namespaces.insert("app".to_owned());
        remote
            .state()
            .timed_out_namespaces
            .insert("slow".to_owned());
        let enabled = &[("istio-injection", "enabled")][..];
        let mut primary = primary(&[("app", enabled), ("slow", enabled), ("web", enabled)]);
        let refusals = &mut Refusals::default();
        let mut sync = async |primary: &BTreeMap<String, Namespace>| {
            let rule = SyncRule::default();
            let mode = SyncMode::Apply;
            let report = sync_listed(&rule, primary, &remote.client(), mode, refusals).await;
            let report = report.expect("sync");
            let failed = report
                .errors
                .iter()
                .map(|e| (e.namespace.clone(), e.failure));
            (failed.collect::<Vec<_>>(), remote.state().patches)
        };
        let failed = vec![
            ("app".to_owned(), Failure::Forbidden),
            ("slow".to_owned(), Failure::Unreachable),
        ];
        assert_eq!(sync(&primary).await, (failed.clone(), 3));
        assert_eq!(
            sync(&primary).await,
            (failed.clone(), 4),
            "slow alone is written again, app is refused as it was"
        );
        remote.edit("app", |ns| {
            ns["metadata"]["annotations"] = serde_json::json!({"edited": "1"})
        });
        assert_eq!(sync(&primary).await, (failed.clone(), 6), "app changed");
        assert_eq!(sync(&primary).await, (failed.clone(), 7));
        primary.insert(
            "app".to_owned(),
            labelled("app", &[("istio.io/rev", "canary")]),
        );
        assert_eq!(
            sync(&primary).await,
            (failed, 9),
            "the primary's labels changed"
        );
    }

    /// A refusal met after a conflict is of the namespace as read again: the next sync, which
    /// lists it at that version, does not send the refused write again.
    #[tokio::test]
    async fn a_refusal_after_a_conflict_is_of_the_version_read_again() {
        let remote = FakeApiserver::default().with_namespace("app", &[]);
        let writer = remote.clone();
        // Someone writes app before the first patch, and a policy refuses the second.
        remote.state().before_next_patch = Some(Box::new(move || {
            let edited = serde_json::json!({"edited": "1"});
            writer.edit("app", |ns| ns["metadata"]["annotations"] = edited);
            let policy = writer.clone();
            writer.state().before_next_patch = Some(Box::new(move || {
                policy.state().forbidden_namespaces.insert("app".to_owned());
            }));
        }));
        let primary = primary(&[("app", &[("istio-injection", "enabled")])]);
        let refusals = &mut Refusals::default();
        for _ in 0..2 {
            let (rule, client) = (SyncRule::default(), remote.client());
            let report = sync_listed(&rule, &primary, &client, SyncMode::Apply, refusals).await;
            assert_eq!(report.expect("sync").errors[0].failure, Failure::Forbidden);
        }
        assert_eq!(remote.state().patches, 2, "refused once, not sent again");
    }

    #[tokio::test]
    async fn forbidden_list_is_an_error() {
        let remote = FakeApiserver::default();
        remote.state().forbidden = true;
        let err = sync_remote(
            &SyncRule::default(),
            &BTreeMap::new(),
            &remote.client(),
            SyncMode::Apply,
        )
        .await
        .expect_err("forbidden");
        assert_eq!(err.failure(), Failure::Forbidden);
    }
}
