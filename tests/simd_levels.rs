//! Every SIMD level this CPU has, forced explicitly, against plain f64 computations on awkward
//! shapes (lane width ± 1, primes, empty), all store dtypes (I8 with its scales: SPEC §3) and
//! score modes, unaligned rows.
//! Tolerance is SPEC §5's CPU bound: |got − ref| ≤ 1e-4 · (1 + |ref|).

use half::{bf16, f16};
use hcn_prerank::cpu::{
    top_k, transpose, tune_score_kernel, Kernels, Layout, Level, Prefetch, RowSource, ScoreKernel,
    TopK,
};
use hcn_prerank::tensor::DType;
use hcn_prerank::ScoreMode;

use hcn_prerank::rng::SplitMix64 as Rng;

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-4 * (1.0 + want.abs())
}

fn kernels() -> Vec<Kernels> {
    let levels = Level::available();
    assert!(levels.contains(&Level::Scalar));
    assert!(levels.contains(&Level::detect()));
    // NEON is in the aarch64 baseline: an aarch64 run that did not test it tested nothing new.
    #[cfg(target_arch = "aarch64")]
    assert!(levels.contains(&Level::Neon) && Level::detect() == Level::Neon);
    levels
        .into_iter()
        .map(|l| Kernels::new(l).expect("available level constructs"))
        .collect()
}

/// Every scoring kernel (level × layout × VNNI) this CPU can run for `n` interests: each
/// level's every usable layout, each with and without VNNI where usable (the rule's prefetch:
/// the other one gives the same bits, `prefetch_hint_never_changes_a_score`).
fn score_kernels(n: usize) -> Vec<ScoreKernel> {
    let all: Vec<ScoreKernel> = kernels()
        .into_iter()
        .flat_map(|k| {
            Layout::ALL.into_iter().flat_map(move |layout| {
                [false, true].map(|vnni| ScoreKernel {
                    layout,
                    vnni,
                    ..ScoreKernel::by_rule(k.level(), n)
                })
            })
        })
        .filter(|k| k.unusable(n).is_none())
        .collect();
    for l in Level::available() {
        assert!(all.contains(&ScoreKernel::by_rule(l, n)), "{l:?} n={n}");
    }
    all
}

const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I8];
const MODES: [ScoreMode; 3] = [ScoreMode::Softmax, ScoreMode::Max, ScoreMode::Mean];

/// A store of `rows × d` values encoded as `dtype`, starting `misalign` bytes into its buffer
/// and with `pad` extra bytes per row, plus the exact values the reference uses (f64: an I8
/// row's `scale · q` need not be an f32). I8 rows are quantized as SPEC §3 says, their scales
/// (one row all zero, scale 0) `misalign` bytes into their own buffer.
struct Store {
    buf: Vec<u8>,
    misalign: usize,
    stride: usize,
    exact: Vec<f64>,
    scales: Vec<u8>,
    dtype: DType,
    d: usize,
}

impl Store {
    fn new(
        rng: &mut Rng,
        rows: usize,
        d: usize,
        dtype: DType,
        scale: f32,
        misalign: usize,
        pad: usize,
    ) -> Store {
        let stride = d * dtype.size() + pad;
        let mut buf = vec![0xffu8; misalign + rows * stride];
        let mut exact = Vec::with_capacity(rows * d);
        let mut scales = vec![0xffu8; misalign];
        for r in 0..rows {
            if dtype == DType::I8 {
                let mut x: Vec<f32> = (0..d).map(|_| rng.symmetric(scale)).collect();
                if r == 2 {
                    x.fill(0.0);
                }
                let mut q = vec![0i8; d];
                let sc = hcn_prerank::tensor::quantize_row(&x, &mut q);
                scales.extend_from_slice(&sc.to_le_bytes());
                let at = misalign + r * stride;
                for (k, &v) in q.iter().enumerate() {
                    buf[at + k] = v as u8;
                    exact.push(f64::from(sc) * f64::from(v));
                }
                continue;
            }
            for k in 0..d {
                let v = rng.symmetric(scale);
                let at = misalign + r * stride + k * dtype.size();
                let w = match dtype {
                    DType::F32 => {
                        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
                        v
                    }
                    DType::F16 => {
                        let h = f16::from_f32(v);
                        buf[at..at + 2].copy_from_slice(&h.to_le_bytes());
                        h.to_f32()
                    }
                    DType::BF16 => {
                        let h = bf16::from_f32(v);
                        buf[at..at + 2].copy_from_slice(&h.to_le_bytes());
                        h.to_f32()
                    }
                    DType::I8 => unreachable!("quantized above"),
                };
                exact.push(f64::from(w));
            }
        }
        Store {
            buf,
            misalign,
            stride,
            exact,
            scales,
            dtype,
            d,
        }
    }

