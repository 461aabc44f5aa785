//! Top-k cases for the device's multi-block select (`kernels/topk.cu`: `topk_hist`,
//! `topk_compact`, `topk_select`, run by `hcn_prerank::cuda::plan::top_k`), shared by the
//! emulation (`tests/cuda_emulation.rs`) and the GPU (`tests/cuda_gpu.rs`): several users of
//! different lengths in one batch, 50,000 scores with k = 1, 1000, 4096 and k = m, all scores
//! equal, 30,000 copies of the threshold value (the overflow path), ±0.0 and NaN, a survivor
//! count exactly at the capacity and one past it. Every result is checked exactly (positions and
//! score bits) against the engine's order (`hcn_prerank::post::better`), and the path each user
//! took against the kernels' documented rule.

use hcn_prerank::rng::SplitMix64 as Rng;

/// The longest user.
pub const M: usize = 50_000;

/// The `k`s each batch runs with (`k ≤` the longest user's count, as the plan clamps it).
pub const KS: [usize; 4] = [1, 1000, 4096, M];

fn shuffle(rng: &mut Rng, v: &mut [f32]) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The batch's users, named.
pub fn users() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng::new(14);
    let mut copies: Vec<f32> = (0..300).map(|_| 15.0 + rng.symmetric(5.0)).collect();
    copies.extend(std::iter::repeat_n(3.0f32, 30_000));
    copies.extend((0..M - 30_300).map(|_| -1.5 + rng.symmetric(3.5)));
    shuffle(&mut rng, &mut copies);
    let mut zeros: Vec<f32> = (0..2000)
        .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
        .collect();
    zeros.extend((0..2000).map(|_| -2.0 + rng.symmetric(1.0)));
    zeros.extend((0..100).map(|_| 1.5 + rng.symmetric(0.5)));
    zeros.extend([f32::NAN; 3]);
    shuffle(&mut rng, &mut zeros);
    // Distinct values of one histogram bucket ([1, 1.125): sign, exponent and 3 mantissa bits).
    let one_bucket = |n: usize, rng: &mut Rng| {
        let mut v: Vec<f32> = (0..n).map(|i| 1.0 + 0.12 * i as f32 / n as f32).collect();
        shuffle(rng, &mut v);
        v
    };
    vec![
        ("50,000 uniform", rng.vec(M, 5.0)),
        ("empty", vec![]),
        ("50,000 equal", vec![1.5; M]),
        ("30,000 copies of the threshold", copies),
        ("±0.0 and NaN", zeros),
        ("one", vec![0.5]),
        ("4096 in one bucket", one_bucket(4096, &mut rng)),
        ("4097 in one bucket", one_bucket(4097, &mut rng)),
        (
            "1500 small integers",
            (0..1500).map(|_| rng.below(7) as f32 - 3.0).collect(),
        ),
        ("17 equal", vec![3.0; 17]),
        ("1,234 uniform", rng.vec(1234, 1.0)),
    ]
}

/// The engine's one order (SPEC §1.5; -0.0 = +0.0, NaN last): the `k` best `(position, score)`.
pub fn reference(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| hcn_prerank::post::better(scores[a], scores[b], a, b));
    idx.into_iter().take(k).map(|i| (i, scores[i])).collect()
}

