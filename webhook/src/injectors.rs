//! Istio's injectors on every remote, as the webhook last saw them: one watch of each remote's
//! MutatingWebhookConfigurations, so that a push of `istio.io/rev=canary` can say at once
//! where no injector will act on it (see [`mesh_core::injection`]).
//!
//! A remote whose configurations are not known (the watch has not listed them yet, or the
//! stored credentials may not read them, as for clusters attached by an older kubectl-mesh)
//! is left out: no warning beats a false one.
//!
//! Of each configuration only what readiness reads is kept (its Istio injectors' names, rules
//! and selectors), and no more than [`MAX_KEPT_BYTES`] of one remote: a remote's configurations
//! can weigh hundreds of MiB (large selector value lists, or whatever a server that is not a
//! real apiserver sends), and every replica keeps them all.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use kube::{
    Api, ResourceExt,
    api::ObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use mesh_core::injection::{self, Readiness};
use mesh_core::labels::Labels;
use mesh_core::remote::Remote;

use crate::remote_watch::{Proof, prove};

/// The most bytes of configurations kept of one remote, as [`trimmed`] keeps them (JSON), which
/// bounds their count too: an Istio revision's or tag's is 1 to 2 KiB so kept, and a mesh runs a
/// handful; hundreds fit.
const MAX_KEPT_BYTES: usize = 1024 * 1024;

/// Whether pods of a namespace on one remote will get sidecars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterReadiness {
    /// Name of the MeshCluster.
    pub cluster: String,
    pub readiness: Readiness,
}

/// The MutatingWebhookConfigurations of every remote whose list is known, by cluster name.
/// Cheap to clone; shared by the watches and the admission handler.
#[derive(Clone, Debug, Default)]
pub struct Injectors {
    known: Arc<RwLock<BTreeMap<String, Arc<Vec<MutatingWebhookConfiguration>>>>>,
}

impl Injectors {
    /// `cluster`'s configurations are now `configs`.
    pub fn set(&self, cluster: &str, configs: Vec<MutatingWebhookConfiguration>) {
        self.write().insert(cluster.to_owned(), Arc::new(configs));
    }

    /// `cluster`'s configurations are not known (any more).
    pub fn forget(&self, cluster: &str) {
        self.write().remove(cluster);
    }

    /// For every remote whose configurations are known, in name order: whether pods created
    /// in `namespace` carrying the managed `labels` get sidecars there.
    pub fn readiness(&self, namespace: &str, labels: &Labels) -> Vec<ClusterReadiness> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner()).clone();
        known
            .into_iter()
            .map(|(cluster, configs)| ClusterReadiness {
                readiness: injection::readiness(namespace, labels, &configs),
                cluster,
            })
            .collect()
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Vec<MutatingWebhookConfiguration>>>>
    {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps `injectors`' entry of `cluster` equal to the remote's configurations until `cancel`,
/// once `remote` is proved to be the cluster that was attached; forgets it when `remote` is
/// another cluster or has no client. What it saw last stays otherwise: a watch replaced for
/// new credentials keeps its cluster's entry until the next list, and the supervisor forgets
/// a detached cluster's.
pub(crate) async fn watch_injectors(
    cluster: String,
    remote: Arc<Remote>,
    injectors: Injectors,
    cancel: CancellationToken,
) {
    let Some(client) = remote.watch_client().cloned() else {
        // Unusable credentials: no watch will correct what was seen last.
        return injectors.forget(&cluster);
    };
    match prove(&remote, &cancel, || ()).await {
        Proof::Proved => {}
        // Another cluster's injectors would say where this one's pods get sidecars.
        Proof::OtherCluster => return injectors.forget(&cluster),
        Proof::Cancelled => return,
    }
    let configs = Api::<MutatingWebhookConfiguration>::all(client);
    let events = watcher(configs, mesh_core::remote::watch_config()).default_backoff();
    tokio::select! {
        () = follow(events, &cluster, &injectors) => {}
        () = cancel.cancelled() => {}
    }
}

/// One configuration as kept: what readiness reads of it, and its size.
struct Kept {
    config: MutatingWebhookConfiguration,
    bytes: usize,
}

/// What [`injection::readiness`] reads of `config`: its name, and of each webhook that is an
/// Istio injector its name, rules and selectors; `None` when it has no such webhook, as no
/// other injects sidecars. CA bundles, other webhooks and their selectors are most of the bytes.
fn trimmed(config: MutatingWebhookConfiguration) -> Option<Kept> {
    let webhooks: Vec<MutatingWebhook> = (config.webhooks.into_iter().flatten())
        .filter(|webhook| webhook.name.ends_with(injection::ISTIO_INJECTOR_SUFFIX))
        .map(|webhook| MutatingWebhook {
            name: webhook.name,
            rules: webhook.rules,
            namespace_selector: webhook.namespace_selector,
            object_selector: webhook.object_selector,
            ..MutatingWebhook::default()
        })
        .collect();
    if webhooks.is_empty() {
        return None;
    }
    let config = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: config.metadata.name,
            ..ObjectMeta::default()
        },
        webhooks: Some(webhooks),
    };
    // What cannot be measured is not kept.
    let bytes = serde_json::to_vec(&config).map_or(MAX_KEPT_BYTES + 1, |json| json.len());
    Some(Kept { config, bytes })
}

