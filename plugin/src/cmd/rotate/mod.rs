//! `kubectl mesh rotate`: new tokens for the identities attach created on a remote, and the
//! old ones revoked, without a moment when the stored credentials do not work.
//!
//! Each identity has its token Secret on the remote (`kubectl-mesh-sync-token`, the name
//! attach, check and detach know) and, during a rotation only, a standby one
//! (`<name>-standby`). A rotation moves the stored kubeconfig to a freshly issued standby
//! token, waits until the webhook has synced with it (MeshCluster
//! `status.observedCredentials` equals the stored Secret's resourceVersion), deletes the own
//! Secret, which revokes the old token, issues that one anew, moves the stored kubeconfig
//! back to it, waits again and deletes the standby.
//!
//! Nothing is issued for a cluster another primary took over (`attach --force`): its
//! ServiceAccounts and token Secrets on the remote must be this primary's, checked before the
//! first token of any cluster is issued.
//!
//! Whether a cluster has an Istio reader or a view identity is the remote's to say (its
//! ServiceAccount or token Secrets): a caller who may not read istio-system on the primary sees
//! no Istio remote secret there, a view Secret deleted on the primary leaves the view token on
//! the remote, and skipping either would leave a token valid that can read every Secret (the
//! rotated ones included) or every pod spec there. One the primary stores no credentials of is
//! refused until attach stores them again. Rotating the Istio reader needs the rights in
//! istio-system, asked up front.
//!
//! A token Secret is deleted only while the stored kubeconfig holds another token that the
//! webhook has used (or when the stored one has expired and cannot be used anyway), so an
//! interruption at any step leaves working credentials, and a re-run goes on from what it
//! finds. The view identity and the Istio reader have no webhook to wait for: `kubectl
//! mesh` reads the view credentials on each run, and istiod reloads a remote secret when it
//! changes.

use std::ops::ControlFlow::{Break, Continue};
use std::time::Duration;

use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
    config::Kubeconfig,
};
use mesh_core::{
    GROUP, MESH_NAMESPACE,
    cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, MeshCluster},
    failure::is_unreachable,
    token,
};

use crate::{
    Context, Error, Result,
    access::{self, Need, RemoteAdmin, RemoteAdminFlags, Target},
    cmd::attach::hooks::TestHooks,
    credentials, interrupt, kubeconfig, mesh_state,
    output::Progress,
    poll::{self, Late},
    remote_setup as setup,
};

mod identities;
mod interrupted;
mod rotation;

use identities::{
    IstioSecret, Unasked, has_istio_reader, holders_of, identity_on, istio_reader_unknown,
    refuse_without_istio_rights, remote_unreachable,
};
use interrupted::Interruption;
use rotation::Rotation;

/// Replace a cluster's stored tokens and revoke the old ones, without downtime.
///
/// Issues new tokens on the remote for the identities attach created there (the sync
/// account, and the view identity and Istio reader when attached with them), stores them on
/// the primary, waits until the webhook uses the new sync token, then revokes the old ones.
/// Needs an admin kubeconfig of the remote like attach: --remote-kubeconfig, or the context
/// attach used if your kubeconfig has it. Safe to interrupt and to re-run.
#[derive(Debug, clap::Args)]
pub struct Rotate {
    /// Name of the attached cluster.
    #[arg(value_name = "NAME", required_unless_present = "all")]
    pub name: Option<String>,
    /// Rotate every attached cluster (each with the context attach recorded).
    // One remote's kubeconfig or context cannot serve every cluster.
    #[arg(long, conflicts_with_all = ["name", "remote_kubeconfig", "remote_context"])]
    pub all: bool,
    #[command(flatten)]
    pub remote_admin: RemoteAdminFlags,
    /// Print the steps without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for each token to be issued and for the webhook to use it.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `--timeout` when not given.
const DEFAULT_TIMEOUT: &str = "60s";

/// Who holds a token and where its kubeconfig is stored on the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The webhook: `kubectl-mesh/cluster-<name>`.
    Sync,
    /// `kubectl mesh status` and `check`: `kubectl-mesh/cluster-<name>-view`.
    View,
    /// istiod: `istio-system/istio-remote-secret-<name>`.
    Istio,
}

impl Holder {
    /// The remote ServiceAccount.
    pub fn account(self) -> &'static str {
        match self {
            Self::Sync => setup::SYNC_ACCOUNT,
            Self::View => setup::VIEW_ACCOUNT,
            Self::Istio => setup::ISTIO_READER,
        }
    }

    /// The token Secret attach created on the remote.
    pub fn token_secret(self) -> &'static str {
        match self {
            Self::Sync => setup::TOKEN_SECRET,
            Self::View => setup::VIEW_TOKEN_SECRET,
            Self::Istio => setup::ISTIO_READER_TOKEN_SECRET,
        }
    }

    /// Namespace and name of the Secret on the primary that stores the kubeconfig.
    pub fn stored_at(self, cluster: &str) -> (&'static str, String) {
        match self {
            Self::Sync => (MESH_NAMESPACE, setup::cluster_secret_name(cluster)),
            Self::View => (MESH_NAMESPACE, setup::view_secret_name(cluster)),
            Self::Istio => (setup::ISTIO_NAMESPACE, setup::istio_secret_name(cluster)),
        }
    }
}

