//! One run of the reasoning loop: the model calls tools until it submits, answers in plain text,
//! or a budget runs out. The loop is the same for every backend.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::join_all;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use super::budget::{BudgetResource, BudgetTracker, MIN_COMPLETION_TOKENS};
use super::events::{EventKind, EventSink, ModelCallRecord, SubModelCallRecord};
use super::prompts::{self, SUBMIT};
use super::result::{QueryResult, ReasoningStep, Usage};
use super::tools::{self, ToolInvocation};
use super::{EngineError, EngineInner, PreparedQuery};
use crate::llm::{
    ChatModel, ChatRequest, ChatResponse, LlmError, Message, ToolCall, estimate_tokens,
};
use crate::store::Hit;
use crate::telemetry::spans::{self, ModelCallSummary, ModelRole};

mod finish;
mod search;
mod single_pass;

/// How a wait ended.
enum Guarded<T> {
    Done(T),
    Cancelled,
    OutOfTime,
}

/// How the loop ended.
enum Outcome {
    /// The model answered.
    Answer {
        text: String,
        claimed_citations: Vec<String>,
        certainty: Option<f64>,
    },
    /// The run stopped before the model answered.
    Stopped {
        exhausted: Option<BudgetResource>,
        reason: String,
    },
}

/// What one tool call produced.
struct ToolOutcome {
    content: String,
    /// The reasoning trace's short account of the result, made from what the tool had at
    /// hand rather than parsed back out of `content`.
    summary: String,
    failed: bool,
    exhausted: Option<BudgetResource>,
}

impl ToolOutcome {
    fn ok(content: String, summary: String) -> Self {
        ToolOutcome {
            content,
            summary,
            failed: false,
            exhausted: None,
        }
    }

    fn failed(message: &str) -> Self {
        let content = tools::error_result(message);
        ToolOutcome {
            summary: content.clone(),
            content,
            failed: true,
            exhausted: None,
        }
    }

    fn exhausted(resource: BudgetResource) -> Self {
        let content = tools::error_result(&format!(
            "budget exhausted: {} reached",
            resource.limit_name()
        ));
        ToolOutcome {
            summary: content.clone(),
            content,
            failed: true,
            exhausted: Some(resource),
        }
    }
}

