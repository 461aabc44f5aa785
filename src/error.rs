//! One error type for the whole engine. Every variant carries the facts a user needs to fix the
//! problem: the file, the tensor name, what was expected and what was found, the request field.
//! Library code never panics on input; it returns one of these.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading a model or store, or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The safetensors container itself is malformed (header, offsets, sizes).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },

    /// The `hcn.config` metadata is missing, not JSON, or inconsistent.
    #[error("{path}: bad hcn.config: {reason}")]
    Config { path: PathBuf, reason: String },

    /// A tensor is missing, misshaped, of a wrong dtype, non-finite or not expected.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// The model, token store and candidate store do not fit together (e.g. different D).
    #[error("incompatible files: {0}")]
    Incompatible(String),

    /// A request was rejected; `field` names the request field at fault.
    #[error("bad request: {field}: {reason}")]
    Request { field: String, reason: String },

    /// A device (CUDA) problem: absent driver, no such GPU, out of memory, failed launch.
    #[error("device: {0}")]
    Device(String),
}

impl Error {
    /// Shorthand for a request error naming `field`.
    pub fn request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Request {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
