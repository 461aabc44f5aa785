//! The CPU fast path's kernel layer: hand-written SIMD for the hot loops of a request, with the
//! instruction set chosen at run time.
//!
//! Why hand-written: scoring (SPEC §1.5) is `M × n × D` multiply-adds over rows gathered at random
//! from a memory-mapped store far larger than the caches, stored as F16/BF16. The compiler's
//! auto-vectoriser neither widens half floats in registers nor interleaves row gathers with
//! prefetches, and it cannot assume AVX2/AVX-512 in a portable binary. So:
//!
//! - [`Level`] names an instruction set (`Scalar`, `Avx2` = AVX2+FMA+F16C, `Avx512` = AVX-512F+VL
//!   on top of that, `Neon`); [`Level::detect`] picks the best one once and caches it.
//! - [`Kernels`] is the only way to run a kernel. [`Kernels::new`] returns `None` when the CPU
//!   lacks the level (memchr style), so holding a `Kernels` proves the instructions exist — that
//!   proof is what makes the `unsafe` calls into `#[target_feature]` code sound. Tests force each
//!   level explicitly; the engine uses [`Kernels::detect`].
//! - The kernels are written once in `simd.rs` (scoring, gathers) and `gemm.rs` (the user side's
//!   dense products: one strided GEMM micro-kernel, the attention's column softmax), generic over
//!   a vector type (pulp style); each level file implements that type; `topk.rs` is the O(M)
//!   selection of the best candidates.
//!
//! Every kernel checks its lengths and row indices and returns an error instead of panicking;
//! beyond the checks, each inner loop runs on raw pointers.
//!
//! Engine use: `let k = Kernels::detect();` once; per request
//! `let q = k.score_query(&interests.values, n, d, mode)?;` then, per chunk of candidates (any
//! thread), `q.score_rows_opt(RowSource::from_matrix(&store.vectors)?, rows, out)?`; user-side
//! linears through [`Kernels::matmul`] with weights transposed once at load ([`transpose`]), the
//! towers' attention through [`Kernels::gemm`] on strided views;
//! top-k with a per-thread [`TopK`].

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx512;
mod gemm;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
mod simd;
#[cfg(target_arch = "x86_64")]
mod tiles;
#[cfg(target_arch = "x86_64")]
mod tiles_avx2;
mod topk;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::sync::OnceLock;

use crate::config::ScoreMode;
use crate::error::{Error, Result};
use crate::tensor::{DType, MappedMatrix};

pub use topk::{top_k, TopK};

/// A read-only strided matrix for [`Kernels::gemm`]: element `(i, j)` at
/// `data[i·row_stride + j·col_stride]`, so a sub-block or the transpose of a row-major matrix is
/// a view, not a copy.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `rows × cols`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Row-major `rows × cols` with rows `row_stride` apart (a block of columns of a wider
    /// matrix: slice `data` from the block's first element).
    pub fn with_stride(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Errors unless every element the view addresses is inside `data`.
    fn check(&self, what: &str) -> Result<()> {
        check_extent(
            what,
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
        )
    }
}

/// A writable row-major matrix for [`Kernels::gemm`]: rows `row_stride` apart.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    pub fn with_stride(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

fn check_extent(
    what: &str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(a, b)| a.checked_add(b));
    match last {
        Some(l) if l < len => Ok(()),
        _ => Err(Error::Incompatible(format!(
            "{what}: {rows} × {cols} at strides ({rs}, {cs}) does not fit in {len} elements"
        ))),
    }
}

/// An instruction-set level, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Portable Rust, one lane.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C, 8 lanes (candidate rows in the lanes, not interests, when
    /// scoring with `n ≤ 16`).
    Avx2,
    /// x86-64 AVX-512F + VL (+ AVX2, FMA, F16C), 16 lanes (candidate rows in the lanes, not
    /// interests, when scoring with `n ≤ 12`).
    Avx512,
    /// aarch64 NEON, 4 lanes.
    Neon,
}

impl Level {
    /// Every level, in the order tried by [`Level::detect`] (worst first).
    pub const ALL: [Level; 4] = [Level::Scalar, Level::Neon, Level::Avx2, Level::Avx512];

    /// The best level this CPU supports, detected on the first call and cached.
    pub fn detect() -> Level {
        static BEST: OnceLock<Level> = OnceLock::new();
        *BEST.get_or_init(|| {
            Level::ALL
                .into_iter()
                .rfind(|l| l.is_supported())
                .unwrap_or(Level::Scalar)
        })
    }

    /// Whether this CPU (and this build's target architecture) has the level's instructions.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx512 => {
                Level::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels this CPU supports (always includes `Scalar`), for tests and benchmarks.
    pub fn available() -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|l| l.is_supported())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
        }
    }

    /// Parses [`Level::name`] (e.g. for an environment override or a CLI flag).
    pub fn from_name(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }

    /// Lanes of the level's vectors: the interests-in-lanes kernel's width, the tiles' layout.
    fn score_width(self) -> usize {
        match self {
            Level::Scalar => 1,
            Level::Avx2 => 8,
            Level::Avx512 => 16,
            Level::Neon => 4,
        }
    }
}

