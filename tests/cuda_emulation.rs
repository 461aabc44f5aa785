//! Runs every CUDA kernel on the CPU — the same `kernels/*.cu` sources compiled for the host with
//! `kernels/emu/cuda_emu.h` (threads as OS threads, real barriers and warp shuffles) — and checks
//! each against a plain f64 reference of SPEC §1 on awkward shapes: empty and length-1
//! sequences, lengths and counts that are not multiples of the warp (32), the tile (32) or the
//! score block (256), n = 1, D not a multiple of 32, F32/F16/BF16/I8 stores (I8 both with
//! 16-byte aligned rows, the 128-bit-load path, and without), every score mode, top-k with ties;
//! the tensor-core scoring kernel (`score_mma_{f16,i8}`) and the emulated `mma.sync` itself
//! against a plain matrix product. Tolerance: SPEC §5 GPU, `2e-3 · (1 + |ref|)`.
//! Finally the whole GPU plan runs end to end on the emulation against a reference model.
#![cfg(feature = "cuda-emulation")]

use half::{bf16, f16};
use hcn_prerank::cuda::abi::{
    AttendCombineParams, AttendMmaParams, AttendParams, CoFusionParams, KernelDesc, KernelParams,
    MmaTestParams, ScoreMmaParams, ScoreMode, ScoreParams, TopkParams, Variant, SCORE_MODES,
};
use hcn_prerank::cuda::backend::{input, output, store_variant, Backend};
use hcn_prerank::cuda::emu::{EmuBackend, EmuStore};
use hcn_prerank::cuda::launch::{self, Geometry};
use hcn_prerank::cuda::{Plan, StoreSource, UserInput};
use hcn_prerank::tensor::{narrow, quantize_row, DType};

const TOL: f64 = 2e-3;

use hcn_prerank::rng::SplitMix64 as Rng;

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= TOL * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, reference {w} (|err| = {err:e})"
        );
    }
}

/// A store of `rows × dim` `values` in `dtype`: its `vectors` bytes, its `scales` bytes (I8:
/// each row quantized by SPEC §3's rule, `tensor::quantize_row`), and the row values exactly as
/// SPEC §3 defines them (float dtypes widened exactly; I8 `f64(scale) · q`, the reference's).
struct TestStore {
    bytes: Vec<u8>,
    scales: Option<Vec<u8>>,
    exact: Vec<f64>,
    /// I8: the rows as the gather defines them, `scale · q` as the F32 product (the CPU's
    /// `gather_rows`); the float dtypes: `exact`.
    gathered: Vec<f64>,
}

fn test_store(dtype: DType, values: &[f32], dim: usize) -> TestStore {
    if dtype != DType::I8 {
        let exact: Vec<f64> = values
            .iter()
            .map(|&v| match dtype {
                DType::F16 => f64::from(f16::from_f32(v).to_f32()),
                DType::BF16 => f64::from(bf16::from_f32(v).to_f32()),
                _ => f64::from(v),
            })
            .collect();
        return TestStore {
            bytes: narrow(dtype, values),
            scales: None,
            gathered: exact.clone(),
            exact,
        };
    }
    let (mut bytes, mut scales, mut exact, mut gathered) = (vec![], vec![], vec![], vec![]);
    let mut q = vec![0i8; dim];
    for row in values.chunks_exact(dim) {
        let sc = quantize_row(row, &mut q);
        bytes.extend(q.iter().map(|&v| v as u8));
        scales.extend(sc.to_le_bytes());
        exact.extend(q.iter().map(|&v| f64::from(sc) * f64::from(v)));
        gathered.extend(q.iter().map(|&v| f64::from(f32::from(v) * sc)));
    }
    TestStore {
        bytes,
        scales: Some(scales),
        exact,
        gathered,
    }
}

impl TestStore {
    fn source(&self, dtype: DType, rows: usize, dim: usize) -> StoreSource<'_> {
        StoreSource {
            dtype,
            bytes: &self.bytes,
            scales: self.scales.as_deref(),
            rows,
            dim,
        }
    }
}

/// The emulated store of `values`, and the test store it was made from.
fn store(dtype: DType, values: &[f32], rows: usize, dim: usize) -> (EmuStore, TestStore) {
    let t = test_store(dtype, values, dim);
    let st = EmuStore::from_bytes(dtype, &t.bytes, t.scales.as_deref(), rows, dim).unwrap();
    // 16-byte aligned rows: with D a multiple of 16, I8 takes the 128-bit-load path.
    assert_eq!(EmuBackend.store_rows(&st).addr() % 16, 0);
    (st, t)
}

const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I8];

/// A malformed I8 store (SPEC §3's rules, as the store loader applies them to files) is refused
/// with a typed error before anything is uploaded, by the backend and by the plan, never
/// misread; and a well-formed one is accepted by both.
#[test]
fn malformed_i8_stores_are_refused_with_a_typed_error() {
    let scales = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|s| s.to_le_bytes()).collect() };
    let q = [1u8, 2, 3, 4];
    let good = scales(&[0.5, 0.25]);
    /// (what is wrong, dtype, vectors, scales) of a 2 × 2 store.
    type Bad = (&'static str, DType, Vec<u8>, Option<Vec<u8>>);
    let cases: Vec<Bad> = vec![
        ("missing", DType::I8, q.to_vec(), None),
        ("short", DType::I8, q.to_vec(), Some(scales(&[0.5]))),
        (
            "long",
            DType::I8,
            q.to_vec(),
            Some(scales(&[0.5, 0.5, 0.5])),
        ),
        (
            "negative",
            DType::I8,
            q.to_vec(),
            Some(scales(&[0.5, -0.25])),
        ),
        ("NaN", DType::I8, q.to_vec(), Some(scales(&[f32::NAN, 0.5]))),
        (
            "infinite",
            DType::I8,
            q.to_vec(),
            Some(scales(&[0.5, f32::INFINITY])),
        ),
        ("-128", DType::I8, vec![1, 2, 0x80, 4], Some(good.clone())),
        (
            "overflow",
            DType::I8,
            vec![1, 127, 3, 4],
            Some(scales(&[f32::MAX / 100.0, 1.0])),
        ),
        (
            "F16 with scales",
            DType::F16,
            vec![0; 8],
            Some(good.clone()),
        ),
    ];
    for (what, dtype, bytes, sc) in &cases {
        let r = EmuStore::from_bytes(*dtype, bytes, sc.as_deref(), 2, 2);
        assert!(
            matches!(r, Err(hcn_prerank::Error::Misuse { ref what, .. }) if what == "store scales"),
            "{what}: {:?}",
            r.err()
        );
    }
    // The plan refuses it the same way (it uploads through the backend).
    let m = model::build(
        3,
        r#"{"format": "hcn/1", "dim": 2, "interests": 1, "heads": 1, "layers": 1,
            "long_len": 4, "short_len": 4}"#,
    );
    let bad = StoreSource {
        dtype: DType::I8,
        bytes: &q,
        scales: None,
        rows: 2,
        dim: 2,
    };
    let ok = StoreSource {
        scales: Some(&good),
        ..bad
    };
    for (t, c) in [(bad, ok), (ok, bad)] {
        let err = Plan::new(EmuBackend, &m, t, c).unwrap_err();
        assert!(matches!(err, hcn_prerank::Error::Misuse { .. }), "{err}");
    }
    let plan = Plan::new(EmuBackend, &m, ok, ok).unwrap();
    assert_eq!(plan.candidate_store().dtype, DType::I8);
}

/// Launches `p` on the emulation. Every address in these tests' parameter structs comes from
/// `input` / `output` with the extent the kernel touches, and the buffers outlive the launch.
fn run<P: KernelParams>(variant: Variant, geo: Geometry, p: P) -> hcn_prerank::Result<()> {
    // SAFETY: see above.
    unsafe { EmuBackend.launch(variant, &geo, &p) }
}

fn int(v: usize) -> i32 {
    i32::try_from(v).unwrap()
}

// ---------------------------------------------------------------- naive f64 references

fn ref_linear(
    x: &[f64],
    rows: usize,
    in_dim: usize,
    w: &[f32],
    b: &[f32],
    out_dim: usize,
    relu: bool,
) -> Vec<f64> {
    let mut y = vec![0.0; rows * out_dim];
    for r in 0..rows {
        for o in 0..out_dim {
            let mut s = f64::from(b[o]);
            for i in 0..in_dim {
                s += x[r * in_dim + i] * f64::from(w[o * in_dim + i]);
            }
            y[r * out_dim + o] = if relu && s < 0.0 { 0.0 } else { s };
        }
    }
    y
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// SPEC §1.2 attention core for one user: q n × D, k/v L × D → n × D.
fn ref_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    n: usize,
    len: usize,
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let dim = heads * d;
    let mut out = vec![0.0; n * dim];
    if len == 0 {
        return out;
    }
    for h in 0..heads {
        for i in 0..n {
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d)
                        .map(|c| q[i * dim + h * d + c] * k[j * dim + h * d + c])
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let a = softmax(&s);
            for c in 0..d {
                out[i * dim + h * d + c] = (0..len).map(|j| a[j] * v[j * dim + h * d + c]).sum();
            }
        }
    }
    out
}