    fn source(&self) -> RowSource<'_> {
        let rows = &self.buf[self.misalign..];
        if self.dtype == DType::I8 {
            let scales = &self.scales[self.misalign..];
            RowSource::quantized(rows, scales, self.stride, self.d).unwrap()
        } else {
            RowSource::new(rows, self.dtype, self.stride, self.d).unwrap()
        }
    }

    fn row(&self, r: usize) -> &[f64] {
        &self.exact[r * self.d..(r + 1) * self.d]
    }
}

/// SPEC §1.5 in f64.
fn reference_score(xu: &[f32], n: usize, x: &[f64], mode: ScoreMode) -> f64 {
    let d = x.len();
    let s: Vec<f64> = (0..n)
        .map(|j| (0..d).map(|k| xu[j * d + k] as f64 * x[k]).sum())
        .collect();
    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    match mode {
        ScoreMode::Max => mx,
        ScoreMode::Mean => s.iter().sum::<f64>() / n as f64,
        ScoreMode::Softmax => {
            let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().zip(&s).map(|(e, s)| e * s).sum::<f64>() / z
        }
    }
}

/// Scores `m` random rows (with repeats) of a fresh store with every level, dtype and mode.
fn check_scores(rng: &mut Rng, d: usize, n: usize, m: usize, store_rows: usize, big: bool) {
    // Scale so that |s| reaches ~50 for `big` (peaky softmax), ~1 otherwise.
    let (sx, su) = if big {
        (2.0, 40.0 / (d as f32).sqrt())
    } else {
        (1.0, 1.0 / (d as f32).sqrt())
    };
    let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(su)).collect();
    let rows: Vec<u32> = (0..m).map(|_| rng.below(store_rows) as u32).collect();
    for dtype in DTYPES {
        let misalign = 1 + rng.below(3);
        let pad = if rng.below(2) == 0 { 0 } else { 2 };
        let store = Store::new(rng, store_rows, d, dtype, sx, misalign, pad);
        for mode in MODES {
            let want: Vec<f64> = rows
                .iter()
                .map(|&r| reference_score(&xu, n, store.row(r as usize), mode))
                .collect();
            for k in score_kernels(n) {
                let mut out = vec![f32::NAN; m];
                k.query(&xu, n, d, mode)
                    .unwrap()
                    .score_rows(store.source(), &rows, &mut out)
                    .unwrap();
                for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        close(g as f64, w),
                        "{} {dtype:?} {mode:?} D={d} n={n} M={m} row {i}: got {g}, want {w}",
                        k.name()
                    );
                }
            }
        }
    }
}

#[test]
fn scores_match_f64_on_awkward_shapes() {
    let mut rng = Rng::new(1);
    for d in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 100, 128, 129] {
        for n in [1, 2, 3, 5, 8, 12, 16, 17] {
            for m in [0, 1, 7, 8, 9, 17] {
                check_scores(&mut rng, d, n, m, 13, (d + n + m) % 2 == 0);
            }
        }
    }
}

#[test]
fn scores_match_f64_on_many_rows() {
    let mut rng = Rng::new(2);
    for (d, n) in [(48, 8), (128, 16), (129, 17), (33, 3), (100, 1)] {
        for big in [false, true] {
            // 1003 rows drawn from 97: repeats, and a tail after the 8-row blocks.
            check_scores(&mut rng, d, n, 1003, 97, big);
        }
    }
}

#[test]
fn score_query_is_reusable_and_matches_one_shot() {
    let mut rng = Rng::new(3);
    for (d, n, dtype) in [
        (48, 8, DType::F16),
        (128, 16, DType::F16),
        (33, 17, DType::F16),
        (9, 3, DType::F16),
        (128, 16, DType::I8),
        (48, 8, DType::I8),
    ] {
        let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
        let store = Store::new(&mut rng, 50, d, dtype, 1.0, 1, 0);
        let rows: Vec<u32> = (0..200).map(|_| rng.below(50) as u32).collect();
        for k in kernels() {
            let q = k.score_query(&xu, n, d, ScoreMode::Softmax).unwrap();
            let mut whole = vec![0.0; rows.len()];
            q.score_rows(store.source(), &rows, &mut whole).unwrap();
            // Chunked calls (as a thread pool would make them) give the same numbers.
            let mut chunked = vec![0.0; rows.len()];
            for (r, o) in rows.chunks(37).zip(chunked.chunks_mut(37)) {
                q.score_rows(store.source(), r, o).unwrap();
            }
            // Bit-identical: a row's score must not depend on how candidates are chunked.
            assert_eq!(whole, chunked, "{:?} D={d} n={n}", k.level());
        }
    }
}

