//! Tests of the loop against a scripted model and an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::*;
use crate::cache::MemoryCache;
use crate::llm::scripted::{ScriptedModel, ScriptedReply};
use crate::llm::{ExtractiveModel, LlmError};
use crate::store::{Hit, SearchRequest};

/// A store that ranks documents by how many query words they contain, and remembers every
/// search it was asked for.
#[derive(Debug, Default)]
struct MemoryStore {
    documents: Vec<(String, String, Map<String, Value>)>,
    searches: Mutex<Vec<SearchRequest>>,
}

impl MemoryStore {
    fn with(documents: &[(&str, &str, Value)]) -> Self {
        MemoryStore {
            documents: documents
                .iter()
                .map(|(id, content, metadata)| {
                    let metadata = metadata.as_object().cloned().unwrap_or_default();
                    (id.to_string(), content.to_string(), metadata)
                })
                .collect(),
            searches: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl DocumentStore for MemoryStore {
    async fn add_documents(
        &self,
        _collection: &str,
        _documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, StoreError> {
        unimplemented!("the engine tests do not write")
    }

    async fn delete_documents(
        &self,
        _collection: &str,
        _ids: Vec<String>,
    ) -> Result<WriteOutcome, StoreError> {
        unimplemented!("the engine tests do not write")
    }

    async fn delete_collection(&self, _name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        unimplemented!("the engine tests do not write")
    }

    async fn get_documents(
        &self,
        _collection: &str,
        _ids: Vec<String>,
    ) -> Result<Vec<crate::store::StoredDocument>, StoreError> {
        unimplemented!("the engine tests read by search")
    }

    async fn list_documents(
        &self,
        _collection: &str,
        _after: Option<String>,
        _limit: usize,
    ) -> Result<Vec<crate::store::StoredDocument>, StoreError> {
        unimplemented!("the engine tests read by search")
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, StoreError> {
        self.searches.lock().push(request.clone());
        let terms = crate::text::content_terms(&request.query);
        let mut hits: Vec<Hit> = self
            .documents
            .iter()
            .filter(|(_, _, metadata)| request.filter.matches(metadata))
            .map(|(id, content, metadata)| {
                let words: Vec<String> = crate::text::words(content).collect();
                let score = terms.iter().filter(|term| words.contains(term)).count();
                Hit {
                    id: id.clone(),
                    content: content.clone(),
                    metadata: metadata.clone(),
                    score: score as f64,
                }
            })
            .filter(|hit| hit.score > 0.0)
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(request.top_k);
        Ok(hits)
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        Ok((name == "default").then(|| CollectionInfo {
            name: name.to_string(),
            document_count: self.documents.len() as u64,
            version: 1,
        }))
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        Ok(self.collection("default").await?.into_iter().collect())
    }
}

fn corpus() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::with(&[
        (
            "zephyr",
            "The Zephyr blender is manufactured by Klaxon Industries.",
            json!({"team": "kitchen", "year": 2021}),
        ),
        (
            "klaxon",
            "Klaxon Industries is headquartered in Porto.",
            json!({"team": "suppliers", "year": 2019}),
        ),
        (
            "bramble",
            "Bramble Works is headquartered in Oslo.",
            json!({"team": "suppliers", "year": 2022}),
        ),
    ]))
}

fn memory_level(name: &'static str) -> crate::cache::CacheLevel {
    crate::cache::CacheLevel {
        name,
        cache: Arc::new(MemoryCache::new(Default::default())),
        ttl: Duration::from_secs(60),
    }
}

fn engine_with(store: Arc<MemoryStore>, model: Arc<dyn ChatModel>) -> Engine {
    Engine::new(
        EngineParts {
            store,
            sub_model: model.clone(),
            model,
            prices: Default::default(),
            results: memory_level("result"),
            searches: memory_level("search"),
        },
        EngineConfig::default(),
    )
}

fn question(query: &str) -> QueryRequest {
    QueryRequest {
        query: query.to_string(),
        ..QueryRequest::default()
    }
}

/// Runs a query and returns its result and every event it streamed.
async fn run_collecting(engine: &Engine, request: QueryRequest) -> (QueryResult, Vec<TraceEvent>) {
    let prepared = engine.prepare(request, None).await.expect("prepared");
    let (sink, mut receiver) = EventSink::channel(1024, prepared.started);
    let result = engine
        .run(prepared, sink, CancellationToken::new())
        .await
        .expect("result");
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    (result, events)
}

#[tokio::test]
async fn a_submitted_answer_keeps_only_citations_that_searches_returned() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::tool(
                "submit",
                json!({"answer": "Klaxon [zephyr] [invented]", "citations": ["zephyr", "invented"], "certainty": 0.8}),
            ),
        ],
    ));
    let engine = engine_with(corpus(), model);
    let (result, events) = run_collecting(&engine, question("Who makes the Zephyr?")).await;

    assert_eq!(result.citations, vec!["zephyr"]);
    assert_eq!(result.answer, "Klaxon [zephyr]");
    assert_eq!(result.confidence, 0.8);
    assert!(!result.partial);
    assert_eq!(result.sources[0].id, "zephyr");
    assert_eq!(result.usage.llm_calls(), 2);
    assert_eq!(result.usage.search_calls, 1);

    let sequences: Vec<u32> = events.iter().map(|event| event.sequence).collect();
    assert_eq!(sequences, (0..events.len() as u32).collect::<Vec<_>>());
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Result(_))
    ));
    let results = events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::Result(_)))
        .count();
    assert_eq!(results, 1);
}

