//! The machine's own limits, measured (issue 12): the FMA peak of each SIMD level and the rate
//! at which random rows of a store come in from memory. Every speed figure of the engine is
//! stated against these floors of the machine it ran on (`hcn bench --floors`, the criterion
//! group `floors`), because the hosts this runs on differ by 2–3× for the same build.
//!
//! - [`fma_peak`]: independent chains of fused multiply-adds in registers (12 accumulators per
//!   thread, enough to cover the FMA latency × ports of current x86 and Arm cores), so the
//!   figure is the core's arithmetic peak at that vector width, not a memory figure.
//! - [`gather_rate`]: the same shape of access as scoring (random rows of the mapped store,
//!   every byte of each row read, a software prefetch `distance` rows ahead), with no arithmetic:
//!   a floor for the candidate side of a request; on `MappedMatrix::to_anonymous(true)`, the same
//!   rows from huge pages.

use std::time::Instant;

use crate::cpu::Level;
use crate::rng::SplitMix64 as Rng;
use crate::tensor::{prefetch, MappedMatrix};

/// Accumulators per thread in the FMA loop.
const CHAINS: usize = 12;

/// Rounds of the FMA loop per thread and run (about 2–4 ms at a few GHz: long enough for a
/// stable rate, short enough to repeat).
pub const FMA_ITERS: u64 = 1 << 19;

/// Floating-point operations of one [`fma_peak`] run per thread (an FMA lane counts 2).
pub fn fma_flops_per_thread(level: Level) -> u64 {
    FMA_ITERS * CHAINS as u64 * lanes(level) as u64 * 2
}

/// One measured FMA peak.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FmaPeak {
    pub level: &'static str,
    pub threads: usize,
    /// Floating-point operations per second (an FMA lane counts 2), in billions.
    pub gflops: f64,
}

/// The best of `reps` timed runs of the FMA loop at `level` on `threads` threads (each its own
/// OS thread, started before the clock), or `None` where this CPU lacks the level.
pub fn fma_peak(level: Level, threads: usize, reps: usize) -> Option<FmaPeak> {
    if !level.is_supported() {
        return None;
    }
    let flops = fma_flops_per_thread(level);
    Some(FmaPeak {
        level: level.name(),
        threads,
        gflops: timed_peak(threads, reps, flops, || fma_loop(level, FMA_ITERS)),
    })
}

/// Byte operations of one [`vnni_peak`] run per thread: 64 products and their adds (2 each)
/// per `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
pub fn vnni_ops_per_thread() -> u64 {
    FMA_ITERS * CHAINS as u64 * 64 * 2
}

/// [`fma_peak`] for AVX-512 VNNI's `vpdpbusd` (the I8 scoring kernel's instruction), labelled
/// `avx512_vnni`, its `gflops` counting byte products and adds (2 per product); `None` where
/// the CPU lacks it.
pub fn vnni_peak(threads: usize, reps: usize) -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::vnni_supported() {
        return Some(FmaPeak {
            level: "avx512_vnni",
            threads,
            // SAFETY: the CPU has AVX-512F and VNNI (checked above).
            gflops: timed_peak(threads, reps, vnni_ops_per_thread(), || unsafe {
                x86::dpbusd_avx512(FMA_ITERS) as f32
            }),
        });
    }
    let _ = (threads, reps);
    None
}

/// The best rate (billions of `ops_per_thread` per second) of `reps` runs of `work` on
/// `threads` threads, each its own OS thread, started before the clock.
fn timed_peak(
    threads: usize,
    reps: usize,
    ops_per_thread: u64,
    work: impl Fn() -> f32 + Sync,
) -> f64 {
    let threads = threads.max(1);
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let start_line = std::sync::Barrier::new(threads + 1);
        let elapsed = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start_line.wait();
                        let t = Instant::now();
                        std::hint::black_box(work());
                        t.elapsed()
                    })
                })
                .collect();
            start_line.wait();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .max()
                .unwrap_or_default()
        });
        let ops = (threads as u64 * ops_per_thread) as f64;
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            best = best.max(ops / seconds / 1e9);
        }
    }
    best
}

fn lanes(level: Level) -> usize {
    match level {
        Level::Scalar => 1,
        Level::Avx2 => 8,
        Level::Avx512 => 16,
        Level::Neon => 4,
    }
}

/// `iters` rounds of [`CHAINS`] independent FMAs at `level`; the caller checked support.
fn fma_loop(level: Level, iters: u64) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `fma_peak` checked that the CPU has the level's features.
        Level::Avx512 => unsafe { x86::fma_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::fma_avx2(iters) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Level::Neon => unsafe { arm::fma_neon(iters) },
        _ => fma_scalar(iters),
    }
}