#[test]
fn optional_rows_score_like_dense_rows() {
    let mut rng = Rng::new(9);
    let (d, n) = (33, 5);
    let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
    let store = Store::new(&mut rng, 40, d, DType::BF16, 1.0, 3, 0);
    let rows: Vec<Option<u32>> = (0..5000)
        .map(|_| (rng.below(4) != 0).then(|| rng.below(40) as u32))
        .collect();
    for k in kernels() {
        let q = k.score_query(&xu, n, d, ScoreMode::Softmax).unwrap();
        let mut out = vec![Some(f32::NAN); rows.len()];
        q.score_rows_opt(store.source(), &rows, &mut out).unwrap();
        for (i, (r, o)) in rows.iter().zip(&out).enumerate() {
            match (r, o) {
                (None, None) => {}
                (Some(r), Some(y)) => {
                    let mut one = [0.0];
                    q.score_rows(store.source(), &[*r], &mut one).unwrap();
                    assert_eq!(*y, one[0], "{:?} position {i}", k.level());
                }
                _ => panic!("{:?} position {i}: row {r:?} gave {o:?}", k.level()),
            }
        }
    }
}

#[test]
fn score_rejects_bad_inputs_without_panicking() {
    let mut rng = Rng::new(4);
    let (d, n) = (16, 4);
    let xu = vec![0.5f32; n * d];
    // I8 too: on AVX-512 with VNNI its rows take another kernel (`ScoreKernel::vnni`).
    for (k, dtype) in kernels()
        .into_iter()
        .flat_map(|k| [(k, DType::F32), (k, DType::I8)])
    {
        let store = Store::new(&mut rng, 10, d, dtype, 1.0, 0, 0);
        let mut out = vec![0.0; 9];
        // Row 10 of 10 is out of range, in the tail and in a full block.
        let mut rows: Vec<u32> = vec![1; 9];
        rows[8] = 10;
        let err = k
            .score_rows(&xu, n, d, store.source(), &rows, ScoreMode::Max, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("position 8"), "{err}");
        rows[8] = 1;
        rows[3] = u32::MAX;
        let err = k
            .score_rows(&xu, n, d, store.source(), &rows, ScoreMode::Max, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("position 3"), "{err}");
        // Output length, interest length and store width mismatches.
        rows[3] = 1;
        assert!(k
            .score_rows(
                &xu,
                n,
                d,
                store.source(),
                &rows,
                ScoreMode::Max,
                &mut out[..8]
            )
            .is_err());
        assert!(k
            .score_rows(
                &xu[1..],
                n,
                d,
                store.source(),
                &rows,
                ScoreMode::Max,
                &mut out
            )
            .is_err());
        assert!(k
            .score_rows(
                &xu[..n * 8],
                n,
                8,
                store.source(),
                &rows,
                ScoreMode::Max,
                &mut out
            )
            .is_err());
        assert!(k.score_query(&[], 0, d, ScoreMode::Max).is_err());
    }
    assert!(RowSource::new(&[0u8; 64], DType::F32, 8, 3).is_err());
    // I8 rows come with their scales, one per row.
    assert!(RowSource::new(&[0u8; 64], DType::I8, 8, 8).is_err());
    assert!(RowSource::quantized(&[0u8; 64], &[0u8; 28], 8, 8).is_err());
    assert!(RowSource::quantized(&[0u8; 64], &[0u8; 32], 8, 8).is_ok());
    assert!(RowSource::quantized(&[0u8; 64], &[0u8; 32], 8, 9).is_err());
}

