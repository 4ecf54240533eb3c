//! Settings of retrieval: the embedder behind the store's vectors and the reranker that
//! reorders a search's candidates.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Tokens in one forward pass of a local model unless configured, padding included (a text
/// longer than that runs alone). A pass's activations grow with its tokens, and past a few
/// hundred they no longer stay in the processor's caches between one matrix product and the
/// next: on two cores all-MiniLM-L6-v2 embedded texts of 55 tokens at 98–113 chunks/s in passes
/// of 32 texts and at 120–145 in passes of 8 (`bench embed --embedding-batch-size`).
pub const DEFAULT_PASS_TOKENS: usize = 512;

/// Embedders available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// Feature hashing of words and character n-grams: offline, instant, lexical.
    #[default]
    Hashing,
    /// Any OpenAI-compatible `/v1/embeddings` (OpenAI, Azure, TEI, Ollama, vLLM, LiteLLM).
    Openai,
    /// A sentence-transformers model of the BERT family from a local directory, run on the
    /// CPU in-process (the `local-models` cargo feature, on by default).
    Local,
}

impl EmbedderKind {
    /// The name used in settings and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbedderKind::Hashing => "hashing",
            EmbedderKind::Openai => "openai",
            EmbedderKind::Local => "local",
        }
    }
}

/// Settings of the embedder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// `hashing`, `openai` or `local`.
    pub embedder: EmbedderKind,
    /// Model name (openai).
    pub model: String,
    /// API root (openai); empty is OpenAI's.
    pub base_url: String,
    /// Size of the vectors. openai: required unless the model is OpenAI's own; hashing:
    /// overrides `store.embedding_dimension`; local: must match the model when set.
    pub dimensions: Option<usize>,
    /// Sends `dimensions` with each request (openai). Unset sends it to OpenAI's
    /// text-embedding-3 models only: most other servers refuse the field.
    pub send_dimensions: Option<bool>,
    /// Directory of a sentence-transformers model (local).
    pub model_dir: Option<PathBuf>,
    /// API key (openai). Prefer `DEEPRECALL_EMBEDDING_API_KEY` or `api_key_file`.
    pub api_key: Secret,
    /// File holding the API key (its first line).
    pub api_key_file: Option<PathBuf>,
    /// Texts per request (openai) or per forward pass (local).
    pub batch_size: usize,
    /// Estimated tokens per request (openai).
    pub batch_tokens: usize,
    /// Requests in flight at once (openai).
    pub concurrency: usize,
    /// Longest input in tokens (openai); longer texts are cut, with a warning.
    pub max_input_tokens: usize,
    /// Threads running the model (local).
    pub threads: usize,
    /// Tokens in one forward pass at most, padding included (local; see
    /// [`DEFAULT_PASS_TOKENS`]).
    pub pass_tokens: usize,
    /// Seconds for one request (openai).
    pub request_timeout_seconds: f64,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            embedder: EmbedderKind::Hashing,
            model: String::new(),
            base_url: String::new(),
            dimensions: None,
            send_dimensions: None,
            model_dir: None,
            api_key: Secret::default(),
            api_key_file: None,
            batch_size: 32,
            batch_tokens: 16_384,
            concurrency: 4,
            max_input_tokens: 8_191,
            threads: 2,
            pass_tokens: DEFAULT_PASS_TOKENS,
            request_timeout_seconds: 60.0,
        }
    }
}

/// Rerankers available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RerankerKind {
    /// Hits keep the fused order.
    #[default]
    None,
    /// Cohere's v2 `/rerank` shape, also served by TEI, Jina, Voyage, vLLM and Infinity.
    Cohere,
    /// A BERT cross-encoder from a local directory, run on the CPU in-process (the
    /// `local-models` cargo feature, on by default).
    Local,
}

/// Settings of the reranker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankConfig {
    /// `none`, `cohere` or `local`.
    pub reranker: RerankerKind,
    /// Model name (cohere).
    pub model: String,
    /// API root (cohere); empty is Cohere's, `https://api.cohere.com/v2`.
    pub base_url: String,
    /// Directory of a cross-encoder model (local).
    pub model_dir: Option<PathBuf>,
    /// API key (cohere). Prefer `DEEPRECALL_RERANKER_API_KEY` or `api_key_file`.
    pub api_key: Secret,
    /// File holding the API key (its first line).
    pub api_key_file: Option<PathBuf>,
    /// Fused candidates the reranker reorders before the cut to `top_k`.
    pub candidates: usize,
    /// Seconds for one rerank request; past it, the fused order stands.
    pub request_timeout_seconds: f64,
    /// Threads running the model (local).
    pub threads: usize,
    /// Query-passage pairs per forward pass (local).
    pub batch_size: usize,
    /// Tokens in one forward pass at most, padding included (local; see
    /// [`DEFAULT_PASS_TOKENS`]).
    pub pass_tokens: usize,
}

impl Default for RerankConfig {
    fn default() -> Self {
        RerankConfig {
            reranker: RerankerKind::None,
            model: String::new(),
            base_url: String::new(),
            model_dir: None,
            api_key: Secret::default(),
            api_key_file: None,
            candidates: 50,
            request_timeout_seconds: 10.0,
            threads: 2,
            batch_size: 16,
            pass_tokens: DEFAULT_PASS_TOKENS,
        }
    }
}
