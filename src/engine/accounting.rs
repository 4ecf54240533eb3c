//! Cumulative usage since the server started, shared by every run: for the whole server and
//! per account (the API key's name, or `anonymous`).

use std::collections::BTreeMap;

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

/// Thread-safe usage accounting. Accounts are API key names, so their number is bounded by
/// the keys ever configured.
#[derive(Debug, Default)]
pub struct UsageAccounting {
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    totals: UsageTotals,
    accounts: BTreeMap<String, UsageTotals>,
}

impl UsageAccounting {
    /// Adds one answered query to the server's totals and to `account`'s. A cached or shared
    /// result cost nothing this time, so only the query counts.
    pub fn record(&self, account: &str, result: &QueryResult) {
        let mut ledger = self.ledger.lock();
        let ledger = &mut *ledger;
        add(&mut ledger.totals, result);
        match ledger.accounts.get_mut(account) {
            Some(totals) => add(totals, result),
            None => {
                let mut totals = UsageTotals::default();
                add(&mut totals, result);
                ledger.accounts.insert(account.to_string(), totals);
            }
        }
    }

    /// Returns the server's totals so far.
    pub fn snapshot(&self) -> UsageTotals {
        self.ledger.lock().totals.clone()
    }

    /// Returns every account's totals so far, by name.
    pub fn accounts(&self) -> Vec<(String, UsageTotals)> {
        self.ledger
            .lock()
            .accounts
            .iter()
            .map(|(name, totals)| (name.clone(), totals.clone()))
            .collect()
    }
}

fn add(totals: &mut UsageTotals, result: &QueryResult) {
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
