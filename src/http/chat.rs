//! `POST /v1/chat/completions`: the last user message is the question, earlier turns its
//! context, DeepRecall's options sit beside OpenAI's fields (where the `openai` SDK's
//! `extra_body` puts them), and the answer comes back as a completion or as Server-Sent Events
//! while the run happens.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::Stream;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::HttpError;
use super::wire;
use crate::access::{Caller, QuerySlot};
use crate::api::OpenCall;
use crate::engine::budget::BudgetRequest;
use crate::engine::{
    Engine, EngineError, EventKind, EventSink, QueryMode, QueryRequest, QueryResult, TraceEvent,
};
use crate::telemetry::{self, spans};

/// The model name of the default collection; `deeprecall-<collection>` names another.
pub const MODEL: &str = "deeprecall";

/// A chat completion request. OpenAI's sampling fields are accepted and ignored: the server's
/// own model settings and the budget decide how the model is called.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    #[expect(
        dead_code,
        reason = "accepted for compatibility; the budget bounds tokens"
    )]
    max_tokens: Option<u64>,
    #[expect(
        dead_code,
        reason = "accepted for compatibility; the budget bounds tokens"
    )]
    max_completion_tokens: Option<u64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    temperature: Option<f64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    top_p: Option<f64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    stop: Option<Value>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    presence_penalty: Option<f64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    frequency_penalty: Option<f64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    seed: Option<i64>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    user: Option<String>,
    // DeepRecall's options.
    collection: Option<String>,
    filters: Option<Map<String, Value>>,
    budget: Option<BudgetJson>,
    top_k: Option<u32>,
    #[serde(default)]
    skip_cache: bool,
    root_prompt: Option<String>,
    mode: Option<QueryMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The reference's `QueryBudget` fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetJson {
    max_iterations: Option<u32>,
    max_search_calls: Option<u32>,
    max_tokens: Option<u64>,
    max_time_seconds: Option<f64>,
    max_cost_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: Role,
    content: Option<Content>,
    #[expect(dead_code, reason = "accepted for compatibility")]
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl Content {
    fn text(&self, field: &str) -> Result<String, HttpError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (index, part) in parts.iter().enumerate() {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(piece)) => text.push_str(piece),
                        _ => {
                            return Err(HttpError::invalid(
                                format!("{field}[{index}]"),
                                "only text parts are supported",
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// What the request asks of the engine, and how to answer.
#[derive(Debug)]
pub struct ChatQuery {
    /// The question and its options.
    pub query: QueryRequest,
    /// The model name to answer with.
    pub model: String,
    /// Whether to stream.
    pub stream: bool,
    /// Whether a streamed answer ends with a usage chunk.
    pub include_usage: bool,
}

/// Converts a request: the collection from the model name or the `collection` option (both
/// given, they must agree), system messages before `root_prompt`, earlier turns as context.
pub fn chat_query(request: ChatRequest) -> Result<ChatQuery, HttpError> {
    let ChatRequest {
        model,
        messages,
        stream,
        stream_options,
        n,
        collection,
        filters,
        budget,
        top_k,
        skip_cache,
        root_prompt,
        mode,
        ..
    } = request;
    let from_model = match model.strip_prefix(MODEL) {
        Some("") => None,
        Some(rest) => match rest.strip_prefix('-') {
            Some(name) if !name.is_empty() => Some(name.to_string()),
            _ => return Err(HttpError::unknown_model(&model)),
        },
        None => return Err(HttpError::unknown_model(&model)),
    };
    let collection = match (from_model, collection) {
        (Some(named), Some(asked)) if named != asked => {
            return Err(HttpError::invalid(
                "collection",
                format!("{asked:?} differs from the collection of model {model:?}"),
            ));
        }
        (named, asked) => asked.or(named).filter(|name| !name.is_empty()),
    };
    if n.is_some_and(|n| n != 1) {
        return Err(HttpError::invalid("n", "only one choice is produced"));
    }
    if stream_options.is_some() && !stream {
        return Err(HttpError::invalid(
            "stream_options",
            "is only allowed with stream: true",
        ));
    }
    let Some((last, earlier)) = messages.split_last() else {
        return Err(HttpError::invalid("messages", "must not be empty"));
    };
    let last_field = format!("messages[{}]", messages.len() - 1);
    if last.role != Role::User {
        return Err(HttpError::invalid(
            format!("{last_field}.role"),
            "the last message must come from the user: it is the question",
        ));
    }
    let question = match &last.content {
        Some(content) => content.text(&format!("{last_field}.content"))?,
        None => String::new(),
    };
    let mut instructions = Vec::new();
    let mut turns = Vec::new();
    for (index, message) in earlier.iter().enumerate() {
        let text = match &message.content {
            Some(content) => content.text(&format!("messages[{index}].content"))?,
            None => continue,
        };
        match message.role {
            Role::System | Role::Developer => instructions.push(text),
            Role::User => turns.push(format!("user: {text}")),
            Role::Assistant => turns.push(format!("assistant: {text}")),
        }
    }
    instructions.extend(root_prompt);
    let context_prefix = if turns.is_empty() {
        String::new()
    } else {
        format!("Earlier in this conversation:\n{}", turns.join("\n"))
    };
    let budget = match budget {
        None => Default::default(),
        Some(BudgetJson {
            max_iterations,
            max_search_calls,
            max_tokens,
            max_time_seconds,
            max_cost_usd,
        }) => BudgetRequest {
            max_iterations,
            max_search_calls,
            max_tokens,
            max_time_seconds,
            max_cost_usd,
        }
        .limits()?,
    };
    let top_k = match top_k {
        Some(0) => return Err(HttpError::invalid("top_k", "must be at least 1")),
        other => other.map(|k| k as usize),
    };
    Ok(ChatQuery {
        query: QueryRequest {
            query: question,
            root_prompt: instructions.join("\n\n"),
            top_k,
            collection,
            filters: filters.unwrap_or_default(),
            context_prefix,
            budget,
            skip_cache,
            mode: mode.unwrap_or_default(),
        },
        model,
        stream,
        include_usage: stream_options.is_some_and(|options| options.include_usage),
    })
}

/// What an admitted completion holds for as long as it runs: its call's count in the
/// admission, its query slot, and its caller.
pub struct Held {
    /// The call, counted until it ends.
    #[expect(dead_code, reason = "held, not read: dropping it ends the call")]
    pub call: OpenCall,
    /// The query slot.
    #[expect(dead_code, reason = "held, not read: dropping it frees the slot")]
    pub slot: Option<QuerySlot>,
    /// The caller.
    pub caller: Caller,
}

/// Answers a completion request: a completion, or an SSE stream of chunks. The query's span
/// continues the caller's trace (`traceparent`), as over gRPC.
pub async fn complete(
    engine: Engine,
    chat: ChatQuery,
    held: Held,
    parent: opentelemetry::Context,
    deadline: Option<Instant>,
) -> Result<Response, HttpError> {
    let ChatQuery {
        query,
        model,
        stream,
        include_usage,
    } = chat;
    let mut prepared = engine.prepare(query, deadline).await?;
    prepared.account = Arc::clone(&held.caller.name);
    prepared.span = spans::query(
        "ChatCompletions",
        &prepared.query_id,
        &prepared.collection.name,
    );
    telemetry::set_parent(&prepared.span, parent);
    let cancel = CancellationToken::new();
    let id = format!("chatcmpl-{}", prepared.query_id);
    let created = unix_seconds();
    if !stream {
        // Dropped with this future when the client goes: the run stops.
        let _guard = cancel.clone().drop_guard();
        let sink = EventSink::discard(prepared.started);
        let result = engine.run(prepared, sink, cancel).await?;
        drop(held);
        return Ok(Json(completion(&id, created, &model, &result)).into_response());
    }
    let (sink, events) = EventSink::channel(engine.config().event_buffer, prepared.started);
    let run_cancel = cancel.clone();
    let run: BoxFuture<'static, Result<QueryResult, EngineError>> =
        Box::pin(async move { engine.run(prepared, sink, run_cancel).await });
    let chunks = Chunks {
        id,
        created,
        model,
        include_usage,
        answered: false,
    };
    let stream = driven(run, events, chunks, cancel.drop_guard(), held);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A non-streamed completion.
fn completion(id: &str, created: u64, model: &str, result: &QueryResult) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.answer},
            "finish_reason": finish_reason(result),
        }],
        "usage": wire::completion_usage(result),
        "deeprecall": wire::extension(result),
    })
}

