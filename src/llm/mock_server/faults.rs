//! Replies that misbehave: a server stopping, malformed JSON, a stream cut short, an error
//! status in each API's own error shape.

use super::*;

/// Answers a request the server stopped waiting for because it is shutting down.
pub(super) fn stopping(api: Api, mut guard: AbandonGuard) -> Response {
    guard.disarm();
    error_response(
        api,
        StatusCode::SERVICE_UNAVAILABLE,
        "mock server is stopping",
    )
}

pub(super) fn malformed(exchange: &Exchange, id: &str, mut guard: AbandonGuard) -> Response {
    if !exchange.stream {
        guard.disarm();
        return raw_json_response(MALFORMED_BODY.as_bytes().to_vec());
    }
    let broken = format!("{MALFORMED_BODY}\n\n");
    let events = match exchange.api {
        Api::OpenAi => {
            let first = openai_chunk(
                exchange,
                id,
                unix_now(),
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            );
            vec![
                first,
                Bytes::from(format!("data: {broken}")),
                sse_data("[DONE]"),
            ]
        }
        Api::Anthropic => {
            let usage = Usage {
                input_tokens: exchange.prompt_tokens,
                output_tokens: 1,
                cost_usd: None,
            };
            vec![
                anthropic_message_start(exchange, id, &usage),
                Bytes::from(format!("event: content_block_delta\ndata: {broken}")),
                sse_event("message_stop", &json!({"type": "message_stop"})),
            ]
        }
    };
    sse_response(events, StreamEnd::Complete, guard)
}

pub(super) fn truncated(exchange: &Exchange, id: &str, mut guard: AbandonGuard) -> Response {
    let answer = Answer::Text(TRUNCATED_TEXT.to_string());
    let usage = Usage {
        input_tokens: exchange.prompt_tokens,
        output_tokens: answer_tokens(&answer),
        cost_usd: None,
    };
    if !exchange.stream {
        guard.disarm();
        let whole = match exchange.api {
            Api::OpenAi => openai_completion(exchange, id, &answer, &usage),
            Api::Anthropic => anthropic_message(exchange, id, &answer, &usage),
        };
        let mut bytes = whole.to_string().into_bytes();
        bytes.truncate(bytes.len() / 2);
        return raw_json_response(bytes);
    }
    let mut events = match exchange.api {
        Api::OpenAi => openai_events(exchange, id, &answer, &usage),
        Api::Anthropic => anthropic_events(exchange, id, &answer, &usage),
    };
    // Keeps the head of the text deltas; whatever would have finished the message is lost.
    events.truncate(events.len() / 2);
    sse_response(events, StreamEnd::Cut, guard)
}

pub(super) fn status_response(
    api: Api,
    code: u16,
    retry_after: Option<&str>,
    body: &str,
) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or_else(|_| {
        tracing::warn!(
            code,
            "mock llm script has an invalid status code, answering 500"
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let mut response = match serde_json::from_str::<Value>(body) {
        Ok(object @ Value::Object(_)) => {
            let mut response = json_response(&object);
            *response.status_mut() = status;
            response
        }
        _ => error_response(api, status, body),
    };
    if let Some(retry_after) = retry_after {
        match HeaderValue::from_str(retry_after) {
            Ok(value) => {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Err(_) => tracing::warn!(retry_after, "mock llm script has an invalid retry-after"),
        }
    }
    response
}

/// Builds an error in the provider's format; an empty message becomes the status's reason.
pub(super) fn error_response(api: Api, status: StatusCode, message: &str) -> Response {
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error")
    } else {
        message
    };
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    let body = match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Api::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    };
    let mut response = json_response(&body);
    *response.status_mut() = status;
    response
}