/// SPEC §1.3 for one user: returns (L̃, S̃).
fn ref_co_interest(l: &[f64], s: &[f64], n: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
    let e: Vec<f64> = (0..n * n)
        .map(|t| {
            (0..dim)
                .map(|c| l[(t / n) * dim + c] * s[(t % n) * dim + c])
                .sum()
        })
        .collect();
    let mut lt = vec![0.0; n * dim];
    let mut st = vec![0.0; n * dim];
    for i in 0..n {
        let a = softmax(&e[i * n..(i + 1) * n]);
        for c in 0..dim {
            lt[i * dim + c] = (0..n).map(|j| a[j] * s[j * dim + c]).sum();
        }
    }
    for j in 0..n {
        let col: Vec<f64> = (0..n).map(|i| e[i * n + j]).collect();
        let a = softmax(&col);
        for c in 0..dim {
            st[j * dim + c] = (0..n).map(|i| a[i] * l[i * dim + c]).sum();
        }
    }
    (lt, st)
}

/// SPEC §1.5 for one candidate vector x.
fn ref_score(xu: &[f64], n: usize, x: &[f64], mode: ScoreMode) -> f64 {
    let dim = x.len();
    let s: Vec<f64> = (0..n)
        .map(|j| (0..dim).map(|c| xu[j * dim + c] * x[c]).sum())
        .collect();
    match mode {
        ScoreMode::Softmax => softmax(&s).iter().zip(&s).map(|(a, v)| a * v).sum(),
        ScoreMode::Max => s.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ScoreMode::Mean => s.iter().sum::<f64>() / n as f64,
    }
}

fn ref_topk(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // The engine's one order (SPEC §1.5; -0.0 = +0.0, NaN last), shared by every executor.
    idx.sort_by(|&a, &b| hcn_prerank::post::better(scores[a], scores[b], a, b));
    idx.into_iter().take(k).map(|i| (i, scores[i])).collect()
}

fn offsets(lens: &[usize]) -> Vec<i32> {
    let mut o = vec![0i32];
    for &l in lens {
        o.push(o.last().unwrap() + l as i32);
    }
    o
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

// ---------------------------------------------------------------- kernels one by one

/// What guards a launch without a GPU: an extent outside its buffer (`input`, `output`), an
/// entry point the kernels do not have, a parameter struct of another size than the kernel's.
/// (Rows outside a store are the plan's to refuse: `plan_rejects_rows_outside_the_stores`.)
#[test]
fn launches_reject_bad_extents_unknown_entry_points_and_foreign_structs() {
    let x = vec![0.0f32; 4];
    let mut y = vec![0.0f32; 4];
    assert!(input(&x, 0, 4).is_ok() && input(&x, 4, 0).is_ok());
    assert!(input(&x, 2, 3).is_err() && input(&x, 5, 0).is_err());
    assert!(output(&mut y, usize::MAX, 2).is_err());

    let offs = vec![0i32, 2, 4];
    let mut pos = vec![0i32; 2];
    let p = TopkParams {
        scores: input(&x, 0, 4).unwrap(),
        offsets: input(&offs, 0, 3).unwrap(),
        out_pos: output(&mut pos, 0, 2).unwrap(),
        out_score: output(&mut y, 0, 2).unwrap(),
        k: 1,
    };
    let f16 = Variant::for_store("F16").unwrap();
    let err = run(f16, launch::topk(2, 1).unwrap(), p).unwrap_err();
    assert!(err.to_string().contains("no kernel `topk_f16`"), "{err}");

    /// Claims to be `topk`'s parameters but is smaller.
    #[derive(Clone, Copy)]
    #[repr(C)]
    struct Foreign {
        x: u64,
    }
    // SAFETY: repr(C) plain data; the test checks that the emulation refuses it.
    unsafe impl KernelParams for Foreign {
        const DESC: &'static KernelDesc = TopkParams::DESC;
        fn rust_layout() -> (usize, Vec<usize>) {
            (8, vec![0])
        }
    }
    let err = run(Variant::F32, launch::topk(2, 1).unwrap(), Foreign { x: 0 }).unwrap_err();
    assert!(
        err.to_string().contains("different parameter struct"),
        "{err}"
    );
    run(Variant::F32, launch::topk(2, 1).unwrap(), p).unwrap();
}

/// `Wᵀ` (`in × out`) of a row-major `[out, in]` weight, as the plan uploads it.
fn transpose(w: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for o in 0..out_dim {
        for i in 0..in_dim {
            t[i * out_dim + o] = w[o * in_dim + i];
        }
    }
    t
}

/// `attend`: the flash-decoding partials of every (sequence of both towers, head, key chunk)
/// straight over the token store, every dtype (I8: `scale · q`), against f64: empty and
/// length-1 sequences, lengths around the tile (32) and the chunk, chunks of 1 to 3 tiles,
/// n = 1 and n = 64, D under one slab (64), between and over two; Q̃ per user or shared by all
/// (layer 0). Slots of chunks past a sequence's end are never written. Both kernels: attend.cu
/// for every case, and attend_mma.cu (tensor cores) for the F16 and I8 stores where the model
/// fits (`launch::attend_mma_fits`: n of 1, 2, 3 and 4 m-tiles, D from 16 to 256).
#[test]
fn attend_partials_match_reference() {
    let mut rng = Rng::new(3);
    // (heads, D, n, chunk_keys, long lengths, short lengths, shared Q̃)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        &'static [usize],
        &'static [usize],
        bool,
    );
    let cases: &[Case] = &[
        (2, 34, 5, 32, &[0, 1, 31, 33, 70], &[3, 0, 32, 1, 64], false),
        (3, 96, 1, 64, &[2, 0, 129], &[65, 64, 0], true),
        (1, 5, 4, 32, &[1], &[0], false),
        (4, 48, 9, 96, &[200, 0, 7], &[95, 97, 1], true),
        (1, 130, 64, 32, &[40], &[33], false),
        (2, 32, 5, 32, &[0, 1, 31, 33, 70], &[3, 0, 32, 1, 64], false),
        (1, 128, 16, 64, &[200, 1], &[0, 65], false),
        (1, 256, 3, 32, &[40], &[17], true),
        (2, 128, 17, 32, &[33], &[0], false),
        (1, 80, 33, 64, &[70], &[16], false),
        (1, 64, 64, 32, &[40], &[33], false),
        (1, 16, 2, 32, &[1], &[5], false),
    ];
    let mut mma_runs = 0;
    for (dtype, mma) in DTYPES.into_iter().flat_map(|d| [(d, false), (d, true)]) {
        let variant = store_variant(dtype).unwrap();
        for &(heads, dim, n, chunk_keys, long, short, shared) in cases {
            if mma && !(variant.has_mma() && launch::attend_mma_fits(n, dim)) {
                continue;
            }
            let users = long.len();
            let seqs = 2 * users;
            let n_rows = 50;
            let (st, ts) = store(dtype, &rng.vec(n_rows * dim, 1.0), n_rows, dim);
            let (lo, so) = (offsets(long), offsets(short));
            let rows = |o: &[i32], rng: &mut Rng| -> Vec<u32> {
                (0..*o.last().unwrap())
                    .map(|_| rng.below(n_rows) as u32)
                    .collect()
            };
            let (lr, sr) = (rows(&lo, &mut rng), rows(&so, &mut rng));
            let hnd = heads * n * dim;
            let qt = rng.vec(if shared { 2 * hnd } else { seqs * hnd }, 0.3);
            let (tower_stride, user_stride) = if shared { (hnd, 0) } else { (users * hnd, hnd) };
            let max_len = long.iter().chain(short).copied().max().unwrap();
            let chunks = max_len.div_ceil(chunk_keys);
            let ldp = dim + 2;
            let part_len = seqs * heads * chunks * n * ldp;
            let mut part = vec![f32::NAN; part_len];
            let p = AttendParams {
                store: EmuBackend.store_rows(&st),
                scales: EmuBackend.store_scales(&st),
                long_rows: input(&lr, 0, lr.len()).unwrap(),
                long_offsets: input(&lo, 0, users + 1).unwrap(),
                short_rows: input(&sr, 0, sr.len()).unwrap(),
                short_offsets: input(&so, 0, users + 1).unwrap(),
                qt: input(&qt, 0, qt.len()).unwrap(),
                part: output(&mut part, 0, part_len).unwrap(),
                qt_tower_stride: tower_stride as i64,
                qt_user_stride: user_stride as i64,
                users: int(users),
                n: int(n),
                dim: int(dim),
                heads: int(heads),
                chunks: int(chunks),
                chunk_keys: int(chunk_keys),
            };
            if mma {
                let geo = launch::attend_mma(chunks, heads, seqs, n, dim).unwrap();
                run(variant, geo, AttendMmaParams::from(p)).unwrap();
                mma_runs += 1;
            } else {
                let geo = launch::attend(chunks, heads, seqs, n).unwrap();
                run(variant, geo, p).unwrap();
            }
            for s in 0..seqs {
                let (tower, u) = (s / users, s % users);
                let (o, r) = if tower == 0 { (&lo, &lr) } else { (&so, &sr) };
                let seq = &r[o[u] as usize..o[u + 1] as usize];
                for k in 0..heads {
                    let q = &qt[tower * tower_stride + u * user_stride + k * n * dim..];
                    for c in 0..chunks {
                        let keys = &seq[(c * chunk_keys).min(seq.len())
                            ..((c + 1) * chunk_keys).min(seq.len())];
                        let at = ((s * heads + k) * chunks + c) * n * ldp;
                        let got = &part[at..at + n * ldp];
                        let what = format!(
                            "attend{} {dtype:?} h={heads} D={dim} n={n} keys/chunk={chunk_keys} \
                             seq {s} (L={}) head {k} chunk {c}",
                            if mma { "_mma" } else { "" },
                            seq.len()
                        );
                        if keys.is_empty() {
                            assert!(got.iter().all(|v| v.is_nan()), "{what}: written");
                            continue;
                        }
                        let x = |t: usize, col: usize| ts.gathered[keys[t] as usize * dim + col];
                        for i in 0..n {
                            let sc: Vec<f64> = (0..keys.len())
                                .map(|t| {
                                    (0..dim)
                                        .map(|col| f64::from(q[i * dim + col]) * x(t, col))
                                        .sum()
                                })
                                .collect();
                            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                            let mut want: Vec<f64> = (0..dim)
                                .map(|col| (0..keys.len()).map(|t| e[t] * x(t, col)).sum())
                                .collect();
                            want.push(m);
                            want.push(e.iter().sum());
                            assert_close(
                                &got[i * ldp..(i + 1) * ldp],
                                &want,
                                &format!("{what} row {i}"),
                            );
                        }
                    }
                }
            }
        }
    }
    assert_eq!(mma_runs, 2 * 9, "attend_mma cases (F16, I8)");
}

