//! The post-processing every executor shares, so no two of them can disagree on it:
//!
//! - **the order** of SPEC §1.5: score descending, ties by lower candidate position, with
//!   `-0.0` equal to `+0.0` ([`order_bits`], [`better`]). The CPU's selection
//!   ([`crate::cpu::TopK`]) is built on it; a GPU's kernel may propose the winners, but
//!   `finish` puts them in this order;
//! - **the finiteness rule**: a non-finite `X^U` or score is never returned (JSON would write it
//!   as `null`, the mark of a missing candidate; a NaN would have no place in the order): the
//!   request fails with [`Error::Overflow`] naming where;
//! - **the response**: scores aligned with the candidates, ids on the top-k, what the caller asked
//!   for ([`RunOptions`]) and nothing more.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::frontend::{ResolvedCandidates, ResolvedUser};
use crate::request::{Response, RunOptions, Scored, StageTimes, UserInterests};

/// Maps a score to a `u32` whose unsigned order is the score's numeric order (flip the sign bit
/// of positives, all bits of negatives), with `-0.0` folded onto `0.0` and NaN below everything.
#[inline]
pub fn order_bits(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    fast_order_bits(x)
}

/// [`order_bits`] without the NaN test (callers exclude NaN), branch-free so loops over it
/// vectorise: equal to `order_bits` on every non-NaN value.
#[inline(always)]
pub fn fast_order_bits(x: f32) -> u32 {
    let b = (x + 0.0).to_bits(); // -0.0 + 0.0 = +0.0
    b ^ (((b as i32) >> 31) as u32 | 0x8000_0000)
}

/// The order of SPEC §1.5 on `(score, position)` pairs: `Less` when `a` ranks before `b`.
#[inline]
pub fn better(sa: f32, sb: f32, a: usize, b: usize) -> Ordering {
    order_bits(sb).cmp(&order_bits(sa)).then(a.cmp(&b))
}

/// The finiteness rule for `X^U`.
pub fn check_interests_finite(values: &[f32], dim: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::overflow(
            "interests",
            format!(
                "X^U[{}][{}] is {}: the model's arithmetic overflows F32 for this request",
                i / dim.max(1),
                i % dim.max(1),
                values[i]
            ),
        )),
    }
}

/// The finiteness rule for scores: `y[i]` is the score at request position `offset + i`, and
/// `is_known(position)` says whether that position holds a known candidate (the others' values
/// are ignored). `candidates` are the request's ids.
pub fn check_scores_finite(
    y: &[f32],
    offset: usize,
    is_known: impl Fn(usize) -> bool,
    candidates: &[u64],
) -> Result<()> {
    // One vectorised pass; the search for the offending candidate only when it fails.
    if y.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return Ok(());
    }
    match (0..y.len()).find(|&i| !y[i].is_finite() && is_known(offset + i)) {
        None => Ok(()),
        Some(i) => {
            let p = offset + i;
            Err(Error::overflow(
                format!("candidates[{p}]"),
                format!(
                    "the score of id {} is {}: the model's arithmetic overflows F32 for this candidate",
                    candidates.get(p).copied().unwrap_or_default(),
                    y[i]
                ),
            ))
        }
    }
}

/// Puts proposed `(position, score)` winners in SPEC §1.5's order and keeps the best `k`
/// (already-ordered proposals cost one linear pass).
pub fn order_top_k(proposals: &mut Vec<(usize, f32)>, k: usize) {
    proposals.sort_unstable_by(|a, b| better(a.1, b.1, a.0, b.0));
    proposals.dedup_by_key(|p| p.0);
    proposals.truncate(k);
}

/// What an executor computed for one request, before the shared post-processing.
#[derive(Debug, Default)]
pub(crate) struct Computed {
    /// `X^U`, `n × D`.
    pub interests: Vec<f32>,
    /// Aligned with the candidates, `None` at the unknown ones; empty when the caller did not
    /// ask for scores and the executor did not keep them.
    pub scores: Vec<Option<f32>>,
    /// True when the executor applied [`check_scores_finite`] to every score itself (the CPU
    /// does, per chunk, while the scores are in cache); otherwise [`finish`] does.
    pub scores_checked: bool,
    /// Proposed top-k winners `(position, score)`, any order, at least the best `k` among them.
    pub proposals: Vec<(usize, f32)>,
    pub timings: StageTimes,
}

/// The shared last step: finiteness, the top-k order, the response.
pub(crate) fn finish(
    mut c: Computed,
    request_ids: &[u64],
    user: &ResolvedUser,
    cands: ResolvedCandidates,
    options: &RunOptions,
    (n, dim): (usize, usize),
    version: &Arc<str>,
) -> Result<Response> {
    let start = Instant::now();
    check_interests_finite(&c.interests, dim)?;
    if !c.scores_checked {
        let y: Vec<f32> = c.scores.iter().map(|s| s.unwrap_or(0.0)).collect();
        check_scores_finite(&y, 0, |p| cands.is_known(p), request_ids)?;
    }
    let top_k = match crate::frontend::Frontend::clamp_k(options.top_k, request_ids.len()) {
        None => Vec::new(),
        Some(k) => {
            order_top_k(&mut c.proposals, k);
            c.proposals
                .iter()
                .map(|&(position, score)| Scored {
                    position,
                    id: request_ids[position],
                    score,
                })
                .collect()
        }
    };
    let mut timings = c.timings;
    timings.top_k += start.elapsed();
    Ok(Response {
        scores: if options.return_scores {
            c.scores
        } else {
            Vec::new()
        },
        top_k,
        missing_candidates: cands.missing,
        skipped_behaviors: user.skipped_behaviors,
        interests: options.return_interests.then_some(UserInterests {
            n,
            dim,
            values: c.interests,
            skipped_behaviors: user.skipped_behaviors,
        }),
        model_version: Arc::clone(version),
        timings,
    })
}