/// Keeps what readiness reads of `config` in `kept`; whether that changed anything.
fn keep(kept: &mut BTreeMap<String, Kept>, config: MutatingWebhookConfiguration) -> bool {
    let name = config.name_any();
    match trimmed(config) {
        Some(config) => {
            kept.insert(name, config);
            true
        }
        None => kept.remove(&name).is_some(),
    }
}

async fn follow(
    events: impl Stream<Item = Result<watcher::Event<MutatingWebhookConfiguration>, watcher::Error>>,
    cluster: &str,
    injectors: &Injectors,
) {
    let mut events = std::pin::pin!(events);
    let mut current: BTreeMap<String, Kept> = BTreeMap::new();
    // A relist builds the next list here; it replaces `current` once complete.
    let mut listing: Option<BTreeMap<String, Kept>> = None;
    let mut known = false;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(config)) => {
                keep(listing.get_or_insert_default(), config);
                false
            }
            Ok(watcher::Event::InitDone) => {
                current = listing.take().unwrap_or_default();
                known = true;
                true
            }
            Ok(watcher::Event::Apply(config)) => keep(&mut current, config),
            Ok(watcher::Event::Delete(config)) => current.remove(&config.name_any()).is_some(),
            Err(error) => {
                if forbidden(&error) {
                    // Attached before the sync account could read them: say nothing.
                    tracing::debug!(%cluster, "may not read MutatingWebhookConfigurations");
                    injectors.forget(cluster);
                    known = false;
                } else {
                    // Unreachable for now: what was seen last is still the best guess.
                    tracing::debug!(%cluster, error = %error, "injector watch failed, retrying");
                }
                continue;
            }
        };
        let kept_bytes: usize = ([Some(&current), listing.as_ref()].into_iter().flatten())
            .flat_map(BTreeMap::values)
            .map(|kept| kept.bytes)
            .sum();
        if kept_bytes > MAX_KEPT_BYTES {
            tracing::warn!(
                %cluster,
                "the remote's Istio injectors ran past {} KiB as kept: they are not known, the \
                 watch of its MutatingWebhookConfigurations is stopped, and no admission warning \
                 speaks of the remote",
                MAX_KEPT_BYTES / 1024
            );
            injectors.forget(cluster);
            return;
        }
        if changed && known && listing.is_none() {
            injectors.set(
                cluster,
                current.values().map(|kept| kept.config.clone()).collect(),
            );
        }
    }
}

