//! Micro-benchmarks of the CPU kernels (`src/cpu`), one per SIMD level this machine has.
//!
//! - `cpu/score_kernel/{public,industrial}/{level}/{dtype}`: one request's scoring loop (SPEC §6
//!   profiles: public n=8 D=48 10,000 candidates, industrial n=16 D=128 50,000 candidates) over
//!   uniformly random rows of a 1,000,000-row synthetic store in an anonymous mapping, i.e. the
//!   same random gathers from a cache-cold mapping as serving. Throughput: candidates. (Named
//!   `score_kernel` to keep it apart from `benches/engine.rs`'s `cpu/score`, which times the
//!   whole `Engine::score` stage.)
//! - `cpu/matmul/industrial/{level}`: a 500×128 · 128×128 projection (one K or V of the long
//!   tower). Throughput: multiply-adds.
//! - `cpu/top_k/industrial/k1000`: top 1,000 of 50,000 scores (1% invalid). Throughput: scores.
//! - `cpu/fma_peak/{level}`: a register-only loop of independent FMAs, this core's ceiling for
//!   the GFLOP/s figures above. Throughput: flops.
//!
//! `cargo bench --bench score` (short by default: 20 samples, 2 s each). On a shared machine,
//! `HCN_BENCH_CLOCK=oncpu cargo bench --bench score` times on-CPU time instead of wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;
use hcn_prerank::cpu::{transpose, Kernels, Level, RowSource, TopK};
use hcn_prerank::tensor::{DType, MappedMatrix};
use hcn_prerank::ScoreMode;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A `rows × d` store of random values in an anonymous mapping (like a store file, but with no
/// file): the kernels see exactly what `ItemStore` gives them. I8: the values quantized (SPEC §3),
/// the `rows` F32 scales after them.
fn synthetic_store(rows: usize, d: usize, dtype: DType, seed: u64) -> MappedMatrix {
    let mut rng = Rng(seed);
    let scales = if dtype == DType::I8 { 4 * rows } else { 0 };
    let mut map =
        memmap2::MmapMut::map_anon(rows * d * dtype.size() + scales).expect("anonymous mapping");
    match dtype {
        DType::F32 => {
            for c in map.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.sym() * 0.2).to_le_bytes());
            }
        }
        DType::I8 => {
            let (q, s) = map.split_at_mut(rows * d);
            let mut x = vec![0.0f32; d];
            let mut qi = vec![0i8; d];
            for (row, sc) in q.chunks_exact_mut(d).zip(s.chunks_exact_mut(4)) {
                x.iter_mut().for_each(|v| *v = rng.sym() * 0.2);
                let scale = hcn_prerank::tensor::quantize_row(&x, &mut qi);
                sc.copy_from_slice(&scale.to_le_bytes());
                row.iter_mut().zip(&qi).for_each(|(b, &v)| *b = v as u8);
            }
        }
        _ => {
            for c in map.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.sym() * 0.2).to_le_bytes());
            }
        }
    }
    let map = Arc::new(map.make_read_only().expect("read-only mapping"));
    if dtype == DType::I8 {
        MappedMatrix::new_i8(map, 0, rows, d, rows * d).expect("store fits its mapping")
    } else {
        MappedMatrix::new(map, 0, rows, d, dtype).expect("store fits its mapping")
    }
}

fn bench_score<M: Measurement>(c: &mut Criterion<M>) {
    const STORE_ROWS: usize = 1_000_000;
    const HOT_ROWS: usize = 2_048;
    for (profile, n, d, m) in [("public", 8, 48, 10_000), ("industrial", 16, 128, 50_000)] {
        let mut g = c.benchmark_group(format!("cpu/score_kernel/{profile}"));
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(m as u64));
        let mut rng = Rng(0x5eed ^ d as u64);
        let xu: Vec<f32> = (0..n * d).map(|_| rng.sym()).collect();
        let rows: Vec<u32> = (0..m)
            .map(|_| (rng.next() % STORE_ROWS as u64) as u32)
            .collect();
        // The 1M-row stores are the real case (cache- and TLB-cold gathers); the 2,048-row F16
        // store stays in L2 and shows what the arithmetic alone costs.
        // `-huge`: the same 1M-row store copied into memory advised `MADV_HUGEPAGE` (fewer
        // page walks per random row; `EngineOptions::huge_pages`).
        for (dtype, store_rows, huge) in [
            (DType::F16, STORE_ROWS, false),
            (DType::F16, STORE_ROWS, true),
            (DType::I8, STORE_ROWS, false),
            (DType::F32, STORE_ROWS, false),
            (DType::F16, HOT_ROWS, false),
            (DType::I8, HOT_ROWS, false),
        ] {
            let mut store = synthetic_store(store_rows, d, dtype, 7);
            if huge {
                store = store.to_anonymous(true).expect("anonymous copy");
            }
            let src = RowSource::from_matrix(&store).expect("valid store");
            let rows: Vec<u32> = rows.iter().map(|&r| r % store_rows as u32).collect();
            let label = match (store_rows == STORE_ROWS, huge) {
                (true, false) => dtype.name().to_string(),
                (true, true) => format!("{}-huge", dtype.name()),
                (false, _) => format!("{}-hot", dtype.name()),
            };
            for level in Level::available() {
                let k = Kernels::new(level).expect("available level");
                let q = k
                    .score_query(&xu, n, d, ScoreMode::Softmax)
                    .expect("valid interests");
                let mut out = vec![0.0f32; m];
                g.bench_function(BenchmarkId::new(level.name(), &label), |b| {
                    b.iter(|| {
                        q.score_rows(src, black_box(&rows), &mut out)
                            .expect("rows in range");
                        black_box(&out);
                    })
                });
            }
        }
        g.finish();
    }
}