/// Both attention kernels on a Q̃ with a non-finite value in one query row: that row's partials
/// are not finite (its max, Σ exp and Σ p x: the finiteness rule sees it downstream), the
/// other rows are finite and the two kernels agree on them (F16 and I8 token stores, two chunks
/// of which the second is partial).
#[test]
fn attend_kernels_agree_on_a_non_finite_query_row() {
    let mut rng = Rng::new(21);
    let (heads, dim, n, chunk_keys, n_rows) = (1usize, 32usize, 3usize, 32usize, 20usize);
    let (lo, so) = (offsets(&[45]), offsets(&[7]));
    let chunks = 2;
    for (dtype, bad) in [(DType::F16, f32::NAN), (DType::I8, f32::INFINITY)] {
        let (st, _) = store(dtype, &rng.vec(n_rows * dim, 1.0), n_rows, dim);
        let variant = store_variant(dtype).unwrap();
        let rows = |o: &[i32], rng: &mut Rng| -> Vec<u32> {
            (0..*o.last().unwrap())
                .map(|_| rng.below(n_rows) as u32)
                .collect()
        };
        let (lr, sr) = (rows(&lo, &mut rng), rows(&so, &mut rng));
        let mut qt = rng.vec(2 * n * dim, 0.3);
        qt[dim + 5] = bad; // long tower, row 1
        qt[n * dim + dim + 5] = bad; // short tower, row 1
        let ldp = dim + 2;
        let part_len = 2 * heads * chunks * n * ldp;
        let mut outs = Vec::new();
        for mma in [false, true] {
            let mut part = vec![0.0f32; part_len];
            let p = AttendParams {
                store: EmuBackend.store_rows(&st),
                scales: EmuBackend.store_scales(&st),
                long_rows: input(&lr, 0, lr.len()).unwrap(),
                long_offsets: input(&lo, 0, 2).unwrap(),
                short_rows: input(&sr, 0, sr.len()).unwrap(),
                short_offsets: input(&so, 0, 2).unwrap(),
                qt: input(&qt, 0, qt.len()).unwrap(),
                part: output(&mut part, 0, part_len).unwrap(),
                qt_tower_stride: (n * dim) as i64,
                qt_user_stride: 0,
                users: 1,
                n: int(n),
                dim: int(dim),
                heads: int(heads),
                chunks: int(chunks),
                chunk_keys: int(chunk_keys),
            };
            if mma {
                let geo = launch::attend_mma(chunks, heads, 2, n, dim).unwrap();
                run(variant, geo, AttendMmaParams::from(p)).unwrap();
            } else {
                let geo = launch::attend(chunks, heads, 2, n).unwrap();
                run(variant, geo, p).unwrap();
            }
            outs.push(part);
        }
        // Blocks: (seq 0, chunk 0), (seq 0, chunk 1), (seq 1, chunk 0); seq 1 has one chunk.
        for block in 0..3 {
            for i in 0..n {
                let at = (block * n + i) * ldp;
                let what = format!("{dtype:?} block {block} row {i}");
                let (a, b) = (&outs[0][at..at + ldp], &outs[1][at..at + ldp]);
                if i == 1 {
                    for (k, v) in [a, b].iter().enumerate() {
                        assert!(!v[dim + 1].is_finite(), "{what} kernel {k}: Σ exp {v:?}");
                        assert!(v[..dim].iter().all(|x| !x.is_finite()), "{what} kernel {k}");
                    }
                } else {
                    assert!(a.iter().chain(b).all(|x| x.is_finite()), "{what}");
                    let want: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
                    assert_close(b, &want, &what);
                }
            }
        }
    }
}

/// `attend_combine`: the combine of chunk partials into `A_k X`, `Wv`, `Wo` into the concat,
/// and the next layer's `Q̃` or (last layer) the merge, per sequence of both towers, against
/// f64; partials of chunks past a sequence's end are NaN (never read), an empty sequence's
/// head outputs are zero (`H_l = bo_l`), the concat's other column blocks are kept.
#[test]
fn attend_combine_matches_reference() {
    let mut rng = Rng::new(8);
    // (heads, D, n, layers, layer, chunk_keys, long lengths, short lengths)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        &'static [usize],
        &'static [usize],
    );
    let cases: &[Case] = &[
        (2, 34, 5, 3, 0, 32, &[0, 1, 70], &[40, 0, 33]),
        (2, 34, 5, 3, 2, 32, &[0, 1, 70], &[40, 0, 33]),
        (4, 48, 3, 2, 1, 64, &[100, 5], &[0, 64]),
        (4, 48, 3, 2, 0, 96, &[100, 5], &[0, 200]),
        (1, 8, 1, 1, 0, 32, &[1], &[0]),
        (3, 12, 7, 4, 1, 32, &[9, 0, 33, 64], &[1, 2, 3, 4]),
    ];
    for &(heads, dim, n, layers, layer, chunk_keys, long, short) in cases {
        let (d, users) = (dim / heads, long.len());
        let seqs = 2 * users;
        let last = layer + 1 == layers;
        let (lo, so) = (offsets(long), offsets(short));
        let max_len = long.iter().chain(short).copied().max().unwrap();
        let chunks = max_len.div_ceil(chunk_keys);
        let (nd, hnd, ldp) = (n * dim, heads * n * dim, dim + 2);
        let len = |s: usize| if s < users { long[s] } else { short[s - users] };
        // Partials: m in [−4, 4], l in [1, 33), Σ p x of either sign; NaN past the end.
        let mut part = vec![f32::NAN; seqs * heads * chunks * n * ldp];
        for s in 0..seqs {
            for k in 0..heads {
                for c in 0..len(s).div_ceil(chunk_keys) {
                    for i in 0..n {
                        let at = (((s * heads + k) * chunks + c) * n + i) * ldp;
                        let row = &mut part[at..at + ldp];
                        row[..dim].copy_from_slice(&rng.vec(dim, 5.0));
                        row[dim] = rng.symmetric(4.0);
                        row[dim + 1] = 17.0 + rng.symmetric(16.0);
                    }
                }
            }
        }
        // Both towers' weights, [out, in] as stored.
        let w = |rng: &mut Rng, o: usize, i: usize| -> [Vec<f32>; 2] {
            let a = 1.0 / (i as f32).sqrt();
            [rng.vec(o * i, a), rng.vec(o * i, a)]
        };
        let (wv, bv, wo, bo) = (
            w(&mut rng, dim, dim),
            w(&mut rng, dim, 1),
            w(&mut rng, dim, dim),
            w(&mut rng, dim, 1),
        );
        let (wq, bq, wk) = (
            w(&mut rng, dim, dim),
            w(&mut rng, dim, 1),
            w(&mut rng, dim, dim),
        );
        let (wm, bm) = (w(&mut rng, dim, layers * dim), w(&mut rng, dim, 1));
        let stack_t = |v: &[Vec<f32>; 2], o: usize, i: usize| -> Vec<f32> {
            [transpose(&v[0], o, i), transpose(&v[1], o, i)].concat()
        };
        let (wvt, wot, wqt, wmt) = (
            stack_t(&wv, dim, dim),
            stack_t(&wo, dim, dim),
            stack_t(&wq, dim, dim),
            stack_t(&wm, dim, layers * dim),
        );
        let (bv2, bo2, bq2, wk2, bm2) = (
            bv.concat(),
            bo.concat(),
            bq.concat(),
            wk.concat(),
            bm.concat(),
        );
        let hcat0 = rng.vec(seqs * n * layers * dim, 1.0);
        let mut hcat = hcat0.clone();
        let mut scratch = vec![f32::NAN; seqs * (hnd + 2 * nd)];
        let mut qt = vec![f32::NAN; seqs * hnd];
        let mut out = vec![f32::NAN; seqs * nd];
        let null = || hcn_prerank::cuda::abi::In::from_addr(0);
        let p = AttendCombineParams {
            long_offsets: input(&lo, 0, users + 1).unwrap(),
            short_offsets: input(&so, 0, users + 1).unwrap(),
            part: input(&part, 0, part.len()).unwrap(),
            wvt: input(&wvt, 0, wvt.len()).unwrap(),
            bv: input(&bv2, 0, 2 * dim).unwrap(),
            wot: input(&wot, 0, wot.len()).unwrap(),
            bo: input(&bo2, 0, 2 * dim).unwrap(),
            wqt: if last {
                null()
            } else {
                input(&wqt, 0, wqt.len()).unwrap()
            },
            bq: if last {
                null()
            } else {
                input(&bq2, 0, 2 * dim).unwrap()
            },
            wk: if last {
                null()
            } else {
                input(&wk2, 0, wk2.len()).unwrap()
            },
            wmt: if last {
                input(&wmt, 0, wmt.len()).unwrap()
            } else {
                null()
            },
            bm: if last {
                input(&bm2, 0, 2 * dim).unwrap()
            } else {
                null()
            },
            scratch: output(&mut scratch, 0, seqs * (hnd + 2 * nd)).unwrap(),
            hcat: output(&mut hcat, 0, seqs * n * layers * dim).unwrap(),
            qt_next: output(&mut qt, 0, seqs * hnd).unwrap(),
            out: output(&mut out, 0, seqs * nd).unwrap(),
            users: int(users),
            n: int(n),
            dim: int(dim),
            heads: int(heads),
            chunks: int(chunks),
            chunk_keys: int(chunk_keys),
            layer: int(layer),
            layers: int(layers),
        };
        run(Variant::F32, launch::attend_combine(seqs, n).unwrap(), p).unwrap();
        for s in 0..seqs {
            let tower = s / users;
            let what = format!(
                "attend_combine h={heads} D={dim} n={n} layer {layer}/{layers} seq {s} (L={})",
                len(s)
            );
            // Z_k = A_k X, then the heads, then H_l.
            let mut cat = vec![0.0f64; nd];
            if len(s) > 0 {
                for k in 0..heads {
                    for i in 0..n {
                        let rows: Vec<&[f32]> = (0..len(s).div_ceil(chunk_keys))
                            .map(|c| {
                                let at = (((s * heads + k) * chunks + c) * n + i) * ldp;
                                &part[at..at + ldp]
                            })
                            .collect();
                        let mx = rows
                            .iter()
                            .map(|r| f64::from(r[dim]))
                            .fold(f64::NEG_INFINITY, f64::max);
                        let ws: Vec<f64> = rows
                            .iter()
                            .map(|r| (f64::from(r[dim]) - mx).exp())
                            .collect();
                        let sum: f64 = rows
                            .iter()
                            .zip(&ws)
                            .map(|(r, w)| w * f64::from(r[dim + 1]))
                            .sum();
                        let z: Vec<f64> = (0..dim)
                            .map(|c| {
                                rows.iter()
                                    .zip(&ws)
                                    .map(|(r, w)| w * f64::from(r[c]))
                                    .sum::<f64>()
                                    / sum
                            })
                            .collect();
                        for j in 0..d {
                            let o = k * d + j;
                            cat[i * dim + o] = f64::from(bv[tower][o])
                                + (0..dim)
                                    .map(|c| z[c] * f64::from(wv[tower][o * dim + c]))
                                    .sum::<f64>();
                        }
                    }
                }
            }
            let h = ref_linear(&cat, n, dim, &wo[tower], &bo[tower], dim, false);
            let hc = &hcat[s * n * layers * dim..(s + 1) * n * layers * dim];
            let mut hc_want = widen(&hcat0[s * n * layers * dim..(s + 1) * n * layers * dim]);
            for i in 0..n {
                hc_want[i * layers * dim + layer * dim..i * layers * dim + (layer + 1) * dim]
                    .copy_from_slice(&h[i * dim..(i + 1) * dim]);
            }
            assert_close(hc, &hc_want, &format!("{what}: concat"));
            if last {
                let f = ref_linear(
                    &hc_want,
                    n,
                    layers * dim,
                    &wm[tower],
                    &bm[tower],
                    dim,
                    false,
                );
                assert_close(&out[s * nd..(s + 1) * nd], &f, &format!("{what}: merge"));
            } else {
                let q = ref_linear(&h, n, dim, &wq[tower], &bq[tower], dim, false);
                let scale = 1.0 / (d as f64).sqrt();
                let mut want = vec![0.0f64; hnd];
                for k in 0..heads {
                    for i in 0..n {
                        for c in 0..dim {
                            want[(k * n + i) * dim + c] = scale
                                * (0..d)
                                    .map(|j| {
                                        q[i * dim + k * d + j]
                                            * f64::from(wk[tower][(k * d + j) * dim + c])
                                    })
                                    .sum::<f64>();
                        }
                    }
                }
                assert_close(
                    &qt[s * hnd..(s + 1) * hnd],
                    &want,
                    &format!("{what}: next Q̃"),
                );
            }
        }
        if last {
            assert!(qt.iter().all(|v| v.is_nan()), "the last layer writes no Q̃");
        } else {
            assert!(out.iter().all(|v| v.is_nan()), "only the last layer merges");
        }
    }
}

