//! Seeing inside: spans exported over OTLP to a real in-process collector, the Prometheus
//! endpoint scraped over HTTP, and the JSONL trace log under concurrency.

use std::collections::BTreeMap;
use std::time::Duration;

use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::config::CacheBackend;
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::telemetry::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

#[tokio::test]
async fn a_query_is_traced_from_the_callers_traceparent_down_to_each_model_call_and_search() {
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let mock = MockLlmServer::start(MockScript::replies(vec![
        MockReply::tool_call(
            "search_db",
            json!({"query": "Kestrel headquarters"}).to_string(),
        ),
        MockReply::text("Kestrel Fabrication is in Tampere [kestrel]."),
    ]))
    .await
    .expect("mock starts");
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let base_url = mock.base_url();
    let otlp = receiver.grpc_endpoint();
    let (mut child, endpoint) = spawn_binary_with_env(
        data_dir.path(),
        &[
            "--otlp-endpoint",
            &otlp,
            "--backend",
            "openai",
            "--model",
            "mock-model",
            "--base-url",
            &base_url,
            "--cache",
            "none",
            "--embedder",
            "openai",
            "--embedding-model",
            "mock-embed",
            "--embedding-base-url",
            &base_url,
            "--embedding-dimensions",
            "64",
        ],
        &[("DEEPRECALL_LLM_API_KEY", "test-key")],
    );
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint).await.expect("connects");
    add(
        &mut client,
        "",
        vec![document(
            "kestrel",
            "Kestrel Fabrication is headquartered in Tampere.",
            json!({}),
        )],
    )
    .await;

    let mut request = tonic::Request::new(question("Where is Kestrel Fabrication?"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
            .parse()
            .expect("ascii"),
    );
    let mut stream = client.query(request).await.expect("query").into_inner();
    while stream.message().await.expect("events").is_some() {}

    // The model requests, and the search's embedding request, carried the trace on to the
    // model's server (the document's embedding request belongs to AddDocuments' own trace).
    let requests = mock.requests();
    let of_path = |path: &str| {
        requests
            .iter()
            .filter(|recorded| recorded.path == path)
            .collect::<Vec<_>>()
    };
    let chats = of_path("/v1/chat/completions");
    let embeddings = of_path("/v1/embeddings");
    assert_eq!((chats.len(), embeddings.len()), (2, 2), "{requests:#?}");
    for recorded in chats.iter().chain(&embeddings[1..]) {
        let traceparent = recorded.header("traceparent").expect("traceparent sent");
        assert!(traceparent.contains(TRACE_ID), "{traceparent}");
    }

    // A clean stop flushes the spans still batched.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    // Waited for off the runtime, which must stay free to receive the final export.
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiter")
        .expect("reaped");
    let spans = receiver
        .wait_for_spans(6, Duration::from_secs(15))
        .await
        .expect("spans arrive");
    let spans: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|span| span.trace_id == TRACE_ID)
        .collect();

    let queries = named(&spans, "query");
    assert_eq!(queries.len(), 1, "{spans:#?}");
    let query = queries[0];
    assert_eq!(query.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(query.kind, "server");
    assert_eq!(query.attributes["collection"], json!("default"));
    assert_eq!(query.attributes["searches"], json!(1));
    assert_eq!(query.resource["service.name"], json!("deeprecall"));

    let iterations = named(&spans, "iteration");
    assert_eq!(iterations.len(), 2, "{spans:#?}");
    for iteration in &iterations {
        assert_eq!(iteration.parent_span_id.as_ref(), Some(&query.span_id));
        assert!(iteration.start >= query.start && iteration.end <= query.end);
    }
    let calls = named(&spans, "model.call");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    for call in &calls {
        assert!(
            iterations
                .iter()
                .any(|iteration| call.parent_span_id.as_ref() == Some(&iteration.span_id)),
            "{call:#?}"
        );
        assert_eq!(call.attributes["gen_ai.request.model"], json!("mock-model"));
        assert_eq!(call.attributes["retries"], json!(0));
        assert!(call.attributes["gen_ai.usage.input_tokens"].as_i64() > Some(0));
    }
    let searches = named(&spans, "search");
    assert_eq!(searches.len(), 1, "{spans:#?}");
    let search = searches[0];
    assert_eq!(search.parent_span_id.as_ref(), Some(&iterations[0].span_id));
    assert_eq!(search.attributes["hits"], json!(1));
    assert_eq!(search.attributes["cache_hit"], json!(false));
    assert!(search.end > search.start);
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_queries_caches_and_refusals() {
    let (mut server, port) = TestServer::start_with_metrics(|config| {
        config.limits.requests_per_minute = 1;
        config.limits.burst = 6;
    })
    .await;
    let client = &mut server.client;
    add(
        client,
        "",
        vec![document(
            "k",
            "Kestrel Fabrication is in Tampere.",
            json!({}),
        )],
    )
    .await;
    for _ in 0..3 {
        query_result(client, question("Where is Kestrel Fabrication?")).await;
    }
    let invalid = client
        .query(question(""))
        .await
        .expect_err("an empty query is refused");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats");
    let limited = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect_err("over the burst");
    assert_eq!(limited.code(), Code::ResourceExhausted);

    let text = scrape_metrics(port).await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        r#"deeprecall_rpc_requests_total{method="Query",code="OK"}"#,
        3.0,
    );
    expect(
        r#"deeprecall_rpc_requests_total{method="Query",code="InvalidArgument"}"#,
        1.0,
    );
    expect(
        r#"deeprecall_rpc_requests_total{method="AddDocuments",code="OK"}"#,
        1.0,
    );
    expect(
        r#"deeprecall_rpc_requests_total{method="GetStats",code="ResourceExhausted"}"#,
        1.0,
    );
    expect(
        r#"deeprecall_rate_limited_requests_total{reason="peer"}"#,
        1.0,
    );
    expect(
        r#"deeprecall_query_duration_seconds_count{outcome="complete"}"#,
        1.0,
    );
    expect(
        r#"deeprecall_query_duration_seconds_count{outcome="cached"}"#,
        2.0,
    );
    expect(
        r#"deeprecall_cache_lookups_total{level="result",result="hit"}"#,
        2.0,
    );
    expect(
        r#"deeprecall_cache_lookups_total{level="result",result="miss"}"#,
        1.0,
    );
    expect(r#"deeprecall_documents{collection="default"}"#, 1.0);
    expect("deeprecall_queries_in_flight", 0.0);
    expect("deeprecall_query_iterations_count", 1.0);
    assert!(
        sample(
            &text,
            r#"deeprecall_model_calls_total{model="extractive",role="root"}"#
        )
        .is_some_and(|calls| calls >= 1.0),
        "{text}"
    );
    expect("deeprecall_shed_requests_total", 0.0);
    // The server's own tasks (its accept loop, at least) are alive at every scrape.
    assert!(
        sample(&text, "deeprecall_runtime_alive_tasks").is_some_and(|tasks| tasks >= 1.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_trace_log_has_one_whole_json_object_per_event_under_concurrency() {
    let log_dir = tempfile::tempdir().expect("temporary directory");
    let log_path = log_dir.path().join("trace.jsonl");
    let path = log_path.display().to_string();
    let mut server = TestServer::start_with(|config| {
        config.telemetry.trace_log = path;
        config.cache.backend = CacheBackend::None;
    })
    .await;
    ingest_handbook(&mut server.client).await;
    let calls = (0..40).map(|n| {
        let mut client = server.client.clone();
        async move {
            let mut request = question("Who approves travel expenses?");
            request.context_prefix = format!("caller {n}");
            query_result(&mut client, request).await
        }
    });
    let results = futures::future::join_all(calls).await;
    server.stop().await.expect("clean stop");

    let text = std::fs::read_to_string(&log_path).expect("trace log written");
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut finished = 0;
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).expect("every line is one JSON object");
        let query_id = entry["query_id"].as_str().expect("query id").to_string();
        let event = &entry["event"];
        sequences
            .entry(query_id)
            .or_default()
            .push(event["sequence"].as_u64().expect("sequence"));
        if event["type"] == "result" {
            finished += 1;
        }
    }
    assert!(text.ends_with('\n'));
    assert_eq!(finished, 40, "one result event per query");
    assert_eq!(sequences.len(), 40);
    for result in &results {
        let logged = &sequences[&result.query_id];
        let expected: Vec<u64> = (0..logged.len() as u64).collect();
        assert_eq!(logged, &expected, "events of {} in order", result.query_id);
    }
}
