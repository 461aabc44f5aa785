//! The real kernels on a real GPU (through cudarc), checked against the CPU emulation of the same
//! kernels — which `tests/cuda_emulation.rs` checks against the f64 reference of SPEC §1 — with
//! SPEC §5's GPU tolerance `2e-3 · (1 + |ref|)`. Top-k is checked exactly against a host top-k
//! of the GPU's own scores (GPU and emulation may round differently, so near-ties may swap).
//!
//! Without a usable GPU every test prints why ([`hcn_prerank::cuda::probe`]'s reason) and passes:
//! CI has no GPU; these run on a GPU machine with `cargo test --features cuda --test cuda_gpu`.
#![cfg(feature = "cuda-emulation")]

use hcn_prerank::cuda::abi::{
    AttendCombineParams, AttendMmaParams, AttendParams, CoFusionParams, In, KernelParams,
    MmaTestParams, Out, ScoreMmaParams, ScoreParams, TopkParams, Variant, SCORE_MODES,
};
use hcn_prerank::cuda::backend::{input, output, store_variant, Backend};
use hcn_prerank::cuda::device::CudaBackend;
use hcn_prerank::cuda::emu::EmuBackend;
use hcn_prerank::cuda::launch::{self, Geometry};
use hcn_prerank::cuda::{probe, CudaExecutor, Plan, StoreSource, UserInput, UserOutput};
use hcn_prerank::model::{AttentionLayer, Linear, Tower, UserProfile, Weights};
use hcn_prerank::store::IdIndex;
use hcn_prerank::tensor::{narrow, quantize_row, DType, MappedMatrix};
use hcn_prerank::{HcnConfig, ItemStore, Model};
use std::sync::Arc;

const TOL: f64 = 2e-3;

/// `Some(backend)` on a machine with a usable GPU, else prints the reason and returns `None`.
fn gpu(test: &str) -> Option<CudaBackend> {
    if let Err(why) = probe() {
        eprintln!("{test}: skipped, no usable GPU: {why}");
        return None;
    }
    Some(CudaBackend::new(0).expect("probe passed, so opening GPU 0 must work"))
}

use hcn_prerank::rng::SplitMix64 as Rng;

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - f64::from(w)).abs();
        assert!(
            err <= TOL * (1.0 + f64::from(w).abs()),
            "{what}[{i}]: GPU {g}, emulation {w}"
        );
    }
}

fn host_topk(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // The engine's one order (SPEC §1.5; -0.0 = +0.0, NaN last), shared by every executor.
    idx.sort_by(|&a, &b| hcn_prerank::post::better(scores[a], scores[b], a, b));
    idx.into_iter().take(k).map(|i| (i, scores[i])).collect()
}

/// Launches `p` on `be`. Every address in the tests' parameter structs comes from `input` /
/// `output` with the extent the kernel touches.
fn run<B: Backend, P: KernelParams>(be: &B, variant: Variant, geo: Geometry, p: P) {
    // SAFETY: see above; the buffers outlive the launch (and the download that follows it).
    unsafe { be.launch(variant, &geo, &p) }.unwrap();
}

fn int(v: usize) -> i32 {
    i32::try_from(v).unwrap()
}

/// A store of `values` (`dim` per row) in `dtype`: its `vectors` bytes and, for I8, its
/// `scales` bytes (each row quantized by SPEC §3's rule).
fn store_bytes(dtype: DType, values: &[f32], dim: usize) -> (Vec<u8>, Option<Vec<u8>>) {
    if dtype != DType::I8 {
        return (narrow(dtype, values), None);
    }
    let (mut bytes, mut scales) = (Vec::new(), Vec::new());
    let mut q = vec![0i8; dim];
    for row in values.chunks_exact(dim) {
        scales.extend(quantize_row(row, &mut q).to_le_bytes());
        bytes.extend(q.iter().map(|&v| v as u8));
    }
    (bytes, Some(scales))
}

/// The store kernels (`attend` and `attend_mma`, then `score` and `score_mma` in every mode) on a store of `dtype` with rows of
/// `dim` values, appending each output to `out` under `tag`.
fn store_kernel_outputs<B: Backend>(
    be: &B,
    rng: &mut Rng,
    dtype: DType,
    dim: usize,
    tag: &str,
    out: &mut Vec<(String, Vec<f32>)>,
) {
    let (n_rows, n) = (60usize, 5usize);
    let (bytes, scales) = store_bytes(dtype, &rng.vec(n_rows * dim, 1.0), dim);
    let store = be
        .upload_store(dtype, &bytes, scales.as_deref(), n_rows, dim)
        .unwrap();
    let variant = store_variant(dtype).unwrap();
    attend_outputs(be, rng, &store, variant, (n_rows, n, dim), tag, out);
    score_outputs(be, rng, &store, variant, (n_rows, n, dim), tag, out);
}