/// The steps of one identity's rotation, as `--dry-run` prints them.
pub fn steps(cluster: &str, holder: Holder) -> Vec<String> {
    let own = holder.token_secret();
    let standby = setup::standby_secret(own);
    let (ns, stored) = holder.stored_at(cluster);
    let used = match holder {
        Holder::Sync => format!(
            "wait until the webhook has synced {cluster} with it (MeshCluster \
             status.observedCredentials)"
        ),
        Holder::View => "(read by kubectl mesh on each run: nothing to wait for)".to_owned(),
        Holder::Istio => "(istiod reloads the secret when it changes)".to_owned(),
    };
    vec![
        format!("issue a token in Secret {MESH_NAMESPACE}/{standby} on {cluster}"),
        format!("store it in Secret {ns}/{stored} on the primary; {used}"),
        format!(
            "delete Secret {MESH_NAMESPACE}/{own} on {cluster} (revokes the token it held) \
             and issue it anew"
        ),
        format!("store the new token in Secret {ns}/{stored}; {used}"),
        format!("delete Secret {MESH_NAMESPACE}/{standby} on {cluster}"),
    ]
}

impl Rotate {
    /// The MeshClusters this run rotates: the one named, or with `--all` every one (at least
    /// one).
    async fn targets(&self, primary: &Client, target: &Target) -> Result<Vec<MeshCluster>> {
        if !self.all {
            let name = self.name.as_deref().unwrap_or_default();
            let mc = mesh_state::cluster_named(primary, target, name).await?;
            return Ok(vec![mc.ok_or_else(|| mesh_state::not_attached(name))?]);
        }
        let list = mesh_state::clusters(primary).await?;
        if list.is_empty() {
            return Err(Error::Refused {
                what: "no cluster is attached".into(),
                hint: "`kubectl mesh attach` attaches one".into(),
            });
        }
        Ok(list)
    }

    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let rerun = interrupted::rerun(&self, ctx);
        let hooks = TestHooks::from_env()?;
        let (primary_kc, primary_target, primary) = ctx.primary_client().await?;
        let targets = self.targets(&primary, &primary_target).await?;
        let Self {
            remote_admin,
            dry_run,
            timeout,
            ..
        } = self;
        let progress = ctx.progress;

        // Refused before anything is rotated, for every target: nothing is left half-done.
        for mc in &targets {
            own_secret_named(mc)?;
        }
        let primary_id = access::cluster_id(&primary)
            .await
            .map_err(|e| access::request_error(&primary_target, "read kube-system", e))?;
        // What each rotation involves, read before anything is rotated: whose tokens, and
        // whether they are time-bound (issued through the TokenRequest API).
        let mut plans = Vec::new();
        for mc in &targets {
            let name = mc.name_any();
            let (holders, istio) = holders_of(&primary, &primary_target, &name).await?;
            let mut plan = Plan {
                name,
                holders,
                found_on_remote: Vec::new(),
                istio,
                time_bound: false,
            };
            if !dry_run {
                for holder in plan.holders.clone() {
                    plan.check_stored(&primary, &primary_target, mc, holder)
                        .await?;
                }
            }
            plans.push(plan);
        }
        // Every right on the primary and every remote reached and checked before the first
        // is rotated: a refusal halfway (or halfway through --all) would leave some tokens
        // rotated and some not.
        let mut remotes = Vec::new();
        if dry_run {
            // The dry run reaches a remote only to learn what the primary does not show: whether
            // it has an Istio reader or a view identity. Without the remote's credentials, or
            // when it cannot be reached, it says what it cannot tell instead of failing, or of
            // leaving an identity out silently.
            for (mc, plan) in targets.iter().zip(&mut plans) {
                if !plan.asks_remote() {
                    continue;
                }
                let unasked = match remote_admin.find(Some(mc), &primary_kc)? {
                    None => Some(Unasked::NoKubeconfig),
                    Some(admin) => match unreachable(admin, &plan.name).await? {
                        Some(why) => Some(Unasked::Unreachable(why)),
                        None => {
                            let (remote, target) =
                                remote_client(&plan.name, mc, &primary_kc, &remote_admin, false)
                                    .await?;
                            plan.add_found_on_remote(&remote, &target).await?;
                            None
                        }
                    },
                };
                let Some(unasked) = unasked else { continue };
                match (has_istio_reader(plan.istio, None), &unasked) {
                    (None, _) => progress.warn(istio_reader_unknown(&plan.name, &unasked)),
                    (Some(_), Unasked::Unreachable(why)) => {
                        progress.warn(remote_unreachable(&plan.name, why))
                    }
                    (Some(_), Unasked::NoKubeconfig) => {}
                }
            }
            refuse_without_istio_rights(&primary, &primary_target, &plans).await?;
            // Refused as the run refuses them: an identity whose stored credentials are
            // missing on the primary.
            for (mc, plan) in targets.iter().zip(&mut plans) {
                for holder in plan.found_on_remote.clone() {
                    plan.check_stored(&primary, &primary_target, mc, holder)
                        .await?;
                }
            }
            refuse_unsyncable(&targets)?;
        } else {
            access::require(
                &primary,
                &primary_target,
                &primary_needs(),
                access::ASK_AN_ADMIN,
            )
            .await?;
            for (mc, plan) in targets.iter().zip(&mut plans) {
                let (remote, target) =
                    remote_client(&plan.name, mc, &primary_kc, &remote_admin, plan.time_bound)
                        .await?;
                plan.add_found_on_remote(&remote, &target).await?;
                refuse_taken_over(&remote, &target, &plan.name, &primary_id, &plan.holders).await?;
                remotes.push((remote, target));
            }
            refuse_without_istio_rights(&primary, &primary_target, &plans).await?;
            // An identity the remote has and the primary did not show: what is stored for it
            // (the Istio reader's readable now) is checked like the others, and refused when
            // missing.
            for ((mc, plan), (remote, target)) in targets.iter().zip(&mut plans).zip(&remotes) {
                for holder in plan.found_on_remote.clone() {
                    let time_bound = plan.time_bound;
                    plan.check_stored(&primary, &primary_target, mc, holder)
                        .await?;
                    if plan.time_bound && !time_bound {
                        let needs = [Need::token_request()];
                        access::require(remote, target, &needs, access::USE_A_REMOTE_ADMIN).await?;
                    }
                }
            }
            // Last of the checks: a refusal above (a takeover, say) says more than the
            // conditions it causes.
            refuse_unsyncable(&targets)?;
        }
        let mut remotes = remotes.into_iter();
        // From the first token issued on, an interruption stops rotate between two writes.
        let listener = (!dry_run).then(interrupt::Listener::start);
        let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
        for (i, (mc, Plan { name, holders, .. })) in targets.iter().zip(plans).enumerate() {
            if dry_run {
                for holder in &holders {
                    progress.info(format!(
                        "{name}: would rotate the token of ServiceAccount {MESH_NAMESPACE}/{}:",
                        holder.account()
                    ));
                    for (i, step) in steps(&name, *holder).iter().enumerate() {
                        progress.info(format!("  {}. {step}", i + 1));
                    }
                }
                continue;
            }
            let (Some((remote, remote_target)), Some(listener)) = (remotes.next(), &listener)
            else {
                break;
            };
            let rotation = Rotation {
                cluster: &name,
                record: mc,
                primary: &primary,
                primary_target: &primary_target,
                remote: &remote,
                remote_target: &remote_target,
                primary_id: &primary_id,
                timeout,
                progress,
                listener,
                hooks,
            };
            for (j, holder) in holders.iter().enumerate() {
                if let Some(stopped) = rotation.rotate(*holder).await? {
                    let interruption = Interruption {
                        cluster: &name,
                        stopped,
                        rotated: &holders[..j],
                        later: &holders[j + 1..],
                        rerun: &rerun,
                        clusters_done: &names[..i],
                        clusters_left: &names[i + 1..],
                    };
                    return Err(interruption.error());
                }
            }
            progress.ok(format!("{name}: tokens rotated, the old ones revoked"));
        }
        Ok(())
    }
}