#[tokio::test]
async fn tool_calls_of_one_turn_run_and_answer_in_order() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tools(&[
                ("search_db", json!({"query": "zephyr"})),
                ("search_db", json!({"query": "klaxon"})),
            ]),
            ScriptedModel::text("Porto."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let (result, _) = run_collecting(&engine, question("Where?")).await;
    assert_eq!(result.answer, "Porto.");
    assert_eq!(result.usage.search_calls, 2);

    let second = &model.requests()[1];
    let tool_results: Vec<&str> = second
        .messages
        .iter()
        .filter_map(|message| message.tool_call_id.as_deref())
        .collect();
    assert_eq!(tool_results, vec!["call_0", "call_1"]);
}

#[tokio::test]
async fn a_model_filter_narrows_but_never_widens_the_callers() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool(
                "search_db",
                json!({"query": "headquartered", "filters": {"team": "kitchen"}}),
            ),
            ScriptedModel::text("done"),
        ],
    ));
    let store = corpus();
    let engine = engine_with(store.clone(), model);
    let mut request = question("Where are suppliers headquartered?");
    request.filters = json!({"team": "suppliers"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let (result, _) = run_collecting(&engine, request).await;

    // Team can be "suppliers" and "kitchen" at once for no document: nothing comes back.
    assert!(result.sources.is_empty());
    let searches = store.searches.lock();
    let filter = &searches[0].filter;
    let supplier = json!({"team": "suppliers"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let kitchen = json!({"team": "kitchen"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(!filter.matches(&supplier) && !filter.matches(&kitchen));
    let conditions = Value::Object(filter.to_json())["$and"].clone();
    assert_eq!(conditions.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn the_search_budget_ends_the_run_with_a_partial_answer() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
        ],
    ));
    let engine = engine_with(corpus(), model);
    let mut request = question("Who manufactures the Zephyr blender?");
    request.budget.max_search_calls = Some(1);
    let (result, events) = run_collecting(&engine, request).await;

    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::SearchCalls));
    assert!(
        result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("max_search_calls")
    );
    assert_eq!(result.citations, vec!["zephyr"]);
    assert!(result.answer.contains("Klaxon Industries"));
    assert_eq!(result.usage.search_calls, 1);
    assert_eq!(
        result.usage.llm_calls(),
        2,
        "usage is reported for the stopped run"
    );
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::BudgetWarning(warning) if warning.resource == BudgetResource::SearchCalls
    )));
}

#[tokio::test]
async fn the_iteration_budget_is_checked_before_each_model_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
            ScriptedModel::text("Klaxon makes it [zephyr], as far as the search got."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr?");
    request.budget.max_iterations = Some(2);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Iterations));
    assert_eq!(result.budget.used.iterations, 2);

    // The third call is not an iteration but the one summing-up call, without tools.
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[2].tools.is_empty());
    assert!(requests[2].messages[1].content.contains("[zephyr]"));
    assert_eq!(
        result.answer,
        "Klaxon makes it [zephyr], as far as the search got."
    );
    assert_eq!(result.citations, vec!["zephyr"]);
    assert_eq!(
        result.usage.llm_calls(),
        3,
        "the summing-up call is counted"
    );
}

