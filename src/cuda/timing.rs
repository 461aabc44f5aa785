//! The per-kernel timing switch of the batch plan (see [`crate::kernel_times`]): off by default;
//! when on, [`super::Plan`] brackets every launch with two [`Mark`]s of its backend (CUDA events
//! on the GPU, host timestamps under the emulation), keeps them pending until the batch's
//! read-back has synchronised, then turns them into microseconds per (kernel, site).
//!
//! Pending marks are kept per calling thread: a batch runs on one thread from its first launch
//! to its read-back, so concurrent batches never settle each other's marks (on the GPU another
//! batch's events may not have completed yet). Toggle the switch between batches: a batch that
//! is in flight while timing is turned on or off may be partly recorded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use super::backend::Mark;
use crate::kernel_times::{KernelTime, KernelTimes, Samples};

/// Where a launch comes from: its entry point's two parts and the plan's site label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub op: &'static str,
    pub suffix: &'static str,
    pub site: &'static str,
}

struct Pending {
    thread: ThreadId,
    key: Key,
    start: Mark,
    end: Mark,
}

#[derive(Default)]
struct Stats {
    batches: u64,
    span: Samples,
    /// In order of first launch; a batch has ~20 distinct keys, so a linear search is cheapest.
    kernels: Vec<(Key, Samples)>,
    dropped: u64,
}

/// The switch, the marks of batches in flight and the accumulated samples.
#[derive(Default)]
pub(crate) struct KernelTimer {
    on: AtomicBool,
    /// Every non-empty launch of the plan since it was built, timing on or off.
    launches: AtomicU64,
    pending: Mutex<Vec<Pending>>,
    stats: Mutex<Stats>,
}

impl std::fmt::Debug for KernelTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTimer")
            .field("on", &self.enabled())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while it was held; the data stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelTimer {
    /// The one check a launch pays when timing is off.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Counts one launch (timing on or off).
    #[inline]
    pub fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Launches counted since the plan was built.
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// Turns timing on (clearing what was accumulated and any stale marks) or off (what was
    /// accumulated stays readable).
    pub fn set(&self, on: bool) {
        lock(&self.pending).clear();
        if on {
            *lock(&self.stats) = Stats::default();
        }
        self.on.store(on, Ordering::Relaxed);
    }

    /// Keeps one launch's marks until its batch settles.
    pub fn push(&self, key: Key, start: Mark, end: Mark) {
        lock(&self.pending).push(Pending {
            thread: std::thread::current().id(),
            key,
            start,
            end,
        });
    }

    /// Ends the calling thread's batch: after a successful read-back (`synchronised`: every
    /// mark has completed) its launches become samples; after a failure they are dropped.
    pub fn settle(&self, synchronised: bool) {
        let me = std::thread::current().id();
        let mine: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let (mine, others) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|p| p.thread == me);
            *pending = others;
            mine
        };
        if !synchronised || mine.is_empty() {
            return;
        }
        let mut stats = lock(&self.stats);
        stats.batches += 1;
        if let (Some(first), Some(last)) = (mine.first(), mine.last()) {
            match first.start.elapsed_us(&last.end) {
                Ok(us) => stats.span.add(us),
                Err(_) => stats.dropped += 1,
            }
        }
        for p in &mine {
            match p.start.elapsed_us(&p.end) {
                Ok(us) => {
                    let at = match stats.kernels.iter().position(|(k, _)| *k == p.key) {
                        Some(i) => i,
                        None => {
                            stats.kernels.push((p.key, Samples::default()));
                            stats.kernels.len() - 1
                        }
                    };
                    stats.kernels[at].1.add(us);
                }
                Err(_) => stats.dropped += 1,
            }
        }
    }

    /// What was accumulated since timing was last turned on.
    pub fn times(&self) -> KernelTimes {
        let stats = lock(&self.stats);
        let batches = stats.batches;
        KernelTimes {
            batches,
            span: stats.span.stat(),
            kernels: stats
                .kernels
                .iter()
                .map(|(k, s)| {
                    let stat = s.stat();
                    KernelTime {
                        kernel: format!("{}_{}", k.op, k.suffix),
                        site: k.site.to_string(),
                        stat,
                        per_batch_us: if batches > 0 {
                            stat.total_us / batches as f64
                        } else {
                            0.0
                        },
                    }
                })
                .collect(),
            dropped: stats.dropped,
        }
    }
}
