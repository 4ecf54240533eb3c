//! The Anthropic backend: Claude models through the Messages API, with tool use, and the reply
//! streamed over server-sent events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

mod stream;

use super::http::{HttpClient, RetryPolicy, headers};
use super::{ChatModel, ChatRequest, ChatResponse, LlmError, Message, Role, TokenUsage, ToolCall};
use crate::secret::Secret;
use stream::*;

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

#[cfg(test)]
mod tests;
