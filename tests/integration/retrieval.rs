//! Retrieval through remote services: an OpenAI-compatible embedder and a Cohere-compatible
//! reranker, both the scripted mock over real HTTP, behind the real server over gRPC.

use deeprecall::api::pb;
use deeprecall::api::pb::query_event::Event;
use deeprecall::config::{CacheBackend, Config, EmbedderKind, RerankerKind};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use serde_json::json;

use crate::common::*;

const RERANKER: &str = "cohere:rerank-mock";

fn search(query: &str) -> MockReply {
    MockReply::tool_call(
        "search_db",
        json!({ "query": query, "top_k": 2 }).to_string(),
    )
}

fn submit() -> MockReply {
    MockReply::tool_call(
        "submit",
        json!({"answer": "Reimbursed.", "citations": [], "certainty": 0.9}).to_string(),
    )
}

/// Points the model, the embedder and the reranker at the one mock.
fn point_at(config: &mut Config, mock: &MockLlmServer) {
    config.llm.backend = deeprecall::config::Backend::Openai;
    config.llm.model = "mock-model".into();
    config.llm.base_url = mock.base_url();
    config.llm.api_key = Secret::new("test-key");
    config.llm.retry_base_ms = 1;
    config.llm.retry_max_ms = 5;
    config.embedding.embedder = EmbedderKind::Openai;
    config.embedding.model = "mock-embed".into();
    config.embedding.base_url = mock.base_url();
    config.embedding.dimensions = Some(64);
    config.rerank.reranker = RerankerKind::Cohere;
    config.rerank.model = "rerank-mock".into();
    config.rerank.base_url = format!("{}/v2", mock.origin());
    config.rerank.candidates = 10;
    config.cache.backend = CacheBackend::Memory;
}

fn travel_documents() -> Vec<pb::Document> {
    [
        (
            "halifax",
            "The Halifax office opened in 2019 beside the harbour.",
        ),
        (
            "travel",
            "Conference travel is reimbursed within thirty days.",
        ),
        (
            "meals",
            "Meals during conference travel are reimbursed up to a daily cap.",
        ),
        ("laptops", "Laptops are replaced every three years."),
        (
            "parking",
            "Parking near the office is reimbursed for visitors.",
        ),
    ]
    .into_iter()
    .map(|(id, content)| document(id, content, json!({})))
    .collect()
}

fn search_event(events: &[pb::QueryEvent]) -> pb::SearchEvent {
    events
        .iter()
        .find_map(|event| match &event.event {
            Some(Event::Search(search)) => Some(search.clone()),
            _ => None,
        })
        .expect("a search event")
}

fn rerank_requests(mock: &MockLlmServer) -> Vec<serde_json::Value> {
    mock.requests()
        .into_iter()
        .filter(|request| request.path == "/v2/rerank")
        .map(|request| request.body)
        .collect()
}

#[tokio::test]
async fn documents_and_queries_are_embedded_by_the_openai_embedder() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![search("travel reimbursed"), submit()])
            .with_embedding_dimension(64),
    )
    .await
    .expect("mock");
    let mut server = TestServer::start_with(|config| {
        point_at(config, &mock);
        config.rerank.reranker = RerankerKind::None;
    })
    .await;
    add(&mut server.client, "", travel_documents()).await;
    let events = query_events(&mut server.client, question("Who pays for my trip?")).await;
    let search = search_event(&events);
    assert_eq!(search.hits.len(), 2);
    assert!(search.reranker.is_empty());
    assert!(search.hits.iter().all(|hit| hit.rerank_score.is_none()));

    let embeddings: Vec<serde_json::Value> = mock
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/embeddings")
        .map(|request| request.body)
        .collect();
    // The documents in one request, then the search text.
    assert_eq!(embeddings.len(), 2, "{embeddings:?}");
    assert_eq!(embeddings[0]["input"].as_array().map(Vec::len), Some(5));
    assert_eq!(embeddings[1]["input"][0], "travel reimbursed");
    assert_eq!(embeddings[1]["model"], "mock-embed");
}

#[tokio::test]
async fn the_reranker_orders_the_fused_candidates_and_its_scores_reach_the_trace() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![search("conference travel reimbursed"), submit()])
            .with_embedding_dimension(64),
    )
    .await
    .expect("mock");
    let mut server = TestServer::start_with(|config| point_at(config, &mock)).await;
    add(&mut server.client, "", travel_documents()).await;
    let events = query_events(&mut server.client, question("Who pays for my trip?")).await;
    let search = search_event(&events);

    assert_eq!(search.reranker, RERANKER);
    assert!(!search.rerank_failed);
    assert_eq!(search.hits.len(), 2, "cut to top_k after reranking");
    let scores: Vec<f64> = search
        .hits
        .iter()
        .map(|hit| hit.rerank_score.expect("a rerank score on every hit"))
        .collect();
    assert!(scores[0] >= scores[1], "best first: {scores:?}");

    // The reranker saw more candidates than the search keeps, and the two it scored best are
    // the two hits.
    let request = &rerank_requests(&mock)[0];
    let documents = request["documents"].as_array().expect("documents");
    assert!(documents.len() > 2, "{request}");
    assert_eq!(request["query"], "conference travel reimbursed");
    let travel = "Conference travel is reimbursed within thirty days.";
    let meals = "Meals during conference travel are reimbursed up to a daily cap.";
    let found: Vec<&str> = search.hits.iter().map(|hit| hit.id.as_str()).collect();
    assert!(documents.iter().any(|text| text == travel));
    assert!(documents.iter().any(|text| text == meals));
    let mut expected = ["travel", "meals"];
    expected.sort_unstable();
    let mut found_sorted = found.clone();
    found_sorted.sort_unstable();
    assert_eq!(found_sorted, expected, "{found:?}");
}