/// `attend` over `store` (`n_rows` rows of `dim`, `n` interests, 2 heads) for both towers of 4
/// users (long lengths 0, 1, 33, 70; short 3, 0, 32, 1), chunks of one tile and of two, Q̃ per
/// user; each output appended to `out` under `tag`.
fn attend_outputs<B: Backend>(
    be: &B,
    rng: &mut Rng,
    store: &B::Store,
    variant: Variant,
    (n_rows, n, dim): (usize, usize, usize),
    tag: &str,
    out: &mut Vec<(String, Vec<f32>)>,
) {
    let (heads, users) = (2usize, 4usize);
    let offsets = |lens: [usize; 4]| -> Vec<i32> {
        let mut o = vec![0i32];
        for l in lens {
            o.push(o.last().unwrap() + l as i32);
        }
        o
    };
    let (lo, so) = (offsets([0, 1, 33, 70]), offsets([3, 0, 32, 1]));
    let rows = |o: &[i32], rng: &mut Rng| -> Vec<u32> {
        (0..*o.last().unwrap())
            .map(|_| rng.below(n_rows) as u32)
            .collect()
    };
    let (lr, sr) = (rows(&lo, rng), rows(&so, rng));
    let (lr_d, sr_d) = (be.upload_u32(&lr).unwrap(), be.upload_u32(&sr).unwrap());
    let (lo_d, so_d) = (be.upload_i32(&lo).unwrap(), be.upload_i32(&so).unwrap());
    let hnd = heads * n * dim;
    let qt = be.upload_f32(&rng.vec(2 * users * hnd, 0.3)).unwrap();
    for chunk_keys in [32usize, 64] {
        let chunks = 70usize.div_ceil(chunk_keys);
        let len = 2 * users * heads * chunks * n * (dim + 2);
        let mut part = be.zeros_f32(len).unwrap();
        let p = AttendParams {
            store: be.store_rows(store),
            scales: be.store_scales(store),
            long_rows: input(&lr_d, 0, lr.len()).unwrap(),
            long_offsets: input(&lo_d, 0, users + 1).unwrap(),
            short_rows: input(&sr_d, 0, sr.len()).unwrap(),
            short_offsets: input(&so_d, 0, users + 1).unwrap(),
            qt: input(&qt, 0, 2 * users * hnd).unwrap(),
            part: output(&mut part, 0, len).unwrap(),
            qt_tower_stride: (users * hnd) as i64,
            qt_user_stride: hnd as i64,
            users: int(users),
            n: int(n),
            dim: int(dim),
            heads: int(heads),
            chunks: int(chunks),
            chunk_keys: int(chunk_keys),
        };
        let geo = launch::attend(chunks, heads, 2 * users, n).unwrap();
        run(be, variant, geo, p);
        out.push((
            format!("attend {tag} chunk_keys {chunk_keys}"),
            be.download_f32(&part).unwrap(),
        ));
        // The tensor-core kernel on the same inputs (F16 and I8 stores, D % 16 == 0).
        if variant.has_mma() && launch::attend_mma_fits(n, dim) {
            let mut part = be.zeros_f32(len).unwrap();
            let p = AttendMmaParams::from(AttendParams {
                part: output(&mut part, 0, len).unwrap(),
                ..p
            });
            let geo = launch::attend_mma(chunks, heads, 2 * users, n, dim).unwrap();
            run(be, variant, geo, p);
            out.push((
                format!("attend_mma {tag} chunk_keys {chunk_keys}"),
                be.download_f32(&part).unwrap(),
            ));
        }
    }
}

/// `score` in every mode over `store` (`n_rows` rows of `dim`, `n` interests): 300 candidates
/// for user 0 (more than one 256-block), none for user 1, 7 for user 2; each output appended
/// to `out` under `tag`.
fn score_outputs<B: Backend>(
    be: &B,
    rng: &mut Rng,
    store: &B::Store,
    variant: Variant,
    (n_rows, n, dim): (usize, usize, usize),
    tag: &str,
    out: &mut Vec<(String, Vec<f32>)>,
) {
    let cl = [300usize, 0, 7];
    let mut coffs = vec![0i32];
    for c in cl {
        coffs.push(coffs.last().unwrap() + c as i32);
    }
    let ctotal = *coffs.last().unwrap() as usize;
    let crow: Vec<u32> = (0..ctotal).map(|_| rng.below(n_rows) as u32).collect();
    let crow_d = be.upload_u32(&crow).unwrap();
    let coffs_d = be.upload_i32(&coffs).unwrap();
    let xu = be.upload_f32(&rng.vec(cl.len() * n * dim, 1.0)).unwrap();
    for (mode, _) in SCORE_MODES {
        let mut sc = be.zeros_f32(ctotal).unwrap();
        let p = ScoreParams {
            store: be.store_rows(store),
            scales: be.store_scales(store),
            rows: input(&crow_d, 0, ctotal).unwrap(),
            cand_offsets: input(&coffs_d, 0, cl.len() + 1).unwrap(),
            xu: input(&xu, 0, cl.len() * n * dim).unwrap(),
            out: output(&mut sc, 0, ctotal).unwrap(),
            dim: int(dim),
            n: int(n),
            mode,
        };
        let geo = launch::score(300, cl.len(), n, dim).unwrap();
        run(be, variant, geo, p);
        out.push((
            format!("score {tag} mode {}", mode as i32),
            be.download_f32(&sc).unwrap(),
        ));
        // The tensor-core kernel on the same inputs (F16 and I8 stores, D % 16 == 0).
        if variant.has_mma() && launch::score_mma_fits(n, dim) {
            let mut sc = be.zeros_f32(ctotal).unwrap();
            let p = ScoreMmaParams::from(ScoreParams {
                out: output(&mut sc, 0, ctotal).unwrap(),
                ..p
            });
            let geo = launch::score_mma(300, cl.len(), n, dim).unwrap();
            run(be, variant, geo, p);
            out.push((
                format!("score_mma {tag} mode {}", mode as i32),
                be.download_f32(&sc).unwrap(),
            ));
        }
    }
}

