//! Persistent per-batch workspaces and the lanes concurrent batches run on (issue 14).
//!
//! A **lane** is what one batch holds from [`Lanes::acquire`] to the end of the batch: on the GPU
//! a stream with its own page-locked staging and its own device buffers
//! (`super::device::CudaBackend`). A batch's buffers are [`Lease`]s taken from its lane's
//! [`LanePool`]: the smallest idle buffer that is large enough, or a new one (its capacity the
//! next power of two) when none is. A lease dropped during the batch is *held* by the lane and
//! becomes idle again only when the batch ends ([`LanePool::end_batch`]), so the buffers of one
//! batch are all distinct. That is what makes the pool's promise hold: after a batch of some
//! shape, a batch of the same shape or a smaller one (every buffer the same length or shorter,
//! in the same order) finds an idle buffer for each request and allocates nothing (best fit in
//! any order succeeds whenever some assignment does). When no idle buffer is large enough the
//! largest idle one is freed before the new one is allocated, so a lane holds at most as many
//! buffers as one batch has used at once; buffers never shrink.
//!
//! Why hold leases until the end of the batch instead of reusing them at once: on the GPU the
//! kernels that read a buffer may still be queued when the plan drops it; reusing it on the
//! *same* stream would be ordered, but an early reuse can take a buffer a later, larger request
//! of the batch needed (and then allocate), which breaks the promise above. A lane ends a batch
//! only once its stream is idle (the read-back's synchronisation, or the one the backend does
//! for a batch that failed), so a lane's idle buffers are never in use by any stream.
//!
//! Leases taken outside a batch (load time: weights, stores; tests launching single kernels)
//! have no home: they are plain allocations, freed when dropped.
//!
//! [`Lanes`] binds the lane to the calling thread, because the plan reaches the backend through
//! `&self` only (a batch runs on one thread from its upload to its read-back, as the kernel
//! timer also assumes). It also holds the backend's *failed* state: after a device fault that
//! poisons the context (a sticky CUDA error) every later batch is refused with the reason,
//! instead of running on a context whose results can no longer be trusted.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use super::backend::DeviceBuffer;
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while it was held; the lists stay consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Smallest capacity, in elements, of a pooled buffer.
pub const MIN_CAPACITY: usize = 256;

/// The capacity a pooled buffer for `len` elements is allocated with: the next power of two (at
/// least [`MIN_CAPACITY`]), or exactly `len` where that would overflow.
pub fn capacity(len: usize) -> usize {
    len.max(MIN_CAPACITY)
        .checked_next_power_of_two()
        .unwrap_or(len)
}

/// A buffer of a [`LanePool`] lent to one batch (or, without a home, a plain allocation). Its
/// [`DeviceBuffer::len`] is the length asked for, not the buffer's capacity, so the extent
/// checks of [`super::backend::input`] / [`super::backend::output`] stay exact.
pub struct Lease<R> {
    raw: Option<R>,
    len: usize,
    home: Option<Arc<Mutex<Vec<R>>>>,
}

impl<R> Lease<R> {
    /// A buffer that belongs to no pool: freed when the lease is dropped.
    pub fn owned(raw: R, len: usize) -> Self {
        Lease {
            raw: Some(raw),
            len,
            home: None,
        }
    }

    /// The underlying buffer (its capacity may exceed [`DeviceBuffer::len`]).
    pub fn raw(&self) -> &R {
        // Only `Drop` takes it.
        self.raw.as_ref().expect("a live lease holds its buffer")
    }

    pub fn raw_mut(&mut self) -> &mut R {
        self.raw.as_mut().expect("a live lease holds its buffer")
    }
}

impl<R> Drop for Lease<R> {
    fn drop(&mut self) {
        if let (Some(raw), Some(home)) = (self.raw.take(), self.home.as_ref()) {
            lock(home).push(raw);
        }
    }
}

impl<R> std::fmt::Debug for Lease<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("len", &self.len)
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl<R: DeviceBuffer> DeviceBuffer for Lease<R> {
    type Elem = R::Elem;
    fn len(&self) -> usize {
        self.len
    }
    fn base_addr(&self) -> u64 {
        self.raw().base_addr()
    }
    fn base_addr_mut(&mut self) -> u64 {
        self.raw_mut().base_addr_mut()
    }
}

/// One lane's buffers of one element type: idle ones, and those its current batch returned.
pub struct LanePool<R> {
    idle: Mutex<Vec<R>>,
    held: Arc<Mutex<Vec<R>>>,
}

impl<R> Default for LanePool<R> {
    fn default() -> Self {
        LanePool {
            idle: Mutex::default(),
            held: Arc::default(),
        }
    }
}

