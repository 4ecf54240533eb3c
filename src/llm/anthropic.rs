//! The Anthropic backend: Claude models through the Messages API, with tool use, and the reply
//! streamed over server-sent events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{HttpClient, RetryPolicy, Secret, headers};
use super::{ChatModel, ChatRequest, ChatResponse, LlmError, Message, Role, TokenUsage, ToolCall};

/// API root used when the settings name none.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";

/// API version used when the settings name none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of the Anthropic backend.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// API root; requests go to `{base_url}/messages`.
    pub base_url: String,
    /// API key, sent as `x-api-key`.
    pub api_key: Secret,
    /// Model name, e.g. `claude-sonnet-4-5`.
    pub model: String,
    /// Sent as `anthropic-version`.
    pub anthropic_version: String,
    /// Headers added to every request (e.g. `anthropic-beta`); they win over the ones above.
    pub extra_headers: Vec<(String, String)>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request, a streamed body included.
    pub request_timeout: Duration,
    /// Retries of one call.
    pub retry: RetryPolicy,
    /// Streams replies (SSE) in `chat_streaming`, so the answer's text reaches the caller as it
    /// is written.
    pub stream: bool,
    /// Completion cap sent when the request sets none: the API requires one.
    pub default_max_tokens: u32,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: Secret::default(),
            model: String::new(),
            anthropic_version: DEFAULT_ANTHROPIC_VERSION.into(),
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            stream: true,
            default_max_tokens: 4096,
        }
    }
}

/// The Anthropic backend.
#[derive(Debug)]
pub struct AnthropicModel {
    http: HttpClient,
    url: reqwest::Url,
    model: String,
    stream: bool,
    default_max_tokens: u32,
}

impl AnthropicModel {
    /// Builds the backend, checking the settings: a key, a model and a usable completion cap
    /// are required. A blank URL or version falls back to the default.
    pub fn new(config: AnthropicConfig) -> Result<Self, LlmError> {
        if config.api_key.is_empty() {
            return Err(LlmError::Misconfigured(
                "the Anthropic api key is not set".into(),
            ));
        }
        let model = config.model.trim();
        if model.is_empty() {
            return Err(LlmError::Misconfigured("no Anthropic model is set".into()));
        }
        if config.default_max_tokens == 0 {
            return Err(LlmError::Misconfigured(
                "the default completion cap must be at least one token".into(),
            ));
        }
        let base = match config.base_url.trim().trim_end_matches('/') {
            "" => DEFAULT_BASE_URL,
            base => base,
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Misconfigured(format!(
                "base URL {base:?} must start with http:// or https://"
            )));
        }
        let version = match config.anthropic_version.trim() {
            "" => DEFAULT_ANTHROPIC_VERSION,
            version => version,
        };
        let mut pairs = vec![
            (
                "x-api-key".to_string(),
                config.api_key.expose().trim().to_string(),
            ),
            ("anthropic-version".to_string(), version.to_string()),
        ];
        // Later pairs replace earlier ones, so an explicit extra header wins.
        pairs.extend(config.extra_headers.iter().cloned());
        let http = HttpClient::new(
            config.connect_timeout,
            config.request_timeout,
            headers(&pairs)?,
            config.retry,
        )?;
        Ok(AnthropicModel {
            http,
            url: super::http::endpoint(&format!("{base}/messages"))?,
            model: model.to_string(),
            stream: config.stream,
            default_max_tokens: config.default_max_tokens,
        })
    }

    async fn call(
        &self,
        request: ChatRequest,
        on_delta: Option<&(dyn Fn(&str) + Send + Sync)>,
    ) -> Result<ChatResponse, LlmError> {
        let on_delta = on_delta.filter(|_| self.stream);
        let body = build_body(
            &self.model,
            &request,
            self.default_max_tokens,
            on_delta.is_some(),
        );
        // A garbled reply (not the expected JSON, a stream cut off) is asked for again once:
        // the next sample is usually fine.
        let mut garbled = 0;
        let (reply, whole) = loop {
            let response = self
                .http
                .post_json(&self.url, &body, request.deadline)
                .await?;
            // A proxy may answer a streaming request in one piece, as the ordinary JSON reply.
            let whole = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/json"));
            let outcome = match on_delta {
                Some(on_delta) if !whole => fold_stream(response.bytes_stream(), on_delta).await,
                _ => match response.bytes().await {
                    Ok(bytes) => parse_response(&bytes),
                    Err(error) => Err(LlmError::BadResponse(format!(
                        "reading the reply failed: {}",
                        describe(&error)
                    ))),
                },
            };
            match outcome {
                Err(LlmError::BadResponse(reason)) if garbled == 0 => {
                    garbled += 1;
                    tracing::warn!(%reason, "garbled model reply; asking again");
                }
                outcome => break (outcome?, whole),
            }
        };
        tracing::debug!(
            model = %self.model,
            streamed = on_delta.is_some() && !whole,
            input_tokens = reply.usage.input_tokens,
            output_tokens = reply.usage.output_tokens,
            tool_calls = reply.tool_calls.len(),
            "anthropic call finished"
        );
        Ok(reply)
    }
}

