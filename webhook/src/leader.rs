//! Lease-based leader election (coordination.k8s.io/v1 `Lease` in the mesh namespace).
//!
//! Every replica serves the admission webhook; only the Lease holder runs the reconciler, so
//! that two replicas never race each other writing the same remote namespaces and status.
//!
//! The algorithm is client-go's: a replica takes a Lease that is free, or whose record has not
//! changed for a whole lease duration *as measured by the replica's own clock since it first
//! saw that record* (clocks of different nodes are never compared). Every write is a
//! conditional update on the resourceVersion just read, so two candidates cannot both win.
//!
//! A Lease found missing, once this replica has seen it exist, counts as such a record: the
//! replica creates it only once it has stayed missing for a whole lease duration by its clock
//! (the longer of its own and the one the holder it last saw wrote), counted from the round
//! that first found it missing. A Lease deleted from outside (`kubectl delete lease`, a partial
//! re-apply of the manifests) says nothing about whether its holder's term has ended, so a
//! leader that finds its Lease gone steps down too. Only a release (the holder ends its term
//! first, then frees the Lease) lets another replica take over at once. A replica that never
//! saw the Lease creates it at once, as client-go does: it cannot tell a Lease never created
//! from one deleted that very moment, and a fresh install must not wait a lease duration for
//! its first sync.
//!
//! A leader leads until the start of its last successful renewal plus `renew_deadline`, and
//! not a moment longer: every call to the apiserver is bounded by that instant, and the term
//! ends when it passes even while a call hangs on a half-open connection. A renewal starts
//! before the apiserver records it, and another replica counts a whole lease duration (longer
//! than the renew deadline) from when it sees that record, so the old term always ends before
//! a new leader can start. Each term is a [`CancellationToken`], cancelled when it ends, so
//! that work started under it (a sync, its writes) stops instead of outliving it.
//!
//! Hand-written on purpose: the maintained Rust lease managers (kubert's `LeaseManager`,
//! `kube-lease-manager`) judge expiry as the Lease's `renewTime` plus its duration against the
//! local wall clock, which trusts the clocks of two nodes to agree; a replica whose clock runs
//! ahead would take a Lease that is still held.

use std::{
    future::Future,
    hash::{BuildHasher, RandomState},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use mesh_core::failure::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the text, so it is not a `source` as well (it would print twice).
    #[error("cannot read lease {name}: {}", error_chain(.cause))]
    Get { name: String, cause: kube::Error },
    #[error("cannot write lease {name}: {}", error_chain(.cause))]
    Write { name: String, cause: kube::Error },
    #[error("no answer to the {call} of lease {name} before the renew deadline")]
    TimedOut { name: String, call: &'static str },
    #[error("the lease duration ({0:?}) must be at least 1s")]
    LeaseTooShort(Duration),
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration \
         ({lease_duration:?})"
    )]
    RenewDeadlineTooLong {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "the retry period ({retry_period:?}) must be positive and shorter than the renew \
         deadline ({renew_deadline:?})"
    )]
    RetryPeriodInvalid {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a Lease lasts and how a leader keeps it (client-go's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease stays valid after its last renewal, as the other replicas count it.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal; also the bound of every
    /// call to the apiserver.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// Refuses timings under which two replicas could lead at once (or a leader could never
    /// renew in time).
    pub fn validate(&self) -> Result<()> {
        let Self {
            lease_duration,
            renew_deadline,
            retry_period,
        } = *self;
        if lease_duration < Duration::from_secs(1) {
            return Err(Error::LeaseTooShort(lease_duration));
        }
        if renew_deadline >= lease_duration {
            return Err(Error::RenewDeadlineTooLong {
                renew_deadline,
                lease_duration,
            });
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(Error::RetryPeriodInvalid {
                retry_period,
                renew_deadline,
            });
        }
        Ok(())
    }

    /// The duration written in the Lease, in whole seconds, rounded up: others must never
    /// count a shorter lease than the one this replica keeps.
    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// Where the Lease lives, who we are, and the timing.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per process: a restarted pod must not believe it still holds its old Lease.
    pub identity: String,
    pub timing: LeaseTiming,
}

/// The pod name (POD_NAME, from the downward API), else the hostname, plus a random suffix.
/// Neither `<hostname>-<pid>` nor the pod name alone is unique: in a container the pid is
/// always 1, hostnames may repeat, and a restarted container keeps its pod's name yet must
/// not take its predecessor's Lease for its own.
pub fn default_identity() -> String {
    let pod = std::env::var("POD_NAME").ok();
    let host = std::env::var("HOSTNAME").ok().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
    });
    identity(pod.as_deref(), host.as_deref())
}

