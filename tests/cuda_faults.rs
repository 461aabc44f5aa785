//! GPU faults without a GPU (issues 5, 14): the launch plan of `src/cuda/plan.rs` runs on a
//! backend that wraps the CPU emulation of the kernels with the GPU backend's workspace pools
//! and lanes (`hcn_prerank::cuda::pool`) and injects the faults a device gives — an allocation
//! that fails (out of memory while uploading the stores or in a batch's workspace), a
//! page-locked staging allocation that fails, a kernel launch that fails, and a sticky device
//! fault — while counting live device buffers, allocations, memsets, launches and staging
//! areas. Each fault must come back as an error to the batch that hit it (never a panic or a
//! partial result), leave no device buffer behind (every one is resident, pooled or freed) and
//! no lane taken, and leave the plan and the CPU engine usable — except the sticky fault, after
//! which the backend refuses every batch. A warm workspace allocates nothing.
#![cfg(feature = "cuda-emulation")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hcn_prerank::cuda::abi::{In, KernelParams, StoreRows, Variant};
use hcn_prerank::cuda::backend::{
    Backend, BatchScope, DeviceBuffer, DeviceInputs, HostInputs, StoreDesc,
};
use hcn_prerank::cuda::emu::{EmuBackend, EmuStore, SCRATCH_I32};
use hcn_prerank::cuda::launch::Geometry;
use hcn_prerank::cuda::pool::{BatchGuard, Lane, LanePool, Lanes, Lease};
use hcn_prerank::cuda::{Plan, StoreSource};
use hcn_prerank::tensor::DType;
use hcn_prerank::{Engine, EngineOptions, Error, ItemStore, Model, Result};

/// A device buffer of the faulty backend: counted while alive.
struct Buf<T> {
    inner: T,
    live: Arc<AtomicIsize>,
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: DeviceBuffer> DeviceBuffer for Buf<T> {
    type Elem = T::Elem;
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn base_addr(&self) -> u64 {
        self.inner.base_addr()
    }
    fn base_addr_mut(&mut self) -> u64 {
        self.inner.base_addr_mut()
    }
}

/// A batch's staging area: counted while alive, like the GPU's pinned one it stands for.
struct Staging {
    live: Arc<AtomicIsize>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lane of the faulty backend: the library's workspace pools (`hcn_prerank::cuda::pool`, as
/// the GPU's lanes use them) over counted emulation buffers, and no stream.
#[derive(Default)]
struct FaultyLane {
    f: LanePool<Buf<Vec<f32>>>,
    i: LanePool<Buf<Vec<i32>>>,
    u: LanePool<Buf<Vec<u32>>>,
    /// The stream "cannot be synchronised" (a device fault): the batch's buffers are abandoned.
    dead: Arc<AtomicBool>,
}

impl Lane for FaultyLane {
    fn end_batch(&self, _clean: bool) -> std::result::Result<(), String> {
        if self.dead.load(Ordering::SeqCst) {
            self.f.abandon_batch();
            self.i.abandon_batch();
            self.u.abandon_batch();
            return Err("the stream could not be synchronised (injected)".into());
        }
        self.f.end_batch();
        self.i.end_batch();
        self.u.end_batch();
        Ok(())
    }
}

/// The emulated backend with the GPU's workspace pools and lanes, counting device allocations,
/// memsets and launches, and failing on demand: the allocation numbered `fail_alloc` (0-based,
/// counted across the backend's life), every staging allocation while `fail_staging` is set,
/// every launch of the kernel named `fail_launch`, and, as a device fault that poisons the
/// context, the launches of `sticky_launch`.
#[derive(Clone)]
struct Faulty {
    live: Arc<AtomicIsize>,
    allocs: Arc<AtomicUsize>,
    memsets: Arc<AtomicUsize>,
    launches: Arc<AtomicUsize>,
    fail_alloc: Arc<AtomicUsize>,
    fail_launch: Arc<Mutex<Option<&'static str>>>,
    sticky_launch: Arc<Mutex<Option<&'static str>>>,
    fail_staging: Arc<AtomicBool>,
    stagings: Arc<AtomicIsize>,
    dead: Arc<AtomicBool>,
    lanes: Arc<Lanes<FaultyLane>>,
}

impl Faulty {
    fn new() -> Self {
        Self::with_lanes(1)
    }

