//! The GPU execution plan of SPEC §1 for a batch of users, generic over the [`Backend`]:
//! which kernels run, in which order, on which buffers. One batch is
//!
//! ```text
//! per layer l, both towers and every user at once:
//!     attend (1)          flash-decoding partials of A_k X over key chunks, straight over the
//!                         token store (SPEC §1.2's rewrite: scores Q̃_k x_t, no K/V projection)
//!     attend_combine (1)  combine, Wv, Wo into the r·D concat, then the next layer's Q̃
//!                         (l < r − 1) or the merge F (l = r − 1)
//! co_fusion (1)       co-interest, its linear and the fusion: X^U
//! score (1) · top-k: histogram, compaction, select (3)
//! ```
//! i.e. `2r + 5` launches for the whole batch (13 for r = 4), independent of the number of
//! users, with one [`Backend::upload_batch`] of every per-request input before the first launch
//! and one [`Backend::read_back`] of the results after the last (on the GPU: asynchronous copies
//! through reused pinned memory and a single synchronisation).
//! Layer 0's `Q̃_k = (seeds Wq_0ᵀ + bq_0)_k Wk_{0,k} / sqrt(d)` does not depend on the user and is
//! computed once on the host at load (`attend` reads it with user stride 0); the weights the
//! per-user epilogues multiply by (`Wv`, `Wo`, `Wq`, the merge, `Wc`, `Wu`) are uploaded
//! transposed, both towers' stacked. The user profile `X̂` (SPEC §1.4) is computed on the host (a
//! few hundred flops) and enters the fusion as the right half of its input.
//!
//! Each launch fills its kernel's parameter struct (`src/abi.rs`) here, taking every buffer's
//! address with [`input`] / [`output`] and the extent the kernel touches, which is checked
//! against the buffer.

use super::backend::{input, output, store_variant, Backend, HostInputs, StoreDesc};
use super::launch::{self, to_i32, Geometry};
use super::timing::{KernelTimer, Key};
use crate::abi::{
    AttendCombineParams, AttendMmaParams, AttendParams, CoFusionParams, In, KernelParams, Out,
    ScoreMmaParams, ScoreMode, ScoreParams, TopkCompactParams, TopkHistParams, TopkSelectParams,
    Variant,
};
use crate::config::HcnConfig;
use crate::model::{Linear, Model, Tower};

use crate::tensor::DType;
use crate::{Error, Result};

/// An item store's `vectors` as the plan uploads it.
#[derive(Debug, Clone, Copy)]
pub struct StoreSource<'a> {
    pub dtype: DType,
    /// `rows × dim` little-endian elements of `dtype`.
    pub bytes: &'a [u8],
    /// I8 (SPEC §3): the `scales` tensor, `rows` little-endian F32 (any alignment); `None` for
    /// the float dtypes.
    pub scales: Option<&'a [u8]>,
    pub rows: usize,
    pub dim: usize,
}

impl<'a> StoreSource<'a> {
    pub fn from_store(s: &'a crate::ItemStore) -> Self {
        StoreSource {
            dtype: s.vectors.dtype(),
            bytes: s.vectors.bytes(),
            scales: s.vectors.scales_bytes(),
            rows: s.len(),
            dim: s.dim(),
        }
    }
}

/// One user of a batch, already resolved to store rows by the caller (the engine): unknown ids
/// dropped, sequences oldest first. Sequences longer than the model's `long_len` / `short_len`
/// keep their most recent rows (SPEC §1.1; applied here too, so it is idempotent).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserInput<'a> {
    /// Token-store rows of the long-term sequence.
    pub long_rows: &'a [u32],
    /// Token-store rows of the short-term sequence.
    pub short_rows: &'a [u32],
    /// `X̂`, the user's profile vector (SPEC §1.4, `D` values), computed on the host once per
    /// user for every executor (`src/fast/profile.rs`; zero for a model without a profile).
    pub profile: &'a [f32],
    /// Candidate-store rows to score, in request order.
    pub candidate_rows: &'a [u32],
}

/// What the device computed for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserOutput {
    /// `X^U`, `n × D` row-major.
    pub interests: Vec<f32>,
    /// One score per entry of `candidate_rows`, same order.
    pub scores: Vec<f32>,
    /// Up to `k` `(position in candidate_rows, score)`, best first; equal scores: lower
    /// position first (SPEC §1.5).
    pub top_k: Vec<(usize, f32)>,
}

