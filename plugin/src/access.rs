//! Reaching a cluster and asking it what the caller may do, before changing anything:
//! the preflight of the commands that change a cluster (`attach`, `detach`, `rotate`,
//! `uninstall`, ...).
//!
//! Every check here is read-only (SelfSubjectAccessReviews are not stored), so a refused
//! command leaves nothing behind, and every failure is one line naming the cluster.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    rbac::v1::PolicyRule,
};
use kube::{Api, Client, ResourceExt, api::PostParams, config::Kubeconfig};
use mesh_core::{
    MESH_NAMESPACE,
    call_limits::{self, CallLimitsLayer},
    cluster::MeshCluster,
    failure::{is_unreachable, transport_cause},
};

pub use crate::target::Target;
use crate::{Error, Result, kubeconfig, render::Manifest};

/// Annotation on the MeshCluster: the context attach reached the remote with, so that detach
/// can find it in the user's kubeconfig without being told.
pub const REMOTE_CONTEXT_ANNOTATION: &str = "kubectl-mesh.io/remote-context";

/// The remote context recorded by attach.
pub fn remote_context(mc: &MeshCluster) -> Option<&str> {
    mc.metadata
        .annotations
        .as_ref()?
        .get(REMOTE_CONTEXT_ANNOTATION)
        .map(String::as_str)
        .filter(|c| !c.is_empty())
}

/// [`remote_context`] when `kc` has it and it reaches the server attach recorded: the name of
/// the kubeconfig attach was given (`kubernetes-admin@kubernetes`, `default`) may name another
/// cluster in the user's, often the primary.
pub fn remote_context_in<'a>(kc: &Kubeconfig, mc: &'a MeshCluster) -> Option<&'a str> {
    let context = remote_context(mc)?;
    let server = kubeconfig::select(kc, Some(context))
        .ok()?
        .cluster
        .server
        .clone()?;
    let same = |url: &str| url.trim_end_matches('/').to_owned();
    (same(&server) == same(&mc.spec.server)).then_some(context)
}

/// How long connecting to an apiserver may take: a remote that is down must fail the
/// preflight in seconds, not after the OS gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// SelfSubjectAccessReviews in flight at once.
const REVIEW_CONCURRENCY: usize = 8;

/// How long one call may take in all, its retries at the server's request and their waits
/// included (a watch's answer apart): an admin kubeconfig of a remote names a server its
/// admin runs, whose `Retry-After` would otherwise be waited for however long it says.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2 * READ_TIMEOUT.as_secs());

/// A client for `context` of `kc` (or its current one) with short timeouts, each call bounded
/// by [`CALL_DEADLINE`] and its answer by the bound the stored credentials' clients have
/// ([`call_limits::DEFAULT_MAX_ANSWER_LINE`]).
pub async fn client(kc: Kubeconfig, context: Option<&str>) -> Result<Client> {
    let (name, config) = client_config(kc, context).await?;
    limited_client(name, config, CALL_DEADLINE)
}

/// A client of `config` (of context `name`) whose calls end within `deadline`.
fn limited_client(name: String, config: kube::Config, deadline: Duration) -> Result<Client> {
    let limits = CallLimitsLayer::new(Some(deadline), Some(call_limits::DEFAULT_MAX_ANSWER_LINE))
        .watches_last();
    let builder = mesh_core::retry_after::client_builder(config).map_err(|source| {
        Error::from(kubeconfig::Error::Client {
            context: name,
            source,
        })
    })?;
    Ok(builder.with_layer(&limits).build())
}

/// The configuration of [`client`], and the name of the context it is for.
async fn client_config(kc: Kubeconfig, context: Option<&str>) -> Result<(String, kube::Config)> {
    let name = kubeconfig::select(&kc, context)?.context.to_owned();
    let mut config = kubeconfig::client_config(kc, Some(&name)).await?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    mesh_core::remote::time_each_request(&mut config, READ_TIMEOUT);
    Ok((name, config))
}

/// How the user names an admin kubeconfig of an attached remote, for the commands that
/// change it (detach, rotate, scope); without flags, the context attach recorded.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RemoteAdminFlags {
    /// Admin kubeconfig of the remote [default: your kubeconfig, with the context attach used].
    #[arg(long, value_name = "FILE")]
    pub remote_kubeconfig: Option<PathBuf>,
    /// Context of the remote in that kubeconfig [default: its current context].
    #[arg(long, value_name = "CONTEXT")]
    pub remote_context: Option<String>,
}