/// `co_fusion`: E, both alignments, every block kind in the concat, `X̃ = cat Wcᵀ + bc` into the
/// fusion input's left half (its right half, X̂, kept) and `X^U`, against f64.
#[test]
fn co_fusion_matches_reference_for_every_block_kind() {
    let mut rng = Rng::new(4);
    let cases: &[(usize, usize, usize, &[u8])] = &[
        (3, 1, 20, &[2, 3, 3]),
        (2, 3, 37, &[0, 1, 2, 3]),
        (1, 8, 48, &[3, 2]),
        (2, 64, 5, &[2, 3, 0]),
    ];
    for &(users, n, dim, blocks) in cases {
        let bn = users * n;
        let towers = rng.vec(2 * bn * dim, 1.0);
        let nb = blocks.len();
        let (co_w, co_b) = (rng.vec(dim * nb * dim, 0.3), rng.vec(dim, 0.3));
        let (fu_w, fu_b) = (rng.vec(dim * 2 * dim, 0.3), rng.vec(dim, 0.3));
        let (co_wt, fu_wt) = (
            transpose(&co_w, dim, nb * dim),
            transpose(&fu_w, dim, 2 * dim),
        );
        let fuse0 = rng.vec(bn * 2 * dim, 1.0);
        let mut fuse = fuse0.clone();
        let mut cat = vec![f32::NAN; bn * nb * dim];
        let mut xu = vec![f32::NAN; bn * dim];
        let p = CoFusionParams {
            towers: input(&towers, 0, towers.len()).unwrap(),
            cat: output(&mut cat, 0, bn * nb * dim).unwrap(),
            co_wt: input(&co_wt, 0, co_wt.len()).unwrap(),
            co_b: input(&co_b, 0, dim).unwrap(),
            fuse: output(&mut fuse, 0, bn * 2 * dim).unwrap(),
            fusion_wt: input(&fu_wt, 0, fu_wt.len()).unwrap(),
            fusion_b: input(&fu_b, 0, dim).unwrap(),
            xu: output(&mut xu, 0, bn * dim).unwrap(),
            users: int(users),
            n: int(n),
            dim: int(dim),
            num_blocks: int(nb),
            block_codes: launch::pack_blocks(blocks),
        };
        run(Variant::F32, launch::co_fusion(users, n, nb).unwrap(), p).unwrap();
        for u in 0..users {
            let what = format!("co_fusion n={n} D={dim} user {u}");
            let lu = widen(&towers[u * n * dim..(u + 1) * n * dim]);
            let su = widen(&towers[(bn + u * n) * dim..(bn + (u + 1) * n) * dim]);
            let (lt, st) = ref_co_interest(&lu, &su, n, dim);
            let mut cat_want = vec![0.0f64; n * nb * dim];
            for i in 0..n {
                for (t, &code) in blocks.iter().enumerate() {
                    let src = match code {
                        0 => &lu,
                        1 => &su,
                        2 => &lt,
                        _ => &st,
                    };
                    cat_want[i * nb * dim + t * dim..i * nb * dim + (t + 1) * dim]
                        .copy_from_slice(&src[i * dim..(i + 1) * dim]);
                }
            }
            assert_close(
                &cat[u * n * nb * dim..(u + 1) * n * nb * dim],
                &cat_want,
                &format!("{what}: concat"),
            );
            let xt = ref_linear(&cat_want, n, nb * dim, &co_w, &co_b, dim, false);
            let mut fin = widen(&fuse0[u * n * 2 * dim..(u + 1) * n * 2 * dim]);
            for i in 0..n {
                fin[i * 2 * dim..i * 2 * dim + dim].copy_from_slice(&xt[i * dim..(i + 1) * dim]);
            }
            assert_close(
                &fuse[u * n * 2 * dim..(u + 1) * n * 2 * dim],
                &fin,
                &format!("{what}: fusion input"),
            );
            let want = ref_linear(&fin, n, 2 * dim, &fu_w, &fu_b, dim, false);
            assert_close(
                &xu[u * n * dim..(u + 1) * n * dim],
                &want,
                &format!("{what}: X^U"),
            );
        }
    }
}

#[test]
fn score_matches_reference_for_every_dtype_and_mode() {
    let mut rng = Rng::new(5);
    let cases: &[(usize, usize, &[usize])] = &[
        (37, 5, &[0, 1, 300, 7]),
        (48, 1, &[33]),
        (96, 8, &[257, 2]),
        // Every register-width instance of score.cu: D/32 rounded up to 16 and to 32.
        (300, 3, &[5, 40]),
        (1000, 8, &[3, 9]),
        // I8 rows of D = 16k (the 128-bit-load path): 32 candidates per warp (D = 16), 8
        // (D = 48: 3 chunks on groups of 4 lanes, 96: 6 on 8), one with a lane holding two
        // chunks (D = 640 > 512).
        (16, 3, &[300, 5]),
        (640, 4, &[70]),
    ];
    for dtype in DTYPES {
        for &(dim, n, lens) in cases {
            let n_rows = 50;
            let values = rng.vec(n_rows * dim, 1.0);
            let (st, t) = store(dtype, &values, n_rows, dim);
            let widened = &t.exact;
            let users = lens.len();
            let offs = offsets(lens);
            let total = *offs.last().unwrap() as usize;
            let rows: Vec<u32> = (0..total).map(|_| rng.below(n_rows) as u32).collect();
            let xu = rng.vec(users * n * dim, 1.0);
            let max_m = lens.iter().copied().max().unwrap_or(0);
            for (mode, _) in SCORE_MODES {
                let mut out = vec![f32::NAN; total];
                let p = ScoreParams {
                    store: EmuBackend.store_rows(&st),
                    scales: EmuBackend.store_scales(&st),
                    rows: input(&rows, 0, total).unwrap(),
                    cand_offsets: input(&offs, 0, users + 1).unwrap(),
                    xu: input(&xu, 0, users * n * dim).unwrap(),
                    out: output(&mut out, 0, total).unwrap(),
                    dim: int(dim),
                    n: int(n),
                    mode,
                };
                let geo = launch::score(max_m, users, n, dim).unwrap();
                run(store_variant(dtype).unwrap(), geo, p).unwrap();
                let mut want = Vec::with_capacity(total);
                for u in 0..users {
                    let xuu = widen(&xu[u * n * dim..(u + 1) * n * dim]);
                    for &r in &rows[offs[u] as usize..offs[u + 1] as usize] {
                        let r = r as usize;
                        want.push(ref_score(&xuu, n, &widened[r * dim..(r + 1) * dim], mode));
                    }
                }
                assert_close(
                    &out,
                    &want,
                    &format!("score {dtype:?} D={dim} n={n} mode={mode:?}"),
                );
            }
        }
    }
}