#[tokio::test]
async fn a_token_budget_too_small_for_the_next_prompt_stops_before_the_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedReply::Respond(crate::llm::ChatResponse {
                content: String::new(),
                tool_calls: vec![crate::llm::ToolCall {
                    id: "c".into(),
                    name: "search_db".into(),
                    arguments: json!({"query": "zephyr"}).to_string(),
                }],
                usage: crate::llm::TokenUsage {
                    input_tokens: 850,
                    output_tokens: 50,
                },
                cost_usd: None,
            }),
            ScriptedModel::text("never asked"),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr blender?");
    // The first call fits; it reports 900 tokens, and the second prompt (system prompt, tools
    // and a search result, several hundred tokens) cannot fit in the 100 left.
    request.budget.max_tokens = Some(1_000);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Tokens));
    assert_eq!(
        model.requests().len(),
        1,
        "the call that could not fit was not made"
    );
    assert_eq!(result.usage.llm_calls(), 1);
    assert_eq!(result.budget.used.tokens, 900);
}

#[tokio::test]
async fn completions_are_capped_to_the_token_budget_left() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![ScriptedModel::text("done")],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr?");
    request.budget.max_tokens = Some(2_000);
    run_collecting(&engine, request).await;
    let cap = model.requests()[0].max_tokens.expect("a cap");
    assert!(cap < 2_000 && cap > 500, "{cap}");
}

#[tokio::test]
async fn listed_prices_give_the_cost_of_models_that_report_none() {
    let model = Arc::new(ScriptedModel::new(
        "priced",
        Duration::ZERO,
        vec![ScriptedReply::Respond(crate::llm::ChatResponse {
            content: "done".into(),
            tool_calls: Vec::new(),
            usage: crate::llm::TokenUsage {
                input_tokens: 1_000,
                output_tokens: 100,
            },
            cost_usd: None,
        })],
    ));
    let engine = Engine::new(
        EngineParts {
            store: corpus(),
            sub_model: model.clone(),
            model,
            prices: crate::llm::PriceTable::new(vec![("priced".into(), 2.0, 10.0)]),
            results: memory_level("result"),
            searches: memory_level("search"),
        },
        EngineConfig::default(),
    );
    let (result, _) = run_collecting(&engine, question("Zephyr?")).await;
    // 1,000 × $2/M + 100 × $10/M = $0.003
    assert!((result.usage.cost_usd() - 0.003).abs() < 1e-9);
    assert!((result.budget.used.cost_usd - 0.003).abs() < 1e-9);
}

#[tokio::test]
async fn the_time_budget_aborts_a_hanging_model_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedReply::Hang,
        ],
    ));
    let engine = engine_with(corpus(), model);
    let mut request = question("Zephyr blender maker?");
    request.budget.max_time = Some(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let (result, _) = run_collecting(&engine, request).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Time));
    assert_eq!(result.citations, vec!["zephyr"]);
}

#[tokio::test]
async fn malformed_tool_calls_get_errors_until_the_limit() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::raw_tool("search_db", "{not json"),
            ScriptedModel::raw_tool("browse", "{}"),
            ScriptedModel::raw_tool("search_db", r#"{"query": ""}"#),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let (result, _) = run_collecting(&engine, question("Zephyr?")).await;
    assert!(result.partial);
    assert!(
        result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("3 turns in a row")
    );
    let last = model.requests().pop().expect("requests");
    let feedback = &last.messages.last().expect("messages").content;
    assert!(feedback.contains("unknown tool"), "{feedback}");
}