fn identity(pod: Option<&str>, host: Option<&str>) -> String {
    let base = [pod, host]
        .into_iter()
        .flatten()
        .find(|name| !name.is_empty())
        .unwrap_or("mesh-webhook");
    // RandomState is seeded from the OS once per process and stepped on every call.
    let random = RandomState::new().hash_one((std::process::id(), SystemTime::now()));
    format!("{base}-{:010x}", random & 0xff_ffff_ffff)
}

/// This replica's standing, as the reconciler reads it: `Some(term)` while it leads. The term
/// is cancelled the moment leadership ends.
pub type Leadership = watch::Receiver<Option<CancellationToken>>;

/// Runs the election until `shutdown`, then releases the Lease if held.
pub fn spawn(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (Leadership, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let task = tokio::spawn(run(api, settings, tx, shutdown));
    (rx, task)
}

/// A standing that always leads, in one term that never ends: for single-replica setups and
/// tests.
pub fn always_leader() -> Leadership {
    let (tx, rx) = watch::channel(Some(CancellationToken::new()));
    // Keep the sender alive forever: a closed channel would read as "changed" in loops.
    std::mem::forget(tx);
    rx
}

async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    tx: watch::Sender<Option<CancellationToken>>,
    shutdown: CancellationToken,
) {
    let lease = settings.name.as_str();
    let identity = settings.identity.as_str();
    let timing = settings.timing;
    let mut observed = Observed::default();
    // While leading: when the round that last renewed the Lease started.
    let mut renewed: Option<Instant> = None;
    loop {
        let started = Instant::now();
        if renew_overdue(renewed, started, timing.renew_deadline) {
            renewed = None;
            end_term(&tx, lease, identity, "renewal overdue");
        }
        let deadline = round_deadline(renewed, started, timing.renew_deadline);
        let round = tokio::select! {
            round = try_acquire_or_renew(&api, &settings, &mut observed, deadline) => round,
            () = shutdown.cancelled() => break,
        };
        match round {
            Ok(Held::Yes) => {
                if renewed.replace(started).is_none() {
                    tracing::info!(%lease, %identity, "acquired leadership");
                    tx.send_replace(Some(CancellationToken::new()));
                }
            }
            Ok(Held::No { reason }) => {
                if renewed.take().is_some() {
                    end_term(&tx, lease, identity, &reason);
                }
            }
            Err(error) => {
                tracing::warn!(%lease, %identity, error = %error, "lease election round failed");
            }
        }
        let wake = next_round(renewed, Instant::now(), timing);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if renewed.is_some() {
        end_term(&tx, lease, identity, "shutting down");
        release(&api, &settings).await;
    }
}

/// Ends the current term, if any: cancels its token and publishes "not leading".
fn end_term(tx: &watch::Sender<Option<CancellationToken>>, lease: &str, identity: &str, why: &str) {
    if let Some(term) = tx.send_replace(None) {
        term.cancel();
        tracing::warn!(%lease, %identity, reason = %why, "stepped down: not leader");
    }
}

/// Whether a leader whose last successful round started at `renewed` must step down at `now`
/// (`None`: not leading, nothing to step down from).
fn renew_overdue(renewed: Option<Instant>, now: Instant, renew_deadline: Duration) -> bool {
    renewed.is_some_and(|renewed| now.duration_since(renewed) >= renew_deadline)
}

/// The instant by which a round started at `started` must be answered: a leader's term
/// ends then; a candidate gives up on a round as long as a leader would wait.
fn round_deadline(renewed: Option<Instant>, started: Instant, renew_deadline: Duration) -> Instant {
    renewed.unwrap_or(started) + renew_deadline
}

/// When the next round starts: after the retry period, or earlier when a leader's term would
/// run out before then, so that it steps down on time.
fn next_round(renewed: Option<Instant>, now: Instant, timing: LeaseTiming) -> Instant {
    let retry = now + timing.retry_period;
    renewed.map_or(retry, |renewed| retry.min(renewed + timing.renew_deadline))
}

enum Held {
    Yes,
    /// Not this replica's: why (a leader steps down with it).
    No {
        reason: String,
    },
}

/// What the rounds wait on, by this replica's clock: the last record of the Lease seen held by
/// someone else, or the Lease seen missing, and when it was first seen so.
#[derive(Debug, Default)]
struct Observed {
    /// The record and the instant it was first seen; forgotten once a round acts on the Lease
    /// (creates it, renews it, takes it free).
    waiting_on: Option<(Record, Instant)>,
    /// The lease duration written by the last holder seen: a Lease deleted under it stays
    /// missing at least that long before this replica creates it anew.
    holder_duration: Option<Duration>,
    /// Whether this replica has seen the Lease exist.
    seen_lease: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Record {
    /// Held by someone else, at this resourceVersion.
    Held { resource_version: Option<String> },
    /// No Lease at all.
    Missing,
}

impl Observed {
    /// Notes `record`, seen at `now`; whether it has stood unchanged for `duration` since it
    /// was first seen (never on the round that first sees it).
    fn stood_for(&mut self, record: Record, now: Instant, duration: Duration) -> bool {
        match &self.waiting_on {
            Some((seen, since)) if *seen == record => now.duration_since(*since) >= duration,
            _ => {
                self.waiting_on = Some((record, now));
                false
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create,
    Renew,
    Acquire,
    Follow {
        holder: String,
    },
    /// The Lease is missing, not yet for a whole lease duration.
    AwaitMissing,
}

/// Decides what to do with the Lease as just read (`None`: it does not exist).
fn decide(
    lease: Option<&Lease>,
    identity: &str,
    observed: &mut Observed,
    now: Instant,
    default_duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        // Never seen: created at once, as client-go does. A first start cannot tell a Lease
        // never created from one deleted a moment ago, but waiting a duration at every first
        // start (each install, each new mesh) would delay the first sync for the sake of an
        // outside deletion at that very moment.
        if !observed.seen_lease {
            return Step::Create;
        }
        // Deleted from outside, its holder may lead still: missing counts as a record just
        // seen, and the Lease is created once it has stayed missing for a whole duration.
        let duration = observed
            .holder_duration
            .map_or(default_duration, |d| d.max(default_duration));
        if observed.stood_for(Record::Missing, now, duration) {
            // Whatever comes of the create, a Lease missing again is a new record.
            observed.waiting_on = None;
            return Step::Create;
        }
        return Step::AwaitMissing;
    };
    observed.seen_lease = true;
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() || holder == identity {
        observed.waiting_on = None;
        return if holder.is_empty() {
            Step::Acquire
        } else {
            Step::Renew
        };
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    observed.holder_duration = Some(duration);
    let record = Record::Held {
        resource_version: lease.metadata.resource_version.clone(),
    };
    // A record not seen before starts the count: its holder is alive as of now, by our clock.
    if observed.stood_for(record, now, duration) {
        Step::Acquire
    } else {
        Step::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// One call to the apiserver, given up at `deadline`.
async fn bounded<T>(
    deadline: Instant,
    name: &str,
    call: &'static str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>> {
    tokio::time::timeout_at(deadline, request)
        .await
        .map_err(|_| Error::TimedOut {
            name: name.to_owned(),
            call,
        })
}

/// The Lease `name` (`None`: there is none), read by `deadline`.
async fn read(api: &Api<Lease>, name: &str, deadline: Instant) -> Result<Option<Lease>> {
    bounded(deadline, name, "read", api.get_opt(name))
        .await?
        .map_err(|cause| Error::Get {
            name: name.to_owned(),
            cause,
        })
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
    deadline: Instant,
) -> Result<Held> {
    let name = &settings.name;
    let current = read(api, name, deadline).await?;
    let now = Timestamp::now();
    let duration = settings.timing.lease_seconds();
    let step = decide(
        current.as_ref(),
        &settings.identity,
        observed,
        Instant::now(),
        settings.timing.lease_duration,
    );
    let lease = match (step, current) {
        (Step::Follow { holder }, _) => {
            return Ok(Held::No {
                reason: format!("{holder} holds the lease"),
            });
        }
        (Step::AwaitMissing, _) => {
            tracing::debug!(lease = %name, "the lease is missing; waiting a lease duration before creating it");
            return Ok(Held::No {
                reason: "the lease is missing".to_owned(),
            });
        }
        (Step::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let write = bounded(deadline, name, "create", async {
                api.create(&PostParams::default(), &lease).await
            });
            return held(write.await?, name);
        }
        (Step::Renew, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration);
            lease
        }
        (Step::Acquire, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = Some(settings.identity.clone());
            spec.lease_duration_seconds = Some(duration);
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            lease
        }
        // decide() only renews or acquires a Lease that exists.
        (Step::Renew | Step::Acquire, None) => {
            return Ok(Held::No {
                reason: "the lease is missing".to_owned(),
            });
        }
    };
    let write = bounded(deadline, name, "update", async {
        api.replace(name, &PostParams::default(), &lease).await
    });
    held(write.await?, name)
}

fn held(write: Result<Lease, kube::Error>, name: &str) -> Result<Held> {
    match write {
        Ok(_) => Ok(Held::Yes),
        // Someone else wrote first (409 on replace, AlreadyExists on create): they won.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Held::No {
            reason: "another replica holds the lease".to_owned(),
        }),
        Err(cause) => Err(Error::Write {
            name: name.to_owned(),
            cause,
        }),
    }
}

/// Hands the Lease over at shutdown so the next replica need not wait for it to expire.
/// Bounded like a round: a hung primary must not hold up the shutdown.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let name = &settings.name;
    let deadline = Instant::now() + settings.timing.renew_deadline;
    let result = async {
        let current = read(api, name, deadline).await?;
        let Some(mut lease) = current else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        bounded(deadline, name, "update", async {
            api.replace(name, &PostParams::default(), &lease).await
        })
        .await?
        .map_err(|cause| Error::Write {
            name: name.clone(),
            cause,
        })?;
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(lease = %name, identity = %settings.identity, "released leadership")
        }
        Err(error) => tracing::warn!(lease = %name, error = %error, "cannot release the lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, version: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("mesh-webhook".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn errors_print_each_cause_once() {
        use mesh_core::fixtures::{assert_each_cause_prints_once, refused_connection};
        let name = "mesh-webhook".to_owned();
        assert_each_cause_prints_once(&Error::Get {
            name: name.clone(),
            cause: refused_connection(),
        });
        assert_each_cause_prints_once(&Error::Write {
            name,
            cause: refused_connection(),
        });
    }

    #[test]
    fn creates_missing_and_takes_free_lease() {
        let mut seen = Observed::default();
        let now = Instant::now();
        // Never seen by this replica: created at once.
        assert_eq!(decide(None, "me", &mut seen, now, D), Step::Create);
        let free = lease(None, "1", 15);
        assert_eq!(decide(Some(&free), "me", &mut seen, now, D), Step::Acquire);
        let released = lease(Some(""), "2", 1);
        assert_eq!(
            decide(Some(&released), "me", &mut seen, now, D),
            Step::Acquire
        );
    }

    #[test]
    fn renews_own_lease() {
        let mut seen = Observed::default();
        let mine = lease(Some("me"), "5", 15);
        assert_eq!(
            decide(Some(&mine), "me", &mut seen, Instant::now(), D),
            Step::Renew
        );
    }

    /// What "me" decides on seeing `lease` `secs` seconds after `t0`.
    fn decide_at(lease: &Lease, seen: &mut Observed, t0: Instant, secs: u64) -> Step {
        decide(Some(lease), "me", seen, t0 + Duration::from_secs(secs), D)
    }

    /// "me" seeing, at `t0`, the Lease `theirs` that "other" holds: it follows (`follow`).
    fn following_other() -> (Observed, Instant, Lease, Step) {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let theirs = lease(Some("other"), "7", 15);
        let follow = Step::Follow {
            holder: "other".into(),
        };
        assert_eq!(decide_at(&theirs, &mut seen, t0, 0), follow);
        (seen, t0, theirs, follow)
    }

    #[test]
    fn takes_over_only_after_a_full_duration_without_change() {
        let (mut seen, t0, theirs, follow) = following_other();
        assert_eq!(decide_at(&theirs, &mut seen, t0, 14), follow);
        // The holder renewed: the clock starts again from this observation.
        let renewed = lease(Some("other"), "8", 15);
        let t1 = t0 + Duration::from_secs(14);
        assert_eq!(decide_at(&renewed, &mut seen, t1, 0), follow);
        assert_eq!(decide_at(&renewed, &mut seen, t1, 10), follow);
        assert_eq!(decide_at(&renewed, &mut seen, t1, 15), Step::Acquire);
    }

    /// What "me" decides on finding no Lease `secs` seconds after `t0`.
    fn decide_missing_at(seen: &mut Observed, t0: Instant, secs: u64) -> Step {
        decide(None, "me", seen, t0 + Duration::from_secs(secs), D)
    }

    /// What "me" decides on finding no Lease at each of `secs` after `t0`, in turn: waiting
    /// until the last, which creates it.
    fn creates_missing_only_at_last(seen: &mut Observed, t0: Instant, secs: &[u64]) {
        let steps: Vec<Step> = secs
            .iter()
            .map(|s| decide_missing_at(seen, t0, *s))
            .collect();
        let mut expected: Vec<Step> = secs[1..].iter().map(|_| Step::AwaitMissing).collect();
        expected.push(Step::Create);
        assert_eq!(steps, expected, "missing at {secs:?}s");
    }

    /// A Lease deleted from outside while "other" leads: its term may run on, so the Lease is
    /// created only once it has been missing for a whole lease duration by our clock.
    #[test]
    fn creates_a_deleted_lease_only_after_a_full_duration_missing() {
        let (mut seen, t0, theirs, follow) = following_other();
        assert_eq!(decide_at(&theirs, &mut seen, t0, 2), follow);
        // Deleted: counted from the first round that finds it missing.
        let t1 = t0 + Duration::from_secs(4);
        creates_missing_only_at_last(&mut seen, t1, &[0, 14, 15]);
        // Missing again after that create (ours failed, or someone deleted it again): a new
        // record, counted anew.
        let t2 = t1 + Duration::from_secs(16);
        assert_eq!(decide_missing_at(&mut seen, t2, 0), Step::AwaitMissing);
        assert_eq!(decide_missing_at(&mut seen, t2, 14), Step::AwaitMissing);
        // The holder wrote a longer duration than ours: waited as long as it counts.
        let mut seen = Observed::default();
        let long = lease(Some("other"), "9", 30);
        assert_eq!(decide_at(&long, &mut seen, t0, 0), follow);
        creates_missing_only_at_last(&mut seen, t1, &[0, 29, 30]);
    }

    /// A leader that finds its Lease deleted does not recreate it at once (it steps down), nor
    /// does a Lease missing before its term count towards a later deletion.
    #[test]
    fn a_leader_whose_lease_is_deleted_waits_too() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        assert_eq!(decide_missing_at(&mut seen, t0, 0), Step::Create);
        let mine = lease(Some("me"), "3", 15);
        assert_eq!(decide_at(&mine, &mut seen, t0, 16), Step::Renew);
        creates_missing_only_at_last(&mut seen, t0, &[40, 54, 55]);
        // Seen missing, then held: the count of the missing Lease starts again.
        let mut seen = Observed {
            seen_lease: true,
            ..Observed::default()
        };
        assert_eq!(decide_missing_at(&mut seen, t0, 0), Step::AwaitMissing);
        let theirs = lease(Some("other"), "4", 15);
        assert!(matches!(
            decide_at(&theirs, &mut seen, t0, 10),
            Step::Follow { .. }
        ));
        creates_missing_only_at_last(&mut seen, t0, &[16, 30, 31]);
    }

    #[test]
    fn uses_the_lease_own_duration() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let short = lease(Some("other"), "9", 3);
        assert!(matches!(
            decide_at(&short, &mut seen, t0, 0),
            Step::Follow { .. }
        ));
        assert_eq!(decide_at(&short, &mut seen, t0, 3), Step::Acquire);
    }

    #[test]
    fn steps_down_when_renewal_is_overdue() {
        let t0 = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!renew_overdue(
            Some(t0),
            t0 + Duration::from_secs(9),
            deadline
        ));
        assert!(renew_overdue(
            Some(t0),
            t0 + Duration::from_secs(10),
            deadline
        ));
        assert!(!renew_overdue(None, t0, deadline), "not leading");
    }

    #[test]
    fn every_call_of_a_round_is_bounded_by_the_term() {
        let t0 = Instant::now();
        let renew = Duration::from_secs(10);
        // A leader's round may not outlast its term, however late in the term it starts.
        let started = t0 + Duration::from_secs(7);
        assert_eq!(round_deadline(Some(t0), started, renew), t0 + renew);
        // A candidate gives up on a round after as long as a leader would wait.
        assert_eq!(round_deadline(None, started, renew), started + renew);
    }

    #[test]
    fn a_leader_wakes_up_in_time_to_step_down() {
        let timing = LeaseTiming::default();
        let t0 = Instant::now();
        // Early in the term: the retry period.
        assert_eq!(next_round(Some(t0), t0, timing), t0 + timing.retry_period);
        // A failed round late in the term: wake at its end, not a retry period after it.
        let late = t0 + timing.renew_deadline - Duration::from_millis(100);
        assert_eq!(
            next_round(Some(t0), late, timing),
            t0 + timing.renew_deadline
        );
        assert_eq!(next_round(None, late, timing), late + timing.retry_period);
    }

    /// The default timing and a short one (as tests of the whole webhook use).
    fn timings() -> [LeaseTiming; 2] {
        [
            LeaseTiming::default(),
            LeaseTiming {
                lease_duration: Duration::from_secs(4),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(500),
            },
        ]
    }

    /// The guarantee of the whole module: whenever a follower may take the Lease over, the
    /// old leader's term has already ended, however long its last renewal took to be recorded.
    #[test]
    fn a_term_ends_before_anyone_else_may_take_over() {
        for timing in timings() {
            timing.validate().expect("valid timing");
            let step = Duration::from_millis(50);
            let t0 = Instant::now();
            // The renewal round starts at t0; the apiserver records it `recorded` later.
            for recorded in [Duration::ZERO, step, timing.renew_deadline - step] {
                let mut seen = Observed::default();
                let record = lease(Some("old"), "41", timing.lease_seconds());
                let mut now = t0 + recorded;
                let taken_over = loop {
                    let step_now = decide(Some(&record), "new", &mut seen, now, D);
                    if step_now == Step::Acquire {
                        break now;
                    }
                    now += step;
                };
                assert!(
                    renew_overdue(Some(t0), taken_over, timing.renew_deadline),
                    "{timing:?}, recorded after {recorded:?}: taken over at {:?} while the \
                     old term runs",
                    taken_over - t0
                );
            }
        }
    }

    /// The same guarantee when the Lease is deleted from outside right after the old leader's
    /// renewal was recorded: whether the candidate had seen that record or only the Lease
    /// missing since, it creates the Lease only once the old term has ended.
    #[test]
    fn a_term_ends_before_anyone_may_create_a_deleted_lease() {
        for timing in timings() {
            let step = Duration::from_millis(50);
            let t0 = Instant::now();
            for recorded in [Duration::ZERO, step, timing.renew_deadline - step] {
                // Seen as a record or as missing since: either way the Lease existed for this
                // replica (one never seen is created at once, as client-go does).
                for saw_the_record in [true, false] {
                    let mut seen = Observed::default();
                    let record = lease(Some("old"), "41", timing.lease_seconds());
                    let mut now = t0 + recorded;
                    if saw_the_record {
                        let first = decide(Some(&record), "new", &mut seen, now, D);
                        assert!(matches!(first, Step::Follow { .. }));
                    } else {
                        seen.seen_lease = true;
                    }
                    // Deleted at once: every later round finds it missing.
                    let created = loop {
                        let step_now = decide(None, "new", &mut seen, now, timing.lease_duration);
                        if step_now == Step::Create {
                            break now;
                        }
                        now += step;
                    };
                    assert!(
                        renew_overdue(Some(t0), created, timing.renew_deadline),
                        "{timing:?}, recorded after {recorded:?}, record seen: \
                         {saw_the_record}: created at {:?} while the old term runs",
                        created - t0
                    );
                }
            }
        }
    }

    #[test]
    fn ending_a_term_cancels_it_once() {
        let term = CancellationToken::new();
        let (tx, rx) = watch::channel(Some(term.clone()));
        end_term(&tx, "mesh-webhook", "me", "test");
        assert!(term.is_cancelled());
        assert!(rx.borrow().is_none());
        // Not leading: nothing to end.
        end_term(&tx, "mesh-webhook", "me", "test");
        assert!(rx.borrow().is_none());
    }

    #[test]
    fn timing_keeps_the_renew_deadline_inside_the_lease() {
        LeaseTiming::default().validate().expect("defaults");
        let ok = LeaseTiming {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
        };
        ok.validate().expect("short timing");
        let err = |timing: LeaseTiming| timing.validate().expect_err("invalid").to_string();
        assert_eq!(
            err(LeaseTiming {
                renew_deadline: ok.lease_duration,
                ..ok
            }),
            "the renew deadline (4s) must be shorter than the lease duration (4s)"
        );
        assert!(
            err(LeaseTiming {
                retry_period: ok.renew_deadline,
                ..ok
            })
            .starts_with("the retry period (2s) must be positive")
        );
        assert!(
            err(LeaseTiming {
                retry_period: Duration::ZERO,
                ..ok
            })
            .starts_with("the retry period (0ns)")
        );
        assert_eq!(
            err(LeaseTiming {
                lease_duration: Duration::from_millis(900),
                renew_deadline: Duration::from_millis(500),
                retry_period: Duration::from_millis(100),
            }),
            "the lease duration (900ms) must be at least 1s"
        );
    }

    #[test]
    fn the_recorded_lease_duration_is_never_shorter_than_ours() {
        let timing = |ms| LeaseTiming {
            lease_duration: Duration::from_millis(ms),
            ..LeaseTiming::default()
        };
        assert_eq!(timing(15_000).lease_seconds(), 15);
        assert_eq!(timing(1_500).lease_seconds(), 2);
        assert_eq!(timing(1_001).lease_seconds(), 2);
    }

    #[test]
    fn two_default_identities_differ() {
        assert_ne!(default_identity(), default_identity());
        assert_ne!(
            identity(Some("mesh-webhook-0"), None),
            identity(Some("mesh-webhook-0"), None)
        );
    }

    #[test]
    fn identity_is_the_pod_name_else_the_hostname_and_a_suffix() {
        let id = identity(Some("mesh-webhook-7d9f-abcde"), Some("host"));
        let suffix = id
            .strip_prefix("mesh-webhook-7d9f-abcde-")
            .expect("pod name first");
        assert_eq!(suffix.len(), 10);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert!(identity(Some(""), Some("node-a")).starts_with("node-a-"));
        assert!(identity(None, None).starts_with("mesh-webhook-"));
    }
}
