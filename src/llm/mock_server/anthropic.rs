//! Anthropic's messages wire format: whole messages and streamed events.

use super::*;

pub(super) fn anthropic_message(
    exchange: &Exchange,
    id: &str,
    answer: &Answer,
    usage: &Usage,
) -> Value {
    let (content, stop_reason) = match answer {
        Answer::Text(text) => (vec![json!({"type": "text", "text": text})], "end_turn"),
        Answer::ToolCalls(calls) => (
            calls
                .iter()
                .map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": anthropic_input(&call.arguments),
                    })
                })
                .collect(),
            "tool_use",
        ),
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    })
}

/// Returns tool arguments as Anthropic's `input`: parsed JSON, or the raw text as a string when
/// it is malformed, so that the malformation still reaches the client.
pub(super) fn anthropic_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

pub(super) fn anthropic_events(
    exchange: &Exchange,
    id: &str,
    answer: &Answer,
    usage: &Usage,
) -> Vec<Bytes> {
    let mut events = vec![
        anthropic_message_start(exchange, id, usage),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    let block_delta = |index: usize, delta: Value| {
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let block_stop = |index: usize| {
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        )
    };
    let stop_reason = match answer {
        Answer::Text(text) => {
            events.push(sse_event(
                "content_block_start",
                &json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }),
            ));
            for piece in word_pieces(text) {
                events.push(block_delta(0, json!({"type": "text_delta", "text": piece})));
            }
            events.push(block_stop(0));
            "end_turn"
        }
        Answer::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                events.push(sse_event(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": {},
                        },
                    }),
                ));
                for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                    events.push(block_delta(
                        index,
                        json!({"type": "input_json_delta", "partial_json": piece}),
                    ));
                }
                events.push(block_stop(index));
            }
            "tool_use"
        }
    };
    events.push(sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": usage.output_tokens},
        }),
    ));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    events
}

pub(super) fn anthropic_message_start(exchange: &Exchange, id: &str, usage: &Usage) -> Bytes {
    sse_event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": exchange.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1},
            },
        }),
    )
}
