//! The OpenAI-compatible HTTP API of the real server, spoken to with plain HTTP (reqwest) and
//! with the official `openai` Python SDK (tests/openai_sdk/run.sh).

use std::process::Command;
use std::time::{Duration, Instant};

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::api::pb;
use deeprecall::config::{Backend, CacheBackend, Config};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use crate::common::*;

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(20);

const ADMIN_KEY: &str = "http-admin-key-0000001";
const READER_KEY: &str = "http-reader-key-000001";
const LIMITED_KEY: &str = "http-limited-key-00001";

/// A server with its HTTP API on, and that API's root (`http://127.0.0.1:PORT`).
async fn http_server(configure: impl FnOnce(&mut Config)) -> (TestServer, String) {
    let port = free_port();
    let server = TestServer::start_with(|config| {
        config.server.http_listen = format!("127.0.0.1:{port}");
        configure(config);
    })
    .await;
    (server, format!("http://127.0.0.1:{port}"))
}

fn key(name: &str, secret: &str, scopes: Vec<Scope>) -> KeyEntry {
    KeyEntry {
        name: name.into(),
        key: Secret::new(secret),
        sha256: None,
        subject: None,
        scopes,
        collections: None,
        requests_per_minute: None,
        burst: None,
    }
}

/// Three keys: an admin, a reader (query scope only), and one limited to a burst of 2 and one
/// request a minute after it.
fn with_keys(config: &mut Config) {
    let mut limited = key("limited", LIMITED_KEY, vec![Scope::Admin]);
    limited.requests_per_minute = Some(1);
    limited.burst = Some(2);
    config.auth.keys = vec![
        key("admin", ADMIN_KEY, vec![Scope::Admin]),
        key("reader", READER_KEY, vec![Scope::Query]),
        limited,
    ];
}

fn chat(question: &str) -> Value {
    json!({"model": "deeprecall", "messages": [{"role": "user", "content": question}]})
}

async fn post(base: &str, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request sent")
}

/// The status and the body of an error response, checked to be in OpenAI's shape.
async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error["code"].is_string(), "{body}");
    (status, error.clone())
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