/// `mma_test.cu` (one `mma.sync` m16n8k16 after `cp.async` copies) on integer and on random
/// F16 operands: on a GPU against the emulation, this is the check that the emulation's
/// fragment layouts are the hardware's.
fn mma_outputs<B: Backend>(be: &B, rng: &mut Rng, out: &mut Vec<(String, Vec<f32>)>) {
    for case in 0..4 {
        let mut draw = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    if case < 2 {
                        rng.below(17) as f32 - 8.0
                    } else {
                        // Values exact in F16: multiples of 2^-8 in [-8, 8).
                        ((i * 37 + rng.below(2048)) % 4096) as f32 / 256.0 - 8.0
                    }
                })
                .collect()
        };
        let (a, b, c) = (draw(256), draw(128), draw(128));
        let (a, b, c) = (
            be.upload_f32(&a).unwrap(),
            be.upload_f32(&b).unwrap(),
            be.upload_f32(&c).unwrap(),
        );
        let mut d = be.zeros_f32(128).unwrap();
        let p = MmaTestParams {
            a: input(&a, 0, 256).unwrap(),
            b: input(&b, 0, 128).unwrap(),
            c: input(&c, 0, 128).unwrap(),
            d: output(&mut d, 0, 128).unwrap(),
        };
        let geo = Geometry {
            grid: (1, 1, 1),
            block: (32, 1, 1),
        };
        run(be, Variant::F32, geo, p);
        out.push((format!("mma_test {case}"), be.download_f32(&d).unwrap()));
    }
}

/// Every kernel once through the [`Backend`] trait, on awkward shapes; returns each output.
fn kernel_outputs<B: Backend>(be: &B, dtype: DType) -> Vec<(String, Vec<f32>)> {
    let mut rng = Rng::new(42);
    let mut out = Vec::new();
    mma_outputs(be, &mut rng, &mut out);
    // attend: lengths 0, 1, 33, 70 (and 3, 0, 32, 1), D = 34 (d = 17), over the store.
    let (n, dim) = (5usize, 34usize);
    let n_rows = 60;
    let (bytes, scales) = store_bytes(dtype, &rng.vec(n_rows * dim, 1.0), dim);
    let store = be
        .upload_store(dtype, &bytes, scales.as_deref(), n_rows, dim)
        .unwrap();
    let variant = store_variant(dtype).unwrap();
    attend_outputs(
        be,
        &mut rng,
        &store,
        variant,
        (n_rows, n, dim),
        "base",
        &mut out,
    );
    if dtype == DType::F32 {
        // The F32-only kernels once (they do not read the store).
        combine_outputs(be, &mut rng, &mut out);
        co_fusion_outputs(be, &mut rng, &mut out);
    }

    // score: each mode, 300 candidates for user 0 (more than one 256-block), none for user 1.
    score_outputs(
        be,
        &mut rng,
        &store,
        variant,
        (n_rows, n, dim),
        "base",
        &mut out,
    );
    // Rows of D = 16k values: I8's 128-bit loads (D = 64: 4 chunks, 8 candidates per warp;
    // D = 640: a lane holds two chunks).
    store_kernel_outputs(be, &mut rng, dtype, 64, "D=64", &mut out);
    store_kernel_outputs(be, &mut rng, dtype, 640, "D=640", &mut out);
    out
}

