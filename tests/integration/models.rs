//! Real model backends against the scripted mock over real HTTP, driven over real gRPC.

use std::time::{Duration, Instant};

use deeprecall::api::pb;
use deeprecall::api::pb::query_event::Event;
use deeprecall::config::{Backend, Config};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use serde_json::json;
use tonic::Code;

use crate::common::*;

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(20);

fn point_at(config: &mut Config, mock: &MockLlmServer, backend: Backend) {
    config.llm.backend = backend;
    config.llm.model = "mock-model".into();
    config.llm.base_url = mock.base_url();
    config.llm.api_key = Secret::new("test-key");
    config.llm.retry_base_ms = 10;
    config.llm.retry_max_ms = 50;
    config.cache.backend = deeprecall::config::CacheBackend::None;
}

pub(crate) async fn server_for(mock: &MockLlmServer, backend: Backend) -> TestServer {
    server_with(mock, backend, |_| {}).await
}

/// Like [`server_for`], with further settings.
async fn server_with(
    mock: &MockLlmServer,
    backend: Backend,
    configure: impl FnOnce(&mut Config),
) -> TestServer {
    let mut server = TestServer::start_with(|config| {
        point_at(config, mock, backend);
        configure(config);
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![
            document(
                "zephyr",
                "The Zephyr blender is made by Klaxon Industries.",
                json!({}),
            ),
            document(
                "klaxon",
                "Klaxon Industries is headquartered in Porto.",
                json!({}),
            ),
        ],
    )
    .await;
    server
}

fn search(query: &str) -> MockReply {
    MockReply::tool_call("search_db", json!({ "query": query }).to_string())
}

fn submit(answer: &str, citations: &[&str]) -> MockReply {
    MockReply::tool_call(
        "submit",
        json!({"answer": answer, "citations": citations, "certainty": 0.9}).to_string(),
    )
}

fn result_of(events: &[pb::QueryEvent]) -> pb::QueryResult {
    match events.last().and_then(|event| event.event.clone()) {
        Some(Event::Result(result)) => result,
        other => panic!("no result at the end: {other:?}"),
    }
}

async fn query_error(server: &mut TestServer, request: pb::QueryRequest) -> tonic::Status {
    let mut stream = match server.client.query(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn the_openai_backend_drives_the_loop_with_tool_calls() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        search("zephyr maker"),
        search("Klaxon Industries"),
        submit(
            "Porto [klaxon], as Klaxon makes it [zephyr].",
            &["klaxon", "zephyr", "bogus"],
        ),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let events = query_events(&mut server.client, question("Where is the Zephyr maker?")).await;
    let result = result_of(&events);

    assert_eq!(result.citations, vec!["klaxon", "zephyr"]);
    assert!(!result.partial);
    assert_eq!(result.confidence, 0.9);
    let usage = result.usage.unwrap();
    assert_eq!((usage.llm_calls, usage.search_calls), (3, 2));
    assert_eq!(usage.models[0].model, "mock-model");

    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].header("authorization"), Some("Bearer test-key"));
    assert_eq!(requests[0].body["model"], "mock-model");
    assert_eq!(
        requests[0].body["tools"][0]["function"]["name"],
        "search_db"
    );
    let last_messages = requests[2].body["messages"].as_array().unwrap();
    assert_eq!(last_messages.last().unwrap()["role"], "tool");
    assert!(requests[0].body["max_tokens"].as_u64().is_some());
}