#[tokio::test]
async fn a_failing_reranker_leaves_the_fused_order_and_the_fallback_is_not_cached() {
    let mock = MockLlmServer::start(
        MockScript::replies(vec![
            search("conference travel reimbursed"),
            submit(),
            search("conference travel reimbursed"),
            submit(),
        ])
        .with_embedding_dimension(64)
        // Both attempts of the first search fail; the second search's call succeeds.
        .with_rerank_replies(vec![
            MockReply::status(500, "reranker down"),
            MockReply::status(500, "reranker down"),
            MockReply::Correct,
        ]),
    )
    .await
    .expect("mock");
    let (mut server, metrics_port) = TestServer::start_with_metrics(|config| {
        point_at(config, &mock);
    })
    .await;
    add(&mut server.client, "", travel_documents()).await;

    let events = query_events(&mut server.client, question("Who pays for my trip?")).await;
    let search = search_event(&events);
    assert!(search.rerank_failed);
    assert!(search.hits.iter().all(|hit| hit.rerank_score.is_none()));
    // The fused order: the first two candidates the reranker was sent, in order.
    let sent = &rerank_requests(&mock)[0];
    let contents: Vec<String> = search
        .hits
        .iter()
        .map(|hit| {
            travel_documents()
                .into_iter()
                .find(|document| document.id == hit.id)
                .expect("a known document")
                .content
        })
        .collect();
    assert_eq!(
        json!(contents),
        json!(sent["documents"].as_array().expect("documents")[..2])
    );
    let metrics = scrape_metrics(metrics_port).await;
    assert_eq!(
        sample(
            &metrics,
            &format!("deeprecall_rerank_failures_total{{reranker=\"{RERANKER}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );

    // Another question, same search: the fallback order was not cached, so the reranker,
    // back now, orders it.
    let events = query_events(&mut server.client, question("Who pays, again?")).await;
    let search = search_event(&events);
    assert!(!search.cache_hit);
    assert!(!search.rerank_failed);
    assert!(search.hits.iter().all(|hit| hit.rerank_score.is_some()));
}

/// Runs the binary to the end off the runtime; returns its standard output.
async fn run(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(&args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&output.stdout).to_string()
    })
    .await
    .expect("the command's thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_of_another_embedder_fails_its_queries_until_reindexed_online() {
    let data_dir = tempfile::tempdir().expect("directory");
    let mut before = TestServer::start_in(data_dir.path(), |_| {}).await;
    add(&mut before.client, "", travel_documents()).await;
    before.stop().await.expect("clean stop");

    // Restarted with another embedder: nothing is re-embedded, and the collection's queries
    // say why they cannot run.
    let mut server = TestServer::start_in(data_dir.path(), |config| {
        config.embedding.dimensions = Some(256);
    })
    .await;
    let refused = server
        .client
        .query(question("Who pays for conference travel?"))
        .await
        .expect_err("refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    for part in ["hashing-v1:4096", "hashing-v1:256", "deeprecall reindex"] {
        assert!(refused.message().contains(part), "{}", refused.message());
    }

    // Reindexed by the command while the server runs; the server's next query finds the new
    // vectors.
    let output = run(vec![
        "reindex".into(),
        "--data-dir".into(),
        data_dir.path().display().to_string(),
        "--embedding-dimensions".into(),
        "256".into(),
        "--collection".into(),
        "default".into(),
    ])
    .await;
    assert!(
        output.contains("5 documents now embedded with hashing-v1:256"),
        "{output}"
    );
    let result = query_result(&mut server.client, question("conference travel reimbursed")).await;
    assert!(!result.sources.is_empty(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retrieval_benchmark_scores_every_configured_retriever() {
    let mock = MockLlmServer::start(MockScript::default().with_embedding_dimension(64))
        .await
        .expect("mock");
    let output = run(vec![
        "bench".into(),
        "retrieval".into(),
        "--dataset".into(),
        examples().join("questions.json").display().to_string(),
        "--corpus".into(),
        examples().join("handbook").display().to_string(),
        "--embedding-base-url".into(),
        mock.base_url(),
        "--embedding-model".into(),
        "mock-embed".into(),
        "--embedding-dimensions".into(),
        "64".into(),
        "--reranker-base-url".into(),
        format!("{}/v2", mock.origin()),
        "--reranker-model".into(),
        "rerank-mock".into(),
    ])
    .await;
    for row in [
        "| BM25 |",
        "| hashing vectors |",
        "| hybrid: BM25 + hashing |",
        "| openai:mock-embed:64 vectors |",
        "| hybrid: BM25 + openai:mock-embed:64 |",
        "| hybrid + cohere:rerank-mock |",
    ] {
        assert!(output.contains(row), "{row} missing from:\n{output}");
    }
    // Every question of the set has its answer among the first 20 hits of BM25.
    let bm25 = output
        .lines()
        .find(|line| line.starts_with("| BM25 |"))
        .expect("a BM25 row");
    let recall_at_20: f64 = bm25
        .split('|')
        .nth(3)
        .expect("a column")
        .trim()
        .parse()
        .expect("a number");
    assert!(recall_at_20 > 0.9, "{bm25}");
    assert!(
        mock.requests()
            .iter()
            .any(|request| request.path == "/v2/rerank"),
        "the reranker was asked"
    );
}
