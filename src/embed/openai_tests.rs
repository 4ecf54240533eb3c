use std::time::Duration;

use super::*;
use crate::llm::PriceTable;
use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use crate::telemetry::Metrics;
use crate::telemetry::spans::ModelRole;

fn config(server: &MockLlmServer) -> OpenAiEmbedderConfig {
    OpenAiEmbedderConfig {
        base_url: server.base_url(),
        model: "mock-embed".into(),
        dimensions: Some(64),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..OpenAiEmbedderConfig::default()
    }
}

async fn server(replies: Vec<MockReply>) -> MockLlmServer {
    MockLlmServer::start(
        MockScript::default()
            .with_embedding_replies(replies)
            .with_embedding_dimension(64),
    )
    .await
    .unwrap()
}

fn texts(count: usize, chars: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{index:04} {}", "word ".repeat(chars / 5)))
        .collect()
}

fn dot(a: &Embedding, b: &Embedding) -> f32 {
    let mut total = 0.0;
    for (index, value) in a.indices.iter().zip(&a.values) {
        if let Some(position) = b.indices.iter().position(|other| other == index) {
            total += value * b.values[position];
        }
    }
    total
}

#[tokio::test]
async fn vectors_come_back_in_input_order_with_the_configured_size() {
    let server = server(Vec::new()).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let inputs: Vec<String> = [
        "travel expenses are reimbursed",
        "the office is in Halifax",
        "expenses for travel get reimbursed",
    ]
    .map(String::from)
    .to_vec();
    let vectors = embedder.embed(&inputs).await.unwrap();
    assert_eq!(vectors.len(), 3);
    assert!(embedder.dense());
    assert_eq!(embedder.dimension(), 64);
    // The mock's vectors follow the words, so order shows in which pairs are alike.
    assert!(dot(&vectors[0], &vectors[2]) > dot(&vectors[0], &vectors[1]));

    let request = &server.requests()[0];
    assert_eq!(request.path, "/v1/embeddings");
    assert_eq!(request.body["model"], "mock-embed");
    assert_eq!(request.body["encoding_format"], "float");
    assert_eq!(request.body["input"][1], "the office is in Halifax");
    // Only the text-embedding-3 family is asked to shorten its vectors.
    assert!(request.body.get("dimensions").is_none());
}

#[tokio::test]
async fn text_embedding_3_models_are_asked_for_the_configured_dimensions() {
    let server = server(Vec::new()).await;
    let embedder = OpenAiEmbedder::new(OpenAiEmbedderConfig {
        model: "text-embedding-3-small".into(),
        dimensions: Some(32),
        ..config(&server)
    })
    .unwrap();
    let vectors = embedder.embed(&["a text".to_string()]).await.unwrap();
    assert_eq!(server.requests()[0].body["dimensions"], 32);
    assert!(vectors[0].indices.iter().all(|index| *index < 32));
    assert_eq!(embedder.id(), "openai:text-embedding-3-small:32");
}

#[tokio::test]
async fn requests_are_bounded_by_count_and_by_tokens() {
    let server = server(Vec::new()).await;
    let embedder = OpenAiEmbedder::new(OpenAiEmbedderConfig {
        batch_size: 4,
        batch_tokens: 1_000_000,
        ..config(&server)
    })
    .unwrap();
    let vectors = embedder.embed(&texts(10, 20)).await.unwrap();
    assert_eq!(vectors.len(), 10);
    let sizes: Vec<usize> = server
        .requests()
        .iter()
        .map(|request| request.body["input"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [4, 4, 2]);

    // 400 characters are about 100 tokens: two fit under 250, a third does not.
    let server = self::server(Vec::new()).await;
    let embedder = OpenAiEmbedder::new(OpenAiEmbedderConfig {
        batch_size: 100,
        batch_tokens: 250,
        ..config(&server)
    })
    .unwrap();
    let inputs = texts(5, 400);
    let vectors = embedder.embed(&inputs).await.unwrap();
    let mut sizes: Vec<usize> = server
        .requests()
        .iter()
        .map(|request| request.body["input"].as_array().unwrap().len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 2, 2]);
    // Concurrent requests still give the vectors in input order.
    let one_by_one = embedder.embed(&inputs[3..4]).await.unwrap();
    assert_eq!(vectors[3], one_by_one[0]);
}