/// Where a scoring kernel prefetches the rows of its next block (random rows of a store far
/// larger than the caches): into every level down to L1 (`l1`, x86 `T0`) or into L2 only
/// (`l2`, x86 `T1`, aarch64 `pldl2keep`). L2 is the rule: on the Intel host of BENCHMARKS.md's
/// session 6 it scored a cold industrial request 8–10% faster (a burst of 64 L1 prefetches per
/// block held the fill buffers the block's own loads need). The bits do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Prefetch {
    L1,
    #[default]
    L2,
}

impl Prefetch {
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::L1 => "l1",
            Prefetch::L2 => "l2",
        }
    }

    pub fn from_name(s: &str) -> Option<Prefetch> {
        match s {
            "l1" => Some(Prefetch::L1),
            "l2" => Some(Prefetch::L2),
            _ => None,
        }
    }
}

/// How a scoring kernel lays out its work (see [`ScoreKernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Interests in the lanes (`simd::score_rows`): one broadcast row element per FMA.
    Interleaved,
    /// Candidate rows in the lanes (`simd::score_rows_by_lanes`): 8- and 16-lane levels, `n ≤ 16`.
    Lanes,
    /// 2 rows × 8 interests per vector on AVX-512 (`tiles.rs`), 2 × 4 on AVX2
    /// (`tiles_avx2.rs`): `n ≤ 16`.
    Tiles,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Interleaved, Layout::Lanes, Layout::Tiles];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Interleaved => "interleaved",
            Layout::Lanes => "lanes",
            Layout::Tiles => "tiles",
        }
    }

    pub fn from_name(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// One candidate-scoring kernel: a SIMD level, its [`Layout`] — interests in the lanes
/// ("interleaved"), candidate rows in the lanes ("lanes") or tiles of 2 rows × 8 (AVX-512) or
/// × 4 (AVX2) interests ("tiles") — and its row [`Prefetch`].
/// Every kernel is within SPEC §5 of the reference and deterministic; different layouts may
/// differ in the last bits (the prefetch never changes them). Named `level/layout/prefetch`
/// (`avx512/tiles/l2`, `avx2/interleaved/l1`) for options and reports; a name without the
/// prefetch part means the rule's (`l2`). A `/vnni` suffix (`avx512/tiles/l2/vnni`) scores
/// I8 rows in integers with AVX-512 VNNI where `n ≤ 16` and `D % 4 = 0` (`vnni.rs`; other
/// stores and shapes score as without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreKernel {
    pub level: Level,
    pub layout: Layout,
    pub prefetch: Prefetch,
    /// I8 rows' dot products in integers (AVX-512 VNNI, `n ≤ 16`).
    pub vnni: bool,
}

impl ScoreKernel {
    /// The kernel chosen by rule for `n` interests on `level` (no timing): rows in lanes on
    /// AVX-512 with `n ≤ simd::LANES_RULE_MAX_N` (12), where 16 interest lanes would be partly
    /// padding; tiles on AVX-512 with `12 < n ≤ 16` and on AVX2 with `n ≤ 16`; else interests
    /// in the lanes. Rows prefetched into L2; VNNI for I8 rows wherever it can run. AVX2 tiles
    /// against rows in lanes (the rule before), on a Zen 5 (`scripts/ab.sh`, 2 threads, 1M-row
    /// F16 stores, 4 rounds each): industrial (n = 16, D = 128) scoring 2.2–2.6 → 1.5–1.8 ms,
    /// public (n = 8, D = 48) 140–168 → 117–121 µs (rows in lanes had replaced interests in the
    /// lanes: 3.0–3.5 → 2.1–2.3 ms and 166 → 150 µs).
    pub fn by_rule(level: Level, n: usize) -> ScoreKernel {
        let layout = if level == Level::Avx512 && n <= simd::LANES_RULE_MAX_N {
            Layout::Lanes
        } else if tiles_usable(level, n) {
            Layout::Tiles
        } else {
            Layout::Interleaved
        };
        ScoreKernel {
            level,
            layout,
            prefetch: Prefetch::default(),
            vnni: vnni_usable(level, n),
        }
    }

    pub fn name(self) -> String {
        let vnni = if self.vnni { "/vnni" } else { "" };
        format!(
            "{}/{}/{}{vnni}",
            self.level.name(),
            self.layout.name(),
            self.prefetch.name()
        )
    }

    /// This kernel as it scores a store of `dtype` rows of `d` elements: `vnni` kept only where
    /// it changes anything (I8 rows, `D % 4 = 0`; elsewhere it scores as without it).
    pub fn for_store(self, dtype: DType, d: usize) -> ScoreKernel {
        ScoreKernel {
            vnni: self.vnni && dtype == DType::I8 && d.is_multiple_of(4),
            ..self
        }
    }

    /// Parses [`ScoreKernel::name`]; `level/layout` alone takes the default prefetch.
    pub fn from_name(s: &str) -> Option<ScoreKernel> {
        let (s, vnni) = match s.strip_suffix("/vnni") {
            Some(s) => (s, true),
            None => (s, false),
        };
        let mut parts = s.split('/');
        let (level, layout) = (parts.next()?, parts.next()?);
        let prefetch = match parts.next() {
            Some(p) => Prefetch::from_name(p)?,
            None => Prefetch::default(),
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ScoreKernel {
            level: Level::from_name(level)?,
            layout: Layout::from_name(layout)?,
            prefetch,
            vnni,
        })
    }

