//! Top-k selection (SPEC §1.5): the `k` largest scores, descending, ties broken by the lower
//! candidate position. Candidates without a score never enter. Selection, not a full sort: O(M)
//! expected to find the k winners, then O(k log k) to order them.

use std::cmp::Ordering;

/// SPEC's order: higher score first, then lower position.
#[inline]
fn rank(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The top `k` of `(position, score)` pairs built from `scores` (`None` = unscored), using
/// `scratch` as the working buffer (cleared first; reuse it to avoid per-request allocation).
pub fn top_k_into(scores: &[Option<f32>], k: usize, scratch: &mut Vec<(usize, f32)>) {
    scratch.clear();
    scratch.extend(
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s))),
    );
    select(scratch, k);
}

/// Same as [`top_k_into`] over dense scores (every position scored).
pub fn top_k_dense_into(scores: &[f32], k: usize, scratch: &mut Vec<(usize, f32)>) {
    scratch.clear();
    scratch.extend(scores.iter().copied().enumerate());
    select(scratch, k);
}

fn select(v: &mut Vec<(usize, f32)>, k: usize) {
    if k == 0 {
        v.clear();
        return;
    }
    if k < v.len() {
        v.select_nth_unstable_by(k - 1, rank);
        v.truncate(k);
    }
    v.sort_unstable_by(rank);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(scores: &[Option<f32>], k: usize) -> Vec<(usize, f32)> {
        let mut v: Vec<(usize, f32)> = scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        v.sort_by(rank);
        v.truncate(k);
        v
    }

    #[test]
    fn matches_a_full_sort_with_ties_and_gaps() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut scratch = Vec::new();
        for m in [0usize, 1, 2, 5, 17, 100, 1000] {
            // Few distinct values so ties are common; some candidates unscored.
            let scores: Vec<Option<f32>> = (0..m)
                .map(|_| {
                    let r = next();
                    (r % 7 != 0).then_some((r % 5) as f32 - 2.0)
                })
                .collect();
            for k in [0usize, 1, 3, m / 2, m, m + 3] {
                top_k_into(&scores, k, &mut scratch);
                assert_eq!(scratch, naive(&scores, k), "m={m} k={k}");
            }
        }
    }

    #[test]
    fn ties_prefer_lower_position() {
        let mut scratch = Vec::new();
        top_k_dense_into(&[1.0, 3.0, 3.0, 2.0, 3.0], 2, &mut scratch);
        assert_eq!(scratch, vec![(1, 3.0), (2, 3.0)]);
    }
}
