//! Query and QueryBatch over gRPC.

use std::collections::HashSet;
use std::time::Duration;

use deeprecall::api::pb;
use deeprecall::api::pb::query_event::Event;
use deeprecall::config::{Backend, CacheBackend, Config};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use serde_json::{Value, json};

use crate::common::*;

/// A sample question: the fact its answer must state, and the documents holding it.
struct SampleQuestion {
    question: String,
    answer_contains: String,
    supporting_ids: Vec<String>,
}

fn sample_questions() -> Vec<SampleQuestion> {
    deeprecall::cli::eval::dataset::load(&examples().join("questions.json"))
        .expect("questions parse")
        .into_iter()
        .map(|question| SampleQuestion {
            answer_contains: question.answers[0].clone(),
            question: question.question,
            supporting_ids: question.supporting_ids,
        })
        .collect()
}

#[tokio::test]
async fn query_stream_ends_with_exactly_one_result_after_events_in_order() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let question = &sample_questions()[0];
    let events = query_events(&mut server.client, question_of(&question.question)).await;

    let sequences: Vec<u32> = events.iter().map(|event| event.sequence).collect();
    assert_eq!(sequences, (0..events.len() as u32).collect::<Vec<_>>());
    let results = events
        .iter()
        .filter(|event| matches!(event.event, Some(Event::Result(_))))
        .count();
    assert_eq!(results, 1);
    assert!(matches!(
        events.last().and_then(|e| e.event.as_ref()),
        Some(Event::Result(_))
    ));
    assert!(matches!(events[0].event, Some(Event::StepStarted(_))));
    assert!(
        events
            .iter()
            .any(|event| matches!(event.event, Some(Event::Search(_))))
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event.event, Some(Event::LlmCall(_))))
    );

    let elapsed: Vec<f64> = events.iter().map(|event| event.elapsed_seconds).collect();
    assert!(elapsed.windows(2).all(|pair| pair[0] <= pair[1]));
    let searches: Vec<u32> = events
        .iter()
        .map(|event| {
            event
                .budget_used
                .as_ref()
                .expect("budget on every event")
                .search_calls
        })
        .collect();
    assert!(searches.windows(2).all(|pair| pair[0] <= pair[1]));
}

fn question_of(text: &str) -> pb::QueryRequest {
    question(text)
}

#[tokio::test]
async fn the_multi_hop_question_is_answered_with_both_hops_cited() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let sample = &sample_questions()[0];
    assert!(sample.question.starts_with("Which city is the maker of"));

    let result = query_result(&mut server.client, question(&sample.question)).await;
    assert!(
        result.answer.contains(&sample.answer_contains),
        "answer {:?} lacks {:?}",
        result.answer,
        sample.answer_contains
    );
    for id in &sample.supporting_ids {
        assert!(
            result.citations.contains(id),
            "{id} not cited in {:?}",
            result.citations
        );
        assert!(result.answer.contains(&format!("[{id}]")));
    }
    assert!(!result.partial);
    assert!(result.confidence > 0.0 && result.confidence <= 1.0);
    let first: Vec<&str> = result
        .sources
        .iter()
        .take(result.citations.len())
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(first, result.citations, "cited sources come first");
}

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(20);

/// A server whose model is the scripted mock, without a result cache.
async fn server_with_mock(mock: &MockLlmServer, configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = deeprecall::secret::Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        configure(config);
    })
    .await
}

fn tool_call(name: &str, arguments: Value) -> MockReply {
    MockReply::tool_call(name, arguments.to_string())
}

/// The Falcon project's three release notes, by team and year.
fn falcon_notes() -> Vec<pb::Document> {
    vec![
        document(
            "a",
            "The Falcon project ships in March.",
            json!({"team": "red", "year": 2021}),
        ),
        document(
            "b",
            "The Falcon project ships in April.",
            json!({"team": "blue", "year": 2023}),
        ),
        document(
            "c",
            "The Falcon project ships in May.",
            json!({"team": "blue", "year": 2019}),
        ),
    ]
}

