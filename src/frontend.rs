//! The request front end: every rule about what a request may contain, applied once, the same for
//! every executor. It checks the [`Limits`], applies the unknown-id policies and SPEC §1.1's
//! truncation, validates the profile fields and dense features (SPEC §4), resolves ids to store
//! rows, clamps `k`, and checks the finiteness of what the executors computed ([`crate::post`]
//! turns their output into a response).
//!
//! The CPU executor calls [`Frontend::resolve_candidates`] on a second thread while the first
//! computes the user side (the resolution hides behind it); every other
//! executor resolves the whole request before it starts. Either way the rules are these.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::options::{EngineOptions, Limits, UnknownIds};
use crate::request::{Request, RunOptions, UserInterests, UserRequest};

/// Candidate ids resolved between two deadline / cancellation checks (when the call has either).
pub(crate) const CHECK_IDS: usize = 16384;
use crate::store::ItemStore;

/// A user request after validation: token rows (SPEC §1.1 applied) and field ids in config order.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedUser {
    pub long_rows: Vec<u32>,
    pub short_rows: Vec<u32>,
    pub field_ids: Vec<usize>,
    pub skipped_behaviors: usize,
}

/// Candidate ids resolved to store rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedCandidates {
    /// One row per candidate; row 0 stands in at the positions of unknown ids (their scores are
    /// discarded): dense rows let a kernel run over whole chunks without compacting around the
    /// (rare) gaps.
    pub rows: Vec<u32>,
    /// Positions of unknown ids, ascending.
    pub missing_positions: Vec<usize>,
    /// Unknown ids, in request order.
    pub missing: Vec<u64>,
}

impl ResolvedCandidates {
    /// True when position `i` holds a known candidate.
    pub fn is_known(&self, i: usize) -> bool {
        self.missing_positions.binary_search(&i).is_err()
    }
}

/// The files and policies the rules need.
#[derive(Debug, Clone)]
pub(crate) struct Frontend {
    pub model: Arc<Model>,
    pub tokens: Arc<ItemStore>,
    pub candidates: Arc<ItemStore>,
    limits: Limits,
    unknown_behaviors: UnknownIds,
    unknown_candidates: UnknownIds,
}

impl Frontend {
    pub fn new(
        model: Arc<Model>,
        tokens: Arc<ItemStore>,
        candidates: Arc<ItemStore>,
        options: &EngineOptions,
    ) -> Result<Self> {
        let d = model.config.dim;
        for (what, store) in [("token store", &tokens), ("candidate store", &candidates)] {
            if store.dim() != d {
                return Err(Error::Incompatible(format!(
                    "{what} {} has vectors of dimension {}, the model {} has D = {d}",
                    store.path.display(),
                    store.dim(),
                    model.path.display()
                )));
            }
        }
        Ok(Frontend {
            model,
            tokens,
            candidates,
            limits: options.limits,
            unknown_behaviors: options.unknown_behaviors,
            unknown_candidates: options.unknown_candidates,
        })
    }

    /// `k` as the request may have it: at most the number of candidates. Any `usize` is
    /// accepted; nothing is allocated from the caller's value.
    pub fn clamp_k(k: Option<usize>, candidates: usize) -> Option<usize> {
        k.map(|k| k.min(candidates))
    }

    /// The size limits of a whole request, checked before any work (cheap: lengths only).
    pub fn check_limits(&self, request: &Request) -> Result<()> {
        self.check_candidate_count(request.candidates.len())?;
        self.check_sequence_len("long", request.user.long.len())?;
        self.check_sequence_len("short", request.user.short.len())
    }

    fn check_sequence_len(&self, field: &str, len: usize) -> Result<()> {
        let limit = self.limits.max_behavior_ids;
        if len > limit {
            return Err(Error::limit(
                field,
                format!("{len} behavior ids exceed the limit of {limit}"),
            ));
        }
        Ok(())
    }

    fn check_candidate_count(&self, m: usize) -> Result<()> {
        let limit = self.limits.max_candidates;
        if m > limit {
            return Err(Error::limit(
                "candidates",
                format!("{m} candidates exceed the limit of {limit}"),
            ));
        }
        Ok(())
    }

    /// SPEC §1.1 and §4's request rules for the user side.
    pub fn resolve_user(&self, user: &UserRequest) -> Result<ResolvedUser> {
        let cfg = &self.model.config;
        let mut skipped = 0;
        let long_rows = self.resolve_sequence("long", &user.long, cfg.long_len, &mut skipped)?;
        let short_rows =
            self.resolve_sequence("short", &user.short, cfg.short_len, &mut skipped)?;
        let field_ids = self.resolve_fields(&user.fields)?;
        if user.dense.len() != cfg.user_dense {
            return Err(Error::request(
                "dense",
                format!(
                    "expected {} values, found {}",
                    cfg.user_dense,
                    user.dense.len()
                ),
            ));
        }
        if let Some(i) = user.dense.iter().position(|v| !v.is_finite()) {
            return Err(Error::request(
                format!("dense[{i}]"),
                format!("{} is not a finite number", user.dense[i]),
            ));
        }
        Ok(ResolvedUser {
            long_rows,
            short_rows,
            field_ids,
            skipped_behaviors: skipped,
        })
    }