/// The emulated `mma.sync` m16n8k16 (and `cp.async`) through `mma_test.cu`, which builds every
/// fragment with PTX's documented layouts: `A B + C` against a plain f64 matrix product, A and B
/// F16 values. Small integers first (every product and sum exact, so any misplaced element
/// shows), then random values (F16 products exact, F32 sums: a tight relative tolerance).
#[test]
fn emulated_mma_is_a_matrix_product() {
    let mut rng = Rng::new(21);
    for case in 0..6 {
        let int = case < 3;
        let mut draw = |len: usize, f16: bool| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    if int {
                        rng.below(17) as f32 - 8.0
                    } else {
                        let v = rng.vec(1, 4.0)[0];
                        if f16 {
                            f16::from_f32(v).to_f32()
                        } else {
                            v
                        }
                    }
                })
                .collect()
        };
        let (a, b, c) = (draw(256, true), draw(128, true), draw(128, false));
        let mut d = vec![f32::NAN; 128];
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
        run(Variant::F32, geo, p).unwrap();
        for r in 0..16 {
            for col in 0..8 {
                let want = f64::from(c[r * 8 + col])
                    + (0..16)
                        .map(|k| f64::from(a[r * 16 + k]) * f64::from(b[k * 8 + col]))
                        .sum::<f64>();
                let got = f64::from(d[r * 8 + col]);
                if int {
                    assert_eq!(got, want, "case {case}: D[{r}][{col}]");
                } else {
                    let scale: f64 = f64::from(c[r * 8 + col]).abs()
                        + (0..16)
                            .map(|k| (f64::from(a[r * 16 + k]) * f64::from(b[k * 8 + col])).abs())
                            .sum::<f64>();
                    assert!(
                        (got - want).abs() <= 1e-6 * scale,
                        "case {case}: D[{r}][{col}] = {got}, want {want}"
                    );
                }
            }
        }
    }
}

/// `score_mma` over a store (`n_rows` rows of `dim`), users with `lens` candidates, in `mode`:
/// the scores, and the reference's.
fn score_mma_case(
    rng: &mut Rng,
    dtype: DType,
    (dim, n, lens): (usize, usize, &[usize]),
    xu: &[f32],
    values: &[f32],
    mode: ScoreMode,
) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
    let xu = xu.to_vec();
    let n_rows = values.len() / dim;
    let (st, t) = store(dtype, values, n_rows, dim);
    let users = lens.len();
    let offs = offsets(lens);
    let total = *offs.last().unwrap() as usize;
    let rows: Vec<u32> = (0..total).map(|_| rng.below(n_rows) as u32).collect();
    let max_m = lens.iter().copied().max().unwrap_or(0);
    let mut outs = Vec::new();
    for mma in [true, false] {
        let mut out = vec![f32::NAN; total];
        let p = ScoreParams {
            store: EmuBackend.store_rows(&st),
            scales: EmuBackend.store_scales(&st),
            rows: input(&rows, 0, total).unwrap(),
            cand_offsets: input(&offs, 0, users + 1).unwrap(),
            xu: input(&xu, 0, users * n * dim).unwrap(),
            out: output(&mut out, 0, total).unwrap(),
            dim: int(dim),
            n: int(n),
            mode,
        };
        let variant = store_variant(dtype).unwrap();
        if mma {
            let geo = launch::score_mma(max_m, users, n, dim).unwrap();
            run(variant, geo, ScoreMmaParams::from(p)).unwrap();
        } else {
            run(variant, launch::score(max_m, users, n, dim).unwrap(), p).unwrap();
        }
        outs.push(out);
    }
    let mut want = Vec::with_capacity(total);
    for u in 0..users {
        let xuu = widen(&xu[u * n * dim..(u + 1) * n * dim]);
        for &r in &rows[offs[u] as usize..offs[u + 1] as usize] {
            let r = r as usize;
            want.push(ref_score(&xuu, n, &t.exact[r * dim..(r + 1) * dim], mode));
        }
    }
    let old = outs.pop().unwrap();
    (outs.pop().unwrap(), want, old)
}

/// The tensor-core kernel (`score_mma_f16`, `score_mma_i8`) against the f64 reference: n = 1, 5,
/// 8, 9, 16 and 64 (every accumulator width, padded n-tiles), D = 16, 48 (a last chunk of one
/// k-step), 64, 128, 1024; candidate counts that are not multiples of 16 or of the 256-block
/// (1, 17, 300), an empty user, several users; every mode. X^U of ordinary size, then of sizes
/// outside F16's range (1e6, 1e-6: the per-interest power-of-two scaling).
#[test]
fn score_mma_matches_reference() {
    let mut rng = Rng::new(22);
    let cases: &[(usize, usize, &[usize])] = &[
        (64, 1, &[1, 17, 300]),
        (64, 5, &[300, 0, 17]),
        (128, 8, &[33, 1]),
        (128, 16, &[17, 256, 5]),
        (48, 9, &[40]),
        (16, 3, &[300]),
        (128, 64, &[20]),
        (1024, 5, &[18, 3]),
    ];
    for dtype in [DType::F16, DType::I8] {
        for &(dim, n, lens) in cases {
            let values = rng.vec(50 * dim, 1.0);
            let users = lens.len();
            for (xscale, modes) in [
                (1.0f32, &SCORE_MODES[..]),
                (1e6, &SCORE_MODES[..1]),
                (1e-6, &SCORE_MODES[1..2]),
            ] {
                let xu: Vec<f32> = rng
                    .vec(users * n * dim, 1.0)
                    .iter()
                    .map(|v| v * xscale)
                    .collect();
                for &(mode, _) in modes {
                    let (got, want, _) =
                        score_mma_case(&mut rng, dtype, (dim, n, lens), &xu, &values, mode);
                    // Relative to the scale of X^U (the tolerance is absolute below 1).
                    let got: Vec<f32> = got.iter().map(|v| v / xscale).collect();
                    let want: Vec<f64> = want.iter().map(|v| v / f64::from(xscale)).collect();
                    let what = format!("score_mma {dtype:?} D={dim} n={n} x{xscale} mode={mode:?}");
                    // Near-F32 accuracy from the hi + lo split (F16 X^U alone would be off by
                    // ≈ 1e-3 here): far inside SPEC §5's GPU tolerance, checked below.
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(&g, &w)| (f64::from(g) - w).abs() / (1.0 + w.abs()))
                        .fold(0.0, f64::max);
                    assert!(worst <= 2e-5, "{what}: relative error {worst:e}");
                    assert_close(&got, &want, &what);
                }
            }
        }
    }
}

/// Scores that overflow F32 are non-finite on the tensor-core kernel exactly where score.cu's
/// are (the finiteness rule, src/post.rs, then refuses them): X^U = 3e38 against positive rows
/// makes every s_j +inf, so softmax gives NaN (n > 1), max and mean +inf; a user with ordinary
/// X^U beside it stays finite. A non-finite X^U value makes its interest's s_j NaN.
#[test]
fn score_mma_keeps_score_cus_finiteness() {
    let mut rng = Rng::new(23);
    let (dim, n) = (64usize, 3usize);
    let values: Vec<f32> = rng
        .vec(20 * dim, 1.0)
        .iter()
        .map(|v| 0.5 + v.abs())
        .collect();
    let mut xu = rng.vec(2 * n * dim, 1.0);
    xu[..n * dim].fill(3e38);
    for dtype in [DType::F16, DType::I8] {
        for (mode, _) in SCORE_MODES {
            let (got, _, old) =
                score_mma_case(&mut rng, dtype, (dim, n, &[20, 17]), &xu, &values, mode);
            for (i, (g, o)) in got.iter().zip(&old).enumerate() {
                assert_eq!(
                    (g.is_finite(), g.is_nan()),
                    (o.is_finite(), o.is_nan()),
                    "{dtype:?} {mode:?} [{i}]: score_mma {g}, score {o}"
                );
                assert_eq!(g.is_finite(), i >= 20, "{dtype:?} {mode:?} [{i}]: {g}");
            }
        }
        let mut bad = rng.vec(n * dim, 1.0);
        bad[dim + 7] = f32::INFINITY;
        let (got, _, _) = score_mma_case(
            &mut rng,
            dtype,
            (dim, n, &[5]),
            &bad,
            &values,
            ScoreMode::Mean,
        );
        assert!(got.iter().all(|v| v.is_nan()), "{dtype:?}: {got:?}");
    }
}

