//! Language models behind one trait. The engine drives every backend, the offline `extractive`
//! one included, through [`ChatModel`].

pub mod anthropic;
pub mod extractive;
pub mod http;
mod meter;
pub mod mock_server;
pub mod openai;
pub mod scripted;

/// Names shared by the engine, which offers the tools, and by backends that play the model
/// offline, which call them.
pub mod protocol {
    /// Searches the collection.
    pub const SEARCH_DB: &str = "search_db";
    /// Asks the sub-model about one prompt.
    pub const LLM_QUERY: &str = "llm_query";
    /// Asks the sub-model about several prompts concurrently.
    pub const LLM_QUERY_BATCHED: &str = "llm_query_batched";
    /// Ends the run with an answer.
    pub const SUBMIT: &str = "submit";
    /// Marker before the question in the user message.
    pub const QUESTION_MARKER: &str = "Question:";
}

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use extractive::ExtractiveModel;
pub use meter::UsageMeter;
pub use scripted::ScriptedModel;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The backend could not be reached or kept failing.
    #[error("model backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the request because of how it is configured (key, model, URL).
    #[error("model backend misconfigured: {0}")]
    Misconfigured(String),
    /// The backend answered with something that cannot be used.
    #[error("model backend answered badly: {0}")]
    BadResponse(String),
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The caller.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Id the tool result must refer to.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as JSON text, exactly as the model wrote them (they may be malformed).
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Text of the message; for a tool result, the tool's output.
    pub content: String,
    /// Tool calls the model asked for (assistant messages only).
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (tool messages only).
    pub tool_call_id: Option<String>,
}

impl Message {
    /// Builds a system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    /// Builds a user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    /// Builds an assistant message carrying tool calls.
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
            tool_calls,
            tool_call_id: None,
        }
    }

    /// Builds the result message of a tool call.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }

    fn plain(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Tool name.
    pub name: &'static str,
    /// What the tool does, for the model.
    pub description: &'static str,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One call to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far. Shared with the caller, who keeps adding to it: a request
    /// costs no copy of a conversation that grows with every turn.
    pub messages: Arc<Vec<Message>>,
    /// Tools offered; empty for a plain completion (sub-model calls). The same set goes with
    /// every call of a run, so it is shared rather than copied.
    pub tools: Arc<[ToolSpec]>,
    /// Upper bound on completion tokens.
    pub max_tokens: Option<u32>,
    /// When the run's time budget ends: retries never wait past it.
    pub deadline: Option<std::time::Instant>,
}

/// Tokens of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// A model's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Text the model wrote, if any.
    pub content: String,
    /// Tools the model asked to call, if any.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used.
    pub usage: TokenUsage,
    /// Cost reported by the provider, when it reports one.
    pub cost_usd: Option<f64>,
}

/// A language model that can call tools.
#[async_trait]
pub trait ChatModel: Send + Sync + std::fmt::Debug {
    /// The model's name as reported in usage and traces, e.g. `extractive` or `gpt-4o-mini`.
    fn name(&self) -> &str;

    /// Answers one call. Dropping the future aborts the call.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Returns true when the model can write an answer from given passages without tools: the
    /// engine then asks it to sum up a run that stopped early.
    fn writes_summaries(&self) -> bool {
        true
    }

    /// Answers one call, passing the text of the reply to `on_delta` piece by piece as it
    /// arrives, for backends that stream. Only text written before any tool call is passed on:
    /// text that turns out to preface tool calls is not an answer. Backends that do not stream
    /// answer in one piece, without calling `on_delta`.
    async fn chat_streaming(
        &self,
        request: ChatRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ChatResponse, LlmError> {
        let _ = on_delta;
        self.chat(request).await
    }
}

/// Prices per model, for backends that report no cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// `(model, US dollars per prompt token, per completion token)`.
    prices: Vec<(String, f64, f64)>,
}

impl PriceTable {
    /// Builds a table from `(model, dollars per million prompt tokens, per million completion
    /// tokens)`.
    pub fn new(per_million: Vec<(String, f64, f64)>) -> Self {
        PriceTable {
            prices: per_million
                .into_iter()
                .map(|(model, input, output)| (model, input / 1e6, output / 1e6))
                .collect(),
        }
    }

    /// Returns `(dollars per prompt token, per completion token)` of a model, if listed.
    pub fn per_token(&self, model: &str) -> Option<(f64, f64)> {
        self.prices
            .iter()
            .find(|(name, _, _)| name == model)
            .map(|(_, input, output)| (*input, *output))
    }

    /// Returns the cost of a call, if the model is listed.
    pub fn cost(&self, model: &str, usage: TokenUsage) -> Option<f64> {
        self.per_token(model).map(|(input, output)| {
            usage.input_tokens as f64 * input + usage.output_tokens as f64 * output
        })
    }
}

/// Estimates tokens for backends that report none, at the usual four characters a token.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}