    /// Profile fields: every configured field exactly once, by name, id inside its vocabulary.
    /// Returns the ids in config order. The only vocabulary check of the crate.
    pub fn resolve_fields(&self, fields: &[(String, u64)]) -> Result<Vec<usize>> {
        let cfg = &self.model.config;
        let mut field_ids = vec![usize::MAX; cfg.user_fields.len()];
        for (name, id) in fields {
            let Some(f) = cfg.user_fields.iter().position(|f| &f.name == name) else {
                let known: Vec<&str> = cfg.user_fields.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::request(
                    format!("fields.{name}"),
                    format!("not a profile field of this model (fields: {known:?})"),
                ));
            };
            if field_ids[f] != usize::MAX {
                return Err(Error::request(format!("fields.{name}"), "given twice"));
            }
            let vocab = cfg.user_fields[f].vocab;
            if *id >= vocab as u64 {
                return Err(Error::request(
                    format!("fields.{name}"),
                    format!("id {id} is outside the vocabulary 0..{vocab}"),
                ));
            }
            field_ids[f] = *id as usize;
        }
        if let Some(f) = field_ids.iter().position(|&v| v == usize::MAX) {
            return Err(Error::request(
                format!("fields.{}", cfg.user_fields[f].name),
                "missing (every profile field of the model is required)",
            ));
        }
        Ok(field_ids)
    }

    /// Drops ids not in the token store (counting them), then keeps the most recent `max_len`.
    fn resolve_sequence(
        &self,
        field: &str,
        ids: &[u64],
        max_len: usize,
        skipped: &mut usize,
    ) -> Result<Vec<u32>> {
        self.check_sequence_len(field, ids.len())?;
        let mut rows = Vec::with_capacity(ids.len().min(max_len));
        for (i, &id) in ids.iter().enumerate() {
            match self.tokens.lookup(id) {
                Some(r) => rows.push(r),
                None if self.unknown_behaviors == UnknownIds::Reject => {
                    return Err(Error::request(
                        format!("{field}[{i}]"),
                        format!("behavior id {id} is not in the token store"),
                    ))
                }
                None => *skipped += 1,
            }
        }
        if rows.len() > max_len {
            rows.drain(..rows.len() - max_len);
        }
        Ok(rows)
    }

    /// Store rows of the candidates (row 0 standing in for unknown ids), the unknown ids'
    /// positions and the ids themselves.
    /// `opts`' deadline and cancellation are checked every [`CHECK_IDS`] ids.
    pub fn resolve_candidates(
        &self,
        candidates: &[u64],
        opts: &RunOptions,
    ) -> Result<ResolvedCandidates> {
        self.check_candidate_count(candidates.len())?;
        // Written in place (no `push`): this loop runs once per candidate.
        let mut rows = vec![0u32; candidates.len()];
        let mut missing_positions = Vec::new();
        let mut missing = Vec::new();
        let can_stop = opts.can_stop();
        for (i, (&id, row)) in candidates.iter().zip(rows.iter_mut()).enumerate() {
            if can_stop && i % CHECK_IDS == 0 {
                opts.check("resolving candidates")?;
            }
            match self.candidates.lookup(id) {
                Some(r) => *row = r,
                None => {
                    if self.unknown_candidates == UnknownIds::Reject {
                        return Err(Error::request(
                            format!("candidates[{i}]"),
                            format!("id {id} is not in the candidate store"),
                        ));
                    }
                    missing.push(id);
                    missing_positions.push(i);
                    // `*row` stays 0: the stand-in row.
                }
            }
        }
        Ok(ResolvedCandidates {
            rows,
            missing_positions,
            missing,
        })
    }

    /// Interests handed to the split API ([`Engine::score`](crate::Engine::score)) must be this
    /// model's shape and finite.
    pub fn check_interests(&self, interests: &UserInterests) -> Result<()> {
        let cfg = &self.model.config;
        if interests.n != cfg.interests
            || interests.dim != cfg.dim
            || interests.values.len() != cfg.interests * cfg.dim
        {
            return Err(Error::misuse(
                "interests",
                format!(
                    "expected {} × {} values, found {} × {} ({} values)",
                    cfg.interests,
                    cfg.dim,
                    interests.n,
                    interests.dim,
                    interests.values.len()
                ),
            ));
        }
        if let Some(i) = interests.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::misuse(
                "interests",
                format!("value {i} is not finite"),
            ));
        }
        Ok(())
    }
}
