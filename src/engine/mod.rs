//! The reasoning engine: validates requests, answers from the cache or runs the loop of
//! [`run`], streams trace events, and accounts usage. It knows no proto type.

pub mod accounting;
pub mod budget;
pub mod checks;
mod citations;
mod config;
mod error;
pub mod events;
mod flight;
pub mod partial;
pub mod prompts;
pub mod result;
mod run;
pub mod tools;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::telemetry::spans::{self, QuerySummary};
use crate::telemetry::{Metrics, QueryOutcome, TraceLog};

pub use accounting::{UsageAccounting, UsageTotals};
pub use budget::{BudgetLimits, BudgetResource, BudgetUsage};
pub use events::{EventKind, EventSink, TraceEvent};
pub use result::QueryResult;

use checks::{check_document_id, check_lookup_ids, check_size, collection_or_default};
pub use config::EngineConfig;
pub use error::EngineError;
use flight::{Caller, Flight, FlightRun};

use crate::cache::{CacheKey, CacheLevel, CacheStats};
use crate::llm::{ChatModel, PriceTable};
use crate::rerank::Reranker;
use crate::store::{
    CollectionInfo, DocumentStore, Filter, NewDocument, StoreError, StoredDocument, WriteOutcome,
    validate_collection_name,
};

/// A question as the engine sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryRequest {
    /// The question.
    pub query: String,
    /// Extra instructions for the root model.
    pub root_prompt: String,
    /// Passages per search; `None` takes the default.
    pub top_k: Option<usize>,
    /// Collection; `None` takes `default`.
    pub collection: Option<String>,
    /// Metadata filters bounding every search.
    pub filters: Map<String, Value>,
    /// Context placed before the question.
    pub context_prefix: String,
    /// Limits; unset ones take the defaults.
    pub budget: BudgetLimits,
    /// Skips the cache lookup.
    pub skip_cache: bool,
    /// The recursive loop, or a single pass for comparison.
    pub mode: QueryMode,
}

/// How a query is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// The recursive loop: search, read, search again, until the model answers.
    #[default]
    Loop,
    /// Plain retrieval-augmented generation: one search for the question, one answer call
    /// (`run::single_pass`). It exists to measure what the loop adds.
    SinglePass,
}

/// A validated query, ready to run.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    /// Unique id of the run.
    pub query_id: String,
    /// The request.
    pub request: QueryRequest,
    /// The collection as it was when the query was prepared.
    pub collection: CollectionInfo,
    /// Parsed caller filters.
    pub filter: Filter,
    /// Passages per search.
    pub top_k: usize,
    /// Limits in force, tightened by the deadline.
    pub limits: BudgetLimits,
    /// Whether the time limit is the caller's deadline (less the reserve for the trip back)
    /// rather than the time budget: a run it stops before finding anything fails with
    /// [`EngineError::DeadlineExceeded`] instead of answering with nothing.
    pub deadline_bound: bool,
    /// Result cache key.
    pub cache_key: CacheKey,
    /// When the query arrived.
    pub started: Instant,
    /// Whose usage the query counts as: the API key's name, or `anonymous`.
    pub account: Arc<str>,
    /// The span the query is traced in; a disabled span makes [`Engine::run`] open one.
    pub span: tracing::Span,
}

/// The account of queries whose caller named none.
pub const ANONYMOUS_ACCOUNT: &str = "anonymous";

/// The parts an engine works with.
#[derive(Debug, Clone)]
pub struct EngineParts {
    /// Document store.
    pub store: Arc<dyn DocumentStore>,
    /// Root model.
    pub model: Arc<dyn ChatModel>,
    /// Sub-model for `llm_query`.
    pub sub_model: Arc<dyn ChatModel>,
    /// Prices of models whose backend reports no cost.
    pub prices: PriceTable,
    /// Cache of query results.
    pub results: CacheLevel,
    /// Cache of search hits.
    pub searches: CacheLevel,
    /// The reranker of search hits, if any.
    pub rerank: Option<RerankStage>,
}

/// A reranker and how many fused candidates it reorders before the cut to `top_k`.
#[derive(Debug, Clone)]
pub struct RerankStage {
    /// The reranker.
    pub reranker: Arc<dyn Reranker>,
    /// Candidates fetched and reordered per search; at least `top_k`.
    pub candidates: usize,
}

