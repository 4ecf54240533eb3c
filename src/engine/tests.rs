//! Tests of the loop against a scripted model and an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::*;
use crate::cache::MemoryCache;
use crate::engine::events::SubModelCallRecord;
use crate::llm::scripted::{ScriptedModel, ScriptedReply};
use crate::llm::{ExtractiveModel, LlmError};
use crate::store::{Hit, SearchRequest};

/// A store that ranks documents by how many query words they contain, and remembers every
/// search it was asked for.
#[derive(Debug, Default)]
struct MemoryStore {
    documents: Vec<(String, String, Map<String, Value>)>,
    searches: Mutex<Vec<SearchRequest>>,
    /// What [`DocumentStore::ranking_id`] says.
    ranking: String,
    /// Why [`DocumentStore::check_reachable`] fails, if it does.
    unreachable: Option<String>,
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
            ranking: String::new(),
            unreachable: None,
        }
    }
}

#[async_trait]
impl DocumentStore for MemoryStore {
    fn embedder_id(&self) -> String {
        "test-embedder".into()
    }

    fn ranking_id(&self) -> String {
        self.ranking.clone()
    }

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

    async fn check_reachable(&self) -> Result<(), StoreError> {
        match &self.unreachable {
            Some(why) => Err(StoreError::Unavailable(why.clone())),
            None => Ok(()),
        }
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

/// The parts of an engine over `store`, with memory caches and no reranker.
fn parts(
    store: Arc<dyn DocumentStore>,
    model: Arc<dyn ChatModel>,
    sub_model: Arc<dyn ChatModel>,
) -> EngineParts {
    EngineParts {
        store,
        model,
        sub_model,
        prices: Default::default(),
        results: memory_level("result"),
        searches: memory_level("search"),
        rerank: None,
    }
}

/// An engine whose one model is both root and sub-model.
fn engine_with(store: Arc<MemoryStore>, model: Arc<dyn ChatModel>) -> Engine {
    Engine::new(parts(store, model.clone(), model), EngineConfig::default())
}

/// An engine over `corpus()` with a root model and a sub-model of its own.
fn engine_of(
    model: Arc<dyn ChatModel>,
    sub_model: Arc<dyn ChatModel>,
    config: EngineConfig,
) -> Engine {
    Engine::new(parts(corpus(), model, sub_model), config)
}

/// An engine whose model searches once and then never answers.
fn engine_that_hangs_after_one_search() -> Engine {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedReply::Hang,
        ],
    ));
    engine_with(corpus(), model)
}

fn question(query: &str) -> QueryRequest {
    QueryRequest {
        query: query.to_string(),
        ..QueryRequest::default()
    }
}

/// Longest a test waits for something that should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(10);

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
async fn a_plain_text_answer_loses_ids_no_search_returned() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::text("Klaxon makes it [zephyr] [invented]."),
        ],
    ));
    let engine = engine_with(corpus(), model);
    let (result, _) = run_collecting(&engine, question("Who makes the Zephyr?")).await;
    assert!(!result.partial);
    assert_eq!(result.answer, "Klaxon makes it [zephyr].");
    assert_eq!(result.citations, vec!["zephyr"]);
}

#[tokio::test]
async fn the_summary_of_a_stopped_run_loses_ids_no_search_returned() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::text("Klaxon makes it [zephyr] [invented]."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Who makes the Zephyr?");
    request.budget.max_iterations = Some(1);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert!(
        model.requests()[1].tools.is_empty(),
        "the answer is the summing-up call's"
    );
    assert_eq!(result.answer, "Klaxon makes it [zephyr].");
    assert_eq!(result.citations, vec!["zephyr"]);
    assert_eq!(result.confidence, 0.5);
}

#[tokio::test]
async fn cited_sources_come_first_in_citation_order_then_the_rest_by_score() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool(
                "search_db",
                json!({"query": "Klaxon Industries headquartered Porto"}),
            ),
            ScriptedModel::tool(
                "submit",
                json!({"answer": "Oslo [bramble] or [zephyr].", "citations": ["bramble", "zephyr"]}),
            ),
        ],
    ));
    let engine = engine_with(corpus(), model);
    let (result, _) = run_collecting(&engine, question("Where?")).await;
    let ids: Vec<&str> = result.sources.iter().map(|hit| hit.id.as_str()).collect();
    // "klaxon" matched the search best, yet comes after the two cited sources.
    assert_eq!(ids, ["bramble", "zephyr", "klaxon"]);
    assert!(result.sources[2].score > result.sources[0].score);
}

#[tokio::test]
async fn sources_are_cut_to_the_limit_but_never_below_the_cited_ones() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool(
                "search_db",
                json!({"query": "Klaxon Industries headquartered Porto Zephyr"}),
            ),
            ScriptedModel::tool(
                "submit",
                json!({"answer": "[bramble] [zephyr]", "citations": ["bramble", "zephyr"]}),
            ),
            ScriptedModel::tool(
                "search_db",
                json!({"query": "Klaxon Industries headquartered Porto Zephyr"}),
            ),
            ScriptedModel::text("Porto."),
        ],
    ));
    let config = EngineConfig {
        max_sources: 1,
        ..EngineConfig::default()
    };
    let engine = engine_of(model.clone(), model, config);
    let (cited, _) = run_collecting(&engine, question("Who?")).await;
    assert_eq!(cited.sources.len(), 2, "every cited source stays");
    let (uncited, _) = run_collecting(&engine, question("Where?")).await;
    let ids: Vec<&str> = uncited.sources.iter().map(|hit| hit.id.as_str()).collect();
    assert_eq!(ids, ["klaxon"], "the best one within the limit");
}