    fn with_lanes(n: usize) -> Self {
        let dead = Arc::new(AtomicBool::new(false));
        let lanes = (0..n)
            .map(|_| FaultyLane {
                dead: dead.clone(),
                ..FaultyLane::default()
            })
            .collect();
        Faulty {
            live: Arc::default(),
            allocs: Arc::default(),
            memsets: Arc::default(),
            launches: Arc::default(),
            fail_alloc: Arc::new(AtomicUsize::new(usize::MAX)),
            fail_launch: Arc::default(),
            sticky_launch: Arc::default(),
            fail_staging: Arc::default(),
            stagings: Arc::default(),
            dead,
            lanes: Arc::new(Lanes::new(lanes)),
        }
    }

    /// A counted device allocation (`r` made it), or the injected out-of-memory.
    fn alloc<T>(&self, r: Result<T>) -> Result<Buf<T>> {
        let n = self.allocs.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_alloc.load(Ordering::SeqCst) {
            return Err(Error::Device(format!(
                "out of memory (injected at allocation {n})"
            )));
        }
        let inner = r?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Buf {
            inner,
            live: self.live.clone(),
        })
    }

    /// Buffers the lanes' pools hold (alive, reachable, reused by later batches).
    fn pooled(&self) -> isize {
        (0..self.lanes.len())
            .map(|i| {
                let l = self.lanes.lane(i).unwrap();
                l.f.buffers() + l.i.buffers() + l.u.buffers()
            })
            .sum::<usize>() as isize
    }

    /// `len` elements from the batch's lane (poisoned when new: stale or poison, never a
    /// promised zero), or a plain allocation outside a batch; `zero` adds a counted memset.
    fn buffer<T: Clone + Default>(
        &self,
        len: usize,
        zero: bool,
        poison: T,
        pool: impl Fn(&FaultyLane) -> &LanePool<Buf<Vec<T>>>,
    ) -> Result<Lease<Buf<Vec<T>>>>
    where
        Vec<T>: DeviceBuffer,
    {
        let mut b = match self.lanes.current() {
            Some(lane) => pool(lane).take(len, |cap| self.alloc(Ok(vec![poison.clone(); cap])))?,
            None => Lease::owned(self.alloc(Ok(vec![poison.clone(); len]))?, len),
        };
        if zero {
            self.memsets.fetch_add(1, Ordering::SeqCst);
            b.raw_mut().inner[..len].fill(T::default());
        }
        Ok(b)
    }

    fn stage_up<T: Copy + Default>(
        &self,
        pool: impl Fn(&FaultyLane) -> &LanePool<Buf<Vec<T>>>,
        parts: &[&[T]],
    ) -> Result<Vec<Lease<Buf<Vec<T>>>>>
    where
        Vec<T>: DeviceBuffer,
    {
        parts
            .iter()
            .map(|p| {
                let mut b = self.buffer(p.len(), false, T::default(), &pool)?;
                b.raw_mut().inner[..p.len()].copy_from_slice(p);
                Ok(b)
            })
            .collect()
    }

    fn injected_launch_fault(&self, kernel: &str) -> Result<()> {
        if *self.fail_launch.lock().unwrap() == Some(kernel) {
            return Err(Error::Device(format!(
                "launch of {kernel} failed (injected)"
            )));
        }
        if *self.sticky_launch.lock().unwrap() == Some(kernel) {
            // What the GPU backend does with a sticky error: the stream is dead, the backend
            // failed, the batch that saw it gets it.
            self.dead.store(true, Ordering::SeqCst);
            let reason = format!("illegal address in {kernel} (injected device fault)");
            self.lanes.fail(&reason);
            return Err(Error::Device(reason));
        }
        Ok(())
    }
}

fn plain<T: Clone>(b: &Lease<Buf<Vec<T>>>) -> Vec<T> {
    b.raw().inner[..b.len()].to_vec()
}

impl Backend for Faulty {
    type F = Lease<Buf<Vec<f32>>>;
    type I = Lease<Buf<Vec<i32>>>;
    type U = Lease<Buf<Vec<u32>>>;
    type Store = Buf<EmuStore>;
    type Staging = Staging;

