//! Lease-based leader election (coordination.k8s.io/v1 `Lease` in the mesh namespace).
//!
//! Every replica serves the admission webhook; only the Lease holder runs the reconciler, so
//! that two replicas never race each other writing the same remote namespaces and status.
//!
//! The algorithm is client-go's: a replica takes a Lease that is free, or whose record has not
//! changed for a whole lease duration *as measured by the replica's own clock since it first
//! saw that record* (clocks of different nodes are never compared). Every write is a
//! conditional update on the resourceVersion just read, so two candidates cannot both win. A
//! leader that fails to renew for `renew_deadline` (shorter than the lease duration) steps
//! down before anybody else may take over.
//!
//! Hand-written on purpose: the maintained Rust lease managers (kubert's `LeaseManager`,
//! `kube-lease-manager`) judge expiry as the Lease's `renewTime` plus its duration against the
//! local wall clock, which trusts the clocks of two nodes to agree; a replica whose clock runs
//! ahead would take a Lease that is still held.

use std::time::Duration;

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

use mesh_core::remote::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read lease {name}: {}", error_chain(.source))]
    Get {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write lease {name}: {}", error_chain(.source))]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Get { .. } => "lease_get",
            Self::Write { .. } => "lease_write",
        }
    }
}

/// Where the Lease lives, who we are, and the timing (client-go's defaults).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per process: a restarted pod must not believe it still holds its old Lease.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `<hostname>-<pid>`: the pod name in Kubernetes, made unique per process so that a
/// restarted container never mistakes its predecessor's Lease for its own.
pub fn default_identity() -> String {
    let host = ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "mesh-webhook".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs the election until `shutdown`, then releases the Lease if held. The receiver is `true`
/// while this process leads.
pub fn spawn(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let task = tokio::spawn(run(api, settings, tx, shutdown));
    (rx, task)
}

/// A receiver that always says "leader", for single-replica setups and tests.
pub fn always_leader() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    // Keep the sender alive forever: a closed channel would read as "changed" in loops.
    std::mem::forget(tx);
    rx
}

async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let lease = settings.name.as_str();
    let identity = settings.identity.as_str();
    let mut observed = Observed::default();
    let mut last_renewed: Option<Instant> = None;
    loop {
        let leading = *tx.borrow();
        match try_acquire_or_renew(&api, &settings, &mut observed).await {
            Ok(Held::Yes) => {
                last_renewed = Some(Instant::now());
                if !leading {
                    tracing::info!(%lease, %identity, "acquired leadership");
                    tx.send_replace(true);
                }
            }
            Ok(Held::No { holder }) => {
                last_renewed = None;
                if leading {
                    tracing::warn!(%lease, %identity, %holder, "lost leadership");
                    tx.send_replace(false);
                }
            }
            Err(error) => {
                tracing::warn!(%lease, %identity, error = %error, "lease election round failed");
                if leading && renew_overdue(last_renewed, Instant::now(), settings.renew_deadline) {
                    tracing::warn!(%lease, %identity, "renewal overdue, stepping down");
                    tx.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.retry_period) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if tx.send_replace(false) {
        release(&api, &settings).await;
    }
}

/// Whether a leader whose last successful renewal was at `last` must step down at `now`.
fn renew_overdue(last: Option<Instant>, now: Instant, renew_deadline: Duration) -> bool {
    last.is_none_or(|last| now.duration_since(last) >= renew_deadline)
}

enum Held {
    Yes,
    No { holder: String },
}

/// The last record of the Lease we saw held by someone else, and when we first saw it.
#[derive(Debug, Default)]
struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create,
    Renew,
    Acquire,
    Follow { holder: String },
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
        return Step::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() {
        return Step::Acquire;
    }
    if holder == identity {
        return Step::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let version = lease.metadata.resource_version.clone();
    match observed.since {
        Some(since) if observed.resource_version == version => {
            if now.duration_since(since) >= duration {
                Step::Acquire
            } else {
                Step::Follow {
                    holder: holder.to_owned(),
                }
            }
        }
        _ => {
            // A new record: the holder is alive as of now, by our clock.
            *observed = Observed {
                resource_version: version,
                since: Some(now),
            };
            Step::Follow {
                holder: holder.to_owned(),
            }
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
) -> Result<Held> {
    let name = &settings.name;
    let current = api.get_opt(name).await.map_err(|source| Error::Get {
        name: name.clone(),
        source,
    })?;
    let now = Timestamp::now();
    let duration = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let step = decide(
        current.as_ref(),
        &settings.identity,
        observed,
        Instant::now(),
        settings.lease_duration,
    );
    let write = match (step, current) {
        (Step::Follow { holder }, _) => return Ok(Held::No { holder }),
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
            api.create(&PostParams::default(), &lease).await
        }
        (Step::Renew, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration);
            api.replace(name, &PostParams::default(), &lease).await
        }
        (Step::Acquire, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = Some(settings.identity.clone());
            spec.lease_duration_seconds = Some(duration);
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            api.replace(name, &PostParams::default(), &lease).await
        }
        // decide() only renews or acquires a Lease that exists.
        (Step::Renew | Step::Acquire, None) => {
            return Ok(Held::No {
                holder: String::new(),
            });
        }
    };
    match write {
        Ok(_) => Ok(Held::Yes),
        // Someone else wrote first (409 on replace, AlreadyExists on create): they won.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Held::No {
            holder: "another replica".to_owned(),
        }),
        Err(source) => Err(Error::Write {
            name: name.clone(),
            source,
        }),
    }
}