#[tokio::test]
async fn one_failed_prompt_does_not_sink_a_batched_sub_model_call() {
    let root = Arc::new(ScriptedModel::new(
        "root",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("llm_query_batched", json!({"prompts": ["a", "b"]})),
            ScriptedModel::text("done"),
        ],
    ));
    let sub = Arc::new(ScriptedModel::new(
        "sub",
        Duration::ZERO,
        vec![
            ScriptedModel::text("first digest"),
            ScriptedReply::Fail(LlmError::Unavailable("boom".into())),
        ],
    ));
    let engine = Engine::new(
        EngineParts {
            store: corpus(),
            model: root.clone(),
            sub_model: sub,
            prices: Default::default(),
            results: memory_level("result"),
            searches: memory_level("search"),
        },
        EngineConfig::default(),
    );
    let (result, events) = run_collecting(&engine, question("Digest?")).await;
    assert_eq!(result.answer, "done");
    let requests = root.requests();
    let tool_result = &requests[1].messages.last().expect("tool result").content;
    let parsed: Value = serde_json::from_str(tool_result).expect("json");
    assert_eq!(parsed["responses"][0], "first digest");
    assert!(
        parsed["responses"][1]
            .as_str()
            .unwrap_or("")
            .starts_with("error:")
    );
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::SubLlmCall(record) if record.prompts == 2 && record.failed == 1
    )));
    assert_eq!(result.usage.models.len(), 2);
}

#[tokio::test]
async fn a_model_that_fails_at_once_is_an_error() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![ScriptedReply::Fail(LlmError::Unavailable("down".into()))],
    ));
    let engine = engine_with(corpus(), model);
    let prepared = engine
        .prepare(question("Zephyr?"), None)
        .await
        .expect("prepared");
    let outcome = engine
        .run(
            prepared,
            EventSink::discard(std::time::Instant::now()),
            CancellationToken::new(),
        )
        .await;
    let Err(EngineError::Shared(error)) = outcome else {
        panic!("expected an error, got {outcome:?}");
    };
    assert!(matches!(*error, EngineError::Llm(LlmError::Unavailable(_))));
}

#[tokio::test]
async fn the_extractive_model_follows_the_bridge_entity_and_cites_both_hops() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let (result, events) = run_collecting(
        &engine,
        question("Which city is the maker of the Zephyr blender headquartered in?"),
    )
    .await;
    assert!(result.answer.contains("Porto"), "{}", result.answer);
    assert_eq!(result.citations, vec!["zephyr", "klaxon"]);
    assert!(!result.partial);
    let searches: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.query.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(searches[1], "Klaxon Industries");
}

#[tokio::test]
async fn a_repeated_query_is_served_from_the_cache() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let (first, _) = run_collecting(&engine, question("Zephyr blender maker?")).await;
    let (second, events) = run_collecting(&engine, question("Zephyr blender maker?")).await;
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.answer, second.answer);
    assert_eq!(events.len(), 1);

    let mut fresh = question("Zephyr blender maker?");
    fresh.skip_cache = true;
    let (third, _) = run_collecting(&engine, fresh).await;
    assert!(!third.cached);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let cases = [
        (question("   "), "query"),
        (question(&"x".repeat(8 * 1024 + 1)), "query"),
        (
            QueryRequest {
                top_k: Some(101),
                ..question("q")
            },
            "top_k",
        ),
        (
            QueryRequest {
                filters: json!({"year": {"$near": 3}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..question("q")
            },
            "filters",
        ),
        (
            QueryRequest {
                collection: Some("bad name!".into()),
                ..question("q")
            },
            "collection",
        ),
    ];
    for (request, expected) in cases {
        match engine.prepare(request, None).await {
            Err(EngineError::InvalidArgument { field, .. }) => assert_eq!(field, expected),
            other => panic!("expected invalid {expected}, got {other:?}"),
        }
    }
    let missing = QueryRequest {
        collection: Some("elsewhere".into()),
        ..question("q")
    };
    assert!(matches!(
        engine.prepare(missing, None).await,
        Err(EngineError::Store(StoreError::CollectionNotFound(_)))
    ));
}

/// A model that answers in plain text after a pause, counting how many calls overlap.
#[derive(Debug, Default)]
struct GaugeModel {
    in_flight: std::sync::atomic::AtomicUsize,
    most_in_flight: std::sync::atomic::AtomicUsize,
    started: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ChatModel for GaugeModel {
    fn name(&self) -> &str {
        "gauge"
    }

    async fn chat(
        &self,
        _request: crate::llm::ChatRequest,
    ) -> Result<crate::llm::ChatResponse, LlmError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.started.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most_in_flight.fetch_max(now, SeqCst);
        // Decrements even when the call is dropped mid-sleep.
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.in_flight);
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(crate::llm::ChatResponse {
            content: "answer".into(),
            tool_calls: Vec::new(),
            usage: Default::default(),
            cost_usd: None,
        })
    }
}