    /// Why this kernel cannot score `n` interests on this CPU, if it cannot.
    pub fn unusable(self, n: usize) -> Option<String> {
        if !self.level.is_supported() {
            return Some(format!(
                "this CPU lacks the {} instructions",
                self.level.name()
            ));
        }
        if self.layout == Layout::Lanes
            && (!simd::lanes_width(self.level.score_width()) || n > simd::LANES_MAX_N)
        {
            return Some(format!(
                "rows in lanes need an 8- or 16-lane level and at most {} interests (the model has {n})",
                simd::LANES_MAX_N
            ));
        }
        if self.layout == Layout::Tiles && !tiles_usable(self.level, n) {
            return Some(format!(
                "tiles need the avx512 or avx2 level and at most 16 interests (the model has {n})"
            ));
        }
        if self.vnni && !vnni_usable(self.level, n) {
            return Some(format!(
                "VNNI scoring needs the avx512 level, a CPU with AVX-512 VNNI and at most 16 interests (the model has {n})"
            ));
        }
        None
    }

    /// The kernels [`tune_score_kernel`] times for `n` interests here: every layout and both
    /// prefetches of every supported vector level (the scalar level, which has no prefetch,
    /// only where there is no other).
    pub fn candidates(n: usize) -> Vec<ScoreKernel> {
        let levels: Vec<Level> = Level::available()
            .into_iter()
            .filter(|&l| l != Level::Scalar)
            .collect();
        let levels = if levels.is_empty() {
            vec![Level::Scalar]
        } else {
            levels
        };
        levels
            .into_iter()
            .flat_map(|level| {
                let prefetches: &[Prefetch] = if level == Level::Scalar {
                    &[Prefetch::L2]
                } else {
                    &[Prefetch::L2, Prefetch::L1]
                };
                Layout::ALL.into_iter().flat_map(move |layout| {
                    prefetches.iter().flat_map(move |&prefetch| {
                        [false, true].map(|vnni| ScoreKernel {
                            level,
                            layout,
                            prefetch,
                            vnni,
                        })
                    })
                })
            })
            .filter(|k| k.unusable(n).is_none())
            .collect()
    }

    /// [`ScoreKernel::unusable`] as an error naming the kernel.
    pub fn check(self, n: usize) -> Result<()> {
        match self.unusable(n) {
            Some(why) => Err(Error::Device(format!(
                "score kernel {}: {why}",
                self.name()
            ))),
            None => Ok(()),
        }
    }

    /// [`Kernels::score_query`] with this kernel.
    pub fn query(self, xu: &[f32], n: usize, d: usize, mode: ScoreMode) -> Result<ScoreQuery> {
        self.check(n)?;
        Kernels { level: self.level }.query(xu, n, d, mode, self)
    }
}

/// Whether this CPU has what the VNNI scoring kernel needs (AVX-512 F/VL/BW + VNNI).
#[cfg(target_arch = "x86_64")]
pub fn vnni_supported() -> bool {
    vnni::supported()
}

/// Whether [`Layout::Tiles`] can run for `n` interests on `level` here.
fn tiles_usable(level: Level, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (1..=16).contains(&n)
            && match level {
                Level::Avx512 => tiles::supported(),
                Level::Avx2 => tiles_avx2::supported(),
                _ => false,
            }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, n);
        false
    }
}

/// Whether [`ScoreKernel::vnni`] can run for `n` interests on `level` here.
fn vnni_usable(level: Level, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level == Level::Avx512 && n <= 16 && vnni::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, n);
        false
    }
}

/// The outcome of [`tune_score_kernel`]: the fastest kernel and each candidate's time.
#[derive(Debug, Clone)]
pub struct Tuned {
    pub kernel: ScoreKernel,
    /// Each candidate with its best time (µs) for the sample.
    pub times_us: Vec<(ScoreKernel, f64)>,
}