/// One layer's weights on the device, both towers stacked (long first), as `attend_combine`
/// reads them.
struct DeviceLayer<B: Backend> {
    /// `Wvᵀ` (in × out) and `bv`.
    wvt: B::F,
    bv: B::F,
    /// `Woᵀ` and `bo`.
    wot: B::F,
    bo: B::F,
    /// `Wqᵀ`, `bq` and `Wk` as stored, for layers ≥ 1 (layer 0's queries are [`DeviceTowers::qt0`]).
    next: Option<NextQueries<B>>,
}

/// What `attend_combine` of layer `l − 1` needs of layer `l` to form its `Q̃`.
struct NextQueries<B: Backend> {
    wqt: B::F,
    bq: B::F,
    wk: B::F,
}

/// Both towers' weights (SPEC §1.2) on the device.
struct DeviceTowers<B: Backend> {
    layers: Vec<DeviceLayer<B>>,
    /// Layer 0's `Q̃` per (tower, head): `2 · h` blocks of `n × D`, `1/sqrt(d)` folded in.
    qt0: B::F,
    /// `Wmᵀ` (`r·D × D`) and `bm`.
    wmt: B::F,
    bm: B::F,
}

/// The plan with its weights and stores resident on the backend. Build once per model and
/// device, then call [`Plan::run_batch`] per batch.
pub struct Plan<B: Backend> {
    backend: B,
    cfg: HcnConfig,
    towers: DeviceTowers<B>,
    /// `Wcᵀ` and `bc`, `Wuᵀ` and `bu`.
    co_wt: B::F,
    co_b: B::F,
    fusion_wt: B::F,
    fusion_b: B::F,
    /// The co-interest concat blocks, packed as `CoInterestParams::block_codes`.
    block_codes: u32,
    num_blocks: usize,
    mode: ScoreMode,
    tokens: B::Store,
    candidates: B::Store,
    /// The store kernels' variants for the two stores' dtypes.
    token_variant: Variant,
    candidate_variant: Variant,
    /// The per-kernel timing switch ([`Plan::set_kernel_timing`]).
    timer: KernelTimer,
}

impl<B: Backend> std::fmt::Debug for Plan<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("dim", &self.cfg.dim)
            .field("interests", &self.cfg.interests)
            .field("layers", &self.cfg.layers)
            .finish_non_exhaustive()
    }
}

/// `Wᵀ` (`in × out`, row-major) of a `[out, in]` weight.
fn transposed(l: &Linear) -> Vec<f32> {
    let mut t = vec![0.0f32; l.in_dim * l.out_dim];
    for o in 0..l.out_dim {
        for (i, &w) in l.row(o).iter().enumerate() {
            t[i * l.out_dim + o] = w;
        }
    }
    t
}

/// Layer 0's `Q̃` of a tower on the host, f64 accumulation (load time only): per head `k`,
/// `Q̃_k = Q_k Wk_k / sqrt(d)` with `Q = seeds Wq_0ᵀ + bq_0` (`h` blocks of `n × D`).
fn host_qt0(t: &Tower, n: usize, dim: usize, heads: usize) -> Vec<f32> {
    let layer = &t.layers[0];
    let d = dim / heads;
    let q: Vec<f64> = (0..n * dim)
        .map(|e| {
            let (i, o) = (e / dim, e % dim);
            let seed = &t.seeds[i * dim..(i + 1) * dim];
            layer
                .q
                .row(o)
                .iter()
                .zip(seed)
                .map(|(&w, &x)| f64::from(w) * f64::from(x))
                .sum::<f64>()
                + f64::from(layer.q.bias[o])
        })
        .collect();
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0f32; heads * n * dim];
    for k in 0..heads {
        for i in 0..n {
            for c in 0..dim {
                let s: f64 = (0..d)
                    .map(|j| q[i * dim + k * d + j] * f64::from(layer.k.row(k * d + j)[c]))
                    .sum();
                out[(k * n + i) * dim + c] = (s * scale) as f32;
            }
        }
    }
    out
}

fn tail(rows: &[u32], max: usize) -> &[u32] {
    &rows[rows.len().saturating_sub(max)..]
}