fn forbidden(error: &watcher::Error) -> bool {
    let code = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code,
        watcher::Error::WatchError(status) => status.code,
        _ => return false,
    };
    matches!(code, 401 | 403)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use mesh_core::fake_apiserver::FakeApiserver;
    use mesh_core::fixtures::{
        InjectorExt, istio_injector, labels, mesh_cluster, revision_tag, webhook_config,
    };
    use mesh_core::injection::Injection;
    use watcher::Event;

    fn forbidden_list() -> watcher::Error {
        let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    /// Runs the events through for cluster `east` and says what is known of a namespace
    /// labelled `istio.io/rev=canary` there.
    async fn canary_after(
        injectors: &Injectors,
        events: Vec<Result<Event<MutatingWebhookConfiguration>, watcher::Error>>,
    ) -> Option<Readiness> {
        follow(futures::stream::iter(events), "east", injectors).await;
        let canary = labels(&[("istio.io/rev", "canary")]);
        let all = injectors.readiness("shop", &canary);
        all.into_iter()
            .find(|r| r.cluster == "east")
            .map(|r| r.readiness)
    }

    #[tokio::test]
    async fn known_once_listed_and_followed_after() {
        let injectors = Injectors::default();
        // Nothing is known before the first list completes.
        let partial = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(istio_injector("default"))),
        ];
        assert_eq!(canary_after(&injectors, partial).await, None);
        let unserved = Readiness::Unserved(Injection::Revision("canary".into()));
        let listed = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(istio_injector("default"))),
            Ok(Event::InitDone),
        ];
        assert_eq!(
            canary_after(&injectors, listed).await,
            Some(unserved.clone())
        );
        let installed = vec![
            Ok(Event::Init),
            Ok(Event::InitDone),
            Ok(Event::Apply(istio_injector("canary"))),
        ];
        assert_eq!(
            canary_after(&injectors, installed).await,
            Some(Readiness::Served(vec![
                "istio-sidecar-injector-canary".into()
            ]))
        );
        let removed = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(istio_injector("canary"))),
            Ok(Event::InitDone),
            Ok(Event::Delete(istio_injector("canary"))),
        ];
        assert_eq!(canary_after(&injectors, removed).await, Some(unserved));
    }

    #[tokio::test]
    async fn unknown_when_the_credentials_may_not_read_them() {
        let injectors = Injectors::default();
        injectors.set("east", vec![]);
        assert_eq!(
            canary_after(&injectors, vec![Err(forbidden_list())]).await,
            None
        );
    }

    #[tokio::test]
    async fn another_clusters_injectors_are_never_taken_for_this_ones() {
        let other = FakeApiserver::default().with_namespace("kube-system", &[]);
        let east = mesh_cluster("east", "uid-of-east");
        let remote = Arc::new(Remote::new("east", other.client()).with_identity(&east));
        assert_watch_ends_and_forgets_east(remote).await;
    }

    /// East's injectors, once seen, are forgotten by a watch of `remote` that ends at once.
    async fn assert_watch_ends_and_forgets_east(remote: Arc<Remote>) {
        let injectors = Injectors::default();
        injectors.set("east", vec![istio_injector("canary")]);
        let watched = watch_injectors("east".into(), remote, injectors.clone(), Default::default());
        tokio::time::timeout(std::time::Duration::from_secs(5), watched)
            .await
            .expect("the watch ends at once");
        assert_eq!(injectors.readiness("shop", &labels(&[])), []);
    }

    /// Its Secret became missing: nothing watches the remote any more, so what was seen
    /// last would never be corrected.
    #[tokio::test]
    async fn injectors_no_watch_can_follow_are_forgotten() {
        let missing = mesh_core::remote::Error::SecretMissing {
            namespace: "mesh".into(),
            name: "cluster-east".into(),
        };
        assert_watch_ends_and_forgets_east(Arc::new(Remote::unavailable("east", &missing))).await;
    }

    /// What east's entry holds.
    fn kept_of_east(injectors: &Injectors) -> Option<Vec<MutatingWebhookConfiguration>> {
        let known = injectors.known.read().unwrap();
        known.get("east").map(|configs| configs.to_vec())
    }

    #[tokio::test]
    async fn only_what_readiness_reads_is_kept() {
        let mut canary = istio_injector("canary");
        canary.metadata.annotations = Some([("note".to_owned(), "x".repeat(1024))].into());
        for webhook in canary.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(ByteString(vec![0; 1024]));
            webhook.timeout_seconds = Some(10);
        }
        let policy =
            webhook_config("policy", "mutate.policy.example.com").selector(LabelSelector {
                match_labels: Some([("team".to_owned(), "x".repeat(1024))].into()),
                ..LabelSelector::default()
            });
        let injectors = Injectors::default();
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(canary.clone())),
            Ok(Event::InitApply(policy)),
            Ok(Event::InitDone),
        ];
        assert_eq!(
            canary_after(&injectors, events).await,
            Some(Readiness::Served(vec![
                "istio-sidecar-injector-canary".into()
            ]))
        );
        // The policy's configuration is not kept; of canary's, its name and what readiness
        // reads of each webhook, without the annotation, CA bundle or timeout.
        let kept = kept_of_east(&injectors).expect("east is known");
        let [config] = kept.as_slice() else {
            panic!("{kept:?}")
        };
        assert_eq!(config.metadata.name, canary.metadata.name);
        assert_eq!(config.metadata.annotations, None);
        let given = canary.webhooks.iter().flatten();
        assert_eq!(
            config.webhooks.iter().flatten().count(),
            given.clone().count()
        );
        for (kept, given) in config.webhooks.iter().flatten().zip(given) {
            let read = |w: &MutatingWebhook| {
                let selectors = (w.namespace_selector.clone(), w.object_selector.clone());
                (w.name.clone(), w.rules.clone(), selectors)
            };
            assert_eq!(read(kept), read(given));
            assert_eq!(
                (&kept.client_config.ca_bundle, kept.timeout_seconds),
                (&None, None)
            );
        }
    }

    /// `count` Istio revision tags, and the bytes each takes as kept.
    fn revision_tags(count: usize) -> (Vec<MutatingWebhookConfiguration>, usize) {
        let tags: Vec<_> = (0..count)
            .map(|i| revision_tag(&format!("tag-{i:05}")))
            .collect();
        let each = trimmed(tags[0].clone()).expect("an injector").bytes;
        (tags, each)
    }

    /// A remote showing ever more injectors cannot be made of a real apiserver on demand: a
    /// stream of events stands for its watch, one that never ends once past the bound.
    #[tokio::test]
    async fn a_remote_with_more_injectors_than_are_kept_is_not_known() {
        let (_, each) = revision_tags(1);
        let fit = MAX_KEPT_BYTES / each;
        let (tags, _) = revision_tags(fit + 1);
        let injectors = Injectors::default();
        injectors.set("east", vec![istio_injector("canary")]);
        let listed = tags.into_iter().map(|tag| Ok(Event::InitApply(tag)));
        let events = futures::stream::iter(std::iter::once(Ok(Event::Init)).chain(listed))
            .chain(futures::stream::pending());
        let followed = follow(events, "east", &injectors);
        tokio::time::timeout(std::time::Duration::from_secs(60), followed)
            .await
            .expect("the watch ends past the bound");
        assert_eq!(kept_of_east(&injectors), None, "not known");
    }

    #[tokio::test]
    async fn as_many_injectors_as_are_kept_are() {
        let (_, each) = revision_tags(1);
        let (tags, _) = revision_tags(MAX_KEPT_BYTES / each);
        let count = tags.len();
        let injectors = Injectors::default();
        let listed = tags.into_iter().map(|tag| Ok(Event::InitApply(tag)));
        let events = std::iter::once(Ok(Event::Init))
            .chain(listed)
            .chain([Ok(Event::InitDone)]);
        follow(futures::stream::iter(events), "east", &injectors).await;
        assert_eq!(kept_of_east(&injectors).map(|kept| kept.len()), Some(count));
    }
}