/// Times every [`ScoreKernel::candidates`] on the actual shape and store: `rounds` passes per
/// kernel, each over `sample` fresh random rows of `src` (the same draws on every call, seeded),
/// fixed random interests, kernels alternating within each round; keeps the kernel with the
/// least best-of-rounds time. The `/vnni` candidates only for an I8 store with `D % 4 = 0`
/// (elsewhere they score exactly as without it). Bounded: `candidates × (rounds + 1)` passes over `sample` rows
/// (industrial, 2,048 rows, 5 rounds: ≈ 1.7 ms per kernel; 4–8 kernels on AVX-512 hosts). The choice
/// depends on timing, so two calls may disagree between near-equal kernels; pin one
/// (`EngineOptions::score_kernel`) for reproducible runs.
pub fn tune_score_kernel(
    src: RowSource<'_>,
    n: usize,
    mode: ScoreMode,
    sample: usize,
    rounds: usize,
) -> Result<Tuned> {
    let d = src.cols();
    let mut candidates = ScoreKernel::candidates(n);
    candidates.retain(|k| k.for_store(src.dtype(), d) == *k);
    let total = src.rows();
    let m = sample.max(1);
    let mut rng = crate::rng::SplitMix64::new(0x7e57_5c0e);
    let xu = rng.vec(n * d, 0.1);
    let queries = candidates
        .iter()
        .map(|k| k.query(&xu, n, d, mode))
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![0.0f32; m];
    let mut best = vec![f64::INFINITY; candidates.len()];
    if total > 0 {
        // Every pass scores a fresh random sample, as serving reads the store (rows mostly not
        // in cache): a kernel that overlaps the gather better wins even when it does less well
        // on cached rows. One untimed pass each first (code, page tables).
        let mut draw = || -> Vec<u32> { (0..m).map(|_| rng.below(total) as u32).collect() };
        for q in &queries {
            q.score_rows(src, &draw(), &mut out)?;
        }
        for round in 0..rounds.max(1) {
            // The kernels in a rotating order, so none is always the first after a pause.
            for i in 0..queries.len() {
                let c = (i + round) % queries.len();
                let rows = draw();
                let t = std::time::Instant::now();
                queries[c].score_rows(src, &rows, &mut out)?;
                best[c] = best[c].min(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    // Ties (or an empty store) keep the earlier candidate: the interleaved layout of the
    // lowest vector level.
    let mut pick = 0;
    for i in 1..candidates.len() {
        if best[i] < best[pick] {
            pick = i;
        }
    }
    Ok(Tuned {
        kernel: candidates[pick],
        times_us: candidates.iter().copied().zip(best).collect(),
    })
}

/// Where candidate rows are read from: `bytes` holds whole rows of `row_stride` bytes, each
/// starting with `cols` little-endian elements of `dtype` (any alignment). I8 rows (SPEC §3)
/// come with their `scales` (one little-endian F32 per row, any alignment): row `r` is
/// `scales[r] · q_r`.
#[derive(Debug, Clone, Copy)]
pub struct RowSource<'a> {
    bytes: &'a [u8],
    dtype: DType,
    row_stride: usize,
    cols: usize,
    scales: Option<&'a [u8]>,
}

impl<'a> RowSource<'a> {
    /// Checks that a row of `cols` elements fits in `row_stride` bytes. The number of rows is
    /// `bytes.len() / row_stride`. For the float dtypes; I8 rows need their scales
    /// ([`RowSource::quantized`]).
    pub fn new(bytes: &'a [u8], dtype: DType, row_stride: usize, cols: usize) -> Result<Self> {
        if dtype == DType::I8 {
            return Err(Error::Incompatible(
                "row source: I8 rows need their scales (RowSource::quantized)".into(),
            ));
        }
        Self::checked(bytes, dtype, row_stride, cols, None)
    }

    /// I8 rows (`cols` integers in each `row_stride` bytes) and their `scales`: at least one
    /// little-endian F32 per row.
    pub fn quantized(
        bytes: &'a [u8],
        scales: &'a [u8],
        row_stride: usize,
        cols: usize,
    ) -> Result<Self> {
        let src = Self::checked(bytes, DType::I8, row_stride, cols, Some(scales))?;
        if scales.len() / 4 < src.rows() {
            return Err(Error::Incompatible(format!(
                "row source: {} scales for {} I8 rows",
                scales.len() / 4,
                src.rows()
            )));
        }
        Ok(src)
    }

    fn checked(
        bytes: &'a [u8],
        dtype: DType,
        row_stride: usize,
        cols: usize,
        scales: Option<&'a [u8]>,
    ) -> Result<Self> {
        if cols == 0
            || cols
                .checked_mul(dtype.size())
                .is_none_or(|b| b > row_stride)
        {
            return Err(Error::Incompatible(format!(
                "row source: {cols} {} elements do not fit a row stride of {row_stride} bytes",
                dtype.name()
            )));
        }
        Ok(RowSource {
            bytes,
            dtype,
            row_stride,
            cols,
            scales,
        })
    }

    /// All rows of a memory-mapped matrix (e.g. the candidate store's `vectors`, with its
    /// `scales` when it is I8).
    pub fn from_matrix(m: &'a MappedMatrix) -> Result<Self> {
        match m.scales_bytes() {
            Some(scales) => RowSource::quantized(m.bytes(), scales, m.row_stride(), m.cols()),
            None => RowSource::new(m.bytes(), m.dtype(), m.row_stride(), m.cols()),
        }
    }

    fn raw(&self) -> simd::RawRows {
        simd::RawRows {
            base: self.bytes.as_ptr(),
            rows: self.rows(),
            row_stride: self.row_stride,
            dtype: self.dtype,
            scales: self.scales.map_or(std::ptr::null(), <[u8]>::as_ptr),
        }
    }

    pub fn rows(&self) -> usize {
        self.bytes.len() / self.row_stride
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// A proof that the CPU has one [`Level`]'s instructions, and the kernels for that level.
/// Cheap to copy; build it once (or use [`Kernels::detect`]) and pass it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    level: Level,
}

/// One kernel call, written once for every SIMD level (pulp's `WithSimd` pattern): the op is a
/// value, [`Kernels::run`] is the one dispatch, and each level's `#[target_feature]` trampoline
/// below is where the op (and the `#[inline(always)]` kernels under it) is compiled with that
/// level's instructions.
trait SimdOp {
    type Output;
    /// # Safety
    /// `S`'s instructions are present ([`Kernels::run`] only calls it so) and the op's buffers
    /// are as its own comment requires.
    unsafe fn run<S: simd::Simd>(self, s: S) -> Self::Output;
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn on_avx2<O: SimdOp>(op: O) -> O::Output {
    // SAFETY: forwarded (the CPU has AVX2, FMA and F16C: `Kernels::run`).
    unsafe { op.run(avx2::Avx2) }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
unsafe fn on_avx512<O: SimdOp>(op: O) -> O::Output {
    // SAFETY: forwarded (the CPU has AVX-512F/VL: `Kernels::run`).
    unsafe { op.run(avx512::Avx512) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn on_neon<O: SimdOp>(op: O) -> O::Output {
    // SAFETY: forwarded (the CPU has NEON: `Kernels::run`).
    unsafe { op.run(neon::Neon) }
}

fn on_scalar<O: SimdOp>(op: O) -> O::Output {
    // SAFETY: the scalar level needs no instructions; buffers as the op requires (caller).
    unsafe { op.run(scalar::Scalar) }
}

/// `Σ a_i b_i` (equal lengths).
struct DotOp<'a>(&'a [f32], &'a [f32]);

impl SimdOp for DotOp<'_> {
    type Output = f32;
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) -> f32 {
        // SAFETY: features present (caller); both slices hold `a.len()` elements (checked).
        unsafe { simd::dot(s, self.0.as_ptr(), self.1.as_ptr(), self.0.len()) }
    }
}

/// `C = A·B ⊙ row_scale + bias` (extents checked by [`Kernels::gemm`] / [`Kernels::matmul`]).
struct GemmOp {
    m: usize,
    n: usize,
    k: usize,
    a: gemm::RawA,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    bias: Option<*const f32>,
    row_scale: Option<*const f32>,
}

impl SimdOp for GemmOp {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) {
        // SAFETY: features present (caller); every addressed element in bounds, `c` writable and
        // apart from the inputs (checked by the callers, which hold `&mut` to it).
        unsafe {
            gemm::gemm(
                s,
                self.m,
                self.n,
                self.k,
                self.a,
                self.b,
                self.ldb,
                self.c,
                self.ldc,
                self.bias,
                self.row_scale,
            )
        }
    }
}

/// Unnormalised column softmax (see [`Kernels::softmax_cols`]).
struct SoftmaxColsOp<'a> {
    x: &'a mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
    inv_sums: &'a mut [f32],
}

impl SimdOp for SoftmaxColsOp<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) {
        // SAFETY: features present (caller); extents checked by `Kernels::softmax_cols`.
        unsafe {
            gemm::softmax_cols(
                s,
                self.x.as_mut_ptr(),
                self.rows,
                self.cols,
                self.ld,
                self.inv_sums.as_mut_ptr(),
            )
        }
    }
}

/// `x ← softmax(x)`.
struct SoftmaxOp<'a>(&'a mut [f32]);

impl SimdOp for SoftmaxOp<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) {
        // SAFETY: features present (caller); the pointer is valid for `len` elements.
        unsafe { simd::softmax_inplace(s, self.0.as_mut_ptr(), self.0.len()) }
    }
}

