use std::sync::Mutex;

use super::*;
use crate::llm::ToolSpec;

fn request(messages: Vec<Message>, tools: Vec<ToolSpec>, max_tokens: Option<u32>) -> ChatRequest {
    ChatRequest {
        messages: messages.into(),
        tools: tools.into(),
        max_tokens,
        deadline: None,
    }
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

fn search_tool() -> ToolSpec {
    ToolSpec {
        name: "search_db",
        description: "Searches the collection.",
        parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
    }
}

/// Turns `(event, data)` pairs into an SSE body as the API sends it.
fn sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
        .collect()
}

/// The stream of a reply that writes text, calls a tool, then writes more text.
fn recorded_stream() -> String {
    sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-test", "stop_reason": null,
            "usage": {"input_tokens": 472, "output_tokens": 2}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        // Event kinds the API adds later are skipped.
        ("future_event", json!({"type": "future_event", "detail": 1})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Let me "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "search."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search_db", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"query\": \"ba"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "ttery life\"}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "text_delta", "text": " Done."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "submit", "input": {}}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 3}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 89}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ])
}

/// Runs an SSE body through the stream reader in chunks of `chunk_size` bytes and returns
/// the reply with the text passed on.
fn run_stream(body: &str, chunk_size: usize) -> (Result<ChatResponse, LlmError>, Vec<String>) {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .as_bytes()
        .chunks(chunk_size)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    let passed = Mutex::new(Vec::new());
    let on_delta = |text: &str| passed.lock().unwrap().push(text.to_string());
    let reply = futures::executor::block_on(fold_stream(futures::stream::iter(chunks), &on_delta));
    (reply, passed.into_inner().unwrap())
}

#[test]
fn system_messages_become_the_top_level_system_field() {
    let body = build_body(
        "claude-test",
        &request(
            vec![
                Message::system("Be brief."),
                Message::user("Question: why?"),
                Message::system("Cite sources."),
            ],
            Vec::new(),
            None,
        ),
        1024,
        false,
    );
    assert_eq!(body["system"], "Be brief.\n\nCite sources.");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Question: why?"}])
    );
    assert_eq!(body["model"], "claude-test");

    let without = build_body(
        "claude-test",
        &request(vec![Message::user("hi")], Vec::new(), None),
        1024,
        false,
    );
    assert!(without.get("system").is_none());
}

#[test]
fn consecutive_tool_results_merge_into_one_user_message() {
    let body = build_body(
        "claude-test",
        &request(
            vec![
                Message::user("Question: compare"),
                Message::assistant(
                    "",
                    vec![
                        call("t1", "search_db", r#"{"query":"a"}"#),
                        call("t2", "search_db", r#"{"query":"b"}"#),
                    ],
                ),
                Message::tool_result("t1", "hits for a"),
                Message::tool_result("t2", "hits for b"),
                Message::user("Budget: 3 calls left"),
            ],
            Vec::new(),
            None,
        ),
        1024,
        false,
    );
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "hits for a"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "hits for b"},
            {"type": "text", "text": "Budget: 3 calls left"},
        ]})
    );
}

#[test]
fn tool_calls_round_trip_through_tool_use_blocks() {
    let original = call("toolu_9", "search_db", r#"{"query":"battery life","k":5}"#);
    let body = build_body(
        "claude-test",
        &request(
            vec![
                Message::user("Question: how long?"),
                Message::assistant("Searching.", vec![original.clone()]),
            ],
            vec![search_tool()],
            Some(300),
        ),
        1024,
        false,
    );
    let content = &body["messages"][1]["content"];
    assert_eq!(content[0], json!({"type": "text", "text": "Searching."}));
    assert_eq!(
        content[1],
        json!({"type": "tool_use", "id": "toolu_9", "name": "search_db",
               "input": {"query": "battery life", "k": 5}})
    );

    // The block the API would send back for that call parses into the same call.
    let reply =
        json!({"content": [content[1].clone()], "usage": {"input_tokens": 1, "output_tokens": 1}});
    let parsed = parse_response(reply.to_string().as_bytes()).unwrap();
    let back = &parsed.tool_calls[0];
    assert_eq!(
        (back.id.as_str(), back.name.as_str()),
        ("toolu_9", "search_db")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&back.arguments).unwrap(),
        serde_json::from_str::<Value>(&original.arguments).unwrap()
    );
}

#[test]
fn arguments_that_are_not_a_json_object_are_sent_as_an_empty_input() {
    for arguments in ["{\"query\": ", "not json", "[1, 2]", "\"text\"", ""] {
        let body = build_body(
            "claude-test",
            &request(
                vec![
                    Message::user("q"),
                    Message::assistant("", vec![call("t1", "search_db", arguments)]),
                ],
                Vec::new(),
                None,
            ),
            1024,
            false,
        );
        assert_eq!(
            body["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "t1", "name": "search_db", "input": {}}]),
            "arguments {arguments:?}"
        );
    }
}

#[test]
fn tools_and_the_token_cap_follow_the_request() {
    let with_tools = build_body(
        "claude-test",
        &request(vec![Message::user("q")], vec![search_tool()], Some(256)),
        1024,
        true,
    );
    assert_eq!(
        with_tools["tools"],
        json!([{"name": "search_db", "description": "Searches the collection.",
                "input_schema": search_tool().parameters}])
    );
    assert_eq!(with_tools["max_tokens"], 256);
    assert_eq!(with_tools["stream"], true);

    let plain = build_body(
        "claude-test",
        &request(vec![Message::user("q")], Vec::new(), None),
        1024,
        false,
    );
    assert!(plain.get("tools").is_none());
    assert!(plain.get("stream").is_none());
    assert_eq!(plain["max_tokens"], 1024);
}

#[test]
fn empty_assistant_turns_are_dropped_and_their_neighbours_merged() {
    let body = build_body(
        "claude-test",
        &request(
            vec![
                Message::user("q"),
                Message::assistant("  ", Vec::new()),
                Message::user("again"),
            ],
            Vec::new(),
            None,
        ),
        1024,
        false,
    );
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "q"}, {"type": "text", "text": "again"}]}])
    );
}