#[async_trait]
impl ChatModel for AnthropicModel {
    fn name(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.call(request, None).await
    }

    async fn chat_streaming(
        &self,
        request: ChatRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ChatResponse, LlmError> {
        self.call(request, Some(on_delta)).await
    }
}

// ---- Request ----------------------------------------------------------------------------

/// The content of one API message: a plain string, or content blocks.
#[derive(Debug)]
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn into_blocks(self) -> Vec<Value> {
        match self {
            // The API refuses blank text blocks; a blank text adds nothing anyway.
            Content::Text(text) if text.trim().is_empty() => Vec::new(),
            Content::Text(text) => vec![json!({"type": "text", "text": text})],
            Content::Blocks(blocks) => blocks,
        }
    }

    fn into_json(self) -> Value {
        match self {
            Content::Text(text) => Value::String(text),
            Content::Blocks(blocks) => Value::Array(blocks),
        }
    }
}

/// One API message under construction.
#[derive(Debug)]
struct WireMessage {
    role: &'static str,
    content: Content,
}

/// Builds the Messages API body of `request`.
fn build_body(model: &str, request: &ChatRequest, default_max_tokens: u32, stream: bool) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::new();
    for message in request.messages.iter() {
        match message.role {
            // The API takes instructions only as the top-level `system` field.
            Role::System => {
                if !message.content.trim().is_empty() {
                    system.push(message.content.as_str());
                }
            }
            Role::User => push_message(
                &mut messages,
                "user",
                Content::Text(message.content.clone()),
            ),
            Role::Assistant => {
                if let Some(content) = assistant_content(message) {
                    push_message(&mut messages, "assistant", content);
                }
            }
            Role::Tool => {
                let block = match &message.tool_call_id {
                    Some(id) => json!({
                        "type": "tool_result",
                        "tool_use_id": id,
                        "content": message.content,
                    }),
                    // A result that answers no call cannot be a `tool_result`; the model still
                    // gets to read it.
                    None => json!({"type": "text", "text": message.content}),
                };
                push_message(&mut messages, "user", Content::Blocks(vec![block]));
            }
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        // Zero is refused by the API; one token is the smallest cap it takes.
        json!(request.max_tokens.unwrap_or(default_max_tokens).max(1)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(
                    |message| json!({"role": message.role, "content": message.content.into_json()}),
                )
                .collect(),
        ),
    );
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    Value::Object(body)
}

/// Appends a message, merging it into the previous one when both have the same role: the API
/// requires user and assistant turns to alternate, and the results of the tool calls of one
/// turn arrive as separate messages.
fn push_message(messages: &mut Vec<WireMessage>, role: &'static str, content: Content) {
    let Some(last) = messages.last_mut().filter(|last| last.role == role) else {
        messages.push(WireMessage { role, content });
        return;
    };
    let previous = std::mem::replace(&mut last.content, Content::Blocks(Vec::new()));
    let mut blocks = previous.into_blocks();
    blocks.extend(content.into_blocks());
    // The API wants the tool results of a user turn before any text in it.
    let (mut merged, text): (Vec<Value>, Vec<Value>) = blocks
        .into_iter()
        .partition(|block| block["type"] == "tool_result");
    merged.extend(text);
    last.content = Content::Blocks(merged);
}