impl RemoteAdminFlags {
    /// Whether either flag was given.
    pub fn given(&self) -> bool {
        self.remote_kubeconfig.is_some() || self.remote_context.is_some()
    }

    /// [`RemoteAdmin::find`] with these flags.
    pub fn find(
        &self,
        mc: Option<&MeshCluster>,
        primary_kc: &Kubeconfig,
    ) -> Result<Option<RemoteAdmin>> {
        RemoteAdmin::find(
            mc,
            primary_kc,
            self.remote_kubeconfig.as_ref(),
            self.remote_context.as_deref(),
        )
    }
}

/// An admin kubeconfig of a remote, as the user passed it or as attach recorded it.
pub struct RemoteAdmin {
    kubeconfig: Kubeconfig,
    /// `None`: the file's current context.
    context: Option<String>,
    /// See [`Target::where_configured`].
    where_configured: String,
}

impl RemoteAdmin {
    /// The kubeconfig `file` (at `context`) when given; else `context`, or the one attach
    /// recorded on `mc`, when the user's kubeconfig `primary_kc` has it; `None` when neither.
    pub fn find(
        mc: Option<&MeshCluster>,
        primary_kc: &Kubeconfig,
        file: Option<&PathBuf>,
        context: Option<&str>,
    ) -> Result<Option<Self>> {
        if let Some(path) = file {
            return Ok(Some(Self {
                kubeconfig: kubeconfig::read_remote(path, context)
                    .map_err(|e| remote_kubeconfig_error(path, e))?,
                context: None,
                where_configured: format!("the server address in {}", path.display()),
            }));
        }
        if let Some(asked) = context {
            // Asked for by name: a context the kubeconfig lacks is a typo to report, not a
            // reason to go on without the remote.
            kubeconfig::select(primary_kc, Some(asked))?;
        }
        let recorded = context
            .map(str::to_owned)
            .or_else(|| mc.and_then(remote_context).map(str::to_owned))
            .filter(|c| primary_kc.contexts.iter().any(|n| n.name == *c));
        Ok(recorded.map(|c| Self {
            kubeconfig: primary_kc.clone(),
            where_configured: format!("the server of context {c} in your kubeconfig"),
            context: Some(c),
        }))
    }

    /// A client of the remote cluster `name`, and the target errors about reaching it name.
    pub async fn connect(self, name: &str) -> Result<(Client, Target)> {
        let server = kubeconfig::select(&self.kubeconfig, self.context.as_deref())?
            .server()?
            .to_owned();
        let target = Target {
            label: format!("remote cluster {name}"),
            server,
            where_configured: self.where_configured,
        };
        let client = client(self.kubeconfig, self.context.as_deref()).await?;
        Ok((client, target))
    }

    /// [`RemoteAdmin::connect`] to the cluster `mc` names, checked to reach that very cluster
    /// (by its id) and to hold `needs` there: refused, before anything is changed, otherwise.
    pub async fn connect_to(self, mc: &MeshCluster, needs: &[Need]) -> Result<(Client, Target)> {
        let name = mc.name_any();
        let (client, target) = self.connect(&name).await?;
        let id = cluster_id(&client)
            .await
            .map_err(|e| request_error(&target, "read kube-system", e))?;
        if let Some(what) = other_cluster(&id, &target, mc) {
            return Err(Error::Refused {
                what,
                hint: format!("pass the kubeconfig of {name} with --remote-kubeconfig"),
            });
        }
        require(&client, &target, needs, USE_A_REMOTE_ADMIN).await?;
        Ok((client, target))
    }

    /// A client of the remote.
    pub async fn client(self) -> Result<Client> {
        client(self.kubeconfig, self.context.as_deref()).await
    }
}

