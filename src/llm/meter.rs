//! Usage of the paid services beside the chat models, embedders and rerankers, counted in the
//! same metrics as model calls.

use std::time::Duration;

use super::{PriceTable, TokenUsage};
use crate::telemetry::Metrics;
use crate::telemetry::spans::ModelRole;

/// Where an embedder or a reranker reports the tokens and dollars it spends.
#[derive(Debug, Clone)]
pub struct UsageMeter {
    metrics: Metrics,
    prices: PriceTable,
    role: ModelRole,
}

impl UsageMeter {
    /// Reports into `metrics` (as model calls of `role`), pricing by `prices`.
    pub fn new(metrics: Metrics, prices: PriceTable, role: ModelRole) -> Self {
        UsageMeter {
            metrics,
            prices,
            role,
        }
    }

    pub(crate) fn record(&self, model: &str, tokens: u64, duration: Duration) {
        let usage = TokenUsage {
            input_tokens: tokens,
            output_tokens: 0,
        };
        let cost = self.prices.cost(model, usage).unwrap_or(0.0);
        self.metrics
            .model_call(self.role, model, tokens, 0, cost, duration);
    }

    pub(crate) fn failed(&self, model: &str) {
        self.metrics.model_call_failed(self.role, model);
    }
}