/// `attend_combine` at a middle layer and at the last, h = 2, d = 17, n = 5, 3 users per tower
/// (one empty sequence, one of two chunks), on random partials; each output appended to `out`.
fn combine_outputs<B: Backend>(be: &B, rng: &mut Rng, out: &mut Vec<(String, Vec<f32>)>) {
    let (heads, n, dim, layers, users, chunk_keys) = (2usize, 5usize, 34usize, 3usize, 3usize, 32);
    let (lo, so) = (vec![0i32, 0, 1, 71], vec![0i32, 40, 40, 73]);
    let (lo_d, so_d) = (be.upload_i32(&lo).unwrap(), be.upload_i32(&so).unwrap());
    let seqs = 2 * users;
    let chunks = 3usize;
    let (nd, hnd) = (n * dim, heads * n * dim);
    // Partials: Σ p x of either sign, m in [−4, 4], l in [1, 33).
    let mut part_h = rng.vec(seqs * heads * chunks * n * (dim + 2), 5.0);
    for row in part_h.chunks_exact_mut(dim + 2) {
        row[dim] = rng.symmetric(4.0);
        row[dim + 1] = 17.0 + rng.symmetric(16.0);
    }
    let part = be.upload_f32(&part_h).unwrap();
    let dd = 2 * dim * dim;
    let w = |rng: &mut Rng, len: usize| be.upload_f32(&rng.vec(len, 0.2)).unwrap();
    let (wvt, bv, wot, bo) = (w(rng, dd), w(rng, 2 * dim), w(rng, dd), w(rng, 2 * dim));
    let (wqt, bq, wk) = (w(rng, dd), w(rng, 2 * dim), w(rng, dd));
    let (wmt, bm) = (w(rng, layers * dd), w(rng, 2 * dim));
    for layer in [1usize, 2] {
        let last = layer + 1 == layers;
        let mut scratch = be.zeros_f32(seqs * (hnd + 2 * nd)).unwrap();
        let mut hcat = be
            .upload_f32(&rng.vec(seqs * n * layers * dim, 1.0))
            .unwrap();
        let mut qt = be.zeros_f32(seqs * hnd).unwrap();
        let mut f = be.zeros_f32(seqs * nd).unwrap();
        let some = |b: &B::F, len: usize, on: bool| {
            if on {
                input(b, 0, len).unwrap()
            } else {
                In::from_addr(0)
            }
        };
        let p = AttendCombineParams {
            long_offsets: input(&lo_d, 0, users + 1).unwrap(),
            short_offsets: input(&so_d, 0, users + 1).unwrap(),
            part: input(&part, 0, part_h.len()).unwrap(),
            wvt: input(&wvt, 0, dd).unwrap(),
            bv: input(&bv, 0, 2 * dim).unwrap(),
            wot: input(&wot, 0, dd).unwrap(),
            bo: input(&bo, 0, 2 * dim).unwrap(),
            wqt: some(&wqt, dd, !last),
            bq: some(&bq, 2 * dim, !last),
            wk: some(&wk, dd, !last),
            wmt: some(&wmt, layers * dd, last),
            bm: some(&bm, 2 * dim, last),
            scratch: output(&mut scratch, 0, seqs * (hnd + 2 * nd)).unwrap(),
            hcat: output(&mut hcat, 0, seqs * n * layers * dim).unwrap(),
            qt_next: if last {
                Out::from_addr(0)
            } else {
                output(&mut qt, 0, seqs * hnd).unwrap()
            },
            out: if last {
                output(&mut f, 0, seqs * nd).unwrap()
            } else {
                Out::from_addr(0)
            },
            users: int(users),
            n: int(n),
            dim: int(dim),
            heads: int(heads),
            chunks: int(chunks),
            chunk_keys: int(chunk_keys),
            layer: int(layer),
            layers: int(layers),
        };
        run(
            be,
            Variant::F32,
            launch::attend_combine(seqs, n).unwrap(),
            p,
        );
        let tag = format!("attend_combine layer {layer}");
        out.push((format!("{tag} concat"), be.download_f32(&hcat).unwrap()));
        let result = if last { &f } else { &qt };
        out.push((format!("{tag} output"), be.download_f32(result).unwrap()));
    }
}

/// `co_fusion` with every block kind, 3 users, n = 5, D = 34; its outputs appended to `out`.
fn co_fusion_outputs<B: Backend>(be: &B, rng: &mut Rng, out: &mut Vec<(String, Vec<f32>)>) {
    let (users, n, dim) = (3usize, 5usize, 34usize);
    let bn = users * n;
    let blocks = [0u8, 1, 2, 3, 3];
    let nb = blocks.len();
    let towers = be.upload_f32(&rng.vec(2 * bn * dim, 1.0)).unwrap();
    let co_wt = be.upload_f32(&rng.vec(nb * dim * dim, 0.2)).unwrap();
    let co_b = be.upload_f32(&rng.vec(dim, 0.2)).unwrap();
    let fu_wt = be.upload_f32(&rng.vec(2 * dim * dim, 0.2)).unwrap();
    let fu_b = be.upload_f32(&rng.vec(dim, 0.2)).unwrap();
    let mut fuse = be.upload_f32(&rng.vec(bn * 2 * dim, 1.0)).unwrap();
    let mut cat = be.zeros_f32(bn * nb * dim).unwrap();
    let mut xu = be.zeros_f32(bn * dim).unwrap();
    let p = CoFusionParams {
        towers: input(&towers, 0, 2 * bn * dim).unwrap(),
        cat: output(&mut cat, 0, bn * nb * dim).unwrap(),
        co_wt: input(&co_wt, 0, nb * dim * dim).unwrap(),
        co_b: input(&co_b, 0, dim).unwrap(),
        fuse: output(&mut fuse, 0, bn * 2 * dim).unwrap(),
        fusion_wt: input(&fu_wt, 0, 2 * dim * dim).unwrap(),
        fusion_b: input(&fu_b, 0, dim).unwrap(),
        xu: output(&mut xu, 0, bn * dim).unwrap(),
        users: int(users),
        n: int(n),
        dim: int(dim),
        num_blocks: int(nb),
        block_codes: launch::pack_blocks(&blocks),
    };
    run(
        be,
        Variant::F32,
        launch::co_fusion(users, n, nb).unwrap(),
        p,
    );
    out.push(("co_fusion concat".into(), be.download_f32(&cat).unwrap()));
    out.push((
        "co_fusion fusion input".into(),
        be.download_f32(&fuse).unwrap(),
    ));
    out.push(("co_fusion X^U".into(), be.download_f32(&xu).unwrap()));
}