/// Models the tensor-core kernel does not take are refused by its geometry (the plan runs
/// score.cu for them): D not a multiple of 16, ⌈n/8⌉·8·D over its shared X^U.
#[test]
fn score_mma_refuses_shapes_outside_its_limits() {
    for (n, d) in [(4, 40), (9, 520), (1, 8), (65, 16)] {
        assert!(!launch::score_mma_fits(n, d), "n = {n}, D = {d}");
        assert!(launch::score_mma(10, 1, n, d).is_err(), "n = {n}, D = {d}");
    }
    assert!(launch::score_mma_fits(16, 128));
}

#[test]
fn topk_selects_the_k_largest_with_ties_by_position() {
    let mut rng = Rng::new(6);
    // Per-user score lists: few distinct values (many ties), an empty user, a single candidate,
    // negative values, a count past the block size, all equal.
    let users: Vec<Vec<f32>> = vec![
        (0..700).map(|_| (rng.below(7) as f32) - 3.0).collect(),
        vec![],
        vec![0.5],
        (0..40)
            .map(|i| if i % 2 == 0 { -1.25 } else { 2.5 })
            .collect(),
        rng.vec(333, 10.0),
        vec![1.0; 300],
        // Signed zeros tie (the lower position wins) and a NaN ranks last, as on the CPU: a
        // key from the raw bits put +0.0 above -0.0 and a NaN first.
        vec![-0.0, 0.0, -0.0, 0.0, -1.0],
        vec![f32::NAN, -1.0, 0.0, f32::NAN, 2.0],
    ];
    let lens: Vec<usize> = users.iter().map(Vec::len).collect();
    let offs = offsets(&lens);
    let flat: Vec<f32> = users.concat();
    for k in [0usize, 1, 3, 20, 40, 299, 301, 1000] {
        let mut pos = vec![-7; users.len() * k];
        let mut val = vec![0.0f32; users.len() * k];
        let p = TopkParams {
            scores: input(&flat, 0, flat.len()).unwrap(),
            offsets: input(&offs, 0, users.len() + 1).unwrap(),
            out_pos: output(&mut pos, 0, users.len() * k).unwrap(),
            out_score: output(&mut val, 0, users.len() * k).unwrap(),
            k: int(k),
        };
        run(Variant::F32, launch::topk(users.len(), k).unwrap(), p).unwrap();
        for (u, s) in users.iter().enumerate() {
            let want = ref_topk(s, k);
            let slots = &pos[u * k..(u + 1) * k];
            let mut got: Vec<(usize, f32)> = slots
                .iter()
                .zip(&val[u * k..(u + 1) * k])
                .filter(|(&p, _)| p >= 0)
                .map(|(&p, &v)| (p as usize, v))
                .collect();
            // The kernel writes the winners in position order; unused slots are −1.
            assert!(
                got.windows(2).all(|w| w[0].0 < w[1].0),
                "user {u} k={k}: position order"
            );
            assert!(
                slots[got.len()..].iter().all(|&p| p == -1),
                "user {u} k={k}: unused slots"
            );
            got.sort_by(|a, b| hcn_prerank::post::better(a.1, b.1, a.0, b.0));
            let bits = |v: &[(usize, f32)]| -> Vec<(usize, u32)> {
                v.iter().map(|&(p, s)| (p, s.to_bits())).collect()
            };
            assert_eq!(bits(&got), bits(&want), "user {u} k={k}");
        }
    }
}

/// The multi-block top-k the plan runs (`topk_hist`, `topk_compact`, `topk_select`), exact on
/// 50,000 scores, both its sorted path and its exact fallback (tests/common/topk.rs).
#[test]
fn multi_block_topk_is_exact_on_both_paths() {
    let capacity = launch::topk_capacity(common::topk::M);
    assert_eq!(capacity, launch::TOPK_CAPACITY);
    common::topk::check_all(capacity, |flat, offs, max_m, k| {
        let (flat, offs) = (flat.to_vec(), offs.to_vec());
        // SAFETY: the offsets ascend from 0 to `flat.len()`, no user is longer than `max_m`.
        unsafe {
            hcn_prerank::cuda::plan::top_k(
                &EmuBackend,
                &flat,
                flat.len(),
                &offs,
                offs.len() - 1,
                max_m,
                k,
            )
        }
        .unwrap()
    });
}

/// Short users: the capacity shrinks to the longest user, k = 0 launches nothing, and a `k` over
/// the longest user is refused rather than read past the scores.
#[test]
fn multi_block_topk_on_small_batches() {
    let mut rng = Rng::new(9);
    let users = [
        rng.vec(37, 2.0),
        vec![],
        vec![-0.0, 0.0, -0.0],
        rng.vec(300, 1.0),
    ];
    let lens: Vec<usize> = users.iter().map(Vec::len).collect();
    let offs = offsets(&lens);
    let flat = users.concat();
    let max_m = 300;
    let capacity = launch::topk_capacity(max_m);
    assert_eq!(capacity, 300);
    // SAFETY (every call): the offsets ascend from 0 to `flat.len()`, none over `max_m`.
    let top = |k| unsafe {
        hcn_prerank::cuda::plan::top_k(&EmuBackend, &flat, flat.len(), &offs, users.len(), max_m, k)
    };
    for k in [0usize, 1, 2, 3, 36, 37, 38, 299, 300] {
        let (pos, val) = top(k).unwrap();
        assert_eq!(pos.len(), users.len() * k);
        for (u, s) in users.iter().enumerate() {
            let what = format!("user {u}, k = {k}");
            let r = u * k..(u + 1) * k;
            // Every user fits the capacity here: all take the sorted path.
            assert!(common::topk::check_user(
                &what,
                s,
                k,
                capacity,
                &pos[r.clone()],
                &val[r]
            ));
        }
    }
    assert!(matches!(top(301), Err(hcn_prerank::Error::Device(_))));
}

// ---------------------------------------------------------------- the whole plan

mod model {
    use super::Rng;
    use hcn_prerank::model::{AttentionLayer, FieldEmbedding, Linear, Tower, UserProfile, Weights};
    use hcn_prerank::tensor::{DType, MappedMatrix};
    use hcn_prerank::{HcnConfig, Model};
    use std::sync::Arc;

    pub fn linear(rng: &mut Rng, out_dim: usize, in_dim: usize) -> Linear {
        let scale = 1.0 / (in_dim.max(1) as f32).sqrt();
        Linear {
            weight: rng.vec(out_dim * in_dim, scale),
            bias: rng.vec(out_dim, 0.1),
            out_dim,
            in_dim,
        }
    }

    fn tower(rng: &mut Rng, cfg: &HcnConfig) -> Tower {
        let d = cfg.dim;
        Tower {
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
        }
    }

    /// A mapped `[rows, cols]` F32 matrix backed by a temporary file (field embedding tables are
    /// memory-mapped in the real model).
    fn mapped(values: &[f32], rows: usize, cols: usize, tag: &str) -> MappedMatrix {
        let path =
            std::env::temp_dir().join(format!("hcn-cuda-emu-{}-{tag}.bin", std::process::id()));
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the test owns this temporary file and never modifies it while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let _ = std::fs::remove_file(&path);
        MappedMatrix::new(Arc::new(map), 0, rows, cols, DType::F32).unwrap()
    }