/// State of one run. Tool calls of a turn run concurrently and share it through short locks.
pub(super) struct Run<'a> {
    inner: &'a EngineInner,
    prepared: &'a PreparedQuery,
    sink: EventSink,
    cancel: CancellationToken,
    budget: Mutex<BudgetTracker>,
    usage: Mutex<Usage>,
    sources: Mutex<HashMap<String, Hit>>,
    trace: Mutex<Vec<ReasoningStep>>,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        inner: &'a EngineInner,
        prepared: &'a PreparedQuery,
        sink: EventSink,
        cancel: CancellationToken,
    ) -> Self {
        Run {
            inner,
            prepared,
            sink,
            cancel,
            budget: Mutex::new(BudgetTracker::new(prepared.limits, prepared.started)),
            usage: Mutex::new(Usage::default()),
            sources: Mutex::new(HashMap::new()),
            trace: Mutex::new(Vec::new()),
        }
    }

    /// Runs the loop to its end and returns the result, which has also been emitted as the last
    /// event. Fails only when the model fails before the run found anything.
    pub(super) async fn execute(self) -> Result<QueryResult, EngineError> {
        let outcome = self.reason().await?;
        // An answer made of nothing is no answer: a caller whose deadline stopped the run
        // before it found anything hears that the deadline passed, as from any server.
        if self.prepared.deadline_bound
            && matches!(
                outcome,
                Outcome::Stopped {
                    exhausted: Some(BudgetResource::Time),
                    ..
                }
            )
            && self.sources.lock().is_empty()
        {
            return Err(EngineError::DeadlineExceeded(
                "the deadline passed before the query found anything to answer from",
            ));
        }
        Ok(self.finish(outcome).await)
    }

    async fn reason(&self) -> Result<Outcome, EngineError> {
        let request = &self.prepared.request;
        let mut messages = Arc::new(vec![
            Message::system(prompts::system_prompt(&request.root_prompt)),
            Message::user(prompts::user_message(
                &request.query,
                &self.prepared.collection.name,
                self.prepared.collection.document_count,
                &request.context_prefix,
            )),
        ]);
        let tool_specs = prompts::tools();
        let tool_tokens = estimate_tool_tokens(&tool_specs);
        let max_errors = self.inner.config.max_consecutive_tool_errors.max(1);
        let mut consecutive_errors = 0;
        let mut empty_replies = 0;

        loop {
            if let Some(reason) = self.cancel_reason() {
                return Ok(Outcome::Stopped {
                    exhausted: None,
                    reason,
                });
            }
            let model = &self.inner.model;
            let prompt_tokens = estimate_prompt_tokens(&messages) + tool_tokens;
            let price = self.inner.prices.per_token(model.name());
            let (step, max_tokens, deadline) = {
                let mut budget = self.budget.lock();
                // A call expected to end too late to sum up after it is not started: the run
                // stops now and sums up in the time it has (see `sum_up`).
                let calls = 1 + u32::from(model.writes_summaries());
                if !budget.calls_fit(calls) {
                    return Ok(self.no_time_for_calls(&budget));
                }
                let planned = budget.start_iteration(
                    prompt_tokens,
                    price,
                    self.inner.config.max_completion_tokens,
                );
                match planned {
                    Ok(cap) => (budget.usage().iterations, cap, budget.deadline()),
                    Err(resource) => return Ok(self.exhausted(resource, &budget)),
                }
            };
            // Dropped at the end of the turn, which closes it: its times are the turn's.
            let iteration = spans::iteration(step);
            self.emit(EventKind::StepStarted { step }).await;
            let step_started = Instant::now();

            let request = ChatRequest {
                messages: Arc::clone(&messages),
                tools: Arc::clone(&tool_specs),
                max_tokens: Some(max_tokens),
                deadline,
            };
            let response = match self.call_root(step, request, &iteration).await? {
                Ok(response) => response,
                Err(ended) => return Ok(ended),
            };

            if response.tool_calls.is_empty() {
                if response.content.trim().is_empty() {
                    // An empty reply is asked again once, then reported.
                    empty_replies += 1;
                    if empty_replies >= 2 {
                        return Ok(Outcome::Stopped {
                            exhausted: None,
                            reason: "the model returned empty replies twice in a row".into(),
                        });
                    }
                    // The request that shared the conversation is gone: this appends in place.
                    Arc::make_mut(&mut messages).push(Message::user(
                        "Your reply was empty. Call a tool, or submit your answer.",
                    ));
                    continue;
                }
                self.trace_step(step, "answer", "", "plain-text answer");
                return Ok(Outcome::Answer {
                    text: response.content,
                    claimed_citations: Vec::new(),
                    certainty: None,
                });
            }

            empty_replies = 0;
            Arc::make_mut(&mut messages).push(Message::assistant(
                response.content.clone(),
                response.tool_calls.clone(),
            ));
            if let Some(outcome) = self.submitted(step, &response.tool_calls) {
                return Ok(outcome);
            }

            let outcomes = join_all(
                response
                    .tool_calls
                    .iter()
                    .map(|call| self.run_tool(step, call)),
            )
            .instrument(iteration.clone())
            .await;
            let mut exhausted = None;
            let all_failed = outcomes.iter().all(|outcome| outcome.failed);
            for (call, outcome) in response.tool_calls.iter().zip(outcomes) {
                exhausted = exhausted.or(outcome.exhausted);
                Arc::make_mut(&mut messages)
                    .push(Message::tool_result(call.id.clone(), outcome.content));
            }
            let tools: Vec<String> = response
                .tool_calls
                .iter()
                .map(|call| call.name.clone())
                .collect();
            spans::record_iteration_tools(&iteration, &tools);
            self.emit(EventKind::StepCompleted {
                step,
                tools,
                latency: step_started.elapsed(),
            })
            .await;
            self.emit_warnings().await;

            if let Some(resource) = exhausted {
                let budget = self.budget.lock();
                return Ok(self.exhausted(resource, &budget));
            }
            consecutive_errors = if all_failed {
                consecutive_errors + 1
            } else {
                0
            };
            if consecutive_errors >= max_errors {
                return Ok(Outcome::Stopped {
                    exhausted: None,
                    reason: format!(
                        "the model's tool calls failed {consecutive_errors} turns in a row"
                    ),
                });
            }
        }
    }

    /// Returns the outcome if the model called `submit` with usable arguments. A malformed
    /// `submit` is left to `run_tool`, which reports the error back to the model.
    fn submitted(&self, step: u32, calls: &[ToolCall]) -> Option<Outcome> {
        let call = calls.iter().find(|call| call.name == SUBMIT)?;
        let Ok(ToolInvocation::Submit {
            answer,
            citations,
            certainty,
        }) = tools::parse(call)
        else {
            return None;
        };
        self.trace_step(step, SUBMIT, &call.arguments, "answer submitted");
        Some(Outcome::Answer {
            text: answer,
            claimed_citations: citations,
            certainty,
        })
    }

    async fn run_tool(&self, step: u32, call: &ToolCall) -> ToolOutcome {
        let outcome = match tools::parse(call) {
            Err(message) => ToolOutcome::failed(&message),
            Ok(ToolInvocation::Search {
                query,
                top_k,
                filters,
            }) => self.search(step, query, top_k, filters).await,
            Ok(ToolInvocation::LlmQuery { prompt }) => {
                self.sub_model(step, vec![prompt], false).await
            }
            Ok(ToolInvocation::LlmQueryBatched { prompts }) => {
                self.sub_model(step, prompts, true).await
            }
            // A parsable submit ended the turn before tools ran.
            Ok(ToolInvocation::Submit { .. }) => ToolOutcome::failed("submit was not accepted"),
        };
        self.trace_step(step, &call.name, &call.arguments, &outcome.summary);
        outcome
    }

    async fn sub_model(&self, step: u32, prompts: Vec<String>, batched: bool) -> ToolOutcome {
        let config = &self.inner.config;
        if prompts.is_empty() {
            return ToolOutcome::failed("no prompts given");
        }
        if prompts.len() > config.max_batched_prompts {
            return ToolOutcome::failed(&format!(
                "{} prompts given; at most {} per call",
                prompts.len(),
                config.max_batched_prompts
            ));
        }
        let model = &self.inner.sub_model;
        let prompt_tokens: u64 = prompts
            .iter()
            .map(|prompt| {
                estimate_tokens(prompt) + estimate_tokens(prompts::sub_model_system_prompt())
            })
            .sum::<u64>()
            + MIN_COMPLETION_TOKENS * (prompts.len() as u64 - 1);
        let price = self.inner.prices.per_token(model.name());
        let (max_tokens, deadline) = {
            let budget = self.budget.lock();
            let configured = config.max_completion_tokens;
            match budget.plan_call(prompt_tokens, price, configured) {
                // The completion budget is shared by the prompts that run together.
                Ok(cap) => (
                    (cap / prompts.len() as u32).max(MIN_COMPLETION_TOKENS as u32),
                    budget.deadline(),
                ),
                Err(resource) => return ToolOutcome::exhausted(resource),
            }
        };
        let started = Instant::now();
        let span = spans::model_call(ModelRole::Sub, model.name());
        let calls = futures::stream::iter(prompts)
            .map(|prompt| {
                model.chat(ChatRequest {
                    messages: Arc::new(vec![
                        Message::system(prompts::sub_model_system_prompt()),
                        Message::user(prompt),
                    ]),
                    tools: Arc::from([]),
                    max_tokens: Some(max_tokens),
                    deadline,
                })
            })
            .buffered(config.sub_model_concurrency.max(1))
            .collect::<Vec<Result<ChatResponse, LlmError>>>();
        let responses = match self.guarded(calls).instrument(span.clone()).await {
            Guarded::Done(responses) => responses,
            Guarded::Cancelled => return ToolOutcome::failed("cancelled"),
            Guarded::OutOfTime => return ToolOutcome::exhausted(BudgetResource::Time),
        };

        let mut record = SubModelCallRecord {
            step,
            model: model.name().to_string(),
            prompts: u32::try_from(responses.len()).unwrap_or(u32::MAX),
            failed: 0,
            input_tokens: 0,
            output_tokens: 0,
            latency: started.elapsed(),
            cost_usd: 0.0,
        };
        let mut texts = Vec::with_capacity(responses.len());
        for response in responses {
            match response {
                Ok(response) => {
                    let cost = self.record_model_usage(
                        ModelRole::Sub,
                        model.as_ref(),
                        &response,
                        record.latency,
                    );
                    record.input_tokens += response.usage.input_tokens;
                    record.output_tokens += response.usage.output_tokens;
                    record.cost_usd += cost;
                    texts.push(response.content);
                }
                Err(error) => {
                    self.inner
                        .metrics
                        .model_call_failed(ModelRole::Sub, model.name());
                    record.failed += 1;
                    texts.push(format!("error: {error}"));
                }
            }
        }
        spans::record_model_call(
            &span,
            &ModelCallSummary {
                input_tokens: record.input_tokens,
                output_tokens: record.output_tokens,
                cost_usd: record.cost_usd,
                latency: record.latency,
                prompts: record.prompts,
            },
        );
        if record.failed > 0 {
            spans::record_error(
                &span,
                &format!("{} of {} prompts failed", record.failed, record.prompts),
            );
        }
        let all_failed = record.failed == record.prompts;
        self.emit(EventKind::SubLlmCall(record)).await;
        let (content, summary) = if batched {
            (
                tools::llm_query_batched_result(&texts),
                format!("{} response(s)", texts.len()),
            )
        } else {
            let response = texts.first().map_or("", String::as_str);
            (
                tools::llm_query_result(response),
                response.chars().take(200).collect(),
            )
        };
        ToolOutcome {
            // A failed call's trace shows what the model was told, as for other failures.
            summary: if all_failed { content.clone() } else { summary },
            content,
            failed: all_failed,
            exhausted: None,
        }
    }

    /// Makes one root-model call under its own span and records it. A failure once something
    /// was found, a cancellation or the time running out ends the run: the outcome to end
    /// with comes back as `Ok(Err(_))`. A failure before anything was found fails the query.
    async fn call_root(
        &self,
        step: u32,
        request: ChatRequest,
        iteration: &Span,
    ) -> Result<Result<ChatResponse, Outcome>, EngineError> {
        let model = &self.inner.model;
        let call_started = Instant::now();
        let call_span = iteration.in_scope(|| spans::model_call(ModelRole::Root, model.name()));
        let response = match self
            .streamed_call(request)
            .instrument(call_span.clone())
            .await
        {
            Guarded::Done(Ok(response)) => response,
            Guarded::Done(Err(error)) => {
                spans::record_error(&call_span, &error.to_string());
                self.inner
                    .metrics
                    .model_call_failed(ModelRole::Root, model.name());
                if self.sources.lock().is_empty() {
                    return Err(EngineError::Llm(error));
                }
                return Ok(Err(Outcome::Stopped {
                    exhausted: None,
                    reason: error.to_string(),
                }));
            }
            Guarded::Cancelled => {
                return Ok(Err(Outcome::Stopped {
                    exhausted: None,
                    reason: self.cancel_reason().unwrap_or_else(|| "cancelled".into()),
                }));
            }
            Guarded::OutOfTime => {
                let budget = self.budget.lock();
                return Ok(Err(self.exhausted(BudgetResource::Time, &budget)));
            }
        };
        self.record_root_call(step, call_started, &response, &call_span)
            .await;
        Ok(Ok(response))
    }

    async fn record_root_call(
        &self,
        step: u32,
        started: Instant,
        response: &ChatResponse,
        span: &Span,
    ) {
        let model = &self.inner.model;
        let latency = started.elapsed();
        self.budget.lock().record_call_latency(latency);
        let cost_usd = self.record_model_usage(ModelRole::Root, model.as_ref(), response, latency);
        spans::record_model_call(
            span,
            &ModelCallSummary {
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
                cost_usd,
                latency,
                prompts: 1,
            },
        );
        self.emit(EventKind::LlmCall(ModelCallRecord {
            step,
            model: model.name().to_string(),
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            latency: started.elapsed(),
            cost_usd,
            tool_calls: response
                .tool_calls
                .iter()
                .map(|call| call.name.clone())
                .collect(),
        }))
        .await;
        self.emit_warnings().await;
    }

    /// Adds a call's tokens and cost to the budget, the usage and the metrics; returns the cost.
    fn record_model_usage(
        &self,
        role: ModelRole,
        model: &dyn ChatModel,
        response: &ChatResponse,
        latency: std::time::Duration,
    ) -> f64 {
        let cost_usd = response
            .cost_usd
            .or_else(|| self.inner.prices.cost(model.name(), response.usage))
            .unwrap_or(0.0);
        let tokens = response.usage.input_tokens + response.usage.output_tokens;
        self.budget.lock().record_model_usage(tokens, cost_usd);
        self.usage
            .lock()
            .record_call(model.name(), response.usage, cost_usd);
        self.inner.metrics.model_call(
            role,
            model.name(),
            response.usage.input_tokens,
            response.usage.output_tokens,
            cost_usd,
            latency,
        );
        cost_usd
    }

    fn exhausted(&self, resource: BudgetResource, budget: &BudgetTracker) -> Outcome {
        let limits = budget.limits();
        let limit = match resource {
            BudgetResource::Iterations => limits.max_iterations.map(f64::from),
            BudgetResource::SearchCalls => limits.max_search_calls.map(f64::from),
            BudgetResource::Tokens => limits.max_tokens.map(|max| max as f64),
            BudgetResource::Time => limits.max_time.map(|max| max.as_secs_f64()),
            BudgetResource::Cost => limits.max_cost_usd,
        };
        let reason = match limit {
            Some(limit) => format!(
                "budget exhausted: {} ({limit}) reached",
                resource.limit_name()
            ),
            None => format!("budget exhausted: {} reached", resource.limit_name()),
        };
        Outcome::Stopped {
            exhausted: Some(resource),
            reason,
        }
    }

    /// The outcome of a run whose next model call would end too late to sum up after it.
    fn no_time_for_calls(&self, budget: &BudgetTracker) -> Outcome {
        let limit = budget
            .limits()
            .max_time
            .map_or(0.0, |limit| limit.as_secs_f64());
        Outcome::Stopped {
            exhausted: Some(BudgetResource::Time),
            reason: format!(
                "budget exhausted: {} ({limit:.3}) leaves no time for another model call",
                BudgetResource::Time.limit_name()
            ),
        }
    }

    fn cancel_reason(&self) -> Option<String> {
        if self.inner.shutdown.is_cancelled() {
            Some("the server is shutting down".into())
        } else if self.cancel.is_cancelled() {
            Some("cancelled by the caller".into())
        } else {
            None
        }
    }

    /// Calls the root model, streaming the text of its reply to the caller as answer deltas.
    async fn streamed_call(&self, request: ChatRequest) -> Guarded<Result<ChatResponse, LlmError>> {
        let (deltas, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
        let model = &self.inner.model;
        let call = async move {
            let on_delta = move |text: &str| {
                // A gone receiver only means the run stopped listening.
                let _ = deltas.send(text.to_string());
            };
            model.chat_streaming(request, &on_delta).await
        };
        // The call owns the sender: when it ends or is dropped, forwarding ends too.
        let forward = async {
            while let Some(text) = received.recv().await {
                self.emit(EventKind::AnswerDelta(text)).await;
            }
        };
        let (outcome, ()) = tokio::join!(self.guarded(call), forward);
        outcome
    }

    /// Waits for `future` unless the run is cancelled or out of time first; dropping the
    /// future aborts whatever it was doing, an HTTP request to a model included.
    async fn guarded<T>(&self, future: impl Future<Output = T>) -> Guarded<T> {
        let deadline = self.budget.lock().deadline();
        let out_of_time = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Guarded::Cancelled,
            _ = self.inner.shutdown.cancelled() => Guarded::Cancelled,
            _ = out_of_time => Guarded::OutOfTime,
            value = future => Guarded::Done(value),
        }
    }

    async fn emit(&self, kind: EventKind) {
        let used = self.budget.lock().usage();
        self.sink.emit(used, kind).await;
    }

    async fn emit_warnings(&self) {
        let warnings = self.budget.lock().take_warnings();
        for warning in warnings {
            self.emit(EventKind::BudgetWarning(warning)).await;
        }
    }

    fn trace_step(&self, step: u32, action: &str, input: &str, output: &str) {
        self.trace.lock().push(ReasoningStep {
            step,
            action: action.to_string(),
            input: input.to_string(),
            output: output.to_string(),
        });
    }
}