fn batch_of(count: usize) -> Vec<Result<QueryRequest, EngineError>> {
    (0..count)
        .map(|n| Ok(question(&format!("question {n}"))))
        .collect()
}

#[tokio::test]
async fn a_batch_never_runs_more_than_its_concurrency() {
    use futures::StreamExt;
    let model = Arc::new(GaugeModel::default());
    let engine = engine_with(corpus(), model.clone());
    let items: Vec<(usize, Result<QueryResult, EngineError>)> = engine
        .query_batch(
            batch_of(12),
            Arc::from("tester"),
            Arc::new(|_: &PreparedQuery| tracing::Span::none()),
            3,
            None,
            CancellationToken::new(),
        )
        .collect()
        .await;
    let mut indices: Vec<usize> = items.iter().map(|(index, _)| *index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    assert!(items.iter().all(|(_, outcome)| outcome.is_ok()));
    assert_eq!(
        model
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

#[tokio::test]
async fn dropping_a_batch_stream_stops_the_remaining_work() {
    use futures::StreamExt;
    use std::sync::atomic::Ordering::SeqCst;
    let model = Arc::new(GaugeModel::default());
    let engine = engine_with(corpus(), model.clone());
    let mut stream = Box::pin(engine.query_batch(
        batch_of(50),
        Arc::from("tester"),
        Arc::new(|_: &PreparedQuery| tracing::Span::none()),
        4,
        None,
        CancellationToken::new(),
    ));
    assert!(stream.next().await.is_some());
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        model.in_flight.load(SeqCst),
        0,
        "in-flight calls were aborted"
    );
    assert!(
        model.started.load(SeqCst) <= 8,
        "no new work started after the drop"
    );
}

#[tokio::test]
async fn a_repeated_search_is_served_from_the_search_cache_until_skipped() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("first"),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("second"),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("third"),
        ],
    ));
    let store = corpus();
    let engine = engine_with(store.clone(), model);
    let search_hit = |events: &[TraceEvent]| {
        events.iter().find_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.cache_hit),
            _ => None,
        })
    };
    let (_, first) = run_collecting(&engine, question("Who makes the Zephyr?")).await;
    let (second, events) = run_collecting(&engine, question("Which firm makes the Zephyr?")).await;
    assert_eq!(search_hit(&first), Some(false));
    assert_eq!(search_hit(&events), Some(true));
    assert_eq!(second.sources[0].id, "zephyr");
    assert_eq!(
        store.searches.lock().len(),
        1,
        "the store was searched once"
    );

    let mut fresh = question("And who makes the Zephyr?");
    fresh.skip_cache = true;
    let (_, events) = run_collecting(&engine, fresh).await;
    assert_eq!(search_hit(&events), Some(false));
    let stats = engine.stats().await.unwrap();
    assert_eq!((stats.search_cache.hits, stats.search_cache.misses), (1, 1));
}

#[tokio::test]
async fn without_a_search_cache_every_search_reaches_the_store() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("done"),
        ],
    ));
    let store = corpus();
    let engine = Engine::new(
        EngineParts {
            store: store.clone(),
            sub_model: model.clone(),
            model,
            prices: Default::default(),
            results: memory_level("result"),
            searches: crate::cache::CacheLevel {
                name: "search",
                cache: Arc::new(crate::cache::NoCache),
                ttl: Duration::from_secs(60),
            },
        },
        EngineConfig::default(),
    );

    let (result, events) = run_collecting(&engine, question("Who makes the Zephyr?")).await;

    let hits: Vec<bool> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.cache_hit),
            _ => None,
        })
        .collect();
    assert_eq!(hits, [false, false]);
    assert_eq!(
        store.searches.lock().len(),
        2,
        "both searches reached the store"
    );
    assert_eq!(result.sources[0].id, "zephyr");
}

