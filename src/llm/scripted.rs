//! A model that plays back a script: for tests of the loop and for benchmarks that must not
//! depend on a real model's speed or whims.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{ChatModel, ChatRequest, ChatResponse, LlmError, TokenUsage, ToolCall};

/// One scripted reply.
#[derive(Debug)]
pub enum ScriptedReply {
    /// Answer with this response.
    Respond(ChatResponse),
    /// Fail with this error.
    Fail(LlmError),
    /// Never answer (until the call is dropped).
    Hang,
}

/// A model answering from a script, one reply per call, and remembering every request.
#[derive(Debug)]
pub struct ScriptedModel {
    name: String,
    latency: Duration,
    replies: Mutex<VecDeque<ScriptedReply>>,
    requests: Mutex<Vec<ChatRequest>>,
    writes_summaries: bool,
}

impl ScriptedModel {
    /// Creates a model that replies from `replies` in order, after `latency` each time.
    pub fn new(name: &str, latency: Duration, replies: Vec<ScriptedReply>) -> Self {
        ScriptedModel {
            name: name.to_string(),
            latency,
            replies: Mutex::new(replies.into()),
            requests: Mutex::new(Vec::new()),
            writes_summaries: true,
        }
    }

    /// The same model, saying it cannot sum up a stopped run (as the extractive one says).
    pub fn without_summaries(mut self) -> Self {
        self.writes_summaries = false;
        self
    }

    /// Returns the requests received so far.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().clone()
    }

    /// Builds a reply that calls one tool.
    pub fn tool(name: &str, arguments: serde_json::Value) -> ScriptedReply {
        Self::tools(&[(name, arguments)])
    }

    /// Builds a reply that calls several tools in one turn.
    pub fn tools(calls: &[(&str, serde_json::Value)]) -> ScriptedReply {
        let tool_calls = calls
            .iter()
            .enumerate()
            .map(|(index, (name, arguments))| ToolCall {
                id: format!("call_{index}"),
                name: (*name).to_string(),
                arguments: arguments.to_string(),
            })
            .collect();
        ScriptedReply::Respond(ChatResponse {
            content: String::new(),
            tool_calls,
            usage: TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
            },
            cost_usd: Some(0.001),
        })
    }

    /// Builds a reply that calls a tool with raw, possibly malformed, arguments.
    pub fn raw_tool(name: &str, arguments: &str) -> ScriptedReply {
        ScriptedReply::Respond(ChatResponse {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_raw".to_string(),
                name: name.to_string(),
                arguments: arguments.to_string(),
            }],
            usage: TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
            },
            cost_usd: Some(0.001),
        })
    }

    /// Builds a plain-text reply.
    pub fn text(content: &str) -> ScriptedReply {
        ScriptedReply::Respond(ChatResponse {
            content: content.to_string(),
            tool_calls: Vec::new(),
            usage: TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
            },
            cost_usd: Some(0.001),
        })
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn writes_summaries(&self) -> bool {
        self.writes_summaries
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.requests.lock().push(request);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let reply = self.replies.lock().pop_front();
        match reply {
            Some(ScriptedReply::Respond(response)) => Ok(response),
            Some(ScriptedReply::Fail(error)) => Err(error),
            Some(ScriptedReply::Hang) => std::future::pending().await,
            None => Err(LlmError::BadResponse(
                "the script has no more replies".into(),
            )),
        }
    }
}
