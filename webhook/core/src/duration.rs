//! THE duration grammar of every flag, the plugin's and the webhook's: `90` or `1.5`
//! (seconds), `500ms`, `2s`, `5m`, `1h`, `1d`, and sums such as `1h30m`.

use std::time::Duration;

/// The longest duration a flag takes: whatever waits, ends or renews at now plus a flag must
/// be an instant the clock can count to (adding 1e19 s to one panics), and no wait, period or
/// token lifetime of a cluster comes near a century.
pub const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration flag; the error is one line naming the text and what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    let parsed = parse_any(text.trim())?;
    if parsed > LONGEST {
        return Err(format!(
            "{:?} is longer than a century; use at most 36500d",
            text.trim()
        ));
    }
    Ok(parsed)
}

fn parse_any(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    if text.is_empty() {
        return Err("empty duration; use e.g. 90s, 2m or 1h30m".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration; use e.g. 90s, 2m or 1h30m"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86_400.0,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ));
            }
        };
        let part =
            Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))?;
        total = total.saturating_add(part);
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_units_and_sums() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
    }

    /// Now plus 1e19 s panicked wherever a flag's duration was added to an instant.
    #[test]
    fn refuses_what_no_clock_counts_to() {
        let longest = "36500d";
        assert_eq!(parse(longest), Ok(LONGEST));
        let sum = "10000000000000000000s10000000000000000000s";
        for too_long in ["1e19", "36501d", sum] {
            let error = parse(too_long).expect_err(too_long);
            assert!(
                error.ends_with("is longer than a century; use at most 36500d"),
                "{error}"
            );
        }
    }

    #[test]
    fn refuses_in_one_line() {
        for bad in ["", "5 parsecs", "-1", "s", "2m-"] {
            let error = parse(bad).expect_err(bad);
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
