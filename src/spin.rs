//! Keeping rayon workers awake between requests (see `EngineOptions::keep_awake`).
//!
//! A request splits its work across the pool (the short tower and the candidate resolution on a
//! second thread, then the candidate chunks). A rayon worker that finds no work spins briefly and
//! then sleeps on a futex; waking it again costs a scheduler round trip, which on a virtual
//! machine (an idle vCPU is halted and must be re-entered) measured tens of µs and more — as much
//! as a whole `public` request. Back-to-back requests then alternate between "both threads" and
//! "the second thread arrives too late" (a bimodal latency: ~150 vs ~230 µs on the dev machine).
//!
//! [`Spinner::extend`] keeps one job per worker on the pool that polls for work
//! (`rayon::yield_now`, which also steals and takes injected jobs) until a deadline that every
//! request pushes forward, so the workers are running when the next request splits. Between
//! polls the job yields its core to the OS (`sched_yield`), not a `pause` loop: a thread that
//! has real work on the same core — the service's network threads sending the answer, a client
//! on the same machine — runs at once instead of waiting for the spinner's time slice, while an
//! otherwise idle core still never halts. The cost is the pool's cores busy for at most the
//! window after the last request — the same trade ONNX Runtime's intra-op threads make by
//! default (they spin before sleeping).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Nanoseconds since the first call (a monotonic clock that fits an atomic).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ns = EPOCH.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// One engine's keep-awake state: at most one polling job per worker of the pool.
#[derive(Debug, Default)]
pub(crate) struct Spinner {
    /// Deadline, in [`now_ns`] time, after which the polling jobs end.
    until: AtomicU64,
    /// Polling jobs queued or running.
    active: AtomicUsize,
}

thread_local! {
    /// This thread is inside a polling job (a nested one would keep nothing else awake).
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

impl Spinner {
    /// Moves the deadline to `window` from now and, when called on a rayon worker, tops the
    /// polling jobs up to one per worker of the current pool: every idle worker then polls, so
    /// the one that takes the next request finds the others awake to take its split work.
    /// No-op for a zero window or outside a pool.
    pub(crate) fn extend(self: &Arc<Self>, window: Duration) {
        if window.is_zero() || rayon::current_thread_index().is_none() {
            return;
        }
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.until
            .fetch_max(now_ns().saturating_add(window), Ordering::AcqRel);
        let workers = rayon::current_num_threads();
        while self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < workers).then_some(a + 1)
            })
            .is_ok()
        {
            let me = Arc::clone(self);
            rayon::spawn(move || {
                // A polling job picked up by a thread that is already polling (through its
                // `yield_now`) ends at once; the next request tops the jobs up again.
                if !POLLING.with(|p| p.replace(true)) {
                    while now_ns() < me.until.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::thread::yield_now();
                        }
                    }
                    POLLING.with(|p| p.set(false));
                }
                me.active.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polling job ends by itself after the window, and a pool keeps serving work while it
    /// runs (it executes jobs instead of blocking them).
    #[test]
    fn the_polling_job_serves_work_and_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let s = Arc::new(Spinner::default());
        pool.install(|| s.extend(Duration::from_millis(20)));
        assert!(s.active.load(Ordering::Acquire) >= 1);
        // Work submitted meanwhile completes (on either thread).
        let sum: u64 = pool.install(|| {
            let (a, b) = rayon::join(|| (0..1000u64).sum::<u64>(), || (0..1000u64).sum::<u64>());
            a + b
        });
        assert_eq!(sum, 2 * 499_500);
        let start = Instant::now();
        while s.active.load(Ordering::Acquire) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "spinner never ended"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // A zero window or a call outside any pool spawns nothing.
        s.extend(Duration::from_millis(20));
        pool.install(|| s.extend(Duration::ZERO));
        assert_eq!(s.active.load(Ordering::Acquire), 0);
    }
}
