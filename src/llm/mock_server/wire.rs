//! Bodies and SSE streams, and what the mock counts in a request: prompt size and tokens.

use super::*;

pub(super) fn json_response(body: &Value) -> Response {
    raw_json_response(body.to_string().into_bytes())
}

/// Answers 200 with `body` labelled as JSON, whether or not it is.
pub(super) fn raw_json_response(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Streams `events` with a short pause before each but the first, guarded so that a client
/// dropping the stream early counts as abandoning the request.
pub(super) fn sse_response(events: Vec<Bytes>, end: StreamEnd, guard: AbandonGuard) -> Response {
    let mut response = Response::new(Body::from_stream(sse_stream(events, end, guard)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(super) struct SseState {
    pub(super) events: VecDeque<Bytes>,
    pub(super) end: StreamEnd,
    pub(super) guard: AbandonGuard,
    pub(super) started: bool,
    pub(super) finished: bool,
}

pub(super) fn sse_stream(
    events: Vec<Bytes>,
    end: StreamEnd,
    guard: AbandonGuard,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let state = SseState {
        events: events.into(),
        end,
        guard,
        started: false,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        // The pause returns Pending to hyper, which flushes what it has, so every event leaves
        // in its own write.
        let pause = state.guard.shared.chunk_pause;
        if state.started && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        state.started = true;
        if let Some(event) = state.events.pop_front() {
            if state.events.is_empty() && state.end == StreamEnd::Complete {
                state.guard.disarm();
                state.finished = true;
            }
            return Some((Ok(event), state));
        }
        state.guard.disarm();
        state.finished = true;
        match state.end {
            StreamEnd::Complete => None,
            // An error from the body makes hyper drop the connection without the final chunk,
            // which is what a client sees when a proxy or the provider cuts a stream.
            StreamEnd::Cut => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "mock llm server cut the stream",
                )),
                state,
            )),
        }
    })
}

pub(super) fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

pub(super) fn sse_event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// Splits text into deltas of a few words each, keeping the whitespace.
pub(super) fn word_pieces(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
    words
        .chunks(WORDS_PER_DELTA)
        .map(|words| words.concat())
        .collect()
}

/// Splits text into pieces of `size` characters.
pub(super) fn char_pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

/// Returns the text of the first user message, string content or concatenated text parts; the
/// same shape serves both wire formats.
pub(super) fn first_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        })
        .map(|message| match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// Counts the characters of the prompt: message contents, tool calls and results, and the
/// Anthropic `system` field.
pub(super) fn prompt_chars(body: &Value) -> usize {
    let messages: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .map(|message| {
                    ["content", "tool_calls"]
                        .iter()
                        .filter_map(|key| message.get(*key))
                        .map(text_chars)
                        .sum::<usize>()
                })
                .sum()
        })
        .unwrap_or(0);
    messages + body.get("system").map_or(0, text_chars)
}

/// Counts the characters of every string in `value` but ids and type tags.
pub(super) fn text_chars(value: &Value) -> usize {
    match value {
        Value::String(text) => text.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "type" | "id" | "tool_use_id" | "cache_control"
                )
            })
            .map(|(_, value)| text_chars(value))
            .sum(),
        _ => 0,
    }
}

pub(super) fn answer_tokens(answer: &Answer) -> u64 {
    let tokens = match answer {
        Answer::Text(text) => estimate_tokens(text),
        Answer::ToolCalls(calls) => calls
            .iter()
            .map(|call| estimate_tokens(&call.name) + estimate_tokens(&call.arguments))
            .sum(),
    };
    tokens.max(1)
}

pub(super) fn token_count(chars: usize) -> u64 {
    u64::try_from(chars).unwrap_or(u64::MAX).div_ceil(4).max(1)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