#[test]
fn replies_parse_text_tool_calls_and_usage() {
    let reply = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "I will search "},
            {"type": "text", "text": "twice."},
            {"type": "tool_use", "id": "toolu_1", "name": "search_db", "input": {"query": "a"}},
            {"type": "tool_use", "id": "toolu_2", "name": "submit", "input": {}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50},
    });
    let parsed = parse_response(reply.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.content, "I will search twice.");
    assert_eq!(
        parsed.tool_calls,
        vec![
            call("toolu_1", "search_db", r#"{"query":"a"}"#),
            call("toolu_2", "submit", "{}"),
        ]
    );
    assert_eq!(
        parsed.usage,
        TokenUsage {
            input_tokens: 150,
            output_tokens: 20
        }
    );
    assert_eq!(parsed.cost_usd, None);
}

#[test]
fn unusable_replies_are_bad_responses_and_empty_ones_pass() {
    assert!(matches!(
        parse_response(b"<html>busy</html>"),
        Err(LlmError::BadResponse(_))
    ));
    assert!(matches!(
        parse_response(br#"{"id":"x"}"#),
        Err(LlmError::BadResponse(_))
    ));
    assert!(matches!(
        parse_response(br#"{"content":[{"type":"tool_use","name":"x"}]}"#),
        Err(LlmError::BadResponse(_))
    ));
    let error = parse_response(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert!(matches!(error, Err(LlmError::Unavailable(message)) if message.contains("Overloaded")));

    let empty =
        parse_response(br#"{"content":[],"usage":{"input_tokens":3,"output_tokens":0}}"#).unwrap();
    assert_eq!(empty.content, "");
    assert!(empty.tool_calls.is_empty());
}

#[test]
fn a_stream_passes_on_only_text_before_the_first_tool_call_and_reassembles_inputs() {
    let (reply, passed) = run_stream(&recorded_stream(), 4096);
    let reply = reply.unwrap();
    assert_eq!(passed, vec!["Let me ", "search."]);
    assert_eq!(reply.content, "Let me search. Done.");
    assert_eq!(
        reply.tool_calls,
        vec![
            call("toolu_1", "search_db", r#"{"query": "battery life"}"#),
            call("toolu_2", "submit", "{}"),
        ]
    );
    assert_eq!(
        reply.usage,
        TokenUsage {
            input_tokens: 472,
            output_tokens: 89
        }
    );
}

#[test]
fn a_stream_reads_the_same_however_it_is_chunked() {
    let body = recorded_stream()
        .replace('\n', "\r\n")
        .replace("Let me", "Lét me");
    for chunk_size in [1, 2, 3, 7, 64] {
        let (reply, passed) = run_stream(&body, chunk_size);
        assert_eq!(passed.concat(), "Lét me search.", "chunks of {chunk_size}");
        assert_eq!(reply.unwrap().tool_calls.len(), 2, "chunks of {chunk_size}");
    }
}

#[test]
fn a_stream_that_stops_before_message_stop_is_truncated() {
    let full = recorded_stream();
    let cut = &full[..full.find("event: message_delta").unwrap()];
    let (reply, passed) = run_stream(cut, 4096);
    assert!(matches!(reply, Err(LlmError::BadResponse(reason)) if reason == "truncated stream"));
    assert_eq!(passed, vec!["Let me ", "search."]);
}

#[test]
fn an_error_event_makes_the_backend_unavailable() {
    let body = sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
        ),
        (
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ]);
    let (reply, _) = run_stream(&body, 4096);
    assert!(matches!(reply, Err(LlmError::Unavailable(message)) if message.contains("Overloaded")));
}

#[test]
fn sse_parsing_joins_data_lines_and_skips_comments() {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    parser.push(
        b": keep-alive\n\nevent: ping\ndata: {\"a\":\ndata:1}\nid: 7\n\ndata: x",
        &mut events,
    );
    assert_eq!(
        events,
        vec![SseEvent {
            event: "ping".into(),
            data: "{\"a\":\n1}".into()
        }]
    );
}

#[test]
fn the_event_name_stands_in_for_a_missing_type() {
    let body = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":2}}}\n\n\
                event: message_stop\ndata: {}\n\n";
    let (reply, _) = run_stream(body, 4096);
    assert_eq!(reply.unwrap().usage.input_tokens, 2);
}

#[test]
fn construction_requires_a_key_and_a_model() {
    let missing_key = AnthropicModel::new(AnthropicConfig {
        model: "claude-test".into(),
        ..AnthropicConfig::default()
    });
    assert!(
        matches!(missing_key, Err(LlmError::Misconfigured(reason)) if reason.contains("api key"))
    );
    let missing_model = AnthropicModel::new(AnthropicConfig {
        api_key: Secret::new("sk-ant-test"),
        ..AnthropicConfig::default()
    });
    assert!(matches!(missing_model, Err(LlmError::Misconfigured(_))));

    let model = AnthropicModel::new(AnthropicConfig {
        api_key: Secret::new("sk-ant-test"),
        model: "claude-test".into(),
        base_url: "https://proxy.example/v1/".into(),
        ..AnthropicConfig::default()
    })
    .unwrap();
    assert_eq!(model.name(), "claude-test");
    assert_eq!(model.url.as_str(), "https://proxy.example/v1/messages");
    assert!(!format!("{model:?}").contains("sk-ant-test"));
}
