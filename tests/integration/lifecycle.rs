//! Health, reflection and shutdown.

use deeprecall::api::pb;
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

#[tokio::test]
async fn shutdown_refuses_new_calls_and_returns_cleanly() {
    let mut server = TestServer::start().await;
    let mut client = server.client.clone();
    let endpoint = server.endpoint.clone();
    server
        .client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("serving");
    server.stop().await.expect("clean shutdown");

    let refused = client.get_stats(pb::GetStatsRequest {}).await;
    assert!(refused.is_err(), "a call after shutdown is refused");
    assert!(
        Channel::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .is_err()
    );
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