/// Returns the content of an assistant message, or `None` when it carries nothing: the API
/// refuses empty messages.
fn assistant_content(message: &Message) -> Option<Content> {
    let has_text = !message.content.trim().is_empty();
    if message.tool_calls.is_empty() {
        return has_text.then(|| Content::Text(message.content.clone()));
    }
    let mut blocks = Vec::with_capacity(message.tool_calls.len() + 1);
    if has_text {
        blocks.push(json!({"type": "text", "text": message.content}));
    }
    blocks.extend(message.tool_calls.iter().map(|call| {
        json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": tool_input(&call.arguments),
        })
    }));
    Some(Content::Blocks(blocks))
}

/// Returns the arguments of a call as the JSON object the API wants. Arguments that are not an
/// object become `{}`: the engine has already told the model they were malformed, and the
/// API would refuse the whole conversation otherwise.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ => Value::Object(Map::new()),
    }
}

// ---- Response -----------------------------------------------------------------------------

/// A content block of a reply. Blocks of other kinds (thinking, server tools) are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Token counts as the API reports them; a stream reports them in pieces.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes the counts `later` reports; the API's counts are cumulative.
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// Returns the usage, with cached prompt tokens counted as prompt tokens: the API reports
    /// them apart from `input_tokens`.
    fn token_usage(&self) -> TokenUsage {
        TokenUsage {
            input_tokens: self.input_tokens.unwrap_or(0)
                + self.cache_creation_input_tokens.unwrap_or(0)
                + self.cache_read_input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
        }
    }
}

/// A non-streamed reply.
#[derive(Debug, Deserialize)]
struct WireResponse {
    content: Vec<WireBlock>,
    #[serde(default)]
    usage: WireUsage,
    #[serde(default)]
    stop_reason: Option<String>,
}

/// An error the API reports in a body or as a stream event.
#[derive(Debug, Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

impl WireError {
    fn into_llm_error(self) -> LlmError {
        LlmError::Unavailable(format!("{} ({})", self.message, self.kind))
    }
}

/// Returns the arguments of a `tool_use` block as JSON text.
fn arguments_of(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        input => input.to_string(),
    }
}

/// Parses a non-streamed reply.
fn parse_response(bytes: &[u8]) -> Result<ChatResponse, LlmError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| LlmError::BadResponse(format!("the reply is not JSON: {error}")))?;
    if value["type"] == "error" {
        let error = WireError::deserialize(&value["error"])
            .map_err(|error| LlmError::BadResponse(format!("unreadable error reply: {error}")))?;
        return Err(error.into_llm_error());
    }
    let reply = WireResponse::deserialize(&value)
        .map_err(|error| LlmError::BadResponse(format!("unexpected reply: {error}")))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in reply.content {
        match block {
            WireBlock::Text { text } => content.push_str(&text),
            WireBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: arguments_of(&input),
            }),
            WireBlock::Other => {}
        }
    }
    if let Some(stop_reason) = &reply.stop_reason {
        tracing::trace!(%stop_reason, "anthropic reply stopped");
    }
    Ok(ChatResponse {
        content,
        tool_calls,
        usage: reply.usage.token_usage(),
        cost_usd: None,
    })
}

// ---- Streaming ----------------------------------------------------------------------------

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SseEvent {
    /// The `event:` field; empty when the event names none.
    event: String,
    /// The `data:` lines, joined by newlines.
    data: String,
}

/// Splits a byte stream into server-sent events. Bytes are kept until a line ends, so a
/// character or a line split across chunks comes out whole.
#[derive(Debug, Default)]
struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Takes a chunk of the body and appends the events it completes to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        for &byte in chunk {
            match byte {
                // The `\n` of a `\r\n` that ended a line already.
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let bytes = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&bytes);
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if std::mem::take(&mut self.has_data) {
                out.push(SseEvent {
                    event,
                    data: std::mem::take(&mut self.data),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // A comment, sent to keep the connection alive.
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // `id` and `retry` only matter to clients that reconnect; a reply is not resumable.
            _ => {}
        }
    }
}

/// The events of a streamed reply. Event kinds added to the API later are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StreamMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    ContentBlockStop {
        #[serde(rename = "index")]
        _index: usize,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    Ping,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StreamMessage {
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// A piece of a content block. Other pieces (thinking, signatures, citations) are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

/// A content block being assembled from a stream.
#[derive(Debug)]
enum FoldBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        /// Fragments of the arguments, concatenated.
        json: String,
        /// The input announced at the start, used when no fragment follows.
        initial: Value,
    },
    Other,
}

