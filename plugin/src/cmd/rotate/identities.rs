//! Which identities of a cluster rotate must replace the tokens of, and the rights an Istio
//! reader takes on the primary. The remote has the last word (an identity's ServiceAccount or
//! token Secrets): the primary may show no stored credentials of one because the caller may not
//! read istio-system, or because its stored Secret was deleted, and skipping it would leave its
//! old token valid (the Istio reader's can read every Secret on the remote, the view
//! identity's every pod spec).

use super::*;

/// What the primary shows of a cluster's Istio remote secret
/// (`istio-system/istio-remote-secret-<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IstioSecret {
    /// There, created for this cluster.
    Stored,
    /// Not there (or not this cluster's).
    Absent,
    /// The caller may not read istio-system: it says nothing about an Istio reader.
    Unreadable,
}

/// The identities of `cluster` whose kubeconfig the primary shows stored: the sync account
/// always, the others when attach created them; and what it shows of the Istio remote secret.
pub(super) async fn holders_of(
    primary: &Client,
    target: &Target,
    cluster: &str,
) -> Result<(Vec<Holder>, IstioSecret)> {
    let mut out = vec![Holder::Sync];
    let mut istio = IstioSecret::Absent;
    for holder in [Holder::View, Holder::Istio] {
        let (ns, secret) = holder.stored_at(cluster);
        match Api::<Secret>::namespaced(primary.clone(), ns)
            .get_opt(&secret)
            .await
        {
            Ok(Some(s)) if setup::is_ours(&s.metadata, cluster) => {
                out.push(holder);
                if holder == Holder::Istio {
                    istio = IstioSecret::Stored;
                }
            }
            Ok(_) => {}
            // Whether there is an Istio reader is then the remote's to say.
            Err(kube::Error::Api(s)) if s.code == 403 && holder == Holder::Istio => {
                istio = IstioSecret::Unreadable;
            }
            Err(e) => {
                return Err(access::request_error(
                    target,
                    &format!("read Secret {ns}/{secret}"),
                    e,
                ));
            }
        }
    }
    Ok((out, istio))
}

/// Whether a cluster has an Istio reader whose token rotate must replace, from what the
/// primary shows (`stored`) and what the remote has (`on_remote`, when it was asked); `None`
/// when that cannot be told. A refused read of istio-system never means there is none: the
/// reader may read every Secret on the remote, the freshly rotated sync token included, so
/// leaving its old token valid would make the rotation pointless.
pub(super) fn has_istio_reader(stored: IstioSecret, on_remote: Option<bool>) -> Option<bool> {
    match (stored, on_remote) {
        (IstioSecret::Stored, _) | (_, Some(true)) => Some(true),
        (_, Some(false)) => Some(false),
        // Nothing stored for istiod, and the remote not asked: what the primary shows.
        (IstioSecret::Absent, None) => Some(false),
        (IstioSecret::Unreadable, None) => None,
    }
}

