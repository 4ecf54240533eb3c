//! OpenAI-compatible chat completions with tools: OpenAI itself, Azure OpenAI, OpenRouter,
//! vLLM, Ollama, LiteLLM and llama.cpp's server all speak it.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};

use super::http::{HttpClient, RetryPolicy, Secret, headers};
use super::{ChatModel, ChatRequest, ChatResponse, LlmError, Message, Role, TokenUsage, ToolCall};

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
    url: String,
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
        Ok(OpenAiModel { config, url, http })
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }
                    })
                })
                .collect();
            body["tool_choice"] = json!("auto");
        }
        if let Some(max_tokens) = request.max_tokens {
            body[self.config.max_tokens_field.as_str()] = json!(max_tokens);
        }
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        if self.config.request_cost {
            body["usage"] = json!({"include": true});
        }
        body
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

fn message_json(message: &Message) -> Value {
    match message.role {
        Role::System => json!({"role": "system", "content": message.content}),
        Role::User => json!({"role": "user", "content": message.content}),
        Role::Assistant if message.tool_calls.is_empty() => {
            json!({"role": "assistant", "content": message.content})
        }
        Role::Assistant => json!({
            "role": "assistant",
            "content": if message.content.is_empty() { Value::Null } else { json!(message.content) },
            "tool_calls": message.tool_calls.iter().map(|call| json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })).collect::<Vec<_>>(),
        }),
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": message.content,
        }),
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
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| LlmError::BadResponse(format!("the reply is not JSON: {error}")))?;
    let message = value
        .pointer("/choices/0/message")
        .ok_or_else(|| LlmError::BadResponse("the reply has no choices[0].message".into()))?;
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|call| ToolCall {
                    id: call["id"].as_str().unwrap_or_default().to_string(),
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    arguments: call
                        .pointer("/function/arguments")
                        .map(|arguments| match arguments {
                            Value::String(text) => text.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let (usage, cost_usd) = usage_of(&value["usage"]);
    Ok(ChatResponse {
        content: message["content"].as_str().unwrap_or_default().to_string(),
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
    fn take(&mut self, data: &str) -> Result<Option<String>, LlmError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|error| {
            LlmError::BadResponse(format!("a stream chunk is not JSON: {error}"))
        })?;
        if let Some(error) = chunk.get("error") {
            return Err(LlmError::Unavailable(format!("the stream failed: {error}")));
        }
        if chunk["usage"].is_object() {
            (self.usage, self.cost_usd) = usage_of(&chunk["usage"]);
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else {
            return Ok(None);
        };
        if let Some(calls) = delta["tool_calls"].as_array() {
            for call in calls {
                let index = call["index"].as_u64().unwrap_or(0) as usize;
                while self.tool_calls.len() <= index {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let slot = &mut self.tool_calls[index];
                if let Some(id) = call["id"].as_str() {
                    slot.id = id.to_string();
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    slot.name.push_str(name);
                }
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                {
                    slot.arguments.push_str(arguments);
                }
            }
        }
        match delta["content"].as_str() {
            Some(text) if !text.is_empty() => {
                self.content.push_str(text);
                Ok(self.tool_calls.is_empty().then(|| text.to_string()))
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
    let mut pending = String::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes = bytes
            .map_err(|error| LlmError::BadResponse(format!("the stream broke off: {error}")))?;
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim();
            if let Some(data) = line.strip_prefix("data:")
                && let Some(text) = fold.take(data.trim())?
            {
                on_delta(&text);
            }
        }
        if fold.done {
            break;
        }
    }
    fold.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolSpec;

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
            messages: vec![
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
            ],
            tools: vec![ToolSpec {
                name: "search_db",
                description: "search",
                parameters: json!({"type": "object"}),
            }],
            max_tokens: Some(77),
            deadline: None,
        };
        let body = model().body(&request, true);
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
            .filter_map(|chunk| fold.take(chunk).unwrap())
            .collect();
        assert_eq!(passed, vec!["Let", " me"]);
        let response = fold.finish().unwrap();
        assert_eq!(response.tool_calls[0].arguments, "{\"query\":\"x\"}");
        assert_eq!(response.usage.output_tokens, 2);
    }

    #[test]
    fn a_stream_without_done_is_garbled() {
        let mut fold = StreamFold::default();
        fold.take(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#)
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
            azure.url,
            "https://acme.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01"
        );
        let missing_key = OpenAiModel::new(OpenAiConfig {
            model: "m".into(),
            azure_api_version: Some("2024-06-01".into()),
            ..OpenAiConfig::default()
        });
        assert!(matches!(missing_key, Err(LlmError::Misconfigured(_))));
    }
}
