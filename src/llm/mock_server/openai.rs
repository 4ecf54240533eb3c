//! OpenAI's chat-completions wire format: whole completions and streamed chunks.

use super::*;

pub(super) fn openai_completion(
    exchange: &Exchange,
    id: &str,
    answer: &Answer,
    usage: &Usage,
) -> Value {
    let (message, finish_reason) = match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Answer::ToolCalls(calls) => {
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
            (
                json!({"role": "assistant", "content": null, "tool_calls": tool_calls}),
                "tool_calls",
            )
        }
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": exchange.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": openai_usage(usage),
    })
}

pub(super) fn openai_usage(usage: &Usage) -> Value {
    let mut fields = Map::new();
    fields.insert("prompt_tokens".into(), json!(usage.input_tokens));
    fields.insert("completion_tokens".into(), json!(usage.output_tokens));
    fields.insert(
        "total_tokens".into(),
        json!(usage.input_tokens.saturating_add(usage.output_tokens)),
    );
    if let Some(cost) = usage.cost_usd {
        fields.insert("cost".into(), json!(cost));
    }
    Value::Object(fields)
}

pub(super) fn openai_events(
    exchange: &Exchange,
    id: &str,
    answer: &Answer,
    usage: &Usage,
) -> Vec<Bytes> {
    let created = unix_now();
    let chunk = |delta: Value, finish_reason: Value| {
        openai_chunk(exchange, id, created, delta, finish_reason)
    };
    let mut events = Vec::new();
    let finish_reason = match answer {
        Answer::Text(text) => {
            events.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in word_pieces(text) {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
            "stop"
        }
        Answer::ToolCalls(calls) => {
            events.push(chunk(
                json!({"role": "assistant", "content": null}),
                Value::Null,
            ));
            for (index, call) in calls.iter().enumerate() {
                events.push(chunk(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }]}),
                    Value::Null,
                ));
                for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), json!(finish_reason)));
    if exchange.include_usage {
        let last = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": exchange.model,
            "choices": [],
            "usage": openai_usage(usage),
        });
        events.push(sse_data(&last.to_string()));
    }
    events.push(sse_data("[DONE]"));
    events
}

pub(super) fn openai_chunk(
    exchange: &Exchange,
    id: &str,
    created: u64,
    delta: Value,
    finish_reason: Value,
) -> Bytes {
    let mut chunk = Map::new();
    chunk.insert("id".into(), json!(id));
    chunk.insert("object".into(), json!("chat.completion.chunk"));
    chunk.insert("created".into(), json!(created));
    chunk.insert("model".into(), json!(exchange.model));
    chunk.insert(
        "choices".into(),
        json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]),
    );
    // OpenAI sends an explicit null usage on every chunk but the last once usage is requested.
    if exchange.include_usage {
        chunk.insert("usage".into(), Value::Null);
    }
    sse_data(&Value::Object(chunk).to_string())
}