async fn add_handbook_over_http(base: &str) {
    let response = post(
        base,
        "/v1/documents",
        None,
        &json!({
            "documents": [
                "The Falcon project ships in May. Ada Lovelace leads the Falcon project.",
                "Ada Lovelace works from the Tampere office.",
            ],
            "metadatas": [{"team": "blue"}, {"team": "people"}],
            "ids": ["falcon", "ada"],
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["ids"], json!(["falcon", "ada"]));
    assert_eq!(body["document_count"], 2);
}

#[tokio::test]
async fn a_chat_completion_answers_with_the_cited_answer_usage_and_sources() {
    let (server, base) = http_server(|_| {}).await;
    add_handbook_over_http(&base).await;
    let response = post(
        &base,
        "/v1/chat/completions",
        None,
        &chat("Who leads the Falcon project?"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    let answer = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(answer.contains("Ada Lovelace"), "{answer}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["prompt_tokens"].as_u64().expect("tokens") > 0);
    let extension = &body["deeprecall"];
    assert_eq!(extension["citations"][0], "falcon", "{extension}");
    assert_eq!(extension["sources"][0]["id"], "falcon");
    assert!(extension["query_id"].is_string());
    assert!(extension["budget_status"]["used"]["search_calls"].as_u64() > Some(0));
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_streamed_completion_sends_reasoning_then_the_answer_then_usage_and_done() {
    let (server, base) = http_server(|_| {}).await;
    add_handbook_over_http(&base).await;
    let mut request = chat("Who leads the Falcon project?");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = post(&base, "/v1/chat/completions", None, &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("text/event-stream")
    );
    let text = response.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON chunk"))
        .collect();
    let delta = |chunk: &Value, field: &str| {
        chunk["choices"][0]["delta"][field]
            .as_str()
            .map(str::to_string)
    };
    let first_reasoning = chunks
        .iter()
        .position(|chunk| delta(chunk, "reasoning_content").is_some())
        .expect("reasoning chunks");
    let answer: String = chunks
        .iter()
        .filter_map(|chunk| delta(chunk, "content"))
        .collect();
    let first_answer = chunks
        .iter()
        .position(|chunk| delta(chunk, "content").is_some_and(|text| !text.is_empty()))
        .expect("answer chunks");
    assert!(first_reasoning < first_answer);
    assert!(answer.contains("Ada Lovelace"), "{answer}");
    let usage = chunks.last().expect("a usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64() > Some(0));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["deeprecall"]["citations"][0], "falcon");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_rest_endpoints_write_delete_clear_and_report() {
    let metrics_port = free_port();
    let (server, base) = http_server(|config| {
        config.telemetry.metrics_listen = format!("127.0.0.1:{metrics_port}");
    })
    .await;
    let client = reqwest::Client::new();
    for (path, serving) in [("/health", true), ("/readyz", true), ("/livez", true)] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().is_success(), serving, "{path}");
    }
    add_handbook_over_http(&base).await;
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|model| model["id"].as_str())
        .collect();
    assert_eq!(ids, ["deeprecall", "deeprecall-default"]);

    // Answered once, then from the cache.
    for _ in 0..2 {
        let response = post(
            &base,
            "/v1/chat/completions",
            None,
            &chat("Where does Ada work?"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // No body: every collection.
    let cleared: Value = client
        .post(format!("{base}/v1/cache/clear"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    // The answer and the searches behind it.
    assert!(cleared["entries_removed"].as_u64() >= Some(1), "{cleared}");
    let again: Value = post(
        &base,
        "/v1/chat/completions",
        None,
        &chat("Where does Ada work?"),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(again["deeprecall"]["cached"], false, "cleared");

    let usage: Value = client
        .get(format!("{base}/v1/usage"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(usage["queries"], 3);
    assert_eq!(usage["cached_queries"], 1);
    assert_eq!(usage["collections"]["default"]["documents"], 2);

    let deleted: Value = client
        .delete(format!("{base}/v1/documents"))
        .json(&json!({"ids": ["ada", "absent"]}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["deleted_ids"], json!(["ada"]));
    assert_eq!(deleted["document_count"], 1);

    let metrics = scrape_metrics(metrics_port).await;
    assert_eq!(
        sample(
            &metrics,
            r#"deeprecall_http_requests_total{route="/v1/chat/completions",status="200"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"deeprecall_http_requests_total{route="/v1/documents",status="200"}"#
        ),
        Some(2.0)
    );
    // A request is timed when its response's last byte has left, which the server notes
    // just after the client has it; the bound only ends a hang.
    let timed = r#"deeprecall_http_request_duration_seconds_count{route="/v1/chat/completions"}"#;
    let all_timed = tokio::time::timeout(HANG, async {
        while sample(&scrape_metrics(metrics_port).await, timed) != Some(3.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(all_timed.is_ok(), "{}", scrape_metrics(metrics_port).await);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_refusal_has_its_status_and_openai_error_shape() {
    let (server, base) = http_server(|config| {
        with_keys(config);
        config.server.http_max_body_bytes = 4_096;
    })
    .await;
    let admin = Some(ADMIN_KEY);

    let (status, error) =
        error_of(post(&base, "/v1/chat/completions", None, &chat("x")).await).await;
    assert_eq!(
        (status, error["type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("authentication_error"))
    );
    let (status, _) = error_of(
        post(
            &base,
            "/v1/chat/completions",
            Some("wrong-key-00000000000"),
            &chat("x"),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, error) = error_of(
        post(
            &base,
            "/v1/documents",
            Some(READER_KEY),
            &json!({"documents": ["x"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");

    let bad_json = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .body("{\"model\": ")
        .send()
        .await
        .expect("sent");
    let (status, error) = error_of(bad_json).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );

    let mut wrong_type = chat("x");
    wrong_type["top_k"] = json!("five");
    let (status, error) =
        error_of(post(&base, "/v1/chat/completions", admin, &wrong_type).await).await;
    assert_eq!(
        (status, error["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("top_k"))
    );

    let mut unknown = chat("x");
    unknown["colour"] = json!("red");
    let (status, error) =
        error_of(post(&base, "/v1/chat/completions", admin, &unknown).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains("colour")),
        "{error}"
    );

    let (status, error) =
        error_of(post(&base, "/v1/chat/completions", admin, &chat("   ")).await).await;
    assert_eq!(
        (status, error["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("query"))
    );

    let mut other_model = chat("x");
    other_model["model"] = json!("gpt-4o");
    let (status, _) =
        error_of(post(&base, "/v1/chat/completions", admin, &other_model).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut absent = chat("x");
    absent["model"] = json!("deeprecall-absent");
    let (status, error) = error_of(post(&base, "/v1/chat/completions", admin, &absent).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("collection_not_found"))
    );

    let big = json!({"documents": ["x".repeat(8_192)]});
    let (status, _) = error_of(post(&base, "/v1/documents", admin, &big).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let no_route = reqwest::Client::new()
        .get(format!("{base}/v1/nothing"))
        .send()
        .await
        .expect("sent");
    assert_eq!(error_of(no_route).await.0, StatusCode::NOT_FOUND);

    // The limited key's burst of 2, then 429 with Retry-After.
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/usage"))
            .bearer_auth(LIMITED_KEY)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = reqwest::Client::new()
        .get(format!("{base}/v1/usage"))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .expect("sent");
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry_after >= 1);
    let (status, error) = error_of(limited).await;
    assert_eq!(
        (status, error["type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limit_error"))
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_dead_model_backend_is_a_503() {
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::status(401, "bad key")]))
        .await
        .expect("mock starts");
    let (server, base) = http_server(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
    })
    .await;
    add_handbook_over_http(&base).await;
    let (status, _) = error_of(
        post(
            &base,
            "/v1/chat/completions",
            None,
            &chat("Who leads Falcon?"),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_streaming_backend_answer_arrives_as_content_token_by_token() {
    let text = "The Falcon project ships in May.";
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::text(text)]))
        .await
        .expect("mock starts");
    let (server, base) = http_server(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.llm.stream = true;
        config.cache.backend = CacheBackend::None;
    })
    .await;
    add_handbook_over_http(&base).await;
    let mut request = chat("When does Falcon ship?");
    request["stream"] = json!(true);
    let body = post(&base, "/v1/chat/completions", None, &request)
        .await
        .text()
        .await
        .expect("body");
    let pieces: Vec<String> = sse_data(&body)
        .iter()
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|piece| !piece.is_empty())
        .collect();
    assert!(pieces.len() > 1, "one chunk per streamed piece: {pieces:?}");
    assert_eq!(pieces.concat(), text);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_completion_past_the_request_timeout_with_nothing_found_is_a_504() {
    // The model never answers: the run has nothing when its deadline comes.
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .expect("mock starts");
    let (server, base) = http_server(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        config.server.request_timeout_seconds = 1;
    })
    .await;
    add_handbook_over_http(&base).await;
    let response = tokio::time::timeout(
        HANG,
        post(
            &base,
            "/v1/chat/completions",
            None,
            &chat("Who leads Falcon?"),
        ),
    )
    .await
    .expect("answered at the deadline");
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("deadline_exceeded"))
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_client_that_cuts_the_stream_stops_the_model_calls() {
    // Every model call hangs: the run ends only when it is stopped.
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .expect("mock starts");
    let metrics_port = free_port();
    let (server, base) = http_server(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        config.telemetry.metrics_listen = format!("127.0.0.1:{metrics_port}");
    })
    .await;
    add_handbook_over_http(&base).await;
    let mut request = chat("Who leads the Falcon project?");
    request["stream"] = json!(true);
    let response = post(&base, "/v1/chat/completions", None, &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    // The first chunk (the role) is out: the run is under way.
    let first = tokio::time::timeout(HANG, body.next())
        .await
        .expect("a first chunk");
    assert!(first.is_some());
    tokio::time::timeout(HANG, async {
        while mock.request_count() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the run reached the model");
    // Counted when its headers went out, timed only when it ends.
    let counted = r#"deeprecall_http_requests_total{route="/v1/chat/completions",status="200"}"#;
    let timed = r#"deeprecall_http_request_duration_seconds_count{route="/v1/chat/completions"}"#;
    let open = scrape_metrics(metrics_port).await;
    assert_eq!(sample(&open, counted), Some(1.0), "{open}");
    assert_eq!(sample(&open, timed), None, "{open}");
    drop(body);
    assert!(
        mock.wait_for_abandoned_request(HANG).await.is_some(),
        "the model call was aborted"
    );
    assert_eq!(mock.request_count(), 1, "no further model call");
    let timed_at_the_cut = tokio::time::timeout(HANG, async {
        while sample(&scrape_metrics(metrics_port).await, timed) != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        timed_at_the_cut.is_ok(),
        "{}",
        scrape_metrics(metrics_port).await
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn one_rate_bucket_per_key_spans_grpc_and_http() {
    let (mut server, base) = http_server(with_keys).await;
    // The limited key's burst is 2: one call over gRPC, one over HTTP, and the next over
    // either protocol is refused.
    let mut stats = tonic::Request::new(pb::GetStatsRequest {});
    stats.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {LIMITED_KEY}")).expect("ascii"),
    );
    server
        .client
        .get_stats(stats)
        .await
        .expect("first call over gRPC");
    let over_http = reqwest::Client::new()
        .get(format!("{base}/v1/usage"))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(over_http.status(), StatusCode::OK);
    let mut again = tonic::Request::new(pb::GetStatsRequest {});
    again.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {LIMITED_KEY}")).expect("ascii"),
    );
    let refused = server
        .client
        .get_stats(again)
        .await
        .expect_err("over the burst");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let refused = reqwest::Client::new()
        .get(format!("{base}/v1/usage"))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn query_slots_are_shared_by_grpc_and_http() {
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .expect("mock starts");
    let (mut server, base) = http_server(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        config.limits.max_concurrent_queries = 1;
        config.limits.max_queued_queries = 0;
    })
    .await;
    add_handbook_over_http(&base).await;
    // One streamed completion holds the only slot while its model call hangs.
    let mut request = chat("Who leads the Falcon project?");
    request["stream"] = json!(true);
    let holding = post(&base, "/v1/chat/completions", None, &request).await;
    assert_eq!(holding.status(), StatusCode::OK);
    tokio::time::timeout(HANG, async {
        while mock.request_count() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the run reached the model");

    let (status, error) =
        error_of(post(&base, "/v1/chat/completions", None, &chat("Another?")).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("server_overloaded"))
    );
    let refused = server
        .client
        .query(question("And over gRPC?"))
        .await
        .expect_err("no slot left");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    // The slot comes back when the stream's client goes.
    drop(holding);
    assert!(mock.wait_for_abandoned_request(HANG).await.is_some());
    server.stop().await.expect("clean stop");
}

/// Runs tests/openai_sdk/run.sh (which installs the pinned `openai` SDK into a git-ignored
/// virtualenv) against the server's HTTP API.
#[tokio::test]
async fn the_official_openai_python_sdk_talks_to_the_server() {
    let (server, base) = http_server(with_keys).await;
    add_handbook_with_key(&base).await;
    let started = Instant::now();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk/run.sh");
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", "900", "bash"])
        .arg(script)
        .arg(format!("{base}/v1"))
        .env("DEEPRECALL_API_KEY", ADMIN_KEY)
        .env("DEEPRECALL_LIMITED_KEY", LIMITED_KEY);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the runner does not panic")
        .expect("the script starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the openai SDK tests failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!(
        "openai SDK tests passed in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    server.stop().await.expect("clean stop");
}

async fn add_handbook_with_key(base: &str) {
    let response = post(
        base,
        "/v1/documents",
        Some(ADMIN_KEY),
        &json!({
            "documents": [
                "The Falcon project ships in May. Ada Lovelace leads the Falcon project.",
                "Ada Lovelace works from the Tampere office.",
            ],
            "ids": ["falcon", "ada"],
            "collection": "sdk",
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}
