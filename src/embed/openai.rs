//! Embeddings from any OpenAI-compatible `/v1/embeddings`: OpenAI, Azure OpenAI, TEI, Ollama,
//! vLLM, LiteLLM.
//!
//! Texts go out in batches bounded by count and by estimated tokens, several batches at a time,
//! through the same HTTP client as the chat backends (timeouts, retries with backoff,
//! `Retry-After`, the caller's trace context). A text longer than the model takes is cut, with
//! a warning, rather than failing the whole write: the start of a document carries most of what
//! a search needs from it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{EmbedError, Embedder, Embedding};
use crate::llm::http::{HttpClient, RetryPolicy, bearer_client, endpoint};
use crate::llm::{LlmError, UsageMeter};
use crate::secret::Secret;

/// OpenAI's public API root.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Characters counted per token when cutting a text. Real tokenizers average about four
/// characters a token on English prose but fewer on code, numbers and other scripts: three
/// keeps a cut text under the model's limit in nearly every case.
const CHARS_PER_TOKEN_WHEN_CUTTING: usize = 3;

/// Vector sizes of the models whose size is public, so that they need no
/// `embedding_dimensions`.
const KNOWN_DIMENSIONS: &[(&str, usize)] = &[
    ("text-embedding-3-small", 1536),
    ("text-embedding-3-large", 3072),
    ("text-embedding-ada-002", 1536),
];

/// Settings of an OpenAI-compatible embeddings backend.
#[derive(Debug, Clone)]
pub struct OpenAiEmbedderConfig {
    /// API root; requests go to `{base_url}/embeddings`.
    pub base_url: String,
    /// API key; local servers (TEI, Ollama, vLLM) need none.
    pub api_key: Secret,
    /// Model name.
    pub model: String,
    /// Size of the vectors. Required unless the model is one of OpenAI's, whose size is known.
    pub dimensions: Option<usize>,
    /// Whether to ask the model for `dimensions` (OpenAI's text-embedding-3 models shorten
    /// their vectors on request; most other servers refuse the field). `None` asks only the
    /// text-embedding-3 family.
    pub send_dimensions: Option<bool>,
    /// Most texts in one request.
    pub batch_size: usize,
    /// Most estimated tokens in one request.
    pub batch_tokens: usize,
    /// Requests in flight at once for one call.
    pub concurrency: usize,
    /// Longest input the model takes, in tokens; longer texts are cut.
    pub max_input_tokens: usize,
    /// Headers added to every request.
    pub extra_headers: Vec<(String, String)>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request.
    pub request_timeout: Duration,
    /// Retries of one request.
    pub retry: RetryPolicy,
}

impl Default for OpenAiEmbedderConfig {
    fn default() -> Self {
        OpenAiEmbedderConfig {
            base_url: OPENAI_BASE_URL.into(),
            api_key: Secret::default(),
            model: String::new(),
            dimensions: None,
            send_dimensions: None,
            // TEI's default limits (32 inputs, 16,384 tokens a batch) are the tightest of the
            // common servers; OpenAI takes far more.
            batch_size: 32,
            batch_tokens: 16_384,
            concurrency: 4,
            max_input_tokens: 8_191,
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// An OpenAI-compatible embeddings backend.
#[derive(Debug)]
pub struct OpenAiEmbedder {
    model: String,
    dimension: usize,
    send_dimensions: bool,
    batch_size: usize,
    batch_tokens: usize,
    concurrency: usize,
    max_input_chars: usize,
    url: reqwest::Url,
    http: HttpClient,
    meter: Option<UsageMeter>,
}

impl OpenAiEmbedder {
    /// Builds the backend, checking the settings.
    pub fn new(config: OpenAiEmbedderConfig) -> Result<Self, EmbedError> {
        let model = config.model.trim().to_string();
        if model.is_empty() {
            return Err(EmbedError::Misconfigured(
                "the openai embedder needs a model: set --embedding-model".into(),
            ));
        }
        let known = KNOWN_DIMENSIONS
            .iter()
            .find(|(name, _)| *name == model)
            .map(|(_, dimension)| *dimension);
        let dimension = config.dimensions.or(known).ok_or_else(|| {
            EmbedError::Misconfigured(format!(
                "the size of {model:?}'s vectors is not known: set --embedding-dimensions"
            ))
        })?;
        if dimension == 0 {
            return Err(EmbedError::Misconfigured(
                "embedding dimensions must be at least 1".into(),
            ));
        }
        let send_dimensions = config.send_dimensions.unwrap_or_else(|| {
            config.dimensions.is_some() && model.starts_with("text-embedding-3")
        });
        let base = config.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EmbedError::Misconfigured(format!(
                "embedding base URL {base:?} must start with http:// or https://"
            )));
        }
        let http = bearer_client(
            &config.api_key,
            &config.extra_headers,
            config.connect_timeout,
            config.request_timeout,
            config.retry,
        )
        .map_err(misconfigured)?;
        Ok(OpenAiEmbedder {
            model,
            dimension,
            send_dimensions,
            batch_size: config.batch_size.max(1),
            batch_tokens: config.batch_tokens.max(1),
            concurrency: config.concurrency.max(1),
            max_input_chars: config
                .max_input_tokens
                .max(1)
                .saturating_mul(CHARS_PER_TOKEN_WHEN_CUTTING),
            url: endpoint(&format!("{base}/embeddings")).map_err(misconfigured)?,
            http,
            meter: None,
        })
    }

    /// Returns the embedder reporting its usage to `meter`.
    pub fn with_meter(mut self, meter: UsageMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Splits the texts into requests: consecutive texts, at most `batch_size` of them and at
    /// most `batch_tokens` estimated tokens, but always at least one text.
    fn batches<'a>(&self, texts: &'a [String]) -> Vec<&'a [String]> {
        let mut batches = Vec::new();
        let mut start = 0;
        let mut tokens = 0;
        for (index, text) in texts.iter().enumerate() {
            let estimate = estimate_tokens(text.chars().count().min(self.max_input_chars));
            let full = index - start >= self.batch_size || tokens + estimate > self.batch_tokens;
            if index > start && full {
                batches.push(&texts[start..index]);
                start = index;
                tokens = 0;
            }
            tokens += estimate;
        }
        if start < texts.len() {
            batches.push(&texts[start..]);
        }
        batches
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        let mut cut = 0;
        let input: Vec<&str> = texts
            .iter()
            .map(|text| match text.char_indices().nth(self.max_input_chars) {
                Some((end, _)) => {
                    cut += 1;
                    &text[..end]
                }
                None => text.as_str(),
            })
            .collect();
        if cut > 0 {
            tracing::warn!(
                model = %self.model,
                texts = cut,
                max_chars = self.max_input_chars,
                "texts longer than the embedding model takes were cut"
            );
        }
        let request = EmbeddingsRequest {
            model: &self.model,
            input: &input,
            encoding_format: "float",
            dimensions: self.send_dimensions.then_some(self.dimension),
        };
        let started = Instant::now();
        let outcome = self.call(&request).await;
        match (&outcome, &self.meter) {
            (Ok((_, tokens)), Some(meter)) => meter.record(&self.model, *tokens, started.elapsed()),
            (Err(_), Some(meter)) => meter.failed(&self.model),
            (_, None) => {}
        }
        let (data, _) = outcome?;
        self.check(texts.len(), data)
    }

