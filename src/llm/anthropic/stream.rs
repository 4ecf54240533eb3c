//! The streamed reply: server-sent events parsed and folded into one response.

use super::*;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// The `event:` field; empty when the event names none.
    pub(super) event: String,
    /// The `data:` lines, joined by newlines.
    pub(super) data: String,
}

/// Splits a byte stream into server-sent events. Bytes are kept until a line ends, so a
/// character or a line split across chunks comes out whole.
#[derive(Debug, Default)]
pub(super) struct SseParser {
    pub(super) line: Vec<u8>,
    pub(super) after_cr: bool,
    pub(super) event: String,
    pub(super) data: String,
    pub(super) has_data: bool,
}

impl SseParser {
    /// Takes a chunk of the body and appends the events it completes to `out`.
    pub(super) fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
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

    pub(super) fn end_line(&mut self, out: &mut Vec<SseEvent>) {
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
pub(super) enum StreamEvent {
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
pub(super) struct StreamMessage {
    #[serde(default)]
    pub(super) usage: WireUsage,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct MessageDelta {
    #[serde(default)]
    pub(super) stop_reason: Option<String>,
}

/// A piece of a content block. Other pieces (thinking, signatures, citations) are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WireDelta {
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
pub(super) enum FoldBlock {
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
pub(super) struct StreamFold {
    /// Blocks by their index in the message, so that the reply keeps the model's order.
    pub(super) blocks: BTreeMap<usize, FoldBlock>,
    pub(super) tool_started: bool,
    pub(super) usage: WireUsage,
    pub(super) stop_reason: Option<String>,
    pub(super) finished: bool,
}

impl StreamFold {
    /// Applies one event. Fails on an `error` event or an event that cannot be read.
    pub(super) fn apply(
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
    pub(super) fn forward(&self, text: &str, on_delta: &(dyn Fn(&str) + Send + Sync)) {
        if !self.tool_started && !text.is_empty() {
            on_delta(text);
        }
    }

    /// Returns the reply, or an error when the stream stopped before `message_stop`.
    pub(super) fn finish(self) -> Result<ChatResponse, LlmError> {
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

pub(super) fn mismatched_delta(index: usize) -> LlmError {
    LlmError::BadResponse(format!(
        "a stream delta does not match content block {index}"
    ))
}

/// Reads one event's JSON. Anthropic repeats the event name as the data's `type`; the name
/// stands in when a proxy drops the field.
pub(super) fn parse_event(event: &SseEvent) -> Result<StreamEvent, LlmError> {
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
pub(super) async fn fold_stream<S, E>(
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
pub(super) fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
