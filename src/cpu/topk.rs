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

/// Reusable scratch for [`TopK::select`]: keeps its buffer between requests, so steady-state
/// serving does no heap growth here.
#[derive(Debug, Default, Clone)]
pub struct TopK {
    idx: Vec<usize>,
}

#[inline]
fn better(scores: &[f32], a: usize, b: usize) -> Ordering {
    let (sa, sb) = (scores[a], scores[b]);
    match sb.partial_cmp(&sa) {
        Some(Ordering::Equal) | None if sa.is_nan() == sb.is_nan() => a.cmp(&b),
        Some(o) => o,
        None => sa.is_nan().cmp(&sb.is_nan()),
    }
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
        self.idx.clear();
        if k == 0 {
            return;
        }
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
