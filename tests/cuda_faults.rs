//! GPU faults without a GPU (issue 5): the launch plan of `src/cuda/plan.rs` runs on a backend
//! that wraps the CPU emulation of the kernels and injects the faults a device gives —
//! an allocation that fails (out of memory while uploading the stores or a request's buffers),
//! a page-locked staging allocation that fails, and a kernel launch that fails — while counting
//! live device buffers and staging areas. Each fault must come back as
//! an error (never a panic or a partial result), leave no device buffer behind, and leave the
//! plan and the CPU engine usable.
#![cfg(feature = "cuda-emulation")]

mod common;

use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;

use hcn_prerank::cuda::abi::{In, KernelParams, StoreRows, Variant};
use hcn_prerank::cuda::backend::{Backend, DeviceBuffer, DeviceInputs, HostInputs, StoreDesc};
use hcn_prerank::cuda::emu::{EmuBackend, EmuStore};
use hcn_prerank::cuda::launch::Geometry;
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

/// Fails the allocation numbered `fail_alloc` (0-based, counted across the backend's life),
/// every staging allocation while `fail_staging` is set, and every launch of the kernel named
/// `fail_launch`.
#[derive(Clone, Default)]
struct Faulty {
    live: Arc<AtomicIsize>,
    allocs: Arc<AtomicUsize>,
    fail_alloc: Arc<AtomicUsize>,
    fail_launch: Arc<std::sync::Mutex<Option<&'static str>>>,
    fail_staging: Arc<std::sync::atomic::AtomicBool>,
    stagings: Arc<AtomicIsize>,
}

impl Faulty {
    fn new() -> Self {
        let f = Faulty::default();
        f.fail_alloc.store(usize::MAX, Ordering::SeqCst);
        f
    }

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

    fn injected_launch_fault(&self, kernel: &str) -> Result<()> {
        if *self.fail_launch.lock().unwrap() == Some(kernel) {
            return Err(Error::Device(format!(
                "launch of {kernel} failed (injected)"
            )));
        }
        Ok(())
    }
}

impl Backend for Faulty {
    type F = Buf<Vec<f32>>;
    type I = Buf<Vec<i32>>;
    type U = Buf<Vec<u32>>;
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
        self.alloc(EmuBackend.upload_f32(v))
    }
    fn upload_i32(&self, v: &[i32]) -> Result<Self::I> {
        self.alloc(EmuBackend.upload_i32(v))
    }
    fn upload_u32(&self, v: &[u32]) -> Result<Self::U> {
        self.alloc(EmuBackend.upload_u32(v))
    }
    fn zeros_f32(&self, len: usize) -> Result<Self::F> {
        self.alloc(EmuBackend.zeros_f32(len))
    }
    fn zeros_i32(&self, len: usize) -> Result<Self::I> {
        self.alloc(EmuBackend.zeros_i32(len))
    }
    fn download_f32(&self, b: &Self::F) -> Result<Vec<f32>> {
        EmuBackend.download_f32(&b.inner)
    }
    fn download_i32(&self, b: &Self::I) -> Result<Vec<i32>> {
        EmuBackend.download_i32(&b.inner)
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
        // One device allocation per input, as the GPU does; a failure drops what was made.
        let u32s = inputs
            .u32s
            .iter()
            .map(|v| self.alloc(EmuBackend.upload_u32(v)))
            .collect::<Result<_>>()?;
        let i32s = inputs
            .i32s
            .iter()
            .map(|v| self.alloc(EmuBackend.upload_i32(v)))
            .collect::<Result<_>>()?;
        let f32s = inputs
            .f32s
            .iter()
            .map(|v| self.alloc(EmuBackend.upload_f32(v)))
            .collect::<Result<_>>()?;
        Ok((staging, DeviceInputs { u32s, i32s, f32s }))
    }
    fn read_back<R>(
        &self,
        staging: Staging,
        f32s: &[&Self::F],
        i32s: &[&Self::I],
        read: impl FnOnce(&[&[f32]], &[&[i32]]) -> R,
    ) -> Result<R> {
        let f: Vec<&Vec<f32>> = f32s.iter().map(|b| &b.inner).collect();
        let i: Vec<&Vec<i32>> = i32s.iter().map(|b| &b.inner).collect();
        let r = EmuBackend.read_back((), &f, &i, read);
        drop(staging);
        r
    }
    unsafe fn launch<P: KernelParams>(
        &self,
        variant: Variant,
        geo: &Geometry,
        p: &P,
    ) -> Result<()> {
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
    common::run_fixture_result(
        |u, k| plan.run_batch(u, k),
        &f.model,
        &f.tokens,
        &f.cands,
        &f.case.requests,
        f.case.top_k,
    )
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

/// A failed launch of each kernel, out of memory for a request's buffers, and a failed staging
/// (pinned host memory) allocation: the batch is an error, the request's buffers and staging are
/// freed, and the same plan serves the next batch correctly.
#[test]
fn failed_launches_and_request_oom_leave_the_plan_usable() {
    let f = files();
    let b = Faulty::new();
    let p = plan(&b, &f).unwrap();
    let resident = b.live.load(Ordering::SeqCst);
    let good = run(&p, &f).unwrap();
    common::check_case("emulated plan, no fault", &f.case, &good, 2e-3);
    assert_eq!(
        b.live.load(Ordering::SeqCst),
        resident,
        "a batch leaves no buffer behind"
    );

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
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            resident,
            "{kernel}: buffers leaked"
        );
        assert_eq!(
            b.stagings.load(Ordering::SeqCst),
            0,
            "{kernel}: staging kept"
        );
        *b.fail_launch.lock().unwrap() = None;
        assert_eq!(
            run(&p, &f).unwrap(),
            good,
            "after a failed {kernel} the plan serves correctly"
        );
    }

    let before = b.allocs.load(Ordering::SeqCst);
    run(&p, &f).unwrap();
    let per_batch = b.allocs.load(Ordering::SeqCst) - before;
    assert!(per_batch > 0);
    for n in 0..per_batch {
        b.fail_alloc
            .store(b.allocs.load(Ordering::SeqCst) + n, Ordering::SeqCst);
        assert!(
            matches!(run(&p, &f), Err(Error::Device(_))),
            "request allocation {n}"
        );
        assert_eq!(
            b.live.load(Ordering::SeqCst),
            resident,
            "request allocation {n}: buffers leaked"
        );
        assert_eq!(
            b.stagings.load(Ordering::SeqCst),
            0,
            "request allocation {n}: staging kept"
        );
    }
    b.fail_alloc.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(run(&p, &f).unwrap(), good);

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
    assert_eq!(b.live.load(Ordering::SeqCst), resident, "staging: leaked");
    b.fail_staging.store(false, Ordering::SeqCst);
    assert_eq!(run(&p, &f).unwrap(), good, "after a failed staging");
    assert_eq!(
        b.stagings.load(Ordering::SeqCst),
        0,
        "a batch returns its staging"
    );

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
