//! Cumulative usage since the server started, shared by every run.

use parking_lot::Mutex;

use super::result::{ModelUsage, QueryResult};

/// Usage totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// Queries answered, cache hits included.
    pub queries: u64,
    /// Queries answered from the cache.
    pub cached_queries: u64,
    /// Queries that shared the run of an identical query in flight.
    pub coalesced_queries: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Searches.
    pub search_calls: u64,
    /// Model calls.
    pub llm_calls: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// Per model, in order of first use.
    pub models: Vec<ModelUsage>,
}

/// Thread-safe usage accounting.
#[derive(Debug, Default)]
pub struct UsageAccounting {
    totals: Mutex<UsageTotals>,
}

impl UsageAccounting {
    /// Adds one answered query. A cached or shared result cost nothing this time, so only the
    /// query counts.
    pub fn record(&self, result: &QueryResult) {
        let mut totals = self.totals.lock();
        totals.queries += 1;
        if result.cached {
            totals.cached_queries += 1;
            return;
        }
        if result.coalesced {
            totals.coalesced_queries += 1;
            return;
        }
        let usage = &result.usage;
        totals.input_tokens += usage.input_tokens();
        totals.output_tokens += usage.output_tokens();
        totals.search_calls += u64::from(usage.search_calls);
        totals.llm_calls += u64::from(usage.llm_calls());
        totals.cost_usd += usage.cost_usd();
        for model in &usage.models {
            match totals
                .models
                .iter_mut()
                .find(|known| known.model == model.model)
            {
                Some(known) => {
                    known.calls += model.calls;
                    known.input_tokens += model.input_tokens;
                    known.output_tokens += model.output_tokens;
                    known.cost_usd += model.cost_usd;
                }
                None => totals.models.push(model.clone()),
            }
        }
    }

    /// Returns the totals so far.
    pub fn snapshot(&self) -> UsageTotals {
        self.totals.lock().clone()
    }
}