#[tokio::test]
async fn an_empty_reply_is_asked_again_once_then_the_run_stops() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::text(""),
            ScriptedModel::text("Porto."),
            ScriptedModel::text(" "),
            ScriptedModel::text(""),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let (answered, _) = run_collecting(&engine, question("Where?")).await;
    assert_eq!(answered.answer, "Porto.");
    assert!(!answered.partial);
    let (stopped, _) = run_collecting(&engine, question("Where else?")).await;
    assert!(stopped.partial);
    assert!(
        stopped
            .error
            .as_deref()
            .unwrap_or("")
            .contains("empty replies twice"),
        "{:?}",
        stopped.error
    );
}

#[tokio::test]
async fn a_batched_call_splits_the_completion_cap_and_takes_at_most_its_limit_of_prompts() {
    let prompts = |count: usize| -> Vec<String> { (0..count).map(|n| format!("p{n}")).collect() };
    let root = Arc::new(ScriptedModel::new(
        "root",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("llm_query_batched", json!({"prompts": prompts(4)})),
            ScriptedModel::tool("llm_query_batched", json!({"prompts": prompts(5)})),
            ScriptedModel::text("done"),
        ],
    ));
    let sub = Arc::new(ScriptedModel::new(
        "sub",
        Duration::ZERO,
        (0..4).map(|_| ScriptedModel::text("digest")).collect(),
    ));
    let config = EngineConfig {
        max_batched_prompts: 4,
        max_completion_tokens: 1_000,
        ..EngineConfig::default()
    };
    let engine = engine_of(root.clone(), sub.clone(), config);
    let (result, _) = run_collecting(&engine, question("Digest?")).await;
    assert_eq!(result.answer, "done");
    let caps: Vec<Option<u32>> = sub
        .requests()
        .iter()
        .map(|request| request.max_tokens)
        .collect();
    assert_eq!(caps, [Some(250); 4], "the cap shared by the four prompts");
    let requests = root.requests();
    let over = &requests[2].messages.last().expect("tool result").content;
    assert!(over.contains("at most 4"), "{over}");
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
    let engine = engine_of(root.clone(), sub, EngineConfig::default());
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
    let records: Vec<&SubModelCallRecord> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::SubLlmCall(record) => Some(record),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 1);
    let record = records[0];
    assert_eq!((record.prompts, record.failed), (2, 1));
    // Only the answered prompt's usage counts.
    assert_eq!((record.input_tokens, record.output_tokens), (100, 20));
    assert_eq!(record.cost_usd, 0.001);
    assert_eq!(result.usage.models.len(), 2);
    // One prompt answered: the call is not a failed turn, and its trace says so.
    let step = result
        .reasoning_trace
        .iter()
        .find(|step| step.action == "llm_query_batched")
        .expect("the sub-model call's step");
    assert_eq!(step.output, "2 response(s)");
}

/// Runs a batched sub-model call of two prompts, the second answered by `second`, and returns
/// the fields recorded on the spans of the run.
async fn sub_model_spans(second: ScriptedReply) -> crate::telemetry::spans::recorded::Fields {
    use tracing_subscriber::layer::SubscriberExt;
    let fields = crate::telemetry::spans::recorded::Fields::default();
    // The test runtime has one thread: every span of the run is recorded here.
    let _recording = crate::telemetry::spans::recorded::scoped(
        tracing_subscriber::registry().with(fields.clone()),
    );
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
        vec![ScriptedModel::text("first digest"), second],
    ));
    let engine = engine_of(root, sub, EngineConfig::default());
    run_collecting(&engine, question("Digest?")).await;
    fields
}

#[tokio::test]
async fn a_sub_model_call_with_a_failed_prompt_is_an_error_in_its_span() {
    let failed = sub_model_spans(ScriptedReply::Fail(LlmError::Unavailable("boom".into()))).await;
    assert_eq!(
        failed.get("model.call", "otel.status_code").as_deref(),
        Some("\"ERROR\"")
    );
    assert_eq!(
        failed
            .get("model.call", "otel.status_description")
            .as_deref(),
        Some("\"1 of 2 prompts failed\"")
    );
    let answered = sub_model_spans(ScriptedModel::text("second digest")).await;
    assert_eq!(answered.get("model.call", "otel.status_code"), None);
}

#[tokio::test]
async fn a_batched_call_whose_prompts_all_fail_is_a_failed_turn() {
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
            ScriptedReply::Fail(LlmError::Unavailable("boom".into())),
            ScriptedReply::Fail(LlmError::Unavailable("bang".into())),
        ],
    ));
    let engine = engine_of(
        root,
        sub,
        EngineConfig {
            max_consecutive_tool_errors: 1,
            ..EngineConfig::default()
        },
    );
    let (result, events) = run_collecting(&engine, question("Digest?")).await;
    // One failed turn is the limit here: the run stops instead of asking the model again.
    assert!(result.partial);
    assert!(
        result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("1 turns in a row"),
        "{:?}",
        result.error
    );
    let step = result
        .reasoning_trace
        .iter()
        .find(|step| step.action == "llm_query_batched")
        .expect("the sub-model call's step");
    assert!(
        step.output.starts_with("{\"responses\":[\"error:"),
        "{}",
        step.output
    );
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::SubLlmCall(record) if record.prompts == 2 && record.failed == 2
            && record.input_tokens == 0 && record.cost_usd == 0.0
    )));
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

mod budgets;
mod caching;
mod concurrency;
mod documents;
mod lifecycle;