/// The hit ids of every search event, in order.
fn searched_ids(events: &[pb::QueryEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|event| match &event.event {
            Some(Event::Search(search)) => {
                Some(search.hits.iter().map(|hit| hit.id.clone()).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn cited_sources_come_first_in_citation_order_then_the_rest_by_score() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        tool_call("search_db", json!({"query": "Falcon project ships March"})),
        tool_call(
            "submit",
            json!({"answer": "May [c], or April [b].", "citations": ["c", "b"]}),
        ),
    ]))
    .await
    .unwrap();
    let mut server = server_with_mock(&mock, |_| {}).await;
    add(&mut server.client, "", falcon_notes()).await;
    let result = query_result(&mut server.client, question("When does Falcon ship?")).await;

    let ids: Vec<&str> = result.sources.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    // The search ranked "a" (it names March) above the two cited ones.
    assert!(result.sources[2].score > result.sources[0].score);
    assert!(result.sources[2].score > result.sources[1].score);
}

#[tokio::test]
async fn the_models_filters_narrow_the_callers_but_never_widen_them() {
    let mock = MockLlmServer::start(MockScript::replies(vec![
        tool_call(
            "search_db",
            json!({"query": "Falcon project ships", "filters": {"year": {"$gte": 2020}}}),
        ),
        tool_call(
            "search_db",
            json!({"query": "Falcon project ships", "filters": {"team": "red"}}),
        ),
        tool_call("search_db", json!({"query": "Falcon project ships"})),
        MockReply::text("April [b]."),
    ]))
    .await
    .unwrap();
    let mut server = server_with_mock(&mock, |_| {}).await;
    add(&mut server.client, "", falcon_notes()).await;
    let mut request = question("When does Falcon ship?");
    request.filters = Some(structure(json!({"team": "blue"})));
    let events = query_events(&mut server.client, request).await;

    let searches = searched_ids(&events);
    assert_eq!(
        searches,
        [
            vec!["b".to_string()],
            // Red and blue at once: nothing, never the red team's note.
            vec![],
            vec!["b".to_string(), "c".to_string()],
        ]
    );
}

#[tokio::test]
async fn a_batch_whose_caller_leaves_stops_its_remaining_queries() {
    // Every model call hangs: a query ends only when it is stopped.
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
        .await
        .unwrap();
    let mut server = server_with_mock(&mock, |_| {}).await;
    add(&mut server.client, "", falcon_notes()).await;
    let queries = (0..6)
        .map(|n| question(&format!("When does Falcon ship, take {n}?")))
        .collect();
    let stream = server
        .client
        .query_batch(pb::QueryBatchRequest {
            queries,
            max_concurrency: 2,
        })
        .await
        .expect("batch accepted")
        .into_inner();
    tokio::time::timeout(HANG, async {
        while mock.request_count() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("two queries reached the model");
    drop(stream);

    for _ in 0..2 {
        assert!(
            mock.wait_for_abandoned_request(HANG).await.is_some(),
            "a running query was stopped"
        );
    }
    assert_eq!(mock.request_count(), 2, "no further query started");
}

#[tokio::test]
async fn most_sample_questions_are_answered() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let questions = sample_questions();
    let mut answered = Vec::new();
    for sample in &questions {
        let result = query_result(&mut server.client, question(&sample.question)).await;
        if result.answer.contains(&sample.answer_contains) {
            answered.push(sample.question.as_str());
        }
    }
    assert!(
        answered.len() * 10 >= questions.len() * 9,
        "only {} of {} answered: {answered:?}",
        answered.len(),
        questions.len()
    );
}

#[tokio::test]
async fn the_callers_filters_bound_every_search() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![
            document(
                "a",
                "The Falcon project ships in March.",
                json!({"team": "red", "year": 2021}),
            ),
            document(
                "b",
                "The Falcon project ships in April.",
                json!({"team": "blue", "year": 2023}),
            ),
            document(
                "c",
                "The Falcon project ships in May.",
                json!({"team": "blue", "year": 2019}),
            ),
        ],
    )
    .await;
    let mut request = question("When does the Falcon project ship?");
    request.filters = Some(structure(json!({"team": "blue", "year": {"$gte": 2020}})));
    let events = query_events(&mut server.client, request).await;

    let mut seen = HashSet::new();
    for event in &events {
        if let Some(Event::Search(search)) = &event.event {
            assert!(search.filters.is_some(), "the effective filter is reported");
            seen.extend(search.hits.iter().map(|hit| hit.id.clone()));
        }
    }
    assert_eq!(seen, HashSet::from(["b".to_string()]));
    let Some(Event::Result(result)) = events.last().and_then(|e| e.event.clone()) else {
        panic!("no result");
    };
    assert!(result.sources.iter().all(|source| source.id == "b"));
}

