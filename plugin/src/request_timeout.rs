//! `--request-timeout`: how long the primary may take to answer one request, as kubectl's flag
//! of that name (`0`: as long as it takes).
//!
//! kube's own timeouts do not bound a request: its connect timeout ends with the TCP and TLS
//! handshakes, and it has no read timeout, so a primary that accepts a connection and never
//! answers (a hung apiserver, a half-dead load balancer) holds a command for as long as the
//! kernel keeps the connection. Every client of the primary therefore runs each try of a
//! request under one deadline, from connecting to the last byte of its answer; a watch only
//! until it starts, since its answer lasts as long as the watch (the dashboard's, install's
//! waits). A try the primary asks to repeat later (`Retry-After`) gets a deadline of its own, as
//! kubectl gives it.

use std::{error::Error as StdError, time::Duration};

use kube::{Client, config::Kubeconfig};
use mesh_core::call_limits::CallLimitsLayer;

use crate::{Error, Result, kubeconfig, target::Target};

/// `--request-timeout` when not given. kubectl waits as long as it takes by default; a command
/// of this plugin reads several clusters, and a hung primary should not hold it for ever.
pub const DEFAULT_REQUEST_TIMEOUT: &str = "30s";

/// `--request-timeout`: `None` for `0`, no deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTimeout(pub Option<Duration>);

/// Parses `--request-timeout`: a duration (`30s`, `2m`), or `0` for none.
pub fn parse(text: &str) -> std::result::Result<RequestTimeout, String> {
    let duration = mesh_core::duration::parse(text)?;
    Ok(RequestTimeout((!duration.is_zero()).then_some(duration)))
}

/// `after` as the flags spell it: `30s`, `1.5s`.
pub fn seconds(after: Duration) -> String {
    format!("{}s", after.as_secs_f64())
}

/// The primary did not answer a request within `--request-timeout`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{} at {} did not answer within {}", .target.label, .target.server, seconds(*.after))]
pub struct Unanswered {
    /// The primary as the user's kubeconfig names it.
    pub target: Target,
    /// `--request-timeout`.
    pub after: Duration,
}

impl Unanswered {
    /// The [`Unanswered`] in `error`'s chain of causes, if any.
    pub fn within<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Self> {
        std::iter::successors(Some(error), |&e| e.source()).find_map(|e| e.downcast_ref())
    }

    /// The one line of a command whose request `doing` went unanswered: what it did, that the
    /// primary did not answer, and what to do.
    pub fn refusal(&self, doing: &str) -> Error {
        Error::Refused {
            what: format!("{doing}: {self}"),
            hint: format!(
                "check {}, or pass a longer --request-timeout",
                self.target.where_configured
            ),
        }
    }
}

/// A client of the primary `target` (`context` of `kc`) each of whose requests ends within
/// `timeout`, or fails with the [`Unanswered`] ([`layer`]).
pub async fn client(
    kc: Kubeconfig,
    context: &str,
    target: &Target,
    timeout: RequestTimeout,
) -> Result<Client> {
    client_with_read_timeout(kc, context, target, timeout, None).await
}

/// [`client`], whose connections also fail after `read_timeout` without a byte: for watches
/// that run for as long as the command, whose connection a NAT or a frozen apiserver may drop
/// silently. Their requests must end sooner ([`mesh_core::remote::watch_config`]).
pub async fn client_with_read_timeout(
    kc: Kubeconfig,
    context: &str,
    target: &Target,
    timeout: RequestTimeout,
    read_timeout: Option<Duration>,
) -> Result<Client> {
    let mut config = kubeconfig::client_config(kc, Some(context)).await?;
    if let Some(read_timeout) = read_timeout {
        mesh_core::remote::time_each_request(&mut config, read_timeout);
    }
    if timeout.0.is_some() {
        // The deadline covers connecting: kube's own connect timeout would end a slow
        // handshake with an error of its own, or outlast a deadline set higher.
        config.connect_timeout = None;
    }
    let builder = mesh_core::retry_after::client_builder_each_try(config, &layer(target, timeout))
        .map_err(|source| kubeconfig::Error::Client {
            context: context.to_owned(),
            source,
        })?;
    Ok(builder.build())
}

