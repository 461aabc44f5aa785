//! Top-k selection over one request's scores in O(M): select the k-th best with
//! `select_nth_unstable_by` (introselect) on a buffer of positions, then sort only the k winners.
//! Sorting all M scores (M is tens of thousands, k ~ 1000) would spend most of its time ordering
//! losers.
//!
//! Order (SPEC §1.5, [`crate::post::better`], shared by every executor): score descending, ties by lower position. The comparator is a total order
//! on positions (two positions never compare equal), so the unstable selection and sort are still
//! deterministic. `-0.0` ties with `0.0`; a NaN score (never produced from finite inputs) sorts
//! after every number.

use std::cmp::Ordering;

use crate::post::{better, fast_order_bits, order_bits};

/// Reusable scratch for [`TopK::select`]: keeps its buffers between requests, so steady-state
/// serving does no heap growth here.
#[derive(Debug, Default, Clone)]
pub struct TopK {
    keys: Vec<u64>,
    idx: Vec<usize>,
    sample: Vec<u32>,
}

/// Below this many candidates the threshold prefilter does not pay for its sample.
const PREFILTER_MIN: usize = 8192;
/// Scores sampled (evenly spaced) to estimate the prefilter threshold.
const SAMPLE: usize = 1024;

/// Keys (`order_bits << 32 | !i`) of every `y[i]` whose order bits are `>= t`, into `keys`
/// (cleared first), in index order.
fn fill_above(y: &[f32], t: u32, keys: &mut Vec<u64>) {
    const BLOCK: usize = 16;
    keys.clear();
    let mut push = |i: usize, b: u32| {
        if b >= t {
            keys.push((b as u64) << 32 | !(i as u32) as u64);
        }
    };
    let mut blocks = y.chunks_exact(BLOCK);
    for (c, block) in (&mut blocks).enumerate() {
        let mut bits = [0u32; BLOCK];
        for (b, &v) in bits.iter_mut().zip(block) {
            *b = fast_order_bits(v);
        }
        let mut top = 0;
        for &b in &bits {
            top = top.max(b);
        }
        if top >= t {
            for (j, &b) in bits.iter().enumerate() {
                push(c * BLOCK + j, b);
            }
        }
    }
    let base = y.len() - blocks.remainder().len();
    for (j, &v) in blocks.remainder().iter().enumerate() {
        push(base + j, fast_order_bits(v));
    }
}