/// The launches `every_kernel_matches_the_emulation` compares, on the emulation alone: their
/// extents and geometries hold without a GPU (F32, which also runs the F32-only kernels).
#[test]
fn the_compared_launches_run_on_the_emulation() {
    let out = kernel_outputs(&EmuBackend, DType::F32);
    assert!(out
        .iter()
        .any(|(name, _)| name.starts_with("attend_combine")));
    assert!(out.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
}

#[test]
fn every_kernel_matches_the_emulation() {
    let Some(be) = gpu("every_kernel_matches_the_emulation") else {
        return;
    };
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::I8] {
        let got = kernel_outputs(&be, dtype);
        let want = kernel_outputs(&EmuBackend, dtype);
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert_close(g, w, &format!("{name} ({dtype:?})"));
        }
    }
}

#[test]
fn topk_on_the_gpu_is_exact() {
    let Some(be) = gpu("topk_on_the_gpu_is_exact") else {
        return;
    };
    let mut rng = Rng::new(7);
    let users: Vec<Vec<f32>> = vec![
        (0..50_000).map(|_| (rng.below(100) as f32) * 0.5).collect(),
        vec![],
        vec![3.0; 17],
        rng.vec(1000, 5.0),
    ];
    let mut offs = vec![0i32];
    for u in &users {
        offs.push(offs.last().unwrap() + u.len() as i32);
    }
    let flat: Vec<f32> = users.concat();
    let scores = be.upload_f32(&flat).unwrap();
    let offs_d = be.upload_i32(&offs).unwrap();
    for k in [1usize, 10, 1000] {
        let mut pos = be.zeros_i32(users.len() * k).unwrap();
        let mut val = be.zeros_f32(users.len() * k).unwrap();
        let p = TopkParams {
            scores: input(&scores, 0, flat.len()).unwrap(),
            offsets: input(&offs_d, 0, users.len() + 1).unwrap(),
            out_pos: output(&mut pos, 0, users.len() * k).unwrap(),
            out_score: output(&mut val, 0, users.len() * k).unwrap(),
            k: int(k),
        };
        run(&be, Variant::F32, launch::topk(users.len(), k).unwrap(), p);
        let (p, v) = (
            be.download_i32(&pos).unwrap(),
            be.download_f32(&val).unwrap(),
        );
        for (u, s) in users.iter().enumerate() {
            let mut got: Vec<(usize, f32)> = (u * k..(u + 1) * k)
                .filter(|&t| p[t] >= 0)
                .map(|t| (p[t] as usize, v[t]))
                .collect();
            got.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            assert_eq!(got, host_topk(s, k), "user {u} k={k}");
        }
    }
    // The multi-block select the plan runs (the kernel above is its exact fallback).
    multi_block_topk_on(&be);
}

/// The multi-block top-k the plan runs (`topk_hist`, `topk_compact`, `topk_select`) on the GPU:
/// exact on 50,000 scores, both the sorted path and the exact fallback (tests/common/topk.rs) —
/// real concurrency between blocks and real atomics, which the emulation does not have.
/// Part of `topk_on_the_gpu_is_exact` (the test scripts/gpu-check.sh runs and sanitizes).
fn multi_block_topk_on(be: &CudaBackend) {
    common::topk::check_all(
        launch::topk_capacity(common::topk::M),
        |flat, offs, max_m, k| {
            let scores = be.upload_f32(flat).unwrap();
            let offs_d = be.upload_i32(offs).unwrap();
            // SAFETY: the offsets ascend from 0 to `flat.len()`, no user is longer than `max_m`.
            let (pos, val) = unsafe {
                hcn_prerank::cuda::plan::top_k(
                    be,
                    &scores,
                    flat.len(),
                    &offs_d,
                    offs.len() - 1,
                    max_m,
                    k,
                )
            }
            .unwrap();
            (
                be.download_i32(&pos).unwrap(),
                be.download_f32(&val).unwrap(),
            )
        },
    );
}

fn linear(rng: &mut Rng, out_dim: usize, in_dim: usize) -> Linear {
    let scale = 1.0 / (in_dim.max(1) as f32).sqrt();
    Linear {
        weight: rng.vec(out_dim * in_dim, scale),
        bias: rng.vec(out_dim, 0.1),
        out_dim,
        in_dim,
    }
}

fn model(seed: u64, json: &str) -> Model {
    let cfg = HcnConfig::from_json(json).unwrap();
    let mut rng = Rng::new(seed);
    let d = cfg.dim;
    let tower = |rng: &mut Rng| Tower {
        seeds: rng.vec(cfg.interests * d, 1.0),
        layers: (0..cfg.layers)
            .map(|_| AttentionLayer {
                q: linear(rng, d, d),
                k: linear(rng, d, d),
                v: linear(rng, d, d),
                o: linear(rng, d, d),
            })
            .collect(),
        merge: linear(rng, d, cfg.layers * d),
    };
    let long = tower(&mut rng);
    let short = tower(&mut rng);
    let mut mlp = Vec::new();
    if cfg.user_dense > 0 {
        mlp.push(linear(&mut rng, 16, cfg.user_dense));
        mlp.push(linear(&mut rng, d, 16));
    }
    let weights = Weights {
        long,
        short,
        co_interest: linear(&mut rng, d, cfg.co_interest_concat.len() * d),
        user: UserProfile {
            fields: Vec::new(),
            dense: cfg.user_dense,
            mlp,
        },
        fusion: linear(&mut rng, d, 2 * d),
    };
    Model {
        config: cfg,
        weights,
        tensors: Vec::new(),
        path: "in-memory".into(),
        sha256: [0; 32],
        config_json: String::new(),
    }
}