    fn upload_store(
        &self,
        dtype: DType,
        bytes: &[u8],
        scales: Option<&[u8]>,
        rows: usize,
        dim: usize,
    ) -> Result<Self::Store> {
        self.alloc(EmuBackend.upload_store(dtype, bytes, scales, rows, dim))
    }
    fn store_desc(&self, s: &Self::Store) -> StoreDesc {
        EmuBackend.store_desc(&s.inner)
    }
    fn store_rows(&self, s: &Self::Store) -> In<StoreRows> {
        EmuBackend.store_rows(&s.inner)
    }
    fn store_scales(&self, s: &Self::Store) -> In<f32> {
        EmuBackend.store_scales(&s.inner)
    }
    fn upload_f32(&self, v: &[f32]) -> Result<Self::F> {
        Ok(Lease::owned(self.alloc(EmuBackend.upload_f32(v))?, v.len()))
    }
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I> {
        Ok(Lease::owned(self.alloc(EmuBackend.upload_i32(v))?, v.len()))
    }
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U> {
        Ok(Lease::owned(self.alloc(EmuBackend.upload_u32(v))?, v.len()))
    }
    fn zeros_f32(&self, len: usize) -> Result<Self::F> {
        self.buffer(len, true, f32::NAN, |l| &l.f)
    }
    fn zeros_i32(&self, len: usize) -> Result<Self::I> {
        self.buffer(len, true, SCRATCH_I32, |l| &l.i)
    }
    fn scratch_f32(&self, len: usize) -> Result<Self::F> {
        self.buffer(len, false, f32::NAN, |l| &l.f)
    }
    fn scratch_i32(&self, len: usize) -> Result<Self::I> {
        self.buffer(len, false, SCRATCH_I32, |l| &l.i)
    }
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>> {
        Ok(plain(b))
    }
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>> {
        Ok(plain(b))
    }
    fn begin_batch(&self) -> Result<BatchScope> {
        Ok(BatchScope::new(BatchGuard::begin(&self.lanes)?))
    }
    fn failed(&self) -> Option<String> {
        self.lanes.failed()
    }
    fn upload_batch(&self, inputs: HostInputs<'_>) -> Result<(Staging, DeviceInputs<Self>)> {
        if self.fail_staging.load(Ordering::SeqCst) {
            return Err(Error::Device(
                "allocating page-locked host memory: out of memory (injected)".into(),
            ));
        }
        self.stagings.fetch_add(1, Ordering::SeqCst);
        let staging = Staging {
            live: self.stagings.clone(),
        };
        // One workspace buffer per input, as the GPU does; a failure drops what was taken.
        let u32s = self.stage_up(|l| &l.u, inputs.u32s)?;
        let i32s = self.stage_up(|l| &l.i, inputs.i32s)?;
        let f32s = self.stage_up(|l| &l.f, inputs.f32s)?;
        Ok((staging, DeviceInputs { u32s, i32s, f32s }))
    }
    fn read_back<R>(
        &self,
        staging: Staging,
        f32s: &[&Self::F],
        i32s: &[&Self::I],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R> {
        let f: Vec<&[f32]> = f32s.iter().map(|b| &b.raw().inner[..b.len()]).collect();
        let i: Vec<&[i32]> = i32s.iter().map(|b| &b.raw().inner[..b.len()]).collect();
        self.lanes.mark_clean(true);
        let r = read(&f, &i);
        drop(staging);
        Ok(r)
    }
    unsafe fn launch<P: KernelParams>(
        &self,
        variant: Variant,
        geo: &Geometry,
        p: &P,
    ) -> Result<()> {
        if !geo.is_empty() {
            self.launches.fetch_add(1, Ordering::SeqCst);
        }
        self.injected_launch_fault(P::DESC.op)?;
        // SAFETY: the addresses in `p` are the emulation's (the buffers wrap its vectors); the
        // caller's guarantee carries over.
        unsafe { EmuBackend.launch(variant, geo, p) }
    }
}

struct Files {
    model: Model,
    tokens: ItemStore,
    cands: ItemStore,
    case: common::Case,
}

fn files() -> Files {
    let case = common::cases()
        .into_iter()
        .find(|c| c.name == "tiny_f32")
        .expect("tiny_f32 fixture");
    Files {
        model: Model::load(&case.model).unwrap(),
        tokens: ItemStore::load(&case.tokens).unwrap(),
        cands: ItemStore::load(&case.candidates).unwrap(),
        case,
    }
}

fn plan(b: &Faulty, f: &Files) -> Result<Plan<Faulty>> {
    Plan::new(
        b.clone(),
        &f.model,
        StoreSource::from_store(&f.tokens),
        StoreSource::from_store(&f.cands),
    )
}

fn run(plan: &Plan<Faulty>, f: &Files) -> Result<Vec<hcn_prerank::Response>> {
    run_some(plan, f, &f.case.requests)
}

fn run_some(
    plan: &Plan<Faulty>,
    f: &Files,
    requests: &[hcn_prerank::Request],
) -> Result<Vec<hcn_prerank::Response>> {
    common::run_fixture_result(
        |u, k| plan.run_batch(u, k),
        &f.model,
        &f.tokens,
        &f.cands,
        requests,
        f.case.top_k,
    )
}

/// The memsets a batch still asks for: top-k's histogram and survivor counts, which
/// `topk_hist` / `topk_compact` add to with atomics (one zeroed buffer). Every other buffer is
/// scratch, fully written by its kernel before it is read (the emulation fills scratch with NaN
/// and 0xDEADBEEF, so a kernel reading an unwritten element fails the parity tests).
const ZEROINGS_PER_BATCH: usize = 1;

/// Device allocations, memsets and launches `go` made.
fn counted<R>(b: &Faulty, go: impl FnOnce() -> R) -> (R, [usize; 3]) {
    let read = || [&b.allocs, &b.memsets, &b.launches].map(|c| c.load(Ordering::SeqCst));
    let before = read();
    let r = go();
    let after = read();
    (r, [0, 1, 2].map(|i| after[i] - before[i]))
}

/// Out of memory at every allocation of the upload, one at a time: an error naming the fault,
/// and nothing left allocated.
#[test]
fn out_of_memory_while_uploading_is_an_error_and_frees_everything() {
    let f = files();
    let total = {
        let b = Faulty::new();
        let p = plan(&b, &f).unwrap();
        drop(p);
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            0,
            "a dropped plan frees every buffer"
        );
        b.allocs.load(Ordering::SeqCst)
    };
    assert!(total > 10, "the upload makes {total} allocations");
    for n in 0..total {
        let b = Faulty::new();
        b.fail_alloc.store(n, Ordering::SeqCst);
        match plan(&b, &f) {
            Err(Error::Device(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
            Err(other) => panic!("allocation {n}: expected a device error, got {other}"),
            Ok(_) => panic!("allocation {n} failed but the plan was built"),
        }
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            0,
            "allocation {n}: buffers leaked"
        );
    }
}

/// A failed launch of each kernel and a failed staging (pinned host memory) allocation: the
/// batch is an error, its workspace buffers go back to the pool (nothing leaked, nothing
/// allocated by the next batch), its lane is idle again, and the same plan serves the next
/// batch correctly.
#[test]
fn failed_launches_and_staging_leave_the_plan_usable() {
    let f = files();
    let b = Faulty::new();
    let p = plan(&b, &f).unwrap();
    let resident = b.live.load(Ordering::SeqCst);
    let good = run(&p, &f).unwrap();
    common::check_case("emulated plan, no fault", &f.case, &good, 2e-3);
    let settled = |what: &str| {
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            resident + b.pooled(),
            "{what}: every buffer is resident or in the pool"
        );
        assert_eq!(b.stagings.load(Ordering::SeqCst), 0, "{what}: staging kept");
        assert_eq!(b.lanes.idle(), 1, "{what}: the lane was not returned");
    };
    settled("no fault");
    let pooled = b.pooled();