#[tokio::test]
async fn identical_concurrent_queries_share_one_run() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::from_millis(100),
        vec![ScriptedModel::text("the one answer")],
    ));
    let engine = engine_with(corpus(), model.clone());
    let runs = (0..100).map(|_| {
        let engine = engine.clone();
        async move {
            let prepared = engine.prepare(question("Zephyr?"), None).await.unwrap();
            let sink = EventSink::discard(prepared.started);
            engine.run(prepared, sink, CancellationToken::new()).await
        }
    });
    let results = futures::future::join_all(runs).await;
    assert_eq!(model.requests().len(), 1, "one model call for 100 queries");
    let coalesced = results
        .iter()
        .filter(|result| result.as_ref().unwrap().coalesced)
        .count();
    assert_eq!(coalesced, 99);
    assert!(
        results
            .iter()
            .all(|result| result.as_ref().unwrap().answer == "the one answer")
    );
    let usage = engine.stats().await.unwrap().usage;
    assert_eq!(
        (usage.queries, usage.coalesced_queries, usage.llm_calls),
        (100, 99, 1)
    );
}

#[tokio::test]
async fn a_shared_run_outlives_its_leader_but_not_all_its_callers() {
    use std::sync::atomic::Ordering::SeqCst;
    let model = Arc::new(GaugeModel::default());
    let engine = engine_with(corpus(), model.clone());
    let start = |cancel: CancellationToken| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let prepared = engine.prepare(question("Zephyr?"), None).await.unwrap();
            let sink = EventSink::discard(prepared.started);
            engine.run(prepared, sink, cancel).await
        })
    };
    let leader_cancel = CancellationToken::new();
    let leader = start(leader_cancel.clone());
    while model.started.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let follower = start(CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(5)).await;
    leader_cancel.cancel();
    assert!(matches!(leader.await.unwrap(), Err(EngineError::Cancelled)));
    let shared = follower.await.unwrap().unwrap();
    assert!(shared.coalesced);
    assert_eq!(shared.answer, "answer");
    assert_eq!(model.started.load(SeqCst), 1);

    // When every caller leaves, the run stops and its model call is dropped.
    let first_cancel = CancellationToken::new();
    let second_cancel = CancellationToken::new();
    let prepared = engine.prepare(question("Klaxon?"), None).await.unwrap();
    let key = prepared.cache_key.clone();
    let first = start_keyed(&engine, "Klaxon?", first_cancel.clone());
    while model.in_flight.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let second = start_keyed(&engine, "Klaxon?", second_cancel.clone());
    tokio::time::sleep(Duration::from_millis(2)).await;
    first_cancel.cancel();
    second_cancel.cancel();
    assert!(first.await.unwrap().is_err() && second.await.unwrap().is_err());
    assert_run_stopped(&engine, &model, &key).await;
}

#[tokio::test]
async fn a_leader_dropped_mid_run_hands_the_run_on() {
    use std::sync::atomic::Ordering::SeqCst;
    let model = Arc::new(GaugeModel::default());
    let engine = engine_with(corpus(), model.clone());

    // Dropped, not cancelled: its task is aborted, as a response stream is dropped.
    let leader = start_keyed(&engine, "Zephyr?", CancellationToken::new());
    while model.started.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let follower = start_keyed(&engine, "Zephyr?", CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(5)).await;
    leader.abort();
    let shared = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower got the run's outcome")
        .unwrap()
        .unwrap();
    assert!(shared.coalesced);
    assert_eq!(shared.answer, "answer");
    assert_eq!(
        model.started.load(SeqCst),
        1,
        "the run was not started again"
    );

    // Alone, the dropped leader's run stops at once and is still accounted for.
    let before = engine.stats().await.unwrap().usage.queries;
    let prepared = engine.prepare(question("Klaxon?"), None).await.unwrap();
    let key = prepared.cache_key.clone();
    let leader = start_keyed(&engine, "Klaxon?", CancellationToken::new());
    while model.in_flight.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    assert_run_stopped(&engine, &model, &key).await;
    assert_eq!(engine.stats().await.unwrap().usage.queries, before + 1);
}

/// Checks, shortly after every caller of the run under `key` left, that its model call was
/// dropped and its flight is gone.
async fn assert_run_stopped(engine: &Engine, model: &GaugeModel, key: &CacheKey) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        model.in_flight.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the model call was dropped"
    );
    assert!(
        !engine.inner.flights.lock().contains_key(key),
        "the flight ended"
    );
}

fn start_keyed(
    engine: &Engine,
    text: &str,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<QueryResult, EngineError>> {
    let engine = engine.clone();
    let text = text.to_string();
    tokio::spawn(async move {
        let prepared = engine.prepare(question(&text), None).await.unwrap();
        let sink = EventSink::discard(prepared.started);
        engine.run(prepared, sink, cancel).await
    })
}
