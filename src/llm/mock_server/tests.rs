use futures::StreamExt;

use super::*;

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn openai_body(user: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You answer questions."},
            {"role": "user", "content": user},
        ],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

fn anthropic_body(user: &str, stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "system": "You answer questions.",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
        "tools": [{"name": "search_db", "input_schema": {"type": "object"}}],
        "stream": stream,
    })
}

async fn post(server: &MockLlmServer, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.origin()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_json(server: &MockLlmServer, path: &str, body: &Value) -> Value {
    let response = post(server, path, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Reads a whole SSE body, returning the number of network chunks and the events as
/// (event type, data).
async fn read_sse(response: reqwest::Response) -> (usize, Vec<(Option<String>, String)>) {
    let mut chunks = 0;
    let mut text = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        chunks += 1;
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    (chunks, parse_sse(&text))
}

fn parse_sse(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut kind = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    kind = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            (kind, data)
        })
        .collect()
}

fn json_events(events: &[(Option<String>, String)]) -> Vec<Value> {
    events
        .iter()
        .filter(|(_, data)| data != "[DONE]")
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn openai_text_reply_reports_content_and_estimated_usage() {
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(
        "Paris is the capital.",
    )]))
    .await
    .unwrap();

    let reply = post_json(
        &server,
        "/v1/chat/completions",
        &openai_body("Capital?", false),
    )
    .await;

    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "gpt-test");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "Paris is the capital."
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    // "You answer questions." + "Capital?" is 29 characters, the reply 21.
    assert_eq!(reply["usage"]["prompt_tokens"], 8);
    assert_eq!(reply["usage"]["completion_tokens"], 6);
    assert_eq!(reply["usage"]["total_tokens"], 14);
    assert!(reply["usage"].get("cost").is_none());
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].body["model"], "gpt-test");
    assert_eq!(requests[0].header("Content-Type"), Some("application/json"));
    assert_eq!(requests[0].first_user_text, "Capital?");
    assert_eq!(server.abandoned_requests(), 0);
}

#[tokio::test]
async fn light_recording_keeps_the_conversation_and_timing_but_not_the_body() {
    let script = MockScript::replies(vec![MockReply::text("ok")])
        .with_latency(Duration::from_millis(20))
        .with_recording(Recording::Light);
    let server = MockLlmServer::start(script).await.unwrap();

    let reply = post_json(
        &server,
        "/v1/chat/completions",
        &openai_body("Capital?", false),
    )
    .await;

    assert_eq!(reply["choices"][0]["message"]["content"], "ok");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].first_user_text, "Capital?");
    assert_eq!(requests[0].body, Value::Null);
    assert!(requests[0].headers.is_empty());
    let service_time = requests[0].service_time.unwrap();
    assert!(
        service_time >= Duration::from_millis(20),
        "{service_time:?}"
    );
}

#[tokio::test]
async fn with_recording_off_requests_are_answered_and_nothing_is_kept() {
    let script = MockScript::replies(vec![MockReply::text("ok")])
        .with_latency(Duration::from_millis(5))
        .with_recording(Recording::Off);
    let server = MockLlmServer::start(script).await.unwrap();

    for _ in 0..3 {
        let reply = post_json(
            &server,
            "/v1/chat/completions",
            &openai_body("Capital?", false),
        )
        .await;
        assert_eq!(reply["choices"][0]["message"]["content"], "ok");
    }

    assert!(server.requests().is_empty());
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn openai_tool_calls_have_ids_unique_across_requests() {
    let calls = MockReply::ToolCalls(vec![
        ("search_db".into(), r#"{"query":"paris"}"#.into()),
        ("submit".into(), r#"{"answer": "#.into()),
    ]);
    let server = MockLlmServer::start(MockScript::replies(vec![calls]))
        .await
        .unwrap();

    let first = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;
    let second = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;

    let message = &first["choices"][0]["message"];
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    assert!(message["content"].is_null());
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "search_db");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"query":"paris"}"#
    );
    assert_eq!(
        message["tool_calls"][1]["function"]["arguments"],
        r#"{"answer": "#
    );
    let mut ids: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|reply| {
            reply["choices"][0]["message"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|call| call["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("call_")));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[tokio::test]
async fn usage_override_reports_tokens_and_cost() {
    let reply = MockReply::Usage {
        reply: Box::new(MockReply::text("hi")),
        input_tokens: 1000,
        output_tokens: 50,
        cost_usd: Some(0.25),
    };
    let server = MockLlmServer::start(MockScript::replies(vec![reply]))
        .await
        .unwrap();

    let reply = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;

    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050, "cost": 0.25})
    );
}

#[tokio::test]
async fn openai_stream_arrives_in_several_chunks_and_ends_with_usage_and_done() {
    let text = "Paris has been the capital of France for a very long time.";
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(text)]))
        .await
        .unwrap();

    let response = post(&server, "/v1/chat/completions", &openai_body("q", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/event-stream"
    );
    let (network_chunks, events) = read_sse(response).await;

    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = json_events(&events);
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert!(network_chunks >= 3, "{network_chunks} network chunks");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 15);
    assert_eq!(server.abandoned_requests(), 0);
}

