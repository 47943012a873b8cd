//! Reading expiry dates out of credentials, without verifying them (only the issuer's
//! counterpart can): the `exp` claim of a bearer token, the `notAfter` of certificates.

use jiff::Timestamp;

pub use mesh_core::token::{TokenExpiry, token_expiry};

/// The bearer token of a stored kubeconfig's (only) user; `None` when it authenticates
/// otherwise (a client certificate).
pub fn stored_token(stored: &kube::config::Kubeconfig) -> Option<String> {
    let user = stored
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or_default();
    user.get("token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

/// Certificates of a PEM bundle: how many, and the earliest expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Certificates found.
    pub count: usize,
    /// The earliest `notAfter`.
    pub not_after: Timestamp,
}

/// Parses every certificate of a PEM bundle; an error says what is wrong with it.
pub fn certificates(pem: &[u8]) -> std::result::Result<CertInfo, String> {
    let mut count = 0;
    let mut earliest: Option<Timestamp> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
            .map_err(|e| format!("unreadable notAfter: {e}"))?;
        earliest = Some(earliest.map_or(not_after, |t| t.min(not_after)));
        count += 1;
    }
    match earliest {
        Some(not_after) => Ok(CertInfo { count, not_after }),
        None => Err("no PEM certificate in it".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::{kubeconfig, render};

    pub(crate) use mesh_core::fixtures::jwt;

    #[test]
    fn token_expiry_from_jwt() {
        assert_eq!(
            token_expiry(&jwt(serde_json::json!({"exp": 1_900_000_000}))),
            TokenExpiry::At(Timestamp::from_second(1_900_000_000).unwrap())
        );
        assert_eq!(
            token_expiry(&jwt(
                serde_json::json!({"sub": "system:serviceaccount:a:b"})
            )),
            TokenExpiry::Never
        );
        assert_eq!(token_expiry("opaque-token"), TokenExpiry::Unknown);
        assert_eq!(token_expiry("a.!!!.c"), TokenExpiry::Unknown);
    }

    #[test]
    fn the_stored_token_is_the_users() {
        let stored = kubeconfig::build_stored_kubeconfig("east", "https://1.2.3.4", None, "t0k");
        assert_eq!(stored_token(&stored).as_deref(), Some("t0k"));
        assert_eq!(stored_token(&kube::config::Kubeconfig::default()), None);
    }

    #[test]
    fn certificates_are_parsed() {
        let cert = render::generate_serving_cert(&["localhost".into()]).unwrap();
        let info = certificates(cert.ca_pem.as_bytes()).unwrap();
        assert_eq!(info.count, 1);
        assert!(info.not_after > Timestamp::now() + SignedDuration::from_hours(24 * 365 * 9));
        assert!(certificates(b"garbage").is_err());
        let key_only = cert.key_pem.as_bytes();
        assert_eq!(
            certificates(key_only).unwrap_err(),
            "no PEM certificate in it"
        );
    }
}