/// The one-line error for a request to `target` that failed before anything was changed.
pub fn request_error(target: &Target, doing: &str, err: kube::Error) -> Error {
    if let Some(unanswered) = crate::request_timeout::Unanswered::within(&err) {
        return unanswered.refusal(doing);
    }
    match &err {
        e if is_unreachable(e) => Error::Refused {
            what: format!(
                "cannot reach {} at {}: {}",
                target.label,
                target.server,
                transport_cause(e)
            ),
            hint: format!(
                "check {} and that the cluster is up",
                target.where_configured
            ),
        },
        kube::Error::Api(s) if s.code == 401 => Error::Refused {
            what: format!(
                "{} at {} did not accept the credentials",
                target.label, target.server
            ),
            hint: format!(
                "refresh the credentials in {}; `kubectl auth whoami` shows whom they name",
                target.where_configured
            ),
        },
        kube::Error::Auth(_) => Error::Refused {
            what: format!(
                "cannot get credentials for {}: {}",
                target.label,
                crate::describe_kube(&err)
            ),
            hint: format!(
                "check the user in {}; `kubectl auth whoami` must work with it",
                target.where_configured
            ),
        },
        _ => Error::Refused {
            what: format!(
                "cannot {doing} on {}: {}",
                target.label,
                crate::describe_kube(&err)
            ),
            hint: "check the cluster's state with kubectl and re-run the command".into(),
        },
    }
}

/// Rights on one kind of object: what a command needs (asked before it changes anything),
/// what a ClusterRole grants ([`cluster_role_rules`]) and what `check` verifies.
///
/// The rights the commands know beforehand name their objects with `&'static str` (the
/// default); those on objects found or rendered at run time ([`Need::on`]) own their names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need<S = &'static str> {
    /// API group ("" for core).
    pub group: S,
    /// Resource (plural).
    pub resource: S,
    /// Namespace of namespaced objects.
    pub namespace: Option<String>,
    /// The one object the rights are on (a rule's resourceNames); `None`: any object.
    pub name: Option<S>,
    /// Verbs needed.
    pub verbs: Vec<&'static str>,
}