/// An [`ItemStore`] over a temporary file, ids = row numbers.
fn item_store(dtype: DType, values: &[f32], rows: usize, dim: usize, tag: &str) -> ItemStore {
    let path = std::env::temp_dir().join(format!("hcn-cuda-gpu-{}-{tag}.bin", std::process::id()));
    std::fs::write(&path, narrow(dtype, values)).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: the test owns the temporary file and never modifies it while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let _ = std::fs::remove_file(&path);
    ItemStore {
        vectors: MappedMatrix::new(Arc::new(map), 0, rows, dim, dtype).unwrap(),
        index: IdIndex::RowNumber,
        path,
    }
}

#[test]
fn executor_matches_the_emulated_plan_on_the_industrial_shape() {
    if let Err(why) = probe() {
        eprintln!("executor_matches_the_emulated_plan_on_the_industrial_shape: skipped, no usable GPU: {why}");
        return;
    }
    // SPEC §6 "industrial": D 128, n 16, h 4, r 4, ℓ_L 500, ℓ_S 50; F16 stores.
    let m = model(
        5,
        r#"{"format": "hcn/1", "dim": 128, "interests": 16, "heads": 4, "layers": 4,
            "long_len": 500, "short_len": 50, "user_dense": 4}"#,
    );
    let d = 128;
    let mut rng = Rng::new(9);
    let (nt, nc) = (2000usize, 5000usize);
    let tv = rng.vec(nt * d, 1.0);
    let cv = rng.vec(nc * d, 1.0);
    let tokens = item_store(DType::F16, &tv, nt, d, "tok");
    let cands = item_store(DType::F16, &cv, nc, d, "cand");
    let exec = CudaExecutor::new(&m, &tokens, &cands, 0).unwrap();
    eprintln!("running on {}", exec.device_name());

    type Data = (Vec<u32>, Vec<u32>, Vec<f32>, Vec<u32>);
    let data: Vec<Data> = [
        (500usize, 50usize, 3000usize),
        (0, 7, 10),
        (123, 0, 257),
        (600, 60, 1),
    ]
    .iter()
    .map(|&(l, s, c)| {
        (
            (0..l).map(|_| rng.below(nt) as u32).collect(),
            (0..s).map(|_| rng.below(nt) as u32).collect(),
            hcn_prerank::reference::profile(&m, &[], &rng.vec(4, 1.0)),
            (0..c).map(|_| rng.below(nc) as u32).collect(),
        )
    })
    .collect();
    let inputs: Vec<UserInput<'_>> = data
        .iter()
        .map(|(l, s, dense, c)| UserInput {
            long_rows: l,
            short_rows: s,
            profile: dense,
            candidate_rows: c,
        })
        .collect();
    let k = 100;
    let got: Vec<UserOutput> = exec.run_batch(&inputs, k).unwrap();
    let emu = Plan::new(
        EmuBackend,
        &m,
        StoreSource::from_store(&tokens),
        StoreSource::from_store(&cands),
    )
    .unwrap();
    let want = emu.run_batch(&inputs, k).unwrap();
    for (u, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&g.interests, &w.interests, &format!("X^U user {u}"));
        assert_close(&g.scores, &w.scores, &format!("scores user {u}"));
        assert_eq!(g.top_k, host_topk(&g.scores, k), "top-k user {u}");
    }
}