    for kernel in [
        "attend",
        "attend_combine",
        "co_fusion",
        "score",
        "topk_hist",
        "topk_compact",
        "topk_select",
    ] {
        *b.fail_launch.lock().unwrap() = Some(kernel);
        match run(&p, &f) {
            Err(Error::Device(msg)) => assert!(msg.contains(kernel), "{msg}"),
            other => panic!(
                "{kernel}: expected a device error, got {:?}",
                other.map(|r| r.len())
            ),
        }
        settled(kernel);
        *b.fail_launch.lock().unwrap() = None;
        let (again, [allocs, ..]) = counted(&b, || run(&p, &f).unwrap());
        assert_eq!(
            again, good,
            "after a failed {kernel} the plan serves correctly"
        );
        assert_eq!(
            allocs, 0,
            "after a failed {kernel}: the workspace was reused"
        );
        assert_eq!(b.pooled(), pooled, "{kernel}: the pool did not grow");
    }

    // The staging (on the GPU: page-locked host memory) cannot be allocated: a device error
    // before anything is enqueued, nothing left behind, and the plan recovers.
    b.fail_staging.store(true, Ordering::SeqCst);
    match run(&p, &f) {
        Err(Error::Device(msg)) => assert!(msg.contains("page-locked"), "{msg}"),
        other => panic!(
            "staging: expected a device error, got {:?}",
            other.map(|r| r.len())
        ),
    }
    settled("staging");
    b.fail_staging.store(false, Ordering::SeqCst);
    assert_eq!(run(&p, &f).unwrap(), good, "after a failed staging");
    settled("after a failed staging");

