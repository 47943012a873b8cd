//! Lists read in pages, as kubectl reads them: no answer holds more than [`PAGE`] objects, so
//! a cluster of any size stays within the answer bound of [`crate::call_limits`], and neither
//! side builds or holds one huge response body.

use std::fmt::Debug;

use kube::{Api, api::ListParams};
use serde::de::DeserializeOwned;

/// Objects per LIST request (kubectl's default `--chunk-size`).
pub const PAGE: u32 = 500;

/// Every object `api` lists with `params`, each made into what the caller keeps by `keep` as
/// its page arrives, so that what it does not need is dropped a page at a time. The pages form
/// one consistent snapshot: the continue token pins the list's resourceVersion.
pub async fn in_pages<K, T>(
    api: &Api<K>,
    params: &ListParams,
    mut keep: impl FnMut(K) -> T,
) -> kube::Result<Vec<T>>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = params.clone().limit(PAGE);
    let mut kept = Vec::new();
    loop {
        let page = api.list(&params).await?;
        kept.extend(page.items.into_iter().map(&mut keep));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(kept),
        }
    }
}

/// Every object `api` lists with `params`, read in pages as [`in_pages`] reads them.
pub async fn all<K>(api: &Api<K>, params: &ListParams) -> kube::Result<Vec<K>>
where
    K: Clone + DeserializeOwned + Debug,
{
    in_pages(api, params, |object| object).await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::ResourceExt;

    use super::*;
    use crate::fake_apiserver::FakeApiserver;

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
}
