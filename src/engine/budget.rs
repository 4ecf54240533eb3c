//! Budgets: limits of one run, what has been used of them, and the checks made before every
//! model call and every search.

use std::time::{Duration, Instant};

use super::EngineError;

/// Limits of one run; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BudgetLimits {
    /// Root model calls.
    pub max_iterations: Option<u32>,
    /// `search_db` calls.
    pub max_search_calls: Option<u32>,
    /// Model tokens, input plus output.
    pub max_tokens: Option<u64>,
    /// Wall time.
    pub max_time: Option<Duration>,
    /// Spend in US dollars.
    pub max_cost_usd: Option<f64>,
}

impl BudgetLimits {
    /// Returns these limits with every unset one taken from `defaults`.
    pub fn or(self, defaults: BudgetLimits) -> BudgetLimits {
        BudgetLimits {
            max_iterations: self.max_iterations.or(defaults.max_iterations),
            max_search_calls: self.max_search_calls.or(defaults.max_search_calls),
            max_tokens: self.max_tokens.or(defaults.max_tokens),
            max_time: self.max_time.or(defaults.max_time),
            max_cost_usd: self.max_cost_usd.or(defaults.max_cost_usd),
        }
    }

    /// Returns these limits with the time limit cut to what is left before `deadline`.
    pub fn within_deadline(mut self, deadline: Option<Instant>, now: Instant) -> BudgetLimits {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(now);
            self.max_time = Some(self.max_time.map_or(left, |limit| limit.min(left)));
        }
        self
    }
}

/// Limits as a caller asks for them, over any protocol: unset ones take the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetRequest {
    /// Root model calls.
    pub max_iterations: Option<u32>,
    /// `search_db` calls.
    pub max_search_calls: Option<u32>,
    /// Model tokens, input plus output.
    pub max_tokens: Option<u64>,
    /// Wall time in seconds.
    pub max_time_seconds: Option<f64>,
    /// Spend in US dollars.
    pub max_cost_usd: Option<f64>,
}

impl BudgetRequest {
    /// Checks the limits and returns them. Each set limit must allow something: a zero (or a
    /// negative or non-finite time or cost) is refused with the field named under `budget.`.
    pub fn limits(self) -> Result<BudgetLimits, EngineError> {
        let BudgetRequest {
            max_iterations,
            max_search_calls,
            max_tokens,
            max_time_seconds,
            max_cost_usd,
        } = self;
        if max_iterations == Some(0) {
            return Err(EngineError::invalid(
                "budget.max_iterations",
                "must be at least 1",
            ));
        }
        // No search, no answer: every answer comes from what searches find, so a query that
        // may not search at all is refused like the other zero limits rather than run to
        // nothing.
        if max_search_calls == Some(0) {
            return Err(EngineError::invalid(
                "budget.max_search_calls",
                "must be at least 1",
            ));
        }
        if max_tokens == Some(0) {
            return Err(EngineError::invalid(
                "budget.max_tokens",
                "must be at least 1",
            ));
        }
        let max_time = match max_time_seconds {
            None => None,
            Some(seconds) => Some(
                Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|duration| !duration.is_zero())
                    .ok_or_else(|| {
                        EngineError::invalid(
                            "budget.max_time_seconds",
                            "must be a finite number of seconds greater than 0",
                        )
                    })?,
            ),
        };
        if let Some(cost) = max_cost_usd
            && !(cost.is_finite() && cost > 0.0)
        {
            return Err(EngineError::invalid(
                "budget.max_cost_usd",
                "must be a finite amount greater than 0",
            ));
        }
        Ok(BudgetLimits {
            max_iterations,
            max_search_calls,
            max_tokens,
            max_time,
            max_cost_usd,
        })
    }
}

/// A budgeted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BudgetResource {
    /// Root model calls.
    Iterations,
    /// Searches.
    SearchCalls,
    /// Model tokens.
    Tokens,
    /// Wall time.
    Time,
    /// Spend.
    Cost,
}