/// Rotate renews the Secret attach stores for a cluster; a MeshCluster edited to name another
/// one would wait for the webhook to use credentials it never reads (or, renewed there,
/// write this cluster's token into another cluster's kubeconfig).
fn own_secret_named(mc: &MeshCluster) -> Result<()> {
    let name = mc.name_any();
    let own = setup::cluster_secret_name(&name);
    if mc.spec.secret_name == own {
        return Ok(());
    }
    Err(Error::Refused {
        what: format!(
            "{name} names Secret {MESH_NAMESPACE}/{} for its credentials, not {own}, the one \
             attach stores and rotate renews",
            mc.spec.secret_name
        ),
        hint: format!(
            "attach {name} again (`kubectl mesh attach`) to record its own Secret; then rotate"
        ),
    })
}

/// What one cluster's rotation involves, read before anything is rotated.
struct Plan {
    name: String,
    /// Whose tokens are rotated.
    holders: Vec<Holder>,
    /// Those of `holders` the remote has and the primary did not show stored.
    found_on_remote: Vec<Holder>,
    /// What the primary showed of the Istio remote secret.
    istio: IstioSecret,
    /// Whether a stored token is time-bound (issued through the TokenRequest API).
    time_bound: bool,
}

impl Plan {
    /// Whether only the remote can tell if there is more to rotate: the primary shows no Istio
    /// remote secret or no view Secret.
    fn asks_remote(&self) -> bool {
        self.istio != IstioSecret::Stored || !self.holders.contains(&Holder::View)
    }

    /// Adds to `holders` the Istio reader and the view identity the remote has and the primary
    /// did not show: their old tokens would stay valid otherwise.
    async fn add_found_on_remote(&mut self, remote: &Client, target: &Target) -> Result<()> {
        if !self.holders.contains(&Holder::View)
            && identity_on(remote, target, &self.name, Holder::View).await?
        {
            // After the sync account, where the primary lists it.
            self.holders.insert(1, Holder::View);
            self.found_on_remote.push(Holder::View);
        }
        if self.istio != IstioSecret::Stored {
            let on_remote = identity_on(remote, target, &self.name, Holder::Istio).await?;
            if has_istio_reader(self.istio, Some(on_remote)) == Some(true) {
                self.holders.push(Holder::Istio);
                self.found_on_remote.push(Holder::Istio);
            }
        }
        Ok(())
    }

    /// Before any token is issued: new tokens go nowhere but where attach stored the old
    /// ones.
    async fn check_stored(
        &mut self,
        primary: &Client,
        target: &Target,
        mc: &MeshCluster,
        holder: Holder,
    ) -> Result<()> {
        let stored = stored_secret(primary, target, &self.name, holder).await?;
        stored_as_recorded(mc, holder, &stored)?;
        self.time_bound |= lifetime_of(stored_token_of(&stored).as_deref()).is_some();
        Ok(())
    }
}

/// The webhook's reason for a `Reachable=False` that a new token repairs: the stored one
/// expired.
const TOKEN_EXPIRED: &str = "TokenExpired";
/// The webhook's reason for `Synced=False` when it writes nothing: the cluster's scope cannot be
/// used.
const SCOPE_INVALID: &str = "ScopeInvalid";

/// Why the webhook cannot sync `mc` now, if it cannot: rotate waits for it to sync with each new
/// token before it revokes the old one, so it would stop halfway there after --timeout. An
/// expired token is what rotate repairs; a cluster without conditions yet is given its chance.
fn unsyncable(mc: &MeshCluster) -> Option<String> {
    if mesh_state::is_being_detached(mc) {
        return Some("being detached".to_owned());
    }
    let status = mc.status.as_ref()?;
    let said = |c: &Condition| match c.message.as_str() {
        "" => format!("{}={}, {}", c.type_, c.status, c.reason),
        message => format!("{}={}, {}: {message}", c.type_, c.status, c.reason),
    };
    if let Some(c) = status.condition(CONDITION_REACHABLE)
        && c.status == "False"
        && c.reason != TOKEN_EXPIRED
    {
        return Some(said(c));
    }
    if let Some(c) = status.condition(CONDITION_SYNCED)
        && c.status == "False"
        && c.reason == SCOPE_INVALID
    {
        return Some(said(c));
    }
    None
}