impl<R: DeviceBuffer> LanePool<R> {
    /// A lease of at least `len` elements: the smallest idle buffer that holds them, else a new
    /// one from `alloc(capacity(len))` (whose error is returned as it is; nothing is kept).
    /// Only the batch that holds the lane calls this.
    pub fn take(&self, len: usize, alloc: impl FnOnce(usize) -> Result<R>) -> Result<Lease<R>> {
        let want = len.max(1);
        let (found, evicted) = {
            let mut idle = lock(&self.idle);
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= want)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            match best {
                Some(i) => (Some(idle.swap_remove(i)), None),
                // Nothing idle is large enough: the largest idle buffer gives way to the new
                // one, so a lane never holds more buffers than one batch has used at once.
                None => {
                    let largest = (0..idle.len()).max_by_key(|&i| idle[i].len());
                    (None, largest.map(|i| idle.swap_remove(i)))
                }
            }
        };
        // Freed before the allocation (on the GPU, in order on the lane's idle stream).
        drop(evicted);
        let raw = match found {
            Some(r) => r,
            None => alloc(capacity(want))?,
        };
        Ok(Lease {
            raw: Some(raw),
            len,
            home: Some(self.held.clone()),
        })
    }

    /// The batch is over and the lane's stream idle: what it returned is idle again.
    pub fn end_batch(&self) {
        let mut held = std::mem::take(&mut *lock(&self.held));
        lock(&self.idle).append(&mut held);
    }

    /// The batch is over but its stream may still use what it returned (the device failed and
    /// could not be synchronised): leak those buffers rather than free or reuse them.
    pub fn abandon_batch(&self) {
        std::mem::forget(std::mem::take(&mut *lock(&self.held)));
    }

    /// Buffers the lane owns (idle and held), e.g. for tests.
    pub fn buffers(&self) -> usize {
        lock(&self.idle).len() + lock(&self.held).len()
    }
}

/// What the end of a batch needs from a lane.
pub trait Lane: Send + Sync {
    /// Waits for the lane's stream to finish what the batch enqueued (when `clean` is false: the
    /// batch did not reach its read-back's synchronisation), then makes the batch's buffers idle.
    /// `Err`: the stream could not be synchronised (a device fault); the lane must then not be
    /// reused, and its held buffers are leaked.
    fn end_batch(&self, clean: bool) -> std::result::Result<(), String>;
}

struct Binding {
    lane: usize,
    /// The batch reached the synchronisation of its read-back.
    clean: bool,
}

/// The lanes of a backend, the one bound to each thread running a batch, and the failed state.
pub struct Lanes<L> {
    lanes: Vec<L>,
    idle: Mutex<Vec<usize>>,
    freed: Condvar,
    bound: Mutex<HashMap<ThreadId, Binding>>,
    failed: Mutex<Option<String>>,
}