impl Need {
    /// `verbs` on cluster-scoped `resource` of `group`.
    pub fn cluster(group: &'static str, resource: &'static str, verbs: &[&'static str]) -> Self {
        Self {
            group,
            resource,
            namespace: None,
            name: None,
            verbs: verbs.to_vec(),
        }
    }

    /// Requesting a time-bound token of the mesh's ServiceAccounts (the TokenRequest API), as
    /// attach and rotate do for `--token-ttl`.
    pub fn token_request() -> Self {
        Self::namespaced("", "serviceaccounts/token", MESH_NAMESPACE, &["create"])
    }

    /// `verbs` on `resource` of `group` in `namespace`.
    pub fn namespaced(
        group: &'static str,
        resource: &'static str,
        namespace: &str,
        verbs: &[&'static str],
    ) -> Self {
        Self {
            group,
            resource,
            namespace: Some(namespace.to_owned()),
            name: None,
            verbs: verbs.to_vec(),
        }
    }
}

impl Need<String> {
    /// `verbs` on the object `m` (by its resource, namespace and name).
    pub fn on(m: &Manifest, verbs: &[&'static str]) -> Self {
        Self {
            group: m.resource.group.clone(),
            resource: m.resource.plural.clone(),
            namespace: m.namespace.clone(),
            name: Some(m.name.clone()),
            verbs: verbs.to_vec(),
        }
    }
}

impl<S: AsRef<str> + Clone> Need<S> {
    /// The same rights on the object `name` only.
    pub fn named(self, name: S) -> Self {
        Self {
            name: Some(name),
            ..self
        }
    }

    /// One need per verb, in order: what one SelfSubjectAccessReview each asks.
    pub fn each_verb(&self) -> impl Iterator<Item = Self> + '_ {
        self.verbs.iter().map(|verb| Self {
            verbs: vec![*verb],
            ..self.clone()
        })
    }

    /// The review asking whether the caller may `verb` these objects.
    pub fn review(&self, verb: &str) -> SelfSubjectAccessReview {
        // RBAC writes a subresource into the resource (`serviceaccounts/token`); a review asks
        // for it apart.
        let (resource, subresource) = match self.resource.as_ref().split_once('/') {
            Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
            None => (self.resource.as_ref(), None),
        };
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(self.group.as_ref().to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource,
                    namespace: self.namespace.clone(),
                    name: self.name.as_ref().map(|n| n.as_ref().to_owned()),
                    verb: Some(verb.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `resource` as kubectl spells it: `secrets`, `clusterroles.rbac.authorization.k8s.io`.
    fn qualified(&self) -> String {
        let (group, resource) = (self.group.as_ref(), self.resource.as_ref());
        if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        }
    }

    /// These rights with `verbs` of them, as a refusal lists them:
    /// `secrets named cluster-east in namespace kubectl-mesh (create/delete)`.
    fn phrase(&self, verbs: &[&str]) -> String {
        let mut phrase = self.qualified();
        if let Some(name) = &self.name {
            phrase.push_str(&format!(" named {}", name.as_ref()));
        }
        if let Some(ns) = &self.namespace {
            phrase.push_str(&format!(" in namespace {ns}"));
        }
        format!("{phrase} ({})", verbs.join("/"))
    }
}

/// The ClusterRole rules granting `needs` (their namespaces are the binding's business).
/// Consecutive needs that differ only in their resource share one rule.
pub fn cluster_role_rules(needs: &[Need]) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut last: Option<&Need> = None;
    for need in needs {
        let alike = last
            .is_some_and(|l| (l.group, l.name, &l.verbs) == (need.group, need.name, &need.verbs));
        match rules.last_mut() {
            Some(rule) if alike => rule
                .resources
                .get_or_insert_default()
                .push(need.resource.to_owned()),
            _ => rules.push(PolicyRule {
                api_groups: Some(vec![need.group.to_owned()]),
                resources: Some(vec![need.resource.to_owned()]),
                resource_names: need.name.map(|n| vec![n.to_owned()]),
                verbs: need.verbs.iter().map(|v| (*v).to_owned()).collect(),
                ..Default::default()
            }),
        }
        last = Some(need);
    }
    rules
}

/// Asks `client`'s cluster, one SelfSubjectAccessReview per verb, which of `needs` the caller
/// lacks. Returns them as phrases: `secrets in namespace kubectl-mesh (create/delete)`.
pub async fn missing<S>(client: &Client, needs: &[Need<S>]) -> Result<Vec<String>, kube::Error>
where
    S: AsRef<str> + Clone + Sync,
{
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let checks = needs
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.verbs.iter().map(move |v| (i, n, *v)));
    let answers: Vec<Result<(usize, &'static str, bool), kube::Error>> = stream::iter(checks)
        .map(|(i, need, verb)| {
            let api = api.clone();
            async move {
                let answer = api
                    .create(&PostParams::default(), &need.review(verb))
                    .await?;
                Ok((i, verb, answer.status.is_some_and(|s| s.allowed)))
            }
        })
        .buffered(REVIEW_CONCURRENCY)
        .collect()
        .await;
    let mut denied: BTreeMap<usize, Vec<&'static str>> = BTreeMap::new();
    for answer in answers {
        let (i, verb, allowed) = answer?;
        if !allowed {
            denied.entry(i).or_default().push(verb);
        }
    }
    Ok(denied
        .into_iter()
        .filter_map(|(i, verbs)| Some(needs.get(i)?.phrase(&verbs)))
        .collect())
}

/// What the caller of `client` lacks of `needs` on `target`, in one phrase: "on the primary
/// (https://…): secrets in namespace kubectl-mesh (create/delete)"; `None` when nothing.
pub async fn missing_on<S>(
    client: &Client,
    target: &Target,
    needs: &[Need<S>],
) -> Result<Option<String>>
where
    S: AsRef<str> + Clone + Sync,
{
    let missing = missing(client, needs)
        .await
        .map_err(|e| request_error(target, "check rights", e))?;
    Ok(lacking(target, &missing))
}

/// What to do when the primary refuses: said by every command that asks its rights upfront.
pub const ASK_AN_ADMIN: &str =
    "use an admin context or ask a cluster admin (`kubectl auth can-i --list` shows yours)";

/// What to do when a remote refuses.
pub const USE_A_REMOTE_ADMIN: &str = "use an admin kubeconfig of the remote";

/// Refuses, before anything is changed, when the caller of `client` lacks any of `needs` on
/// `target`; `hint` says what to do instead.
pub async fn require<S>(
    client: &Client,
    target: &Target,
    needs: &[Need<S>],
    hint: &str,
) -> Result<()>
where
    S: AsRef<str> + Clone + Sync,
{
    match missing_on(client, target, needs).await? {
        None => Ok(()),
        Some(missing) => Err(Error::Refused {
            what: format!("missing permissions {missing}"),
            hint: hint.to_owned(),
        }),
    }
}

fn lacking(target: &Target, missing: &[String]) -> Option<String> {
    (!missing.is_empty()).then(|| {
        format!(
            "on {} ({}): {}",
            target.label,
            target.server,
            missing.join(", ")
        )
    })
}

/// Why the remote `target` reached, whose cluster id is `id`, is not `cluster`; `None` when it
/// is.
pub fn other_cluster(id: &str, target: &Target, cluster: &MeshCluster) -> Option<String> {
    (id != cluster.spec.cluster_id).then(|| {
        format!(
            "the remote kubeconfig reaches cluster id {id} at {}, but {} is cluster id {} at {}",
            target.server,
            cluster.name_any(),
            cluster.spec.cluster_id,
            cluster.spec.server
        )
    })
}

pub use mesh_core::remote::cluster_id;

/// The remote's kubeconfig file could not be used: same error, hints about that file.
pub fn remote_kubeconfig_error(path: &Path, err: kubeconfig::Error) -> Error {
    if let kubeconfig::Error::Load { source, .. } = &err {
        // The parser's message quotes the offending lines, which may hold a credential:
        // keep the first line of each cause only.
        let mut what = format!("cannot load kubeconfig {}", path.display());
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(c) = cause {
            let text = c.to_string();
            let first = text.lines().next().unwrap_or_default().trim();
            if !first.is_empty() && !what.contains(first) {
                what = format!("{what}: {first}");
            }
            cause = c.source();
        }
        return Error::Refused {
            what,
            hint: format!(
                "check the file with `kubectl --kubeconfig {} config view`",
                path.display()
            ),
        };
    }
    let hint = match &err {
        kubeconfig::Error::ContextNotFound { available, .. } if !available.is_empty() => {
            format!(
                "pass --remote-context with one of: {}",
                available.join(", ")
            )
        }
        kubeconfig::Error::Read { .. } => "check the path of the remote's kubeconfig".into(),
        kubeconfig::Error::NoCurrentContext => {
            "pass --remote-context, or set current-context in that file".into()
        }
        kubeconfig::Error::ContextNotFound { .. } => {
            "the file defines no context; check that it is a kubeconfig".into()
        }
        kubeconfig::Error::Load { .. } | kubeconfig::Error::Yaml(_) => format!(
            "check the file with `kubectl --kubeconfig {} config view`",
            path.display()
        ),
        other => other.hint(),
    };
    let mut what = Error::from(err).what();
    let in_file = format!("in {}", path.display());
    if what.contains("in the kubeconfig") {
        what = what.replace("in the kubeconfig", &in_file);
    } else if !what.contains(&path.display().to_string()) {
        what = format!("{what} ({in_file})");
    }
    Error::Refused { what, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restart advice ran `kubectl --context <recorded>` though that name, taken from the
    /// kubeconfig attach was given, reached the primary in the user's kubeconfig.
    #[test]
    fn a_recorded_context_counts_only_where_it_reaches_the_cluster() {
        let user = Kubeconfig::from_yaml(
            "clusters:
- {name: primary, cluster: {server: 'https://10.0.0.1:6443'}}
- {name: east, cluster: {server: 'https://10.0.0.2:6443/'}}
contexts:
- {name: kubernetes-admin@kubernetes, context: {cluster: primary}}
- {name: admin@east, context: {cluster: east}}
",
        )
        .expect("kubeconfig");
        let recorded = |context: &str| {
            let mut east = mesh_core::fixtures::mesh_cluster("east", "uid-east");
            east.spec.server = "https://10.0.0.2:6443".to_owned();
            east.metadata.annotations =
                Some([(REMOTE_CONTEXT_ANNOTATION.to_owned(), context.to_owned())].into());
            remote_context_in(&user, &east).map(str::to_owned)
        };
        assert_eq!(recorded("admin@east").as_deref(), Some("admin@east"));
        assert_eq!(recorded("kubernetes-admin@kubernetes"), None);
        assert_eq!(recorded("absent"), None);
    }

    #[test]
    fn remote_kubeconfig_errors_point_at_the_remote_flags() {
        let err = remote_kubeconfig_error(
            Path::new("east.yaml"),
            kubeconfig::Error::ContextNotFound {
                context: "nope".into(),
                available: vec!["a".into(), "b".into()],
            },
        );
        assert_eq!(
            err.line(),
            "context \"nope\" not found in east.yaml; pass --remote-context with one of: a, b"
        );
    }

    fn east() -> Target {
        Target {
            label: "remote cluster east".into(),
            server: "https://east:6443".into(),
            where_configured: "east.yaml".into(),
        }
    }

    #[test]
    fn missing_rights_are_said_with_where_they_are_missing() {
        assert_eq!(lacking(&east(), &[]), None);
        let missing = ["secrets (get)".to_owned(), "namespaces (list)".to_owned()];
        assert_eq!(
            lacking(&east(), &missing).as_deref(),
            Some("on remote cluster east (https://east:6443): secrets (get), namespaces (list)")
        );
    }

    #[test]
    fn a_kubeconfig_reaching_another_cluster_is_named_with_both_ids() {
        let cluster = crate::mesh_state::fixtures::cluster("east", "https://10.0.0.1:6443", "");
        let id = cluster.spec.cluster_id.clone();
        assert_eq!(other_cluster(&id, &east(), &cluster), None);
        assert_eq!(
            other_cluster("uid-west", &east(), &cluster),
            Some(format!(
                "the remote kubeconfig reaches cluster id uid-west at https://east:6443, but \
                 east is cluster id {id} at https://10.0.0.1:6443"
            ))
        );
    }

    /// The line `err` reads as when a read of the cluster `label` fails.
    fn read_error_line(
        label: &str,
        server: &str,
        where_configured: &str,
        err: kube::Error,
    ) -> String {
        let target = Target {
            label: label.into(),
            server: server.into(),
            where_configured: where_configured.into(),
        };
        request_error(&target, "read", err).line()
    }

    #[test]
    fn refused_connection_is_named_plainly() {
        let err = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        )));
        let line = read_error_line(
            "remote cluster east",
            "https://127.0.0.1:1",
            "the server address in east.yaml",
            err,
        );
        assert_eq!(
            line,
            "cannot reach remote cluster east at https://127.0.0.1:1: connection refused; \
             check the server address in east.yaml and that the cluster is up"
        );
    }

    #[test]
    fn unauthorized_is_about_credentials() {
        let err = kube::Error::Api(
            kube::core::Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        );
        let line = read_error_line(
            "the primary",
            "https://p",
            "context main of your kubeconfig",
            err,
        );
        assert!(
            line.starts_with("the primary at https://p did not accept"),
            "{line}"
        );
    }

    /// A remote's admin kubeconfig names a server its admin runs: one that answers without end
    /// is refused at the bound the stored credentials' clients have, not waited for until
    /// the read timeout (a stand-in server: no apiserver does it on demand).
    #[tokio::test]
    async fn an_admin_client_refuses_an_answer_without_end() {
        use mesh_testenv::endless_answer::EndlessAnswer;
        let server = EndlessAnswer::start(call_limits::DEFAULT_MAX_ANSWER_LINE + (32 << 20))
            .await
            .unwrap();
        let kc = Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
        let remote = client(kc, None).await.unwrap();
        let started = std::time::Instant::now();
        let error = remote.apiserver_version().await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ran past 64 MiB without a line break"),
            "{error}"
        );
        assert!(started.elapsed() < READ_TIMEOUT, "{:?}", started.elapsed());
    }