/// Gathers store rows into F32; `Err(position)` for a row index outside the store.
struct GatherOp<'a> {
    raw: simd::RawRows,
    d: usize,
    rows: &'a [u32],
    out: &'a mut [f32],
}

impl SimdOp for GatherOp<'_> {
    type Output = std::result::Result<(), usize>;
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) -> Self::Output {
        // SAFETY: features present (caller); `raw` describes whole rows of at least `d`
        // elements and every index is checked against `raw.rows` before it is read;
        // `out.len() == rows.len() · d` (checked).
        unsafe { simd::gather_rows(s, self.raw, self.d, self.rows, self.out.as_mut_ptr()) }
    }
}

/// Scores store rows against a [`ScoreQuery`]'s layout; `Err(position)` for a row index outside
/// the store.
struct ScoreOp<'a> {
    q: &'a simd::ScoreLayout<'a>,
    raw: simd::RawRows,
    rows: &'a [u32],
    out: &'a mut [f32],
    scratch: &'a mut [f32],
    sbuf: &'a mut [f32],
    /// Rows in lanes (8 or 16 lanes only: `ScoreKernel::unusable`).
    by_lanes: bool,
}

impl SimdOp for ScoreOp<'_> {
    type Output = std::result::Result<(), usize>;
    #[inline(always)]
    unsafe fn run<S: simd::Simd>(self, s: S) -> Self::Output {
        // SAFETY: features present (caller); the layout was built for this level's width (or
        // k-major when `by_lanes`, which only 8- and 16-lane levels accept); `scratch`
        // and `sbuf` hold `BLOCK` rows; `raw` describes whole rows and every index is checked
        // against `raw.rows` before it is read; `out.len() == rows.len()` (checked).
        unsafe {
            if self.by_lanes && simd::lanes_width(S::W) {
                simd::score_rows_by_lanes(s, self.q, self.raw, self.rows, self.out, self.scratch)
            } else {
                simd::score_rows(
                    s,
                    self.q,
                    self.raw,
                    self.rows,
                    self.out,
                    self.scratch,
                    self.sbuf,
                )
            }
        }
    }
}

