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
//! API.

pub mod auc;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
mod exec;
pub mod json;
pub mod model;
pub mod reference;
#[doc(hidden)]
pub mod rng;
mod safetensors_file;
mod spin;
pub mod store;
pub mod swap;
#[doc(hidden)]
pub mod synth;
pub mod tensor;

pub use config::{Block, HcnConfig, ScoreMode};
pub use engine::{
    CpuKernels, Device, Engine, EngineOptions, Limits, Parallelism, Request, Response, Scored,
    Scores, UnknownIds, UserInterests, UserRequest,
};
pub use error::{Error, Result};
pub use model::Model;
pub use store::ItemStore;
pub use swap::SharedEngine;

/// The README's Rust example is compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
