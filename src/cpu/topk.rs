//! Top-k selection over one request's scores in O(M): select the k-th best with
//! `select_nth_unstable_by` (introselect) on a buffer of positions, then sort only the k winners.
//! Sorting all M scores (M is tens of thousands, k ~ 1000) would spend most of its time ordering
//! losers.
//!
//! Order (SPEC §1.5): score descending, ties by lower position. The comparator is a total order
//! on positions (two positions never compare equal), so the unstable selection and sort are still
//! deterministic. `-0.0` ties with `0.0`; a NaN score (never produced from finite inputs) sorts
//! after every number.

use std::cmp::Ordering;

/// Reusable scratch for [`TopK::select`]: keeps its buffers between requests, so steady-state
/// serving does no heap growth here.
#[derive(Debug, Default, Clone)]
pub struct TopK {
    keys: Vec<u64>,
    idx: Vec<usize>,
}

/// Maps a score to a `u32` whose unsigned order is the score's numeric order (flip the sign bit
/// of positives, all bits of negatives), with `-0.0` folded onto `0.0` and NaN below everything.
#[inline]
fn order_bits(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let b = (x + 0.0).to_bits(); // -0.0 + 0.0 = +0.0
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Comparator for the general path: best first, ties by lower position.
#[inline]
fn better(scores: &[f32], a: usize, b: usize) -> Ordering {
    order_bits(scores[b])
        .cmp(&order_bits(scores[a]))
        .then(a.cmp(&b))
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
        out.clear();
        if k == 0 {
            return;
        }
        if u32::try_from(scores.len()).is_err() {
            return self.select_general(scores, valid, k, out);
        }
        // One integer per candidate, larger = better: score order in the high half, the
        // complemented position in the low half (lower position wins a tie). Selection then
        // compares plain integers instead of chasing indices into `scores`.
        self.keys.clear();
        self.keys.extend(
            (0..scores.len())
                .filter(|&i| valid(i))
                .map(|i| (order_bits(scores[i]) as u64) << 32 | !(i as u32) as u64),
        );
        if k < self.keys.len() {
            self.keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
            self.keys.truncate(k);
        }
        self.keys.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(self.keys.iter().map(|&key| {
            let i = !(key as u32) as usize;
            (i, scores[i])
        }));
    }

    /// The same selection with positions that do not fit 32 bits.
    fn select_general(
        &mut self,
        scores: &[f32],
        valid: impl Fn(usize) -> bool,
        k: usize,
        out: &mut Vec<(usize, f32)>,
    ) {
        self.idx.clear();
        self.idx.extend((0..scores.len()).filter(|&i| valid(i)));
        let cmp = |a: &usize, b: &usize| better(scores, *a, *b);
        if k < self.idx.len() {
            self.idx.select_nth_unstable_by(k - 1, cmp);
            self.idx.truncate(k);
        }
        self.idx.sort_unstable_by(cmp);
        out.extend(self.idx.iter().map(|&i| (i, scores[i])));
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
            t.select_general(&scores, |i| i % 7 != 3, k, &mut b);
            assert_eq!(a, b, "k={k}");
        }
    }
}
