//! The public entry point: an [`Engine`] holds a model and its two stores and serves requests.
//! It is `Send + Sync`; share one behind an `Arc` across threads. The user side
//! ([`Engine::user_interests`]) and the candidate side ([`Engine::score`]) are separate calls so a
//! service can cache a user's interests; [`Engine::run`] does both plus top-k, [`Engine::run_batch`]
//! many requests.
//!
//! Policies are explicit [`EngineOptions`]; the defaults are SPEC's behavior.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::store::ItemStore;

/// Where the work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU executor.
    #[default]
    Cpu,
    /// CUDA device `i` (needs the `cuda` feature and a GPU); an error if unavailable.
    Cuda(usize),
    /// CUDA device 0 if usable, otherwise the CPU; [`Engine::device_report`] says why.
    Auto,
}

/// What to do with an id that is not in its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownIds {
    /// SPEC's rule: unknown behaviors are skipped and counted, unknown candidates get no score and
    /// are listed as missing.
    #[default]
    Skip,
    /// Reject the whole request with an error naming the first unknown id.
    Reject,
}

/// How many threads one request may use. A value, not a global: `Rayon(0)` runs on the caller's
/// current rayon pool (install the engine's calls inside your own pool to control it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Single-threaded.
    None,
    /// Use rayon; `0` = the current pool's threads, `t` = at most `t` parallel chunks.
    Rayon(usize),
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::Rayon(0)
    }
}

/// Caps that keep one request from exhausting memory. Requests beyond them are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most candidates in one request.
    pub max_candidates: usize,
    /// Most behavior ids in one sequence before unknown-skipping and truncation.
    pub max_behavior_ids: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_candidates: 1 << 20,
            max_behavior_ids: 1 << 16,
        }
    }
}

/// Engine options; `Default` is SPEC's behavior on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineOptions {
    pub device: Device,
    pub unknown_behaviors: UnknownIds,
    pub unknown_candidates: UnknownIds,
    pub parallelism: Parallelism,
    pub limits: Limits,
}

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

/// What [`Engine::run`] returns for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub scores: Vec<Option<f32>>,
    /// The `k` best by score, descending; ties by lower position. Empty when no `k` was asked.
    pub top_k: Vec<Scored>,
    pub missing_candidates: Vec<u64>,
    pub skipped_behaviors: usize,
    pub interests: UserInterests,
}

/// The engine: a model, its token store and its candidate store.
pub struct Engine {
    model: Arc<Model>,
    tokens: Arc<ItemStore>,
    candidates: Arc<ItemStore>,
    options: EngineOptions,
    device_report: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.path)
            .field("tokens", &self.tokens.path)
            .field("candidates", &self.candidates.path)
            .field("options", &self.options)
            .finish()
    }
}

impl Engine {
    /// Loads the three files and builds an engine.
    pub fn load(
        model: impl AsRef<Path>,
        tokens: impl AsRef<Path>,
        candidates: impl AsRef<Path>,
        options: EngineOptions,
    ) -> Result<Self> {
        let model = Arc::new(Model::load(model)?);
        let tokens = Arc::new(ItemStore::load(tokens)?);
        let candidates = Arc::new(ItemStore::load(candidates)?);
        Self::new(model, tokens, candidates, options)
    }

    /// Builds an engine from loaded parts; checks that their dimensions agree.
    pub fn new(
        model: Arc<Model>,
        tokens: Arc<ItemStore>,
        candidates: Arc<ItemStore>,
        options: EngineOptions,
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
        let device_report = match options.device {
            Device::Cpu => "cpu: requested".to_string(),
            Device::Auto => "cpu: no CUDA support in this build (feature `cuda` off)".to_string(),
            Device::Cuda(i) => {
                return Err(Error::Device(format!(
                    "cuda:{i} requested but this build has no CUDA support (rebuild with `--features cuda`)"
                )))
            }
        };
        Ok(Engine {
            model,
            tokens,
            candidates,
            options,
            device_report,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokens(&self) -> &ItemStore {
        &self.tokens
    }

    pub fn candidates(&self) -> &ItemStore {
        &self.candidates
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Which device serves requests and why (e.g. why `Auto` fell back to the CPU).
    pub fn device_report(&self) -> &str {
        &self.device_report
    }
}