    pub fn build(seed: u64, json: &str) -> Model {
        let cfg = HcnConfig::from_json(json).unwrap();
        let mut rng = Rng::new(seed);
        let d = cfg.dim;
        let fields: Vec<FieldEmbedding> = cfg
            .user_fields
            .iter()
            .map(|f| FieldEmbedding {
                name: f.name.clone(),
                table: mapped(
                    &rng.vec(f.vocab * 3, 1.0),
                    f.vocab,
                    3,
                    &format!("{seed}-{}", f.name),
                ),
            })
            .collect();
        let in_dim = fields.len() * 3 + cfg.user_dense;
        let mut mlp = Vec::new();
        if cfg.has_profile() {
            let mut prev = in_dim;
            for &h in &cfg.user_mlp_hidden {
                mlp.push(linear(&mut rng, h, prev));
                prev = h;
            }
            mlp.push(linear(&mut rng, d, prev));
        }
        let weights = Weights {
            long: tower(&mut rng, &cfg),
            short: tower(&mut rng, &cfg),
            co_interest: linear(&mut rng, d, cfg.co_interest_concat.len() * d),
            user: UserProfile {
                fields,
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
}

/// SPEC §1 end to end in f64, in the SPEC's own evaluation order (the plan uses another one:
/// layer-0 Q on the host, stacked K|V, fused concat writes).
fn ref_user(
    m: &hcn_prerank::Model,
    xl: &[f64],
    xs: &[f64],
    field_ids: &[usize],
    dense: &[f32],
) -> Vec<f64> {
    use hcn_prerank::config::Block;
    use hcn_prerank::model::{Linear, Tower};
    let cfg = &m.config;
    let (n, d, h, r) = (cfg.interests, cfg.dim, cfg.heads, cfg.layers);
    let lin = |l: &Linear, x: &[f64], rows: usize, relu: bool| {
        ref_linear(x, rows, l.in_dim, &l.weight, &l.bias, l.out_dim, relu)
    };
    let tower = |t: &Tower, x: &[f64]| {
        let len = x.len() / d;
        let mut c = widen(&t.seeds);
        let mut hs = vec![0.0; n * r * d];
        for (li, layer) in t.layers.iter().enumerate() {
            let q = lin(&layer.q, &c, n, false);
            let k = lin(&layer.k, x, len, false);
            let v = lin(&layer.v, x, len, false);
            let a = ref_attention(&q, &k, &v, n, len, h, d / h);
            c = lin(&layer.o, &a, n, false);
            for i in 0..n {
                hs[i * r * d + li * d..i * r * d + (li + 1) * d]
                    .copy_from_slice(&c[i * d..(i + 1) * d]);
            }
        }
        lin(&t.merge, &hs, n, false)
    };
    let lhat = tower(&m.weights.long, xl);
    let shat = tower(&m.weights.short, xs);
    let (lt, st) = ref_co_interest(&lhat, &shat, n, d);
    let k = cfg.co_interest_concat.len();
    let mut cat = vec![0.0; n * k * d];
    for i in 0..n {
        for (t, b) in cfg.co_interest_concat.iter().enumerate() {
            let src = match b {
                Block::Long => &lhat,
                Block::Short => &shat,
                Block::LongAligned => &lt,
                Block::ShortAligned => &st,
            };
            cat[i * k * d + t * d..i * k * d + (t + 1) * d]
                .copy_from_slice(&src[i * d..(i + 1) * d]);
        }
    }
    let xt = lin(&m.weights.co_interest, &cat, n, false);
    let p = &m.weights.user;
    let xhat = if p.mlp.is_empty() {
        vec![0.0; d]
    } else {
        let mut x = Vec::new();
        for (f, &id) in p.fields.iter().zip(field_ids) {
            let mut row = vec![0.0f32; f.width()];
            f.table.row_into(id, &mut row);
            x.extend(widen(&row));
        }
        x.extend(widen(dense));
        for (i, l) in p.mlp.iter().enumerate() {
            x = lin(l, &x, 1, i + 1 < p.mlp.len());
        }
        x
    };
    let mut fin = vec![0.0; n * 2 * d];
    for i in 0..n {
        fin[i * 2 * d..i * 2 * d + d].copy_from_slice(&xt[i * d..(i + 1) * d]);
        fin[i * 2 * d + d..(i + 1) * 2 * d].copy_from_slice(&xhat);
    }
    lin(&m.weights.fusion, &fin, n, false)
}

type UserData = (Vec<u32>, Vec<u32>, Vec<usize>, Vec<f32>, Vec<u32>);

fn run_plan_case(json: &str, seed: u64, tok_dtype: DType, cand_dtype: DType) {
    let m = model::build(seed, json);
    let cfg = m.config.clone();
    let d = cfg.dim;
    let mut rng = Rng::new(seed ^ 0x55);
    let (n_tok, n_cand) = (40usize, 300usize);
    let tok_vals = rng.vec(n_tok * d, 1.0);
    let cand_vals = rng.vec(n_cand * d, 1.0);
    let (ts, cs) = (
        test_store(tok_dtype, &tok_vals, d),
        test_store(cand_dtype, &cand_vals, d),
    );
    let (tok_w, cand_w) = (&ts.exact, &cs.exact);
    let plan = Plan::new(
        EmuBackend,
        &m,
        ts.source(tok_dtype, n_tok, d),
        cs.source(cand_dtype, n_cand, d),
    )
    .unwrap();

    // Users: full, over-long (truncated to the tail), empty long, empty both, no candidates.
    let shapes = [
        (cfg.long_len, cfg.short_len, 37usize),
        (cfg.long_len + 4, 1, 260),
        (0, 2, 5),
        (0, 0, 1),
        (3, 1, 0),
    ];
    let mut users: Vec<UserData> = Vec::new();
    for &(l, s, c) in &shapes {
        let long: Vec<u32> = (0..l).map(|_| rng.below(n_tok) as u32).collect();
        let short: Vec<u32> = (0..s).map(|_| rng.below(n_tok) as u32).collect();
        let ids: Vec<usize> = cfg.user_fields.iter().map(|f| rng.below(f.vocab)).collect();
        let dense = rng.vec(cfg.user_dense, 1.0);
        let cands: Vec<u32> = (0..c).map(|_| rng.below(n_cand) as u32).collect();
        users.push((long, short, ids, dense, cands));
    }
    // A duplicated candidate gives an exact score tie: top-k must order it by position.
    users[0].4[10] = users[0].4[3];
    // X̂ is computed on the host for every executor (the plan takes it as an input).
    let profiles: Vec<Vec<f32>> = users
        .iter()
        .map(|(_, _, f, dense, _)| hcn_prerank::reference::profile(&m, f, dense))
        .collect();
    let inputs: Vec<UserInput<'_>> = users
        .iter()
        .zip(&profiles)
        .map(|((l, s, _, _, c), p)| UserInput {
            long_rows: l,
            short_rows: s,
            profile: p,
            candidate_rows: c,
        })
        .collect();
    let k = 7;
    plan.set_kernel_timing(true);
    let out = plan.run_batch(&inputs, k).unwrap();
    assert_eq!(out.len(), inputs.len());
    // F16 and I8 candidate stores with D % 16 == 0 score on tensor cores, the others on
    // score.cu.
    let variant = store_variant(cand_dtype).unwrap().suffix;
    let want_kernel = if matches!(cand_dtype, DType::F16 | DType::I8)
        && launch::score_mma_fits(cfg.interests, d)
    {
        format!("score_mma_{variant}")
    } else {
        format!("score_{variant}")
    };
    let times = plan.kernel_times();
    let scored: Vec<&str> = times
        .kernels
        .iter()
        .filter(|t| t.site == "score")
        .map(|t| t.kernel.as_str())
        .collect();
    assert_eq!(scored, [want_kernel.as_str()], "D = {d}, {cand_dtype:?}");
    // F16 and I8 token stores with a model inside `launch::attend_mma_fits` attend on tensor
    // cores, the others on attend.cu (every layer's launch under one entry).
    let tok_variant = store_variant(tok_dtype).unwrap().suffix;
    let want_attend = if matches!(tok_dtype, DType::F16 | DType::I8)
        && launch::attend_mma_fits(cfg.interests, d)
    {
        format!("attend_mma_{tok_variant}")
    } else {
        format!("attend_{tok_variant}")
    };
    let attended: Vec<&str> = times
        .kernels
        .iter()
        .filter(|t| t.site == "tower.attend")
        .map(|t| t.kernel.as_str())
        .collect();
    assert_eq!(attended, [want_attend.as_str()], "D = {d}, {tok_dtype:?}");

    let mode = cfg.score;
    let rows_f64 = |rows: &[u32], keep: usize| -> Vec<f64> {
        rows[rows.len().saturating_sub(keep)..]
            .iter()
            .flat_map(|&r| tok_w[r as usize * d..(r as usize + 1) * d].to_vec())
            .collect()
    };
    for (u, ((inp, o), user)) in inputs.iter().zip(&out).zip(&users).enumerate() {
        let (field_ids, dense) = (&user.2, &user.3);
        let xu = ref_user(
            &m,
            &rows_f64(inp.long_rows, cfg.long_len),
            &rows_f64(inp.short_rows, cfg.short_len),
            field_ids,
            dense,
        );
        assert_close(&o.interests, &xu, &format!("X^U user {u}"));
        // The project's oracle (`hcn_prerank::reference`) agrees with this file's own reference.
        let as_f32 = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
        let oracle = hcn_prerank::reference::user_interests(
            &m,
            &as_f32(rows_f64(inp.long_rows, cfg.long_len)),
            &as_f32(rows_f64(inp.short_rows, cfg.short_len)),
            field_ids,
            dense,
        );
        assert_close(&oracle, &xu, &format!("reference::user_interests user {u}"));
        let want: Vec<f64> = inp
            .candidate_rows
            .iter()
            .map(|&r| {
                let r = r as usize;
                ref_score(&xu, cfg.interests, &cand_w[r * d..(r + 1) * d], mode)
            })
            .collect();
        assert_close(&o.scores, &want, &format!("scores user {u}"));
        for (&r, &w) in inp.candidate_rows.iter().zip(&want) {
            let r = r as usize;
            let x: Vec<f32> = cand_w[r * d..(r + 1) * d]
                .iter()
                .map(|&v| v as f32)
                .collect();
            let y = hcn_prerank::reference::score(&oracle, cfg.interests, &x, cfg.score);
            assert_close(&[y], &[w], &format!("reference::score user {u}"));
        }
        // Top-k agrees exactly with a host top-k of the returned scores (ties by position).
        assert_eq!(o.top_k, ref_topk(&o.scores, k), "top-k user {u}");
        assert_eq!(o.top_k.len(), k.min(inp.candidate_rows.len()));
    }
}

#[test]
fn plan_end_to_end_matches_reference_default_concat() {
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 12, "interests": 3, "heads": 3, "layers": 2,
            "long_len": 9, "short_len": 4, "user_fields": [{"name": "age", "vocab": 5}],
            "user_dense": 2, "user_mlp_hidden": [6]}"#,
        11,
        DType::F16,
        DType::F32,
    );
}

#[test]
fn plan_end_to_end_matches_reference_other_blocks_and_modes() {
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 34, "interests": 1, "heads": 2, "layers": 1,
            "long_len": 40, "short_len": 3,
            "co_interest_concat": ["long", "short_aligned", "short", "long_aligned"],
            "score": "max"}"#,
        12,
        DType::BF16,
        DType::F16,
    );
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 8, "interests": 5, "heads": 1, "layers": 3,
            "long_len": 35, "short_len": 2, "user_dense": 3, "score": "mean"}"#,
        13,
        DType::F32,
        DType::BF16,
    );
}