impl BudgetResource {
    /// Returns the name of the limit as written in a request.
    pub fn limit_name(self) -> &'static str {
        match self {
            BudgetResource::Iterations => "max_iterations",
            BudgetResource::SearchCalls => "max_search_calls",
            BudgetResource::Tokens => "max_tokens",
            BudgetResource::Time => "max_time_seconds",
            BudgetResource::Cost => "max_cost_usd",
        }
    }
}

/// What a run has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BudgetUsage {
    /// Root model calls started.
    pub iterations: u32,
    /// Searches started.
    pub search_calls: u32,
    /// Model tokens.
    pub tokens: u64,
    /// Spend in US dollars.
    pub cost_usd: f64,
    /// Wall time.
    pub elapsed: Duration,
}

/// A limit nearing or reaching its end, reported once per resource and level.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetWarning {
    /// The resource.
    pub resource: BudgetResource,
    /// Amount used.
    pub used: f64,
    /// The limit.
    pub limit: f64,
    /// Explanation.
    pub message: String,
}

/// Completion tokens a call needs at the least to say anything useful; a call whose prompt
/// leaves less than this in the budget is not made.
pub const MIN_COMPLETION_TOKENS: u64 = 16;

/// Share of a limit at which a warning goes out.
const WARNING_FRACTION: f64 = 0.8;

/// Tracks one run's budget.
#[derive(Debug)]
pub struct BudgetTracker {
    limits: BudgetLimits,
    started: Instant,
    used: BudgetUsage,
    warned: Vec<BudgetResource>,
    /// The slowest root model call so far: the run's own measure of how long its next call,
    /// and a summing-up call, will take. `None` before the first call has answered.
    slowest_call: Option<Duration>,
}

impl BudgetTracker {
    /// Starts tracking at `started`.
    pub fn new(limits: BudgetLimits, started: Instant) -> Self {
        BudgetTracker {
            limits,
            started,
            used: BudgetUsage::default(),
            warned: Vec::new(),
            slowest_call: None,
        }
    }

    /// Returns the limits in force.
    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// Returns what has been used, with the elapsed time as of now.
    pub fn usage(&self) -> BudgetUsage {
        BudgetUsage {
            elapsed: self.started.elapsed(),
            ..self.used
        }
    }