    async fn call(
        &self,
        request: &EmbeddingsRequest<'_>,
    ) -> Result<(Vec<EmbeddingData>, u64), EmbedError> {
        let response = self
            .http
            .post_json(&self.url, request, None)
            .await
            .map_err(from_llm)?;
        let body = response
            .bytes()
            .await
            .map_err(|error| EmbedError::Unavailable(format!("reading the answer: {error}")))?;
        let answer: EmbeddingsResponse = serde_json::from_slice(&body).map_err(|error| {
            EmbedError::BadResponse(format!("the answer is not an embeddings list: {error}"))
        })?;
        let tokens = answer.usage.map_or_else(
            || {
                request
                    .input
                    .iter()
                    .map(|text| estimate_tokens(text.chars().count()) as u64)
                    .sum()
            },
            |usage| usage.prompt_tokens,
        );
        Ok((answer.data, tokens))
    }

    /// Puts the vectors in input order and checks there is one of the right size per text.
    fn check(
        &self,
        expected: usize,
        mut data: Vec<EmbeddingData>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        if data.len() != expected {
            return Err(EmbedError::BadResponse(format!(
                "{} vectors for {expected} texts",
                data.len()
            )));
        }
        data.sort_by_key(|item| item.index);
        let mut embeddings = Vec::with_capacity(expected);
        for (position, item) in data.into_iter().enumerate() {
            if item.index != position {
                return Err(EmbedError::BadResponse(format!(
                    "vector indices are not 0..{expected}: {} repeats or is out of range",
                    item.index
                )));
            }
            if item.embedding.len() != self.dimension {
                return Err(EmbedError::BadResponse(format!(
                    "a vector of {} dimensions where {} were configured \
                     (--embedding-dimensions)",
                    item.embedding.len(),
                    self.dimension
                )));
            }
            embeddings.push(Embedding::from_dense(&item.embedding));
        }
        Ok(embeddings)
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn id(&self) -> String {
        format!("openai:{}:{}", self.model, self.dimension)
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn dense(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        // The futures are built up front: a closure mapping batches to them would not be
        // general enough over lifetimes for the boxed future of an async trait.
        let requests: Vec<_> = self
            .batches(texts)
            .into_iter()
            .map(|batch| self.embed_batch(batch))
            .collect();
        let results: Vec<Vec<Embedding>> = futures::stream::iter(requests)
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }
}

fn estimate_tokens(chars: usize) -> usize {
    chars.div_ceil(4).max(1)
}

fn misconfigured(error: LlmError) -> EmbedError {
    EmbedError::Misconfigured(error.to_string())
}

fn from_llm(error: LlmError) -> EmbedError {
    match error {
        LlmError::Unavailable(reason) => EmbedError::Unavailable(reason),
        LlmError::Misconfigured(reason) => EmbedError::Misconfigured(reason),
        LlmError::BadResponse(reason) => EmbedError::BadResponse(reason),
    }
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingData>,
    #[serde(default)]
    usage: Option<EmbeddingsUsage>,
}

#[derive(Deserialize)]
struct EmbeddingData {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct EmbeddingsUsage {
    #[serde(default)]
    prompt_tokens: u64,
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
