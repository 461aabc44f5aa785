//! SPEC §1.5: the score of one candidate (eq. 8 and the `max` / `mean` modes).

use super::softmax;
use crate::config::ScoreMode;

/// `y` for item vector `x` (D) against the user's interests `xu` (n × D).
pub fn score(xu: &[f32], n: usize, x: &[f32], mode: ScoreMode) -> f32 {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    score_f64(xu, n, &x, mode)
}

/// [`score`] with the item vector in f64: the stored row exactly, I8 rows included (SPEC §3:
/// `scale · q` evaluated in float64).
pub fn score_f64(xu: &[f32], n: usize, x: &[f64], mode: ScoreMode) -> f32 {
    let dim = x.len();
    let s: Vec<f64> = (0..n)
        .map(|j| {
            xu[j * dim..(j + 1) * dim]
                .iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * b)
                .sum()
        })
        .collect();
    let y = match mode {
        ScoreMode::Softmax => {
            let mut alpha = s.clone();
            softmax(&mut alpha);
            alpha.iter().zip(&s).map(|(a, s)| a * s).sum()
        }
        ScoreMode::Max => s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ScoreMode::Mean => s.iter().sum::<f64>() / n as f64,
    };
    y as f32
}