/// Each try of a request under the deadline of `timeout` ([`CallLimitsLayer`]): its answer
/// must start in time, and but for a watch's, end in time; one that does not fails with the
/// [`Unanswered`].
pub(crate) fn layer(target: &Target, timeout: RequestTimeout) -> CallLimitsLayer {
    let target = target.clone();
    CallLimitsLayer::new(timeout.0, None)
        .watches_last()
        .late_error(move |after| {
            Box::new(Unanswered {
                target: target.clone(),
                after,
            })
        })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use futures::stream;
    use http::{Request, Response};
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Api;
    use mesh_core::fixtures::SilentServer;
    use tower::{BoxError, Layer as _, Service as _};

    use super::*;

    fn target(server: &str) -> Target {
        Target {
            label: "the primary".into(),
            server: server.into(),
            where_configured: "the server of context hung in your kubeconfig".into(),
        }
    }

    #[test]
    fn zero_waits_as_long_as_it_takes_as_kubectls() {
        assert_eq!(parse("0"), Ok(RequestTimeout(None)));
        assert_eq!(parse("0s"), Ok(RequestTimeout(None)));
        assert_eq!(
            parse("1m30s"),
            Ok(RequestTimeout(Some(Duration::from_secs(90))))
        );
        assert!(parse("soon").is_err());
    }

    /// A server that accepts connections and never says a word, as a hung apiserver: the
    /// request fails once its deadline passed, with the line that says what to do.
    #[tokio::test]
    async fn a_primary_that_never_answers_fails_at_the_deadline() {
        let silent = SilentServer::start().await;
        let server = &silent.url;
        let kc = Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hung\n  cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}\nusers:\n- name: hung\n  user: {{token: t}}\ncontexts:\n- name: hung\n  context: {{cluster: hung, user: hung}}\ncurrent-context: hung\n"
        ))
        .expect("kubeconfig");
        let after = Duration::from_millis(300);
        let client = client(kc, "hung", &target(server), RequestTimeout(Some(after)))
            .await
            .expect("client");
        let started = std::time::Instant::now();
        let error = Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(took >= after && took < after * 10, "{took:?}");
        let error = Error::kube("cannot list namespaces")(error);
        assert_eq!(
            error.line(),
            format!(
                "cannot list namespaces: the primary at {server} did not answer within 0.3s; check \
                 the server of context hung in your kubeconfig, or pass a longer \
                 --request-timeout"
            )
        );
    }

    /// An answer whose body comes `late`, for `uri`, through the deadline of `after`.
    async fn late_body(uri: &str, after: Duration, late: Duration) -> Result<Bytes, BoxError> {
        let inner = tower::service_fn(move |_: Request<()>| async move {
            let chunk = stream::once(async move {
                tokio::time::sleep(late).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{}\n")))
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(Box::pin(chunk))))
        });
        let answer = layer(
            &target("https://10.0.0.1:6443"),
            RequestTimeout(Some(after)),
        )
        .layer(inner)
        .call(Request::get(uri).body(()).expect("request"))
        .await?;
        Ok(answer.into_body().collect().await?.to_bytes())
    }

    /// An answer must end by the deadline, but for a watch's, which lasts as long as the watch
    /// (the dashboard's, install's waits): only its start is bounded.
    #[tokio::test(start_paused = true)]
    async fn only_a_watch_may_answer_past_the_deadline() {
        let (after, late) = (Duration::from_secs(5), Duration::from_secs(60));
        let list = late_body("/api/v1/namespaces", after, late)
            .await
            .expect_err("cut");
        assert!(Unanswered::within(list.as_ref()).is_some(), "{list}");
        let watch = late_body(
            "/api/v1/namespaces?watch=true&timeoutSeconds=290",
            after,
            late,
        )
        .await
        .expect("a watch goes on");
        assert_eq!(watch, Bytes::from_static(b"{}\n"));
        let prompt = late_body("/api/v1/namespaces", after, Duration::from_secs(1))
            .await
            .expect("in time");
        assert_eq!(prompt, Bytes::from_static(b"{}\n"));
    }
}