#[tokio::test]
async fn a_spent_search_budget_yields_a_partial_result_not_an_error() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let sample = &sample_questions()[0];
    let mut request = question(&sample.question);
    request.budget = Some(pb::Budget {
        max_search_calls: Some(1),
        ..pb::Budget::default()
    });
    let result = query_result(&mut server.client, request).await;
    assert!(result.partial);
    assert!(
        result.error.contains("max_search_calls"),
        "{}",
        result.error
    );
    let status = result.budget_status.expect("budget status");
    assert_eq!(status.exhausted, pb::BudgetResource::SearchCalls as i32);
    assert_eq!(status.used.expect("used").search_calls, 1);
    assert!(
        !result.citations.is_empty(),
        "the partial answer cites what was found"
    );
    assert!(result.usage.expect("usage").llm_calls >= 2);
}

#[tokio::test]
async fn a_grpc_deadline_tightens_the_time_budget() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Deadlines are tight.", json!({}))],
    )
    .await;
    let mut request = tonic::Request::new(question("Are deadlines tight?"));
    request.set_timeout(std::time::Duration::from_secs(5));
    let mut stream = server
        .client
        .query(request)
        .await
        .expect("accepted")
        .into_inner();
    let mut result = None;
    while let Some(event) = stream.message().await.expect("clean stream") {
        if let Some(Event::Result(done)) = event.event {
            result = Some(done);
        }
    }
    let limits = result
        .and_then(|result| result.budget_status)
        .and_then(|status| status.limits)
        .expect("limits");
    let max_time = limits.max_time_seconds.expect("time limit");
    assert!(max_time <= 5.0 && max_time > 4.0, "{max_time}");
}

#[tokio::test]
async fn a_repeated_query_hits_the_cache_until_documents_change() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    let first = query_result(&mut server.client, question("Where is Kestrel?")).await;
    let second = query_result(&mut server.client, question("Where is Kestrel?")).await;
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.answer, second.answer);
    assert_ne!(first.query_id, second.query_id);

    let mut bypass = question("Where is Kestrel?");
    bypass.skip_cache = true;
    assert!(!query_result(&mut server.client, bypass).await.cached);

    add(
        &mut server.client,
        "",
        vec![document("b", "Kestrel moved to Oulu.", json!({}))],
    )
    .await;
    let after_write = query_result(&mut server.client, question("Where is Kestrel?")).await;
    assert!(
        !after_write.cached,
        "a write makes older entries unreachable"
    );

    let cleared = server
        .client
        .clear_cache(pb::ClearCacheRequest::default())
        .await
        .expect("cleared")
        .into_inner();
    assert!(cleared.entries_removed >= 1);
    let stats = server
        .client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let cache = stats.cache.expect("cache stats");
    assert_eq!(cache.entries, 0);
    assert!(cache.hits >= 1);
    let usage = stats.usage.expect("usage");
    assert_eq!(usage.queries, 4);
    assert_eq!(usage.cached_queries, 1);
}

#[tokio::test]
async fn batch_items_carry_their_index_and_a_failing_item_does_not_stop_the_rest() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let mut queries: Vec<pb::QueryRequest> = sample_questions()
        .iter()
        .map(|sample| question(&sample.question))
        .collect();
    queries.insert(2, question("   "));
    let mut missing = question("Anything?");
    missing.collection = "nowhere".into();
    queries.push(missing);
    let total = queries.len();

    let mut stream = server
        .client
        .query_batch(pb::QueryBatchRequest {
            queries,
            max_concurrency: 3,
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let mut items = Vec::new();
    while let Some(item) = stream.message().await.expect("clean stream") {
        items.push(item);
    }
    let indices: HashSet<u32> = items.iter().map(|item| item.index).collect();
    assert_eq!(items.len(), total);
    assert_eq!(indices, (0..total as u32).collect());
    for item in &items {
        match (&item.outcome, item.index) {
            (Some(pb::query_batch_item::Outcome::Error(error)), 2) => {
                assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
                assert!(
                    error.message.starts_with("queries[2].query"),
                    "{}",
                    error.message
                );
            }
            (Some(pb::query_batch_item::Outcome::Error(error)), index)
                if index as usize == total - 1 =>
            {
                assert_eq!(error.code, tonic::Code::NotFound as i32);
            }
            (Some(pb::query_batch_item::Outcome::Result(result)), _) => {
                assert!(!result.answer.is_empty());
            }
            other => panic!("unexpected item {other:?}"),
        }
    }
}
