//! Ages and durations the way kubectl prints them (`12s`, `3m20s`, `5h`, `2d3h`).
//!
//! The same rules as `k8s.io/apimachinery/pkg/util/duration.HumanDuration`, so a column of
//! `kubectl mesh list` reads like the AGE column of `kubectl get`.

use jiff::{SignedDuration, Timestamp};

/// Shown where a time is absent (kubectl's `<none>`).
pub const NONE: &str = "<none>";

/// `d` in kubectl's short form: `12s`, `3m20s`, `45m`, `5h10m`, `20h`, `2d3h`, `40d`, `2y30d`.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        // A clock skew this large is worth showing as such, as kubectl does.
        return "<invalid>".to_owned();
    }
    if secs < 0 {
        return "0s".to_owned();
    }
    let minutes = secs / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if secs < 60 * 2 {
        format!("{secs}s")
    } else if minutes < 10 {
        match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        match days % 365 {
            0 => format!("{years}y"),
            dd => format!("{years}y{dd}d"),
        }
    } else {
        format!("{years}y")
    }
}

/// Time elapsed from `then` to `now`, in kubectl's short form.
pub fn since(then: Timestamp, now: Timestamp) -> String {
    human_duration(now.duration_since(then))
}

/// Age of an RFC 3339 time as stored in a status field; [`NONE`] when absent or unreadable.
pub fn since_rfc3339(then: Option<&str>, now: Timestamp) -> String {
    then.and_then(|t| t.parse::<Timestamp>().ok())
        .map_or_else(|| NONE.to_owned(), |t| since(t, now))
}

/// When something expires, seen from `now`: `in 23h`, or `expired 5m ago`.
pub fn until(when: Timestamp, now: Timestamp) -> String {
    let left = when.duration_since(now);
    if left.is_negative() {
        format!("expired {} ago", human_duration(-left))
    } else {
        format!("in {}", human_duration(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> String {
        human_duration(SignedDuration::from_secs(s))
    }

    #[test]
    fn matches_kubectl() {
        // The cases of apimachinery's duration_test.go.
        assert_eq!(secs(1), "1s");
        assert_eq!(secs(70), "70s");
        assert_eq!(secs(190), "3m10s");
        assert_eq!(secs(70 * 60), "70m");
        assert_eq!(secs(47 * 60 * 60), "47h");
        assert_eq!(secs(49 * 60 * 60), "2d1h");
        assert_eq!(secs((8 * 24 + 2) * 60 * 60), "8d");
        assert_eq!(secs(367 * 24 * 60 * 60), "367d");
        assert_eq!(secs((365 * 2 + 10) * 24 * 60 * 60), "2y10d");
        assert_eq!(secs((365 * 8 + 10) * 24 * 60 * 60), "8y");
        assert_eq!(secs(120), "2m");
        assert_eq!(secs(5 * 60 * 60), "5h");
        assert_eq!(secs(5 * 60 * 60 + 600), "5h10m");
        assert_eq!(secs(0), "0s");
        assert_eq!(secs(-1), "0s");
        assert_eq!(secs(-5), "<invalid>");
    }

    #[test]
    fn since_and_until() {
        let now: Timestamp = "2026-01-10T12:00:00Z".parse().unwrap();
        assert_eq!(since_rfc3339(Some("2026-01-10T11:59:48Z"), now), "12s");
        assert_eq!(since_rfc3339(None, now), NONE);
        assert_eq!(since_rfc3339(Some("yesterday"), now), NONE);
        let later: Timestamp = "2026-01-11T11:00:00Z".parse().unwrap();
        assert_eq!(until(later, now), "in 23h");
        let earlier: Timestamp = "2026-01-10T11:55:00Z".parse().unwrap();
        assert_eq!(until(earlier, now), "expired 5m ago");
    }
}