#[tokio::test]
async fn openai_stream_tool_call_deltas_reassemble_to_the_scripted_arguments() {
    let arguments = r#"{"query": "capital of France", "k": 5}"#;
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::ToolCalls(vec![
        ("search_db".into(), arguments.into()),
        ("submit".into(), "{not json".into()),
    ])]))
    .await
    .unwrap();

    let mut body = openai_body("q", true);
    body["stream_options"] = json!({"include_usage": false});
    let response = post(&server, "/v1/chat/completions", &body).await;
    let (_, events) = read_sse(response).await;

    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = json_events(&events);
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut argument_pieces = 0;
    for chunk in &chunks {
        assert!(chunk.get("usage").is_none());
        let Some(deltas) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for delta in deltas {
            let index = usize::try_from(delta["index"].as_u64().unwrap()).unwrap();
            if let Some(id) = delta["id"].as_str() {
                assert_eq!(index, calls.len());
                let name = delta["function"]["name"].as_str().unwrap();
                calls.push((id.to_string(), name.to_string(), String::new()));
            }
            let piece = delta["function"]["arguments"].as_str().unwrap();
            if !piece.is_empty() {
                argument_pieces += 1;
            }
            calls[index].2.push_str(piece);
        }
    }
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, "search_db");
    assert_eq!(calls[0].2, arguments);
    assert_eq!(calls[1].2, "{not json");
    assert_ne!(calls[0].0, calls[1].0);
    assert!(argument_pieces > 2);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn conversations_route_by_marker_and_defaults_repeat_their_last_reply() {
    let script = MockScript::replies(vec![MockReply::text("d1"), MockReply::text("d2")])
        .with_conversation("alpha", vec![MockReply::text("a1"), MockReply::text("a2")])
        .with_conversation("beta", vec![MockReply::text("b1")]);
    let server = MockLlmServer::start(script).await.unwrap();

    let mut answers = Vec::new();
    for user in [
        "Question: alpha?",
        "beta",
        "gamma",
        "alpha",
        "gamma",
        "gamma",
        "beta",
    ] {
        let reply = post_json(&server, "/v1/chat/completions", &openai_body(user, false)).await;
        answers.push(
            reply["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    assert_eq!(answers, ["a1", "b1", "d1", "a2", "d2", "d2", "b1"]);
    assert_eq!(server.request_count(), 7);
}

#[tokio::test]
async fn an_empty_script_answers_ok_on_the_azure_path() {
    let server = MockLlmServer::start(MockScript::default()).await.unwrap();
    let path = "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21";
    let mut body = openai_body("q", false);
    if let Some(fields) = body.as_object_mut() {
        fields.remove("model");
    }

    let reply = post_json(&server, path, &body).await;

    assert_eq!(reply["choices"][0]["message"]["content"], "ok");
    assert_eq!(reply["model"], "gpt4o-prod");
    assert_eq!(server.requests()[0].path, path);
}

#[tokio::test]
async fn unknown_paths_are_recorded_and_refused() {
    let server = MockLlmServer::start(MockScript::default()).await.unwrap();

    let response = post(&server, "/v1/completions", &json!({"prompt": "x"})).await;

    assert_eq!(response.status(), 404);
    assert_eq!(server.requests()[0].path, "/v1/completions");
}

#[tokio::test]
async fn rate_limit_carries_retry_after_and_a_provider_error() {
    let server = MockLlmServer::start(MockScript::replies(vec![
        MockReply::rate_limited("1"),
        MockReply::status(401, r#"{"error": {"message": "bad key"}}"#),
    ]))
    .await
    .unwrap();

    let limited = post(&server, "/v1/chat/completions", &openai_body("q", false)).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()[reqwest::header::RETRY_AFTER], "1");
    let error: Value = limited.json().await.unwrap();
    assert_eq!(error["error"]["message"], "rate limit exceeded");
    assert_eq!(error["error"]["type"], "rate_limit_error");

    let refused = post(&server, "/v1/messages", &anthropic_body("q", false)).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .is_none()
    );
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error, json!({"error": {"message": "bad key"}}));
}

#[tokio::test]
async fn a_hung_request_is_recorded_and_seen_abandoned_when_the_client_gives_up() {
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .unwrap();

    let url = format!("{}/chat/completions", server.base_url());
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .json(&openai_body("q", false))
            .send()
            .await
    });
    tokio::time::timeout(HANG, async {
        while server.request_count() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the request arrived");
    assert_eq!(
        server.abandoned_requests(),
        0,
        "it hangs while the client waits"
    );
    waiting.abort();

    server
        .wait_for_abandoned_request(HANG)
        .await
        .expect("the mock saw the client give up");
    assert_eq!(server.abandoned_requests(), 1);
    assert_eq!(server.request_count(), 1);
    assert_eq!(server.requests()[0].body["model"], "gpt-test");
    assert_eq!(
        server
            .wait_for_abandoned_request(Duration::from_millis(20))
            .await,
        None
    );
}

#[tokio::test]
async fn a_held_reply_goes_only_once_released() {
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::held(MockReply::text(
        "now",
    ))]))
    .await
    .unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let mut reply = tokio::spawn(async move {
        let response = client()
            .post(url)
            .json(&openai_body("q", false))
            .send()
            .await?;
        response.json::<Value>().await
    });
    tokio::time::timeout(HANG, async {
        while server.request_count() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the request arrived");
    // The request was served to the point of its held reply; only the release frees it.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut reply)
            .await
            .is_err(),
        "answered before the release"
    );
    server.release_held();
    let reply = tokio::time::timeout(HANG, reply)
        .await
        .expect("answered after the release")
        .unwrap()
        .unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], "now");
}