impl<B: Backend> Plan<B> {
    /// Uploads the model's weights and both stores. Fails with [`Error::Device`] when the model
    /// is outside the kernels' limits ([`launch::check_model_shape`]) or an upload fails, and
    /// with [`Error::Incompatible`] when a store's D differs from the model's.
    pub fn new(
        backend: B,
        model: &Model,
        tokens: StoreSource<'_>,
        candidates: StoreSource<'_>,
    ) -> Result<Self> {
        let cfg = model.config.clone();
        let d = cfg.dim;
        launch::check_model_shape(d, cfg.heads, cfg.interests, cfg.co_interest_concat.len())?;
        for (what, s) in [("token store", &tokens), ("candidate store", &candidates)] {
            if s.dim != d {
                return Err(Error::Incompatible(format!(
                    "{what} has D = {}, the model has D = {d}",
                    s.dim
                )));
            }
        }
        let (token_variant, candidate_variant) = (
            store_variant(tokens.dtype)?,
            store_variant(candidates.dtype)?,
        );
        // `Block`'s discriminants are the kernel's codes (src/abi.rs).
        let block_codes: Vec<u8> = cfg.co_interest_concat.iter().map(|&b| b as u8).collect();
        let w = &model.weights;
        let towers = Self::upload_towers(&backend, [&w.long, &w.short], &cfg)?;
        let tokens =
            backend.upload_store(tokens.dtype, tokens.bytes, tokens.scales, tokens.rows, d)?;
        let candidates = backend.upload_store(
            candidates.dtype,
            candidates.bytes,
            candidates.scales,
            candidates.rows,
            d,
        )?;
        Ok(Plan {
            co_wt: backend.upload_f32(&transposed(&w.co_interest))?,
            co_b: backend.upload_f32(&w.co_interest.bias)?,
            fusion_wt: backend.upload_f32(&transposed(&w.fusion))?,
            fusion_b: backend.upload_f32(&w.fusion.bias)?,
            block_codes: launch::pack_blocks(&block_codes),
            num_blocks: cfg.co_interest_concat.len(),
            mode: cfg.score,
            towers,
            tokens,
            candidates,
            token_variant,
            candidate_variant,
            backend,
            cfg,
            timer: KernelTimer::default(),
        })
    }

    /// Both towers' weights, stacked per tensor (long first), and layer 0's `Q̃`.
    fn upload_towers(backend: &B, t: [&Tower; 2], cfg: &HcnConfig) -> Result<DeviceTowers<B>> {
        let (n, d, h) = (cfg.interests, cfg.dim, cfg.heads);
        let stack = |f: &dyn Fn(&Tower) -> Vec<f32>| -> Result<B::F> {
            let mut v = f(t[0]);
            v.extend(f(t[1]));
            backend.upload_f32(&v)
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let next = if l == 0 {
                None
            } else {
                Some(NextQueries {
                    wqt: stack(&|t| transposed(&t.layers[l].q))?,
                    bq: stack(&|t| t.layers[l].q.bias.clone())?,
                    wk: stack(&|t| t.layers[l].k.weight.clone())?,
                })
            };
            layers.push(DeviceLayer {
                wvt: stack(&|t| transposed(&t.layers[l].v))?,
                bv: stack(&|t| t.layers[l].v.bias.clone())?,
                wot: stack(&|t| transposed(&t.layers[l].o))?,
                bo: stack(&|t| t.layers[l].o.bias.clone())?,
                next,
            });
        }
        Ok(DeviceTowers {
            qt0: stack(&|t| host_qt0(t, n, d, h))?,
            wmt: stack(&|t| transposed(&t.merge))?,
            bm: stack(&|t| t.merge.bias.clone())?,
            layers,
        })
    }

