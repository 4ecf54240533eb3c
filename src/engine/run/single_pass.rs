//! The single-pass mode: plain retrieval-augmented generation on the same engine, model and
//! store as the loop. One search for the question as asked, then one model call that sees the
//! hits as the answer of that search and may only submit. It exists so that `deeprecall eval
//! --mode both` can show what the loop buys; it shares the loop's budget checks, events,
//! citation validation and partial answers, and never makes a second model call (a run that
//! cannot make its one call ends partial, its answer stitched from the hits).

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::{Guarded, Outcome, Run, estimate_prompt_tokens, estimate_tool_tokens};
use crate::engine::prompts::{self, SEARCH_DB};
use crate::engine::{EngineError, EventKind, QueryResult};
use crate::llm::{ChatRequest, Message, ToolCall};
use crate::telemetry::spans::{self, ModelRole};

/// Id of the search call shown to the model, as if it had made it.
const SEARCH_CALL_ID: &str = "single_pass_search";

impl Run<'_> {
    /// Runs one search and one answer call, and returns the result, which has also been
    /// emitted as the last event. Fails only when the model fails and the search found nothing.
    pub(in crate::engine) async fn execute_single_pass(self) -> Result<QueryResult, EngineError> {
        let outcome = self.single_pass().await?;
        Ok(self.finish(outcome).await)
    }

    async fn single_pass(&self) -> Result<Outcome, EngineError> {
        if let Some(reason) = self.cancel_reason() {
            return Ok(Outcome::Stopped {
                exhausted: None,
                reason,
            });
        }
        const STEP: u32 = 1;
        let request = &self.prepared.request;
        let iteration = spans::iteration(STEP);
        self.emit(EventKind::StepStarted { step: STEP }).await;
        let step_started = Instant::now();

        let arguments = serde_json::json!({ "query": request.query }).to_string();
        let searched = self
            .search(STEP, request.query.clone(), None, None)
            .instrument(iteration.clone())
            .await;
        self.trace_step(STEP, SEARCH_DB, &arguments, &searched.summary);
        if let Some(resource) = searched.exhausted {
            let budget = self.budget.lock();
            return Ok(self.exhausted(resource, &budget));
        }
        if searched.failed {
            return Ok(Outcome::Stopped {
                exhausted: None,
                reason: searched.summary,
            });
        }

        // The model sees the search as one it made itself: every backend reads hits in that
        // form, and with `submit` the only tool on offer it has to answer.
        let messages = Arc::new(vec![
            Message::system(prompts::single_pass_system_prompt(&request.root_prompt)),
            Message::user(prompts::user_message(
                &request.query,
                &self.prepared.collection.name,
                self.prepared.collection.document_count,
                &request.context_prefix,
            )),
            Message::assistant(
                String::new(),
                vec![ToolCall {
                    id: SEARCH_CALL_ID.to_string(),
                    name: SEARCH_DB.to_string(),
                    arguments,
                }],
            ),
            Message::tool_result(SEARCH_CALL_ID, searched.content),
        ]);
        let tools = prompts::single_pass_tools();
        let model = &self.inner.model;
        let prompt_tokens = estimate_prompt_tokens(&messages) + estimate_tool_tokens(&tools);
        let price = self.inner.prices.per_token(model.name());
        let (max_tokens, deadline) = {
            let mut budget = self.budget.lock();
            let planned = budget.start_iteration(
                prompt_tokens,
                price,
                self.inner.config.max_completion_tokens,
            );
            match planned {
                Ok(cap) => (cap, budget.deadline()),
                Err(resource) => return Ok(self.exhausted(resource, &budget)),
            }
        };
        let call = ChatRequest {
            messages,
            tools,
            max_tokens: Some(max_tokens),
            deadline,
        };
        let call_started = Instant::now();
        let call_span = iteration.in_scope(|| spans::model_call(ModelRole::Root, model.name()));
        let response = match self.streamed_call(call).instrument(call_span.clone()).await {
            Guarded::Done(Ok(response)) => response,
            Guarded::Done(Err(error)) => {
                spans::record_error(&call_span, &error.to_string());
                self.inner
                    .metrics
                    .model_call_failed(ModelRole::Root, model.name());
                if self.sources.lock().is_empty() {
                    return Err(EngineError::Llm(error));
                }
                return Ok(Outcome::Stopped {
                    exhausted: None,
                    reason: error.to_string(),
                });
            }
            Guarded::Cancelled => {
                return Ok(Outcome::Stopped {
                    exhausted: None,
                    reason: self.cancel_reason().unwrap_or_else(|| "cancelled".into()),
                });
            }
            Guarded::OutOfTime => {
                let budget = self.budget.lock();
                return Ok(self.exhausted(crate::engine::BudgetResource::Time, &budget));
            }
        };
        self.record_root_call(STEP, call_started, &response, &call_span)
            .await;
        drop(call_span);
        let mut tools = vec![SEARCH_DB.to_string()];
        tools.extend(response.tool_calls.iter().map(|call| call.name.clone()));
        spans::record_iteration_tools(&iteration, &tools);
        self.emit(EventKind::StepCompleted {
            step: STEP,
            tools,
            latency: step_started.elapsed(),
        })
        .await;

        if let Some(outcome) = self.submitted(STEP, &response.tool_calls) {
            return Ok(outcome);
        }
        if response.tool_calls.is_empty() && !response.content.trim().is_empty() {
            self.trace_step(STEP, "answer", "", "plain-text answer");
            return Ok(Outcome::Answer {
                text: response.content,
                claimed_citations: Vec::new(),
                certainty: None,
            });
        }
        Ok(Outcome::Stopped {
            exhausted: None,
            reason: "the model's single-pass reply held no answer".into(),
        })
    }
}