/// A run that stopped early (its budget ran out, say) answered with what it had: `length`,
/// as OpenAI says of an answer cut by its token limit.
fn finish_reason(result: &QueryResult) -> &'static str {
    if result.partial { "length" } else { "stop" }
}

/// Builds the chunks of one streamed completion.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Whether any answer text went out as `delta.content`.
    answered: bool,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn first(&self) -> Value {
        self.chunk(json!({"role": "assistant", "content": ""}), None)
    }

    /// The chunks of one trace event.
    fn event(&mut self, event: TraceEvent, out: &mut VecDeque<Value>) {
        match event.kind {
            EventKind::AnswerDelta(text) => {
                self.answered = true;
                out.push_back(self.chunk(json!({ "content": text }), None));
            }
            EventKind::Result(result) => self.result(&result, out),
            kind => {
                if let Some(text) = reasoning(&kind) {
                    out.push_back(self.chunk(json!({ "reasoning_content": text }), None));
                }
            }
        }
    }

    fn result(&mut self, result: &QueryResult, out: &mut VecDeque<Value>) {
        // A cache hit, or a backend that does not stream: the answer comes whole.
        if !self.answered {
            self.answered = true;
            out.push_back(self.chunk(json!({ "content": result.answer }), None));
        }
        let mut last = self.chunk(json!({}), Some(finish_reason(result)));
        last["deeprecall"] = wire::extension(result);
        out.push_back(last);
        if self.include_usage {
            out.push_back(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": wire::completion_usage(result),
            }));
        }
    }
}

