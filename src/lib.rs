//! # hcn-prerank
//!
//! A pre-ranking scoring engine for the HCN model ("Hierarchical Multi-Interest Co-Network For
//! Coarse-Grained Ranking", Yuan et al.). Per request it computes a user's `n` interest vectors from
//! a long-term and a short-term behavior sequence, fuses them with a co-interest network and the
//! user's profile, and scores every candidate by a softmax-weighted inner product against
//! precomputed item vectors. `SPEC.md` (shipped beside the repository) is the contract for the math
//! and the file formats.
//!
//! Layout: [`config`] and [`model`] read the model file, [`store`] the item stores,
//! [`reference`](mod@reference) is the plain scalar oracle of SPEC §1, [`engine`] is the public
//! API over the request front end, the executors and [`post`] (shared post-processing).

mod abi;
pub mod auc;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
/// Without the `cuda` feature: a stub executor whose constructor says why (no `cfg` elsewhere).
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;
pub mod engine;
pub mod error;
mod exec;
mod fast;
pub mod floors;
mod frontend;
pub mod json;
pub mod kernel_times;
pub mod model;
pub mod options;
pub mod post;
pub mod reference;
pub mod request;
#[doc(hidden)]
pub mod rng;
mod safetensors_file;
#[cfg(feature = "serve")]
pub mod serve;
mod spin;
pub mod store;
pub mod swap;
#[doc(hidden)]
pub mod synth;
pub mod tensor;

pub use config::{Block, HcnConfig, ScoreMode};
pub use engine::Engine;
pub use error::{Error, ErrorKind, Result};
pub use kernel_times::{KernelTime, KernelTimes};
pub use model::Model;
pub use options::{
    CpuKernels, Device, EngineOptions, Limits, Parallelism, ScoreKernelChoice, UnknownIds,
};
pub use request::{
    CancelToken, Request, Response, RunOptions, Scored, Scores, StageTimes, UserInterests,
    UserRequest,
};
pub use store::ItemStore;
pub use swap::SharedEngine;

/// The README's Rust example is compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
