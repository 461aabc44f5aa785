//! The GPU execution plan of SPEC §1 for a batch of users, generic over the [`Backend`]:
//! which kernels run, in which order, on which buffers. One batch is
//!
//! ```text
//! per tower (long, short):  gather X (1) · per layer l: [K|V] = X [Wk;Wv]ᵀ (1), Q (1, none at l = 0),
//!                           attention (1), H_l = A Woᵀ into the r·D concat (1) · merge (1)
//! co_interest concat (1) · X̃ = concat Wcᵀ into the fusion input (1) · X^U = fusion (1)
//! score (1) · top-k: histogram, compaction, select (3)
//! ```
//! i.e. `2·(1 + 4r) + 7` launches for the whole batch (41 for r = 4), independent of the number
//! of users, with one [`Backend::upload_batch`] of every per-request input before the first
//! launch and one [`Backend::read_back`] of the results after the last (on the GPU: asynchronous
//! copies through reused pinned memory and a single synchronisation).
//! Layer 0's `Q = seeds Wq_0ᵀ + bq_0` does not depend on the user and is computed once on the
//! host at load (the attention kernel reads it with a user stride of 0); K and V share one GEMM
//! with the stacked weight `[Wk; Wv]`. The user profile `X̂` (SPEC §1.4) is computed on the host
//! (a few hundred flops) and enters the fusion GEMM as the right half of its input.
//!
//! Each launch fills its kernel's parameter struct (`src/abi.rs`) here, taking every buffer's
//! address with [`input`] / [`output`] and the extent the kernel touches, which is checked
//! against the buffer.

