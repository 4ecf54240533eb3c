//! The engine layer's one error enum; only the API layers turn it into statuses.

use std::sync::Arc;

use crate::cache::CacheError;
use crate::llm::LlmError;
use crate::store::StoreError;

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Path of the offending field, e.g. `queries[3].top_k`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model failed before the run found anything to answer from.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The caller went away before the result was ready.
    #[error("the query was cancelled")]
    Cancelled,
    /// The caller's deadline leaves no time to answer, or passed before the run found
    /// anything to answer from.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(&'static str),
    /// The error of a run whose result several identical queries shared.
    #[error(transparent)]
    Shared(Arc<EngineError>),
    /// The work behind a query broke off (its task panicked): a fault of the server.
    #[error("the query's run failed: {0}")]
    RunFailed(String),
}

impl EngineError {
    /// Builds an invalid-argument error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path of an invalid-argument error, e.g. with `queries[3]`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            EngineError::InvalidArgument { field, message } => EngineError::InvalidArgument {
                field: format!("{prefix}.{field}"),
                message,
            },
            other => other,
        }
    }
}
