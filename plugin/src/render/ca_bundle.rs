//! The webhook configuration's caBundle while the serving certificate changes.
//!
//! The webhook does not serve a new certificate the moment install writes it: pods read the
//! mounted Secret when the kubelet syncs it (or when they roll), a webhook run elsewhere reads
//! its files when they are written, after the applies. Meanwhile the apiserver must accept the
//! certificate it still serves, or every call fails open. So while a certificate is replaced,
//! the caBundle (which may hold several CAs) trusts the new CA and those it trusted before;
//! the previous ones go once the webhook serves the new certificate: after install has waited
//! for the Deployment to roll out, or at the next install that keeps the certificate.

use jiff::Timestamp;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// How install sets the caBundle of the webhook configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundlePlan {
    /// The caBundle applied with the other objects.
    pub applied: String,
    /// What becomes of the previous CAs.
    pub previous: PreviousCas,
    /// The installed webhook configuration does not trust the current CA yet: it is applied
    /// before the certificate (its Secret, the Deployment whose pods roll to it), so that no
    /// webhook serves a certificate the apiserver does not trust, whatever stops install
    /// between two applies.
    pub trust_first: bool,
}

impl CaBundlePlan {
    /// The caBundle of a configuration that trusts `ca` alone, applied last (a first install).
    pub fn only(ca: &str) -> Self {
        Self {
            applied: ca.to_owned(),
            previous: PreviousCas::None,
            trust_first: false,
        }
    }
}

/// What becomes of the CAs the caBundle trusted besides the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviousCas {
    /// There were none (or only expired ones, which no webhook can serve with any more).
    None,
    /// Trusted until the Deployment has rolled out; then this caBundle (the current CA only)
    /// is applied.
    UntilRollout(String),
    /// Still trusted when install returns: a later install that keeps the certificate drops
    /// them.
    Left,
    /// Dropped now: the webhook already serves the certificate, which install kept.
    Dropped,
}

/// The caBundle for `ca`, the CA of the serving certificate install leaves in place, when the
/// apiserver trusts `trusted` now (the installed caBundle; empty when there is none).
/// `switching`: the webhook serves another certificate until it reads this one (it is new, or
/// `--webhook-cert-dir` held another). `waits_for_rollout`: install waits for the webhook's
/// Deployment to roll out (in the cluster, `--wait`), after which every replica serves it.
pub fn ca_bundle_plan(
    ca: &str,
    trusted: &str,
    switching: bool,
    waits_for_rollout: bool,
    now: Timestamp,
) -> CaBundlePlan {
    let previous: Vec<&str> = certificates(trusted)
        .filter(|c| !same_certificate(c, ca) && unexpired(c, now))
        .collect();
    // An installation whose webhook configuration trusts CAs, not this one: a new certificate.
    let trust_first = certificates(trusted).next().is_some() && others_than(trusted, ca).is_none();
    let current = || CaBundlePlan {
        trust_first,
        ..CaBundlePlan::only(ca)
    };
    if previous.is_empty() {
        return current();
    }
    let mut bridged = ca.to_owned();
    for cert in previous {
        if !bridged.ends_with('\n') {
            bridged.push('\n');
        }
        bridged.push_str(cert);
    }
    bridged.push('\n');
    let previous = if waits_for_rollout {
        PreviousCas::UntilRollout(ca.to_owned())
    } else if switching {
        PreviousCas::Left
    } else {
        return CaBundlePlan {
            previous: PreviousCas::Dropped,
            ..current()
        };
    };
    CaBundlePlan {
        applied: bridged,
        previous,
        trust_first,
    }
}

/// The PEM certificates of `bundle`, each from its BEGIN line to its END line.
pub fn certificates(bundle: &str) -> impl Iterator<Item = &str> {
    let mut rest = bundle;
    std::iter::from_fn(move || {
        let start = rest.find(BEGIN)?;
        let len = rest[start..].find(END)? + END.len();
        let cert = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(cert)
    })
}

/// How many certificates `bundle` holds besides `ca` (the CAs a rotation still trusts), when
/// it holds `ca`; `None` when it does not.
pub fn others_than(bundle: &str, ca: &str) -> Option<usize> {
    let all: Vec<&str> = certificates(bundle).collect();
    let theirs: Vec<&str> = certificates(ca).collect();
    let held = !theirs.is_empty()
        && theirs
            .iter()
            .all(|c| all.iter().any(|b| same_certificate(b, c)));
    held.then(|| all.len() - theirs.len())
}

/// Whether two PEM certificates are the same, whatever their line endings.
fn same_certificate(a: &str, b: &str) -> bool {
    let significant = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    significant(a) == significant(b)
}