/// The whole engine on the GPU (front end, the CUDA executor, post-processing) against the f64
/// reference engine on SPEC §6's industrial model (synthetic weights, F16 stores) with full
/// sequences and 50,000 candidates per request: scores and `X^U` within SPEC §5's GPU tolerance,
/// and the GPU's top-k exactly the best of its own scores in the one order. The industrial shape
/// on the GPU without the emulation's minutes.
#[test]
fn gpu_engine_matches_the_reference_on_the_industrial_profile() {
    use hcn_prerank::synth::{ensure_profile_files, Profile};
    use hcn_prerank::{
        CpuKernels, Device, Engine, EngineOptions, Request, RunOptions, UserRequest,
    };
    if let Err(why) = probe() {
        eprintln!(
            "gpu_engine_matches_the_reference_on_the_industrial_profile: skipped, no usable GPU: {why}"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("hcn-cuda-gpu-industrial-{}", std::process::id()));
    let (m, t, c) = ensure_profile_files(&dir, Profile::Industrial, 60_000, DType::F16).unwrap();
    let load = |o: EngineOptions| Engine::load(&m, &t, &c, o).unwrap();
    let gpu = load(EngineOptions {
        device: Device::Cuda(0),
        ..Default::default()
    });
    let reference = load(EngineOptions {
        kernels: CpuKernels::Reference,
        ..Default::default()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = gpu.model().config.clone();
    let mut rng = Rng::new(23);
    let ids = |count: usize, rng: &mut Rng| -> Vec<u64> {
        (0..count).map(|_| rng.below(60_000) as u64).collect()
    };
    let requests: Vec<Request> = (0..4)
        .map(|_| Request {
            user: UserRequest {
                long: ids(cfg.long_len, &mut rng),
                short: ids(cfg.short_len, &mut rng),
                fields: cfg
                    .user_fields
                    .iter()
                    .map(|f| (f.name.clone(), rng.below(f.vocab) as u64))
                    .collect(),
                dense: rng.vec(cfg.user_dense, 1.0),
            },
            candidates: ids(50_000, &mut rng),
        })
        .collect();
    let k = 1000;
    let opts = RunOptions {
        top_k: Some(k),
        ..Default::default()
    };
    let calls: Vec<(&Request, &RunOptions)> = requests.iter().map(|r| (r, &opts)).collect();
    let got = gpu.run_batch_with(&calls);
    let want = reference.run_batch_with(&calls);
    for (u, (g, w)) in got.into_iter().zip(want).enumerate() {
        let (g, w) = (g.unwrap(), w.unwrap());
        let flat = |s: &[Option<f32>]| -> Vec<f32> { s.iter().map(|v| v.unwrap()).collect() };
        let (gs, ws) = (flat(&g.scores), flat(&w.scores));
        assert_close(&gs, &ws, &format!("scores of request {u}"));
        assert_close(
            &g.interests.as_ref().unwrap().values,
            &w.interests.as_ref().unwrap().values,
            &format!("X^U of request {u}"),
        );
        let top: Vec<(usize, f32)> = g.top_k.iter().map(|s| (s.position, s.score)).collect();
        assert_eq!(top, host_topk(&gs, k), "top-k of request {u}");
    }
}

/// One user's inputs for [`user_inputs`]: long rows, short rows, the profile vector `X̂`,
/// candidates.
type UserData = (Vec<u32>, Vec<u32>, Vec<f32>, Vec<u32>);

fn user_inputs(batch: &[UserData]) -> Vec<UserInput<'_>> {
    batch
        .iter()
        .map(|(l, s, dense, c)| UserInput {
            long_rows: l,
            short_rows: s,
            profile: dense,
            candidate_rows: c,
        })
        .collect()
}

fn check_outputs(got: &[UserOutput], want: &[UserOutput], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: users");
    for (u, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(&g.interests, &w.interests, &format!("{what}: X^U user {u}"));
        assert_close(&g.scores, &w.scores, &format!("{what}: scores user {u}"));
        assert_eq!(g.top_k, host_topk(&g.scores, k), "{what}: top-k user {u}");
    }
}

/// The pinned staging of `device.rs`: a batch larger than the first pinned allocation (4096
/// elements) makes the buffers grow, a smaller one after it reuses them, and two threads running
/// batches at once each take their own staging area from the pool; every result matches the
/// emulated plan.
#[test]
fn pinned_staging_is_reused_across_batch_sizes_and_threads() {
    if let Err(why) = probe() {
        eprintln!("pinned_staging_is_reused_across_batch_sizes_and_threads: skipped, no usable GPU: {why}");
        return;
    }
    let m = model(
        11,
        r#"{"format": "hcn/1", "dim": 32, "interests": 4, "heads": 2, "layers": 2,
            "long_len": 64, "short_len": 16, "user_dense": 3}"#,
    );
    let d = 32;
    let mut rng = Rng::new(13);
    let (nt, nc) = (500usize, 20_000usize);
    let tv = rng.vec(nt * d, 1.0);
    let cv = rng.vec(nc * d, 1.0);
    let tokens = item_store(DType::F32, &tv, nt, d, "pin-tok");
    let cands = item_store(DType::BF16, &cv, nc, d, "pin-cand");
    let exec = CudaExecutor::new(&m, &tokens, &cands, 0).unwrap();
    let emu = Plan::new(
        EmuBackend,
        &m,
        StoreSource::from_store(&tokens),
        StoreSource::from_store(&cands),
    )
    .unwrap();
    // Per user: (long, short, candidates). Batch 1 needs 10,000 candidate rows and scores.
    let shapes: [&[(usize, usize, usize)]; 3] = [
        &[(10, 3, 50)],
        &[(64, 16, 6000), (0, 0, 0), (70, 5, 4000)],
        &[(5, 1, 7), (1, 0, 3)],
    ];
    let batches: Vec<Vec<UserData>> = shapes
        .iter()
        .map(|users| {
            users
                .iter()
                .map(|&(l, s, c)| {
                    (
                        (0..l).map(|_| rng.below(nt) as u32).collect(),
                        (0..s).map(|_| rng.below(nt) as u32).collect(),
                        hcn_prerank::reference::profile(&m, &[], &rng.vec(3, 1.0)),
                        (0..c).map(|_| rng.below(nc) as u32).collect(),
                    )
                })
                .collect()
        })
        .collect();
    let k = 50;
    let want: Vec<Vec<UserOutput>> = batches
        .iter()
        .map(|b| emu.run_batch(&user_inputs(b), k).unwrap())
        .collect();
    for round in 0..2 {
        for (i, b) in batches.iter().enumerate() {
            let got = exec.run_batch(&user_inputs(b), k).unwrap();
            check_outputs(&got, &want[i], k, &format!("round {round} batch {i}"));
        }
    }
    std::thread::scope(|scope| {
        for t in 0..2 {
            let (exec, batches, want) = (&exec, &batches, &want);
            scope.spawn(move || {
                for round in 0..3 {
                    for (i, b) in batches.iter().enumerate().rev() {
                        let got = exec.run_batch(&user_inputs(b), k).unwrap();
                        let what = format!("thread {t} round {round} batch {i}");
                        check_outputs(&got, &want[i], k, &what);
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------- the parity fixtures

mod common;

#[test]
fn parity_fixtures_pass_on_the_gpu() {
    if let Err(why) = probe() {
        eprintln!("parity_fixtures_pass_on_the_gpu: skipped, no usable GPU: {why}");
        return;
    }
    let cases = common::cases();
    assert!(!cases.is_empty(), "tests/fixtures has parity cases");
    let mut i8_cases = 0;
    for case in &cases {
        let model = hcn_prerank::Model::load(&case.model).unwrap();
        let tokens = ItemStore::load(&case.tokens).unwrap();
        let cands = ItemStore::load(&case.candidates).unwrap();
        if [&tokens, &cands]
            .iter()
            .any(|s| s.vectors.dtype() == DType::I8)
        {
            i8_cases += 1;
        }
        let exec = CudaExecutor::new(&model, &tokens, &cands, 0).unwrap();
        let resps = common::run_fixture(
            |u, k| exec.run_batch(u, k),
            &model,
            &tokens,
            &cands,
            &case.requests,
            case.top_k,
        );
        common::check_case("GPU", case, &resps, TOL);
    }
    // The `*_i8` cases ran through the I8 kernels (attend_i8 / attend_mma_i8, score_mma_i8 / score_i8).
    assert!(i8_cases >= 1, "no parity case has an I8 store");
}

/// The per-kernel timing switch on the GPU: CUDA events around every launch, read after the
/// batch's synchronisation; every launch of every batch counted, each time positive, and the
/// kernels' sum within the batch's span (the span also holds the gaps between launches).
#[test]
fn kernel_timing_events_on_the_gpu() {
    if let Err(why) = probe() {
        eprintln!("kernel_timing_events_on_the_gpu: skipped, no usable GPU: {why}");
        return;
    }
    let m = model(
        17,
        r#"{"format": "hcn/1", "dim": 64, "interests": 8, "heads": 4, "layers": 3,
            "long_len": 100, "short_len": 20, "user_dense": 2}"#,
    );
    let d = 64;
    let mut rng = Rng::new(19);
    let (nt, nc) = (1000usize, 30_000usize);
    let tv = rng.vec(nt * d, 1.0);
    let cv = rng.vec(nc * d, 1.0);
    let tokens = item_store(DType::F16, &tv, nt, d, "timing-tok");
    let cands = item_store(DType::F16, &cv, nc, d, "timing-cand");
    let exec = CudaExecutor::new(&m, &tokens, &cands, 0).unwrap();
    let batch: Vec<UserData> = (0..4)
        .map(|_| {
            (
                (0..100).map(|_| rng.below(nt) as u32).collect(),
                (0..20).map(|_| rng.below(nt) as u32).collect(),
                hcn_prerank::reference::profile(&m, &[], &rng.vec(2, 1.0)),
                (0..20_000).map(|_| rng.below(nc) as u32).collect(),
            )
        })
        .collect();
    let k = 100;
    // Off by default: nothing recorded.
    exec.run_batch(&user_inputs(&batch), k).unwrap();
    assert_eq!(exec.kernel_times().batches, 0);
    exec.set_kernel_timing(true);
    let timed = 3;
    for _ in 0..timed {
        exec.run_batch(&user_inputs(&batch), k).unwrap();
    }
    let t = exec.kernel_times();
    exec.set_kernel_timing(false);
    eprintln!("{}", serde_json::to_string_pretty(&t).unwrap());
    assert_eq!(t.batches, timed);
    assert_eq!(t.dropped, 0);
    let launches: u64 = t.kernels.iter().map(|k| k.stat.count).sum();
    // 2r + 5 per batch (r = 3): attend and attend_combine per layer, co_fusion, score, top-k's
    // three.
    assert_eq!(launches, timed * (2 * 3 + 5));
    for kt in &t.kernels {
        assert!(
            kt.stat.min_us > 0.0,
            "{} at {}: {:?}",
            kt.kernel,
            kt.site,
            kt.stat
        );
    }
    let sum: f64 = t.kernels.iter().map(|k| k.per_batch_us).sum();
    assert!(
        sum <= t.span.mean_us * 1.01 + 1.0,
        "kernels {sum} µs in a span of {} µs",
        t.span.mean_us
    );
    assert!(t
        .kernels
        .iter()
        .any(|k| k.kernel == "score_mma_f16" && k.site == "score"));
}
