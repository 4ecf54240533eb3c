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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::result::Usage;
    use crate::llm::TokenUsage;

    fn result_of(calls: &[(&str, u64, u64, f64)], searches: u32) -> QueryResult {
        let mut usage = Usage {
            search_calls: searches,
            ..Usage::default()
        };
        for (model, input_tokens, output_tokens, cost_usd) in calls {
            usage.record_call(
                model,
                TokenUsage {
                    input_tokens: *input_tokens,
                    output_tokens: *output_tokens,
                },
                *cost_usd,
            );
        }
        QueryResult {
            query_id: "q".into(),
            answer: String::new(),
            citations: vec![],
            sources: vec![],
            reasoning_trace: vec![],
            usage,
            execution_time: Default::default(),
            budget: Default::default(),
            confidence: 0.0,
            partial: false,
            error: None,
            cached: false,
            coalesced: false,
        }
    }

    #[test]
    fn runs_add_their_usage_per_model_and_per_account() {
        let accounting = UsageAccounting::default();
        accounting.record(
            "alice",
            &result_of(&[("root", 100, 10, 0.5), ("sub", 40, 4, 0.25)], 2),
        );
        accounting.record(
            "bob",
            &result_of(&[("root", 200, 20, 1.0), ("root", 1, 1, 0.125)], 3),
        );
        accounting.record("alice", &result_of(&[("sub", 60, 6, 0.75)], 1));

        let totals = accounting.snapshot();
        assert_eq!(totals.queries, 3);
        assert_eq!(totals.cached_queries, 0);
        assert_eq!(totals.coalesced_queries, 0);
        assert_eq!(totals.input_tokens, 401);
        assert_eq!(totals.output_tokens, 41);
        assert_eq!(totals.search_calls, 6);
        assert_eq!(totals.llm_calls, 5);
        assert_eq!(totals.cost_usd, 2.625);
        let models: Vec<(&str, u32, u64, u64, f64)> = totals
            .models
            .iter()
            .map(|model| {
                (
                    model.model.as_str(),
                    model.calls,
                    model.input_tokens,
                    model.output_tokens,
                    model.cost_usd,
                )
            })
            .collect();
        assert_eq!(
            models,
            vec![("root", 3, 301, 31, 1.625), ("sub", 2, 100, 10, 1.0)]
        );

        let accounts = accounting.accounts();
        let names: Vec<&str> = accounts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, vec!["alice", "bob"]);
        let alice = &accounts[0].1;
        assert_eq!(alice.queries, 2);
        assert_eq!(alice.input_tokens, 200);
        assert_eq!(alice.search_calls, 3);
        assert_eq!(alice.cost_usd, 1.5);
        assert_eq!(accounts[1].1.llm_calls, 2);
    }

    #[test]
    fn cached_and_shared_results_count_as_queries_only() {
        let accounting = UsageAccounting::default();
        let mut cached = result_of(&[("root", 100, 10, 0.5)], 2);
        cached.cached = true;
        let mut shared = result_of(&[("root", 100, 10, 0.5)], 2);
        shared.coalesced = true;
        accounting.record("alice", &cached);
        accounting.record("alice", &shared);
        accounting.record("alice", &shared);
        let expected = UsageTotals {
            queries: 3,
            cached_queries: 1,
            coalesced_queries: 2,
            ..UsageTotals::default()
        };
        assert_eq!(accounting.snapshot(), expected);
        assert_eq!(accounting.accounts(), vec![("alice".to_string(), expected)]);
    }
}
