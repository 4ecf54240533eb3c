//! The end of a run: the answer, partial or not, with its citations checked, its sources
//! ordered and its confidence, emitted as the last event. A run that stopped early is summed up
//! by one more model call when there is time for it, or stitched together from its sources.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::{Guarded, Outcome, Run, estimate_prompt_tokens};
use crate::engine::citations::validate_citations;
use crate::engine::partial;
use crate::engine::prompts;
use crate::engine::result::{BudgetStatus, QueryResult};
use crate::engine::{EventKind, QueryMode};
use crate::llm::{ChatRequest, Message};
use crate::store::Hit;
use crate::telemetry::spans::{self, ModelRole};

/// Completion tokens of the call that sums up a run that stopped early.
const SUMMARY_MAX_TOKENS: u32 = 1024;

impl Run<'_> {
    /// Asks the model, once and within what is left of the budget, to answer from the sources
    /// of a run that stopped early. Returns `None` when that call cannot or should not be made,
    /// or fails; the caller then stitches an answer together itself.
    async fn sum_up(&self, question: &str, sources: &[Hit]) -> Option<String> {
        let model = &self.inner.model;
        // Measured by the run: the summing-up call must end, as slow as the slowest call so
        // far, within the time limit (for a caller's deadline, before the reserve for the trip
        // back); otherwise the answer is stitched together at once.
        let out_of_time = !self.budget.lock().summary_fits();
        if sources.is_empty()
            || out_of_time
            || self.prepared.request.mode == QueryMode::SinglePass
            || !model.writes_summaries()
            || self.cancel_reason().is_some()
        {
            return None;
        }
        let passages: Vec<(&str, &str)> = sources
            .iter()
            .take(self.inner.config.max_sources)
            .map(|hit| (hit.id.as_str(), hit.content.as_str()))
            .collect();
        let messages = vec![
            Message::system(prompts::synthesis_system_prompt()),
            Message::user(prompts::synthesis_user_message(question, &passages)),
        ];
        let prompt_tokens = estimate_prompt_tokens(&messages);
        let price = self.inner.prices.per_token(model.name());
        let (max_tokens, deadline, step) = {
            let budget = self.budget.lock();
            let cap = budget
                .plan_call(
                    prompt_tokens,
                    price,
                    self.inner
                        .config
                        .max_completion_tokens
                        .min(SUMMARY_MAX_TOKENS),
                )
                .ok()?;
            (cap, budget.deadline(), budget.usage().iterations)
        };
        let started = Instant::now();
        let request = ChatRequest {
            messages: Arc::new(messages),
            tools: Arc::from([]),
            max_tokens: Some(max_tokens),
            deadline,
        };
        let span = spans::model_call(ModelRole::Root, model.name());
        let response = match self
            .guarded(model.chat(request))
            .instrument(span.clone())
            .await
        {
            Guarded::Done(Ok(response)) => response,
            Guarded::Done(Err(error)) => {
                tracing::warn!(%error, "summing up a stopped run failed");
                return None;
            }
            Guarded::Cancelled | Guarded::OutOfTime => return None,
        };
        self.record_root_call(step, started, &response, &span).await;
        if response.content.trim().is_empty() {
            return None;
        }
        Some(response.content)
    }

    pub(super) async fn finish(self, outcome: Outcome) -> QueryResult {
        let mut sources: Vec<Hit> = self.sources.lock().values().cloned().collect();
        sources.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));

        let question = &self.prepared.request.query;
        let (draft, claimed, sureness, partial, error, exhausted) = match outcome {
            Outcome::Answer {
                text,
                claimed_citations,
                certainty,
            } => (
                text,
                claimed_citations,
                Sureness::Stated(certainty),
                false,
                None,
                None,
            ),
            Outcome::Stopped { exhausted, reason } => {
                let (text, claimed, sureness) = match self.sum_up(question, &sources).await {
                    Some(text) => (text, Vec::new(), Sureness::Summary),
                    None => {
                        let partial = partial::synthesize(question, &sources, &reason);
                        (
                            partial.text,
                            partial.citations,
                            Sureness::Coverage(partial.coverage),
                        )
                    }
                };
                (text, claimed, sureness, true, Some(reason), exhausted)
            }
        };
        // However the run ended, its answer's citations are checked the same way.
        let (answer, citations) = validate_citations(&draft, &claimed, &sources);
        let confidence = sureness.confidence(!citations.is_empty());

        // Cited sources first, in citation order; the rest by score.
        sources.sort_by_key(|hit| {
            citations
                .iter()
                .position(|id| *id == hit.id)
                .unwrap_or(usize::MAX)
        });
        sources.truncate(self.inner.config.max_sources.max(citations.len()));

        let (limits, used) = {
            let budget = self.budget.lock();
            (budget.limits(), budget.usage())
        };
        let result = QueryResult {
            query_id: self.prepared.query_id.clone(),
            answer,
            citations,
            sources,
            reasoning_trace: std::mem::take(&mut *self.trace.lock()),
            usage: self.usage.lock().clone(),
            execution_time: self.prepared.started.elapsed(),
            budget: BudgetStatus {
                limits,
                used,
                exhausted,
            },
            confidence,
            partial,
            error,
            cached: false,
            coalesced: false,
        };
        self.sink
            .emit(used, EventKind::Result(Box::new(result.clone())))
            .await;
        result
    }
}

/// How sure an answer is, before its citations are checked.
enum Sureness {
    /// What the model said when it submitted, if it said anything usable.
    Stated(Option<f64>),
    /// A model's summing-up of a run that stopped early.
    Summary,
    /// Sentences stitched from the sources: the share of the question's terms they cover.
    Coverage(f64),
}

impl Sureness {
    fn confidence(self, cites_a_source: bool) -> f64 {
        match self {
            Sureness::Stated(certainty) => certainty
                .filter(|value| value.is_finite())
                .map(|value| value.clamp(0.0, 1.0))
                .unwrap_or(if cites_a_source { 0.6 } else { 0.3 }),
            // A summary of unfinished research is never more than half sure.
            Sureness::Summary => {
                if cites_a_source {
                    0.5
                } else {
                    0.2
                }
            }
            // A stitched-together answer is never more than half sure.
            Sureness::Coverage(coverage) => coverage * 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_follows_how_the_answer_was_made() {
        assert_eq!(Sureness::Stated(Some(0.8)).confidence(true), 0.8);
        assert_eq!(Sureness::Stated(Some(7.0)).confidence(false), 1.0);
        assert_eq!(Sureness::Stated(Some(f64::NAN)).confidence(true), 0.6);
        assert_eq!(Sureness::Stated(None).confidence(true), 0.6);
        assert_eq!(Sureness::Stated(None).confidence(false), 0.3);
        assert_eq!(Sureness::Summary.confidence(true), 0.5);
        assert_eq!(Sureness::Summary.confidence(false), 0.2);
        assert_eq!(Sureness::Coverage(0.8).confidence(true), 0.4);
    }
}