/// `topk_ordered` of kernels/topk.cu.
fn ordered(s: f32) -> u32 {
    if s.is_nan() {
        return 0;
    }
    let u = if s == 0.0 { 0 } else { s.to_bits() };
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// Whether `topk_select` orders the user's survivors itself (true: slots best first) or runs
/// the exact one-block select (false: slots in position order), by the rule of kernels/topk.cu:
/// the survivors are the scores whose bucket (top 12 ordered bits) is at least the k-th
/// largest's (all of them when m ≤ k); sorted when they fit `capacity`.
pub fn sorted_path(scores: &[f32], k: usize, capacity: usize) -> bool {
    let m = scores.len();
    if k == 0 {
        return true; // nothing to select: no slot, nothing launched
    }
    if m <= k {
        return m <= capacity;
    }
    let mut b: Vec<u32> = scores.iter().map(|&s| ordered(s) >> 20).collect();
    b.sort_unstable_by(|x, y| y.cmp(x));
    let t = b[k - 1];
    b.iter().filter(|&&x| x >= t).count() <= capacity
}

fn bits(v: &[(usize, f32)]) -> Vec<(usize, u32)> {
    v.iter().map(|&(p, s)| (p, s.to_bits())).collect()
}

/// Checks one user's `k` raw output slots; returns the path it took (see [`sorted_path`]).
pub fn check_user(
    what: &str,
    scores: &[f32],
    k: usize,
    capacity: usize,
    pos: &[i32],
    val: &[f32],
) -> bool {
    assert_eq!((pos.len(), val.len()), (k, k), "{what}: slots");
    let want = reference(scores, k);
    let mut got: Vec<(usize, f32)> = pos
        .iter()
        .zip(val)
        .take_while(|(&p, _)| p >= 0)
        .map(|(&p, &v)| (p as usize, v))
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: winners");
    assert!(
        pos[got.len()..].iter().all(|&p| p == -1),
        "{what}: unused slots are -1"
    );
    let sorted = sorted_path(scores, k, capacity);
    if sorted {
        assert_eq!(bits(&got), bits(&want), "{what}: best first (sorted path)");
    } else {
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{what}: position order (exact fallback)"
        );
        got.sort_by(|a, b| hcn_prerank::post::better(a.1, b.1, a.0, b.0));
        assert_eq!(bits(&got), bits(&want), "{what}: exact fallback");
    }
    sorted
}

/// Runs `top_k(flat scores, offsets, max_m, k) → (pos, val)` (each `users · k` slots) for every
/// `k` of [`KS`] over [`users`] and checks every user. `capacity` is the plan's for `max_m`
/// (`launch::topk_capacity`). Both paths must have been taken, where the test expects them.
pub fn check_all(
    capacity: usize,
    mut top_k: impl FnMut(&[f32], &[i32], usize, usize) -> (Vec<i32>, Vec<f32>),
) {
    let users = users();
    let mut offsets = vec![0i32];
    for (_, s) in &users {
        offsets.push(offsets.last().unwrap() + i32::try_from(s.len()).unwrap());
    }
    let flat: Vec<f32> = users.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let max_m = users.iter().map(|(_, s)| s.len()).max().unwrap();
    assert_eq!(max_m, M);
    let mut paths = Vec::new();
    for k in KS {
        let (pos, val) = top_k(&flat, &offsets, max_m, k);
        assert_eq!((pos.len(), val.len()), (users.len() * k, users.len() * k));
        for (u, (name, s)) in users.iter().enumerate() {
            let slots = u * k..(u + 1) * k;
            let what = format!("user {u} ({name}), k = {k}");
            let sorted = check_user(&what, s, k, capacity, &pos[slots.clone()], &val[slots]);
            paths.push(((*name, k), sorted));
        }
    }
    let path = |name: &str, k: usize| {
        paths
            .iter()
            .find(|(key, _)| *key == (name, k))
            .map(|&(_, p)| p)
            .unwrap()
    };
    // The cases meant to take each path do (by the rule the checks above verified).
    assert!(path("50,000 uniform", 1000), "sorted at k = 1000");
    assert!(path("50,000 uniform", 1), "sorted at k = 1");
    assert!(
        path("±0.0 and NaN", 1000),
        "signed zeros in the threshold bucket, sorted"
    );
    assert!(
        path("4096 in one bucket", 1000),
        "survivors exactly at the capacity"
    );
    assert!(!path("4097 in one bucket", 1000), "one past the capacity");
    assert!(!path("30,000 copies of the threshold", 1000), "overflow");
    assert!(
        path("30,000 copies of the threshold", 1),
        "the copies are below the top bucket"
    );
    assert!(!path("50,000 equal", 1), "all equal");
    assert!(!path("50,000 uniform", M), "k = m");
    assert!(
        path("1,234 uniform", M),
        "m < k, within the capacity: sorted"
    );
}