/// I8 stores (SPEC §3) through the whole plan: D = 32 (rows on 16-byte boundaries, the
/// 128-bit-load gather and score), D = 34 (the element-wise path), token and candidate stores
/// each I8 or not.
#[test]
fn plan_end_to_end_matches_reference_i8_stores() {
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 32, "interests": 4, "heads": 2, "layers": 2,
            "long_len": 20, "short_len": 5, "user_fields": [{"name": "age", "vocab": 5}],
            "user_dense": 2, "user_mlp_hidden": [6]}"#,
        14,
        DType::I8,
        DType::I8,
    );
    // D = 64, n = 5: the tensor-core kernel on both candidate dtypes, softmax; attention on
    // tensor cores over F16 tokens, on attend.cu over F32 ones.
    for (seed, tok, cand) in [(17, DType::F16, DType::I8), (18, DType::F32, DType::F16)] {
        run_plan_case(
            r#"{"format": "hcn/1", "dim": 64, "interests": 5, "heads": 4, "layers": 1,
                "long_len": 10, "short_len": 3, "user_fields": [{"name": "age", "vocab": 5}],
                "user_dense": 2, "user_mlp_hidden": [6]}"#,
            seed,
            tok,
            cand,
        );
    }
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 34, "interests": 3, "heads": 2, "layers": 1,
            "long_len": 12, "short_len": 3, "score": "max"}"#,
        15,
        DType::F16,
        DType::I8,
    );
    run_plan_case(
        r#"{"format": "hcn/1", "dim": 48, "interests": 2, "heads": 4, "layers": 1,
            "long_len": 12, "short_len": 3, "score": "mean"}"#,
        16,
        DType::I8,
        DType::BF16,
    );
}

/// Issue 14's launch budget: a batch of the industrial shape (SPEC §6: D = 128, n = 16, h = 4,
/// r = 4) is at most 15 launches — `2r + 5` = 13: per layer `attend` and `attend_combine`, then
/// `co_fusion`, `score` and top-k's three — whatever the batch size, counted by the plan's
/// kernel timer; the interests still match the f64 reference (sequences longer than a chunk,
/// an empty one, users of different lengths).
#[test]
fn an_industrial_batch_is_at_most_15_launches_at_any_batch_size() {
    let json = r#"{"format": "hcn/1", "dim": 128, "interests": 16, "heads": 4, "layers": 4,
        "long_len": 500, "short_len": 50, "user_fields": [{"name": "age", "vocab": 5}],
        "user_dense": 2, "user_mlp_hidden": [8]}"#;
    let m = model::build(21, json);
    let cfg = m.config.clone();
    let d = cfg.dim;
    let mut rng = Rng::new(22);
    let (n_tok, n_cand) = (60usize, 400usize);
    let (ts, cs) = (
        test_store(DType::F16, &rng.vec(n_tok * d, 1.0), d),
        test_store(DType::F16, &rng.vec(n_cand * d, 1.0), d),
    );
    let plan = Plan::new(
        EmuBackend,
        &m,
        ts.source(DType::F16, n_tok, d),
        cs.source(DType::F16, n_cand, d),
    )
    .unwrap();
    plan.set_kernel_timing(true);
    let mut batches = 0u64;
    for lens in [
        &[(70usize, 9usize)][..],
        &[(33, 50), (0, 3), (5, 0), (100, 1), (1, 40)],
    ] {
        type User = (Vec<u32>, Vec<u32>, Vec<f32>, Vec<f32>, Vec<u32>);
        let users: Vec<User> = lens
            .iter()
            .map(|&(l, s)| {
                let dense = rng.vec(2, 1.0);
                (
                    (0..l).map(|_| rng.below(n_tok) as u32).collect(),
                    (0..s).map(|_| rng.below(n_tok) as u32).collect(),
                    hcn_prerank::reference::profile(&m, &[1], &dense),
                    dense,
                    (0..300).map(|_| rng.below(n_cand) as u32).collect(),
                )
            })
            .collect();
        let inputs: Vec<UserInput<'_>> = users
            .iter()
            .map(|(l, s, p, _, c)| UserInput {
                long_rows: l,
                short_rows: s,
                profile: p,
                candidate_rows: c,
            })
            .collect();
        let before = plan.kernel_times();
        let out = plan.run_batch(&inputs, 10).unwrap();
        batches += 1;
        let t = plan.kernel_times();
        assert_eq!(t.batches, batches);
        let count =
            |t: &hcn_prerank::KernelTimes| -> u64 { t.kernels.iter().map(|k| k.stat.count).sum() };
        let launches = count(&t) - count(&before);
        let r = cfg.layers as u64;
        assert_eq!(
            launches,
            2 * r + 5,
            "batch of {} users: {t:?}",
            inputs.len()
        );
        assert!(launches <= 15);
        for (u, (inp, o)) in inputs.iter().zip(&out).enumerate() {
            let rows = |rows: &[u32]| -> Vec<f64> {
                rows.iter()
                    .flat_map(|&r| ts.exact[r as usize * d..(r as usize + 1) * d].to_vec())
                    .collect()
            };
            let xu = ref_user(
                &m,
                &rows(inp.long_rows),
                &rows(inp.short_rows),
                &[1],
                &users[u].3,
            );
            assert_close(
                &o.interests,
                &xu,
                &format!("industrial X^U, batch {}, user {u}", inputs.len()),
            );
        }
    }
    let t = plan.kernel_times();
    let sites: Vec<(&str, &str, u64)> = t
        .kernels
        .iter()
        .map(|k| (k.kernel.as_str(), k.site.as_str(), k.stat.count))
        .collect();
    assert!(
        // F16 tokens, D = 128, n = 16: the tensor-core attention.
        sites.contains(&("attend_mma_f16", "tower.attend", 8)),
        "{sites:?}"
    );
    assert!(
        sites.contains(&("attend_combine_f32", "tower.combine", 8)),
        "{sites:?}"
    );
    assert!(
        sites.contains(&("co_fusion_f32", "co_fusion", 2)),
        "{sites:?}"
    );
}

#[test]
fn plan_rejects_rows_outside_the_stores() {
    let m = model::build(
        3,
        r#"{"format": "hcn/1", "dim": 4, "interests": 2, "heads": 1, "layers": 1,
            "long_len": 4, "short_len": 4}"#,
    );
    let b = narrow(DType::F32, &[0.5f32; 16]);
    let src = StoreSource {
        dtype: DType::F32,
        bytes: &b,
        scales: None,
        rows: 4,
        dim: 4,
    };
    let plan = Plan::new(EmuBackend, &m, src, src).unwrap();
    let bad = UserInput {
        long_rows: &[4],
        ..Default::default()
    };
    assert!(matches!(
        plan.run_batch(&[bad], 1),
        Err(hcn_prerank::Error::Misuse { .. })
    ));
    let bad = UserInput {
        candidate_rows: &[0, 9],
        ..Default::default()
    };
    assert!(matches!(
        plan.run_batch(&[bad], 1),
        Err(hcn_prerank::Error::Misuse { .. })
    ));
    let bad = UserInput {
        candidate_rows: &[0],
        profile: &[0.0; 3],
        ..Default::default()
    };
    assert!(matches!(
        plan.run_batch(&[bad], 1),
        Err(hcn_prerank::Error::Misuse { .. })
    ));
    let ok = UserInput {
        long_rows: &[3],
        profile: &[0.0; 4],
        candidate_rows: &[0, 1, 2],
        ..Default::default()
    };
    assert_eq!(plan.run_batch(&[ok], 2).unwrap()[0].top_k.len(), 2);
}

#[test]
fn plan_rejects_models_outside_the_kernel_limits() {
    // d = D / h = 130 > 128 (attention tiles in shared memory).
    let m = model::build(
        4,
        r#"{"format": "hcn/1", "dim": 130, "interests": 1, "heads": 1, "layers": 1,
            "long_len": 2, "short_len": 2}"#,
    );
    let b = narrow(DType::F32, &vec![0.0f32; 130]);
    let src = StoreSource {
        dtype: DType::F32,
        bytes: &b,
        scales: None,
        rows: 1,
        dim: 130,
    };
    let err = Plan::new(EmuBackend, &m, src, src).unwrap_err();
    assert!(matches!(err, hcn_prerank::Error::Device(_)), "{err}");
}

// ---------------------------------------------------------------- the parity fixtures

mod common;

#[test]
fn parity_fixtures_pass_on_the_emulated_plan() {
    let cases = common::cases();
    assert!(!cases.is_empty(), "tests/fixtures has parity cases");
    let mut i8_cases = 0;
    let mut mma_cases = std::collections::BTreeSet::new();
    for case in &cases {
        let model = hcn_prerank::Model::load(&case.model).unwrap();
        let tokens = hcn_prerank::ItemStore::load(&case.tokens).unwrap();
        let cands = hcn_prerank::ItemStore::load(&case.candidates).unwrap();
        if [&tokens, &cands]
            .iter()
            .any(|s| s.vectors.dtype() == DType::I8)
        {
            i8_cases += 1;
        }
        let plan = Plan::new(
            EmuBackend,
            &model,
            StoreSource::from_store(&tokens),
            StoreSource::from_store(&cands),
        )
        .unwrap();
        plan.set_kernel_timing(true);
        let resps = common::run_fixture(
            |u, k| plan.run_batch(u, k),
            &model,
            &tokens,
            &cands,
            &case.requests,
            case.top_k,
        );
        common::check_case("emulated GPU plan", case, &resps, TOL);
        for t in plan.kernel_times().kernels {
            if let Some(dtype) = t.kernel.strip_prefix("score_mma_") {
                mma_cases.insert(dtype.to_string());
            }
        }
    }
    // F16 and I8 candidate stores with D = 48 (the public profile) ran on tensor cores.
    assert_eq!(
        mma_cases,
        ["f16".to_string(), "i8".to_string()].into(),
        "score_mma variants the fixtures ran"
    );
    // The `*_i8` cases (reference/make_i8_fixtures.py) ran through the I8 kernels.
    assert!(i8_cases >= 1, "no parity case has an I8 store");
}