/// Whether the PEM certificate `cert` parses and has not expired at `now`.
fn unexpired(cert: &str, now: Timestamp) -> bool {
    crate::credentials::certificates(cert.as_bytes()).is_ok_and(|info| info.not_after > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{generate_serving_cert, serving_sans};

    fn new_ca() -> String {
        generate_serving_cert(&serving_sans(None)).unwrap().ca_pem
    }

    fn plan(ca: &str, trusted: &str, switching: bool, waits: bool) -> CaBundlePlan {
        ca_bundle_plan(ca, trusted, switching, waits, Timestamp::now())
    }

    #[test]
    fn a_new_certificate_is_trusted_beside_the_previous_one() {
        let (old, new) = (new_ca(), new_ca());
        // URL mode, or in the cluster without --wait: both stay for a later install to drop.
        let left = plan(&new, &old, true, false);
        assert_eq!(left.applied, format!("{new}{old}"));
        assert_eq!(left.previous, PreviousCas::Left);
        assert_eq!(certificates(&left.applied).collect::<Vec<_>>().len(), 2);
        // Install waits for the rollout: both until then, the new CA alone after.
        let waited = plan(&new, &old, true, true);
        assert_eq!(waited.applied, left.applied);
        assert_eq!(waited.previous, PreviousCas::UntilRollout(new.clone()));
    }

    #[test]
    fn an_install_that_keeps_the_certificate_drops_the_previous_ones() {
        let (old, new) = (new_ca(), new_ca());
        let bridged = plan(&new, &old, true, false).applied;
        let kept = plan(&new, &bridged, false, false);
        assert_eq!(kept.applied, new);
        assert_eq!(kept.previous, PreviousCas::Dropped);
        // With --wait, once the rollout a rotation started without it is done.
        let waited = plan(&new, &bridged, false, true);
        assert_eq!(waited.applied, bridged);
        assert_eq!(waited.previous, PreviousCas::UntilRollout(new.clone()));
        // Nothing to drop: the caBundle stays the CA, byte for byte.
        for waits in [false, true] {
            let settled = plan(&new, &new, false, waits);
            assert_eq!(settled.applied, new);
            assert_eq!(settled.previous, PreviousCas::None);
        }
    }

    #[test]
    fn a_first_install_or_an_expired_previous_ca_trusts_the_new_ca_only() {
        let (old, new) = (new_ca(), new_ca());
        assert_eq!(plan(&new, "", true, false).applied, new);
        let later = Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365 * 11);
        let expired = ca_bundle_plan(&new, &old, true, false, later);
        assert_eq!(expired.applied, new);
        assert_eq!(expired.previous, PreviousCas::None);
        // Nor is what is not a certificate carried over.
        let garbage = format!("{BEGIN}\nnot base64\n{END}\n");
        assert_eq!(plan(&new, &garbage, true, false).applied, new);
    }

    /// A new CA goes into the webhook configuration before the certificate goes live; a first
    /// install, or one that keeps the certificate, applies it last.
    #[test]
    fn a_ca_the_configuration_lacks_is_trusted_first() {
        let (old, new) = (new_ca(), new_ca());
        for waits in [false, true] {
            assert!(plan(&new, &old, true, waits).trust_first);
        }
        let bridged = plan(&new, &old, true, false).applied;
        assert!(!plan(&new, &bridged, false, false).trust_first);
        assert!(!plan(&new, &new, false, false).trust_first);
        assert!(!plan(&new, "", true, false).trust_first);
        // The previous CA expired: the new one alone, still before the certificate.
        let later = Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365 * 11);
        assert!(ca_bundle_plan(&new, &old, true, false, later).trust_first);
    }

    #[test]
    fn a_second_rotation_keeps_every_ca_still_trusted() {
        let (first, second, third) = (new_ca(), new_ca(), new_ca());
        let bridged = plan(&second, &first, true, false).applied;
        let again = plan(&third, &bridged, true, false);
        let held: Vec<&str> = certificates(&again.applied).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(others_than(&again.applied, &third), Some(2));
    }

    #[test]
    fn a_bundle_holds_a_ca_whatever_its_line_endings() {
        let (old, new) = (new_ca(), new_ca());
        let bridged = plan(&new, &old, true, false).applied;
        assert_eq!(others_than(&bridged, &new), Some(1));
        assert_eq!(others_than(&bridged, &old), Some(1));
        assert_eq!(others_than(&new, &new), Some(0));
        assert_eq!(others_than(&new, &old), None);
        assert_eq!(others_than(&new, ""), None);
        assert_eq!(others_than(&new.replace('\n', "\r\n"), &new), Some(0));
    }
}
