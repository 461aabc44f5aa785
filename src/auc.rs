//! Offline quality metrics for `hcn eval`: ROC AUC and log loss over (logit, label) pairs pooled
//! across requests. AUC is computed by sorting (O(E log E)), with tied scores counted 1/2 — the
//! Mann–Whitney statistic with average ranks — so it equals the pairwise definition exactly.

/// ROC AUC of `scores` against `labels`: the probability that a random positive outscores a random
/// negative, ties counting 1/2. `None` when there is no positive or no negative (AUC undefined).
/// Scores must not be NaN (the engine never produces one); a NaN would be ordered last.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // `+ 0.0` turns -0.0 into 0.0, so the two zeros tie (as `==` says) under `total_cmp`, which
    // is used because it is a total order (a NaN cannot break the sort).
    let key = |i: usize| scores[i] + 0.0;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| key(a).total_cmp(&key(b)));

    // Walk groups of equal scores: every negative ranked strictly below counts 1 for each positive
    // of the group, each negative inside the group counts 1/2.
    let mut wins = 0.0f64; // Σ over positives of (#negatives below + #negatives tied / 2)
    let mut negatives_below = 0u64;
    let mut i = 0;
    while i < order.len() {
        let s = key(order[i]);
        let mut j = i;
        let (mut pos, mut neg) = (0u64, 0u64);
        while j < order.len() && key(order[j]).total_cmp(&s).is_eq() {
            if labels[order[j]] {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        wins += pos as f64 * (negatives_below as f64 + neg as f64 / 2.0);
        negatives_below += neg;
        i = j;
    }
    Some(wins / (positives as f64 * negatives as f64))
}

/// Smallest / largest probability used by [`logloss`], so a confident mistake costs
/// `-ln(1e-15) ≈ 34.5` instead of infinity.
pub const PROBABILITY_CLAMP: f64 = 1e-15;

/// Mean binary cross-entropy of `p = sigmoid(y)` against the labels, the probability of the true
/// label clamped below at 1e-15. `None` for no examples.
pub fn logloss(logits: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(logits.len(), labels.len(), "one label per logit");
    if logits.is_empty() {
        return None;
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(&y, &l)| {
            // The probability given to the true label: sigmoid(-y) = 1 - sigmoid(y), computed
            // directly so a large |y| does not round 1 - p to 0 (the clamp is then symmetric).
            let y = f64::from(y);
            let q = sigmoid(if l { y } else { -y });
            -q.max(PROBABILITY_CLAMP).ln()
        })
        .sum();
    Some(total / logits.len() as f64)
}

/// `1 / (1 + e^-y)` without overflow for large `|y|`.
fn sigmoid(y: f64) -> f64 {
    if y >= 0.0 {
        1.0 / (1.0 + (-y).exp())
    } else {
        let e = y.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: average over all (positive, negative) pairs.
    fn pairwise_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        (pairs > 0.0).then(|| wins / pairs)
    }

    #[test]
    fn sorting_auc_equals_pairwise_definition() {
        let mut s = crate::rng::SplitMix64::new(7);
        for case in 0..200 {
            let len = (s.next_u64() % 40) as usize;
            // Few distinct values so ties are common.
            let levels = 1 + s.next_u64() % 6;
            let scores: Vec<f32> = (0..len)
                .map(|_| (s.next_u64() % levels) as f32 - 2.0)
                .collect();
            let labels: Vec<bool> = (0..len).map(|_| s.next_u64().is_multiple_of(3)).collect();
            let want = pairwise_auc(&scores, &labels);
            let got = auc(&scores, &labels);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "case {case}: {g} vs {w}"),
                (g, w) => assert_eq!(g, w, "case {case}"),
            }
        }
    }

    #[test]
    fn auc_known_shapes() {
        assert_eq!(auc(&[1.0, 2.0], &[false, true]), Some(1.0));
        assert_eq!(auc(&[1.0, 2.0], &[true, false]), Some(0.0));
        assert_eq!(auc(&[3.0, 3.0, 3.0], &[true, false, true]), Some(0.5));
        assert_eq!(auc(&[0.0, -0.0], &[true, false]), Some(0.5));
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn logloss_matches_the_formula_and_stays_finite() {
        let got = logloss(&[0.0, 2.0, -1.0], &[true, true, false]).unwrap();
        let s = |y: f64| 1.0 / (1.0 + (-y).exp());
        let want = (-(s(0.0)).ln() - s(2.0).ln() - (1.0 - s(-1.0)).ln()) / 3.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");

        let worst = logloss(&[1e30, -1e30], &[false, true]).unwrap();
        assert!(worst.is_finite());
        assert!((worst + PROBABILITY_CLAMP.ln()).abs() < 1e-6, "{worst}");
        assert!(logloss(&[1e30], &[true]).unwrap() < 1e-12);
        assert_eq!(logloss(&[], &[]), None);
    }
}