#[tokio::test]
async fn a_streamed_plain_answer_arrives_as_deltas_then_the_result() {
    let answer = "Klaxon Industries sits in Porto, which is where the blender comes from.";
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::text(answer)]))
        .await
        .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let events = query_events(&mut server.client, question("Where?")).await;
    let deltas: Vec<String> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(Event::AnswerDelta(delta)) => Some(delta.text.clone()),
            _ => None,
        })
        .collect();
    assert!(deltas.len() >= 2, "{deltas:?}");
    assert_eq!(deltas.concat(), answer);
    assert_eq!(result_of(&events).answer, answer);
    assert_eq!(mock.requests()[0].body["stream"], true);
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_servers_delay() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        MockReply::rate_limited("1"),
        MockReply::text("Porto."),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let started = Instant::now();
    let result = query_result(&mut server.client, question("Where?")).await;
    assert_eq!(result.answer, "Porto.");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_and_a_garbled_reply_is_asked_again_once() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![
            MockReply::status(500, "boom"),
            MockReply::MalformedJson,
            MockReply::text("Porto."),
        ])
        .with_conversation(
            "cut?",
            vec![MockReply::TruncatedStream, MockReply::text("Lisbon.")],
        )
        .with_conversation(
            "twice?",
            vec![MockReply::MalformedJson, MockReply::MalformedJson],
        ),
    )
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let result = query_result(&mut server.client, question("Where?")).await;
    assert_eq!(result.answer, "Porto.");
    assert_eq!(mock.request_count(), 3);

    let result = query_result(&mut server.client, question("cut?")).await;
    assert_eq!(result.answer, "Lisbon.");
    assert_eq!(mock.request_count(), 5);

    let status = query_error(&mut server, question("twice?")).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        mock.request_count(),
        7,
        "garbage is asked again once, then reported"
    );
}

#[tokio::test]
async fn an_upstream_that_stays_down_is_unavailable_and_a_rejected_key_a_precondition() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![MockReply::status(503, "down")])
            .with_conversation("key?", vec![MockReply::status(401, "invalid api key")]),
    )
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;

    let status = query_error(&mut server, question("Where?")).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("gave up after 4 attempts"),
        "{}",
        status.message()
    );

    let before = mock.request_count();
    let status = query_error(&mut server, question("key?")).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("API key was rejected"),
        "{}",
        status.message()
    );
    assert_eq!(
        mock.request_count(),
        before + 1,
        "a rejected key is not retried"
    );
}

