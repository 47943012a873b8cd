//! Lists read in pages, as kubectl reads them: no answer holds more than [`PAGE`] objects, so
//! a cluster of any size stays within the answer bound of [`crate::call_limits`], and neither
//! side builds or holds one huge response body. A list as a whole is bounded too
//! ([`MAX_OBJECTS`], [`MAX_PAGES`]): a remote that answers every page with another continue
//! token (whatever server its stored kubeconfig points at) fails the list instead of holding
//! its caller and growing its memory for as long as it pleases.

use std::fmt::Debug;

use kube::{Api, api::ListParams};
use serde::de::DeserializeOwned;

use crate::call_limits::AnswerTooLarge;

/// Objects per LIST request (kubectl's default `--chunk-size`).
pub const PAGE: u32 = 500;

/// The most objects one list may bring: ten times the 10,000 namespaces Kubernetes supports in
/// one cluster (its scalability thresholds), and about 50 MiB of namespaces as a sync keeps them.
pub const MAX_OBJECTS: usize = 100_000;

/// The most objects a list of [`all`] may bring: twice the 150,000 pods Kubernetes supports in
/// one cluster, as the plugin lists every pod, service or EndpointSlice of a cluster.
pub const MAX_OBJECTS_OF_ANY_KIND: usize = 300_000;

/// The most pages a list of at most `objects` may take: twice as many as they fill, as an
/// apiserver may answer a page with fewer objects than asked, and a remote with none at all.
pub const fn max_pages(objects: usize) -> usize {
    2 * objects / PAGE as usize
}

/// The most pages a list of at most [`MAX_OBJECTS`] may take ([`max_pages`]).
pub const MAX_PAGES: usize = max_pages(MAX_OBJECTS);

/// Every object `api` lists with `params`, each made into what the caller keeps by `keep` as
/// its page arrives, so that what it does not need is dropped a page at a time. The pages form
/// one consistent snapshot: the continue token pins the list's resourceVersion. A list past
/// [`MAX_OBJECTS`] or [`MAX_PAGES`] fails ([`AnswerTooLarge`]).
pub async fn in_pages<K, T>(
    api: &Api<K>,
    params: &ListParams,
    keep: impl FnMut(K) -> T,
) -> kube::Result<Vec<T>>
where
    K: Clone + DeserializeOwned + Debug,
{
    in_pages_at_most(api, params, MAX_OBJECTS, keep).await
}

/// [`in_pages`], with at most `most` objects (and [`max_pages`] of them).
async fn in_pages_at_most<K, T>(
    api: &Api<K>,
    params: &ListParams,
    most: usize,
    mut keep: impl FnMut(K) -> T,
) -> kube::Result<Vec<T>>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = params.clone().limit(PAGE);
    let mut kept = Vec::new();
    for _ in 0..max_pages(most) {
        let page = api.list(&params).await?;
        if kept.len() + page.items.len() > most {
            return Err(too_large(AnswerTooLarge::Objects(most)));
        }
        kept.extend(page.items.into_iter().map(&mut keep));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(kept),
        }
    }
    Err(too_large(AnswerTooLarge::Pages(max_pages(most))))
}

/// A refusal of the list as a whole, which the remote answered: a [`crate::failure::Failure`]
/// of neither a timeout nor an unreachable remote.
fn too_large(error: AnswerTooLarge) -> kube::Error {
    kube::Error::Service(Box::new(error))
}