/// Refuses, before anything changes, when the webhook cannot sync some of `targets` now
/// ([`unsyncable`]), naming each and what to do.
///
/// Refused rather than the others rotated and these reported at the end: every other refusal of
/// rotate (credentials, takeovers, rights) keeps `--all` all-or-nothing, so that its outcome is
/// one line, not one to read per cluster; and a leak response loses one command at most, which
/// the hint spells out (the others by name), while a cluster tried anyway would hold up the
/// ones after it for --timeout with a standby token issued.
fn refuse_unsyncable(targets: &[MeshCluster]) -> Result<()> {
    let mut stuck = Vec::new();
    let mut others = Vec::new();
    for mc in targets {
        match unsyncable(mc) {
            Some(why) => stuck.push(format!("{} ({why})", mc.name_any())),
            None => others.push(mc.name_any()),
        }
    }
    if stuck.is_empty() {
        return Ok(());
    }
    let meanwhile = match others.as_slice() {
        [] => String::new(),
        names => format!(
            "; meanwhile rotate the others by name: {}",
            names
                .iter()
                .map(|n| format!("`kubectl mesh rotate {n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(Error::Refused {
        what: format!(
            "the webhook cannot sync {} now, and rotate revokes an old token only once the \
             webhook uses the new one; nothing was rotated",
            stuck.join(", ")
        ),
        hint: format!(
            "`kubectl mesh check` shows why; rotate once it syncs again (a cluster being \
             detached needs no rotation){meanwhile}"
        ),
    })
}

/// What rotate writes on the primary: the stored kubeconfigs in the mesh namespace, replaced
/// (`update`) with the new tokens (an Istio remote secret's rights are [`istio_needs`]). `get`
/// on MeshClusters too: between its steps rotate reads which credentials the webhook uses, and
/// a read refused there would stop it halfway.
fn primary_needs() -> Vec<Need> {
    vec![
        Need::namespaced("", "secrets", MESH_NAMESPACE, STORED_RW),
        Need::cluster(GROUP, "meshclusters", &["get"]),
    ]
}

/// Reading and replacing a stored kubeconfig.
const STORED_RW: &[&str] = &["get", "update"];

/// What rotating an Istio reader's token writes on the primary: its Istio remote secret.
fn istio_needs() -> Vec<Need> {
    vec![Need::namespaced(
        "",
        "secrets",
        setup::ISTIO_NAMESPACE,
        STORED_RW,
    )]
}

/// What rotate does on the remote: ServiceAccounts read (whose they are), token Secrets read,
/// deleted (revoking their tokens) and created anew; with `time_bound` tokens (`attach
/// --token-ttl`), each is requested through the TokenRequest API (`serviceaccounts/token`)
/// rather than filled in by the remote.
fn remote_needs(time_bound: bool) -> Vec<Need> {
    let mut needs = vec![
        Need::namespaced("", "serviceaccounts", MESH_NAMESPACE, &["get"]),
        Need::namespaced("", "secrets", MESH_NAMESPACE, &["get", "create", "delete"]),
    ];
    if time_bound {
        needs.push(Need::token_request());
    }
    needs
}

/// What a re-run of attach for `holder` is given while its credentials are stored on the
/// primary: it keeps the view identity, but makes the Istio reader only when asked.
fn attach_flag(holder: Holder) -> &'static str {
    match holder {
        Holder::Istio => " with --istio-remote-secret",
        Holder::Sync | Holder::View => "",
    }
}

/// What a re-run of attach for `holder` is given to store its credentials on the primary again:
/// attach keeps the view identity only when it finds them stored.
fn storing_flag(holder: Holder) -> &'static str {
    match holder {
        Holder::View => " with --services-view",
        Holder::Sync | Holder::Istio => attach_flag(holder),
    }
}

/// An admin client of the remote, checked to be that cluster with the rights rotate needs
/// (see [`remote_needs`] for `time_bound`).
async fn remote_client(
    name: &str,
    mc: &MeshCluster,
    primary_kc: &Kubeconfig,
    flags: &RemoteAdminFlags,
    time_bound: bool,
) -> Result<(Client, Target)> {
    let Some(admin) = flags.find(Some(mc), primary_kc)? else {
        return Err(Error::Refused {
            what: format!(
                "no credentials for remote cluster {name} ({}): rotate needs an admin \
                 kubeconfig of it to issue tokens there",
                mc.spec.server
            ),
            hint: format!(
                "pass --remote-kubeconfig FILE (and --remote-context if it is not the \
                 current one): `kubectl mesh rotate {name} --remote-kubeconfig FILE`"
            ),
        });
    };
    admin.connect_to(mc, &remote_needs(time_bound)).await
}

/// Why the remote cluster `name` of `admin` cannot be reached (down, or not answering), in
/// one line; `None` when it answers. A dry run then says what it cannot tell rather than fail,
/// for every cluster of `--all`; a real run refuses.
async fn unreachable(admin: RemoteAdmin, name: &str) -> Result<Option<String>> {
    let (client, target) = admin.connect(name).await?;
    Ok(match access::cluster_id(&client).await {
        Err(e) if is_unreachable(&e) => {
            Some(access::request_error(&target, "read kube-system", e).to_string())
        }
        // Anything else is refused, or checked, as the run does it.
        _ => None,
    })
}