/// The behaviour-token gather at every level: each row as `MappedMatrix::row_into` would give it
/// (float dtypes widened exactly; I8 the F32 product `scale · q`, the same bits everywhere), on
/// awkward widths around the 16-value loads; out-of-range rows are errors naming the position.
#[test]
fn gather_rows_equals_the_scalar_widening_at_every_level() {
    let mut rng = Rng::new(10);
    for d in [1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 48, 100, 128] {
        for dtype in DTYPES {
            let (misalign, pad) = (1 + rng.below(3), rng.below(3));
            let store = Store::new(&mut rng, 23, d, dtype, 3.0, misalign, pad);
            let rows: Vec<u32> = (0..41).map(|_| rng.below(23) as u32).collect();
            // The expected rows: exact values, rounded once to f32 (I8: the F32 product).
            let want: Vec<f32> = rows
                .iter()
                .flat_map(|&r| {
                    let r = r as usize;
                    if dtype == DType::I8 {
                        let sb = &store.scales[store.misalign + 4 * r..][..4];
                        let sc = f32::from_le_bytes(sb.try_into().unwrap());
                        let at = store.misalign + r * store.stride;
                        store.buf[at..at + d]
                            .iter()
                            .map(|&b| sc * f32::from(b as i8))
                            .collect::<Vec<_>>()
                    } else {
                        store.row(r).iter().map(|&v| v as f32).collect()
                    }
                })
                .collect();
            for k in kernels() {
                let mut out = vec![f32::NAN; rows.len() * d];
                k.gather_rows(store.source(), &rows, &mut out).unwrap();
                assert_eq!(
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{:?} {dtype:?} D={d}",
                    k.level()
                );
                let mut bad = rows.clone();
                bad[17] = 23;
                let err = k.gather_rows(store.source(), &bad, &mut out).unwrap_err();
                assert!(err.to_string().contains("position 17"), "{err}");
                assert!(k.gather_rows(store.source(), &rows, &mut out[1..]).is_err());
            }
        }
    }
}

/// Every `n` on both sides of the rows-in-lanes kernel's switch to one row vector per block
/// (`n ≤ 6` on AVX2, `n ≤ 12` on AVX-512) and of the 8- and 16-lane interest groups, `D` around
/// its 16-column transpose chunks (below one chunk, exact, ragged), and `M` around the 8-, 16-
/// and 32-row blocks (padded tails).
#[test]
fn scores_match_f64_around_block_and_lane_edges() {
    let mut rng = Rng::new(6);
    for n in 1..=17 {
        for d in [3, 16, 17, 47] {
            for m in [0, 1, 15, 16, 17, 31, 32, 33] {
                check_scores(&mut rng, d, n, m, 40, (n + m) % 2 == 0);
            }
        }
    }
}

/// A row's score is bit-identical wherever it sits: alone, or at any position of any block
/// (padding rows and neighbours must not leak into it).
#[test]
fn a_rows_score_does_not_depend_on_its_position() {
    let mut rng = Rng::new(7);
    for (n, d) in [
        (1, 5),
        (3, 17),
        (4, 16),
        (8, 48),
        (8, 47),
        (12, 33),
        (13, 20),
        (16, 128),
    ] {
        let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
        for dtype in DTYPES {
            let store = Store::new(&mut rng, 30, d, dtype, 1.0, 1, 2);
            let rows: Vec<u32> = (0..75).map(|_| rng.below(30) as u32).collect();
            for k in kernels() {
                let q = k.score_query(&xu, n, d, ScoreMode::Softmax).unwrap();
                let mut all = vec![0.0; rows.len()];
                q.score_rows(store.source(), &rows, &mut all).unwrap();
                for (i, &r) in rows.iter().enumerate() {
                    let mut one = [0.0];
                    q.score_rows(store.source(), &[r], &mut one).unwrap();
                    assert_eq!(
                        one[0].to_bits(),
                        all[i].to_bits(),
                        "{:?} {dtype:?} n={n} D={d} position {i}",
                        k.level()
                    );
                }
            }
        }
    }
}

/// A bad row index anywhere in a 32-row block (either 16-row half) or in the padded tail is
/// reported at its position, for both AVX-512 kernels (`n ≤ 12` and `n > 12`).
#[test]
fn bad_rows_are_reported_at_their_position_in_any_block() {
    let mut rng = Rng::new(8);
    let d = 20;
    let store = Store::new(&mut rng, 10, d, DType::F16, 1.0, 0, 0);
    for n in [4, 12, 16] {
        let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
        for k in kernels() {
            for bad in [0, 15, 16, 31, 32, 47, 69] {
                let mut rows: Vec<u32> = (0..70).map(|_| rng.below(10) as u32).collect();
                rows[bad] = 10 + rng.below(1000) as u32;
                let mut out = vec![0.0; rows.len()];
                let err = k
                    .score_rows(&xu, n, d, store.source(), &rows, ScoreMode::Mean, &mut out)
                    .unwrap_err();
                assert!(
                    err.to_string().contains(&format!("position {bad})")),
                    "{:?} n={n}: {err}",
                    k.level()
                );
            }
        }
    }
}