    /// The backend (e.g. to name the device).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn token_store(&self) -> StoreDesc {
        self.backend.store_desc(&self.tokens)
    }

    pub fn candidate_store(&self) -> StoreDesc {
        self.backend.store_desc(&self.candidates)
    }

    fn validate(&self, i: usize, u: &UserInput<'_>) -> Result<()> {
        let tok = self.token_store().rows;
        let cand = self.candidate_store().rows;
        let field = |f: &str| format!("users[{i}].{f}");
        for (name, rows, n) in [
            ("long_rows", u.long_rows, tok),
            ("short_rows", u.short_rows, tok),
            ("candidate_rows", u.candidate_rows, cand),
        ] {
            if let Some(r) = rows.iter().find(|&&r| r as usize >= n) {
                return Err(Error::misuse(
                    field(name),
                    format!("row {r} is outside a store of {n} rows"),
                ));
            }
        }
        let d = self.cfg.dim;
        if u.profile.len() != d {
            return Err(Error::misuse(
                field("profile"),
                format!("{} values, the model has D = {d}", u.profile.len()),
            ));
        }
        if u.profile.iter().any(|v| !v.is_finite()) {
            return Err(Error::misuse(field("profile"), "non-finite value"));
        }
        Ok(())
    }

    /// Turns per-kernel timing on or off (off when the plan is built). On: every launch of the
    /// following batches is bracketed by two [`Backend::mark`]s, read after the batch's
    /// read-back, and accumulated per (kernel, site) until [`Plan::kernel_times`] reads them;
    /// turning it on clears what was accumulated. Off, a launch pays one relaxed atomic load.
    /// Toggle it between batches (one in flight may be partly recorded).
    pub fn set_kernel_timing(&self, on: bool) {
        self.timer.set(on);
    }

    /// The per-kernel times accumulated since timing was last turned on (see
    /// [`crate::kernel_times`]).
    pub fn kernel_times(&self) -> crate::KernelTimes {
        self.timer.times()
    }

    /// Kernel launches (non-empty grids) since the plan was built, timing on or off: the
    /// difference across a batch is its launch count.
    pub fn launches(&self) -> u64 {
        self.timer.launches()
    }

    /// [`Backend::launch`], bracketed by two marks when kernel timing is on.
    ///
    /// # Safety
    /// As [`Backend::launch`].
    unsafe fn launch<P: KernelParams>(
        &self,
        site: &'static str,
        variant: Variant,
        geo: &Geometry,
        p: &P,
    ) -> Result<()> {
        // SAFETY: the caller's guarantee.
        unsafe { launch_on(&self.backend, Some(&self.timer), site, variant, geo, p) }
    }

    /// Runs SPEC §1 for every user of the batch: interests, one score per candidate row, and the
    /// `top_k` best (fewer when a user has fewer candidates). All users share every launch.
    pub fn run_batch(&self, users: &[UserInput<'_>], top_k: usize) -> Result<Vec<UserOutput>> {
        // The batch's lane (on the GPU: stream, staging, workspace) until the end of this call;
        // every buffer of `run_batch_timed` is dropped before it.
        let _batch = self.backend.begin_batch()?;
        let out = self.run_batch_timed(users, top_k);
        if self.timer.enabled() {
            // After `read_back` (its synchronisation) every mark of a successful batch is done.
            self.timer.settle(out.is_ok());
        }
        out
    }

    fn run_batch_timed(&self, users: &[UserInput<'_>], top_k: usize) -> Result<Vec<UserOutput>> {
        for (i, u) in users.iter().enumerate() {
            self.validate(i, u)?;
        }
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let be = &self.backend;
        let (b, n, d) = (users.len(), self.cfg.interests, self.cfg.dim);
        let bn = b * n;
        let k = self.num_blocks;

        // Every per-request input is built on the host first, so the batch crosses to the device
        // in one `upload_batch` (on the GPU: through reused page-locked memory, asynchronously).
        let (long_rows, long_offs) =
            stack(users.iter().map(|u| tail(u.long_rows, self.cfg.long_len)))?;
        let (short_rows, short_offs) =
            stack(users.iter().map(|u| tail(u.short_rows, self.cfg.short_len)))?;
        let (cand_rows, cand_offs) = stack(users.iter().map(|u| u.candidate_rows))?;
        // The fusion input: the left half (X̃) is written by a kernel below, the right half is
        // tile_n(X̂) (SPEC §1.4), computed on the host.
        let mut fuse_host = vec![0.0f32; bn * 2 * d];
        for (ui, u) in users.iter().enumerate() {
            let xhat = u.profile;
            for j in 0..n {
                let row = (ui * n + j) * 2 * d;
                fuse_host[row + d..row + 2 * d].copy_from_slice(xhat);
            }
        }
        let (staging, dev) = be.upload_batch(HostInputs {
            u32s: &[&long_rows, &short_rows, &cand_rows],
            i32s: &[&long_offs, &short_offs, &cand_offs],
            f32s: &[&fuse_host],
        })?;
        let miscount = || Error::Device("the backend returned the wrong number of buffers".into());
        let [long_rows_dev, short_rows_dev, cand_rows_dev]: [B::U; 3] =
            dev.u32s.try_into().map_err(|_| miscount())?;
        let [long_offs_dev, short_offs_dev, cand_offs_dev]: [B::I; 3] =
            dev.i32s.try_into().map_err(|_| miscount())?;
        let [mut fuse_in]: [B::F; 1] = dev.f32s.try_into().map_err(|_| miscount())?;

        // F of both towers: B·n rows of L̂, then B·n rows of Ŝ.
        let towers = self.towers(
            (&long_rows_dev, &long_offs_dev, &long_offs),
            (&short_rows_dev, &short_offs_dev, &short_offs),
            b,
        )?;

        // Co-interest, X̃ into the left half of the fusion input, then X^U: one launch.
        let mut cat = be.scratch_f32(bn * k * d)?;
        let mut xu = be.scratch_f32(bn * d)?;
        let p = CoFusionParams {
            towers: input(&towers, 0, 2 * bn * d)?,
            cat: output(&mut cat, 0, bn * k * d)?,
            co_wt: input(&self.co_wt, 0, k * d * d)?,
            co_b: input(&self.co_b, 0, d)?,
            fuse: output(&mut fuse_in, 0, bn * 2 * d)?,
            fusion_wt: input(&self.fusion_wt, 0, 2 * d * d)?,
            fusion_b: input(&self.fusion_b, 0, d)?,
            xu: output(&mut xu, 0, bn * d)?,
            users: to_i32(b, "users")?,
            n: to_i32(n, "n")?,
            dim: to_i32(d, "D")?,
            num_blocks: to_i32(k, "concat blocks")?,
            block_codes: self.block_codes,
        };
        // SAFETY: the addresses cover the extents co_fusion.cu touches for these shapes.
        unsafe { self.launch("co_fusion", Variant::F32, &launch::co_fusion(b, n, k)?, &p) }?;

        // Scores and top-k over every user's candidates in one launch each.
        let total = cand_rows.len();
        let max_m = users
            .iter()
            .map(|u| u.candidate_rows.len())
            .max()
            .unwrap_or(0);
        let mut scores = be.scratch_f32(total)?;
        let p = ScoreParams {
            store: be.store_rows(&self.candidates),
            scales: be.store_scales(&self.candidates),
            rows: input(&cand_rows_dev, 0, total)?,
            cand_offsets: input(&cand_offs_dev, 0, b + 1)?,
            xu: input(&xu, 0, bn * d)?,
            out: output(&mut scores, 0, total)?,
            dim: to_i32(d, "D")?,
            n: to_i32(n, "n")?,
            mode: self.mode,
        };
        // F16 and I8 stores with D % 16 == 0 (and X^U's fragments within the kernel's shared
        // memory) score on tensor cores (score_mma.cu); the others, and models outside its
        // limits (`launch::score_mma_fits`), on score.cu.
        // SAFETY (both): rows were checked against the candidate store (`validate`), whose
        // scales (I8) cover every row (`check_store`) and whose rows start 16-byte aligned
        // (`Backend::store_rows`), the offsets ascend to `total` (`stack`), and the addresses
        // cover what score.cu / score_mma.cu touch.
        if launch::score_mma_fits(n, d) && self.candidate_variant.has_mma() {
            let geo = launch::score_mma(max_m, b, n, d)?;
            let p = ScoreMmaParams::from(p);
            unsafe { self.launch("score", self.candidate_variant, &geo, &p) }?;
        } else {
            let geo = launch::score(max_m, b, n, d)?;
            unsafe { self.launch("score", self.candidate_variant, &geo, &p) }?;
        }
        let k_dev = top_k.min(max_m);
        // SAFETY: the offsets ascend from 0 to `total` (`stack`), `scores` holds `total`.
        let (pos, val) = unsafe {
            top_k_launches(
                be,
                Some(&self.timer),
                (&scores, total),
                &cand_offs_dev,
                b,
                max_m,
                k_dev,
            )
        }?;

        // One synchronisation for the whole batch; the outputs are built straight from the
        // read-back memory.
        be.read_back(staging, &[&xu, &scores, &val], &[&pos], |f, i| {
            let (&[xu_h, scores_h, val_h], &[pos_h]) = (f, i) else {
                return Err(miscount());
            };
            let short = || Error::Device("a read-back buffer is shorter than the batch".into());
            let mut out = Vec::with_capacity(b);
            for ui in 0..b {
                let (s0, s1) = (cand_offs[ui] as usize, cand_offs[ui + 1] as usize);
                let mut top: Vec<(usize, f32)> = pos_h
                    .iter()
                    .zip(val_h)
                    .skip(ui * k_dev)
                    .take(k_dev)
                    .filter(|(&p, _)| p >= 0)
                    .map(|(&p, &v)| (p as usize, v))
                    .collect();
                // The kernels return the winners best first, or in position order where a user
                // took the exact fallback (kernels/topk.cu); put them in the one order every
                // executor shares (SPEC §1.5, -0.0 = +0.0). Already ordered, the stable sort is
                // one linear pass.
                top.sort_by(|a, b| crate::post::better(a.1, b.1, a.0, b.0));
                out.push(UserOutput {
                    interests: xu_h
                        .get(ui * n * d..(ui + 1) * n * d)
                        .ok_or_else(short)?
                        .to_vec(),
                    scores: scores_h.get(s0..s1).ok_or_else(short)?.to_vec(),
                    top_k: top,
                });
            }
            Ok(out)
        })?
    }

    /// SPEC §1.2 for both towers over the batch, by its rewrite (see `kernels/attend.cu`):
    /// returns `F` of every sequence, `2·users · n × D` (the long tower's users first). Each
    /// tower comes as its stacked token rows, their `users + 1` offsets on the device and the
    /// same offsets on the host.
    fn towers(
        &self,
        long: (&B::U, &B::I, &[i32]),
        short: (&B::U, &B::I, &[i32]),
        users: usize,
    ) -> Result<B::F> {
        let be = &self.backend;
        let t = &self.towers;
        let (n, d, r, h) = (
            self.cfg.interests,
            self.cfg.dim,
            self.cfg.layers,
            self.cfg.heads,
        );
        let seqs = 2 * users;
        let (nd, hnd) = (n * d, h * n * d);
        let count = |offs: &[i32]| offs.last().map_or(0, |&c| c as usize);
        let max_len = [long.2, short.2]
            .iter()
            .flat_map(|o| o.windows(2).map(|w| (w[1] - w[0]) as usize))
            .max()
            .unwrap_or(0);
        let (chunks, chunk_keys) = launch::attend_chunks(max_len, seqs, h);
        let part_len = seqs * h * chunks * n * (d + 2);
        let mut part = be.scratch_f32(part_len)?;
        let mut scratch = be.scratch_f32(seqs * (hnd + 2 * nd))?;
        let mut hcat = be.scratch_f32(seqs * n * r * d)?;
        // Layers ≥ 1 read their Q̃ from here (written by the previous layer's combine).
        let mut qt = be.scratch_f32(if r > 1 { seqs * hnd } else { 0 })?;
        let mut f = be.scratch_f32(seqs * nd)?;
        // F16 and I8 token stores with a model inside `launch::attend_mma_fits` attend on tensor
        // cores (attend_mma.cu); the others on attend.cu (same parameters and output).
        let mma = launch::attend_mma_fits(n, d) && self.token_variant.has_mma();
        let attend_geo = if mma {
            launch::attend_mma(chunks, h, seqs, n, d)?
        } else {
            launch::attend(chunks, h, seqs, n)?
        };
        let combine_geo = launch::attend_combine(seqs, n)?;
        let (users32, n32, d32, h32) = (
            to_i32(users, "users")?,
            to_i32(n, "n")?,
            to_i32(d, "D")?,
            to_i32(h, "heads")?,
        );
        let (chunks32, keys32) = (to_i32(chunks, "key chunks")?, to_i32(chunk_keys, "keys")?);
        let stride = |v: usize| i64::try_from(v).map_err(|_| Error::Device("Q̃ stride".into()));
        let null_in = || In::from_addr(0);
        for (l, layer) in t.layers.iter().enumerate() {
            // Layer 0's Q̃ is shared by every user (user stride 0).
            let (qt_in, tower_stride, user_stride) = if l == 0 {
                (input(&t.qt0, 0, 2 * hnd)?, hnd, 0)
            } else {
                (input(&qt, 0, seqs * hnd)?, users * hnd, hnd)
            };
            let p = AttendParams {
                store: be.store_rows(&self.tokens),
                scales: be.store_scales(&self.tokens),
                long_rows: input(long.0, 0, count(long.2))?,
                long_offsets: input(long.1, 0, users + 1)?,
                short_rows: input(short.0, 0, count(short.2))?,
                short_offsets: input(short.1, 0, users + 1)?,
                qt: qt_in,
                part: output(&mut part, 0, part_len)?,
                qt_tower_stride: stride(tower_stride)?,
                qt_user_stride: stride(user_stride)?,
                users: users32,
                n: n32,
                dim: d32,
                heads: h32,
                chunks: chunks32,
                chunk_keys: keys32,
            };
            // SAFETY: the rows were checked against the token store (`validate`), whose scales
            // (I8) cover every row (`check_store`); the offsets ascend to the row counts
            // (`stack`), every sequence has at most `chunks · chunk_keys` keys; `part` holds
            // every block's `n × (D + 2)`; for attend_mma, the store's rows start 16-byte aligned
            // (`Backend::store_rows`) and the model fits (`mma`).
            if mma {
                let p = AttendMmaParams::from(p);
                unsafe { self.launch("tower.attend", self.token_variant, &attend_geo, &p) }?;
            } else {
                unsafe { self.launch("tower.attend", self.token_variant, &attend_geo, &p) }?;
            }
            let last = l + 1 == r;
            let next = t.layers.get(l + 1).and_then(|x| x.next.as_ref());
            let p = AttendCombineParams {
                long_offsets: input(long.1, 0, users + 1)?,
                short_offsets: input(short.1, 0, users + 1)?,
                part: input(&part, 0, part_len)?,
                wvt: input(&layer.wvt, 0, 2 * d * d)?,
                bv: input(&layer.bv, 0, 2 * d)?,
                wot: input(&layer.wot, 0, 2 * d * d)?,
                bo: input(&layer.bo, 0, 2 * d)?,
                wqt: next.map_or(Ok(null_in()), |x| input(&x.wqt, 0, 2 * d * d))?,
                bq: next.map_or(Ok(null_in()), |x| input(&x.bq, 0, 2 * d))?,
                wk: next.map_or(Ok(null_in()), |x| input(&x.wk, 0, 2 * d * d))?,
                wmt: if last {
                    input(&t.wmt, 0, 2 * r * d * d)?
                } else {
                    null_in()
                },
                bm: if last {
                    input(&t.bm, 0, 2 * d)?
                } else {
                    null_in()
                },
                scratch: output(&mut scratch, 0, seqs * (hnd + 2 * nd))?,
                hcat: output(&mut hcat, 0, seqs * n * r * d)?,
                qt_next: if last {
                    Out::from_addr(0)
                } else {
                    output(&mut qt, 0, seqs * hnd)?
                },
                out: if last {
                    output(&mut f, 0, seqs * nd)?
                } else {
                    Out::from_addr(0)
                },
                users: users32,
                n: n32,
                dim: d32,
                heads: h32,
                chunks: chunks32,
                chunk_keys: keys32,
                layer: to_i32(l, "layer")?,
                layers: to_i32(r, "layers")?,
            };
            // SAFETY: as above; the addresses cover what attend_combine.cu reads and writes for
            // these shapes; the pointers left null are the ones this layer does not use (the
            // next layer's queries at the last layer, the merge before it).
            unsafe { self.launch("tower.combine", Variant::F32, &combine_geo, &p) }?;
        }
        Ok(f)
    }
}

/// [`Backend::launch`] on `be`, bracketed by two marks when `timer` is on.
///
/// # Safety
/// As [`Backend::launch`].
unsafe fn launch_on<B: Backend, P: KernelParams>(
    be: &B,
    timer: Option<&KernelTimer>,
    site: &'static str,
    variant: Variant,
    geo: &Geometry,
    p: &P,
) -> Result<()> {
    if let Some(t) = timer.filter(|_| !geo.is_empty()) {
        t.count_launch();
    }
    let Some(timer) = timer.filter(|t| t.enabled() && !geo.is_empty()) else {
        // SAFETY: the caller's guarantee (`Backend::launch`).
        return unsafe { be.launch(variant, geo, p) };
    };
    let start = be.mark()?;
    // SAFETY: the caller's guarantee (`Backend::launch`).
    unsafe { be.launch(variant, geo, p) }?;
    let end = be.mark()?;
    let key = Key {
        op: P::DESC.op,
        suffix: variant.suffix,
        site,
    };
    timer.push(key, start, end);
    Ok(())
}

/// SPEC §1.5's top-k of every user's scores on the device, as the plan runs it (the multi-block
/// select of `kernels/topk.cu`: `topk_hist`, `topk_compact`, `topk_select`). `scores` holds
/// `total` scores, user `u`'s at `offsets[u] .. offsets[u + 1]`; `max_m` is the longest user's
/// count, `k ≤ max_m`. Returns `users · k` (position, score) slots: per user its `min(k, m)`
/// winners (best first, or in position order where the user took the exact fallback), then
/// position −1.
///
/// # Safety
/// `offsets` holds `users + 1` values ascending from 0 to `total`, no user has more than
/// `max_m`, and `scores` holds at least `total` values.
pub unsafe fn top_k<B: Backend>(
    be: &B,
    scores: &B::F,
    total: usize,
    offsets: &B::I,
    users: usize,
    max_m: usize,
    k: usize,
) -> Result<(B::I, B::F)> {
    // SAFETY: the caller's guarantee.
    unsafe { top_k_launches(be, None, (scores, total), offsets, users, max_m, k) }
}

/// [`top_k`], timed on the plan's timer.
///
/// # Safety
/// As [`top_k`].
unsafe fn top_k_launches<B: Backend>(
    be: &B,
    timer: Option<&KernelTimer>,
    (scores, total): (&B::F, usize),
    offsets: &B::I,
    users: usize,
    max_m: usize,
    k: usize,
) -> Result<(B::I, B::F)> {
    if k > max_m {
        return Err(Error::Device(format!(
            "top-k: k = {k} is over the longest user's {max_m} scores"
        )));
    }
    // topk_select writes all `users · k` slots (−1 past a user's m).
    let mut pos = be.scratch_i32(users * k)?;
    let mut val = be.scratch_f32(users * k)?;
    if k == 0 || users == 0 {
        return Ok((pos, val));
    }
    // Per user the histogram and the survivor count, zeroed: topk_hist and topk_compact add to
    // them with atomics. The survivors are scratch: topk_select reads only the `count` written.
    let cap = launch::topk_capacity(max_m);
    let (hist_len, counts_at) = (users * launch::TOPK_BUCKETS, users * launch::TOPK_BUCKETS);
    let mut ws = be.zeros_i32(counts_at + users)?;
    let mut surv = be.scratch_i32(users * cap)?;
    let chunks = launch::topk_chunks(max_m, users, k)?;
    let (k32, cap32) = (to_i32(k, "k")?, to_i32(cap, "top-k capacity")?);
    let p = TopkHistParams {
        scores: input(scores, 0, total)?,
        offsets: input(offsets, 0, users + 1)?,
        hist: output(&mut ws, 0, hist_len)?,
    };
    // SAFETY: the offsets ascend to `total` (the caller); `users · TOPK_BUCKETS` counts.
    unsafe { launch_on(be, timer, "topk.hist", Variant::F32, &chunks, &p) }?;
    let hist = input(&ws, 0, hist_len)?;
    let counts = input(&ws, counts_at, users)?;
    let survivors = input(&surv, 0, users * cap)?;
    let p = TopkCompactParams {
        scores: input(scores, 0, total)?,
        offsets: input(offsets, 0, users + 1)?,
        hist,
        survivors: output(&mut surv, 0, users * cap)?,
        counts: output(&mut ws, counts_at, users)?,
        k: k32,
        capacity: cap32,
    };
    // SAFETY: as above; `users · capacity` survivor slots and `users` counts, disjoint from the
    // histogram.
    unsafe { launch_on(be, timer, "topk.compact", Variant::F32, &chunks, &p) }?;
    let p = TopkSelectParams {
        scores: input(scores, 0, total)?,
        offsets: input(offsets, 0, users + 1)?,
        survivors,
        counts,
        out_pos: output(&mut pos, 0, users * k)?,
        out_score: output(&mut val, 0, users * k)?,
        k: k32,
        capacity: cap32,
    };
    // SAFETY: as above; `users · k` output slots.
    unsafe {
        launch_on(
            be,
            timer,
            "topk.select",
            Variant::F32,
            &launch::topk(users, k)?,
            &p,
        )
    }?;
    Ok((pos, val))
}

/// Concatenates per-user row lists and returns them with `users + 1` ascending offsets.
fn stack<'u>(seqs: impl Iterator<Item = &'u [u32]>) -> Result<(Vec<u32>, Vec<i32>)> {
    let mut rows = Vec::new();
    let mut offsets = vec![0i32];
    for s in seqs {
        rows.extend_from_slice(s);
        offsets.push(launch::to_i32(rows.len(), "rows in one batch")?);
    }
    Ok((rows, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_most_recent_rows() {
        assert_eq!(tail(&[1, 2, 3, 4], 2), &[3, 4]);
        assert_eq!(tail(&[1, 2], 5), &[1, 2]);
        assert_eq!(tail(&[1, 2], 0), &[] as &[u32]);
    }

    #[test]
    fn stack_builds_offsets() {
        let (rows, offs) = stack([&[5u32, 6][..], &[][..], &[7][..]].into_iter()).unwrap();
        assert_eq!(rows, vec![5, 6, 7]);
        assert_eq!(offs, vec![0, 2, 2, 3]);
    }
}
