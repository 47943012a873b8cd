//! Bearer tokens of stored kubeconfigs: when they expire, how much of their lifetime is left,
//! and when a time-bound one is due for renewal. Claims are read without verifying the
//! signature: only the remote that issued a token can, and these judgements only decide when
//! to ask it for a new one or what to tell the user.

use base64::Engine as _;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// When a bearer token expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenExpiry {
    /// A JWT without `exp` (a long-lived ServiceAccount token Secret).
    Never,
    /// Not a readable JWT.
    Unknown,
    /// The `exp` claim.
    At(Timestamp),
}

/// The time claims of a JWT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iat`: when it was issued.
    pub issued_at: Option<Timestamp>,
    /// `exp`: when it expires.
    pub expires_at: Option<Timestamp>,
}

/// The claims of a JWT (header, payload, signature), `None` when it is not one.
fn payload(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The time claims of a JWT, `None` when it is not one.
pub fn claims(token: &str) -> Option<Claims> {
    let value = payload(token)?;
    let time = |key: &str| -> Option<Option<Timestamp>> {
        match value.get(key) {
            None => Some(None),
            Some(v) => v
                .as_i64()
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(Some),
        }
    };
    Some(Claims {
        issued_at: time("iat")?,
        expires_at: time("exp")?,
    })
}

/// Reads the `exp` claim of a JWT.
pub fn token_expiry(token: &str) -> TokenExpiry {
    match claims(token) {
        None => TokenExpiry::Unknown,
        Some(Claims {
            expires_at: None, ..
        }) => TokenExpiry::Never,
        Some(Claims {
            expires_at: Some(at),
            ..
        }) => TokenExpiry::At(at),
    }
}

/// Namespace and name of the ServiceAccount a token was issued for (its `sub` claim,
/// `system:serviceaccount:<namespace>:<name>`).
pub fn service_account(token: &str) -> Option<(String, String)> {
    let value = payload(token)?;
    let sub = value.get("sub")?.as_str()?;
    let mut parts = sub.strip_prefix("system:serviceaccount:")?.splitn(2, ':');
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// Name and UID of the Secret a token is bound to: a bound token's
/// `kubernetes.io.secret`, which TokenRequest sets from `boundObjectRef`.
pub fn bound_secret(token: &str) -> Option<(String, String)> {
    let value = payload(token)?;
    let secret = value.get("kubernetes.io")?.get("secret")?;
    Some((
        secret.get("name")?.as_str()?.to_owned(),
        secret.get("uid")?.as_str()?.to_owned(),
    ))
}

/// The bearer token of a kubeconfig's first user.
pub fn kubeconfig_token(yaml: &str) -> Option<String> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).ok()?;
    let user = kubeconfig.auth_infos.first()?.auth_info.as_ref()?;
    let user = serde_json::to_value(user).ok()?;
    user.get("token")?.as_str().map(str::to_owned)
}

/// `yaml` (a stored kubeconfig) with every user's token replaced by `token`, written as JSON
/// (which is YAML too). `None` when it is not a kubeconfig.
pub fn with_kubeconfig_token(yaml: &str, token: &str) -> Option<String> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).ok()?;
    let mut value = serde_json::to_value(&kubeconfig).ok()?;
    for user in value.get_mut("users")?.as_array_mut()? {
        if let Some(user) = user.get_mut("user").and_then(|u| u.as_object_mut()) {
            user.insert("token".to_owned(), token.into());
        }
    }
    serde_json::to_string_pretty(&value).ok()
}

/// Below this share of its lifetime left, a token is worth a warning.
pub const LOW_LIFETIME_PERCENT: i64 = 20;

/// How a token's expiry looks at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No expiry, or plenty of time left.
    Fine,
    /// Less than [`LOW_LIFETIME_PERCENT`] of its lifetime left.
    Low,
    /// Past `exp`.
    Expired,
}