#[test]
fn unsupported_levels_do_not_construct() {
    for l in Level::ALL {
        assert_eq!(Kernels::new(l).is_some(), Level::available().contains(&l));
        assert_eq!(Level::from_name(l.name()), Some(l));
    }
    #[cfg(target_arch = "x86_64")]
    assert!(Kernels::new(Level::Neon).is_none());
    #[cfg(target_arch = "aarch64")]
    assert!(Kernels::new(Level::Avx2).is_none());
    assert_eq!(Kernels::detect().level(), Level::detect());
}

/// F16 and BF16 rows widen exactly at every level, on every value class a store can hold
/// (zeros, subnormals, the extremes, random bit patterns), through the vector loads and the
/// scalar tails, from an unaligned buffer: with one interest that is a one-hot vector, the
/// `Mean` score of a row is exactly its element `k`.
#[test]
fn half_rows_widen_exactly_at_every_level() {
    let mut rng = Rng::new(10);
    let d = 37; // vectors of 4, 8 and 16 lanes, then a ragged tail
    let specials: [(DType, &[u16]); 2] = [
        (
            DType::F16,
            &[
                0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0200, 0x0400, 0x8400, 0x3c00,
                0xbc00, 0x7bff, 0xfbff, 0x3555,
            ],
        ),
        (
            DType::BF16,
            &[
                0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x807f, 0x0080, 0x8080, 0x3f80, 0xbf80,
                0x7f7f, 0xff7f, 0x3eab,
            ],
        ),
    ];
    for (dtype, special) in specials {
        let rows = 9;
        let mut bits: Vec<u16> = Vec::with_capacity(rows * d);
        while bits.len() < rows * d {
            let b = rng.below(1 << 16) as u16;
            // Finite values only (a one-hot product with an infinity or NaN is NaN).
            let finite = match dtype {
                DType::F16 => f16::from_bits(b).is_finite(),
                _ => bf16::from_bits(b).is_finite(),
            };
            if finite {
                bits.push(b);
            }
        }
        // The special values at the start of row 0 (vector loads) and the end of row 1 (tails).
        bits[..special.len()].copy_from_slice(special);
        bits[2 * d - special.len()..2 * d].copy_from_slice(special);
        let widen = |b: u16| match dtype {
            DType::F16 => f16::from_bits(b).to_f32(),
            _ => bf16::from_bits(b).to_f32(),
        };
        let mut buf = vec![0u8; 1];
        buf.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
        let src = RowSource::new(&buf[1..], dtype, 2 * d, d).unwrap();
        let all: Vec<u32> = (0..rows as u32).collect();
        for k in kernels() {
            for col in 0..d {
                let mut xu = vec![0.0f32; d];
                xu[col] = 1.0;
                let mut out = vec![f32::NAN; rows];
                k.score_rows(&xu, 1, d, src, &all, ScoreMode::Mean, &mut out)
                    .unwrap();
                for (r, &got) in out.iter().enumerate() {
                    let want = widen(bits[r * d + col]);
                    assert!(
                        got == want,
                        "{:?} {dtype:?} row {r} column {col}: bits {:#06x} gave {got:e}, want {want:e}",
                        k.level(),
                        bits[r * d + col]
                    );
                }
            }
        }
    }
}

#[test]
fn dot_matches_f64() {
    let mut rng = Rng::new(5);
    let lens = (0..=70).chain([127, 128, 129, 512, 513]);
    for len in lens {
        let a: Vec<f32> = (0..len).map(|_| rng.symmetric(3.0)).collect();
        let b: Vec<f32> = (0..len).map(|_| rng.symmetric(3.0)).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        for k in kernels() {
            let got = k.dot(&a, &b).unwrap();
            assert!(
                close(got as f64, want),
                "{:?} len {len}: {got} vs {want}",
                k.level()
            );
        }
    }
    assert!(Kernels::detect().dot(&[1.0], &[]).is_err());
}