/// Keeps the `k` largest keys (`1 ≤ k`), in descending order: a selection, then a sort of the
/// winners only.
fn keep_best(keys: &mut Vec<u64>, k: usize) {
    if k < keys.len() {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
}

impl TopK {
    pub fn new() -> Self {
        TopK::default()
    }

    /// Writes into `out` (cleared first) the `min(k, #valid)` positions `i` with `valid(i)` and
    /// the largest `scores[i]`, best first, as `(position, score)`.
    pub fn select(
        &mut self,
        scores: &[f32],
        valid: impl Fn(usize) -> bool,
        k: usize,
        out: &mut Vec<(usize, f32)>,
    ) {
        self.select_by(scores.len(), |i| valid(i).then(|| scores[i]), k, out)
    }

    /// [`TopK::select`] over `m` candidates whose scores come from `score(i)` (`None` =
    /// unscored, never selected), e.g. the engine's `Option<f32>` scores.
    ///
    /// For large `m` and small `k` a sample of the scores gives a threshold that the k winners
    /// are very likely above; one pass keeps only candidates at or above it, and the selection
    /// runs on those few. If fewer than `k` pass, the pass is redone without a threshold, so the
    /// result is exact either way: with at least `k` candidates at or above `t`, the k-th best
    /// is at or above `t`, so no winner was filtered out.
    pub fn select_by(
        &mut self,
        m: usize,
        score: impl Fn(usize) -> Option<f32>,
        k: usize,
        out: &mut Vec<(usize, f32)>,
    ) {
        out.clear();
        if k == 0 {
            return;
        }
        if u32::try_from(m).is_err() {
            return self.select_general(m, score, k, out);
        }
        let threshold = self.threshold(m, &score, k);
        // One integer per candidate, larger = better: score order in the high half, the
        // complemented position in the low half (lower position wins a tie). Selection then
        // compares plain integers instead of chasing indices into `scores`.
        let fill = |keys: &mut Vec<u64>, t: u32| {
            keys.clear();
            for i in 0..m {
                if let Some(s) = score(i) {
                    let b = order_bits(s);
                    if b >= t {
                        keys.push((b as u64) << 32 | !(i as u32) as u64);
                    }
                }
            }
        };
        fill(&mut self.keys, threshold);
        if self.keys.len() < k && threshold > 0 {
            fill(&mut self.keys, 0);
        }
        keep_best(&mut self.keys, k);
        out.extend(self.keys.iter().map(|&key| {
            let i = !(key as u32) as usize;
            (i, f32::NAN)
        }));
        for o in out.iter_mut() {
            // Positions come from `score`, which returned `Some` for them above.
            o.1 = score(o.0).unwrap_or(f32::NAN);
        }
    }

    /// [`TopK::select_by`] over plain scores where `-inf` marks a candidate that is not to be
    /// selected (the engine's unknown ids; its real scores are finite, checked before). NaN must
    /// not occur. Ordered lists of several chunks combine with [`TopK::merge_ordered`].
    ///
    /// This is the engine's hot selection: the threshold pass runs over `f32`s sixteen at a time,
    /// testing a block's largest key before looking at its members, so the ~95% of candidates
    /// below the threshold cost a few vector instructions each instead of a branch and an
    /// `Option` test per score (measured: the `Option` pass took ~2.4 ns per candidate).
    pub fn select_scores(&mut self, y: &[f32], k: usize, out: &mut Vec<(usize, f32)>) {
        debug_assert!(!y.iter().any(|v| v.is_nan()));
        let score = |i: usize| (y[i] != f32::NEG_INFINITY).then_some(y[i]);
        if u32::try_from(y.len()).is_err() {
            return self.select_by(y.len(), score, k, out);
        }
        out.clear();
        if k == 0 {
            return;
        }
        // Everything above -inf; raised to the sampled threshold when that pays.
        let floor = fast_order_bits(f32::NEG_INFINITY) + 1;
        let threshold = self.threshold(y.len(), &score, k).max(floor);
        fill_above(y, threshold, &mut self.keys);
        if self.keys.len() < k && threshold > floor {
            fill_above(y, floor, &mut self.keys);
        }
        keep_best(&mut self.keys, k);
        out.extend(self.keys.iter().map(|&key| {
            let i = !(key as u32) as usize;
            (i, y[i])
        }));
    }

    /// The best `k` of several lists that are each ordered best first (as [`TopK::select_by`]
    /// returns them) and hold distinct positions: a linear merge, `O(k · lists)`, ties by lower
    /// position. Scores must not be NaN.
    pub fn merge_ordered(lists: &[Vec<(usize, f32)>], k: usize, out: &mut Vec<(usize, f32)>) {
        out.clear();
        if let [a, b] = lists {
            // Two chunks (two threads): one comparison per winner, no scan over the lists.
            out.reserve(k.min(a.len() + b.len()));
            let (mut i, mut j) = (0, 0);
            while out.len() < k {
                let next = match (a.get(i), b.get(j)) {
                    // `b`'s head only where strictly better: the general loop's tie rule.
                    (Some(&x), Some(&y)) if better(y.1, x.1, y.0, x.0) == Ordering::Less => {
                        j += 1;
                        y
                    }
                    (Some(&x), _) => {
                        i += 1;
                        x
                    }
                    (None, Some(&y)) => {
                        j += 1;
                        y
                    }
                    (None, None) => break,
                };
                out.push(next);
            }
            return;
        }
        let mut heads = vec![0usize; lists.len()];
        while out.len() < k {
            let mut best: Option<(usize, (usize, f32))> = None;
            for (l, list) in lists.iter().enumerate() {
                if let Some(&cand) = list.get(heads[l]) {
                    let wins = match best {
                        None => true,
                        Some((_, b)) => better(cand.1, b.1, cand.0, b.0) == Ordering::Less,
                    };
                    if wins {
                        best = Some((l, cand));
                    }
                }
            }
            match best {
                Some((l, cand)) => {
                    heads[l] += 1;
                    out.push(cand);
                }
                None => break,
            }
        }
    }

    /// The prefilter threshold (order bits; 0 = keep everything).
    fn threshold(&mut self, m: usize, score: &impl Fn(usize) -> Option<f32>, k: usize) -> u32 {
        if m < PREFILTER_MIN || k.saturating_mul(8) > m {
            return 0;
        }
        let step = m / SAMPLE;
        self.sample.clear();
        self.sample
            .extend((0..SAMPLE).filter_map(|j| score(j * step)).map(order_bits));
        let s = self.sample.len();
        // Expected sample members among the winners, with a generous margin.
        let want = (k as f64 * s as f64 / m as f64 * 1.5) as usize + 16;
        if want >= s {
            return 0;
        }
        self.sample.select_nth_unstable_by(want, |a, b| b.cmp(a));
        self.sample[want]
    }

    /// The same selection with positions that do not fit 32 bits.
    fn select_general(
        &mut self,
        m: usize,
        score: impl Fn(usize) -> Option<f32>,
        k: usize,
        out: &mut Vec<(usize, f32)>,
    ) {
        self.idx.clear();
        self.idx.extend((0..m).filter(|&i| score(i).is_some()));
        let value = |i: usize| score(i).unwrap_or(f32::NAN);
        let cmp = |a: &usize, b: &usize| better(value(*a), value(*b), *a, *b);
        if k < self.idx.len() {
            self.idx.select_nth_unstable_by(k - 1, cmp);
            self.idx.truncate(k);
        }
        self.idx.sort_unstable_by(cmp);
        out.extend(self.idx.iter().map(|&i| (i, value(i))));
    }
}

/// One-shot [`TopK::select`].
pub fn top_k(scores: &[f32], valid: impl Fn(usize) -> bool, k: usize) -> Vec<(usize, f32)> {
    let mut out = Vec::with_capacity(k.min(scores.len()));
    TopK::new().select(scores, valid, k, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_bits_is_monotone() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            0.0,
            1e-45,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_bits(w[0]) < order_bits(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(order_bits(-0.0), order_bits(0.0));
        assert!(order_bits(f32::NAN) < order_bits(f32::NEG_INFINITY));
    }

    #[test]
    fn general_path_agrees_with_packed_keys() {
        let scores: Vec<f32> = (0..300).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut t = TopK::new();
        for k in [1, 10, 299, 300, 301] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            t.select(&scores, |i| i % 7 != 3, k, &mut a);
            t.select_general(scores.len(), |i| (i % 7 != 3).then(|| scores[i]), k, &mut b);
            assert_eq!(a, b, "k={k}");
        }
    }

    /// Ordered per-chunk winners merged by `merge_ordered` equal one selection over all.
    #[test]
    fn ordered_chunks_merged_equal_one_selection() {
        let m = 12_000usize;
        let y: Vec<f32> = (0..m)
            .map(|i| match i % 11 {
                3 => f32::NEG_INFINITY,
                5 => -0.0,
                7 => 0.0,
                _ => ((i * 7919) % 89) as f32 - 44.0,
            })
            .collect();
        let mut t = TopK::new();
        for k in [1usize, 9, 700, 6000, 12_000] {
            for chunks in [1usize, 2, 3, 7] {
                let size = m.div_ceil(chunks);
                let lists: Vec<Vec<(usize, f32)>> = y
                    .chunks(size)
                    .enumerate()
                    .map(|(c, part)| {
                        let mut w = Vec::new();
                        t.select_scores(part, k, &mut w);
                        w.iter().map(|&(i, s)| (c * size + i, s)).collect()
                    })
                    .collect();
                let mut merged = Vec::new();
                TopK::merge_ordered(&lists, k, &mut merged);
                let mut want = Vec::new();
                t.select_scores(&y, k, &mut want);
                assert_eq!(merged, want, "k={k} chunks={chunks}");
            }
        }
    }

    /// `select_scores` (the engine's path: -inf = excluded) equals `select_by` with those
    /// candidates as `None`, on small and large inputs (below and above the prefilter size),
    /// with heavy ties and signed zeros.
    #[test]
    fn select_scores_equals_select_by() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut next = move || (rng.next_u64() >> 32) as u32;
        let mut t = TopK::new();
        for m in [0usize, 1, 15, 16, 17, 100, 9000, 40_000] {
            for variant in 0..4 {
                let y: Vec<f32> = (0..m)
                    .map(|i| {
                        let r = next();
                        match variant {
                            0 => r as f32 / 1e6 - 1e3,
                            1 => (r % 5) as f32 - 2.0,
                            2 if i % 3 == 0 => -0.0,
                            2 => 0.0,
                            _ if r % 4 == 0 => f32::NEG_INFINITY,
                            _ => (r % 1000) as f32 * if r % 2 == 0 { 1.0 } else { -1.0 },
                        }
                    })
                    .collect();
                let score = |i: usize| (y[i] != f32::NEG_INFINITY).then_some(y[i]);
                for k in [1usize, 3, 16, 1000, m.max(1)] {
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    t.select_scores(&y, k, &mut got);
                    t.select_by(m, score, k, &mut want);
                    assert_eq!(got, want, "m={m} variant={variant} k={k}");
                }
            }
        }
        for x in [
            f32::NEG_INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-45,
            7.0,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(fast_order_bits(x), order_bits(x), "{x}");
        }
    }

    /// Large M takes the sampled-threshold path; compare with a full sort on score
    /// distributions that stress it: distinct, heavy ties at the boundary, ascending (the sample
    /// misses the tail), a few huge outliers, and many unscored candidates.
    #[test]
    fn prefiltered_selection_equals_full_sort() {
        let m = 50_000usize;
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut next = move || (rng.next_u64() >> 32) as u32;
        let distributions: Vec<Vec<f32>> = vec![
            (0..m).map(|_| next() as f32 / 1e6).collect(),
            (0..m).map(|_| (next() % 4) as f32).collect(),
            (0..m).map(|i| i as f32).collect(),
            (0..m)
                .map(|i| if i % 9973 == 0 { 1e30 } else { -(i as f32) })
                .collect(),
            // High exactly at the sampled positions (step m / 1024 = 48): the threshold lands
            // among them, too few pass, and the fallback pass must run.
            (0..m)
                .map(|i| {
                    if i % 48 == 0 {
                        1e4 + i as f32
                    } else {
                        (i % 100) as f32
                    }
                })
                .collect(),
        ];
        let mut t = TopK::new();
        for scores in &distributions {
            for valid_every in [1usize, 3] {
                let valid = |i: usize| i.is_multiple_of(valid_every);
                for k in [1usize, 10, 1000, 6000, 49_999] {
                    let mut got = Vec::new();
                    t.select(scores, valid, k, &mut got);
                    let mut want: Vec<usize> = (0..m).filter(|&i| valid(i)).collect();
                    want.sort_by(|&a, &b| better(scores[a], scores[b], a, b));
                    want.truncate(k);
                    let got_pos: Vec<usize> = got.iter().map(|g| g.0).collect();
                    assert_eq!(got_pos, want, "k={k} valid_every={valid_every}");
                    assert!(got.iter().all(|&(i, s)| s.to_bits() == scores[i].to_bits()));
                }
            }
        }
    }
}
