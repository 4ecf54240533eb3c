//! OpenAI-compatible chat completions with tools: OpenAI itself, Azure OpenAI, OpenRouter,
//! vLLM, Ollama, LiteLLM and llama.cpp's server all speak it.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::http::{HttpClient, RetryPolicy, headers};
use super::{
    ChatModel, ChatRequest, ChatResponse, LlmError, Message, Role, TokenUsage, ToolCall, ToolSpec,
};
use crate::secret::Secret;

/// Settings of an OpenAI-compatible backend.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// API root, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/chat/completions`.
    /// For Azure, the resource endpoint, e.g. `https://NAME.openai.azure.com`.
    pub base_url: String,
    /// API key; local servers (Ollama, vLLM, llama.cpp) need none.
    pub api_key: Secret,
    /// Model name; for Azure, the deployment name.
    pub model: String,
    /// Headers added to every request (e.g. OpenRouter's `HTTP-Referer`).
    pub extra_headers: Vec<(String, String)>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request.
    pub request_timeout: Duration,
    /// Retries of one call.
    pub retry: RetryPolicy,
    /// Streams replies (SSE) so the answer's text reaches the caller as it is written.
    pub stream: bool,
    /// Azure OpenAI `api-version`; when set, the Azure URL form and `api-key` header are used.
    pub azure_api_version: Option<String>,
    /// Name of the completion-limit field: `max_tokens`, or `max_completion_tokens` for
    /// OpenAI's reasoning models.
    pub max_tokens_field: String,
    /// Asks for the cost in the usage (OpenRouter's `usage: {include: true}`).
    pub request_cost: bool,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            api_key: Secret::default(),
            model: String::new(),
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            stream: true,
            azure_api_version: None,
            max_tokens_field: "max_tokens".into(),
            request_cost: false,
        }
    }
}

/// An OpenAI-compatible backend.
#[derive(Debug)]
pub struct OpenAiModel {
    config: OpenAiConfig,
    url: reqwest::Url,
    http: HttpClient,
}

impl OpenAiModel {
    /// Builds the backend, checking the settings.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        if config.model.trim().is_empty() {
            return Err(LlmError::Misconfigured("no model is set".into()));
        }
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Misconfigured(format!(
                "base URL {base:?} must start with http:// or https://"
            )));
        }
        let mut pairs = config.extra_headers.clone();
        let url = match &config.azure_api_version {
            Some(version) => {
                if config.api_key.is_empty() {
                    return Err(LlmError::Misconfigured(
                        "Azure OpenAI needs an API key".into(),
                    ));
                }
                pairs.push(("api-key".into(), config.api_key.expose().to_string()));
                format!(
                    "{base}/openai/deployments/{}/chat/completions?api-version={version}",
                    config.model
                )
            }
            None => {
                if !config.api_key.is_empty() {
                    pairs.push((
                        "authorization".into(),
                        format!("Bearer {}", config.api_key.expose()),
                    ));
                }
                format!("{base}/chat/completions")
            }
        };
        let http = HttpClient::new(
            config.connect_timeout,
            config.request_timeout,
            headers(&pairs)?,
            config.retry,
        )?;
        Ok(OpenAiModel {
            url: super::http::endpoint(&url)?,
            config,
            http,
        })
    }

    /// The request body, serialised straight from the conversation: no intermediate JSON
    /// tree, no copy of the messages.
    fn body<'a>(&'a self, request: &'a ChatRequest, stream: bool) -> WireRequest<'a> {
        WireRequest {
            model: &self.config.model,
            messages: &request.messages,
            tools: &request.tools,
            max_tokens: request
                .max_tokens
                .map(|max_tokens| (self.config.max_tokens_field.as_str(), max_tokens)),
            stream,
            request_cost: self.config.request_cost,
        }
    }

    async fn call(
        &self,
        request: ChatRequest,
        on_delta: Option<&(dyn for<'s> Fn(&'s str) + Send + Sync + '_)>,
    ) -> Result<ChatResponse, LlmError> {
        let stream = on_delta.is_some() && self.config.stream;
        let body = self.body(&request, stream);
        // A garbled reply is retried once: the next sample is usually fine.
        let mut garbled = 0;
        loop {
            let response = self
                .http
                .post_json(&self.url, &body, request.deadline)
                .await?;
            let outcome = match on_delta {
                Some(on_delta) if stream => read_stream(response, on_delta).await,
                _ => match response.bytes().await {
                    Ok(bytes) => parse_completion(&bytes),
                    Err(error) => Err(LlmError::Unavailable(format!(
                        "reading the reply failed: {error}"
                    ))),
                },
            };
            match outcome {
                Err(LlmError::BadResponse(reason)) if garbled == 0 => {
                    garbled += 1;
                    tracing::warn!(%reason, "garbled model reply; asking again");
                }
                outcome => return outcome,
            }
        }
    }
}