    // The CPU engine on the same files is unaffected by any of this.
    let cpu = Engine::load(
        &f.case.model,
        &f.case.tokens,
        &f.case.candidates,
        EngineOptions::default(),
    )
    .unwrap();
    let resp = cpu.run(&f.case.requests[0], Some(f.case.top_k)).unwrap();
    common::check_response(
        "cpu",
        &resp,
        &f.case.expected[0],
        &f.case.requests[0].candidates,
        f.case.top_k,
        common::CPU_TOL,
    );
}

/// Out of memory at each device allocation a cold batch makes (its workspace): the batch is a
/// device error naming it, every buffer is freed or back in the pool, the lane is idle, and the
/// plan then serves correctly and, warm, allocates nothing.
#[test]
fn out_of_memory_in_the_workspace_is_an_error_and_leaks_nothing() {
    let f = files();
    let (cold, good) = {
        let b = Faulty::new();
        let p = plan(&b, &f).unwrap();
        let (good, [allocs, ..]) = counted(&b, || run(&p, &f).unwrap());
        common::check_case("cold batch", &f.case, &good, 2e-3);
        (allocs, good)
    };
    assert!(cold > 10, "a cold batch makes {cold} allocations");
    for n in 0..cold {
        let b = Faulty::new();
        let p = plan(&b, &f).unwrap();
        let resident = b.live.load(Ordering::SeqCst);
        b.fail_alloc
            .store(b.allocs.load(Ordering::SeqCst) + n, Ordering::SeqCst);
        match run(&p, &f) {
            Err(Error::Device(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
            other => panic!(
                "workspace allocation {n}: expected a device error, got {:?}",
                other.map(|r| r.len())
            ),
        }
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            resident + b.pooled(),
            "workspace allocation {n}: buffers leaked"
        );
        assert_eq!(
            b.stagings.load(Ordering::SeqCst),
            0,
            "allocation {n}: staging kept"
        );
        assert_eq!(
            b.lanes.idle(),
            1,
            "allocation {n}: the lane was not returned"
        );
        b.fail_alloc.store(usize::MAX, Ordering::SeqCst);
        assert_eq!(run(&p, &f).unwrap(), good, "allocation {n}: the next batch");
        if n + 1 == cold {
            let (_, [allocs, ..]) = counted(&b, || run(&p, &f).unwrap());
            assert_eq!(allocs, 0, "allocation {n}: a warm batch allocates");
        }
        drop(p);
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            b.pooled(),
            "allocation {n}: the dropped plan leaves only the pool"
        );
    }
}

/// After one warm-up batch, batches of the same shape and of smaller ones (fewer users, fewer
/// candidates) make no device allocation and only the memsets the kernels need; the plan's
/// launch counter agrees with the backend's.
#[test]
fn warm_batches_allocate_nothing() {
    let f = files();
    let b = Faulty::new();
    let p = plan(&b, &f).unwrap();
    let reqs = &f.case.requests;
    assert!(reqs.len() >= 2, "the fixture has {} requests", reqs.len());
    let (warm, [allocs, _, launches]) = counted(&b, || run(&p, &f).unwrap());
    common::check_case("warm-up", &f.case, &warm, 2e-3);
    assert!(allocs > 0 && launches > 0);
    let pooled = b.pooled();
    let mut halved = reqs.clone();
    for r in &mut halved {
        let keep = r.candidates.len().div_ceil(2);
        r.candidates.truncate(keep);
    }
    let shapes: [(&str, &[hcn_prerank::Request]); 5] = [
        ("the same", reqs),
        ("the first user", &reqs[..1]),
        ("the last user", &reqs[reqs.len() - 1..]),
        ("all but the first", &reqs[1..]),
        ("half the candidates", &halved),
    ];
    for round in 0..2 {
        for (what, rs) in shapes {
            let before = p.launches();
            let (out, [allocs, memsets, launches]) = counted(&b, || run_some(&p, &f, rs).unwrap());
            assert_eq!(allocs, 0, "{what} (round {round}): device allocations");
            assert_eq!(
                memsets, ZEROINGS_PER_BATCH,
                "{what} (round {round}): memsets"
            );
            assert_eq!(
                (p.launches() - before) as usize,
                launches,
                "{what}: the plan's launch count"
            );
            assert_eq!(out.len(), rs.len());
            if std::ptr::eq(rs, reqs.as_slice()) {
                assert_eq!(out, warm, "{what}: stale workspace contents change nothing");
            }
        }
    }
    // Each smaller user's answer is its answer in the full batch (stale buffers included).
    let first = run_some(&p, &f, &reqs[..1]).unwrap();
    common::check_response(
        "the first user alone",
        &first[0],
        &f.case.expected[0],
        &reqs[0].candidates,
        f.case.top_k,
        2e-3,
    );
    assert_eq!(b.pooled(), pooled, "the pool did not grow");
}

/// A device fault that poisons the context (a sticky error): the batch that hit it gets it,
/// never a result; the lane it ran on is abandoned, and every later batch is refused with the
/// first reason instead of running on the broken device.
#[test]
fn a_sticky_fault_fails_its_batch_and_then_the_backend() {
    let f = files();
    let b = Faulty::with_lanes(2);
    let p = plan(&b, &f).unwrap();
    let good = run(&p, &f).unwrap();
    *b.sticky_launch.lock().unwrap() = Some("attend");
    match run(&p, &f) {
        Err(Error::Device(msg)) => assert!(msg.contains("illegal address in attend"), "{msg}"),
        other => panic!("expected the fault, got {:?}", other.map(|r| r.len())),
    }
    *b.sticky_launch.lock().unwrap() = None;
    assert_eq!(b.lanes.idle(), 1, "the faulted lane is abandoned");
    for _ in 0..2 {
        match run(&p, &f) {
            Err(Error::Device(msg)) => {
                assert!(msg.contains("failed earlier"), "{msg}");
                assert!(msg.contains("illegal address in attend"), "{msg}");
            }
            Ok(r) => panic!("a failed backend answered ({} responses)", r.len()),
            Err(other) => panic!("expected a device error, got {other}"),
        }
    }
    assert_eq!(b.lanes.idle(), 1, "a refused batch takes no lane");
    assert!(!good.is_empty());
}

/// Concurrent batches on a backend with two lanes: each runs on its own lane (own buffers),
/// every answer is right, and every lane is idle afterwards.
#[test]
fn concurrent_batches_take_separate_lanes() {
    let f = files();
    let b = Faulty::with_lanes(2);
    let p = plan(&b, &f).unwrap();
    let resident = b.live.load(Ordering::SeqCst);
    let good = run(&p, &f).unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..2 {
                    assert_eq!(run(&p, &f).unwrap(), good);
                }
            });
        }
    });
    assert_eq!(b.lanes.idle(), 2);
    assert_eq!(
        b.live.load(Ordering::SeqCst),
        resident + b.pooled(),
        "nothing outside the pool but the plan's own buffers"
    );
}