/// Whether the remote has the identity of `holder` attach created for `cluster`: its
/// ServiceAccount, or a token Secret of it (whose token stays valid until deleted).
pub(super) async fn identity_on(
    remote: &Client,
    target: &Target,
    cluster: &str,
    holder: Holder,
) -> Result<bool> {
    let account = Api::<ServiceAccount>::namespaced(remote.clone(), MESH_NAMESPACE)
        .get_opt(holder.account())
        .await
        .map_err(|e| {
            let doing = format!("read ServiceAccount {MESH_NAMESPACE}/{}", holder.account());
            access::request_error(target, &doing, e)
        })?;
    if account.is_some_and(|a| setup::is_ours(&a.metadata, cluster)) {
        return Ok(true);
    }
    let secrets = Api::<Secret>::namespaced(remote.clone(), MESH_NAMESPACE);
    let own = holder.token_secret();
    for name in [own.to_owned(), setup::standby_secret(own)] {
        let found = secrets.get_opt(&name).await.map_err(|e| {
            access::request_error(target, &format!("read Secret {MESH_NAMESPACE}/{name}"), e)
        })?;
        if found.is_some_and(|s| setup::is_ours(&s.metadata, cluster)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Why a dry run did not ask a remote which identities it has.
pub(super) enum Unasked {
    /// Neither --remote-kubeconfig nor the context attach recorded.
    NoKubeconfig,
    /// Its kubeconfig was found but the remote could not be reached: the one-line reason.
    Unreachable(String),
}

impl Unasked {
    /// Why, after "and".
    fn why(&self, cluster: &str) -> String {
        match self {
            Self::NoKubeconfig => format!("no kubeconfig of {cluster} was found"),
            Self::Unreachable(why) => why.clone(),
        }
    }

    /// What tells, after "to tell".
    fn to_tell(&self, cluster: &str) -> String {
        match self {
            Self::NoKubeconfig => "pass --remote-kubeconfig".to_owned(),
            Self::Unreachable(_) => format!("re-run the dry run once {cluster} can be reached"),
        }
    }
}

/// What a dry run says of a cluster whose istio-system it may not read and whose remote it
/// did not ask (`unasked` says why).
pub(super) fn istio_reader_unknown(cluster: &str, unasked: &Unasked) -> String {
    let (ns, secret) = Holder::Istio.stored_at(cluster);
    format!(
        "{cluster}: cannot tell whether it has an Istio reader (reading Secret {ns}/{secret} on \
         the primary is refused, and {}): if it has one, rotate replaces the token of \
         ServiceAccount {MESH_NAMESPACE}/{} too and needs get and update on Secrets in {ns}; {} \
         to tell",
        unasked.why(cluster),
        Holder::Istio.account(),
        unasked.to_tell(cluster),
    )
}

/// What a dry run says of a cluster it could not reach (`why`): it lists what the primary
/// shows, while a real run asks the remote and may find more to rotate.
pub(super) fn remote_unreachable(cluster: &str, why: &str) -> String {
    format!(
        "{cluster}: {why}; the steps below are what the primary shows, but {cluster} may \
         have a view identity or an Istio reader more to rotate, which only it can tell; rotate \
         refuses until it can reach it"
    )
}

/// Refuses, before anything changes, to rotate clusters with an Istio reader unless the caller
/// may replace its kubeconfig in istio-system: skipping it would leave the old token valid.
pub(super) async fn refuse_without_istio_rights(
    primary: &Client,
    target: &Target,
    plans: &[Plan],
) -> Result<()> {
    let with_reader: Vec<&str> = plans
        .iter()
        .filter(|p| p.holders.contains(&Holder::Istio))
        .map(|p| p.name.as_str())
        .collect();
    if with_reader.is_empty() {
        return Ok(());
    }
    match access::missing_on(primary, target, &istio_needs()).await? {
        None => Ok(()),
        Some(missing) => Err(istio_rights_refused(&with_reader, &missing)),
    }
}

/// The refusal of [`refuse_without_istio_rights`]: which clusters, why, which rights (`missing`,
/// as [`access::missing_on`] phrases them) and whom to ask.
pub(super) fn istio_rights_refused(clusters: &[&str], missing: &str) -> Error {
    let (ns, _) = Holder::Istio.stored_at("");
    let (names, has) = match clusters {
        [one] => ((*one).to_owned(), "has an Istio reader"),
        many => (many.join(", "), "have Istio readers"),
    };
    Error::Refused {
        what: format!(
            "{names} {has} (ServiceAccount {MESH_NAMESPACE}/{}) whose token rotate must replace \
             in the Istio remote secret in {ns} on the primary, and revoke; nothing was rotated: \
             missing permissions {missing}",
            Holder::Istio.account()
        ),
        hint: format!(
            "ask a cluster admin for get and update on Secrets in namespace {ns} (or to run \
             rotate); `kubectl auth can-i --list -n {ns}` shows yours"
        ),
    }
}