impl<L: Lane> Lanes<L> {
    pub fn new(lanes: Vec<L>) -> Self {
        // Popped from the end: lane 0 first, and the lane released last is taken next, so
        // batches that come one at a time keep reusing one lane's warm buffers.
        let idle = (0..lanes.len()).rev().collect();
        Lanes {
            lanes,
            idle: Mutex::new(idle),
            freed: Condvar::new(),
            bound: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Lane `i` (for tests and diagnostics).
    pub fn lane(&self, i: usize) -> Option<&L> {
        self.lanes.get(i)
    }

    /// Lanes no batch holds (a lane abandoned after a fault never comes back).
    pub fn idle(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Why the backend failed, if it did.
    pub fn failed(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    fn refuse(reason: &str) -> Error {
        Error::Device(format!(
            "the GPU executor failed earlier and serves no more batches ({reason}); restart the \
             process (or load the engine with the CPU device)"
        ))
    }

    /// Marks the backend failed with `reason` (the first reason is kept) and wakes batches
    /// waiting for a lane, which then get the error. True when this call failed it (false when
    /// it had already failed).
    pub fn fail(&self, reason: &str) -> bool {
        let first = {
            let mut failed = lock(&self.failed);
            let first = failed.is_none();
            failed.get_or_insert_with(|| reason.to_string());
            first
        };
        // Under the idle lock: a batch that found no idle lane checks `failed` and starts
        // waiting without releasing it, so it cannot miss this wake-up.
        let _idle = lock(&self.idle);
        self.freed.notify_all();
        first
    }

    /// Binds an idle lane to the calling thread for one batch, waiting while all are busy; an
    /// error when the backend failed or the thread already runs a batch on this backend.
    /// Release it with [`Lanes::release`] (what [`BatchGuard`] does).
    pub fn acquire(&self) -> Result<usize> {
        let me = std::thread::current().id();
        if lock(&self.bound).contains_key(&me) {
            return Err(Error::Device(
                "a batch was started on a thread that is already running one".into(),
            ));
        }
        let mut idle = lock(&self.idle);
        let lane = loop {
            if let Some(reason) = self.failed() {
                return Err(Self::refuse(&reason));
            }
            if let Some(l) = idle.pop() {
                break l;
            }
            if self.lanes.is_empty() {
                return Err(Error::Device("the backend has no lane".into()));
            }
            idle = self.freed.wait(idle).unwrap_or_else(|e| e.into_inner());
        };
        drop(idle);
        lock(&self.bound).insert(me, Binding { lane, clean: false });
        Ok(lane)
    }

    /// The lane bound to the calling thread, if it runs a batch.
    pub fn current(&self) -> Option<&L> {
        let me = std::thread::current().id();
        let i = lock(&self.bound).get(&me).map(|b| b.lane)?;
        self.lanes.get(i)
    }

    /// Records that the calling thread's batch has synchronised its stream (its read-back).
    pub fn mark_clean(&self, clean: bool) {
        let me = std::thread::current().id();
        if let Some(b) = lock(&self.bound).get_mut(&me) {
            b.clean = clean;
        }
    }

    /// Ends the calling thread's batch: the lane ends the batch ([`Lane::end_batch`]) and goes
    /// back to the idle lanes, or, when that fails, the backend is marked failed and the lane is
    /// never used again. Nothing happens on a thread that holds no lane.
    pub fn release(&self) {
        let me = std::thread::current().id();
        let Some(b) = lock(&self.bound).remove(&me) else {
            return;
        };
        let Some(lane) = self.lanes.get(b.lane) else {
            return;
        };
        match lane.end_batch(b.clean) {
            Ok(()) => {
                lock(&self.idle).push(b.lane);
                self.freed.notify_one();
            }
            Err(reason) => {
                self.fail(&reason);
            }
        }
    }
}

/// A batch's hold on a lane ([`Lanes::acquire`]); dropping it ends the batch
/// ([`Lanes::release`]), also when the batch failed or panicked.
pub struct BatchGuard<L: Lane> {
    lanes: Arc<Lanes<L>>,
}

impl<L: Lane> BatchGuard<L> {
    /// Acquires a lane of `lanes` for the calling thread.
    pub fn begin(lanes: &Arc<Lanes<L>>) -> Result<Self> {
        lanes.acquire()?;
        Ok(BatchGuard {
            lanes: lanes.clone(),
        })
    }
}

impl<L: Lane> Drop for BatchGuard<L> {
    fn drop(&mut self) {
        self.lanes.release();
    }
}

impl<L: Lane> std::fmt::Debug for BatchGuard<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_a_power_of_two() {
        assert_eq!(capacity(0), MIN_CAPACITY);
        assert_eq!(capacity(MIN_CAPACITY + 1), 2 * MIN_CAPACITY);
        assert_eq!(capacity(usize::MAX), usize::MAX);
    }

    #[test]
    fn a_smaller_batch_reuses_a_larger_ones_buffers() {
        let pool = LanePool::<Vec<f32>>::default();
        let allocs = std::cell::Cell::new(0);
        let alloc = |cap: usize| {
            allocs.set(allocs.get() + 1);
            Ok(vec![0.0; cap])
        };
        // The case early reuse would get wrong: 8, 4, drop the 8, then 6.
        let run = |sizes: [usize; 3]| {
            let a = pool.take(sizes[0], alloc).unwrap();
            let _b = pool.take(sizes[1], alloc).unwrap();
            drop(a);
            let _c = pool.take(sizes[2], alloc).unwrap();
        };
        run([8 * 256, 4 * 256, 6 * 256]);
        pool.end_batch();
        assert_eq!(allocs.get(), 3);
        run([3 * 256, 4 * 256, 6 * 256]);
        pool.end_batch();
        run([8 * 256, 4 * 256, 6 * 256]);
        pool.end_batch();
        assert_eq!(allocs.get(), 3, "no allocation after the first batch");
        assert_eq!(pool.buffers(), 3);
        // A larger batch: each buffer too small for its request gives way to a larger one.
        run([64 * 256, 32 * 256, 16 * 256]);
        pool.end_batch();
        assert_eq!(
            pool.buffers(),
            3,
            "the lane keeps one batch's worth of buffers"
        );
        assert!(allocs.get() > 3);
    }
}