/// One line of reasoning per trace event, as reasoning-aware clients show thinking.
fn reasoning(kind: &EventKind) -> Option<String> {
    Some(match kind {
        EventKind::StepStarted { step } => format!("Step {step}.\n"),
        EventKind::LlmCall(call) => {
            let asked = if call.tool_calls.is_empty() {
                "answered".to_string()
            } else {
                format!("asked for {}", call.tool_calls.join(", "))
            };
            format!(
                "{} ({} tokens in, {} out) {asked}.\n",
                call.model, call.input_tokens, call.output_tokens
            )
        }
        EventKind::Search(search) => {
            let ids: Vec<&str> = search.hits.iter().map(|(id, _)| id.as_str()).collect();
            format!(
                "Searched {:?} in {}: {} passages{}{}.\n",
                search.query,
                search.collection,
                ids.len(),
                if ids.is_empty() { "" } else { ": " },
                ids.join(", ")
            )
        }
        EventKind::SubLlmCall(call) => format!(
            "{} read {} prompts ({} failed).\n",
            call.model, call.prompts, call.failed
        ),
        EventKind::BudgetWarning(warning) => format!("Budget: {}.\n", warning.message),
        EventKind::StepCompleted { .. } | EventKind::AnswerDelta(_) | EventKind::Result(_) => {
            return None;
        }
    })
}

/// The SSE stream of a run: the stream polls the run itself and takes its events from the
/// engine's bounded channel, so a slow reader slows the run, and a client that goes away drops
/// the stream, which drops the run and fires its cancellation.
fn driven(
    run: BoxFuture<'static, Result<QueryResult, EngineError>>,
    events: mpsc::Receiver<TraceEvent>,
    chunks: Chunks,
    guard: DropGuard,
    held: Held,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let mut pending = VecDeque::new();
    pending.push_back(chunks.first());
    let state = Driven {
        run: Some(run),
        events,
        chunks,
        pending,
        done: false,
        _guard: guard,
        _held: held,
    };
    futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok(event), state))
    })
}