use super::backend::{input, output, store_variant, Backend, HostInputs, StoreDesc};
use super::launch::{self, extent, to_i32, Geometry};
use super::timing::{KernelTimer, Key};
use crate::abi::{
    AttentionParams, CoInterestParams, GatherParams, KernelParams, LinearParams, ScoreMmaParams,
    ScoreMode, ScoreParams, TopkCompactParams, TopkHistParams, TopkSelectParams, Variant,
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

struct DeviceLayer<B: Backend> {
    /// `seeds Wq_0ᵀ + bq_0` (`n × D`), only for layer 0.
    q0: Option<B::F>,
    wq: B::F,
    bq: B::F,
    /// `[Wk; Wv]`, `2D × D`, and `[bk; bv]`.
    wkv: B::F,
    bkv: B::F,
    wo: B::F,
    bo: B::F,
}

struct DeviceTower<B: Backend> {
    layers: Vec<DeviceLayer<B>>,
    merge_w: B::F,
    merge_b: B::F,
    sites: &'static TowerSites,
}

/// The per-kernel timing labels of a tower's launches ([`crate::KernelTime::site`]).
struct TowerSites {
    gather: &'static str,
    kv: &'static str,
    q: &'static str,
    attention: &'static str,
    o: &'static str,
    merge: &'static str,
}

const LONG_SITES: TowerSites = TowerSites {
    gather: "long.gather",
    kv: "long.kv",
    q: "long.q",
    attention: "long.attention",
    o: "long.o",
    merge: "long.merge",
};

const SHORT_SITES: TowerSites = TowerSites {
    gather: "short.gather",
    kv: "short.kv",
    q: "short.q",
    attention: "short.attention",
    o: "short.o",
    merge: "short.merge",
};

/// The plan with its weights and stores resident on the backend. Build once per model and
/// device, then call [`Plan::run_batch`] per batch.
pub struct Plan<B: Backend> {
    backend: B,
    cfg: HcnConfig,
    long: DeviceTower<B>,
    short: DeviceTower<B>,
    co_w: B::F,
    co_b: B::F,
    fusion_w: B::F,
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

/// `y = x Wᵀ + b` on the host, f64 accumulation (load-time precomputation only).
fn host_linear(l: &Linear, x: &[f32], rows: usize, relu: bool) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * l.out_dim];
    for r in 0..rows {
        let xr = &x[r * l.in_dim..(r + 1) * l.in_dim];
        for o in 0..l.out_dim {
            let s: f64 = l
                .row(o)
                .iter()
                .zip(xr)
                .map(|(&w, &v)| f64::from(w) * f64::from(v))
                .sum::<f64>()
                + f64::from(l.bias[o]);
            y[r * l.out_dim + o] = if relu && s < 0.0 { 0.0 } else { s as f32 };
        }
    }
    y
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
        let long = Self::upload_tower(&backend, &w.long, &cfg, &LONG_SITES)?;
        let short = Self::upload_tower(&backend, &w.short, &cfg, &SHORT_SITES)?;
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
            co_w: backend.upload_f32(&w.co_interest.weight)?,
            co_b: backend.upload_f32(&w.co_interest.bias)?,
            fusion_w: backend.upload_f32(&w.fusion.weight)?,
            fusion_b: backend.upload_f32(&w.fusion.bias)?,
            block_codes: launch::pack_blocks(&block_codes),
            num_blocks: cfg.co_interest_concat.len(),
            mode: cfg.score,
            long,
            short,
            tokens,
            candidates,
            token_variant,
            candidate_variant,
            backend,
            cfg,
            timer: KernelTimer::default(),
        })
    }

    fn upload_tower(
        backend: &B,
        t: &Tower,
        cfg: &HcnConfig,
        sites: &'static TowerSites,
    ) -> Result<DeviceTower<B>> {
        let mut layers = Vec::with_capacity(t.layers.len());
        for (l, layer) in t.layers.iter().enumerate() {
            let q0 = if l == 0 {
                Some(backend.upload_f32(&host_linear(&layer.q, &t.seeds, cfg.interests, false))?)
            } else {
                None
            };
            let mut wkv = layer.k.weight.clone();
            wkv.extend_from_slice(&layer.v.weight);
            let mut bkv = layer.k.bias.clone();
            bkv.extend_from_slice(&layer.v.bias);
            layers.push(DeviceLayer {
                q0,
                wq: backend.upload_f32(&layer.q.weight)?,
                bq: backend.upload_f32(&layer.q.bias)?,
                wkv: backend.upload_f32(&wkv)?,
                bkv: backend.upload_f32(&bkv)?,
                wo: backend.upload_f32(&layer.o.weight)?,
                bo: backend.upload_f32(&layer.o.bias)?,
            });
        }
        Ok(DeviceTower {
            layers,
            merge_w: backend.upload_f32(&t.merge.weight)?,
            merge_b: backend.upload_f32(&t.merge.bias)?,
            sites,
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

        let long_hat = self.tower(
            &self.long,
            &long_rows_dev,
            &long_offs_dev,
            long_rows.len(),
            b,
        )?;
        let short_hat = self.tower(
            &self.short,
            &short_rows_dev,
            &short_offs_dev,
            short_rows.len(),
            b,
        )?;

        // Co-interest concat, then X̃ into the left half of the fusion input.
        let mut cat = be.zeros_f32(bn * k * d)?;
        let p = CoInterestParams {
            lhat: input(&long_hat, 0, extent(bn, d, d))?,
            shat: input(&short_hat, 0, extent(bn, d, d))?,
            out: output(&mut cat, 0, extent(bn, k * d, k * d))?,
            ld_in: to_i32(d, "D")?,
            ldo: to_i32(k * d, "co_interest width")?,
            n: to_i32(n, "n")?,
            dim: to_i32(d, "D")?,
            num_blocks: to_i32(k, "concat blocks")?,
            block_codes: self.block_codes,
        };
        // SAFETY: the addresses cover the extents co_interest.cu touches for these shapes.
        unsafe {
            self.launch(
                "co_interest",
                Variant::F32,
                &launch::co_interest(b, n, k)?,
                &p,
            )
        }?;
        self.linear(
            "co_interest.linear",
            (&cat, 0),
            k * d,
            &self.co_w,
            &self.co_b,
            (&mut fuse_in, 0),
            2 * d,
            bn,
            k * d,
            d,
            false,
        )?;
        let mut xu = be.zeros_f32(bn * d)?;
        self.linear(
            "fusion",
            (&fuse_in, 0),
            2 * d,
            &self.fusion_w,
            &self.fusion_b,
            (&mut xu, 0),
            d,
            bn,
            2 * d,
            d,
            false,
        )?;

        // Scores and top-k over every user's candidates in one launch each.
        let total = cand_rows.len();
        let max_m = users
            .iter()
            .map(|u| u.candidate_rows.len())
            .max()
            .unwrap_or(0);
        let mut scores = be.zeros_f32(total)?;
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

    /// `linear.cu`: `y = relu?(x Wᵀ + b)` for `rows` rows of `in_dim` values (leading dimension
    /// `ldx`, from element `x.1`), into `out_dim` columns (leading dimension `ldy`, from `y.1`).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        site: &'static str,
        x: (&B::F, usize),
        ldx: usize,
        w: &B::F,
        b: &B::F,
        y: (&mut B::F, usize),
        ldy: usize,
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        relu: bool,
    ) -> Result<()> {
        let p = LinearParams {
            x: input(x.0, x.1, extent(rows, ldx, in_dim))?,
            w: input(w, 0, out_dim * in_dim)?,
            bias: input(b, 0, out_dim)?,
            y: output(y.0, y.1, extent(rows, ldy, out_dim))?,
            ldx: to_i32(ldx, "ldx")?,
            ldy: to_i32(ldy, "ldy")?,
            rows: to_i32(rows, "rows")?,
            in_dim: to_i32(in_dim, "in_dim")?,
            out_dim: to_i32(out_dim, "out_dim")?,
            relu: i32::from(relu),
        };
        let geo = launch::linear(rows, out_dim)?;
        // SAFETY: the addresses cover the extents linear.cu touches for these shapes.
        unsafe { self.launch(site, Variant::F32, &geo, &p) }
    }

    /// SPEC §1.2 for one tower over the batch: returns `F` for every user (`B·n × D`). `rows`
    /// holds the batch's `count` token rows, `offsets` the `users + 1` offsets into them.
    fn tower(
        &self,
        t: &DeviceTower<B>,
        rows_dev: &B::U,
        offs_dev: &B::I,
        count: usize,
        users: usize,
    ) -> Result<B::F> {
        let be = &self.backend;
        let (n, d, r, h) = (
            self.cfg.interests,
            self.cfg.dim,
            self.cfg.layers,
            self.cfg.heads,
        );
        let bn = users * n;
        let mut x = be.zeros_f32(count * d)?;
        let p = GatherParams {
            store: be.store_rows(&self.tokens),
            scales: be.store_scales(&self.tokens),
            rows: input(rows_dev, 0, count)?,
            out: output(&mut x, 0, count * d)?,
            count: to_i32(count, "token rows")?,
            dim: to_i32(d, "D")?,
        };
        let sites = t.sites;
        // SAFETY: the rows were checked against the token store (`validate`), whose scales (I8)
        // cover every row (`check_store`); `count × D` out.
        unsafe {
            self.launch(
                sites.gather,
                self.token_variant,
                &launch::gather(count)?,
                &p,
            )
        }?;

        // At least one row: V is addressed at column offset D of this buffer even when the whole
        // batch has no token (every attention then reads nothing and writes zeros).
        let mut kv = be.zeros_f32(count.max(1) * 2 * d)?;
        let mut q = be.zeros_f32(bn * d)?;
        let mut a = be.zeros_f32(bn * d)?;
        let mut hcat = be.zeros_f32(bn * r * d)?;
        for (l, layer) in t.layers.iter().enumerate() {
            self.linear(
                sites.kv,
                (&x, 0),
                d,
                &layer.wkv,
                &layer.bkv,
                (&mut kv, 0),
                2 * d,
                count,
                d,
                2 * d,
                false,
            )?;
            // Layer 0's queries are the same for every user (stride 0 between users); later
            // layers project C = H_{l−1}, read in place from its column block of the concat.
            let (queries, user_stride) = match &layer.q0 {
                Some(q0) => (q0, 0),
                None => {
                    self.linear(
                        sites.q,
                        (&hcat, (l - 1) * d),
                        r * d,
                        &layer.wq,
                        &layer.bq,
                        (&mut q, 0),
                        d,
                        bn,
                        d,
                        d,
                        false,
                    )?;
                    (&q, n * d)
                }
            };
            // Every user's n query rows (one set for all of them with stride 0); K and V are the
            // two column halves of the `count × 2D` buffer.
            let q_len = (users - 1) * user_stride + extent(n, d, d);
            let p = AttentionParams {
                q: input(queries, 0, q_len)?,
                k: input(&kv, 0, extent(count, 2 * d, d))?,
                v: input(&kv, d, extent(count, 2 * d, d))?,
                kv_offsets: input(offs_dev, 0, users + 1)?,
                out: output(&mut a, 0, extent(bn, d, d))?,
                q_user_stride: i64::try_from(user_stride)
                    .map_err(|_| Error::Device("query stride".into()))?,
                ldq: to_i32(d, "D")?,
                ldkv: to_i32(2 * d, "2D")?,
                ldo: to_i32(d, "D")?,
                n: to_i32(n, "n")?,
                head_dim: to_i32(d / h, "d")?,
            };
            let geo = launch::attention(h, users, n, d / h)?;
            // SAFETY: the offsets ascend to `count` (`stack`); the addresses cover the rows
            // attention.cu reads and writes.
            unsafe { self.launch(sites.attention, Variant::F32, &geo, &p) }?;
            self.linear(
                sites.o,
                (&a, 0),
                d,
                &layer.wo,
                &layer.bo,
                (&mut hcat, l * d),
                r * d,
                bn,
                d,
                d,
                false,
            )?;
        }
        let mut f = be.zeros_f32(bn * d)?;
        self.linear(
            sites.merge,
            (&hcat, 0),
            r * d,
            &t.merge_w,
            &t.merge_b,
            (&mut f, 0),
            d,
            bn,
            r * d,
            d,
            false,
        )?;
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
    let mut pos = be.zeros_i32(users * k)?;
    let mut val = be.zeros_f32(users * k)?;
    if k == 0 || users == 0 {
        return Ok((pos, val));
    }
    // One workspace, zeroed with its allocation (as every buffer of the plan): per user the
    // histogram (must start at zero), the survivor count (must start at zero), the survivors.
    let cap = launch::topk_capacity(max_m);
    let (hist_len, counts_at) = (users * launch::TOPK_BUCKETS, users * launch::TOPK_BUCKETS);
    let surv_at = counts_at + users;
    let mut ws = be.zeros_i32(surv_at + users * cap)?;
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
    let survivors = input(&ws, surv_at, users * cap)?;
    let p = TopkCompactParams {
        scores: input(scores, 0, total)?,
        offsets: input(offsets, 0, users + 1)?,
        hist,
        survivors: output(&mut ws, surv_at, users * cap)?,
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