#[test]
fn matmul_matches_f64_on_odd_shapes() {
    let mut rng = Rng::new(6);
    for m in [1, 3, 4, 5, 9] {
        for kk in [1, 7, 16, 33, 128] {
            for n in [1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 47, 48, 49, 129] {
                let x: Vec<f32> = (0..m * kk).map(|_| rng.symmetric(1.0)).collect();
                let w: Vec<f32> = (0..n * kk).map(|_| rng.symmetric(1.0)).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
                for bias in [None, Some(&b[..])] {
                    let want: Vec<f64> = (0..m * n)
                        .map(|ij| {
                            let (i, j) = (ij / n, ij % n);
                            let dot: f64 = (0..kk)
                                .map(|t| x[i * kk + t] as f64 * w[j * kk + t] as f64)
                                .sum();
                            dot + bias.map_or(0.0, |b| b[j] as f64)
                        })
                        .collect();
                    let wt = transpose(&w, n, kk);
                    for k in kernels() {
                        let mut out = vec![f32::NAN; m * n];
                        k.matmul_t(&x, m, kk, &w, n, bias, &mut out).unwrap();
                        let mut out2 = vec![f32::NAN; m * n];
                        k.matmul(&x, m, kk, &wt, n, bias, &mut out2).unwrap();
                        assert_eq!(out, out2);
                        for (idx, (&g, &r)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                close(g as f64, r),
                                "{:?} m={m} k={kk} n={n} bias={} at {idx}: {g} vs {r}",
                                k.level(),
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
    let k = Kernels::detect();
    let mut out = vec![0.0; 6];
    assert!(k
        .matmul_t(&[0.0; 6], 2, 3, &[0.0; 8], 3, None, &mut out)
        .is_err());
    assert!(k
        .matmul_t(&[0.0; 6], 2, 3, &[0.0; 9], 3, Some(&[0.0; 2]), &mut out)
        .is_err());
    assert!(k.matmul(&[], 0, 3, &[0.0; 9], 3, None, &mut []).is_ok());
}

#[test]
fn softmax_matches_f64_and_survives_large_logits() {
    let mut rng = Rng::new(7);
    for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 33, 100, 500] {
        for scale in [1.0f32, 50.0, 300.0] {
            let x: Vec<f32> = (0..len).map(|_| rng.symmetric(scale)).collect();
            let mx = x
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for k in kernels() {
                let mut got = x.clone();
                k.softmax_inplace(&mut got);
                for (i, (&g, &w)) in got.iter().zip(&e).enumerate() {
                    // Probabilities: an absolute bound is the meaningful one.
                    assert!(
                        (g as f64 - w / z).abs() <= 1e-6,
                        "{:?} len {len} scale {scale} at {i}: {g} vs {}",
                        k.level(),
                        w / z
                    );
                }
            }
        }
    }
}

/// The obvious top-k: sort everything.
fn naive_top_k(scores: &[f32], valid: &[bool], k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f32)> = scores
        .iter()
        .cloned()
        .enumerate()
        .filter(|&(i, _)| valid[i])
        .collect();
    all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[test]
fn top_k_matches_full_sort_with_ties() {
    let mut rng = Rng::new(8);
    let mut tk = TopK::new();
    let mut out = Vec::new();
    for m in [0usize, 1, 2, 5, 64, 1000] {
        // Few distinct values: many ties, which must go to the lower position.
        let scores: Vec<f32> = (0..m).map(|_| (rng.below(7) as f32 - 3.0) * 0.5).collect();
        let valid: Vec<bool> = (0..m).map(|_| rng.below(5) != 0).collect();
        for k in [0, 1, 3, m / 2, m.saturating_sub(1), m, m + 1, m + 100] {
            let want = naive_top_k(&scores, &valid, k);
            tk.select(&scores, |i| valid[i], k, &mut out);
            assert_eq!(out, want, "M={m} k={k}");
            assert_eq!(top_k(&scores, |i| valid[i], k), want);
            let all_valid = vec![true; m];
            assert_eq!(
                top_k(&scores, |_| true, k),
                naive_top_k(&scores, &all_valid, k)
            );
        }
    }
    // -0.0 ties with 0.0 (position decides); NaN sorts last.
    let s = [0.0f32, f32::NAN, -0.0, 1.0];
    assert_eq!(
        top_k(&s, |_| true, 4)
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        vec![3, 0, 2, 1]
    );
}

#[test]
fn score_kernels_are_named_listed_and_refused_where_unusable() {
    for n in [1, 8, 12, 13, 16, 17] {
        let candidates = ScoreKernel::candidates(n);
        assert!(!candidates.is_empty());
        for k in &candidates {
            assert_eq!(ScoreKernel::from_name(&k.name()), Some(*k));
            assert!(k.unusable(n).is_none(), "{}", k.name());
        }
        // Rows in lanes only with 8 or 16 lanes and n ≤ 16; tiles only on AVX-512 and AVX2,
        // n ≤ 16.
        let lanes = ScoreKernel {
            layout: Layout::Lanes,
            ..ScoreKernel::by_rule(Level::Scalar, n)
        };
        let err = lanes
            .query(&vec![0.0; n * 4], n, 4, ScoreMode::Max)
            .unwrap_err();
        assert!(err.to_string().contains("scalar/lanes"), "{err}");
        for level in [Level::Avx2, Level::Avx512] {
            if !level.is_supported() {
                continue;
            }
            let k = ScoreKernel {
                layout: Layout::Lanes,
                ..ScoreKernel::by_rule(level, n)
            };
            assert_eq!(k.unusable(n).is_none(), n <= 16, "{level:?} n={n}");
            assert_eq!(candidates.contains(&k), n <= 16);
            let t = ScoreKernel {
                layout: Layout::Tiles,
                ..ScoreKernel::by_rule(level, n)
            };
            let tiles = n <= 16;
            assert_eq!(t.unusable(n).is_none(), tiles, "{level:?} n={n}");
            assert_eq!(candidates.contains(&t), tiles);
            if !tiles {
                let err = t
                    .query(&vec![0.0; n * 4], n, 4, ScoreMode::Max)
                    .unwrap_err();
                assert!(err.to_string().contains("/tiles"), "{err}");
            }
        }
        // The rule: tiles on AVX-512 past the rows-in-lanes range, on AVX2 up to 16.
        if Level::Avx512.is_supported() {
            let layout = ScoreKernel::by_rule(Level::Avx512, n).layout;
            let want = match n {
                ..=12 => Layout::Lanes,
                13..=16 => Layout::Tiles,
                _ => Layout::Interleaved,
            };
            assert_eq!(layout, want, "n={n}");
        }
        if Level::Avx2.is_supported() {
            let want = if n <= 16 {
                Layout::Tiles
            } else {
                Layout::Interleaved
            };
            assert_eq!(ScoreKernel::by_rule(Level::Avx2, n).layout, want, "n={n}");
        }
    }
    for bad in [
        "",
        "avx512",
        "avx512/",
        "avx9/lanes",
        "avx2/rows",
        "avx2/lanes/l3",
        "avx2/lanes/l2/",
        "avx2/lanes/l2/l1",
    ] {
        assert_eq!(ScoreKernel::from_name(bad), None, "{bad}");
    }
    // The prefetch part is optional (the rule's, L2) and round-trips.
    let k = ScoreKernel::from_name("avx2/interleaved").unwrap();
    assert_eq!(
        (k.level, k.layout, k.prefetch),
        (Level::Avx2, Layout::Interleaved, Prefetch::L2)
    );
    assert_eq!(k.name(), "avx2/interleaved/l2");
    let k = ScoreKernel::from_name("avx2/lanes/l1").unwrap();
    assert_eq!((k.layout, k.prefetch), (Layout::Lanes, Prefetch::L1));
    let k = ScoreKernel::from_name("avx512/tiles").unwrap();
    assert_eq!((k.level, k.layout), (Level::Avx512, Layout::Tiles));
    assert_eq!(k.name(), "avx512/tiles/l2");
    assert_eq!(ScoreKernel::by_rule(Level::Avx2, 8).prefetch, Prefetch::L2);
    // `/vnni` last, only where it can run (AVX-512 with VNNI, n ≤ 16).
    let k = ScoreKernel::from_name("avx512/interleaved/vnni").unwrap();
    assert_eq!(
        (k.level, k.prefetch, k.vnni),
        (Level::Avx512, Prefetch::L2, true)
    );
    assert_eq!(k.name(), "avx512/interleaved/l2/vnni");
    assert_eq!(ScoreKernel::from_name("avx512/vnni/l2"), None);
    assert!(k.unusable(17).is_some());
    let avx2_vnni = ScoreKernel {
        vnni: true,
        ..ScoreKernel::by_rule(Level::Avx2, 8)
    };
    let why = avx2_vnni.unusable(8).expect("VNNI needs the avx512 level");
    if Level::Avx2.is_supported() {
        assert!(why.contains("VNNI"), "{why}");
    }
    assert!(!ScoreKernel::by_rule(Level::Avx2, 8).vnni);
    #[cfg(not(target_arch = "aarch64"))]
    {
        let neon = ScoreKernel::from_name("neon/interleaved").unwrap();
        assert!(neon.unusable(8).unwrap().contains("lacks"));
    }
}

#[test]
fn tuning_times_every_candidate_and_keeps_the_fastest() {
    let mut rng = Rng::new(9);
    for (d, n, dtype) in [
        (48, 8, DType::F16),
        (128, 16, DType::F16),
        (5, 3, DType::F16),
        (128, 16, DType::I8),
        (5, 3, DType::I8),
    ] {
        let store = Store::new(&mut rng, 300, d, dtype, 1.0, 1, 0);
        let t = tune_score_kernel(store.source(), n, ScoreMode::Softmax, 64, 2).unwrap();
        // `/vnni` is timed on I8 stores with D % 4 = 0 only (elsewhere it scores as without it).
        let mut candidates = ScoreKernel::candidates(n);
        candidates.retain(|k| !k.vnni || (dtype == DType::I8 && d % 4 == 0));
        assert_eq!(
            t.times_us.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            candidates
        );
        let best = t
            .times_us
            .iter()
            .map(|(_, us)| *us)
            .fold(f64::INFINITY, f64::min);
        assert!(best.is_finite() && best >= 0.0);
        let (_, kept) = t.times_us.iter().find(|(k, _)| *k == t.kernel).unwrap();
        assert_eq!(*kept, best);
    }
}

/// The prefetch hint is a scheduling choice only: both give the same bits for every level,
/// layout, dtype and mode, over enough rows to cross many blocks (and a ragged tail).
#[test]
fn prefetch_hint_never_changes_a_score() {
    let mut rng = Rng::new(21);
    for (d, n) in [(128, 16), (48, 8), (20, 3)] {
        let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
        for dtype in DTYPES {
            let store = Store::new(&mut rng, 300, d, dtype, 1.0, 1, 0);
            let rows: Vec<u32> = (0..517).map(|i| (i * 7919 % 300) as u32).collect();
            for k in score_kernels(n) {
                for mode in MODES {
                    let score = |prefetch| {
                        let mut out = vec![0.0f32; rows.len()];
                        ScoreKernel { prefetch, ..k }
                            .query(&xu, n, d, mode)
                            .unwrap()
                            .score_rows(store.source(), &rows, &mut out)
                            .unwrap();
                        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    assert_eq!(
                        score(Prefetch::L1),
                        score(Prefetch::L2),
                        "{} {dtype:?} {mode:?}",
                        k.name()
                    );
                }
            }
        }
    }
}

/// The tile kernel runs each score's FMA chain in the interleaved kernel's order (D padded with
/// exact zeros): the two give equal scores, at any D, n ≤ 16, dtype and mode.
#[test]
fn tiles_score_as_the_interleaved_layout() {
    for level in [Level::Avx512, Level::Avx2] {
        if !level.is_supported() {
            continue;
        }
        let mut rng = Rng::new(22);
        for (d, n) in [
            (128, 16),
            (48, 8),
            (20, 3),
            (33, 13),
            (16, 4),
            (1, 1),
            (7, 5),
        ] {
            let xu: Vec<f32> = (0..n * d).map(|_| rng.symmetric(1.0)).collect();
            for dtype in DTYPES {
                let store = Store::new(&mut rng, 300, d, dtype, 1.0, 3, 2);
                let rows: Vec<u32> = (0..517).map(|i| (i * 7919 % 300) as u32).collect();
                for mode in MODES {
                    let score = |layout| {
                        let k = ScoreKernel {
                            layout,
                            vnni: false,
                            ..ScoreKernel::by_rule(level, n)
                        };
                        let mut out = vec![0.0f32; rows.len()];
                        k.query(&xu, n, d, mode)
                            .unwrap()
                            .score_rows(store.source(), &rows, &mut out)
                            .unwrap();
                        out
                    };
                    assert_eq!(
                        score(Layout::Tiles),
                        score(Layout::Interleaved),
                        "{level:?} {dtype:?} {mode:?} D={d} n={n}"
                    );
                }
            }
        }
    }
}