/// Estimates the prompt tokens of a call's messages and tool calls.
fn estimate_prompt_tokens(messages: &[Message]) -> u64 {
    // Each message carries a few tokens of framing besides its text.
    const PER_MESSAGE: u64 = 4;
    messages
        .iter()
        .map(|message| {
            PER_MESSAGE
                + estimate_tokens(&message.content)
                + message
                    .tool_calls
                    .iter()
                    .map(|call| estimate_tokens(&call.name) + estimate_tokens(&call.arguments))
                    .sum::<u64>()
        })
        .sum()
}

/// Estimates the prompt tokens of tool definitions; the same for every call of a run.
fn estimate_tool_tokens(tools: &[crate::llm::ToolSpec]) -> u64 {
    tools
        .iter()
        .map(|tool| {
            estimate_tokens(tool.name)
                + estimate_tokens(tool.description)
                + estimate_tokens(&tool.parameters.to_string())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_estimated_with_its_framing_text_and_tool_calls() {
        use crate::llm::{ToolCall, estimate_tokens};
        let call = ToolCall {
            id: "call_0".into(),
            name: "search_db".into(),
            arguments: r#"{"query": "zephyr blender maker"}"#.into(),
        };
        let messages = [
            Message::system("You answer questions."),
            Message::assistant(String::new(), vec![call.clone()]),
        ];
        let expected = 4
            + estimate_tokens("You answer questions.")
            + 4
            + estimate_tokens(&call.name)
            + estimate_tokens(&call.arguments);
        assert_eq!(estimate_prompt_tokens(&messages), expected);
    }
}
