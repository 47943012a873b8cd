//! The reconciler's per-cluster backoff while a remote fails.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

/// Per-cluster exponential backoff while a remote fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffSettings {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Delays of consecutive failed attempts: `initial`, doubling, capped at `max`, each shortened
/// by up to 20% at random so that clusters failing together do not retry in lockstep.
///
/// Hand-written rather than `backon`: its jitter adds up to a whole delay on top, past the cap
/// that `--backoff-max` promises; this one only shortens.
#[derive(Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    failures: u32,
    random: RandomState,
}

impl Backoff {
    pub fn new(settings: BackoffSettings) -> Self {
        Self {
            settings,
            failures: 0,
            random: RandomState::new(),
        }
    }

    /// The un-jittered delay after `failures` previous failures.
    pub fn delay(settings: BackoffSettings, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.min(31));
        settings.initial.saturating_mul(factor).min(settings.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::delay(self.settings, self.failures);
        self.failures = self.failures.saturating_add(1);
        let unit = (self.random.hash_one(self.failures) % 1000) as f64 / 1000.0;
        delay.mul_f64(1.0 - 0.2 * unit)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn is_failing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = BackoffSettings::default();
        let delays: Vec<u64> = (0..8)
            .map(|n| Backoff::delay(settings, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(Backoff::delay(settings, u32::MAX), settings.max);

        let mut backoff = Backoff::new(settings);
        assert!(!backoff.is_failing());
        for n in 0..10 {
            let delay = backoff.next_delay();
            let full = Backoff::delay(settings, n);
            assert!(
                delay <= full && delay >= full.mul_f64(0.8),
                "{delay:?} vs {full:?}"
            );
        }
        assert!(backoff.is_failing());
        backoff.reset();
        assert!(!backoff.is_failing());
    }
}
