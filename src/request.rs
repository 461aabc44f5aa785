//! What goes into the engine and what comes out: [`Request`] (a user and the candidates to
//! score), the per-call [`RunOptions`] (k, what to return, a deadline or cancellation), and
//! [`Response`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The user side of a request (SPEC §4): behavior ids oldest first, profile fields by name, dense
/// features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserRequest {
    pub long: Vec<u64>,
    pub short: Vec<u64>,
    pub fields: Vec<(String, u64)>,
    pub dense: Vec<f32>,
}

/// A whole request: the user and the candidate ids to score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub user: UserRequest,
    pub candidates: Vec<u64>,
}

/// Cancels the requests that carry it ([`RunOptions::cancel`]): their work stops at the next
/// check (between layers of the user side, between blocks of candidates) and they answer
/// [`Error::Cancelled`](crate::Error::Cancelled). Cheap to clone; all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Cancels every request carrying this token (or a clone of it).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Per-call options of [`Engine::run_with`](crate::Engine::run_with) and
/// [`Engine::run_batch_with`](crate::Engine::run_batch_with). `Default`: no top-k, every score
/// and the interests returned, no deadline.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Return the `k` best candidates. Any `k` is accepted: it is clamped to the number of
    /// candidates (nothing is ever allocated from it).
    pub top_k: Option<usize>,
    /// Return every score, aligned with the candidates ([`Response::scores`]). A service that
    /// wants the top-k only saves building (and sending) the whole list.
    pub return_scores: bool,
    /// Return `X^U` ([`Response::interests`]).
    pub return_interests: bool,
    /// Give up at this instant: the work stops at the next check and the request answers
    /// [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded).
    pub deadline: Option<Instant>,
    /// Give up when this token is cancelled.
    pub cancel: Option<CancelToken>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            top_k: None,
            return_scores: true,
            return_interests: true,
            deadline: None,
            cancel: None,
        }
    }
}

impl RunOptions {
    /// The defaults with `top_k`.
    pub fn top_k(k: Option<usize>) -> Self {
        RunOptions {
            top_k: k,
            ..RunOptions::default()
        }
    }

    /// `Err` when the call should stop now (cancelled, or past its deadline); `stage` names
    /// where, for the error message.
    pub(crate) fn check(&self, stage: &'static str) -> crate::Result<()> {
        if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(crate::Error::Cancelled { stage });
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(crate::Error::DeadlineExceeded { stage });
        }
        Ok(())
    }

    /// True when a check could ever fail (so hot loops skip the clock otherwise).
    pub(crate) fn can_stop(&self) -> bool {
        self.deadline.is_some() || self.cancel.is_some()
    }
}

/// `X^U`, the user's `n × D` interests (row-major), and how many behaviors were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInterests {
    pub n: usize,
    pub dim: usize,
    pub values: Vec<f32>,
    pub skipped_behaviors: usize,
}

impl UserInterests {
    /// Interest `j` (`X^U_j`).
    pub fn row(&self, j: usize) -> &[f32] {
        &self.values[j * self.dim..(j + 1) * self.dim]
    }
}

/// Scores aligned with the request's candidate list; `None` for candidates not in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub scores: Vec<Option<f32>>,
    /// Unknown candidate ids, in request order (one entry per occurrence).
    pub missing_candidates: Vec<u64>,
}

/// One top-k entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Position in the request's candidate list.
    pub position: usize,
    pub id: u64,
    pub score: f32,
}

/// Wall time of each stage of one request (of its batch, on a device that runs batches whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Validation and id → row resolution (the front end).
    pub resolve: Duration,
    /// The user side, `X^U` (SPEC §1.1–1.4).
    pub user: Duration,
    /// Scoring every candidate (SPEC §1.5), with each thread's pre-selection of its best k.
    pub score: Duration,
    /// The final top-k order and the response's assembly.
    pub top_k: Duration,
}

/// What [`Engine::run`](crate::Engine::run) returns for one request. Equality compares the
/// answer (everything but [`Response::timings`]).
#[derive(Debug, Clone)]
pub struct Response {
    /// Aligned with the candidates, `None` for a missing one; empty when
    /// [`RunOptions::return_scores`] is off.
    pub scores: Vec<Option<f32>>,
    /// The `k` best by score, descending; ties by lower position. Empty when no `k` was asked.
    pub top_k: Vec<Scored>,
    pub missing_candidates: Vec<u64>,
    pub skipped_behaviors: usize,
    /// `X^U`; `None` when [`RunOptions::return_interests`] is off.
    pub interests: Option<UserInterests>,
    /// The version of the model that answered ([`Engine::version`](crate::Engine::version)).
    pub model_version: Arc<str>,
    /// Where the time went.
    pub timings: StageTimes,
}

impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        self.scores == other.scores
            && self.top_k == other.top_k
            && self.missing_candidates == other.missing_candidates
            && self.skipped_behaviors == other.skipped_behaviors
            && self.interests == other.interests
            && self.model_version == other.model_version
    }
}