    /// Returns the instant at which the time budget runs out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.limits.max_time.map(|limit| self.started + limit)
    }

    /// Checks that one more root model call with a prompt of about `prompt_tokens` fits, counts
    /// it if so, and returns the cap on its completion tokens.
    pub fn start_iteration(
        &mut self,
        prompt_tokens: u64,
        price: Option<(f64, f64)>,
        configured_cap: u32,
    ) -> Result<u32, BudgetResource> {
        if let Some(max) = self.limits.max_iterations
            && self.used.iterations >= max
        {
            return Err(BudgetResource::Iterations);
        }
        let cap = self.plan_call(prompt_tokens, price, configured_cap)?;
        self.used.iterations += 1;
        Ok(cap)
    }

    /// Checks that a model call with a prompt of about `prompt_tokens` fits what is left of the
    /// token, cost and time budgets with room for a minimal completion, and returns the cap on
    /// its completion tokens: the configured cap, cut to what the budgets leave. `price` is
    /// dollars per prompt and per completion token, when known.
    pub fn plan_call(
        &self,
        prompt_tokens: u64,
        price: Option<(f64, f64)>,
        configured_cap: u32,
    ) -> Result<u32, BudgetResource> {
        self.check_model_call()?;
        let mut cap = u64::from(configured_cap);
        if let Some(max) = self.limits.max_tokens {
            let left = max.saturating_sub(self.used.tokens);
            if left < prompt_tokens.saturating_add(MIN_COMPLETION_TOKENS) {
                return Err(BudgetResource::Tokens);
            }
            cap = cap.min(left - prompt_tokens);
        }
        if let (Some(max), Some((input, output))) = (self.limits.max_cost_usd, price) {
            let left = max - self.used.cost_usd;
            let prompt_cost = prompt_tokens as f64 * input;
            if left < prompt_cost + MIN_COMPLETION_TOKENS as f64 * output {
                return Err(BudgetResource::Cost);
            }
            if output > 0.0 {
                cap = cap.min(((left - prompt_cost) / output) as u64);
            }
        }
        Ok(u32::try_from(cap).unwrap_or(u32::MAX))
    }

    /// Checks that a model call (root or sub-model) fits in the token, cost and time budgets.
    pub fn check_model_call(&self) -> Result<(), BudgetResource> {
        if let Some(max) = self.limits.max_tokens
            && self.used.tokens >= max
        {
            return Err(BudgetResource::Tokens);
        }
        if let Some(max) = self.limits.max_cost_usd
            && self.used.cost_usd >= max
        {
            return Err(BudgetResource::Cost);
        }
        self.check_time()
    }

    /// Checks that time is left.
    pub fn check_time(&self) -> Result<(), BudgetResource> {
        match self.limits.max_time {
            Some(max) if self.started.elapsed() >= max => Err(BudgetResource::Time),
            _ => Ok(()),
        }
    }

    /// Reserves one search, or says which budget forbids it.
    pub fn reserve_search(&mut self) -> Result<(), BudgetResource> {
        self.check_time()?;
        if let Some(max) = self.limits.max_search_calls
            && self.used.search_calls >= max
        {
            return Err(BudgetResource::SearchCalls);
        }
        self.used.search_calls += 1;
        Ok(())
    }

    /// Records how long a root model call took, the run's measure of the calls to come.
    pub fn record_call_latency(&mut self, latency: Duration) {
        self.slowest_call = Some(
            self.slowest_call
                .map_or(latency, |slowest| slowest.max(latency)),
        );
    }

    /// Returns the time left before the time limit, if there is one.
    fn time_left(&self) -> Option<Duration> {
        self.limits
            .max_time
            .map(|max| max.saturating_sub(self.started.elapsed()))
    }

    /// Whether `calls` model calls in a row, each as slow as the slowest so far, end before the
    /// time limit. Before any call has answered there is nothing to measure: they fit, and the
    /// time limit still cuts a call that overruns.
    pub fn calls_fit(&self, calls: u32) -> bool {
        match (self.time_left(), self.slowest_call) {
            (Some(left), Some(slowest)) => slowest.saturating_mul(calls) <= left,
            _ => true,
        }
    }

    /// Whether a summing-up call, as slow as the slowest call so far, ends before the time
    /// limit. Without a measure it fits only when there is no time limit at all.
    pub fn summary_fits(&self) -> bool {
        match (self.time_left(), self.slowest_call) {
            (None, _) => true,
            (Some(left), Some(slowest)) => slowest <= left,
            (Some(_), None) => false,
        }
    }

    /// Records the tokens and cost of a model call.
    /// Usage comes from the provider's report: a count near `u64::MAX` saturates instead of
    /// overflowing, and a negative or non-finite cost is not counted, so that no report can
    /// give budget back or switch the cost limit off.
    pub fn record_model_usage(&mut self, tokens: u64, cost_usd: f64) {
        self.used.tokens = self.used.tokens.saturating_add(tokens);
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.used.cost_usd += cost_usd;
        }
    }

    /// Returns the warnings newly due: each resource warns once when it passes 80% of its limit.
    pub fn take_warnings(&mut self) -> Vec<BudgetWarning> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let candidates = [
            (
                BudgetResource::Iterations,
                f64::from(self.used.iterations),
                self.limits.max_iterations.map(f64::from),
            ),
            (
                BudgetResource::SearchCalls,
                f64::from(self.used.search_calls),
                self.limits.max_search_calls.map(f64::from),
            ),
            (
                BudgetResource::Tokens,
                self.used.tokens as f64,
                self.limits.max_tokens.map(|max| max as f64),
            ),
            (
                BudgetResource::Time,
                elapsed,
                self.limits.max_time.map(|max| max.as_secs_f64()),
            ),
            (
                BudgetResource::Cost,
                self.used.cost_usd,
                self.limits.max_cost_usd,
            ),
        ];
        let mut warnings = Vec::new();
        for (resource, used, limit) in candidates {
            let Some(limit) = limit else { continue };
            if limit > 0.0 && used >= limit * WARNING_FRACTION && !self.warned.contains(&resource) {
                self.warned.push(resource);
                warnings.push(BudgetWarning {
                    resource,
                    used,
                    limit,
                    message: format!(
                        "{} at {:.0}% of its limit ({used} of {limit})",
                        resource.limit_name(),
                        (used / limit * 100.0).min(100.0)
                    ),
                });
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BudgetLimits {
        BudgetLimits {
            max_iterations: Some(2),
            max_search_calls: Some(1),
            max_tokens: Some(100),
            max_time: Some(Duration::from_secs(60)),
            max_cost_usd: Some(0.01),
        }
    }

    #[test]
    fn iterations_stop_at_the_limit() {
        let mut budget = BudgetTracker::new(limits(), Instant::now());
        assert!(budget.start_iteration(10, None, 50).is_ok());
        assert!(budget.start_iteration(10, None, 50).is_ok());
        assert_eq!(
            budget.start_iteration(10, None, 50),
            Err(BudgetResource::Iterations)
        );
        assert_eq!(budget.usage().iterations, 2);
    }

    #[test]
    fn a_spent_token_budget_forbids_the_next_call() {
        let mut budget = BudgetTracker::new(limits(), Instant::now());
        budget.record_model_usage(100, 0.0);
        assert_eq!(
            budget.start_iteration(0, None, 50),
            Err(BudgetResource::Tokens)
        );
        assert_eq!(budget.usage().iterations, 0);
    }

    #[test]
    fn a_call_whose_prompt_cannot_fit_is_not_made_and_others_are_capped() {
        let budget = BudgetTracker::new(limits(), Instant::now());
        // 100 tokens in all: a 90-token prompt leaves 10, under the minimal completion.
        assert_eq!(
            budget.plan_call(90, None, 4096),
            Err(BudgetResource::Tokens)
        );
        assert_eq!(budget.plan_call(60, None, 4096), Ok(40));
        assert_eq!(budget.plan_call(60, None, 25), Ok(25));
    }

    #[test]
    fn the_cost_budget_caps_completions_at_known_prices() {
        let budget = BudgetTracker::new(
            BudgetLimits {
                max_tokens: None,
                ..limits()
            },
            Instant::now(),
        );
        // $0.01 left; the prompt costs $0.004; completions cost $0.0001 a token.
        let cap = budget.plan_call(40, Some((0.0001, 0.0001)), 4096);
        assert!(matches!(cap, Ok(59 | 60)), "{cap:?}");
        assert_eq!(
            budget.plan_call(99, Some((0.0001, 0.0001)), 4096),
            Err(BudgetResource::Cost)
        );
        assert_eq!(
            budget.plan_call(99, None, 4096),
            Ok(4096),
            "unknown prices cap nothing"
        );
    }

    #[test]
    fn a_spent_cost_budget_forbids_the_next_call() {
        let mut budget = BudgetTracker::new(limits(), Instant::now());
        budget.record_model_usage(1, 0.02);
        assert_eq!(budget.check_model_call(), Err(BudgetResource::Cost));
    }

    #[test]
    fn searches_are_reserved_up_to_the_limit() {
        let mut budget = BudgetTracker::new(limits(), Instant::now());
        assert_eq!(budget.reserve_search(), Ok(()));
        assert_eq!(budget.reserve_search(), Err(BudgetResource::SearchCalls));
    }

    #[test]
    fn elapsed_time_exhausts_the_time_budget() {
        let started = Instant::now() - Duration::from_secs(61);
        let budget = BudgetTracker::new(limits(), started);
        assert_eq!(budget.check_time(), Err(BudgetResource::Time));
    }

    #[test]
    fn a_deadline_tightens_the_time_limit() {
        let now = Instant::now();
        let tightened = limits().within_deadline(Some(now + Duration::from_secs(5)), now);
        assert_eq!(tightened.max_time, Some(Duration::from_secs(5)));
        let unchanged = limits().within_deadline(Some(now + Duration::from_secs(500)), now);
        assert_eq!(unchanged.max_time, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_slowest_call_so_far_decides_whether_more_calls_fit() {
        let limits = BudgetLimits {
            max_time: Some(Duration::from_secs(10)),
            ..limits()
        };
        // Four seconds gone: six left.
        let mut budget = BudgetTracker::new(limits, Instant::now() - Duration::from_secs(4));
        assert!(
            budget.calls_fit(2),
            "nothing measured yet: the next call may try"
        );
        assert!(!budget.summary_fits(), "a summing-up call needs a measure");
        budget.record_call_latency(Duration::from_millis(2500));
        budget.record_call_latency(Duration::from_millis(1000));
        assert!(budget.calls_fit(2), "two calls of 2.5 s fit in 6 s");
        assert!(!budget.calls_fit(3), "three do not");
        assert!(budget.summary_fits());
        budget.record_call_latency(Duration::from_secs(7));
        assert!(!budget.calls_fit(1));
        assert!(!budget.summary_fits());

        let mut unlimited = BudgetTracker::new(
            BudgetLimits {
                max_time: None,
                ..limits
            },
            Instant::now(),
        );
        unlimited.record_call_latency(Duration::from_secs(3600));
        assert!(unlimited.calls_fit(2) && unlimited.summary_fits());
    }

    #[test]
    fn usage_reports_the_time_since_the_start() {
        let started = Instant::now() - Duration::from_secs(5);
        let budget = BudgetTracker::new(limits(), started);
        assert!(budget.usage().elapsed >= Duration::from_secs(5));
        assert_eq!(budget.limits(), limits());
    }

    #[test]
    fn a_prompt_that_leaves_exactly_the_minimal_completion_fits() {
        let budget = BudgetTracker::new(limits(), Instant::now());
        let prompt = 100 - MIN_COMPLETION_TOKENS;
        assert_eq!(
            budget.plan_call(prompt, None, 4096),
            Ok(MIN_COMPLETION_TOKENS as u32)
        );
        assert_eq!(
            budget.plan_call(prompt + 1, None, 4096),
            Err(BudgetResource::Tokens)
        );
    }

    #[test]
    fn the_cost_already_spent_counts_against_the_next_call() {
        // Prices and limits that floating point holds exactly.
        let (input, output) = (0.5, 0.25);
        let minimal_completion = MIN_COMPLETION_TOKENS as f64 * output;
        let mut budget = BudgetTracker::new(
            BudgetLimits {
                max_tokens: None,
                max_cost_usd: Some(10.0 + 2.0 + minimal_completion),
                ..limits()
            },
            Instant::now(),
        );
        // Exactly what is left: a 4-token prompt ($2) and a minimal completion.
        budget.record_model_usage(0, 10.0);
        assert_eq!(
            budget.plan_call(4, Some((input, output)), 4096),
            Ok(MIN_COMPLETION_TOKENS as u32)
        );
        assert_eq!(
            budget.plan_call(5, Some((input, output)), 4096),
            Err(BudgetResource::Cost)
        );
    }

    #[test]
    fn free_completions_are_not_capped_by_the_cost_budget() {
        let budget = BudgetTracker::new(
            BudgetLimits {
                max_tokens: None,
                max_cost_usd: Some(2.0),
                ..limits()
            },
            Instant::now(),
        );
        // The prompt takes every dollar; the completion costs nothing.
        assert_eq!(budget.plan_call(4, Some((0.5, 0.0)), 4096), Ok(4096));
    }

    #[test]
    fn a_limit_of_zero_warns_of_nothing() {
        let mut budget = BudgetTracker::new(
            BudgetLimits {
                max_search_calls: Some(0),
                ..limits()
            },
            Instant::now(),
        );
        assert!(budget.take_warnings().is_empty());
    }

    #[test]
    fn each_resource_warns_once() {
        let mut budget = BudgetTracker::new(limits(), Instant::now());
        budget.record_model_usage(90, 0.0);
        let warnings = budget.take_warnings();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].resource, BudgetResource::Tokens);
        assert!(budget.take_warnings().is_empty());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn limits() -> impl Strategy<Value = BudgetLimits> {
        (
            prop::option::of(1u64..1_000_000),
            prop::option::of(1e-6f64..10.0),
        )
            .prop_map(|(max_tokens, max_cost_usd)| BudgetLimits {
                max_tokens,
                max_cost_usd,
                ..BudgetLimits::default()
            })
    }

    /// A model call as a run makes it: its prompt, a price, and what the provider reports,
    /// hostile reports (huge counts, negative or non-finite costs) included.
    /// Prompt tokens, price per prompt and completion token, reported tokens, reported cost.
    type Call = (u64, Option<(f64, f64)>, u64, f64);

    fn calls() -> impl Strategy<Value = Vec<Call>> {
        let reported_cost =
            prop_oneof![0.0f64..1.0, Just(-1.0), Just(f64::NAN), Just(f64::INFINITY),];
        let reported_tokens = prop_oneof![0u64..100_000, Just(u64::MAX)];
        prop::collection::vec(
            (
                0u64..200_000,
                prop::option::of((0.0f64..1e-4, 0.0f64..1e-4)),
                reported_tokens,
                reported_cost,
            ),
            0..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_planned_call_never_exceeds_what_is_left(
            limits in limits(),
            calls in calls(),
            configured_cap in 1u32..100_000,
        ) {
            let mut tracker = BudgetTracker::new(limits, Instant::now());
            for (prompt_tokens, price, reported_tokens, reported_cost) in calls {
                let before = tracker.usage();
                match tracker.plan_call(prompt_tokens, price, configured_cap) {
                    Ok(cap) => {
                        prop_assert!(cap <= configured_cap);
                        if let Some(max) = limits.max_tokens {
                            let left = max.saturating_sub(before.tokens);
                            prop_assert!(prompt_tokens + u64::from(cap) <= left);
                        }
                        if let (Some(max), Some((input, output))) = (limits.max_cost_usd, price) {
                            let spend = prompt_tokens as f64 * input + f64::from(cap) * output;
                            prop_assert!(spend <= (max - before.cost_usd) * (1.0 + 1e-9) + 1e-12);
                        }
                    }
                    Err(BudgetResource::Tokens) => {
                        let max = limits.max_tokens.unwrap_or(u64::MAX);
                        prop_assert!(max.saturating_sub(before.tokens) < prompt_tokens + MIN_COMPLETION_TOKENS);
                    }
                    Err(BudgetResource::Cost) => prop_assert!(limits.max_cost_usd.is_some()),
                    Err(other) => prop_assert!(false, "{other:?} without its limit"),
                }
                tracker.record_model_usage(reported_tokens, reported_cost);
                let after = tracker.usage();
                // Usage never goes back, never overflows, never turns NaN.
                prop_assert!(after.tokens >= before.tokens);
                prop_assert!(after.cost_usd >= before.cost_usd && after.cost_usd.is_finite());
            }
        }
    }
}