/// Multiply and add on plain `f32` (the scalar level has no fused instruction in its baseline;
/// a multiply plus an add count as the same 2 operations).
fn fma_scalar(iters: u64) -> f32 {
    let mut acc = [0.0f32; CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = i as f32;
    }
    let (m, c) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for a in &mut acc {
            *a = *a * m + c;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iters: u64) -> f32 {
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(i as f32);
        }
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for a in acc {
            sum = _mm512_add_ps(sum, a);
        }
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpbusd_avx512(iters: u64) -> i32 {
        let a = _mm512_set1_epi32(std::hint::black_box(0x0101_0101));
        let b = _mm512_set1_epi32(std::hint::black_box(0x0102_0304));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for c in &mut acc {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let mut sum = _mm512_setzero_si512();
        for c in acc {
            sum = _mm512_add_epi32(sum, c);
        }
        _mm512_reduce_add_epi32(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iters: u64) -> f32 {
        let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_set1_ps(i as f32);
        }
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut out = [0.0f32; 8];
        let mut sum = _mm256_setzero_ps();
        for a in acc {
            sum = _mm256_add_ps(sum, a);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        out.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::CHAINS;
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub unsafe fn fma_neon(iters: u64) -> f32 {
        let m = vdupq_n_f32(std::hint::black_box(0.999_999));
        let c = vdupq_n_f32(std::hint::black_box(1e-7));
        let mut acc = [vdupq_n_f32(0.0); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = vdupq_n_f32(i as f32);
        }
        for _ in 0..iters {
            for a in &mut acc {
                *a = vfmaq_f32(c, *a, m);
            }
        }
        let mut sum = vdupq_n_f32(0.0);
        for a in acc {
            sum = vaddq_f32(sum, a);
        }
        vaddvq_f32(sum)
    }
}

/// One measured gather rate.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GatherRate {
    pub threads: usize,
    /// Rows prefetched ahead of the one being read (0: none).
    pub prefetch: usize,
    /// Rows per draw (one request's candidates).
    pub rows: usize,
    pub row_bytes: usize,
    /// Median over the draws: nanoseconds per row, and the time of one draw.
    pub ns_per_row: f64,
    pub ms_per_draw: f64,
    pub gb_per_s: f64,
}

/// Reads `rows` random rows of `matrix` (every byte, as scoring does), `draws` times with fresh
/// rows each time (so no draw finds the previous one's rows in cache), split in contiguous
/// shares over `pool`'s threads, with a prefetch `distance` rows ahead. Deterministic rows for
/// a `seed`.
pub fn gather_rate(
    matrix: &MappedMatrix,
    rows: usize,
    draws: usize,
    distance: usize,
    pool: &rayon::ThreadPool,
    seed: u64,
) -> GatherRate {
    let threads = pool.current_num_threads();
    let row_bytes = matrix.row_stride();
    let n = matrix.rows();
    let mut rng = Rng::new(seed);
    let mut times = Vec::with_capacity(draws);
    if n > 0 && rows > 0 {
        for _ in 0..draws.max(1) {
            let idx: Vec<usize> = (0..rows).map(|_| rng.below(n)).collect();
            let start = Instant::now();
            std::hint::black_box(gather_rows(matrix, &idx, distance, pool));
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let per_row = if rows > 0 { median / rows as f64 } else { 0.0 };
    GatherRate {
        threads,
        prefetch: distance,
        rows,
        row_bytes,
        ns_per_row: per_row * 1e9,
        ms_per_draw: median * 1e3,
        gb_per_s: if per_row > 0.0 {
            row_bytes as f64 / per_row / 1e9
        } else {
            0.0
        },
    }
}

/// Reads the rows `idx` of `matrix` as [`gather_rate`] does (contiguous shares over `pool`'s
/// threads, a prefetch `distance` rows ahead); returns a sum of their words.
pub fn gather_rows(
    matrix: &MappedMatrix,
    idx: &[usize],
    distance: usize,
    pool: &rayon::ThreadPool,
) -> u64 {
    use rayon::prelude::*;
    let share = idx.len().div_ceil(pool.current_num_threads()).max(1);
    pool.install(|| {
        idx.par_chunks(share)
            .map(|part| gather(matrix, part, distance))
            .reduce(|| 0, u64::wrapping_add)
    })
}

/// Sums every 8-byte word of the rows `idx` (a dependency the compiler cannot drop).
fn gather(matrix: &MappedMatrix, idx: &[usize], distance: usize) -> u64 {
    let mut sum = 0u64;
    for (i, &r) in idx.iter().enumerate() {
        if distance > 0 {
            if let Some(&ahead) = idx.get(i + distance) {
                prefetch(matrix.row_bytes(ahead));
            }
        }
        for word in matrix.row_bytes(r).chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            sum = sum.wrapping_add(u64::from_le_bytes(w));
        }
    }
    sum
}

/// Floating-point operations of one request's user side (SPEC §1.2–1.4) in the cheap evaluation
/// order SPEC §1.2 allows, full-length sequences: per tower and layer, the query's product with
/// each head's key weights (`Q_k Wk_k`; layer 0's is a constant of the model), attention straight
/// over the tokens (`h·n·L·D` multiply-adds each for the logits and `A_k X`), the value and output
/// projections of the n rows; then the merge, the co-interest network and the fusion. The
/// profile MLP is left out (small, and its shape depends on the fields). A multiply-add counts 2.
/// The user-side stage is stated against this count and the one-thread FMA peak.
pub fn user_side_flops(cfg: &crate::HcnConfig) -> f64 {
    let (d, n, h, r) = (
        cfg.dim as f64,
        cfg.interests as f64,
        cfg.heads as f64,
        cfg.layers as f64,
    );
    let rows_by_dd = n * d * d * 2.0; // one n × D by D × D product
    let tower = |len: f64| {
        let attention = 2.0 * h * n * len * d * 2.0;
        // Layer 0: the query and its key fold are constants; later layers compute both.
        let queries = (r - 1.0).max(0.0) * 2.0 * rows_by_dd;
        r * (attention + 2.0 * rows_by_dd) + queries + n * (r * d) * d * 2.0
    };
    let blocks = cfg.co_interest_concat.len() as f64;
    let co_interest = 3.0 * n * n * d * 2.0 + n * (blocks * d) * d * 2.0;
    let fusion = n * (2.0 * d) * d * 2.0;
    tower(cfg.long_len as f64) + tower(cfg.short_len as f64) + co_interest + fusion
}

/// The kernel's count of anonymous memory in transparent huge pages (`AnonHugePages` of
/// `/proc/meminfo`, KiB), to tell whether [`MappedMatrix::to_anonymous`] got them.
pub fn anon_huge_pages_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// This CPU as `lscpu` names it: model name, family and model (x86 `/proc/cpuinfo`; on other
/// targets the implementer/part lines), for every figure's record.
pub fn cpu_identity() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!("{name} (family {f}, model {m})"),
        _ => match (field("CPU implementer"), field("CPU part")) {
            (Some(i), Some(p)) => format!("{name} (implementer {i}, part {p})"),
            _ => name,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every supported level measures a positive rate; a wider level is not slower than
    /// scalar by much (a sanity bound only: timing asserts stay loose).
    #[test]
    fn fma_peak_measures_every_supported_level() {
        for level in Level::available() {
            let p = fma_peak(level, 1, 1).expect("supported");
            assert!(p.gflops > 0.0, "{p:?}");
        }
        assert!(Level::ALL
            .into_iter()
            .filter(|l| !l.is_supported())
            .all(|l| fma_peak(l, 1, 1).is_none()));
        // VNNI's peak exactly where the I8 kernel can run, labelled as its JSON says.
        #[cfg(target_arch = "x86_64")]
        let has = crate::cpu::vnni_supported();
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        match vnni_peak(2, 1) {
            Some(p) => {
                assert!(has && p.gflops > 0.0 && p.threads == 2, "{p:?}");
                assert_eq!(p.level, "avx512_vnni");
            }
            None => assert!(!has),
        }
    }

    /// The gather reads every row it draws: its sum equals a plain sum of the same rows.
    #[test]
    fn gather_reads_every_byte_of_every_row() {
        let values: Vec<f32> = (0..64 * 8).map(|i| i as f32 * 0.25).collect();
        let bytes = crate::tensor::narrow(crate::tensor::DType::F32, &values);
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
        map.copy_from_slice(&bytes);
        let map = std::sync::Arc::new(map.make_read_only().unwrap());
        let matrix = MappedMatrix::new(map, 0, 64, 8, crate::tensor::DType::F32).unwrap();
        let idx = [3usize, 63, 0, 3, 17];
        let want: u64 = idx
            .iter()
            .flat_map(|&r| matrix.row_bytes(r).chunks_exact(8))
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .fold(0u64, u64::wrapping_add);
        for distance in [0, 1, 16] {
            assert_eq!(gather(&matrix, &idx, distance), want);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let g = gather_rate(&matrix, 1000, 3, 8, &pool, 1);
        assert_eq!((g.threads, g.rows, g.row_bytes), (2, 1000, 32));
        assert!(g.ns_per_row > 0.0);
        // The huge-page copy holds the same rows.
        let copy = matrix.to_anonymous(true).expect("anonymous copy");
        assert_eq!(copy.bytes(), matrix.bytes());
        assert_eq!(gather(&copy, &idx, 4), want);
    }
}