/// Folds the events of a streamed reply into a [`ChatResponse`], passing text on while no
/// tool call has begun.
#[derive(Debug, Default)]
struct StreamFold {
    /// Blocks by their index in the message, so that the reply keeps the model's order.
    blocks: BTreeMap<usize, FoldBlock>,
    tool_started: bool,
    usage: WireUsage,
    stop_reason: Option<String>,
    finished: bool,
}

impl StreamFold {
    /// Applies one event. Fails on an `error` event or an event that cannot be read.
    fn apply(
        &mut self,
        event: &SseEvent,
        on_delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), LlmError> {
        match parse_event(event)? {
            StreamEvent::MessageStart { message } => self.usage.update(message.usage),
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    WireBlock::Text { text } => {
                        self.forward(&text, on_delta);
                        FoldBlock::Text(text)
                    }
                    WireBlock::ToolUse { id, name, input } => {
                        self.tool_started = true;
                        FoldBlock::ToolUse {
                            id,
                            name,
                            json: String::new(),
                            initial: input,
                        }
                    }
                    WireBlock::Other => FoldBlock::Other,
                };
                self.blocks.insert(index, block);
            }
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } => {
                    match self
                        .blocks
                        .entry(index)
                        .or_insert_with(|| FoldBlock::Text(String::new()))
                    {
                        FoldBlock::Text(block) => block.push_str(&text),
                        _ => return Err(mismatched_delta(index)),
                    }
                    self.forward(&text, on_delta);
                }
                WireDelta::InputJsonDelta { partial_json } => match self.blocks.get_mut(&index) {
                    Some(FoldBlock::ToolUse { json, .. }) => json.push_str(&partial_json),
                    _ => return Err(mismatched_delta(index)),
                },
                WireDelta::Other => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                self.usage.update(usage);
            }
            StreamEvent::MessageStop => self.finished = true,
            StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping | StreamEvent::Unknown => {}
            StreamEvent::Error { error } => return Err(error.into_llm_error()),
        }
        Ok(())
    }

    /// Passes text on, unless a tool call has begun: text before a tool call is not an answer.
    fn forward(&self, text: &str, on_delta: &(dyn Fn(&str) + Send + Sync)) {
        if !self.tool_started && !text.is_empty() {
            on_delta(text);
        }
    }

    /// Returns the reply, or an error when the stream stopped before `message_stop`.
    fn finish(self) -> Result<ChatResponse, LlmError> {
        if !self.finished {
            return Err(LlmError::BadResponse("truncated stream".into()));
        }
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                FoldBlock::Text(text) => content.push_str(&text),
                FoldBlock::ToolUse {
                    id,
                    name,
                    json,
                    initial,
                } => {
                    let arguments = if !json.trim().is_empty() {
                        json
                    } else if initial.as_object().is_some_and(|object| !object.is_empty()) {
                        initial.to_string()
                    } else {
                        "{}".to_string()
                    };
                    tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                FoldBlock::Other => {}
            }
        }
        if let Some(stop_reason) = &self.stop_reason {
            tracing::trace!(%stop_reason, "anthropic stream stopped");
        }
        Ok(ChatResponse {
            content,
            tool_calls,
            usage: self.usage.token_usage(),
            cost_usd: None,
        })
    }
}

fn mismatched_delta(index: usize) -> LlmError {
    LlmError::BadResponse(format!(
        "a stream delta does not match content block {index}"
    ))
}

/// Reads one event's JSON. Anthropic repeats the event name as the data's `type`; the name
/// stands in when a proxy drops the field.
fn parse_event(event: &SseEvent) -> Result<StreamEvent, LlmError> {
    let mut value: Value = serde_json::from_str(&event.data)
        .map_err(|error| LlmError::BadResponse(format!("a stream event is not JSON: {error}")))?;
    if let Value::Object(object) = &mut value
        && !object.contains_key("type")
        && !event.event.is_empty()
    {
        object.insert("type".into(), Value::String(event.event.clone()));
    }
    StreamEvent::deserialize(&value)
        .map_err(|error| LlmError::BadResponse(format!("unexpected stream event: {error}")))
}