/// Hands the Lease over at shutdown so the next replica need not wait for it to expire.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let name = &settings.name;
    let result = async {
        let Some(mut lease) = api.get_opt(name).await.map_err(|source| Error::Get {
            name: name.clone(),
            source,
        })?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        api.replace(name, &PostParams::default(), &lease)
            .await
            .map_err(|source| Error::Write {
                name: name.clone(),
                source,
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
    fn creates_missing_and_takes_free_lease() {
        let mut seen = Observed::default();
        let now = Instant::now();
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

    #[test]
    fn takes_over_only_after_a_full_duration_without_change() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let theirs = lease(Some("other"), "7", 15);
        let follow = Step::Follow {
            holder: "other".into(),
        };
        assert_eq!(decide(Some(&theirs), "me", &mut seen, t0, D), follow);
        assert_eq!(
            decide(
                Some(&theirs),
                "me",
                &mut seen,
                t0 + Duration::from_secs(14),
                D
            ),
            follow
        );
        // The holder renewed: the clock starts again from this observation.
        let renewed = lease(Some("other"), "8", 15);
        let t1 = t0 + Duration::from_secs(14);
        assert_eq!(decide(Some(&renewed), "me", &mut seen, t1, D), follow);
        assert_eq!(
            decide(
                Some(&renewed),
                "me",
                &mut seen,
                t1 + Duration::from_secs(10),
                D
            ),
            follow
        );
        assert_eq!(
            decide(
                Some(&renewed),
                "me",
                &mut seen,
                t1 + Duration::from_secs(15),
                D
            ),
            Step::Acquire
        );
    }

    #[test]
    fn uses_the_lease_own_duration() {
        let mut seen = Observed::default();
        let t0 = Instant::now();
        let short = lease(Some("other"), "9", 3);
        assert!(matches!(
            decide(Some(&short), "me", &mut seen, t0, D),
            Step::Follow { .. }
        ));
        assert_eq!(
            decide(
                Some(&short),
                "me",
                &mut seen,
                t0 + Duration::from_secs(3),
                D
            ),
            Step::Acquire
        );
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
        assert!(renew_overdue(None, t0, deadline));
    }

    #[test]
    fn defaults_keep_renew_deadline_inside_the_lease() {
        let settings = LeaseSettings::new("ns", "mesh-webhook", "me");
        assert!(settings.renew_deadline < settings.lease_duration);
        assert!(settings.retry_period < settings.renew_deadline);
    }
}