impl Claims {
    /// When the token expired, if it has by `now` ([`Standing::Expired`]).
    pub fn expired_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.expires_at.filter(|exp| now >= *exp)
    }

    /// How the token stands at `now`. Without `iat` the lifetime is unknown, and only
    /// expiry is judged.
    pub fn standing(&self, now: Timestamp) -> Standing {
        let Some(exp) = self.expires_at else {
            return Standing::Fine;
        };
        if self.expired_at(now).is_some() {
            return Standing::Expired;
        }
        let Some(iat) = self.issued_at.filter(|iat| *iat < exp) else {
            return Standing::Fine;
        };
        let lifetime = exp.duration_since(iat).as_secs();
        let left = exp.duration_since(now).as_secs();
        if left * 100 < lifetime * LOW_LIFETIME_PERCENT {
            Standing::Low
        } else {
            Standing::Fine
        }
    }

    /// When a time-bound token should be replaced: once `fraction` (0 < f < 1) of its lifetime
    /// has passed, counted from its `iat` or from `seen` (when this process first saw it, by
    /// its own clock), whichever comes first. `iat` and `exp` are the remote's clock, and the
    /// token ends `exp - iat` after it was issued whatever the clocks say: counted from `iat`
    /// alone, a remote clock ahead by more than the rest of the lifetime would put the renewal
    /// after the end. Counted from `seen`, it is late only by how long the token waited before
    /// it was seen. `None` for a token that does not expire or whose lifetime is unknown.
    pub fn renew_at(&self, fraction: f64, seen: Timestamp) -> Option<Timestamp> {
        let (iat, exp) = (self.issued_at?, self.expires_at?);
        if iat >= exp {
            return Some(iat.min(seen));
        }
        let lifetime = exp.duration_since(iat).as_secs_f64();
        let part = SignedDuration::from_secs_f64(lifetime * fraction.clamp(0.0, 1.0));
        let by_issue = iat.checked_add(part).ok()?;
        let by_sight = seen.checked_add(part).ok();
        Some(by_sight.map_or(by_issue, |by_sight| by_sight.min(by_issue)))
    }

    /// The token's lifetime (`exp - iat`), when both are known.
    pub fn lifetime(&self) -> Option<SignedDuration> {
        Some(self.expires_at?.duration_since(self.issued_at?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::fixtures::jwt;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn expiry_and_issue_time_are_read() {
        let token = jwt(serde_json::json!({"iat": 1_000, "exp": 87_400}));
        assert_eq!(
            claims(&token),
            Some(Claims {
                issued_at: Some(at(1_000)),
                expires_at: Some(at(87_400)),
            })
        );
        assert_eq!(token_expiry(&token), TokenExpiry::At(at(87_400)));
        let long_lived = jwt(serde_json::json!({"sub": "system:serviceaccount:a:b"}));
        assert_eq!(token_expiry(&long_lived), TokenExpiry::Never);
        assert_eq!(token_expiry("opaque"), TokenExpiry::Unknown);
        assert_eq!(token_expiry("a.!!!.c"), TokenExpiry::Unknown);
        assert_eq!(
            token_expiry(&jwt(serde_json::json!({"exp": "soon"}))),
            TokenExpiry::Unknown
        );
    }

    #[test]
    fn standing_warns_below_a_fifth_of_the_lifetime_and_fails_past_expiry() {
        let c = Claims {
            issued_at: Some(at(0)),
            expires_at: Some(at(1_000)),
        };
        assert_eq!(c.standing(at(500)), Standing::Fine);
        assert_eq!(c.standing(at(800)), Standing::Fine);
        assert_eq!(c.standing(at(801)), Standing::Low);
        assert_eq!(c.standing(at(999)), Standing::Low);
        assert_eq!(c.standing(at(1_000)), Standing::Expired);
        assert_eq!(c.standing(at(5_000)), Standing::Expired);
        let no_iat = Claims {
            issued_at: None,
            ..c
        };
        assert_eq!(no_iat.standing(at(999)), Standing::Fine);
        assert_eq!(no_iat.standing(at(1_001)), Standing::Expired);
        assert_eq!(
            Claims::default().standing(at(4_000_000_000)),
            Standing::Fine
        );
    }

    #[test]
    fn the_account_and_the_token_of_a_kubeconfig_are_found_and_replaced() {
        let token = jwt(serde_json::json!({"sub": "system:serviceaccount:kubectl-mesh:sync"}));
        assert_eq!(
            service_account(&token),
            Some(("kubectl-mesh".to_owned(), "sync".to_owned()))
        );
        assert_eq!(
            service_account(&jwt(serde_json::json!({"sub": "admin"}))),
            None
        );
        assert_eq!(service_account("opaque"), None);
        let bound = jwt(serde_json::json!({
            "kubernetes.io": {"secret": {"name": "anchor", "uid": "u-1"}}
        }));
        assert_eq!(
            bound_secret(&bound),
            Some(("anchor".to_owned(), "u-1".to_owned()))
        );
        assert_eq!(bound_secret(&token), None);
        let yaml = "apiVersion: v1\nkind: Config\nclusters:\n- name: e\n  cluster: {server: 'https://1.2.3.4'}\nusers:\n- name: e\n  user: {token: old}\ncontexts:\n- name: e\n  context: {cluster: e, user: e}\ncurrent-context: e\n";
        assert_eq!(kubeconfig_token(yaml).as_deref(), Some("old"));
        let renewed = with_kubeconfig_token(yaml, "new").expect("a kubeconfig");
        assert_eq!(kubeconfig_token(&renewed).as_deref(), Some("new"));
        let kc = kube::config::Kubeconfig::from_yaml(&renewed).unwrap();
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://1.2.3.4")
        );
        assert_eq!(with_kubeconfig_token("[", "new"), None);
    }

    #[test]
    fn renewal_is_due_after_the_given_fraction_of_the_lifetime() {
        let c = Claims {
            issued_at: Some(at(1_000)),
            expires_at: Some(at(1_000 + 86_400)),
        };
        // Seen as it was issued, by clocks that agree.
        let seen = at(1_000);
        assert_eq!(c.renew_at(0.5, seen), Some(at(1_000 + 43_200)));
        assert_eq!(c.renew_at(0.75, seen), Some(at(1_000 + 64_800)));
        assert_eq!(c.renew_at(2.0, seen), Some(at(1_000 + 86_400)));
        // Seen hours after it was issued (a restart): counted from its issue.
        assert_eq!(c.renew_at(0.5, at(20_000)), Some(at(1_000 + 43_200)));
        assert_eq!(c.lifetime(), Some(SignedDuration::from_hours(24)));
        assert_eq!(
            Claims {
                issued_at: None,
                ..c
            }
            .renew_at(0.5, seen),
            None
        );
        assert_eq!(Claims::default().renew_at(0.5, seen), None);
    }

    /// The remote's clock runs 12 hours ahead: a one-hour token issued at local time 1 000
    /// says it was issued at 44 200 and ends at 47 800, yet it ends at local time 4 600.
    #[test]
    fn renewal_is_due_before_the_end_whatever_the_remote_clock_says() {
        let skew = 43_200;
        let c = Claims {
            issued_at: Some(at(1_000 + skew)),
            expires_at: Some(at(1_000 + skew + 3_600)),
        };
        let ends = at(1_000 + 3_600);
        // Seen a minute after it was issued.
        let due = c.renew_at(0.6, at(1_060)).expect("time-bound");
        assert_eq!(due, at(1_060 + 2_160));
        assert!(due < ends, "due at {due}, after its end at {ends}");
    }
}
