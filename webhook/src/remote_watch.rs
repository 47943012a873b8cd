//! Watches one remote's namespaces for managed labels that differ from the primary's.
//!
//! Without it, a namespace created on a remote after its twin was labelled on the primary, or a
//! managed label edited by hand on a remote, would wait for the next periodic resync: pods
//! started there meanwhile get the wrong injection. The watch reads metadata only and keeps no
//! store, so a remote with thousands of namespaces costs one page of them at a time.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Wakes `drift` whenever a namespace of the remote behind `client` is seen with managed labels
/// other than the primary's (`is_drifted` decides), until `cancel`.
pub(crate) async fn watch_for_drift(
    client: Client,
    is_drifted: impl Fn(&Namespace) -> bool,
    drift: Arc<Notify>,
    cancel: CancellationToken,
) {
    let namespaces = Api::<PartialObjectMeta<Namespace>>::all(client);
    let events = watcher(namespaces, watcher::Config::default()).default_backoff();
    tokio::select! {
        () = notify_on_drift(events, is_drifted, &drift) => {}
        () = cancel.cancelled() => {}
    }
}

async fn notify_on_drift(
    events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Namespace>>, watcher::Error>>,
    is_drifted: impl Fn(&Namespace) -> bool,
    drift: &Notify,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let seen = match event {
            // A (re)list shows what changed while the watch was down, so it counts too.
            Ok(watcher::Event::Apply(meta) | watcher::Event::InitApply(meta)) => meta,
            Ok(watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone) => {
                continue;
            }
            Err(error) => {
                // The worker's own sync reports an unreachable remote; this only retries.
                tracing::debug!(error = %error, "remote namespace watch failed, retrying");
                continue;
            }
        };
        let namespace = Namespace {
            metadata: seen.metadata,
            ..Namespace::default()
        };
        if is_drifted(&namespace) {
            tracing::debug!(namespace = ?namespace.metadata.name, "remote labels drifted");
            drift.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::fixtures::{NamespaceExt, ns};
    use mesh_core::labels::SyncRule;
    use watcher::Event;

    fn meta(namespace: Namespace) -> PartialObjectMeta<Namespace> {
        PartialObjectMeta {
            metadata: namespace.metadata,
            ..PartialObjectMeta::default()
        }
    }

    /// Runs the events through and says whether `drift` was woken.
    async fn woken(events: Vec<Event<PartialObjectMeta<Namespace>>>) -> bool {
        let rule = SyncRule::default();
        let primary = ns("web").label("istio-injection", "enabled");
        let is_drifted = |remote: &Namespace| {
            let twin = (remote.metadata.name == primary.metadata.name).then_some(&primary);
            !rule.diff(&rule.desired(twin), remote).is_empty()
        };
        let drift = Notify::new();
        notify_on_drift(
            futures::stream::iter(events.into_iter().map(Ok)),
            is_drifted,
            &drift,
        )
        .await;
        tokio::time::timeout(std::time::Duration::ZERO, drift.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn wakes_on_a_remote_namespace_that_differs_from_the_primary() {
        // Created on the remote without the label its primary twin has.
        assert!(woken(vec![Event::Apply(meta(ns("web")))]).await);
        // A label set by hand on a namespace the primary does not label.
        assert!(
            woken(vec![Event::Apply(meta(
                ns("db").label("istio-injection", "enabled")
            ))])
            .await
        );
        // Found by a relist after the watch was down.
        assert!(
            woken(vec![
                Event::Init,
                Event::InitApply(meta(ns("web").label("istio-injection", "disabled"))),
                Event::InitDone,
            ])
            .await
        );
    }

    #[tokio::test]
    async fn stays_quiet_while_the_remote_agrees() {
        assert!(
            !woken(vec![
                Event::Apply(meta(ns("web").label("istio-injection", "enabled"))),
                Event::Apply(meta(ns("db").label("team", "x"))),
                Event::Delete(meta(ns("web"))),
                Event::Init,
                Event::InitApply(meta(ns("other"))),
                Event::InitDone,
            ])
            .await
        );
    }
}