/// Where an engine reports besides its callers: metrics, and the trace log when one is kept.
#[derive(Debug, Clone, Default)]
pub struct EngineTelemetry {
    /// Metrics of queries, model calls, cache lookups and collections.
    pub metrics: Metrics,
    /// JSONL log of every trace event.
    pub trace_log: Option<TraceLog>,
}

/// What deleting a collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedCollection {
    /// Documents the collection held.
    pub documents: u64,
    /// Cache entries removed with it.
    pub cache_entries: u64,
}

/// Statistics of the engine.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Collections by name.
    pub collections: Vec<CollectionInfo>,
    /// Result cache counters.
    pub result_cache: CacheStats,
    /// Search cache counters.
    pub search_cache: CacheStats,
    /// Cache backend.
    pub cache_backend: String,
    /// Cumulative usage.
    pub usage: UsageTotals,
    /// Cumulative usage per account, by name.
    pub accounts: Vec<(String, UsageTotals)>,
    /// Root model name.
    pub model: String,
}

#[derive(Debug)]
struct EngineInner {
    store: Arc<dyn DocumentStore>,
    model: Arc<dyn ChatModel>,
    sub_model: Arc<dyn ChatModel>,
    prices: PriceTable,
    results: CacheLevel,
    searches: CacheLevel,
    rerank: Option<RerankStage>,
    config: EngineConfig,
    accounting: UsageAccounting,
    metrics: Metrics,
    trace_log: Option<TraceLog>,
    shutdown: CancellationToken,
    flights: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

/// The reasoning engine. Cloning is cheap and shares everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl Engine {
    /// Builds an engine that reports to a metrics registry of its own and keeps no trace log.
    pub fn new(parts: EngineParts, config: EngineConfig) -> Self {
        Self::with_telemetry(parts, config, EngineTelemetry::default())
    }