/// Refuses, before any token is issued, a cluster another primary took over (`attach
/// --force`): its ServiceAccounts are that primary's now, and a token issued for them here
/// would let this primary write there again (the sync scope policy matches the account's
/// name only). Checked: each of `holders`' ServiceAccount and token Secrets, standby included.
async fn refuse_taken_over(
    remote: &Client,
    target: &Target,
    cluster: &str,
    primary_id: &str,
    holders: &[Holder],
) -> Result<()> {
    let read = |(kind, name): (&str, &str)| {
        let doing = format!("read {kind} {MESH_NAMESPACE}/{name}");
        move |e| access::request_error(target, &doing, e)
    };
    let accounts = Api::<ServiceAccount>::namespaced(remote.clone(), MESH_NAMESPACE);
    let secrets = Api::<Secret>::namespaced(remote.clone(), MESH_NAMESPACE);
    for holder in holders {
        let account = ("ServiceAccount", holder.account());
        let Some(found) = accounts.get_opt(account.1).await.map_err(read(account))? else {
            return Err(missing_account(*holder, cluster));
        };
        ours_or_refused(&found.metadata, account, cluster, primary_id)?;
        let own = holder.token_secret();
        for name in [own.to_owned(), setup::standby_secret(own)] {
            let secret = ("Secret", name.as_str());
            if let Some(found) = secrets.get_opt(&name).await.map_err(read(secret))? {
                ours_or_refused(&found.metadata, secret, cluster, primary_id)?;
            }
        }
    }
    Ok(())
}

/// The ServiceAccount of `holder` is not on `cluster`'s remote: attach makes it again.
fn missing_account(holder: Holder, cluster: &str) -> Error {
    let asked = attach_flag(holder);
    Error::Refused {
        what: format!(
            "ServiceAccount {MESH_NAMESPACE}/{} is missing on {cluster}",
            holder.account()
        ),
        hint: format!("re-run `kubectl mesh attach` for {cluster}{asked}; then rotate"),
    }
}

/// The remote object `kind` `name` (in the mesh namespace) of `cluster`, found with `meta`,
/// must be one this primary's attach (or rotate) created for it.
fn ours_or_refused(
    meta: &ObjectMeta,
    (kind, name): (&str, &str),
    cluster: &str,
    primary_id: &str,
) -> Result<()> {
    if setup::is_ours_from(meta, cluster, primary_id) {
        return Ok(());
    }
    let object = format!("{kind} {MESH_NAMESPACE}/{name} on {cluster}");
    Err(match setup::primary_of(meta) {
        Some(other) if setup::is_ours(meta, cluster) => Error::Refused {
            what: format!(
                "{object} belongs to another primary (kube-system uid {other}): it took \
                 {cluster} over"
            ),
            hint: format!(
                "rotate from the primary that holds {cluster} now; here `kubectl mesh detach \
                 {cluster}` drops it, or `kubectl mesh attach` with --force takes it back"
            ),
        },
        _ => Error::Refused {
            what: format!("{object} was not created by kubectl-mesh for {cluster}"),
            hint: format!(
                "`kubectl -n {MESH_NAMESPACE} get {} {name} -o yaml` on {cluster} shows whose \
                 it is; rotate replaces only what attach created",
                kind.to_lowercase()
            ),
        },
    })
}

/// The token a token Secret holds, once issued.
fn token_in(secret: Option<&Secret>) -> Option<String> {
    secret?
        .data
        .as_ref()?
        .get("token")
        .and_then(|t| String::from_utf8(t.0.clone()).ok())
        .filter(|t| !t.is_empty())
}

/// Each kubeconfig `stored` holds for `holder` of `mc` must be what attach recorded in `mc`
/// ([`mesh_core::recorded`]: the server of `spec.server`, the CA of `spec.caFingerprint`): a
/// Secret edited to name another server (a relaying proxy) would otherwise receive every new
/// token, and rotating would never get rid of whoever edited it.
fn stored_as_recorded(mc: &MeshCluster, holder: Holder, stored: &Secret) -> Result<()> {
    let cluster = mc.name_any();
    let (ns, name) = holder.stored_at(&cluster);
    for value in stored.data.iter().flat_map(|d| d.values()) {
        let yaml = std::str::from_utf8(&value.0).map_err(|_| Error::Refused {
            what: format!("Secret {ns}/{name} does not hold a UTF-8 kubeconfig"),
            hint: "re-run `kubectl mesh attach` to store it anew".into(),
        })?;
        let kc = kubeconfig::parse_stored(yaml)?;
        if let Err(mismatch) = mesh_core::recorded::check(&kc, &mc.spec) {
            return Err(Error::Refused {
                what: format!(
                    "{cluster}: the kubeconfig in Secret {ns}/{name} is not what attach recorded \
                     ({mismatch}); no token is issued, rotating would store the new ones there"
                ),
                hint: format!(
                    "restore the Secret, or attach {cluster} again (`kubectl mesh attach <its \
                     kubeconfig> --name {cluster}`), which rewrites it; then rotate"
                ),
            });
        }
    }
    Ok(())
}

/// The stored Secret's kubeconfigs (one per key) with their user's token replaced.
fn with_token(secret: &Secret, token: &str) -> Result<Secret> {
    let mut out = secret.clone();
    for value in out.data.iter_mut().flat_map(|d| d.values_mut()) {
        let yaml = std::str::from_utf8(&value.0).map_err(|_| Error::Refused {
            what: format!(
                "Secret {} does not hold a UTF-8 kubeconfig",
                secret.name_any()
            ),
            hint: "re-run `kubectl mesh attach` to store it anew".into(),
        })?;
        let kc = kubeconfig::parse_stored(yaml)?;
        let mut json = serde_json::to_value(&kc).map_err(Error::serialize("JSON"))?;
        for user in json
            .get_mut("users")
            .and_then(|u| u.as_array_mut())
            .into_iter()
            .flatten()
        {
            if let Some(user) = user.get_mut("user").and_then(|u| u.as_object_mut()) {
                user.insert("token".to_owned(), token.into());
            }
        }
        let kc: Kubeconfig =
            serde_json::from_value(json).map_err(Error::serialize("kubeconfig"))?;
        *value = ByteString(kubeconfig::to_yaml(&kc)?.into_bytes());
    }
    Ok(out)
}