/// The per-kernel timing switch on the plan: off, nothing is recorded; on, a batch that fails
/// records nothing (its launches before the fault are dropped) and one that succeeds records
/// every launch, labelled by kernel and site; off again, the times stay and stop growing.
#[test]
fn kernel_timing_counts_every_launch_of_batches_that_succeed() {
    let f = files();
    let b = Faulty::new();
    let p = plan(&b, &f).unwrap();
    run(&p, &f).unwrap();
    assert_eq!(p.kernel_times(), hcn_prerank::KernelTimes::default());
    p.set_kernel_timing(true);
    *b.fail_launch.lock().unwrap() = Some("score");
    assert!(run(&p, &f).is_err());
    let t = p.kernel_times();
    assert_eq!((t.batches, t.kernels.len(), t.dropped), (0, 0, 0));
    *b.fail_launch.lock().unwrap() = None;
    run(&p, &f).unwrap();
    run(&p, &f).unwrap();
    let t = p.kernel_times();
    assert_eq!(t.batches, 2);
    assert_eq!(t.span.count, 2);
    let r = f.model.config.layers as u64;
    let launches: u64 = t.kernels.iter().map(|k| k.stat.count).sum();
    assert_eq!(
        b.launches.load(Ordering::SeqCst) as u64,
        p.launches(),
        "the plan counts every launch, timed or not"
    );
    // Per batch 2r + 5: per layer attend and attend_combine, co_fusion, score, top-k's three.
    assert_eq!(launches, 2 * (2 * r + 5), "{t:?}");
    assert!(2 * r + 5 <= 15);
    let sites: Vec<&str> = t.kernels.iter().map(|k| k.site.as_str()).collect();
    for s in [
        "tower.attend",
        "tower.combine",
        "co_fusion",
        "score",
        "topk.hist",
        "topk.compact",
        "topk.select",
    ] {
        assert!(sites.contains(&s), "no site {s} in {sites:?}");
    }
    let attend = t.kernels.iter().find(|k| k.site == "tower.attend").unwrap();
    assert_eq!(
        (attend.kernel.as_str(), attend.stat.count),
        ("attend_f32", 2 * r)
    );
    // The plan's order: the first layer's attend is its first launch, top-k its last.
    assert_eq!(t.kernels.first().unwrap().site, "tower.attend");
    assert_eq!(t.kernels.last().unwrap().site, "topk.select");
    let select = t.kernels.last().unwrap();
    assert_eq!(
        (select.kernel.as_str(), select.stat.count),
        ("topk_select_f32", 2)
    );
    p.set_kernel_timing(false);
    run(&p, &f).unwrap();
    assert_eq!(p.kernel_times(), t);
    // On again: a fresh start.
    p.set_kernel_timing(true);
    assert_eq!(p.kernel_times().batches, 0);
}

