//! One error type for the whole engine. Every variant carries the facts a user needs to fix the
//! problem: the file, the tensor name, what was expected and what was found, the request field.
//! Library code never panics on input; it returns one of these. A service maps an error to its
//! protocol's status through [`Error::kind`], never through the message text.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading a model or store, or serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// A request was rejected (SPEC §4's rules); `field` names the request field at fault.
    #[error("bad request: {field}: {reason}")]
    Request { field: String, reason: String },

    /// A request is over one of the engine's [`Limits`](crate::Limits) (`field` names which).
    #[error("request over a limit: {field}: {reason}")]
    Limit { field: String, reason: String },

    /// The model's F32 arithmetic overflowed for this request (every weight is finite, but large
    /// ones can still overflow for some inputs). `field` names where: `interests` or
    /// `candidates[i]`. No non-finite score is ever returned.
    #[error("arithmetic overflow: {field}: {reason}")]
    Overflow { field: String, reason: String },

    /// The caller misused the API (e.g. interests of another model passed to
    /// [`Engine::score`](crate::Engine::score)): a bug in the calling program, not in a request.
    #[error("API misuse: {what}: {reason}")]
    Misuse { what: String, reason: String },

    /// The request's deadline ([`RunOptions::deadline`](crate::RunOptions)) passed; its work was
    /// stopped.
    #[error("deadline exceeded ({stage})")]
    DeadlineExceeded { stage: &'static str },

    /// The request was cancelled through its [`CancelToken`](crate::CancelToken); its work was
    /// stopped.
    #[error("cancelled ({stage})")]
    Cancelled { stage: &'static str },

    /// A device (CUDA) problem: absent driver, no such GPU, out of memory, failed launch.
    #[error("device: {0}")]
    Device(String),

    /// A CUDA driver call failed: `what` the engine was doing, `source` the driver's own error
    /// (kept, not flattened into the message).
    #[error("device: {what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// What kind of failure an [`Error`] is, for choosing a status code (gRPC / HTTP) without
/// reading messages. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names something that does not exist (gRPC INVALID_ARGUMENT,
    /// HTTP 400).
    InvalidArgument,
    /// The request is well formed but larger than the engine accepts (RESOURCE_EXHAUSTED /
    /// HTTP 413).
    LimitExceeded,
    /// The request's deadline passed (DEADLINE_EXCEEDED / 504).
    DeadlineExceeded,
    /// The request was cancelled by its caller (CANCELLED / 499).
    Cancelled,
    /// The device (GPU) cannot serve now (UNAVAILABLE / 503).
    Unavailable,
    /// A model or store file is unusable (a load or reload failed; FAILED_PRECONDITION / 500).
    InvalidModel,
    /// The engine could not compute an answer it would stand behind (arithmetic overflow) or was
    /// misused by the calling program (INTERNAL / 500).
    Internal,
}

impl ErrorKind {
    /// The gRPC status code name of this kind (`"INVALID_ARGUMENT"`, …).
    pub fn grpc_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::LimitExceeded => "RESOURCE_EXHAUSTED",
            ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::InvalidModel => "FAILED_PRECONDITION",
            ErrorKind::Internal => "INTERNAL",
        }
    }

    /// The HTTP status of this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::LimitExceeded => 413,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Cancelled => 499,
            ErrorKind::Unavailable => 503,
            ErrorKind::InvalidModel | ErrorKind::Internal => 500,
        }
    }
}

impl Error {
    /// Shorthand for a request error naming `field`.
    pub fn request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Request {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a limit breach naming `field`.
    pub fn limit(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Limit {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an arithmetic overflow at `field`.
    pub fn overflow(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Overflow {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an API misuse.
    pub fn misuse(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Misuse {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The kind of failure, for status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Request { .. } => ErrorKind::InvalidArgument,
            Error::Limit { .. } => ErrorKind::LimitExceeded,
            Error::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Device(_) | Error::Driver { .. } => ErrorKind::Unavailable,
            Error::Io { .. }
            | Error::Format { .. }
            | Error::Config { .. }
            | Error::Tensor { .. }
            | Error::Incompatible(_) => ErrorKind::InvalidModel,
            Error::Overflow { .. } | Error::Misuse { .. } => ErrorKind::Internal,
        }
    }
}
