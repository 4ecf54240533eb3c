//! The outcome of a run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::budget::{BudgetLimits, BudgetResource, BudgetUsage};
use crate::llm::TokenUsage;
use crate::store::Hit;

/// The outcome of one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// Unique id of the run that produced this result.
    pub query_id: String,
    /// The answer, citing sources as `[id]`.
    pub answer: String,
    /// Ids the answer cites, each returned by a search of the run.
    pub citations: Vec<String>,
    /// Passages found: cited ones first, then the rest, best first.
    pub sources: Vec<Hit>,
    /// What the engine did.
    pub reasoning_trace: Vec<ReasoningStep>,
    /// Tokens, calls and cost.
    pub usage: Usage,
    /// Time from start to result.
    pub execution_time: Duration,
    /// Limits, use, and the limit that ran out.
    pub budget: BudgetStatus,
    /// How sure the engine is, from 0 to 1.
    pub confidence: f64,
    /// True when the run stopped before the model finished.
    pub partial: bool,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// True when served from the result cache.
    pub cached: bool,
    /// True when an identical query in flight produced this result, shared with this caller.
    #[serde(default)]
    pub coalesced: bool,
}

/// One action of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningStep {
    /// Iteration, from 1.
    pub step: u32,
    /// Tool name, or `answer` for a plain-text answer.
    pub action: String,
    /// Tool arguments as JSON text.
    pub input: String,
    /// Short account of the outcome.
    pub output: String,
}

/// Limits of a run and what was used of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// Limits in force.
    pub limits: BudgetLimits,
    /// What was used.
    pub used: BudgetUsage,
    /// The limit that ran out, if one did.
    pub exhausted: Option<BudgetResource>,
}

/// Usage of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Model name.
    pub model: String,
    /// Calls made.
    pub calls: u32,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
}

/// Tokens, calls and cost of a run, per model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Per model, in order of first use.
    pub models: Vec<ModelUsage>,
    /// Searches run.
    pub search_calls: u32,
}

impl Usage {
    /// Adds one call of `model`.
    pub fn record_call(&mut self, model: &str, tokens: TokenUsage, cost_usd: f64) {
        let entry = match self
            .models
            .iter_mut()
            .position(|usage| usage.model == model)
        {
            Some(position) => &mut self.models[position],
            None => {
                self.models.push(ModelUsage {
                    model: model.to_string(),
                    ..ModelUsage::default()
                });
                let last = self.models.len() - 1;
                &mut self.models[last]
            }
        };
        entry.calls += 1;
        entry.input_tokens += tokens.input_tokens;
        entry.output_tokens += tokens.output_tokens;
        entry.cost_usd += cost_usd;
    }

    /// Prompt tokens across models.
    pub fn input_tokens(&self) -> u64 {
        self.models.iter().map(|usage| usage.input_tokens).sum()
    }

    /// Completion tokens across models.
    pub fn output_tokens(&self) -> u64 {
        self.models.iter().map(|usage| usage.output_tokens).sum()
    }

    /// Model calls across models.
    pub fn llm_calls(&self) -> u32 {
        self.models.iter().map(|usage| usage.calls).sum()
    }

    /// Cost across models.
    pub fn cost_usd(&self) -> f64 {
        self.models.iter().map(|usage| usage.cost_usd).sum()
    }
}
