//! A caller's gRPC deadline: the run stops early enough that the caller receives its (partial)
//! result before the deadline passes, and DEADLINE_EXCEEDED only when not even that fits.

use std::time::Duration;

use deeprecall::api::pb;
use deeprecall::api::pb::query_event::Event;
use deeprecall::config::{Backend, CacheBackend};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use serde_json::json;
use tonic::Code;

use crate::common::*;

/// How long the mock model takes to answer each call.
const MODEL_LATENCY: Duration = Duration::from_millis(1500);
/// The text of the mock's summing-up reply, the third call of a conversation.
const SUMMARY: &str = "From what was found: Kestrel Fabrication is in Tampere [kestrel].";

fn search(query: &str) -> MockReply {
    MockReply::tool_call("search_db", json!({ "query": query }).to_string())
}

/// Asks `text` with a deadline of `timeout`, enforced on the caller's side as every gRPC
/// client does: whatever has not arrived when the deadline passes is lost.
async fn ask_within(
    server: &TestServer,
    text: &str,
    timeout: Duration,
) -> Result<pb::QueryResult, tonic::Status> {
    let mut client = server.client.clone();
    let mut request = tonic::Request::new(question(text));
    request.set_timeout(timeout);
    let call = async move {
        let mut stream = client.query(request).await?.into_inner();
        let mut result = None;
        while let Some(event) = stream.message().await? {
            if let Some(Event::Result(done)) = event.event {
                result = Some(done);
            }
        }
        result.ok_or_else(|| tonic::Status::internal("the stream ended without a result"))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "the caller's deadline passed",
            ))
        })
}

#[tokio::test]
async fn a_deadline_shorter_than_the_work_still_delivers_the_partial_result_in_time() {
    // Each question is a conversation of its own; every call to the model takes 1.5 s.
    let conversation = vec![
        search("Kestrel Fabrication"),
        search("Tampere"),
        MockReply::text(SUMMARY),
    ];
    let mock = MockLlmServer::start(
        MockScript::default()
            .with_conversation("one second", conversation.clone())
            .with_conversation("two seconds", conversation.clone())
            .with_conversation("five seconds", conversation)
            .with_latency(MODEL_LATENCY),
    )
    .await
    .expect("mock starts");
    let mut server = TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![
            document(
                "kestrel",
                "Kestrel Fabrication is headquartered in Tampere.",
                json!({}),
            ),
            document("tampere", "Tampere is a city in Finland.", json!({})),
        ],
    )
    .await;

    let (one, two, five) = tokio::join!(
        ask_within(
            &server,
            "Where is Kestrel, one second?",
            Duration::from_secs(1)
        ),
        ask_within(
            &server,
            "Where is Kestrel, two seconds?",
            Duration::from_secs(2)
        ),
        ask_within(
            &server,
            "Where is Kestrel, five seconds?",
            Duration::from_secs(5)
        ),
    );

    // One second: the first model call cannot answer in time and nothing was found.
    let status = one.expect_err("nothing to answer from within one second");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // Two seconds: one call and its search; no time for another call or a summing-up call,
    // so the answer is stitched from what the search found, before the deadline.
    let result = two.expect("a partial result within two seconds");
    assert!(result.partial, "{result:?}");
    assert_eq!(
        result.budget_status.expect("status").exhausted,
        pb::BudgetResource::Time as i32
    );
    assert!(
        result.error.contains("max_time_seconds"),
        "{}",
        result.error
    );
    assert_ne!(result.answer, SUMMARY, "no summing-up call fits");
    assert_eq!(result.usage.expect("usage").llm_calls, 1);
    assert!(
        result.citations.contains(&"kestrel".to_string()),
        "{:?}",
        result.citations
    );

    // Five seconds: two calls, then the model sums up: a third loop call and the summary
    // would not both fit, the summary alone does.
    let result = five.expect("a partial result within five seconds");
    assert!(result.partial, "{result:?}");
    assert_eq!(result.answer, SUMMARY);
    assert_eq!(result.usage.expect("usage").llm_calls, 3);
    assert_eq!(mock.request_count(), 1 + 1 + 3, "calls made in all");
}

#[tokio::test]
async fn a_deadline_within_the_reserve_for_the_trip_back_is_refused_at_once() {
    let mut server =
        TestServer::start_with(|config| config.engine.deadline_reserve_ms = 5_000).await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Anything goes.", json!({}))],
    )
    .await;
    let status = ask_within(&server, "Anything?", Duration::from_secs(2))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("no time"), "{status:?}");
}
