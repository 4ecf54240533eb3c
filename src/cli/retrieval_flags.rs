//! Flags choosing the embedder (every command that opens the store) and the reranker (the
//! server), each a shorter way to set an `[embedding]` or `[rerank]` setting.

use std::path::PathBuf;

use clap::Args;

/// The embedder behind the store's vectors.
#[derive(Debug, Args)]
pub(super) struct EmbeddingFlags {
    /// Embedder: hashing, openai or local; env DEEPRECALL_EMBEDDER.
    #[arg(long)]
    embedder: Option<String>,
    /// Embedding model (openai); env DEEPRECALL_EMBEDDING_MODEL.
    #[arg(long)]
    embedding_model: Option<String>,
    /// API root of the embeddings server (openai); env DEEPRECALL_EMBEDDING_BASE_URL.
    #[arg(long)]
    embedding_base_url: Option<String>,
    /// Size of the vectors; env DEEPRECALL_EMBEDDING_DIMENSIONS.
    #[arg(long)]
    embedding_dimensions: Option<usize>,
    /// Directory of a sentence-transformers model (local); env DEEPRECALL_EMBEDDING_MODEL_DIR.
    #[arg(long)]
    embedding_model_dir: Option<PathBuf>,
    /// File holding the embeddings API key; else env DEEPRECALL_EMBEDDING_API_KEY.
    #[arg(long)]
    embedding_api_key_file: Option<PathBuf>,
}

impl EmbeddingFlags {
    /// Adds the flags given as `("section.key", value)` settings.
    pub(super) fn push_to(&self, flags: &mut Vec<(String, String)>) {
        let mut set = |path: &str, value: Option<String>| {
            if let Some(value) = value {
                flags.push((path.to_string(), value));
            }
        };
        set("embedding.embedder", self.embedder.clone());
        set("embedding.model", self.embedding_model.clone());
        set("embedding.base_url", self.embedding_base_url.clone());
        set(
            "embedding.dimensions",
            self.embedding_dimensions.map(|n| n.to_string()),
        );
        set("embedding.model_dir", display(&self.embedding_model_dir));
        set(
            "embedding.api_key_file",
            display(&self.embedding_api_key_file),
        );
    }
}

/// The reranker of search hits.
#[derive(Debug, Args)]
pub(super) struct RerankFlags {
    /// Reranker: none, cohere or local; env DEEPRECALL_RERANKER.
    #[arg(long)]
    reranker: Option<String>,
    /// Reranking model (cohere); env DEEPRECALL_RERANKER_MODEL.
    #[arg(long)]
    reranker_model: Option<String>,
    /// API root of the rerank server (cohere); env DEEPRECALL_RERANKER_BASE_URL.
    #[arg(long)]
    reranker_base_url: Option<String>,
    /// Directory of a cross-encoder model (local); env DEEPRECALL_RERANKER_MODEL_DIR.
    #[arg(long)]
    reranker_model_dir: Option<PathBuf>,
    /// File holding the rerank API key; else env DEEPRECALL_RERANKER_API_KEY.
    #[arg(long)]
    reranker_api_key_file: Option<PathBuf>,
}

impl RerankFlags {
    /// Adds the flags given as `("section.key", value)` settings.
    pub(super) fn push_to(&self, flags: &mut Vec<(String, String)>) {
        let mut set = |path: &str, value: Option<String>| {
            if let Some(value) = value {
                flags.push((path.to_string(), value));
            }
        };
        set("rerank.reranker", self.reranker.clone());
        set("rerank.model", self.reranker_model.clone());
        set("rerank.base_url", self.reranker_base_url.clone());
        set("rerank.model_dir", display(&self.reranker_model_dir));
        set("rerank.api_key_file", display(&self.reranker_api_key_file));
    }
}

fn display(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|path| path.display().to_string())
}