#[async_trait]
impl ChatModel for OpenAiModel {
    fn name(&self) -> &str {
        &self.config.model
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

/// A chat completions request body.
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    tools: &'a [ToolSpec],
    /// The completion cap under its configured field name.
    max_tokens: Option<(&'a str, u32)>,
    stream: bool,
    request_cost: bool,
}

impl Serialize for WireRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_map(None)?;
        body.serialize_entry("model", self.model)?;
        body.serialize_entry("messages", &Wire(self.messages))?;
        if !self.tools.is_empty() {
            body.serialize_entry("tools", &Wire(self.tools))?;
            body.serialize_entry("tool_choice", "auto")?;
        }
        if let Some((field, max_tokens)) = self.max_tokens {
            body.serialize_entry(field, &max_tokens)?;
        }
        if self.stream {
            body.serialize_entry("stream", &true)?;
            body.serialize_entry("stream_options", &Enabled("include_usage"))?;
        }
        if self.request_cost {
            body.serialize_entry("usage", &Enabled("include"))?;
        }
        body.end()
    }
}

/// Serialises a borrowed value in the chat completions wire format.
struct Wire<'a, T: ?Sized>(&'a T);

/// A one-key object `{"<key>": true}`: `stream_options.include_usage` asks a stream for its
/// usage, OpenRouter's `usage.include` for the cost.
struct Enabled(&'static str);

impl Serialize for Enabled {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &true)?;
        map.end()
    }
}

impl<T> Serialize for Wire<'_, [T]>
where
    for<'b> Wire<'b, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut items = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            items.serialize_element(&Wire(item))?;
        }
        items.end()
    }
}

impl Serialize for Wire<'_, ToolSpec> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tool = self.0;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("type", "function")?;
        map.serialize_entry(
            "function",
            &FunctionSpec {
                name: tool.name,
                description: tool.description,
                parameters: &tool.parameters,
            },
        )?;
        map.end()
    }
}

#[derive(Serialize)]
struct FunctionSpec<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

impl Serialize for Wire<'_, ToolCall> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let call = self.0;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("id", &call.id)?;
        map.serialize_entry("type", "function")?;
        map.serialize_entry(
            "function",
            &FunctionCall {
                name: &call.name,
                arguments: &call.arguments,
            },
        )?;
        map.end()
    }
}

impl Serialize for Wire<'_, Message> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let mut map = serializer.serialize_map(None)?;
        match message.role {
            Role::System => map.serialize_entry("role", "system")?,
            Role::User => map.serialize_entry("role", "user")?,
            Role::Assistant => map.serialize_entry("role", "assistant")?,
            Role::Tool => {
                map.serialize_entry("role", "tool")?;
                map.serialize_entry("tool_call_id", &message.tool_call_id)?;
            }
        }
        if message.role == Role::Assistant && !message.tool_calls.is_empty() {
            // Some servers refuse an empty string beside tool calls; null is what OpenAI sends.
            let content = (!message.content.is_empty()).then_some(message.content.as_str());
            map.serialize_entry("content", &content)?;
            map.serialize_entry("tool_calls", &Wire(message.tool_calls.as_slice()))?;
        } else {
            map.serialize_entry("content", &message.content)?;
        }
        map.end()
    }
}

/// A non-streamed completion, as far as it is read. Fields servers fill loosely (content,
/// ids, arguments, usage) are taken as any JSON and read leniently.
#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Option<Vec<CompletionChoice>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    #[serde(default)]
    message: Option<ReplyMessage>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<ReplyToolCall>>,
}

#[derive(Deserialize)]
struct ReplyToolCall {
    #[serde(default)]
    index: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    function: Option<ReplyFunction>,
}

#[derive(Deserialize)]
struct ReplyFunction {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// One chunk of a streamed completion.
#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<StreamChoice>>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<ReplyMessage>,
}

