//! Reorders a search's fused candidates by a model that reads the query and each passage
//! together, which judges relevance better than either ranking that chose the candidates.

pub mod cohere;
#[cfg(feature = "local-models")]
pub mod local;

use async_trait::async_trait;

pub use cohere::{CohereReranker, CohereRerankerConfig};

/// Errors of the reranking layer. The engine never fails a query on them: it keeps the fused
/// order, warns and counts.
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    /// The reranker could not be reached or answered with an error.
    #[error("reranker unavailable: {0}")]
    Unavailable(String),
    /// The reranker answered with something that is not one score per passage.
    #[error("reranker answered badly: {0}")]
    BadResponse(String),
    /// The reranker's settings cannot work (no model, a bad URL, a refused key, a model
    /// directory missing a file).
    #[error("reranker misconfigured: {0}")]
    Misconfigured(String),
}

/// Scores passages against a query.
#[async_trait]
pub trait Reranker: Send + Sync + std::fmt::Debug {
    /// Names the reranker and its model, for logs, traces and the search cache key.
    fn id(&self) -> String;
    /// Returns one relevance score per passage, in the passages' order; higher is more
    /// relevant. Scores compare only within one call.
    async fn score(&self, query: &str, passages: &[String]) -> Result<Vec<f32>, RerankError>;
}