/// Reads a streamed reply to its `message_stop`, passing text on as it arrives.
async fn fold_stream<S, E>(
    body: S,
    on_delta: &(dyn Fn(&str) + Send + Sync),
) -> Result<ChatResponse, LlmError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::error::Error,
{
    let mut body = std::pin::pin!(body);
    let mut parser = SseParser::default();
    let mut fold = StreamFold::default();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        // A connection that breaks is worth another try, unlike a reply that makes no sense.
        let chunk = chunk.map_err(|error| {
            LlmError::BadResponse(format!("the stream broke off: {}", describe(&error)))
        })?;
        parser.push(&chunk, &mut events);
        for event in events.drain(..) {
            fold.apply(&event, on_delta)?;
            if fold.finished {
                // The connection may linger; the reply is complete.
                return fold.finish();
            }
        }
    }
    fold.finish()
}

/// Describes an error with its causes: reqwest's own message hides them ("error decoding
/// response body").
fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::llm::ToolSpec;

    fn request(
        messages: Vec<Message>,
        tools: Vec<ToolSpec>,
        max_tokens: Option<u32>,
    ) -> ChatRequest {
        ChatRequest {
            messages: messages.into(),
            tools: tools.into(),
            max_tokens,
            deadline: None,
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn search_tool() -> ToolSpec {
        ToolSpec {
            name: "search_db",
            description: "Searches the collection.",
            parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
        }
    }

    /// Turns `(event, data)` pairs into an SSE body as the API sends it.
    fn sse(events: &[(&str, Value)]) -> String {
        events
            .iter()
            .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
            .collect()
    }

    /// The stream of a reply that writes text, calls a tool, then writes more text.
    fn recorded_stream() -> String {
        sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "model": "claude-test", "stop_reason": null,
                "usage": {"input_tokens": 472, "output_tokens": 2}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            // Event kinds the API adds later are skipped.
            ("future_event", json!({"type": "future_event", "detail": 1})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Let me "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "search."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search_db", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"query\": \"ba"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "ttery life\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "text_delta", "text": " Done."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 3,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "submit", "input": {}}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 3}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 89}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ])
    }

    /// Runs an SSE body through the stream reader in chunks of `chunk_size` bytes and returns
    /// the reply with the text passed on.
    fn run_stream(body: &str, chunk_size: usize) -> (Result<ChatResponse, LlmError>, Vec<String>) {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .as_bytes()
            .chunks(chunk_size)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let passed = Mutex::new(Vec::new());
        let on_delta = |text: &str| passed.lock().unwrap().push(text.to_string());
        let reply =
            futures::executor::block_on(fold_stream(futures::stream::iter(chunks), &on_delta));
        (reply, passed.into_inner().unwrap())
    }

    #[test]
    fn system_messages_become_the_top_level_system_field() {
        let body = build_body(
            "claude-test",
            &request(
                vec![
                    Message::system("Be brief."),
                    Message::user("Question: why?"),
                    Message::system("Cite sources."),
                ],
                Vec::new(),
                None,
            ),
            1024,
            false,
        );
        assert_eq!(body["system"], "Be brief.\n\nCite sources.");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "Question: why?"}])
        );
        assert_eq!(body["model"], "claude-test");

        let without = build_body(
            "claude-test",
            &request(vec![Message::user("hi")], Vec::new(), None),
            1024,
            false,
        );
        assert!(without.get("system").is_none());
    }

    #[test]
    fn consecutive_tool_results_merge_into_one_user_message() {
        let body = build_body(
            "claude-test",
            &request(
                vec![
                    Message::user("Question: compare"),
                    Message::assistant(
                        "",
                        vec![
                            call("t1", "search_db", r#"{"query":"a"}"#),
                            call("t2", "search_db", r#"{"query":"b"}"#),
                        ],
                    ),
                    Message::tool_result("t1", "hits for a"),
                    Message::tool_result("t2", "hits for b"),
                    Message::user("Budget: 3 calls left"),
                ],
                Vec::new(),
                None,
            ),
            1024,
            false,
        );
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(
            messages[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "hits for a"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "hits for b"},
                {"type": "text", "text": "Budget: 3 calls left"},
            ]})
        );
    }

    #[test]
    fn tool_calls_round_trip_through_tool_use_blocks() {
        let original = call("toolu_9", "search_db", r#"{"query":"battery life","k":5}"#);
        let body = build_body(
            "claude-test",
            &request(
                vec![
                    Message::user("Question: how long?"),
                    Message::assistant("Searching.", vec![original.clone()]),
                ],
                vec![search_tool()],
                Some(300),
            ),
            1024,
            false,
        );
        let content = &body["messages"][1]["content"];
        assert_eq!(content[0], json!({"type": "text", "text": "Searching."}));
        assert_eq!(
            content[1],
            json!({"type": "tool_use", "id": "toolu_9", "name": "search_db",
                   "input": {"query": "battery life", "k": 5}})
        );

        // The block the API would send back for that call parses into the same call.
        let reply = json!({"content": [content[1].clone()], "usage": {"input_tokens": 1, "output_tokens": 1}});
        let parsed = parse_response(reply.to_string().as_bytes()).unwrap();
        let back = &parsed.tool_calls[0];
        assert_eq!(
            (back.id.as_str(), back.name.as_str()),
            ("toolu_9", "search_db")
        );
        assert_eq!(
            serde_json::from_str::<Value>(&back.arguments).unwrap(),
            serde_json::from_str::<Value>(&original.arguments).unwrap()
        );
    }

    #[test]
    fn arguments_that_are_not_a_json_object_are_sent_as_an_empty_input() {
        for arguments in ["{\"query\": ", "not json", "[1, 2]", "\"text\"", ""] {
            let body = build_body(
                "claude-test",
                &request(
                    vec![
                        Message::user("q"),
                        Message::assistant("", vec![call("t1", "search_db", arguments)]),
                    ],
                    Vec::new(),
                    None,
                ),
                1024,
                false,
            );
            assert_eq!(
                body["messages"][1]["content"],
                json!([{"type": "tool_use", "id": "t1", "name": "search_db", "input": {}}]),
                "arguments {arguments:?}"
            );
        }
    }

    #[test]
    fn tools_and_the_token_cap_follow_the_request() {
        let with_tools = build_body(
            "claude-test",
            &request(vec![Message::user("q")], vec![search_tool()], Some(256)),
            1024,
            true,
        );
        assert_eq!(
            with_tools["tools"],
            json!([{"name": "search_db", "description": "Searches the collection.",
                    "input_schema": search_tool().parameters}])
        );
        assert_eq!(with_tools["max_tokens"], 256);
        assert_eq!(with_tools["stream"], true);

        let plain = build_body(
            "claude-test",
            &request(vec![Message::user("q")], Vec::new(), None),
            1024,
            false,
        );
        assert!(plain.get("tools").is_none());
        assert!(plain.get("stream").is_none());
        assert_eq!(plain["max_tokens"], 1024);
    }

    #[test]
    fn empty_assistant_turns_are_dropped_and_their_neighbours_merged() {
        let body = build_body(
            "claude-test",
            &request(
                vec![
                    Message::user("q"),
                    Message::assistant("  ", Vec::new()),
                    Message::user("again"),
                ],
                Vec::new(),
                None,
            ),
            1024,
            false,
        );
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "q"}, {"type": "text", "text": "again"}]}])
        );
    }

    #[test]
    fn replies_parse_text_tool_calls_and_usage() {
        let reply = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "I will search "},
                {"type": "text", "text": "twice."},
                {"type": "tool_use", "id": "toolu_1", "name": "search_db", "input": {"query": "a"}},
                {"type": "tool_use", "id": "toolu_2", "name": "submit", "input": {}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50},
        });
        let parsed = parse_response(reply.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.content, "I will search twice.");
        assert_eq!(
            parsed.tool_calls,
            vec![
                call("toolu_1", "search_db", r#"{"query":"a"}"#),
                call("toolu_2", "submit", "{}"),
            ]
        );
        assert_eq!(
            parsed.usage,
            TokenUsage {
                input_tokens: 150,
                output_tokens: 20
            }
        );
        assert_eq!(parsed.cost_usd, None);
    }

    #[test]
    fn unusable_replies_are_bad_responses_and_empty_ones_pass() {
        assert!(matches!(
            parse_response(b"<html>busy</html>"),
            Err(LlmError::BadResponse(_))
        ));
        assert!(matches!(
            parse_response(br#"{"id":"x"}"#),
            Err(LlmError::BadResponse(_))
        ));
        assert!(matches!(
            parse_response(br#"{"content":[{"type":"tool_use","name":"x"}]}"#),
            Err(LlmError::BadResponse(_))
        ));
        let error = parse_response(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(
            matches!(error, Err(LlmError::Unavailable(message)) if message.contains("Overloaded"))
        );

        let empty =
            parse_response(br#"{"content":[],"usage":{"input_tokens":3,"output_tokens":0}}"#)
                .unwrap();
        assert_eq!(empty.content, "");
        assert!(empty.tool_calls.is_empty());
    }

    #[test]
    fn a_stream_passes_on_only_text_before_the_first_tool_call_and_reassembles_inputs() {
        let (reply, passed) = run_stream(&recorded_stream(), 4096);
        let reply = reply.unwrap();
        assert_eq!(passed, vec!["Let me ", "search."]);
        assert_eq!(reply.content, "Let me search. Done.");
        assert_eq!(
            reply.tool_calls,
            vec![
                call("toolu_1", "search_db", r#"{"query": "battery life"}"#),
                call("toolu_2", "submit", "{}"),
            ]
        );
        assert_eq!(
            reply.usage,
            TokenUsage {
                input_tokens: 472,
                output_tokens: 89
            }
        );
    }

    #[test]
    fn a_stream_reads_the_same_however_it_is_chunked() {
        let body = recorded_stream()
            .replace('\n', "\r\n")
            .replace("Let me", "Lét me");
        for chunk_size in [1, 2, 3, 7, 64] {
            let (reply, passed) = run_stream(&body, chunk_size);
            assert_eq!(passed.concat(), "Lét me search.", "chunks of {chunk_size}");
            assert_eq!(reply.unwrap().tool_calls.len(), 2, "chunks of {chunk_size}");
        }
    }

    #[test]
    fn a_stream_that_stops_before_message_stop_is_truncated() {
        let full = recorded_stream();
        let cut = &full[..full.find("event: message_delta").unwrap()];
        let (reply, passed) = run_stream(cut, 4096);
        assert!(
            matches!(reply, Err(LlmError::BadResponse(reason)) if reason == "truncated stream")
        );
        assert_eq!(passed, vec!["Let me ", "search."]);
    }

    #[test]
    fn an_error_event_makes_the_backend_unavailable() {
        let body = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
            ),
            (
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        ]);
        let (reply, _) = run_stream(&body, 4096);
        assert!(
            matches!(reply, Err(LlmError::Unavailable(message)) if message.contains("Overloaded"))
        );
    }

    #[test]
    fn sse_parsing_joins_data_lines_and_skips_comments() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(
            b": keep-alive\n\nevent: ping\ndata: {\"a\":\ndata:1}\nid: 7\n\ndata: x",
            &mut events,
        );
        assert_eq!(
            events,
            vec![SseEvent {
                event: "ping".into(),
                data: "{\"a\":\n1}".into()
            }]
        );
    }

    #[test]
    fn the_event_name_stands_in_for_a_missing_type() {
        let body = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":2}}}\n\n\
                    event: message_stop\ndata: {}\n\n";
        let (reply, _) = run_stream(body, 4096);
        assert_eq!(reply.unwrap().usage.input_tokens, 2);
    }

    #[test]
    fn construction_requires_a_key_and_a_model() {
        let missing_key = AnthropicModel::new(AnthropicConfig {
            model: "claude-test".into(),
            ..AnthropicConfig::default()
        });
        assert!(
            matches!(missing_key, Err(LlmError::Misconfigured(reason)) if reason.contains("api key"))
        );
        let missing_model = AnthropicModel::new(AnthropicConfig {
            api_key: Secret::new("sk-ant-test"),
            ..AnthropicConfig::default()
        });
        assert!(matches!(missing_model, Err(LlmError::Misconfigured(_))));

        let model = AnthropicModel::new(AnthropicConfig {
            api_key: Secret::new("sk-ant-test"),
            model: "claude-test".into(),
            base_url: "https://proxy.example/v1/".into(),
            ..AnthropicConfig::default()
        })
        .unwrap();
        assert_eq!(model.name(), "claude-test");
        assert_eq!(model.url.as_str(), "https://proxy.example/v1/messages");
        assert!(!format!("{model:?}").contains("sk-ant-test"));
    }
}