/// An engine on the plan (the faulty backend standing for the GPU): after a sticky device
/// fault, with the CPU fallback that `Device::Auto` sets, the batch that hit the fault and
/// every later one are answered by the CPU executor (right answers, the fault reported by
/// `Engine::device_fault`); without it (an explicit `Device::Cuda`) they are device errors.
#[test]
fn auto_serves_on_the_cpu_after_a_device_fault() {
    let f = files();
    let (reqs, k) = (&f.case.requests, f.case.top_k);
    for fallback in [true, false] {
        let b = Faulty::new();
        let e = hcn_prerank::cuda::engine_on_backend(
            b.clone(),
            fallback,
            Arc::new(Model::load(&f.case.model).unwrap()),
            Arc::new(ItemStore::load(&f.case.tokens).unwrap()),
            Arc::new(ItemStore::load(&f.case.candidates).unwrap()),
            EngineOptions::default(),
        )
        .unwrap();
        let check = |what: &str, out: Vec<Result<hcn_prerank::Response>>, tol: f64| {
            for (i, r) in out.into_iter().enumerate() {
                let r = r.unwrap_or_else(|e| panic!("{what}, request {i}: {e}"));
                common::check_response(what, &r, &f.case.expected[i], &reqs[i].candidates, k, tol);
            }
        };
        check(
            "the plan before the fault",
            e.run_batch(reqs, Some(k)),
            2e-3,
        );
        assert_eq!(e.device_fault(), None);
        *b.sticky_launch.lock().unwrap() = Some("score");
        let hit = e.run_batch(reqs, Some(k));
        *b.sticky_launch.lock().unwrap() = None;
        let after = e.run_batch(reqs, Some(k));
        let fault = e.device_fault().expect("the fault is reported");
        assert!(fault.contains("illegal address in score"), "{fault}");
        if fallback {
            check("the faulted batch, on the CPU", hit, common::CPU_TOL);
            check("a later batch, on the CPU", after, common::CPU_TOL);
        } else {
            for (what, out) in [("the faulted batch", hit), ("a later batch", after)] {
                assert_eq!(out.len(), reqs.len());
                for r in out {
                    match r {
                        Err(Error::Device(msg)) => {
                            assert!(msg.contains("illegal address in score"), "{what}: {msg}")
                        }
                        other => panic!("{what}: expected the device fault, got {other:?}"),
                    }
                }
            }
        }
    }
}