fn bench_matmul<M: Measurement>(c: &mut Criterion<M>) {
    let (m, k, n) = (500, 128, 128);
    let mut g = c.benchmark_group("cpu/matmul/industrial");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements((m * k * n) as u64));
    let mut rng = Rng(11);
    let x: Vec<f32> = (0..m * k).map(|_| rng.sym()).collect();
    let w: Vec<f32> = (0..n * k).map(|_| rng.sym()).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.sym()).collect();
    let wt = transpose(&w, n, k);
    let mut out = vec![0.0f32; m * n];
    for level in Level::available() {
        let kern = Kernels::new(level).expect("available level");
        g.bench_function(level.name(), |b| {
            b.iter(|| {
                kern.matmul(black_box(&x), m, k, &wt, n, Some(&bias), &mut out)
                    .expect("shapes match");
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// Independent FMA chains: 8 accumulators hide the 4-cycle latency on 2 FMA pipes.
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    pub const ITERS: usize = 1 << 16;
    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx2,fma")]
    pub fn avx2(seed: f32) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    pub fn avx512(seed: f32) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }
}

fn bench_fma_peak<M: Measurement>(c: &mut Criterion<M>) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut g = c.benchmark_group("cpu/fma_peak");
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for level in Level::available() {
            let lanes = match level {
                Level::Avx2 => 8,
                Level::Avx512 => 16,
                _ => continue,
            };
            g.throughput(Throughput::Elements(
                (2 * lanes * peak::ITERS * peak::CHAINS) as u64,
            ));
            g.bench_function(level.name(), |b| {
                b.iter(|| match level {
                    // SAFETY: `Level::available` lists only levels whose instructions this CPU
                    // has; both need at most AVX2+FMA or AVX-512F.
                    Level::Avx2 => unsafe { peak::avx2(black_box(1.0)) },
                    _ => unsafe { peak::avx512(black_box(1.0)) },
                })
            });
        }
        g.finish();
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

fn bench_top_k<M: Measurement>(c: &mut Criterion<M>) {
    let (m, k) = (50_000, 1000);
    let mut g = c.benchmark_group("cpu/top_k/industrial");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(m as u64));
    let mut rng = Rng(13);
    let scores: Vec<f32> = (0..m).map(|_| rng.sym()).collect();
    let valid: Vec<bool> = (0..m).map(|i| i % 97 != 0).collect();
    let mut tk = TopK::new();
    let mut out = Vec::with_capacity(k);
    g.bench_function("k1000", |b| {
        b.iter(|| {
            tk.select(black_box(&scores), |i| valid[i], k, &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

/// Time this thread actually ran on a CPU (`CLOCK_THREAD_CPUTIME_ID`, ns) instead of wall time.
/// On a shared, oversubscribed machine wall time mostly measures the run queue; this still
/// includes what other tenants do to caches and memory bandwidth, but not the waiting.
/// Select with `HCN_BENCH_CLOCK=oncpu`.
struct OnCpu(WallTime);

fn on_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux/POSIX knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for OnCpu {
    type Intermediate = u64;
    type Value = Duration;
    fn start(&self) -> u64 {
        on_cpu_ns()
    }
    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(on_cpu_ns().saturating_sub(start))
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

fn run<M: Measurement>(mut c: Criterion<M>) {
    bench_score(&mut c);
    bench_matmul(&mut c);
    bench_top_k(&mut c);
    bench_fma_peak(&mut c);
    c.final_summary();
}

fn main() {
    if std::env::var("HCN_BENCH_CLOCK").is_ok_and(|v| v == "oncpu") {
        run(Criterion::default()
            .with_measurement(OnCpu(WallTime))
            .configure_from_args());
    } else {
        run(Criterion::default().configure_from_args());
    }
}