/// Every object `api` lists with `params`, read in pages as [`in_pages`] reads them, at most
/// [`MAX_OBJECTS_OF_ANY_KIND`].
pub async fn all<K>(api: &Api<K>, params: &ListParams) -> kube::Result<Vec<K>>
where
    K: Clone + DeserializeOwned + Debug,
{
    in_pages_at_most(api, params, MAX_OBJECTS_OF_ANY_KIND, |object| object).await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::ResourceExt;

    use super::*;
    use crate::failure::Failure;
    use crate::fake_apiserver::FakeApiserver;
    use crate::fixtures::assert_chain_ends_with;

    fn with_namespaces(count: usize) -> FakeApiserver {
        (0..count).fold(FakeApiserver::default(), |server, i| {
            server.with_namespace(&format!("ns-{i:05}"), &[])
        })
    }

    #[tokio::test]
    async fn every_page_is_read_and_kept_as_asked() {
        let total = 2 * PAGE as usize + 1;
        let server = with_namespaces(total);
        let api: Api<Namespace> = Api::all(server.client());
        let names = in_pages(&api, &ListParams::default(), |ns| ns.name_any())
            .await
            .expect("list");
        assert_eq!(names.len(), total);
        assert_eq!(names.last().map(String::as_str), Some("ns-01000"));
        assert_eq!(server.state().lists, 3, "one request a page");
    }

    #[tokio::test]
    async fn a_list_within_one_page_is_one_request() {
        let server = with_namespaces(3);
        let api: Api<Namespace> = Api::all(server.client());
        let all = in_pages(&api, &ListParams::default(), |ns| ns)
            .await
            .expect("list");
        assert_eq!(all.len(), 3);
        assert_eq!(server.state().lists, 1);
    }

    /// Lists from a remote whose list never ends (`namespaces` on every page), within a
    /// deadline: a list that is not refused would read on forever.
    async fn endless_list_of(namespaces: usize) -> (kube::Error, FakeApiserver) {
        let server = with_namespaces(namespaces);
        server.state().endless_list = true;
        let api: Api<Namespace> = Api::all(server.client());
        let listed = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            in_pages(&api, &ListParams::default(), |ns| ns.metadata.name),
        )
        .await
        .expect("the list ends");
        (listed.expect_err("refused"), server)
    }

    /// A remote that answers every page with another continue token cannot be made of a real
    /// apiserver: the stand-in's endless list stands for it.
    #[tokio::test]
    async fn an_endless_list_is_refused_past_the_most_objects() {
        let (error, server) = endless_list_of(PAGE as usize).await;
        assert_chain_ends_with(&error, "the list ran past 100000 objects, and was refused");
        assert_eq!(server.state().lists, MAX_OBJECTS / PAGE as usize + 1);
        // The remote answered: its sync fails, and Reachable stays as it is.
        assert_eq!(Failure::of(&error), Failure::Other);
    }

    /// The plugin lists every pod of a cluster with [`all`]: a cluster within what Kubernetes
    /// supports (150,000 pods) must not meet the bound of a sync's namespaces.
    #[tokio::test]
    async fn a_list_of_any_kind_has_room_for_every_pod_kubernetes_supports() {
        let server = with_namespaces(PAGE as usize);
        server.state().endless_list = true;
        let api: Api<Namespace> = Api::all(server.client());
        let every = ListParams::default();
        let listed = all(&api, &every);
        let error = tokio::time::timeout(std::time::Duration::from_secs(60), listed)
            .await
            .expect("the list ends")
            .expect_err("refused");
        assert_chain_ends_with(&error, "ran past 300000 objects, and was refused");
    }

    /// As above: a remote whose pages hold nothing, and never end.
    #[tokio::test]
    async fn an_endless_list_of_empty_pages_is_refused_past_the_most_pages() {
        let (error, server) = endless_list_of(0).await;
        assert_chain_ends_with(&error, "the list ran past 400 pages, and was refused");
        assert_eq!(server.state().lists, MAX_PAGES);
    }

    /// As above; what a sync says of it.
    #[tokio::test]
    async fn a_sync_reading_an_endless_list_fails_and_says_why() {
        let server = with_namespaces(PAGE as usize);
        server.state().endless_list = true;
        let primary = server.client();
        let read = crate::sync::primary_namespaces(&primary);
        let error = tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("the list ends")
            .expect_err("refused");
        let said = error.to_string();
        assert!(
            said.starts_with("cannot list the primary's namespaces: "),
            "{said}"
        );
        assert!(
            said.ends_with("the list ran past 100000 objects, and was refused"),
            "{said}"
        );
        assert_eq!(error.failure(), Failure::Other);
    }
}