/// Whether the stored token is `expected` or, for a time-bound one, its renewal by the
/// webhook (a token bound to the same Secret).
fn same_credentials(stored: Option<&str>, expected: &str) -> bool {
    let Some(stored) = stored else { return false };
    stored == expected
        || token::bound_secret(stored).is_some_and(|s| Some(s) == token::bound_secret(expected))
}

/// The lifetime of `token` when it is time-bound (`attach --token-ttl`): bound to a Secret,
/// its replacement is requested with the same lifetime through the TokenRequest API.
fn lifetime_of(token: Option<&str>) -> Option<Duration> {
    token
        .filter(|t| token::bound_secret(t).is_some())
        .and_then(token::claims)
        .and_then(|c| c.lifetime())
        .and_then(|l| Duration::try_from(l).ok())
}

/// The Secret on the primary that stores the kubeconfig of `holder` of `cluster`.
async fn stored_secret(
    primary: &Client,
    target: &Target,
    cluster: &str,
    holder: Holder,
) -> Result<Secret> {
    let (ns, name) = holder.stored_at(cluster);
    Api::<Secret>::namespaced(primary.clone(), ns)
        .get_opt(&name)
        .await
        .map_err(|e| access::request_error(target, &format!("read Secret {ns}/{name}"), e))?
        .ok_or_else(|| Error::Refused {
            what: format!(
                "{cluster}: Secret {ns}/{name}, where the kubeconfig of ServiceAccount \
                 {MESH_NAMESPACE}/{} is stored, is missing on the primary",
                holder.account()
            ),
            hint: format!(
                "re-run `kubectl mesh attach` for {cluster}{} to store its credentials; then \
                 rotate",
                storing_flag(holder)
            ),
        })
}

/// The token of the (first) kubeconfig a stored Secret holds.
fn stored_token_of(secret: &Secret) -> Option<String> {
    let value = secret.data.as_ref()?.values().next()?;
    let kc = kubeconfig::parse_stored(std::str::from_utf8(&value.0).ok()?).ok()?;
    credentials::stored_token(&kc)
}