/// Takes a string out of a loosely typed field; anything else counts as absent.
fn text_of(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

fn usage_of(value: &Value) -> (TokenUsage, Option<f64>) {
    let usage = TokenUsage {
        input_tokens: value["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: value["completion_tokens"].as_u64().unwrap_or(0),
    };
    (usage, value["cost"].as_f64())
}

/// Parses a non-streamed completion.
fn parse_completion(bytes: &[u8]) -> Result<ChatResponse, LlmError> {
    let completion: Completion = serde_json::from_slice(bytes)
        .map_err(|error| LlmError::BadResponse(format!("the reply is not JSON: {error}")))?;
    let message = completion
        .choices
        .and_then(|choices| choices.into_iter().next())
        .and_then(|choice| choice.message)
        .ok_or_else(|| LlmError::BadResponse("the reply has no choices[0].message".into()))?;
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| {
            let (name, arguments) = match call.function {
                Some(function) => (
                    text_of(function.name).unwrap_or_default(),
                    // Some servers send the arguments as an object rather than as JSON text.
                    match function.arguments {
                        Some(Value::String(text)) => text,
                        Some(other) => other.to_string(),
                        None => String::new(),
                    },
                ),
                None => (String::new(), String::new()),
            };
            ToolCall {
                id: text_of(call.id).unwrap_or_default(),
                name,
                arguments,
            }
        })
        .collect();
    let (usage, cost_usd) = completion
        .usage
        .as_ref()
        .map_or((TokenUsage::default(), None), usage_of);
    Ok(ChatResponse {
        content: text_of(message.content).unwrap_or_default(),
        tool_calls,
        usage,
        cost_usd,
    })
}

/// Folds the chunks of a streamed completion, passing text on while no tool call has begun.
#[derive(Debug, Default)]
struct StreamFold {
    content: String,
    tool_calls: Vec<ToolCall>,
    usage: TokenUsage,
    cost_usd: Option<f64>,
    done: bool,
}

impl StreamFold {
    /// Takes one `data:` payload; returns text to pass on, if any.
    fn take(&mut self, data: &[u8]) -> Result<Option<String>, LlmError> {
        if data == b"[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: StreamChunk = serde_json::from_slice(data).map_err(|error| {
            LlmError::BadResponse(format!("a stream chunk is not JSON: {error}"))
        })?;
        if let Some(error) = chunk.error {
            return Err(LlmError::Unavailable(format!("the stream failed: {error}")));
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|usage| usage.is_object()) {
            (self.usage, self.cost_usd) = usage_of(usage);
        }
        let Some(delta) = chunk
            .choices
            .and_then(|choices| choices.into_iter().next())
            .and_then(|choice| choice.delta)
        else {
            return Ok(None);
        };
        for call in delta.tool_calls.unwrap_or_default() {
            let index = call
                .index
                .as_ref()
                .and_then(Value::as_u64)
                .and_then(|index| usize::try_from(index).ok())
                .unwrap_or(0);
            while self.tool_calls.len() <= index {
                self.tool_calls.push(ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let slot = &mut self.tool_calls[index];
            if let Some(id) = text_of(call.id) {
                slot.id = id;
            }
            if let Some(function) = call.function {
                if let Some(name) = text_of(function.name) {
                    slot.name.push_str(&name);
                }
                if let Some(arguments) = text_of(function.arguments) {
                    slot.arguments.push_str(&arguments);
                }
            }
        }
        match text_of(delta.content) {
            Some(text) if !text.is_empty() => {
                self.content.push_str(&text);
                Ok(self.tool_calls.is_empty().then_some(text))
            }
            _ => Ok(None),
        }
    }

    fn finish(self) -> Result<ChatResponse, LlmError> {
        if !self.done {
            return Err(LlmError::BadResponse(
                "the stream ended before [DONE]".into(),
            ));
        }
        Ok(ChatResponse {
            content: self.content,
            tool_calls: self.tool_calls,
            usage: self.usage,
            cost_usd: self.cost_usd,
        })
    }
}

async fn read_stream(
    response: reqwest::Response,
    on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync + '_),
) -> Result<ChatResponse, LlmError> {
    let mut fold = StreamFold::default();
    // Bytes of a line not yet complete; lines are cut on bytes, so a character split across
    // network chunks is whole again before it is read.
    let mut pending: Vec<u8> = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes = bytes
            .map_err(|error| LlmError::BadResponse(format!("the stream broke off: {error}")))?;
        pending.extend_from_slice(&bytes);
        let mut consumed = 0;
        while let Some(end) = pending[consumed..].iter().position(|&byte| byte == b'\n') {
            let line = pending[consumed..consumed + end].trim_ascii();
            consumed += end + 1;
            if let Some(data) = line.strip_prefix(b"data:")
                && let Some(text) = fold.take(data.trim_ascii())?
            {
                on_delta(&text);
            }
        }
        pending.drain(..consumed);
        if fold.done {
            break;
        }
    }
    fold.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn model() -> OpenAiModel {
        OpenAiModel::new(OpenAiConfig {
            model: "gpt-test".into(),
            ..OpenAiConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn requests_carry_tools_history_and_the_token_cap() {
        let request = ChatRequest {
            messages: Arc::new(vec![
                Message::system("rules"),
                Message::user("question"),
                Message::assistant(
                    "",
                    vec![ToolCall {
                        id: "c1".into(),
                        name: "search_db".into(),
                        arguments: "{\"query\":\"x\"}".into(),
                    }],
                ),
                Message::tool_result("c1", "{\"hits\":[]}"),
            ]),
            tools: Arc::from([ToolSpec {
                name: "search_db",
                description: "search",
                parameters: json!({"type": "object"}),
            }]),
            max_tokens: Some(77),
            deadline: None,
        };
        let model = model();
        let body = serde_json::to_value(model.body(&request, true)).unwrap();
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(body["stream"], true);
        assert_eq!(body["tools"][0]["function"]["name"], "search_db");
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"query\":\"x\"}"
        );
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
    }

    #[test]
    fn completions_parse_text_tool_calls_usage_and_cost() {
        let reply = json!({
            "choices": [{"message": {"content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "submit", "arguments": "{\"answer\":\"x\"}"}}
            ]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "cost": 0.0021}
        });
        let parsed = parse_completion(reply.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.tool_calls[0].name, "submit");
        assert_eq!(parsed.usage.input_tokens, 10);
        assert_eq!(parsed.cost_usd, Some(0.0021));
        assert!(matches!(
            parse_completion(b"{nope"),
            Err(LlmError::BadResponse(_))
        ));
    }

    #[test]
    fn a_stream_folds_text_and_tool_calls_and_passes_on_only_leading_text() {
        let mut fold = StreamFold::default();
        let chunks = [
            r#"{"choices":[{"delta":{"role":"assistant","content":"Let"}}]}"#,
            r#"{"choices":[{"delta":{"content":" me"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"t1","function":{"name":"search_db","arguments":"{\"qu"}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":" look"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ery\":\"x\"}"}}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ];
        let passed: Vec<String> = chunks
            .iter()
            .filter_map(|chunk| fold.take(chunk.as_bytes()).unwrap())
            .collect();
        assert_eq!(passed, vec!["Let", " me"]);
        let response = fold.finish().unwrap();
        assert_eq!(response.tool_calls[0].arguments, "{\"query\":\"x\"}");
        assert_eq!(response.usage.output_tokens, 2);
    }

    #[test]
    fn a_stream_without_done_is_garbled() {
        let mut fold = StreamFold::default();
        fold.take(br#"{"choices":[{"delta":{"content":"Hi"}}]}"#)
            .unwrap();
        assert!(matches!(fold.finish(), Err(LlmError::BadResponse(_))));
    }

    #[test]
    fn azure_uses_the_deployment_url_and_api_key_header() {
        let azure = OpenAiModel::new(OpenAiConfig {
            base_url: "https://acme.openai.azure.com/".into(),
            model: "gpt4o-prod".into(),
            api_key: Secret::new("k"),
            azure_api_version: Some("2024-06-01".into()),
            ..OpenAiConfig::default()
        })
        .unwrap();
        assert_eq!(
            azure.url.as_str(),
            "https://acme.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01"
        );
        let missing_key = OpenAiModel::new(OpenAiConfig {
            model: "m".into(),
            azure_api_version: Some("2024-06-01".into()),
            ..OpenAiConfig::default()
        });
        assert!(matches!(missing_key, Err(LlmError::Misconfigured(_))));
    }

    #[test]
    fn a_base_url_that_is_not_a_url_is_a_misconfiguration() {
        let broken = OpenAiModel::new(OpenAiConfig {
            base_url: "http://exa mple.com/v1".into(),
            model: "m".into(),
            ..OpenAiConfig::default()
        });
        assert!(
            matches!(&broken, Err(LlmError::Misconfigured(message)) if message.contains("not a URL")),
            "{broken:?}"
        );
    }
}