#[tokio::test]
async fn a_request_dropped_during_latency_is_seen_by_a_spawned_waiter() {
    // Far longer than the test may take: the request can only be dropped during it.
    let latency = Duration::from_secs(600);
    let script = MockScript::replies(vec![MockReply::delayed(latency, MockReply::text("slow"))])
        .with_latency(latency);
    let server = Arc::new(MockLlmServer::start(script).await.unwrap());
    let waiter = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.wait_for_abandoned_request(HANG).await }
    });

    let result = client()
        .post(format!("{}/messages", server.base_url()))
        .timeout(Duration::from_millis(100))
        .json(&anthropic_body("q", false))
        .send()
        .await;

    assert!(result.unwrap_err().is_timeout());
    let abandoned_after = waiter.await.unwrap().expect("the drop was seen");
    assert!(abandoned_after < latency, "{abandoned_after:?}");
}

#[tokio::test]
async fn dropping_a_stream_midway_counts_as_abandoned() {
    // Streamed at one word per chunk pause: seconds of answer left when the client drops it.
    let long = "word ".repeat(5000);
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(long)]))
        .await
        .unwrap();

    let response = post(&server, "/v1/messages", &anthropic_body("q", true)).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);

    let abandoned_after = server.wait_for_abandoned_request(HANG).await;
    assert!(abandoned_after.is_some());
}