#[tokio::test]
async fn a_text_longer_than_the_model_takes_is_cut() {
    let server = server(Vec::new()).await;
    let embedder = OpenAiEmbedder::new(OpenAiEmbedderConfig {
        max_input_tokens: 10,
        ..config(&server)
    })
    .unwrap();
    let long = "é".repeat(100);
    embedder.embed(&[long, "short".into()]).await.unwrap();
    let body = &server.requests()[0].body;
    assert_eq!(body["input"][0].as_str().unwrap().chars().count(), 30);
    assert_eq!(body["input"][1], "short");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let server = server(vec![
        MockReply::rate_limited("0"),
        MockReply::status(503, "overloaded"),
        MockReply::Correct,
    ])
    .await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let vectors = embedder.embed(&["text".to_string()]).await.unwrap();
    assert_eq!(vectors.len(), 1);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn a_backend_that_keeps_failing_is_unavailable_after_the_attempts() {
    let server = server(vec![MockReply::status(500, "boom")]).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let error = embedder.embed(&["text".to_string()]).await.unwrap_err();
    assert!(matches!(error, EmbedError::Unavailable(_)), "{error}");
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn a_refused_key_is_a_misconfiguration_and_is_not_retried() {
    let server = server(vec![MockReply::status(401, "invalid api key")]).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let error = embedder.embed(&["text".to_string()]).await.unwrap_err();
    assert!(matches!(error, EmbedError::Misconfigured(_)), "{error}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_wrong_count_or_size_of_vectors_is_a_bad_response() {
    let server = server(vec![MockReply::WrongCount]).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let error = embedder
        .embed(&["a".to_string(), "b".to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, EmbedError::BadResponse(reason) if reason.contains("1 vectors for 2 texts")),
        "{error}"
    );

    let server = self::server(vec![MockReply::WrongShape]).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let error = embedder.embed(&["a".to_string()]).await.unwrap_err();
    assert!(
        matches!(&error, EmbedError::BadResponse(reason) if reason.contains("65 dimensions")),
        "{error}"
    );

    let server = self::server(vec![MockReply::MalformedJson]).await;
    let embedder = OpenAiEmbedder::new(config(&server)).unwrap();
    let error = embedder.embed(&["a".to_string()]).await.unwrap_err();
    assert!(matches!(error, EmbedError::BadResponse(_)), "{error}");
}

#[tokio::test]
async fn tokens_and_cost_are_counted_as_embedding_model_calls() {
    let server = server(Vec::new()).await;
    let metrics = Metrics::new();
    let prices = PriceTable::new(vec![("mock-embed".into(), 20.0, 0.0)]);
    let embedder = OpenAiEmbedder::new(config(&server))
        .unwrap()
        .with_meter(UsageMeter::new(
            metrics.clone(),
            prices,
            ModelRole::Embedding,
        ));
    // 40 characters: the mock reports 10 prompt tokens.
    embedder.embed(&["x".repeat(40)]).await.unwrap();
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            r#"deeprecall_model_tokens_total{model="mock-embed",role="embedding",direction="input"} 10"#
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            r#"deeprecall_model_cost_usd_total{model="mock-embed",role="embedding"} 0.0002"#
        ),
        "{rendered}"
    );
}

#[test]
fn settings_that_cannot_work_are_refused_up_front() {
    let refused = |config: OpenAiEmbedderConfig| match OpenAiEmbedder::new(config) {
        Err(EmbedError::Misconfigured(reason)) => reason,
        other => panic!("expected a misconfiguration, got {other:?}"),
    };
    let base = OpenAiEmbedderConfig {
        model: "nomic-embed-text".into(),
        ..OpenAiEmbedderConfig::default()
    };
    assert!(refused(base.clone()).contains("--embedding-dimensions"));
    assert!(
        refused(OpenAiEmbedderConfig {
            model: String::new(),
            ..base.clone()
        })
        .contains("--embedding-model")
    );
    assert!(
        refused(OpenAiEmbedderConfig {
            dimensions: Some(768),
            base_url: "localhost:8080".into(),
            ..base.clone()
        })
        .contains("http://")
    );
    // OpenAI's own models need no size.
    let known = OpenAiEmbedder::new(OpenAiEmbedderConfig {
        model: "text-embedding-3-large".into(),
        ..base
    })
    .unwrap();
    assert_eq!(known.dimension(), 3072);
}
