//! The webhook's resident memory, sampled beside the run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procfs::Memory;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The webhook's RSS every 50 ms.
pub(super) struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub(super) fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                while let Ok(memory) = Memory::of(pid) {
                    lock(&samples).push((Instant::now(), memory.rss_kib));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self { samples, task }
    }

    pub(super) fn peak_between(&self, from: Instant, to: Instant) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    }

    pub(super) fn stop(self) -> Vec<(Instant, u64)> {
        self.task.abort();
        std::mem::take(&mut *lock(&self.samples))
    }
}
