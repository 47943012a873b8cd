//! Percentiles and the markdown tables every scenario prints.

use std::fmt::Write as _;
use std::time::Duration;

/// Order statistics of one series of latencies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// Nearest-rank percentiles (no interpolation: every figure is a latency that was measured).
    /// `None` for an empty series.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        Some(Self {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
            mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
        })
    }
}

/// The smallest sample with at least `q` percent of the samples at or below it.
/// `sorted` must be sorted and non-empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `a / b` as `1.23x`, or `-` when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".to_owned()
    } else {
        format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
    }
}

/// One row of a latency table: a series and the baseline its ratios are taken against.
pub struct Row<'a> {
    pub name: String,
    pub summary: Summary,
    pub baseline: Option<&'a Summary>,
}

impl<'a> Row<'a> {
    /// A baseline row: its ratios print as `-`.
    pub fn baseline(name: impl Into<String>, summary: Summary) -> Self {
        Self {
            name: name.into(),
            summary,
            baseline: None,
        }
    }

    /// A row with its ratios to `baseline`.
    pub fn against(name: impl Into<String>, summary: Summary, baseline: &'a Summary) -> Self {
        Self {
            name: name.into(),
            summary,
            baseline: Some(baseline),
        }
    }
}

/// A markdown table: count, p50/p95/p99/max in ms, then the p50/p95/p99 ratios to the
/// row's baseline (`-` for the baseline itself).
pub fn latency_table(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "| series | n | p50 ms | p95 ms | p99 ms | max ms | p50 ratio | p95 ratio | p99 ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let s = &row.summary;
        let (r50, r95, r99) = match row.baseline {
            Some(b) => (
                ratio(s.p50, b.p50),
                ratio(s.p95, b.p95),
                ratio(s.p99, b.p99),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {r50} | {r95} | {r99} |",
            row.name,
            s.count,
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = millis(&(1..=100).rev().collect::<Vec<_>>());
        let s = Summary::of(&samples).expect("non-empty");
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p95, Duration::from_millis(95));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.mean, Duration::from_micros(50_500));
    }

    #[test]
    fn small_series_use_their_extremes() {
        let s = Summary::of(&millis(&[7])).expect("non-empty");
        assert_eq!(
            (s.p50, s.p99, s.max),
            (s.max, s.max, Duration::from_millis(7))
        );
        let s = Summary::of(&millis(&[1, 2, 3])).expect("non-empty");
        assert_eq!(s.p50, Duration::from_millis(2));
        assert_eq!(s.p95, Duration::from_millis(3));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_and_table() {
        assert_eq!(
            ratio(Duration::from_millis(3), Duration::from_millis(2)),
            "1.50x"
        );
        assert_eq!(ratio(Duration::from_millis(3), Duration::ZERO), "-");
        let base = Summary::of(&millis(&[2, 2, 2])).expect("non-empty");
        let slow = Summary::of(&millis(&[4, 4, 4])).expect("non-empty");
        let table = latency_table(&[
            Row::baseline("floor", base),
            Row::against("webhook", slow, &base),
        ]);
        assert!(
            table.contains("| floor | 3 | 2.00 | 2.00 | 2.00 | 2.00 | - | - | - |"),
            "{table}"
        );
        assert!(
            table.contains("| webhook | 3 | 4.00 | 4.00 | 4.00 | 4.00 | 2.00x | 2.00x | 2.00x |"),
            "{table}"
        );
    }
}
