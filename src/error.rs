//! The crate-level error: every layer's error, wrapped. The C ABI maps these to status codes.

use crate::engine::EngineError;
use crate::formats::FormatError;
use crate::generate::SamplingError;
use crate::model::ModelError;
use crate::template::TemplateError;
use crate::tokenizer::TokenizerError;

/// Any error from the public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// The caller asked for something the current state does not allow.
    #[error("{0}")]
    InvalidArgument(String),
    /// Saved session state that is malformed or belongs to another model.
    #[error("invalid session state: {0}")]
    State(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The operation was cancelled through its [`crate::CancelToken`]; state is consistent.
    #[error("cancelled")]
    Cancelled,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