#[tokio::test]
async fn truncated_stream_breaks_off_without_done() {
    let server = MockLlmServer::start(MockScript::replies(vec![MockReply::TruncatedStream]))
        .await
        .unwrap();

    let response = post(&server, "/v1/chat/completions", &openai_body("q", true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }

    assert!(failed, "the body should end with a broken connection");
    let events = parse_sse(&text);
    assert!(events.len() >= 2);
    assert!(events.iter().all(|(_, data)| data != "[DONE]"));
    assert!(
        json_events(&events)
            .iter()
            .all(|chunk| chunk["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(server.abandoned_requests(), 0);
}

#[tokio::test]
async fn truncated_and_malformed_bodies_are_not_json() {
    let server = MockLlmServer::start(MockScript::replies(vec![
        MockReply::TruncatedStream,
        MockReply::MalformedJson,
    ]))
    .await
    .unwrap();

    for _ in 0..2 {
        let response = post(&server, "/v1/chat/completions", &openai_body("q", false)).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.is_empty());
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    }
}

#[tokio::test]
async fn anthropic_replies_with_tool_use_and_text() {
    let server = MockLlmServer::start(MockScript::replies(vec![
        MockReply::ToolCalls(vec![
            ("search_db".into(), r#"{"query": "paris"}"#.into()),
            ("submit".into(), r#"{"answer": "#.into()),
        ]),
        MockReply::text("Paris."),
    ]))
    .await
    .unwrap();

    let tools = post_json(&server, "/v1/messages", &anthropic_body("q", false)).await;
    assert_eq!(tools["type"], "message");
    assert_eq!(tools["role"], "assistant");
    assert_eq!(tools["model"], "claude-test");
    assert_eq!(tools["stop_reason"], "tool_use");
    let blocks = tools["content"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "tool_use");
    assert!(blocks[0]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(blocks[0]["name"], "search_db");
    assert_eq!(blocks[0]["input"], json!({"query": "paris"}));
    assert_eq!(blocks[1]["input"], json!(r#"{"answer": "#));
    assert_ne!(blocks[0]["id"], blocks[1]["id"]);

    let text = post_json(&server, "/v1/messages", &anthropic_body("q", false)).await;
    assert_eq!(text["stop_reason"], "end_turn");
    assert_eq!(text["content"], json!([{"type": "text", "text": "Paris."}]));
    // "You answer questions." + "q" is 22 characters.
    assert_eq!(
        text["usage"],
        json!({"input_tokens": 6, "output_tokens": 2})
    );
}

#[tokio::test]
async fn anthropic_stream_follows_the_standard_event_order() {
    let server = MockLlmServer::start(MockScript::replies(vec![
        MockReply::text("Paris is the capital of France."),
        MockReply::tool_call("search_db", r#"{"query": "capital of France"}"#),
    ]))
    .await
    .unwrap();

    let (_, text_events) =
        read_sse(post(&server, "/v1/messages", &anthropic_body("q", true)).await).await;
    let (_, tool_events) =
        read_sse(post(&server, "/v1/messages", &anthropic_body("q", true)).await).await;

    for events in [&text_events, &tool_events] {
        for ((kind, _), data) in events.iter().zip(json_events(events)) {
            assert_eq!(kind.as_deref(), data["type"].as_str());
        }
    }
    let kinds = |events: &[(Option<String>, String)]| -> Vec<String> {
        let mut kinds: Vec<String> = events
            .iter()
            .map(|(kind, _)| kind.clone().unwrap())
            .filter(|kind| kind != "ping")
            .collect();
        kinds.dedup();
        kinds
    };
    let expected = [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];
    assert_eq!(kinds(&text_events), expected);
    assert_eq!(kinds(&tool_events), expected);

    let text_data = json_events(&text_events);
    let text: String = text_data
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Paris is the capital of France.");
    let delta = &text_data[text_data.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 8);

    let tool_data = json_events(&tool_events);
    let start = tool_data
        .iter()
        .find(|event| event["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "search_db");
    let partial: String = tool_data
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "input_json_delta");
            event["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert_eq!(partial, r#"{"query": "capital of France"}"#);
    assert_eq!(
        tool_data[tool_data.len() - 2]["delta"]["stop_reason"],
        "tool_use"
    );
}

#[tokio::test]
async fn latency_applies_and_dropping_the_server_ends_hanging_requests() {
    let script = MockScript::replies(vec![MockReply::text("late"), MockReply::Hang])
        .with_latency(Duration::from_millis(50));
    let server = MockLlmServer::start(script).await.unwrap();

    let started = Instant::now();
    post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;
    assert!(started.elapsed() >= Duration::from_millis(50));

    let url = format!("{}/chat/completions", server.base_url());
    let hanging = tokio::spawn(async move {
        client()
            .post(url)
            .json(&openai_body("q", false))
            .send()
            .await
            .map(|response| response.status())
    });
    let arrived = tokio::time::timeout(HANG, async {
        while server.request_count() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    arrived.await.expect("the hanging request arrived");
    drop(server);

    // The bound only catches a request that keeps hanging.
    let outcome = tokio::time::timeout(HANG, hanging)
        .await
        .expect("the hanging request ended")
        .unwrap();
    assert_eq!(outcome.ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_its_whole_answer_finds_the_request_timed() {
    let server = MockLlmServer::start(MockScript::default().with_recording(Recording::Light))
        .await
        .unwrap();
    let client = client();
    let url = format!("{}/chat/completions", server.base_url());
    // The race this guards against, a record written after the client read it, shows only
    // now and then: many round trips give it its chances.
    for n in 0..300 {
        let response = client
            .post(&url)
            .json(&openai_body("q", false))
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap();
        let timed = server.requests()[n].service_time;
        assert!(timed.is_some(), "request {n} was not timed yet");
    }
}

#[tokio::test]
async fn each_request_on_a_kept_alive_connection_is_timed_from_its_own_first_byte() {
    let latency = Duration::from_millis(20);
    let server = MockLlmServer::start(MockScript::default().with_latency(latency))
        .await
        .unwrap();
    // One client, so both requests share one connection; the pause between them would be
    // counted in the second request's time if its clock started at the first.
    let client = client();
    let mut round_trips = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let response = client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&openai_body("q", false))
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap();
        round_trips.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for (request, round_trip) in requests.iter().zip(round_trips) {
        let service_time = request.service_time.unwrap();
        assert!(service_time >= latency, "{service_time:?}");
        assert!(
            service_time <= round_trip,
            "{service_time:?} > {round_trip:?}"
        );
    }
}
