//! Builds the model backends the configuration names, checking keys and settings at start-up so
//! that a misconfiguration fails the server with a clear message instead of the first query.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, LlmConfig};
use crate::llm::anthropic::{AnthropicConfig, AnthropicModel};
use crate::llm::extractive::{ExtractiveConfig, ExtractiveModel};
use crate::llm::http::RetryPolicy;
use crate::llm::openai::{OpenAiConfig, OpenAiModel};
use crate::llm::{ChatModel, LlmError, PriceTable};
use crate::secret::Secret;

/// Public endpoints used when `base_url` is empty.
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

/// The root model and the sub-model.
pub struct Models {
    /// Root model.
    pub model: Arc<dyn ChatModel>,
    /// Sub-model for `llm_query`.
    pub sub_model: Arc<dyn ChatModel>,
    /// Prices for backends that report no cost.
    pub prices: PriceTable,
}

/// Builds both models. The sub-model shares the root model when it overrides nothing.
pub fn build(config: &LlmConfig) -> Result<Models, LlmError> {
    let model = build_one(
        config,
        config.backend,
        &config.model,
        &config.base_url,
        config.api_key_file.as_deref(),
    )?;
    let sub = &config.sub;
    let sub_model = if sub.backend.is_none()
        && sub.model.is_none()
        && sub.base_url.is_none()
        && sub.api_key_file.is_none()
    {
        model.clone()
    } else {
        build_one(
            config,
            sub.backend.unwrap_or(config.backend),
            sub.model.as_deref().unwrap_or(&config.model),
            sub.base_url.as_deref().unwrap_or(&config.base_url),
            sub.api_key_file
                .as_deref()
                .or(config.api_key_file.as_deref()),
        )
        .map_err(|error| match error {
            LlmError::Misconfigured(reason) => {
                LlmError::Misconfigured(format!("sub-model: {reason}"))
            }
            other => other,
        })?
    };
    let prices = price_table(config);
    Ok(Models {
        model,
        sub_model,
        prices,
    })
}

/// The prices `[llm.prices]` lists, for models whose backend reports no cost.
pub fn price_table(config: &LlmConfig) -> PriceTable {
    PriceTable::new(
        config
            .prices
            .iter()
            .map(|(model, price)| {
                (
                    model.clone(),
                    price.input_per_million,
                    price.output_per_million,
                )
            })
            .collect(),
    )
}

fn build_one(
    config: &LlmConfig,
    backend: Backend,
    model: &str,
    base_url: &str,
    api_key_file: Option<&Path>,
) -> Result<Arc<dyn ChatModel>, LlmError> {
    let retry = RetryPolicy {
        max_attempts: config.max_attempts.max(1),
        base_delay: Duration::from_millis(config.retry_base_ms),
        max_delay: Duration::from_millis(config.retry_max_ms),
    };
    let seconds = |value: f64, name: &str| {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|duration| !duration.is_zero())
            .ok_or_else(|| {
                LlmError::Misconfigured(format!("{name} must be a positive number of seconds"))
            })
    };
    let connect_timeout = seconds(config.connect_timeout_seconds, "connect_timeout_seconds")?;
    let request_timeout = seconds(config.request_timeout_seconds, "request_timeout_seconds")?;
    let headers: Vec<(String, String)> = config
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    match backend {
        Backend::Extractive => {
            let mut extractive = ExtractiveConfig::default();
            if let Some(followups) = config.extractive_max_followups {
                extractive.max_followups = followups;
            }
            Ok(Arc::new(ExtractiveModel::new(extractive)))
        }
        Backend::Openai => {
            let base_url = non_empty(base_url).unwrap_or(OPENAI_BASE_URL);
            let api_key = api_key(config, api_key_file)?;
            if api_key.is_empty() && base_url == OPENAI_BASE_URL {
                return Err(LlmError::Misconfigured(
                    "the OpenAI API needs a key: set DEEPRECALL_LLM_API_KEY or --api-key-file"
                        .into(),
                ));
            }
            Ok(Arc::new(OpenAiModel::new(OpenAiConfig {
                base_url: base_url.to_string(),
                api_key,
                model: model.to_string(),
                extra_headers: headers,
                connect_timeout,
                request_timeout,
                retry,
                stream: config.stream,
                azure_api_version: config.azure_api_version.clone(),
                max_tokens_field: config.max_tokens_field.clone(),
                request_cost: config.request_cost,
            })?))
        }
        Backend::Anthropic => {
            let api_key = api_key(config, api_key_file)?;
            if api_key.is_empty() {
                return Err(LlmError::Misconfigured(
                    "the Anthropic API needs a key: set DEEPRECALL_LLM_API_KEY or --api-key-file"
                        .into(),
                ));
            }
            Ok(Arc::new(AnthropicModel::new(AnthropicConfig {
                base_url: non_empty(base_url)
                    .unwrap_or(ANTHROPIC_BASE_URL)
                    .to_string(),
                api_key,
                model: model.to_string(),
                anthropic_version: config.anthropic_version.clone(),
                extra_headers: headers,
                connect_timeout,
                request_timeout,
                retry,
                stream: config.stream,
                default_max_tokens: 4096,
            })?))
        }
    }
}

fn non_empty(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty()).then_some(value)
}

/// Returns the key from the file if one is named, else the configured one.
fn api_key(config: &LlmConfig, file: Option<&Path>) -> Result<Secret, LlmError> {
    crate::secret::key_from(&config.api_key, file).map_err(LlmError::Misconfigured)
}
