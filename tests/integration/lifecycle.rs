//! Health, reflection and shutdown.

use std::time::Duration;

use deeprecall::api::pb::query_event::Event;
use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::config::{Backend, CacheBackend};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::common::*;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "deeprecall.v1.DeepRecall"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_lists_the_service_and_describes_it() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "deeprecall.v1.DeepRecall".into(),
            )),
        },
    ];
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection answers")
        .into_inner();

    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = listed else {
        panic!("unexpected {listed:?}");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert!(names.contains(&"deeprecall.v1.DeepRecall"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let described = responses.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = described else {
        panic!("unexpected {described:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// A server whose model, behind the scripted mock, answers `replies` in turn, with one
/// document about Kestrel and `grace_seconds` of shutdown grace.
async fn server_over(replies: Vec<MockReply>, grace_seconds: f64) -> (MockLlmServer, TestServer) {
    let mock = MockLlmServer::start(MockScript::replies(replies))
        .await
        .expect("mock starts");
    let mut server = TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        config.server.shutdown_grace_seconds = grace_seconds;
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![document(
            "kestrel",
            "Kestrel Fabrication is headquartered in Tampere.",
            serde_json::json!({}),
        )],
    )
    .await;
    (mock, server)
}

/// Waits, as long as a hang would take, for the next event of a stream.
async fn next_event(stream: &mut tonic::Streaming<pb::QueryEvent>) -> Option<pb::QueryEvent> {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the stream moves on")
        .expect("the stream ends cleanly")
}

#[tokio::test]
async fn during_the_drain_health_is_not_serving_and_new_calls_are_unavailable_until_the_listener_closes()
 {
    // The model never answers: the query stays in flight, and so does the drain.
    let (_mock, server) = server_over(vec![MockReply::Hang], 600.0).await;
    let endpoint = server.endpoint.clone();
    let mut client = server.client.clone();
    let mut in_flight = client
        .query(question("Where is Kestrel Fabrication?"))
        .await
        .expect("accepted")
        .into_inner();
    let first = next_event(&mut in_flight).await.expect("an event");
    assert!(
        matches!(first.event, Some(Event::StepStarted(_))),
        "the run has started: {first:?}"
    );

    let stopping = tokio::spawn(server.stop());

    // A new connection is still accepted; health on it turns NOT_SERVING.
    let channel = Channel::from_shared(endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("the listener accepts connections during the drain");
    let mut health = HealthClient::new(channel.clone());
    let mut updates = health
        .watch(HealthCheckRequest {
            service: "deeprecall.v1.DeepRecall".into(),
        })
        .await
        .expect("health answers during the drain")
        .into_inner();
    loop {
        let update = tokio::time::timeout(Duration::from_secs(30), updates.message())
            .await
            .expect("health changes")
            .expect("a clean health stream")
            .expect("the health stream stays open");
        if update.status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    drop(updates);
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers during the drain")
        .into_inner();
    assert_eq!(overall.status, ServingStatus::NotServing as i32);

    // New calls, on the new connection and on the one already open, are UNAVAILABLE.
    for mut caller in [DeepRecallClient::new(channel), client.clone()] {
        let refused = caller
            .get_stats(pb::GetStatsRequest {})
            .await
            .expect_err("refused during the drain");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("shutting down"), "{refused:?}");
    }
    assert!(
        !stopping.is_finished(),
        "the query in flight holds the drain open"
    );

    // The last call in flight ends (its caller leaves): the drain is over and the listener
    // closes.
    drop(in_flight);
    drop(health);
    stopping.await.expect("joined").expect("clean shutdown");
    assert!(
        Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .is_err(),
        "the listener is closed once the drain is over"
    );
}

#[tokio::test]
async fn a_query_running_past_the_grace_gets_a_partial_result_saying_the_server_is_shutting_down() {
    let search = MockReply::tool_call(
        "search_db",
        serde_json::json!({"query": "Kestrel Fabrication"}).to_string(),
    );
    let (_mock, server) = server_over(vec![search, MockReply::Hang], 0.2).await;
    let mut client = server.client.clone();
    let mut stream = client
        .query(question("Where is Kestrel Fabrication?"))
        .await
        .expect("accepted")
        .into_inner();
    // Once the first search is back, the second model call hangs past any grace.
    loop {
        let event = next_event(&mut stream)
            .await
            .expect("events until the search");
        if matches!(event.event, Some(Event::Search(_))) {
            break;
        }
    }
    let stopping = tokio::spawn(server.stop());
    let mut result = None;
    while let Some(event) = next_event(&mut stream).await {
        if let Some(Event::Result(done)) = event.event {
            result = Some(done);
        }
    }
    let result = result.expect("the stream ends with a result");
    assert!(result.partial, "{result:?}");
    assert!(result.error.contains("shutting down"), "{}", result.error);
    assert_eq!(
        result.citations,
        vec!["kestrel"],
        "built from what was found"
    );
    stopping.await.expect("joined").expect("clean shutdown");
}

#[tokio::test]
async fn in_flight_streams_get_the_grace_period_then_end_cleanly() {
    let mut server = TestServer::start_with(|config| {
        config.server.shutdown_grace_seconds = 0.3;
        config.cache.backend = deeprecall::config::CacheBackend::None;
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![document(
            "a",
            "Graceful shutdown drains streams.",
            serde_json::json!({}),
        )],
    )
    .await;
    // Enough work that the batch is still running when the signal comes.
    let queries = (0..10_000)
        .map(|n| question(&format!("How does shutdown drain streams, take {n}?")))
        .collect();
    let mut stream = server
        .client
        .query_batch(pb::QueryBatchRequest {
            queries,
            max_concurrency: 2,
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let first = stream.message().await.expect("clean").expect("an item");
    assert!(matches!(
        first.outcome,
        Some(pb::query_batch_item::Outcome::Result(_))
    ));

    let stopping = tokio::spawn(server.stop());
    let mut results = 1;
    let mut refused = 0;
    while let Some(item) = stream.message().await.expect("the stream ends cleanly") {
        match item.outcome {
            Some(pb::query_batch_item::Outcome::Result(_)) => results += 1,
            Some(pb::query_batch_item::Outcome::Error(error)) => {
                assert_eq!(
                    error.code,
                    tonic::Code::Unavailable as i32,
                    "{}",
                    error.message
                );
                assert!(error.message.contains("shutting down"), "{}", error.message);
                refused += 1;
            }
            None => panic!("an item without an outcome"),
        }
    }
    assert!(results > 1, "work went on during the grace period");
    assert_eq!(results + refused, 10_000, "every query got an item");
    stopping.await.expect("joined").expect("clean shutdown");
}

/// The server keeps its memory in small pages (a huge page is resident whole once touched,
/// which nearly doubled its memory under load), unless the operator asks for huge pages the
/// way mimalloc reads it.
#[test]
fn the_server_process_runs_without_transparent_huge_pages_unless_asked() {
    let thp_enabled = |pid: String| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("THP_enabled:"))
            .map(|value| value.trim().to_string())
            .expect("the kernel reports THP_enabled")
    };
    let server_thp_enabled = |env: &[(&str, &str)]| {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let (child, _endpoint) = spawn_binary_with_env(data_dir.path(), &[], env);
        let child = KilledOnDrop(child);
        thp_enabled(child.id().to_string())
    };
    assert_eq!(server_thp_enabled(&[]), "0");
    // Asked for, the server keeps what it inherited.
    assert_eq!(
        server_thp_enabled(&[("MIMALLOC_ALLOW_THP", "1")]),
        thp_enabled("self".into())
    );
}