#[cfg(test)]
mod tests {
    use super::identities::istio_rights_refused;
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn the_token_is_replaced_in_every_stored_kubeconfig() {
        let stored = kubeconfig::build_stored_kubeconfig("east", "https://1.2.3.4", None, "old");
        let yaml = kubeconfig::to_yaml(&stored).unwrap();
        let secret = setup::istio_remote_secret("east", &yaml);
        let rotated = with_token(&secret, "new").unwrap();
        assert_eq!(stored_token_of(&rotated).as_deref(), Some("new"));
        assert_eq!(stored_token_of(&secret).as_deref(), Some("old"));
        let data = rotated.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["east"]);
        let kc = kubeconfig::parse_stored(std::str::from_utf8(&data["east"].0).unwrap()).unwrap();
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://1.2.3.4")
        );
    }

    #[test]
    fn a_stored_kubeconfig_other_than_the_recorded_one_is_refused() {
        let ca = b"-----BEGIN CERTIFICATE-----\nattached\n-----END CERTIFICATE-----\n";
        let attached =
            kubeconfig::build_stored_kubeconfig("east", "https://10.0.0.1:6443", Some(ca), "old");
        let mut east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        east.spec.server = "https://10.0.0.1:6443".into();
        east.spec.ca_fingerprint = mesh_core::recorded::ca_fingerprint(&attached);
        let secret =
            |kc: &Kubeconfig| setup::istio_remote_secret("east", &kubeconfig::to_yaml(kc).unwrap());
        stored_as_recorded(&east, Holder::Istio, &secret(&attached)).expect("as attached");

        let elsewhere =
            kubeconfig::build_stored_kubeconfig("east", "https://10.6.6.6:443", Some(ca), "old");
        let refused = stored_as_recorded(&east, Holder::Istio, &secret(&elsewhere))
            .expect_err("another server");
        assert_eq!(
            refused.to_string(),
            "east: the kubeconfig in Secret istio-system/istio-remote-secret-east is not what \
             attach recorded (its server \"https://10.6.6.6:443\" is not \
             \"https://10.0.0.1:6443\", the one attach recorded); no token is issued, rotating \
             would store the new ones there"
        );
        assert_eq!(
            refused.hint(),
            "restore the Secret, or attach east again (`kubectl mesh attach <its kubeconfig> \
             --name east`), which rewrites it; then rotate"
        );
        assert!(!refused.to_string().contains("old"), "{refused}");

        let other_ca = b"-----BEGIN CERTIFICATE-----\nforged\n-----END CERTIFICATE-----\n";
        let forged = kubeconfig::build_stored_kubeconfig(
            "east",
            "https://10.0.0.1:6443",
            Some(other_ca),
            "old",
        );
        let refused = stored_as_recorded(&east, Holder::Sync, &secret(&forged))
            .expect_err("another CA")
            .to_string();
        assert!(
            refused.starts_with(
                "east: the kubeconfig in Secret kubectl-mesh/cluster-east is not what attach \
                 recorded (its certificate authority (sha256:"
            ),
            "{refused}"
        );
    }

    #[test]
    fn only_the_secret_attach_stores_is_rotated() {
        let mut east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        own_secret_named(&east).expect("attach's own Secret");
        east.spec.secret_name = "cluster-west".into();
        let refused = own_secret_named(&east).expect_err("another Secret");
        assert_eq!(
            refused.to_string(),
            "east names Secret kubectl-mesh/cluster-west for its credentials, not cluster-east, \
             the one attach stores and rotate renews"
        );
    }

    fn asks(needs: &[Need], namespace: &str, resource: &str, verb: &str) -> bool {
        needs.iter().any(|n| {
            n.namespace.as_deref() == Some(namespace)
                && n.resource == resource
                && n.verbs.contains(&verb)
        })
    }

    /// Rotate replaces the stored kubeconfigs on the primary: asked before the first token is
    /// issued, for istio-system too when there is an Istio reader to rotate.
    #[test]
    fn replacing_the_stored_kubeconfigs_is_asked() {
        let needs = primary_needs();
        assert!(
            asks(&needs, MESH_NAMESPACE, "secrets", "update"),
            "{needs:?}"
        );
        assert!(asks(&needs, MESH_NAMESPACE, "secrets", "get"), "{needs:?}");
        assert!(
            needs
                .iter()
                .any(|n| n.resource == "meshclusters" && n.verbs.contains(&"get")),
            "{needs:?}"
        );
        assert!(!asks(&needs, setup::ISTIO_NAMESPACE, "secrets", "update"));
        let needs = istio_needs();
        for verb in ["get", "update"] {
            assert!(
                asks(&needs, setup::ISTIO_NAMESPACE, "secrets", verb),
                "{needs:?}"
            );
        }
    }

    /// A caller who may not read istio-system learns nothing there about an Istio reader: the
    /// remote says whether there is one, and without it the answer is unknown, never "none".
    #[test]
    fn a_refused_read_of_istio_system_never_means_no_istio_reader() {
        use IstioSecret::*;
        assert_eq!(has_istio_reader(Unreadable, Some(true)), Some(true));
        assert_eq!(has_istio_reader(Unreadable, None), None);
        assert_eq!(has_istio_reader(Unreadable, Some(false)), Some(false));
        // A reader on the remote with nothing stored for it is rotated too (and refused there
        // until attach stores its kubeconfig again): its old token would stay valid.
        assert_eq!(has_istio_reader(Absent, Some(true)), Some(true));
        assert_eq!(has_istio_reader(Absent, Some(false)), Some(false));
        assert_eq!(has_istio_reader(Absent, None), Some(false));
        for on_remote in [None, Some(false), Some(true)] {
            assert_eq!(has_istio_reader(Stored, on_remote), Some(true));
        }
    }

    /// The refusal names the clusters, the rights and the namespace, and whom to ask.
    #[test]
    fn a_caller_without_rights_in_istio_system_is_told_which_and_whom_to_ask() {
        let missing = "on the primary (https://10.0.0.1:6443): secrets in namespace istio-system \
                       (get/update)";
        let line = istio_rights_refused(&["east"], missing).line();
        assert_eq!(
            line,
            "east has an Istio reader (ServiceAccount kubectl-mesh/kubectl-mesh-istio-reader) \
             whose token rotate must replace in the Istio remote secret in istio-system on the \
             primary, and revoke; nothing was rotated: missing permissions on the primary \
             (https://10.0.0.1:6443): secrets in namespace istio-system (get/update); ask a \
             cluster admin for get and update on Secrets in namespace istio-system (or to run \
             rotate); `kubectl auth can-i --list -n istio-system` shows yours"
        );
        let line = istio_rights_refused(&["east", "west"], missing).line();
        assert!(line.starts_with("east, west have Istio readers"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    /// A dry run that cannot tell says so, naming what a real run would need and why it cannot
    /// tell.
    #[test]
    fn a_dry_run_that_cannot_tell_says_so() {
        let line = istio_reader_unknown("east", &Unasked::NoKubeconfig);
        for needed in [
            "istio-system/istio-remote-secret-east",
            "kubectl-mesh/kubectl-mesh-istio-reader",
            "get and update on Secrets in istio-system",
            "no kubeconfig of east was found",
            "--remote-kubeconfig",
        ] {
            assert!(line.contains(needed), "{needed}: {line}");
        }
        let down = "cannot reach remote cluster east at https://10.0.0.1:6443: connection refused";
        let line = istio_reader_unknown("east", &Unasked::Unreachable(down.to_owned()));
        assert!(line.contains(down), "{line}");
        assert!(line.contains("once east can be reached"), "{line}");
        assert!(!line.contains("--remote-kubeconfig"), "{line}");
        let line = remote_unreachable("east", down);
        assert!(line.starts_with(&format!("east: {down}; ")), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    /// `name` with the webhook's conditions `(type, status, reason)`.
    fn with_conditions(name: &str, conditions: &[(&str, &str, &str)]) -> MeshCluster {
        let mut mc = mesh_core::fixtures::mesh_cluster(name, &format!("uid-of-{name}"));
        let conditions = conditions
            .iter()
            .map(|(type_, status, reason)| {
                serde_json::from_value(serde_json::json!({
                    "type": type_, "status": status, "reason": reason, "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }))
                .unwrap()
            })
            .collect();
        mc.status = Some(mesh_core::cluster::MeshClusterStatus {
            conditions,
            ..Default::default()
        });
        mc
    }

    /// Rotate waits for the webhook to sync each cluster with its new token: a cluster it
    /// cannot sync now is found before anything is rotated, not after the ones before it were
    /// and with the ones after it never tried.
    #[test]
    fn a_cluster_the_webhook_cannot_sync_is_refused_up_front() {
        let synced = [
            ("Reachable", "True", "Reachable"),
            ("Synced", "True", "Synced"),
        ];
        assert_eq!(unsyncable(&with_conditions("a", &synced)), None);
        // Not synced yet, or an expired token, which is what rotate repairs.
        assert_eq!(unsyncable(&with_conditions("a", &[])), None);
        let expired = [("Reachable", "False", TOKEN_EXPIRED)];
        assert_eq!(unsyncable(&with_conditions("a", &expired)), None);
        // Out of sync for another reason, still written: nothing stops its next sync.
        let failed = [
            ("Reachable", "True", "Reachable"),
            ("Synced", "False", "Forbidden"),
        ];
        assert_eq!(unsyncable(&with_conditions("a", &failed)), None);

        let unreachable = with_conditions("b", &[("Reachable", "False", "Unreachable")]);
        assert_eq!(
            unsyncable(&unreachable).as_deref(),
            Some("Reachable=False, Unreachable")
        );
        let scope = [
            ("Reachable", "True", "Reachable"),
            ("Synced", "False", SCOPE_INVALID),
        ];
        assert_eq!(
            unsyncable(&with_conditions("b", &scope)).as_deref(),
            Some("Synced=False, ScopeInvalid")
        );
        let mut detaching = with_conditions("b", &synced);
        detaching.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(unsyncable(&detaching).as_deref(), Some("being detached"));

        let all = [
            with_conditions("a", &synced),
            unreachable,
            with_conditions("c", &synced),
        ];
        let line = refuse_unsyncable(&all).expect_err("b").line();
        assert_eq!(
            line,
            "the webhook cannot sync b (Reachable=False, Unreachable) now, and rotate revokes an \
             old token only once the webhook uses the new one; nothing was rotated; `kubectl \
             mesh check` shows why; rotate once it syncs again (a cluster being detached needs \
             no rotation); meanwhile rotate the others by name: `kubectl mesh rotate a`, \
             `kubectl mesh rotate c`"
        );
        refuse_unsyncable(&[all[0].clone(), all[2].clone()]).expect("a and c");
        let line = refuse_unsyncable(&[detaching]).expect_err("b").line();
        assert!(!line.contains("meanwhile"), "{line}");
    }

    /// A missing Istio remote secret is stored again by attach with --istio-remote-secret, a
    /// missing view Secret with --services-view (attach keeps the view identity only when it
    /// finds its Secret stored).
    #[test]
    fn a_missing_stored_secret_names_the_attach_that_stores_it() {
        assert_eq!(storing_flag(Holder::Istio), " with --istio-remote-secret");
        assert_eq!(storing_flag(Holder::View), " with --services-view");
        assert_eq!(storing_flag(Holder::Sync), "");
    }

    /// A time-bound token is requested through the TokenRequest API: asked on the remote.
    #[test]
    fn requesting_a_time_bound_token_is_asked() {
        let token = "serviceaccounts/token";
        for verb in ["get", "create", "delete"] {
            assert!(asks(&remote_needs(false), MESH_NAMESPACE, "secrets", verb));
        }
        assert!(!asks(&remote_needs(false), MESH_NAMESPACE, token, "create"));
        // Whose the ServiceAccounts are, before a token is issued for them.
        assert!(asks(
            &remote_needs(false),
            MESH_NAMESPACE,
            "serviceaccounts",
            "get"
        ));
        assert!(asks(&remote_needs(true), MESH_NAMESPACE, token, "create"));
    }

    #[test]
    fn dry_run_names_every_step_and_the_wait() {
        let steps = steps("east", Holder::Sync);
        assert_eq!(steps.len(), 5);
        assert!(
            steps[0].contains("kubectl-mesh-sync-token-standby"),
            "{steps:?}"
        );
        assert!(steps[1].contains("observedCredentials"), "{steps:?}");
        assert!(steps[2].contains("revokes"), "{steps:?}");
        assert!(steps[4].contains("delete Secret kubectl-mesh/kubectl-mesh-sync-token-standby"));
    }

    /// Detach and a takeover revoke what rotate issues: every token Secret it may leave is in
    /// the one list they delete.
    #[test]
    fn every_secret_rotate_issues_is_revoked_by_detach_and_takeover() {
        let revoked = setup::token_secrets();
        for holder in [Holder::Sync, Holder::View, Holder::Istio] {
            let own = holder.token_secret();
            for issued in [own.to_owned(), setup::standby_secret(own)] {
                assert!(revoked.contains(&issued), "{issued} in {revoked:?}");
            }
        }
    }

    /// A missing identity is made again by attach; the Istio reader only when asked for.
    #[test]
    fn a_missing_account_names_the_attach_that_makes_it_again() {
        let hint = |holder| missing_account(holder, "east").hint();
        assert_eq!(
            hint(Holder::Istio),
            "re-run `kubectl mesh attach` for east with --istio-remote-secret; then rotate"
        );
        for holder in [Holder::Sync, Holder::View] {
            assert_eq!(
                hint(holder),
                "re-run `kubectl mesh attach` for east; then rotate"
            );
        }
    }

    /// A remote object rotate would use or replace is refused, in one line saying what to do,
    /// unless this primary's attach (or an older one, which records no primary) made it.
    #[test]
    fn only_this_primarys_objects_are_rotated() {
        let account = ("ServiceAccount", setup::SYNC_ACCOUNT);
        let mut json = serde_json::to_value(setup::service_account(account.1, "east")).unwrap();
        let older: ServiceAccount = serde_json::from_value(json.clone()).unwrap();
        ours_or_refused(&older.metadata, account, "east", "uid-a").expect("an older attach");
        setup::record_primary(&mut json, "uid-b");
        let theirs: ServiceAccount = serde_json::from_value(json).unwrap();
        let line = ours_or_refused(&theirs.metadata, account, "east", "uid-a")
            .expect_err("taken over")
            .line();
        assert_eq!(
            line,
            "ServiceAccount kubectl-mesh/kubectl-mesh-sync on east belongs to another primary \
             (kube-system uid uid-b): it took east over; rotate from the primary that holds east \
             now; here `kubectl mesh detach east` drops it, or `kubectl mesh attach` with \
             --force takes it back"
        );
        ours_or_refused(&theirs.metadata, account, "east", "uid-b").expect("that primary's");
        let line = ours_or_refused(&older.metadata, account, "west", "uid-a")
            .expect_err("another cluster's")
            .line();
        assert!(
            line.contains("not created by kubectl-mesh for west"),
            "{line}"
        );
        assert!(
            line.contains("get serviceaccount kubectl-mesh-sync"),
            "{line}"
        );
    }
}
