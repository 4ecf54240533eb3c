//! Turns text into vectors for the store's vector index.

pub mod hashing;
#[cfg(feature = "local-models")]
pub mod local;
pub mod openai;

use async_trait::async_trait;

pub use hashing::HashingEmbedder;
pub use openai::{OpenAiEmbedder, OpenAiEmbedderConfig};

/// Errors of the embedding layer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The embedding backend could not be reached or answered with an error.
    #[error("embedding backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something that is not an embedding.
    #[error("embedding backend answered badly: {0}")]
    BadResponse(String),
    /// The embedder's settings cannot work (no model, a bad URL, a key the backend refuses,
    /// a model directory missing a file).
    #[error("embedder misconfigured: {0}")]
    Misconfigured(String),
}

/// A vector stored sparsely: the feature-hashing embedder fills few of its dimensions, and
/// dense embeddings convert losslessly with [`Embedding::from_dense`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embedding {
    /// Dimensions with a non-zero value, ascending and unique.
    pub indices: Vec<u32>,
    /// The value of each dimension in `indices`.
    pub values: Vec<f32>,
}

impl Embedding {
    /// Builds a sparse embedding from a dense vector, dropping zeros.
    pub fn from_dense(dense: &[f32]) -> Self {
        let mut embedding = Embedding::default();
        for (index, value) in dense.iter().enumerate() {
            if *value != 0.0 {
                embedding.indices.push(index as u32);
                embedding.values.push(*value);
            }
        }
        embedding
    }

    /// Spreads the embedding over `dimension` values; indices beyond it are dropped.
    pub fn to_dense(&self, dimension: usize) -> Vec<f32> {
        let mut dense = vec![0.0; dimension];
        for (index, value) in self.indices.iter().zip(&self.values) {
            if let Some(slot) = dense.get_mut(*index as usize) {
                *slot = *value;
            }
        }
        dense
    }
}

/// Cosine similarity of two vectors, summed in f64; 0 when either is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
}

/// Turns texts into vectors. Implementations must be deterministic for a given [`Embedder::id`]:
/// the store persists vectors and re-embeds everything when the id changes.
#[async_trait]
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Identifies the embedder and every setting that changes its vectors.
    fn id(&self) -> String;
    /// Number of dimensions of the vectors.
    fn dimension(&self) -> usize;
    /// True when every vector fills (nearly) all of its dimensions, as a neural model's do:
    /// the store then keeps them in a dense index rather than an inverted one.
    fn dense(&self) -> bool {
        false
    }
    /// Embeds each text; the result has one embedding per input, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError>;
}