#[tokio::test]
async fn malformed_tool_arguments_go_back_to_the_model_to_correct() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        MockReply::tool_call("search_db", "{\"query\": "),
        search("zephyr"),
        submit("Klaxon [zephyr].", &["zephyr"]),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let result = query_result(&mut server.client, question("Who makes it?")).await;
    assert_eq!(result.citations, vec!["zephyr"]);
    let second = &mock.requests()[1].body["messages"];
    let tool_reply = second.as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap();
    assert!(
        tool_reply.contains("invalid arguments for search_db"),
        "{tool_reply}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_aborts_the_model_request() {
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let mut stream = server
        .client
        .query(question("Hang on?"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::StepStarted(_))));
    // Wait until the request is at the mock, then cancel.
    tokio::time::timeout(HANG, async {
        while mock.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the model request reached the mock");
    assert_eq!(mock.abandoned_requests(), 0, "the request hangs meanwhile");
    drop(stream);
    // The mock's reply never comes: only the client's leaving can end the request.
    let abandoned = mock.wait_for_abandoned_request(HANG).await;
    assert!(abandoned.is_some(), "the mock saw the request abandoned");
}

#[tokio::test]
async fn a_grpc_deadline_aborts_the_model_request() {
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let mut request = tonic::Request::new(question("Hang on?"));
    request.set_timeout(Duration::from_millis(300));
    let outcome = tokio::time::timeout(HANG, async {
        let mut stream = server.client.query(request).await?.into_inner();
        let mut last = None;
        while let Some(event) = stream.message().await? {
            last = event.event;
        }
        Ok::<_, tonic::Status>(last)
    })
    .await
    .expect("the deadline ended the call");
    // The mock never answers: only the deadline can have ended the request.
    let abandoned = mock.wait_for_abandoned_request(HANG).await;
    assert!(abandoned.is_some(), "the mock saw the request abandoned");
    // Either the run stopped in time to send its partial result, or the caller was told.
    match outcome {
        Ok(Some(Event::Result(result))) => {
            assert!(result.partial);
            let status = result.budget_status.unwrap();
            assert_eq!(status.exhausted, pb::BudgetResource::Time as i32);
        }
        Ok(other) => panic!("the stream ended without a result: {other:?}"),
        Err(status) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
    }
}

#[tokio::test]
async fn retries_never_run_past_the_time_budget() {
    // The mock asks for a wait far longer than the run may take.
    let mock = MockLlmServer::start(MockScript::replies(vec![
        MockReply::rate_limited("600"),
        MockReply::text("Porto."),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let mut request = question("Where?");
    request.budget = Some(pb::Budget {
        max_time_seconds: Some(5.0),
        ..pb::Budget::default()
    });
    let status = tokio::time::timeout(HANG, query_error(&mut server, request))
        .await
        .expect("the call gave up instead of waiting");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("no time left in the budget to retry"),
        "{}",
        status.message()
    );
    assert_eq!(mock.request_count(), 1, "no retry was made");
}

/// Points the sub-model at its own name, priced at a dollar per thousand tokens.
fn priced_sub_model(config: &mut Config) {
    config.llm.sub.model = Some("sub-model".into());
    config.llm.prices.insert(
        "sub-model".into(),
        deeprecall::config::ModelPrice {
            input_per_million: 1_000.0,
            output_per_million: 1_000.0,
        },
    );
}

/// The requests the sub-model received.
fn sub_model_requests(mock: &MockLlmServer) -> Vec<deeprecall::llm::mock_server::RecordedRequest> {
    mock.requests()
        .into_iter()
        .filter(|request| request.body["model"] == "sub-model")
        .collect()
}

#[tokio::test]
async fn sub_model_calls_are_planned_against_the_token_and_cost_budgets() {
    // Each root turn asks the sub-model to digest a passage, reporting what it used.
    let digest = || MockReply::Usage {
        reply: Box::new(MockReply::tool_call(
            "llm_query",
            json!({"prompt": "digest the zephyr passage"}).to_string(),
        )),
        input_tokens: 960,
        output_tokens: 30,
        cost_usd: Some(0.0),
    };
    let mock = MockLlmServer::start(
        MockScript::replies(vec![digest(), digest(), digest(), MockReply::text("Done.")])
            .with_conversation("digest the zephyr", vec![MockReply::text("digested")]),
    )
    .await
    .unwrap();
    let mut server = server_with(&mock, Backend::Openai, priced_sub_model).await;
    let with_budget = |budget: pb::Budget| {
        let mut request = question("Digest?");
        request.budget = Some(budget);
        request
    };

    // 990 tokens of 1,000 are gone after the root call: no sub-model call can fit.
    let result = query_result(
        &mut server.client,
        with_budget(pb::Budget {
            max_tokens: Some(1_000),
            ..pb::Budget::default()
        }),
    )
    .await;
    assert!(result.partial);
    let status = result.budget_status.unwrap();
    assert_eq!(status.exhausted, pb::BudgetResource::Tokens as i32);
    assert!(sub_model_requests(&mock).is_empty(), "no sub-model call");

    // At a dollar per thousand tokens, 2 cents cannot pay for the sub-model's prompt (some
    // thirty tokens) and a minimal completion.
    let result = query_result(
        &mut server.client,
        with_budget(pb::Budget {
            max_cost_usd: Some(0.02),
            ..pb::Budget::default()
        }),
    )
    .await;
    assert!(result.partial);
    let status = result.budget_status.unwrap();
    assert_eq!(status.exhausted, pb::BudgetResource::Cost as i32);
    assert!(sub_model_requests(&mock).is_empty(), "no sub-model call");

    // With room, the call is made, its completion capped to what the dollars leave.
    let result = query_result(
        &mut server.client,
        with_budget(pb::Budget {
            max_cost_usd: Some(0.5),
            ..pb::Budget::default()
        }),
    )
    .await;
    assert_eq!(result.answer, "Done.");
    let sub_calls = sub_model_requests(&mock);
    assert_eq!(sub_calls.len(), 1);
    let cap = sub_calls[0].body["max_tokens"].as_u64().expect("a cap");
    assert!(cap < 500, "capped to the budget: {cap}");
}

#[tokio::test]
async fn a_spent_cost_budget_stops_before_the_next_call_and_reports_real_usage() {
    let priced = |reply: MockReply| MockReply::Usage {
        reply: Box::new(reply),
        input_tokens: 1_000,
        output_tokens: 10,
        cost_usd: Some(0.01),
    };
    let mock = MockLlmServer::start(MockScript::replies(vec![
        priced(search("zephyr")),
        priced(search("klaxon")),
        priced(search("more")),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let mut request = question("Who makes the Zephyr blender?");
    request.budget = Some(pb::Budget {
        max_cost_usd: Some(0.015),
        ..pb::Budget::default()
    });
    let result = query_result(&mut server.client, request).await;
    assert!(result.partial);
    assert!(result.error.contains("max_cost_usd"), "{}", result.error);
    let status = result.budget_status.unwrap();
    assert_eq!(status.exhausted, pb::BudgetResource::Cost as i32);
    assert_eq!(mock.request_count(), 2, "no call once the budget is spent");
    let usage = result.usage.unwrap();
    assert!((usage.cost_usd - 0.02).abs() < 1e-9, "{}", usage.cost_usd);
    assert_eq!(usage.input_tokens, 2_000);
    assert!(
        !result.citations.is_empty(),
        "the partial answer cites what was found"
    );
}

#[tokio::test]
async fn one_failed_prompt_of_a_batched_sub_model_call_fails_alone() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![
            MockReply::tool_call(
                "llm_query_batched",
                json!({"prompts": ["digest alpha", "digest beta"]}).to_string(),
            ),
            MockReply::text("Done."),
        ])
        .with_conversation("digest alpha", vec![MockReply::text("alpha digested")])
        .with_conversation("digest beta", vec![MockReply::status(400, "bad prompt")]),
    )
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Openai).await;
    let events = query_events(&mut server.client, question("Digest?")).await;
    let sub = events
        .iter()
        .find_map(|event| match &event.event {
            Some(Event::SubLlmCall(call)) => Some(call.clone()),
            _ => None,
        })
        .expect("a sub-model event");
    assert_eq!((sub.prompts, sub.failed), (2, 1));
    assert_eq!(result_of(&events).answer, "Done.");
    let root_requests: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|request| request.body["tools"].is_array())
        .collect();
    let tool_reply = root_requests[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    let responses: serde_json::Value = serde_json::from_str(&tool_reply).unwrap();
    assert_eq!(responses["responses"][0], "alpha digested");
    assert!(
        responses["responses"][1]
            .as_str()
            .unwrap()
            .starts_with("error:")
    );
}

#[tokio::test]
async fn the_anthropic_backend_drives_the_loop_and_streams_text() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        search("zephyr maker"),
        MockReply::text("Klaxon Industries makes it [zephyr], in Porto."),
    ]))
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Anthropic).await;
    let events = query_events(&mut server.client, question("Who makes the Zephyr?")).await;
    let result = result_of(&events);
    assert_eq!(result.citations, vec!["zephyr"]);
    let deltas: String = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(Event::AnswerDelta(delta)) => Some(delta.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, result.answer);

    let requests = mock.requests();
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].header("x-api-key"), Some("test-key"));
    assert!(requests[0].header("anthropic-version").is_some());
    assert_eq!(requests[0].body["tools"][0]["name"], "search_db");
    let second = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(second.last().unwrap()["content"][0]["type"], "tool_result");
}

#[tokio::test]
async fn the_anthropic_backend_asks_again_once_after_a_cut_stream() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![MockReply::TruncatedStream, MockReply::text("Porto.")])
            .with_conversation("twice?", vec![MockReply::TruncatedStream]),
    )
    .await
    .unwrap();
    let mut server = server_for(&mock, Backend::Anthropic).await;
    let result = query_result(&mut server.client, question("Where?")).await;
    assert_eq!(result.answer, "Porto.");
    assert_eq!(mock.request_count(), 2);

    let status = query_error(&mut server, question("twice?")).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(mock.request_count(), 4, "asked again once, then reported");
}
