//! The engine's settings, the `[engine]` section of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::EngineError;
use super::budget::{BudgetLimits, BudgetRequest};

/// Engine settings: request limits and the default budget. Every limit is explicit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Passages per search when the request says 0.
    pub default_top_k: usize,
    /// Largest `top_k` accepted.
    pub max_top_k: usize,
    /// Largest query, in bytes.
    pub max_query_bytes: usize,
    /// Largest `root_prompt` or `context_prefix`, in bytes.
    pub max_prompt_bytes: usize,
    /// Largest document, in bytes.
    pub max_document_bytes: usize,
    /// Most documents (or ids to delete) in one call.
    pub max_documents_per_call: usize,
    /// Most queries in one batch.
    pub max_batch_queries: usize,
    /// Batch concurrency when the request says 0.
    pub default_batch_concurrency: usize,
    /// Largest batch concurrency accepted.
    pub max_batch_concurrency: usize,
    /// Default limit on iterations.
    pub max_iterations: u32,
    /// Default limit on searches.
    pub max_search_calls: u32,
    /// Default limit on tokens; none when absent.
    pub max_tokens: Option<u64>,
    /// Default limit on wall time, in seconds.
    pub max_time_seconds: f64,
    /// Default limit on spend; none when absent.
    pub max_cost_usd: Option<f64>,
    /// Turns in a row whose tool calls all fail before the run stops.
    pub max_consecutive_tool_errors: u32,
    /// Sub-model prompts of one batched call that run at once.
    pub sub_model_concurrency: usize,
    /// Most prompts in one `llm_query_batched` call.
    pub max_batched_prompts: usize,
    /// Most sources in a result (cited sources are always kept).
    pub max_sources: usize,
    /// Trace events buffered per stream before the run waits for the reader.
    pub event_buffer: usize,
    /// Completion tokens asked for per model call, at most.
    pub max_completion_tokens: u32,
    /// Milliseconds kept before a caller's deadline for the result's trip back: the run
    /// finishes this much earlier. The server cannot see the network, so this part is set,
    /// not measured; the time for a summing-up call is measured by each run.
    pub deadline_reserve_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_top_k: 5,
            max_top_k: 100,
            max_query_bytes: 8 * 1024,
            max_prompt_bytes: 32 * 1024,
            max_document_bytes: 1024 * 1024,
            max_documents_per_call: 10_000,
            max_batch_queries: 10_000,
            default_batch_concurrency: 4,
            max_batch_concurrency: 64,
            max_iterations: 10,
            max_search_calls: 20,
            max_tokens: None,
            max_time_seconds: 120.0,
            max_cost_usd: None,
            max_consecutive_tool_errors: 3,
            sub_model_concurrency: 8,
            max_batched_prompts: 32,
            max_sources: 20,
            event_buffer: 64,
            max_completion_tokens: 4096,
            deadline_reserve_ms: 100,
        }
    }
}

impl EngineConfig {
    /// Checks the default budget the way a caller's budget is checked, so that a zero default
    /// stops the server at startup, named as the `engine.` setting, instead of refusing every
    /// query that sets no budget of its own with an error the caller cannot fix.
    pub fn check_default_budget(&self) -> Result<(), String> {
        let request = BudgetRequest {
            max_iterations: Some(self.max_iterations),
            max_search_calls: Some(self.max_search_calls),
            max_tokens: self.max_tokens,
            max_time_seconds: Some(self.max_time_seconds),
            max_cost_usd: self.max_cost_usd,
        };
        match request.limits() {
            Ok(_) => Ok(()),
            Err(EngineError::InvalidArgument { field, message }) => Err(format!(
                "engine.{} {message}",
                field.strip_prefix("budget.").unwrap_or(&field)
            )),
            Err(other) => Err(other.to_string()),
        }
    }

    /// Returns the default budget.
    pub fn default_budget(&self) -> BudgetLimits {
        BudgetLimits {
            max_iterations: Some(self.max_iterations),
            max_search_calls: Some(self.max_search_calls),
            max_tokens: self.max_tokens,
            max_time: Duration::try_from_secs_f64(self.max_time_seconds).ok(),
            max_cost_usd: self.max_cost_usd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_the_configured_limits() {
        let config = EngineConfig {
            max_iterations: 7,
            max_search_calls: 3,
            max_tokens: Some(5_000),
            max_time_seconds: 12.5,
            max_cost_usd: Some(0.25),
            ..EngineConfig::default()
        };
        assert_eq!(
            config.default_budget(),
            BudgetLimits {
                max_iterations: Some(7),
                max_search_calls: Some(3),
                max_tokens: Some(5_000),
                max_time: Some(Duration::from_millis(12_500)),
                max_cost_usd: Some(0.25),
            }
        );
        assert_eq!(config.check_default_budget(), Ok(()));
    }

    #[test]
    fn a_default_budget_of_zero_is_refused_as_its_setting() {
        let config = EngineConfig {
            max_iterations: 0,
            ..EngineConfig::default()
        };
        let refusal = config.check_default_budget().expect_err("refused");
        assert!(refusal.starts_with("engine.max_iterations "), "{refusal}");
    }
}