impl Kernels {
    /// Runs `op` on this level: the one dispatch of the crate.
    fn run<O: SimdOp>(&self, op: O) -> O::Output {
        match self.level {
            // SAFETY (all arms): a `Kernels` only exists for a level whose instructions this CPU
            // has (`Kernels::new` checks), which is what the `#[target_feature]` trampoline needs.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx2 => unsafe { on_avx2(op) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Level::Avx512 => unsafe { on_avx512(op) },
            #[cfg(target_arch = "aarch64")]
            Level::Neon => unsafe { on_neon(op) },
            _ => on_scalar(op),
        }
    }

    /// The kernels of `level`, or `None` when this CPU lacks its instructions.
    pub fn new(level: Level) -> Option<Kernels> {
        level.is_supported().then_some(Kernels { level })
    }

    /// The kernels of the best level of this CPU ([`Level::detect`]).
    pub fn detect() -> Kernels {
        Kernels {
            level: Level::detect(),
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// `Σ a_i b_i`. Errors when the lengths differ.
    pub fn dot(&self, a: &[f32], b: &[f32]) -> Result<f32> {
        if a.len() != b.len() {
            return Err(Error::Incompatible(format!(
                "dot: lengths {} and {} differ",
                a.len(),
                b.len()
            )));
        }
        Ok(self.run(DotOp(a, b)))
    }

    /// `out (m×n) = x (m×k) · wt (k×n) + bias`, all row-major; `wt` is a weight already
    /// transposed to `[in, out]` (do that once at load time with [`transpose`]).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        wt: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        check_len("matmul: x", x.len(), m.checked_mul(k))?;
        check_len("matmul: weight", wt.len(), k.checked_mul(n))?;
        check_len("matmul: out", out.len(), m.checked_mul(n))?;
        if let Some(b) = bias {
            check_len("matmul: bias", b.len(), Some(n))?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.run(GemmOp {
            m,
            n,
            k,
            a: gemm::RawA {
                ptr: x.as_ptr(),
                rs: k,
                cs: 1,
            },
            b: wt.as_ptr(),
            ldb: n,
            c: out.as_mut_ptr(),
            ldc: n,
            bias: bias.map(|b| b.as_ptr()),
            row_scale: None,
        });
        Ok(())
    }

    /// `c = a · b ⊙ row_scale + bias` on strided views: `bias[j]` is added to column `j`,
    /// `row_scale[i]` multiplies row `i` of the product (before the bias). `b` must have unit
    /// column stride (it is read in vectors); `a` may have any strides (a transposed view costs
    /// nothing). Every output element is one FMA chain over `k` in ascending order, so results
    /// are bit-identical whatever the shapes around them. Errors on mismatched shapes, views
    /// that do not fit their data, or `b` with a column stride other than 1.
    pub fn gemm(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
        bias: Option<&[f32]>,
        row_scale: Option<&[f32]>,
    ) -> Result<()> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        if b.rows != k || c.rows != m || c.cols != n {
            return Err(Error::Incompatible(format!(
                "gemm: shapes {m}×{k} · {}×{n} into {}×{}",
                b.rows, c.rows, c.cols
            )));
        }
        if b.col_stride != 1 && n > 1 {
            return Err(Error::Incompatible(
                "gemm: b must have unit column stride".into(),
            ));
        }
        a.check("gemm: a")?;
        b.check("gemm: b")?;
        check_extent("gemm: c", c.data.len(), m, n, c.row_stride, 1)?;
        if let Some(bias) = bias {
            check_len("gemm: bias", bias.len(), Some(n))?;
        }
        if let Some(sc) = row_scale {
            check_len("gemm: row scale", sc.len(), Some(m))?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.run(GemmOp {
            m,
            n,
            k,
            a: gemm::RawA {
                ptr: a.data.as_ptr(),
                rs: a.row_stride,
                cs: a.col_stride,
            },
            b: b.data.as_ptr(),
            ldb: b.row_stride,
            c: c.data.as_mut_ptr(),
            ldc: c.row_stride,
            bias: bias.map(|b| b.as_ptr()),
            row_scale: row_scale.map(|r| r.as_ptr()),
        });
        Ok(())
    }

    /// The softmax of every column of `x` (`rows × cols`, row stride `ld`), unnormalised:
    /// `x[i][j] ← exp(x[i][j] − max_i x[i][j])` and `inv_sums[j] ← 1 / Σ_i x[i][j]` (the caller
    /// applies the scale, e.g. as [`Kernels::gemm`]'s row scale). Nothing happens with no rows.
    pub fn softmax_cols(
        &self,
        x: &mut [f32],
        rows: usize,
        cols: usize,
        ld: usize,
        inv_sums: &mut [f32],
    ) -> Result<()> {
        check_extent("softmax_cols: x", x.len(), rows, cols, ld, 1)?;
        check_len("softmax_cols: sums", inv_sums.len(), Some(cols))?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        self.run(SoftmaxColsOp {
            x,
            rows,
            cols,
            ld,
            inv_sums,
        });
        Ok(())
    }

    /// `out (m×n) = x (m×k) · wᵀ + bias` with `w` in PyTorch's `[out, in] = [n, k]` layout
    /// (`nn.Linear`). Transposes `w` into a temporary first; when the same weight is applied
    /// many times, transpose it once and call [`Kernels::matmul`].
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_t(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        check_len("matmul_t: weight", w.len(), n.checked_mul(k))?;
        let wt = transpose(w, n, k);
        self.matmul(x, m, k, &wt, n, bias, out)
    }

    /// `x ← softmax(x)`, max-subtracted. An empty slice is left alone.
    pub fn softmax_inplace(&self, x: &mut [f32]) {
        self.run(SoftmaxOp(x))
    }

    /// `out` (`rows.len() × cols`, row-major) ← the rows `rows` of `src` as F32: the behaviour
    /// tokens' gather (SPEC §1.1). Float dtypes are widened exactly, I8 rows are `scale · q`
    /// (the F32 product; the same bits at every level). Errors when `out` has the wrong length or
    /// a row index is out of range (naming its position).
    pub fn gather_rows(&self, src: RowSource<'_>, rows: &[u32], out: &mut [f32]) -> Result<()> {
        check_len("gather: out", out.len(), rows.len().checked_mul(src.cols))?;
        self.run(GatherOp {
            raw: src.raw(),
            d: src.cols,
            rows,
            out,
        })
        .map_err(|pos| {
            Error::Incompatible(format!(
                "gather: row index {} (position {pos}) is outside the store's {} rows",
                rows[pos],
                src.rows()
            ))
        })
    }

    /// Prepares the user's interests `xu` (`n × d`, row-major) for scoring with `mode`.
    pub fn score_query(
        &self,
        xu: &[f32],
        n: usize,
        d: usize,
        mode: ScoreMode,
    ) -> Result<ScoreQuery> {
        self.query(xu, n, d, mode, ScoreKernel::by_rule(self.level, n))
    }

    fn query(
        &self,
        xu: &[f32],
        n: usize,
        d: usize,
        mode: ScoreMode,
        k: ScoreKernel,
    ) -> Result<ScoreQuery> {
        let (by_lanes, prefetch) = (k.layout == Layout::Lanes, k.prefetch);
        if n == 0 || d == 0 {
            return Err(Error::Incompatible(format!(
                "score: need at least one interest and one dimension, got n = {n}, D = {d}"
            )));
        }
        check_len("score: interests", xu.len(), n.checked_mul(d))?;
        // Rows in lanes: the interests are laid out k-major (`u[k·n + j]`), which is the
        // interleaved layout with one group of `n` lanes.
        let width = if by_lanes {
            n
        } else {
            self.level.score_width()
        };
        // I8 rows on AVX-512 with VNNI: scored in integers (see `vnni`).
        #[cfg(target_arch = "x86_64")]
        let vnni = if k.vnni && vnni_usable(self.level, n) {
            vnni::VnniLayout::new(xu, n, d)
        } else {
            None
        };
        // Tiles (AVX-512, AVX2): every shape `tiles_usable` admits has a layout.
        #[cfg(target_arch = "x86_64")]
        let tiles = if k.layout == Layout::Tiles && tiles_usable(self.level, n) {
            tiles::TileLayout::new(xu, n, d, self.level.score_width())
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        let tiled = tiles.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let tiled = false;
        // The interleaved layout, for every kernel but the tiles (which read only their own).
        let (ut, pad) = if tiled {
            (Vec::new(), Vec::new())
        } else {
            simd::layout_interests(xu, n, d, width)
        };
        Ok(ScoreQuery {
            kernels: *self,
            #[cfg(target_arch = "x86_64")]
            vnni,
            #[cfg(target_arch = "x86_64")]
            tiles,
            width,
            by_lanes,
            prefetch,
            ut,
            pad,
            n,
            d,
            mode,
        })
    }

    /// One-shot form of [`ScoreQuery::score_rows`]: `out[i] = y(xu, src row rows[i])`.
    #[allow(clippy::too_many_arguments)]
    pub fn score_rows(
        &self,
        xu: &[f32],
        n: usize,
        d: usize,
        src: RowSource<'_>,
        rows: &[u32],
        mode: ScoreMode,
        out: &mut [f32],
    ) -> Result<()> {
        self.score_query(xu, n, d, mode)?.score_rows(src, rows, out)
    }
}

/// The user's interests in the scoring kernel's layout, ready to score any number of rows.
/// Build once per request, share across threads (it is `Sync`), call
/// [`ScoreQuery::score_rows`] per chunk of candidates.
#[derive(Debug, Clone)]
pub struct ScoreQuery {
    kernels: Kernels,
    /// The interests as `vnni::score_i8` takes them, where it can run (AVX-512 level, VNNI,
    /// `n ≤ 16`, `D % 4 = 0`); used for I8 stores.
    #[cfg(target_arch = "x86_64")]
    vnni: Option<vnni::VnniLayout>,
    #[cfg(target_arch = "x86_64")]
    tiles: Option<tiles::TileLayout>,
    width: usize,
    /// Rows in lanes ([`Layout::Lanes`]); `width` is then `n`.
    by_lanes: bool,
    prefetch: Prefetch,
    ut: Vec<f32>,
    pad: Vec<f32>,
    n: usize,
    d: usize,
    mode: ScoreMode,
}

impl ScoreQuery {
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    /// [`ScoreQuery::score_rows`] for candidates that may be missing from the store (`None`):
    /// their output is `None`, the others are scored in compacted runs of at most 4,096 rows.
    /// A row's score is the same as from `score_rows` (scores never depend on chunking).
    pub fn score_rows_opt(
        &self,
        src: RowSource<'_>,
        rows: &[Option<u32>],
        out: &mut [Option<f32>],
    ) -> Result<()> {
        check_len("score: out", out.len(), Some(rows.len()))?;
        const RUN: usize = 4096;
        let mut present = Vec::with_capacity(RUN.min(rows.len()));
        let mut at = Vec::with_capacity(RUN.min(rows.len()));
        let mut ys = vec![0.0f32; RUN.min(rows.len())];
        for (rows, out) in rows.chunks(RUN).zip(out.chunks_mut(RUN)) {
            present.clear();
            at.clear();
            for (i, r) in rows.iter().enumerate() {
                if let Some(r) = *r {
                    present.push(r);
                    at.push(i);
                }
            }
            let ys = &mut ys[..present.len()];
            self.score_rows(src, &present, ys)?;
            out.fill(None);
            for (&i, &y) in at.iter().zip(ys.iter()) {
                out[i] = Some(y);
            }
        }
        Ok(())
    }

    /// `out[i] = y` (SPEC §1.5, this query's mode) for the stored row `rows[i]` of `src`.
    /// Rows may repeat and come in any order. Errors when the lengths differ, the source's
    /// width is not `D`, or a row index is out of range (naming its position).
    pub fn score_rows(&self, src: RowSource<'_>, rows: &[u32], out: &mut [f32]) -> Result<()> {
        if src.cols != self.d {
            return Err(Error::Incompatible(format!(
                "score: store rows have {} columns, interests have D = {}",
                src.cols, self.d
            )));
        }
        check_len("score: out", out.len(), Some(rows.len()))?;
        let nv = self.n.div_ceil(self.width);
        let q = simd::ScoreLayout {
            ut: &self.ut,
            pad: &self.pad,
            n: self.n,
            d: self.d,
            nv,
            mode: self.mode,
            prefetch_l2: self.prefetch == Prefetch::L2,
        };
        let raw = src.raw();
        #[cfg(target_arch = "x86_64")]
        if let (Some(v), DType::I8) = (&self.vnni, raw.dtype) {
            // SAFETY: `vnni` is only built where `vnni::supported()`, for these `n` and `d`;
            // `raw` is an I8 source (with scales) of whole rows of `d` columns (checked above).
            let res = unsafe { vnni::score_i8(v, &q, raw, rows, out) };
            return res.map_err(|pos| out_of_range(src, rows, pos));
        }
        // Small per-call buffers (a few KB), each kernel's own; a chunk of thousands of rows
        // amortises them.
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = &self.tiles {
            // SAFETY: `tiles` is only built where the level's tile kernel is supported
            // (`tiles_usable`), with that level's lanes, for these `n` and `d`; `raw` is a
            // source of whole rows of `d` columns (checked above), I8 with scales.
            let res = if self.kernels.level == Level::Avx512 {
                let mut scratch = vec![0.0f32; tiles::scratch_len(self.d)];
                unsafe { tiles::score_tiles(t, &q, raw, rows, out, &mut scratch) }
            } else {
                let mut scratch = vec![0.0f32; tiles_avx2::scratch_len(self.d)];
                unsafe { tiles_avx2::score_tiles(t, &q, raw, rows, out, &mut scratch) }
            };
            return res.map_err(|pos| out_of_range(src, rows, pos));
        }
        let mut scratch = vec![0.0f32; simd::scratch_len(self.d)];
        let mut sbuf = vec![0.0f32; simd::BLOCK * nv * self.width];
        let res = self.kernels.run(ScoreOp {
            q: &q,
            raw,
            rows,
            out,
            scratch: &mut scratch,
            sbuf: &mut sbuf,
            by_lanes: self.by_lanes,
        });
        res.map_err(|pos| out_of_range(src, rows, pos))
    }
}

/// The error for `rows[pos]`, a row index outside `src`.
fn out_of_range(src: RowSource<'_>, rows: &[u32], pos: usize) -> Error {
    Error::Incompatible(format!(
        "score: row index {} (position {pos}) is outside the store's {} rows",
        rows[pos],
        src.rows()
    ))
}

/// `dst (cols × rows, row stride ldd) ← srcᵀ` for `src` `rows × cols` at row stride `lds`.
/// Panics if either does not fit (a caller's shape bug).
pub fn transpose_into(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    gemm::transpose_into(src, rows, cols, lds, dst, ldd)
}

/// `w` (`rows × cols`, row-major) transposed to `cols × rows`.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (r, row) in w.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

fn check_len(what: &str, got: usize, want: Option<usize>) -> Result<()> {
    match want {
        Some(w) if w == got => Ok(()),
        _ => Err(Error::Incompatible(format!(
            "{what}: length {got}, expected {}",
            want.map_or("an overflowing size".to_string(), |w| w.to_string())
        ))),
    }
}