struct Driven {
    run: Option<BoxFuture<'static, Result<QueryResult, EngineError>>>,
    events: mpsc::Receiver<TraceEvent>,
    chunks: Chunks,
    pending: VecDeque<Value>,
    /// `[DONE]` went out.
    done: bool,
    _guard: DropGuard,
    _held: Held,
}

impl Driven {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Event::default().data(chunk.to_string()));
            }
            if self.done {
                return None;
            }
            let Some(run) = self.run.as_mut() else {
                // The run ended and its events are all out.
                match self.events.recv().await {
                    Some(event) => self.chunks.event(event, &mut self.pending),
                    None => {
                        self.done = true;
                        return Some(Event::default().data("[DONE]"));
                    }
                }
                continue;
            };
            tokio::select! {
                // Events first: the run may be waiting for room in the channel.
                biased;
                Some(event) = self.events.recv() => self.chunks.event(event, &mut self.pending),
                outcome = run => {
                    self.run = None;
                    // What was sent is still delivered; nothing more comes.
                    self.events.close();
                    if let Err(error) = outcome {
                        let error = HttpError::from(error);
                        // Mid-stream, the status line has gone: the error goes as a chunk.
                        self.pending.push_back(json!({
                            "error": {
                                "message": error.message,
                                "type": error.kind,
                                "param": error.param,
                                "code": error.code,
                            }
                        }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatQuery, HttpError> {
        let request: ChatRequest = wire::parse_bytes(body.to_string().as_bytes())?;
        chat_query(request)
    }

    #[test]
    fn the_last_user_message_is_the_question_and_earlier_turns_its_context() {
        let chat = parse(json!({
            "model": "deeprecall-handbook",
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Who leads Falcon?"},
                {"role": "assistant", "content": "Ada does."},
                {"role": "user", "content": [{"type": "text", "text": "When does it ship?"}]},
            ],
            "temperature": 0.2,
            "budget": {"max_search_calls": 3},
            "root_prompt": "Be brief.",
        }))
        .unwrap();
        assert_eq!(chat.query.query, "When does it ship?");
        assert_eq!(chat.query.collection.as_deref(), Some("handbook"));
        assert_eq!(chat.query.root_prompt, "Answer in French.\n\nBe brief.");
        assert!(
            chat.query
                .context_prefix
                .contains("user: Who leads Falcon?")
        );
        assert!(chat.query.context_prefix.contains("assistant: Ada does."));
        assert_eq!(chat.query.budget.max_search_calls, Some(3));
        assert!(!chat.stream);
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases = [
            (json!({"model": "deeprecall", "messages": []}), "messages"),
            (
                json!({"model": "deeprecall", "messages": [{"role": "assistant", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "deeprecall", "messages": [{"role": "user", "content": "x"}],
                       "budget": {"max_tokens": 0}}),
                "budget.max_tokens",
            ),
            (
                json!({"model": "deeprecall", "messages": [{"role": "user", "content": "x"}],
                       "budget": {"max_tokens": "many"}}),
                "budget.max_tokens",
            ),
            (
                json!({"model": "deeprecall", "messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "deeprecall-a", "collection": "b",
                       "messages": [{"role": "user", "content": "x"}]}),
                "collection",
            ),
        ];
        for (body, field) in cases {
            let Err(error) = parse(body.clone()) else {
                panic!("accepted {body}");
            };
            assert_eq!(error.status.as_u16(), 400, "{body}: {error:?}");
            assert_eq!(error.param.as_deref(), Some(field), "{body}: {error:?}");
        }
        let Err(error) =
            parse(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        else {
            panic!("another model accepted");
        };
        assert_eq!(error.status.as_u16(), 404);
    }
}