    /// Builds an engine reporting to `telemetry`.
    pub fn with_telemetry(
        parts: EngineParts,
        config: EngineConfig,
        telemetry: EngineTelemetry,
    ) -> Self {
        Engine {
            inner: Arc::new(EngineInner {
                store: parts.store,
                model: parts.model,
                sub_model: parts.sub_model,
                prices: parts.prices,
                results: parts.results,
                searches: parts.searches,
                rerank: parts.rerank,
                config,
                accounting: UsageAccounting::default(),
                metrics: telemetry.metrics,
                trace_log: telemetry.trace_log,
                shutdown: CancellationToken::new(),
                flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Returns the settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Stops every run still going: each ends with a partial result saying the server is
    /// shutting down.
    pub fn abort_runs(&self) {
        self.inner.shutdown.cancel();
    }

    /// Validates a query and resolves its collection, defaults and cache key.
    pub async fn prepare(
        &self,
        request: QueryRequest,
        deadline: Option<Instant>,
    ) -> Result<PreparedQuery, EngineError> {
        let started = Instant::now();
        let config = &self.inner.config;
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if request.query.trim().is_empty() {
            return Err(EngineError::invalid("query", "must not be empty"));
        }
        check_size("query", &request.query, config.max_query_bytes)?;
        check_size("root_prompt", &request.root_prompt, config.max_prompt_bytes)?;
        check_size(
            "context_prefix",
            &request.context_prefix,
            config.max_prompt_bytes,
        )?;
        let top_k = match request.top_k {
            None | Some(0) => config.default_top_k,
            Some(top_k) if top_k > config.max_top_k => {
                return Err(EngineError::invalid(
                    "top_k",
                    format!("{top_k} is over the limit of {}", config.max_top_k),
                ));
            }
            Some(top_k) => top_k,
        };
        let filter = Filter::from_json(&request.filters)
            .map_err(|error| EngineError::invalid("filters", error.to_string()))?;
        let collection_name = collection_or_default(request.collection.as_deref())?;
        let collection = self
            .inner
            .store
            .collection(&collection_name)
            .await?
            .ok_or(StoreError::CollectionNotFound(collection_name))?;
        self.inner.store.check_searchable(&collection.name).await?;

        let limits = request.budget.or(config.default_budget());
        let cache_key = self.cache_key(&request, &filter, top_k, &collection, &limits);
        // The result must be on its way back before the caller's deadline passes.
        let finish_by = match deadline {
            None => None,
            Some(deadline) => {
                let reserve = Duration::from_millis(config.deadline_reserve_ms);
                match deadline.checked_sub(reserve) {
                    Some(finish_by) if finish_by > Instant::now() => Some(finish_by),
                    _ => {
                        return Err(EngineError::DeadlineExceeded(
                            "the deadline leaves no time to answer",
                        ));
                    }
                }
            }
        };
        let deadline_bound = finish_by.is_some_and(|finish_by| {
            limits
                .max_time
                .is_none_or(|max_time| started + max_time >= finish_by)
        });
        Ok(PreparedQuery {
            query_id: uuid::Uuid::new_v4().to_string(),
            limits: limits.within_deadline(finish_by, started),
            deadline_bound,
            request,
            collection,
            filter,
            top_k,
            cache_key,
            started,
            account: Arc::from(ANONYMOUS_ACCOUNT),
            span: tracing::Span::none(),
        })
    }

    /// Answers a prepared query from the cache or by running the loop, emitting trace events
    /// into `sink` and the result last. Cancelling `cancel` stops the run at once. The work
    /// is traced as one `query` span, child of the current one, with the loop's turns, model
    /// calls and searches beneath it.
    pub async fn run(
        &self,
        prepared: PreparedQuery,
        sink: EventSink,
        cancel: CancellationToken,
    ) -> Result<QueryResult, EngineError> {
        let span = if prepared.span.is_disabled() {
            spans::query("Query", &prepared.query_id, &prepared.collection.name)
        } else {
            prepared.span.clone()
        };
        let metrics = &self.inner.metrics;
        let _in_flight = metrics.query_started();
        let started = prepared.started;
        let sink = match &self.inner.trace_log {
            Some(log) => sink.logged_to(log.clone(), &prepared.query_id),
            None => sink,
        };
        let outcome = self
            .answer(prepared, sink, cancel)
            .instrument(span.clone())
            .await;
        match &outcome {
            Ok(result) => {
                let usage = &result.usage;
                spans::record_query(
                    &span,
                    &QuerySummary {
                        iterations: result.budget.used.iterations,
                        searches: usage.search_calls,
                        input_tokens: usage.input_tokens(),
                        output_tokens: usage.output_tokens(),
                        cost_usd: usage.cost_usd(),
                        partial: result.partial,
                        cached: result.cached,
                    },
                );
                let outcome = if result.cached {
                    QueryOutcome::Cached
                } else if result.partial {
                    QueryOutcome::Partial
                } else {
                    QueryOutcome::Complete
                };
                metrics.query_finished(
                    outcome,
                    started.elapsed(),
                    result.budget.used.iterations,
                    usage.search_calls,
                );
            }
            Err(error) => {
                spans::record_error(&span, &error.to_string());
                metrics.query_finished(QueryOutcome::Failed, started.elapsed(), 0, 0);
            }
        }
        outcome
    }

    async fn answer(
        &self,
        prepared: PreparedQuery,
        sink: EventSink,
        cancel: CancellationToken,
    ) -> Result<QueryResult, EngineError> {
        let inner = &self.inner;
        let cached = if prepared.request.skip_cache {
            None
        } else {
            let cached = inner
                .results
                .lookup::<QueryResult>(&prepared.cache_key)
                .await;
            inner
                .metrics
                .cache_lookup(inner.results.name, cached.is_some());
            cached
        };
        if let Some(mut result) = cached {
            result.cached = true;
            result.query_id = prepared.query_id.clone();
            result.execution_time = prepared.started.elapsed();
            inner.accounting.record(&prepared.account, &result);
            sink.emit(
                result.budget.used,
                EventKind::Result(Box::new(result.clone())),
            )
            .await;
            return Ok(result);
        }

        // Identical queries in flight share one run: the first caller leads, with its trace
        // events; the others wait for the result. The run belongs to no caller: it stops
        // only when every caller has gone.
        let (flight, leads) = self.join_flight(&prepared.cache_key);
        let caller = Caller {
            flight: Arc::clone(&flight),
        };
        let mut outcome = flight.outcome.subscribe();
        let started = prepared.started;
        let account = Arc::clone(&prepared.account);
        let (shared, follower_sink) = if leads {
            // The leader drives the run in its own task, so its events reach its caller with
            // no hand-off between tasks; should it leave first, the run carries on without it.
            let mut run = FlightRun(Some(self.fly(prepared, sink, flight)));
            let shared = tokio::select! {
                () = &mut run => outcome.borrow().clone(),
                () = cancel.cancelled() => None,
            };
            (shared, None)
        } else {
            let shared = tokio::select! {
                done = outcome.wait_for(Option::is_some) => done.ok().and_then(|done| done.clone()),
                () = cancel.cancelled() => None,
            };
            (shared, Some(sink))
        };
        drop(caller);
        match (shared, follower_sink) {
            (None, _) => Err(EngineError::Cancelled),
            (Some(Err(error)), _) => Err(EngineError::Shared(error)),
            (Some(Ok(result)), None) => Ok(result),
            (Some(Ok(mut result)), Some(sink)) => {
                result.coalesced = true;
                result.execution_time = started.elapsed();
                inner.accounting.record(&account, &result);
                sink.emit(
                    result.budget.used,
                    EventKind::Result(Box::new(result.clone())),
                )
                .await;
                Ok(result)
            }
        }
    }

    /// The run of a flight: it publishes the outcome to the flight's callers, then caches a
    /// result worth keeping and lets the flight go.
    fn fly(
        &self,
        prepared: PreparedQuery,
        sink: EventSink,
        flight: Arc<Flight>,
    ) -> BoxFuture<'static, ()> {
        let engine = self.clone();
        async move {
            let run = run::Run::new(&engine.inner, &prepared, sink, flight.stop.clone());
            let outcome = match prepared.request.mode {
                QueryMode::Loop => run.execute().await,
                QueryMode::SinglePass => run.execute_single_pass().await,
            };
            let mut cacheable = None;
            if let Ok(result) = &outcome {
                engine.inner.accounting.record(&prepared.account, result);
                if !result.partial && result.error.is_none() && engine.inner.results.keeps_entries()
                {
                    cacheable = Some(result.clone());
                }
            }
            // Callers get the result before it is encoded for the cache. Until the flight is
            // gone, an identical query joins it and gets the result too.
            flight.outcome.send_replace(Some(outcome.map_err(Arc::new)));
            let key = prepared.cache_key;
            let mut settle = async move {
                if let Some(result) = cacheable {
                    engine.inner.results.store(&key, &result).await;
                }
                engine.inner.flights.lock().remove(&key);
            }
            .instrument(tracing::Span::current())
            .boxed();
            // A cache in memory is written at once; the leader's caller does not wait for
            // one over the network, which is written on the side.
            if futures::poll!(&mut settle).is_pending() {
                tokio::spawn(settle);
            }
        }
        .instrument(tracing::Span::current())
        .boxed()
    }

    /// Joins the run in flight for `key`, or starts one; returns it and whether the caller
    /// leads it.
    fn join_flight(&self, key: &CacheKey) -> (Arc<Flight>, bool) {
        let mut flights = self.inner.flights.lock();
        if let Some(flight) = flights.get(key) {
            flight.callers.fetch_add(1, Ordering::SeqCst);
            return (Arc::clone(flight), false);
        }
        let flight = Arc::new(Flight::new());
        flights.insert(key.clone(), Arc::clone(&flight));
        (flight, true)
    }

    /// Checks a batch's size and concurrency; returns the concurrency to use.
    pub fn validate_batch(
        &self,
        queries: usize,
        max_concurrency: usize,
    ) -> Result<usize, EngineError> {
        let config = &self.inner.config;
        if queries == 0 {
            return Err(EngineError::invalid("queries", "must not be empty"));
        }
        if queries > config.max_batch_queries {
            return Err(EngineError::invalid(
                "queries",
                format!(
                    "{queries} queries is over the limit of {}",
                    config.max_batch_queries
                ),
            ));
        }
        match max_concurrency {
            0 => Ok(config.default_batch_concurrency.max(1)),
            n if n > config.max_batch_concurrency => Err(EngineError::invalid(
                "max_concurrency",
                format!("{n} is over the limit of {}", config.max_batch_concurrency),
            )),
            n => Ok(n),
        }
    }

    /// Runs many queries, at most `concurrency` at a time, yielding `(index, outcome)` as each
    /// completes. Items that failed conversion come in as errors and are reported as they are.
    /// Dropping the stream, or cancelling `cancel`, stops the remaining work.
    pub fn query_batch(
        &self,
        items: Vec<Result<QueryRequest, EngineError>>,
        account: Arc<str>,
        span_of: Arc<dyn Fn(&PreparedQuery) -> tracing::Span + Send + Sync>,
        concurrency: usize,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> impl Stream<Item = (usize, Result<QueryResult, EngineError>)> + Send + 'static {
        let engine = self.clone();
        futures::stream::iter(items.into_iter().enumerate())
            .map(move |(index, item)| {
                let engine = engine.clone();
                let cancel = cancel.child_token();
                let account = Arc::clone(&account);
                let span_of = Arc::clone(&span_of);
                let item = async move {
                    let prefix = format!("queries[{index}]");
                    let outcome = match item {
                        Err(error) => Err(error.within(&prefix)),
                        Ok(request) => match engine.prepare(request, deadline).await {
                            Err(error) => Err(error.within(&prefix)),
                            Ok(mut prepared) => {
                                prepared.account = account;
                                prepared.span = span_of(&prepared);
                                let sink = EventSink::discard(prepared.started);
                                engine.run(prepared, sink, cancel).await
                            }
                        },
                    };
                    (index, outcome)
                };
                // Each item is a task, so that the items' work spreads over every core; the
                // task is aborted when the batch is dropped.
                let task = AbortOnDropHandle::new(tokio::spawn(item));
                async move {
                    task.await.unwrap_or_else(|error| {
                        (index, Err(EngineError::RunFailed(error.to_string())))
                    })
                }
            })
            .buffer_unordered(concurrency.max(1))
    }

    /// Adds documents after checking the limits; one bad document rejects the whole call.
    pub async fn add_documents(
        &self,
        collection: Option<&str>,
        documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, EngineError> {
        let config = &self.inner.config;
        let collection = collection_or_default(collection)?;
        if documents.is_empty() {
            return Err(EngineError::invalid("documents", "must not be empty"));
        }
        if documents.len() > config.max_documents_per_call {
            return Err(EngineError::invalid(
                "documents",
                format!(
                    "{} documents is over the limit of {} per call",
                    documents.len(),
                    config.max_documents_per_call
                ),
            ));
        }
        for (index, document) in documents.iter().enumerate() {
            if document.content.trim().is_empty() {
                return Err(EngineError::invalid(
                    format!("documents[{index}].content"),
                    "must not be empty",
                ));
            }
            check_size(
                &format!("documents[{index}].content"),
                &document.content,
                config.max_document_bytes,
            )?;
            // PostgreSQL's text cannot hold NUL; refused here, both stores behave alike.
            if document.content.contains('\0') {
                return Err(EngineError::invalid(
                    format!("documents[{index}].content"),
                    "must not contain NUL characters",
                ));
            }
            checks::metadata(
                &format!("documents[{index}].metadata"),
                &document.metadata,
                config.max_document_bytes,
            )?;
            if let Some(id) = &document.id {
                check_document_id(&format!("documents[{index}].id"), id)?;
            }
        }
        let outcome = self
            .inner
            .store
            .add_documents(&collection, documents)
            .await?;
        let written = &outcome.collection;
        self.inner
            .metrics
            .set_documents(&written.name, written.document_count);
        Ok(outcome)
    }

    /// Deletes documents by id.
    pub async fn delete_documents(
        &self,
        collection: Option<&str>,
        ids: Vec<String>,
    ) -> Result<WriteOutcome, EngineError> {
        let collection = collection_or_default(collection)?;
        if ids.is_empty() {
            return Err(EngineError::invalid("ids", "must not be empty"));
        }
        let limit = self.inner.config.max_documents_per_call;
        if ids.len() > limit {
            return Err(EngineError::invalid(
                "ids",
                format!("{} ids is over the limit of {limit} per call", ids.len()),
            ));
        }
        check_lookup_ids(&ids)?;
        let outcome = self.inner.store.delete_documents(&collection, ids).await?;
        let written = &outcome.collection;
        self.inner
            .metrics
            .set_documents(&written.name, written.document_count);
        Ok(outcome)
    }

    /// Answers whether the document store can serve calls now (see
    /// [`DocumentStore::check_reachable`]).
    pub async fn check_store(&self) -> Result<(), EngineError> {
        Ok(self.inner.store.check_reachable().await?)
    }

    /// Returns every collection, by name.
    pub async fn list_collections(&self) -> Result<Vec<CollectionInfo>, EngineError> {
        Ok(self.inner.store.collections().await?)
    }

    /// Deletes a collection with its documents, then its cached answers and searches. Returns
    /// how many documents it held and how many cache entries went. A cache that cannot be
    /// cleared is only logged: the collection is gone, and its entries are unreachable, keyed
    /// on a version no collection will have again.
    pub async fn delete_collection(
        &self,
        collection: &str,
    ) -> Result<DeletedCollection, EngineError> {
        if collection.is_empty() {
            return Err(EngineError::invalid("collection", "must not be empty"));
        }
        validate_collection_name(collection)
            .map_err(|error| EngineError::invalid("collection", error.to_string()))?;
        let Some(deleted) = self.inner.store.delete_collection(collection).await? else {
            return Err(StoreError::CollectionNotFound(collection.to_string()).into());
        };
        self.inner.metrics.set_documents(collection, 0);
        let cache_entries = match self.clear_cache(Some(collection)).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, collection, "deleted collection's cache entries not cleared");
                0
            }
        };
        Ok(DeletedCollection {
            documents: deleted.document_count,
            cache_entries,
        })
    }

    /// Reads documents back by id, in the order asked, each once; unknown ids are left out.
    pub async fn get_documents(
        &self,
        collection: Option<&str>,
        ids: Vec<String>,
    ) -> Result<Vec<StoredDocument>, EngineError> {
        let collection = collection_or_default(collection)?;
        if ids.is_empty() {
            return Err(EngineError::invalid("ids", "must not be empty"));
        }
        let limit = self.inner.config.max_documents_per_call;
        if ids.len() > limit {
            return Err(EngineError::invalid(
                "ids",
                format!("{} ids is over the limit of {limit} per call", ids.len()),
            ));
        }
        check_lookup_ids(&ids)?;
        Ok(self.inner.store.get_documents(&collection, ids).await?)
    }

    /// Clears cached results and searches, of one collection or all; returns how many
    /// entries went.
    pub async fn clear_cache(&self, collection: Option<&str>) -> Result<u64, EngineError> {
        if let Some(name) = collection {
            validate_collection_name(name)
                .map_err(|error| EngineError::invalid("collection", error.to_string()))?;
        }
        let results = self.inner.results.cache.clear(collection).await?;
        let searches = self.inner.searches.cache.clear(collection).await?;
        Ok(results + searches)
    }

    /// Returns collections, cache counters and usage.
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        Ok(EngineStats {
            collections: self.inner.store.collections().await?,
            result_cache: self.inner.results.cache.stats().await?,
            search_cache: self.inner.searches.cache.stats().await?,
            cache_backend: self.inner.results.cache.backend().to_string(),
            usage: self.inner.accounting.snapshot(),
            accounts: self.inner.accounting.accounts(),
            model: self.inner.model.name().to_string(),
        })
    }

    /// Builds the result cache key from everything that changes an answer. The collection's
    /// content version is part of it, so a write makes older entries unreachable at once.
    fn cache_key(
        &self,
        request: &QueryRequest,
        filter: &Filter,
        top_k: usize,
        collection: &CollectionInfo,
        limits: &BudgetLimits,
    ) -> CacheKey {
        let material = serde_json::json!({
            "prompt_version": prompts::PROMPT_VERSION,
            "query": request.query,
            "root_prompt": request.root_prompt,
            "context_prefix": request.context_prefix,
            "filters": filter.to_json(),
            "top_k": top_k,
            "collection": collection.name,
            "collection_version": collection.version,
            "model": self.inner.model.name(),
            "sub_model": self.inner.sub_model.name(),
            "budget": limits,
            "mode": request.mode,
        });
        CacheKey::digest_of(&collection.name, &material)
    }
}

#[cfg(test)]
mod tests;
