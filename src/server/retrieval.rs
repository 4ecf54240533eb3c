//! Builds what retrieval runs on, as the configuration says: the embedder, the store over it,
//! and the reranker. The server and the commands that open the store directly (`migrate`,
//! `export`, `reindex`, the benchmarks) build them here, so that they agree.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, EmbedderKind, RerankerKind, StoreBackend};
use crate::embed::openai::OPENAI_BASE_URL;
use crate::embed::{EmbedError, Embedder, HashingEmbedder, OpenAiEmbedder, OpenAiEmbedderConfig};
use crate::llm::http::RetryPolicy;
use crate::llm::{PriceTable, UsageMeter};
use crate::rerank::cohere::COHERE_BASE_URL;
use crate::rerank::{CohereReranker, CohereRerankerConfig, RerankError, Reranker};
use crate::secret::key_from;
use crate::store::{DocumentStore, EmbeddedStore, EmbeddedStoreConfig, PostgresStore, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::spans::ModelRole;

/// Where usage of paid embedders and rerankers is reported, when anywhere.
#[derive(Debug, Clone)]
pub struct Metering {
    /// Registry of the model-call metrics.
    pub metrics: Metrics,
    /// Prices by model name (`[llm.prices]`).
    pub prices: PriceTable,
}

impl Metering {
    /// Metering into `metrics` at the prices `[llm.prices]` lists.
    pub fn from_config(config: &Config, metrics: Metrics) -> Self {
        Metering {
            metrics,
            prices: crate::server::models::price_table(&config.llm),
        }
    }

    fn meter(&self, role: ModelRole) -> UsageMeter {
        UsageMeter::new(self.metrics.clone(), self.prices.clone(), role)
    }
}

/// Builds the embedder `[embedding]` names.
pub fn build_embedder(
    config: &Config,
    metering: Option<&Metering>,
) -> Result<Arc<dyn Embedder>, EmbedError> {
    let settings = &config.embedding;
    match settings.embedder {
        EmbedderKind::Hashing => Ok(Arc::new(HashingEmbedder::new(
            settings
                .dimensions
                .unwrap_or(config.store.embedding_dimension),
        ))),
        EmbedderKind::Openai => {
            let api_key = key_from(&settings.api_key, settings.api_key_file.as_deref())
                .map_err(EmbedError::Misconfigured)?;
            let base_url = match settings.base_url.trim() {
                "" => OPENAI_BASE_URL.to_string(),
                url => url.to_string(),
            };
            if api_key.is_empty() && base_url == OPENAI_BASE_URL {
                return Err(EmbedError::Misconfigured(
                    "the OpenAI API needs a key: set DEEPRECALL_EMBEDDING_API_KEY or \
                     embedding.api_key_file"
                        .into(),
                ));
            }
            let embedder = OpenAiEmbedder::new(OpenAiEmbedderConfig {
                base_url,
                api_key,
                model: settings.model.clone(),
                dimensions: settings.dimensions,
                send_dimensions: settings.send_dimensions,
                batch_size: settings.batch_size,
                batch_tokens: settings.batch_tokens,
                concurrency: settings.concurrency,
                max_input_tokens: settings.max_input_tokens,
                extra_headers: Vec::new(),
                connect_timeout: Duration::from_secs(10),
                request_timeout: seconds(settings.request_timeout_seconds).ok_or_else(|| {
                    EmbedError::Misconfigured(
                        "embedding.request_timeout_seconds must be positive".into(),
                    )
                })?,
                retry: retry_policy(config),
            })?;
            Ok(match metering {
                Some(metering) => {
                    Arc::new(embedder.with_meter(metering.meter(ModelRole::Embedding)))
                }
                None => Arc::new(embedder),
            })
        }
        EmbedderKind::Local => local_embedder(config),
    }
}

#[cfg(feature = "local-models")]
fn local_embedder(config: &Config) -> Result<Arc<dyn Embedder>, EmbedError> {
    Ok(crate::embed::local::from_config(&config.embedding)?)
}

/// A build without the `local-models` feature keeps the setting, so that a config naming it
/// fails at start with a clear message rather than as an unknown value.
#[cfg(not(feature = "local-models"))]
fn local_embedder(_config: &Config) -> Result<Arc<dyn Embedder>, EmbedError> {
    Err(EmbedError::Misconfigured(
        "the local embedder is not in this build (built without the local-models feature): \
         use hashing, or openai against a local server (Text Embeddings Inference, Ollama, vLLM)"
            .into(),
    ))
}

/// Builds the reranker `[rerank]` names, or `None`.
pub fn build_reranker(
    config: &Config,
    metering: Option<&Metering>,
) -> Result<Option<Arc<dyn Reranker>>, RerankError> {
    let settings = &config.rerank;
    let timeout = seconds(settings.request_timeout_seconds).ok_or_else(|| {
        RerankError::Misconfigured("rerank.request_timeout_seconds must be positive".into())
    })?;
    match settings.reranker {
        RerankerKind::None => Ok(None),
        RerankerKind::Cohere => {
            let api_key = key_from(&settings.api_key, settings.api_key_file.as_deref())
                .map_err(RerankError::Misconfigured)?;
            let base_url = match settings.base_url.trim() {
                "" => COHERE_BASE_URL.to_string(),
                url => url.to_string(),
            };
            if api_key.is_empty() && base_url == COHERE_BASE_URL {
                return Err(RerankError::Misconfigured(
                    "the Cohere API needs a key: set DEEPRECALL_RERANKER_API_KEY or \
                     rerank.api_key_file"
                        .into(),
                ));
            }
            let reranker = CohereReranker::new(CohereRerankerConfig {
                base_url,
                api_key,
                model: settings.model.clone(),
                request_timeout: timeout,
                ..CohereRerankerConfig::default()
            })?;
            Ok(Some(match metering {
                Some(metering) => Arc::new(reranker.with_meter(metering.meter(ModelRole::Rerank))),
                None => Arc::new(reranker),
            }))
        }
        RerankerKind::Local => local_reranker(config).map(Some),
    }
}

#[cfg(feature = "local-models")]
fn local_reranker(config: &Config) -> Result<Arc<dyn Reranker>, RerankError> {
    Ok(crate::rerank::local::from_config(&config.rerank)?)
}

/// Kept like [`local_embedder`] in a build without the `local-models` feature.
#[cfg(not(feature = "local-models"))]
fn local_reranker(_config: &Config) -> Result<Arc<dyn Reranker>, RerankError> {
    Err(RerankError::Misconfigured(
        "the local reranker is not in this build (built without the local-models feature): \
         use cohere against a local server (Text Embeddings Inference, Infinity, vLLM)"
            .into(),
    ))
}

/// Opens the configured store over `embedder`. The postgres store retries while the database
/// cannot be reached.
pub async fn open_store(
    config: &Config,
    embedder: Arc<dyn Embedder>,
    read_connections: usize,
) -> Result<Arc<dyn DocumentStore>, StoreError> {
    Ok(match config.store.backend {
        StoreBackend::Embedded => Arc::new(
            EmbeddedStore::open(
                EmbeddedStoreConfig {
                    data_dir: config.store.data_dir.clone(),
                    read_connections,
                    rrf_k: config.store.rrf_k,
                    vector_weight: config.store.vector_weight,
                    hnsw_min_documents: config.store.hnsw_min_documents,
                },
                embedder,
            )
            .await?,
        ),
        StoreBackend::Postgres => Arc::new(PostgresStore::connect(&config.store, embedder).await?),
    })
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        max_attempts: config.llm.max_attempts.max(1),
        base_delay: Duration::from_millis(config.llm.retry_base_ms),
        max_delay: Duration::from_millis(config.llm.retry_max_ms),
    }
}

fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_embedder(config: &Config) -> String {
        match build_embedder(config, None) {
            Err(EmbedError::Misconfigured(reason)) => reason,
            other => panic!("expected a misconfiguration, got {other:?}"),
        }
    }

    #[test]
    fn settings_that_cannot_work_fail_at_start_with_their_reason() {
        let mut config = Config::default();
        config.embedding.embedder = EmbedderKind::Local;
        if cfg!(feature = "local-models") {
            assert!(refused_embedder(&config).contains("--embedding-model-dir"));
            config.embedding.model_dir = Some("/nonexistent/model".into());
            assert!(refused_embedder(&config).contains("/nonexistent/model"));
        } else {
            assert!(refused_embedder(&config).contains("local-models feature"));
        }

        config.embedding.embedder = EmbedderKind::Openai;
        config.embedding.model = "text-embedding-3-small".into();
        assert!(refused_embedder(&config).contains("DEEPRECALL_EMBEDDING_API_KEY"));
        config.embedding.api_key = crate::secret::Secret::new("sk-test");
        let embedder = build_embedder(&config, None).expect("an openai embedder");
        assert_eq!(embedder.id(), "openai:text-embedding-3-small:1536");

        config.rerank.reranker = RerankerKind::Cohere;
        config.rerank.model = "rerank-v3.5".into();
        assert!(matches!(
            build_reranker(&config, None),
            Err(RerankError::Misconfigured(reason)) if reason.contains("DEEPRECALL_RERANKER_API_KEY")
        ));
        config.rerank.base_url = "http://localhost:8080/v1".into();
        let reranker = build_reranker(&config, None)
            .expect("a reranker")
            .expect("some");
        assert_eq!(reranker.id(), "cohere:rerank-v3.5");
        config.rerank.request_timeout_seconds = 0.0;
        assert!(build_reranker(&config, None).is_err());
    }

    #[test]
    fn the_hashing_embedder_takes_the_embedding_dimensions_over_the_store_setting() {
        let mut config = Config::default();
        assert_eq!(
            build_embedder(&config, None).unwrap().id(),
            "hashing-v1:4096"
        );
        config.embedding.dimensions = Some(256);
        assert_eq!(
            build_embedder(&config, None).unwrap().id(),
            "hashing-v1:256"
        );
    }
}