    /// A `Retry-After` of a server run by a remote's admin was waited for however long it
    /// said (a stand-in server: no apiserver asks for that on demand).
    #[tokio::test]
    async fn an_admin_client_call_ends_by_its_deadline_whatever_the_server_asks() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    while connection.read(&mut request).await.unwrap_or(0) > 0 {
                        let answer = "HTTP/1.1 429 Too Many Requests\r\nretry-after: \
                                      4000000000\r\ncontent-length: 0\r\n\r\n";
                        let _ = connection.write_all(answer.as_bytes()).await;
                    }
                });
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let deadline = Duration::from_millis(500);
        let remote = limited_client("east".into(), config, deadline).unwrap();
        let called = tokio::time::timeout(Duration::from_secs(10), remote.apiserver_version());
        let answer = called.await.expect("ended by the call's deadline");
        assert!(answer.is_err(), "{answer:?}");
    }

    /// The read timeout counted the time a pooled connection sat idle: a request right after
    /// a wait of most of it (rotate waiting for the webhook, then deleting a token) timed out
    /// on a healthy remote.
    #[tokio::test]
    async fn each_request_has_the_whole_read_timeout() {
        let kc = Kubeconfig::from_yaml(
            "contexts: [{name: east, context: {cluster: east, user: admin}}]\n\
             clusters: [{name: east, cluster: {server: 'https://east:6443'}}]\n\
             users: [{name: admin, user: {token: t}}]\n",
        )
        .unwrap();
        let (name, config) = client_config(kc, Some("east")).await.unwrap();
        assert_eq!(name, "east");
        assert_eq!(config.read_timeout, Some(READ_TIMEOUT));
        assert!(config.reset_reader_on_write);
    }

    #[test]
    fn a_remote_context_asked_for_by_name_must_exist() {
        let kc = Kubeconfig::from_yaml(
            "contexts: [{name: east, context: {cluster: east, user: admin}}]\n\
             clusters: [{name: east, cluster: {server: 'https://east:6443'}}]\n\
             users: [{name: admin, user: {token: t}}]\n",
        )
        .unwrap();
        let Err(error) = RemoteAdmin::find(None, &kc, None, Some("esat")) else {
            panic!("an unknown context accepted");
        };
        assert!(error.line().contains("esat"), "{}", error.line());
        let found = RemoteAdmin::find(None, &kc, None, Some("east")).unwrap();
        assert_eq!(found.and_then(|a| a.context).as_deref(), Some("east"));
        // Not asked for: a recorded context the kubeconfig lacks means no credentials here.
        assert!(RemoteAdmin::find(None, &kc, None, None).unwrap().is_none());
    }

    #[test]
    fn needs_are_spelled_like_kubectl() {
        let n = Need::cluster("rbac.authorization.k8s.io", "clusterroles", &["create"]);
        assert_eq!(n.qualified(), "clusterroles.rbac.authorization.k8s.io");
        let n = Need::namespaced("", "secrets", "kubectl-mesh", &["get"]);
        assert_eq!(n.qualified(), "secrets");
    }

    #[test]
    fn each_verb_is_one_review() {
        let need = Need::cluster("g", "things", &["get", "patch"]).named("one");
        let each: Vec<Need> = need.each_verb().collect();
        assert_eq!(each.len(), 2);
        assert_eq!(each[1].verbs, ["patch"]);
        assert_eq!(each[1].name, Some("one"));
        let attributes = need.review("patch").spec.resource_attributes.unwrap();
        assert_eq!(
            (attributes.verb.as_deref(), attributes.name.as_deref()),
            (Some("patch"), Some("one"))
        );
        assert_eq!(attributes.namespace, None);
        assert_eq!(attributes.subresource, None);
    }

    #[test]
    fn a_need_on_an_object_names_it() {
        let secret = k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("cluster-east".into()),
                namespace: Some("kubectl-mesh".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let need = Need::on(&Manifest::new(&secret).unwrap(), &["delete"]);
        let attributes = need.review("delete").spec.resource_attributes.unwrap();
        assert_eq!(
            (
                attributes.group.as_deref(),
                attributes.resource.as_deref(),
                attributes.namespace.as_deref(),
                attributes.name.as_deref()
            ),
            (
                Some(""),
                Some("secrets"),
                Some("kubectl-mesh"),
                Some("cluster-east")
            )
        );
        assert_eq!(
            need.phrase(&need.verbs),
            "secrets named cluster-east in namespace kubectl-mesh (delete)"
        );
    }

    #[test]
    fn a_subresource_is_asked_for_apart() {
        let need = Need::namespaced("", "serviceaccounts/token", "kubectl-mesh", &["create"]);
        let attributes = need.review("create").spec.resource_attributes.unwrap();
        assert_eq!(
            (
                attributes.resource.as_deref(),
                attributes.subresource.as_deref()
            ),
            (Some("serviceaccounts"), Some("token"))
        );
    }

    #[test]
    fn rules_share_what_differs_only_in_resource() {
        let rules = cluster_role_rules(&[
            Need::cluster("", "namespaces", &["get", "patch"]),
            Need::cluster("a", "xs", &["get"]).named("n"),
            Need::cluster("a", "ys", &["get"]).named("n"),
            Need::cluster("a", "zs", &["get"]),
        ]);
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        assert_eq!(rules[0].resource_names, None);
        assert_eq!(rules[1].resources.as_deref().unwrap(), ["xs", "ys"]);
        assert_eq!(rules[1].resource_names.as_deref().unwrap(), ["n"]);
        assert_eq!(rules[2].resources.as_deref().unwrap(), ["zs"]);
        assert_eq!(rules[2].resource_names, None);
    }
}
