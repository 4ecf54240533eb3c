//! Proto messages to engine types and back. Requests are destructured field by field, so a new
//! proto field fails the build here until it is handled.

use std::time::Duration;

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use super::pb;
use crate::cache::CacheStats;
use crate::engine::budget::{BudgetRequest, BudgetWarning};
use crate::engine::events::{ModelCallRecord, SearchRecord, SubModelCallRecord};
use crate::engine::result::{BudgetStatus, ModelUsage, ReasoningStep, Usage};
use crate::engine::{
    BudgetLimits, BudgetResource, BudgetUsage, EngineError, EngineStats, EventKind, QueryMode,
    QueryRequest, QueryResult, TraceEvent, UsageTotals,
};
use crate::store::{CollectionInfo, Hit, NewDocument, StoredDocument, WriteOutcome};

/// Converts a Query request.
pub fn query_request(request: pb::QueryRequest) -> Result<QueryRequest, EngineError> {
    let pb::QueryRequest {
        query,
        root_prompt,
        top_k,
        collection,
        filters,
        context_prefix,
        budget,
        skip_cache,
        mode,
    } = request;
    Ok(QueryRequest {
        query,
        root_prompt,
        top_k: (top_k > 0).then_some(top_k as usize),
        collection: (!collection.is_empty()).then_some(collection),
        filters: struct_to_json(filters, "filters")?,
        context_prefix,
        budget: budget.map(budget_limits).transpose()?.unwrap_or_default(),
        skip_cache,
        mode: query_mode(mode)?,
    })
}

/// An unset mode is the loop; a number this server does not know is refused rather than
/// silently answered another way.
fn query_mode(mode: i32) -> Result<QueryMode, EngineError> {
    match pb::QueryMode::try_from(mode) {
        Ok(pb::QueryMode::Unspecified | pb::QueryMode::Loop) => Ok(QueryMode::Loop),
        Ok(pb::QueryMode::SinglePass) => Ok(QueryMode::SinglePass),
        Err(_) => Err(EngineError::invalid(
            "mode",
            format!("{mode} is not a known query mode"),
        )),
    }
}

fn budget_limits(budget: pb::Budget) -> Result<BudgetLimits, EngineError> {
    let pb::Budget {
        max_iterations,
        max_search_calls,
        max_tokens,
        max_time_seconds,
        max_cost_usd,
    } = budget;
    BudgetRequest {
        max_iterations,
        max_search_calls,
        max_tokens,
        max_time_seconds,
        max_cost_usd,
    }
    .limits()
}

/// Converts the documents of an AddDocuments request.
pub fn documents(documents: Vec<pb::Document>) -> Result<Vec<NewDocument>, EngineError> {
    documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let pb::Document {
                id,
                content,
                metadata,
            } = document;
            Ok(NewDocument {
                id: (!id.is_empty()).then_some(id),
                content,
                metadata: struct_to_json(metadata, &format!("documents[{index}].metadata"))?,
            })
        })
        .collect()
}

/// Converts the outcome of AddDocuments.
pub fn add_documents_response(outcome: WriteOutcome) -> pb::AddDocumentsResponse {
    pb::AddDocumentsResponse {
        ids: outcome.ids,
        collection_version: outcome.collection.version,
        document_count: outcome.collection.document_count,
    }
}

/// Converts the outcome of DeleteDocuments.
pub fn delete_documents_response(outcome: WriteOutcome) -> pb::DeleteDocumentsResponse {
    pb::DeleteDocumentsResponse {
        deleted: outcome.ids.len() as u64,
        collection_version: outcome.collection.version,
        document_count: outcome.collection.document_count,
    }
}

/// Converts documents read back by id, listing the ids asked for that were not found.
pub fn get_documents_response(
    asked: &[String],
    documents: Vec<StoredDocument>,
) -> pb::GetDocumentsResponse {
    let found: std::collections::HashSet<&str> = documents
        .iter()
        .map(|document| document.id.as_str())
        .collect();
    let mut missing_ids: Vec<String> = Vec::new();
    for id in asked {
        if !found.contains(id.as_str()) && !missing_ids.contains(id) {
            missing_ids.push(id.clone());
        }
    }
    let documents = documents
        .into_iter()
        .map(|document| {
            let StoredDocument {
                id,
                content,
                metadata,
            } = document;
            pb::Document {
                id,
                content,
                metadata: Some(json_to_struct(metadata)),
            }
        })
        .collect();
    pb::GetDocumentsResponse {
        documents,
        missing_ids,
    }
}

/// Converts the collections the caller may see.
pub fn list_collections_response(collections: Vec<CollectionInfo>) -> pb::ListCollectionsResponse {
    pb::ListCollectionsResponse {
        collections: collections.into_iter().map(collection_stats).collect(),
    }
}

/// Converts one trace event.
pub fn event(event: TraceEvent) -> pb::QueryEvent {
    let TraceEvent {
        sequence,
        elapsed,
        budget_used,
        kind,
    } = event;
    let event = match kind {
        EventKind::StepStarted { step } => {
            pb::query_event::Event::StepStarted(pb::StepStarted { step })
        }
        EventKind::LlmCall(record) => pb::query_event::Event::LlmCall(llm_call(record)),
        EventKind::Search(record) => pb::query_event::Event::Search(search(record)),
        EventKind::SubLlmCall(record) => pb::query_event::Event::SubLlmCall(sub_llm_call(record)),
        EventKind::StepCompleted {
            step,
            tools,
            latency,
        } => pb::query_event::Event::StepCompleted(pb::StepCompleted {
            step,
            tools,
            latency_seconds: latency.as_secs_f64(),
        }),
        EventKind::BudgetWarning(warning) => {
            pb::query_event::Event::BudgetWarning(budget_warning(warning))
        }
        EventKind::AnswerDelta(text) => {
            pb::query_event::Event::AnswerDelta(pb::AnswerDelta { text })
        }
        EventKind::Result(result) => pb::query_event::Event::Result(query_result(*result)),
    };
    pb::QueryEvent {
        sequence,
        elapsed_seconds: elapsed.as_secs_f64(),
        budget_used: Some(budget_usage(budget_used)),
        event: Some(event),
    }
}

fn llm_call(record: ModelCallRecord) -> pb::LlmCall {
    let ModelCallRecord {
        step,
        model,
        input_tokens,
        output_tokens,
        latency,
        cost_usd,
        tool_calls,
    } = record;
    pb::LlmCall {
        step,
        model,
        input_tokens,
        output_tokens,
        latency_seconds: latency.as_secs_f64(),
        cost_usd,
        tool_calls,
    }
}

fn search(record: SearchRecord) -> pb::SearchEvent {
    let SearchRecord {
        step,
        collection,
        query,
        filters,
        top_k,
        hits,
        latency,
        cache_hit,
        reranker,
        rerank_scores,
        rerank_failed,
    } = record;
    let mut rerank_scores = rerank_scores.into_iter();
    pb::SearchEvent {
        step,
        query,
        filters: (!filters.is_empty()).then(|| json_to_struct(filters)),
        top_k,
        hits: hits
            .into_iter()
            .map(|(id, score)| pb::SearchHit {
                id,
                score,
                rerank_score: rerank_scores.next(),
            })
            .collect(),
        latency_seconds: latency.as_secs_f64(),
        cache_hit,
        collection,
        reranker: reranker.unwrap_or_default(),
        rerank_failed,
    }
}

fn sub_llm_call(record: SubModelCallRecord) -> pb::SubLlmCall {
    let SubModelCallRecord {
        step,
        model,
        prompts,
        failed,
        input_tokens,
        output_tokens,
        latency,
        cost_usd,
    } = record;
    pb::SubLlmCall {
        step,
        model,
        prompts,
        failed,
        input_tokens,
        output_tokens,
        latency_seconds: latency.as_secs_f64(),
        cost_usd,
    }
}

fn budget_warning(warning: BudgetWarning) -> pb::BudgetWarning {
    let BudgetWarning {
        resource,
        used,
        limit,
        message,
    } = warning;
    pb::BudgetWarning {
        resource: budget_resource(resource) as i32,
        used,
        limit,
        message,
    }
}

fn budget_resource(resource: BudgetResource) -> pb::BudgetResource {
    match resource {
        BudgetResource::Iterations => pb::BudgetResource::Iterations,
        BudgetResource::SearchCalls => pb::BudgetResource::SearchCalls,
        BudgetResource::Tokens => pb::BudgetResource::Tokens,
        BudgetResource::Time => pb::BudgetResource::Time,
        BudgetResource::Cost => pb::BudgetResource::Cost,
    }
}

fn budget_usage(usage: BudgetUsage) -> pb::BudgetUsage {
    let BudgetUsage {
        iterations,
        search_calls,
        tokens,
        cost_usd,
        elapsed,
    } = usage;
    pb::BudgetUsage {
        iterations,
        search_calls,
        tokens,
        cost_usd,
        elapsed_seconds: elapsed.as_secs_f64(),
    }
}

/// Converts a result.
pub fn query_result(result: QueryResult) -> pb::QueryResult {
    let QueryResult {
        query_id,
        answer,
        citations,
        sources,
        reasoning_trace,
        usage,
        execution_time,
        budget,
        confidence,
        partial,
        error,
        cached,
        coalesced,
    } = result;
    pb::QueryResult {
        answer,
        sources: sources.into_iter().map(source).collect(),
        reasoning_trace: reasoning_trace.into_iter().map(reasoning_step).collect(),
        usage: Some(usage_message(usage)),
        execution_time_seconds: execution_time.as_secs_f64(),
        budget_status: Some(budget_status(budget)),
        confidence,
        partial,
        error: error.unwrap_or_default(),
        cached,
        citations,
        query_id,
        coalesced,
    }
}

fn source(hit: Hit) -> pb::Source {
    let Hit {
        id,
        content,
        metadata,
        score,
    } = hit;
    pb::Source {
        id,
        content,
        metadata: Some(json_to_struct(metadata)),
        score,
    }
}

fn reasoning_step(step: ReasoningStep) -> pb::ReasoningStep {
    let ReasoningStep {
        step,
        action,
        input,
        output,
    } = step;
    pb::ReasoningStep {
        step,
        action,
        input,
        output,
    }
}

fn usage_message(usage: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens(),
        output_tokens: usage.output_tokens(),
        total_tokens: usage.input_tokens() + usage.output_tokens(),
        llm_calls: usage.llm_calls(),
        search_calls: usage.search_calls,
        cost_usd: usage.cost_usd(),
        models: usage.models.into_iter().map(model_usage).collect(),
    }
}

fn model_usage(usage: ModelUsage) -> pb::ModelUsage {
    let ModelUsage {
        model,
        calls,
        input_tokens,
        output_tokens,
        cost_usd,
    } = usage;
    pb::ModelUsage {
        model,
        calls,
        input_tokens,
        output_tokens,
        cost_usd,
    }
}

fn budget_status(status: BudgetStatus) -> pb::BudgetStatus {
    let BudgetStatus {
        limits,
        used,
        exhausted,
    } = status;
    let BudgetLimits {
        max_iterations,
        max_search_calls,
        max_tokens,
        max_time,
        max_cost_usd,
    } = limits;
    pb::BudgetStatus {
        limits: Some(pb::Budget {
            max_iterations,
            max_search_calls,
            max_tokens,
            max_time_seconds: max_time.map(|limit| limit.as_secs_f64()),
            max_cost_usd,
        }),
        used: Some(budget_usage(used)),
        exhausted: exhausted.map_or(pb::BudgetResource::Unspecified, budget_resource) as i32,
    }
}

/// Converts engine statistics.
pub fn stats(stats: EngineStats, uptime: Duration) -> pb::GetStatsResponse {
    let EngineStats {
        collections,
        result_cache,
        search_cache,
        cache_backend,
        usage,
        accounts,
        model,
    } = stats;
    pb::GetStatsResponse {
        collections: collections.into_iter().map(collection_stats).collect(),
        cache: Some(cache_stats(result_cache, &cache_backend)),
        search_cache: Some(cache_stats(search_cache, &cache_backend)),
        usage: Some(usage_totals(usage)),
        key_usage: accounts
            .into_iter()
            .map(|(key_name, usage)| pb::KeyUsage {
                key_name,
                usage: Some(usage_totals(usage)),
            })
            .collect(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        model,
        uptime_seconds: uptime.as_secs_f64(),
    }
}

fn usage_totals(usage: UsageTotals) -> pb::UsageTotals {
    let UsageTotals {
        queries,
        cached_queries,
        coalesced_queries,
        input_tokens,
        output_tokens,
        search_calls,
        llm_calls,
        cost_usd,
        models,
    } = usage;
    pb::UsageTotals {
        queries,
        cached_queries,
        coalesced_queries,
        input_tokens,
        output_tokens,
        search_calls,
        llm_calls,
        cost_usd,
        models: models.into_iter().map(model_usage).collect(),
    }
}

fn cache_stats(stats: CacheStats, backend: &str) -> pb::CacheStats {
    let CacheStats {
        hits,
        misses,
        entries,
        evictions,
        health,
    } = stats;
    pb::CacheStats {
        hits,
        misses,
        entries,
        evictions,
        backend: backend.to_string(),
        health: health.map(|health| pb::CacheHealth {
            reachable: health.reachable,
            probe_latency_seconds: health.probe_latency.as_secs_f64(),
            failures: health.failures,
        }),
    }
}

fn collection_stats(collection: CollectionInfo) -> pb::CollectionStats {
    let CollectionInfo {
        name,
        document_count,
        version,
    } = collection;
    pb::CollectionStats {
        name,
        document_count,
        version,
    }
}

/// Converts a protobuf `Struct` to a JSON object. Non-finite numbers have no JSON form and are
/// refused, naming `field`.
pub fn struct_to_json(
    value: Option<prost_types::Struct>,
    field: &str,
) -> Result<Map<String, Value>, EngineError> {
    let Some(value) = value else {
        return Ok(Map::new());
    };
    value
        .fields
        .into_iter()
        .map(|(key, value)| {
            let path = format!("{field}.{key}");
            Ok((key, value_to_json(value, &path)?))
        })
        .collect()
}

fn value_to_json(value: prost_types::Value, field: &str) -> Result<Value, EngineError> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(flag),
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::NumberValue(number)) => Number::from_f64(number)
            .map(|number| {
                // Whole numbers read back as integers, so 3 and 3.0 mean the same in filters.
                if number
                    .as_f64()
                    .is_some_and(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
                {
                    Value::from(number.as_f64().unwrap_or_default() as i64)
                } else {
                    Value::Number(number)
                }
            })
            .ok_or_else(|| EngineError::invalid(field, "numbers must be finite"))?,
        Some(Kind::StructValue(inner)) => Value::Object(struct_to_json(Some(inner), field)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(index, item)| value_to_json(item, &format!("{field}[{index}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Converts a JSON object to a protobuf `Struct`.
pub fn json_to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        Value::String(text) => Kind::StringValue(text),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_query_mode_defaults_to_the_loop_and_refuses_unknown_numbers() {
        let with_mode = |mode: i32| {
            query_request(pb::QueryRequest {
                query: "q".into(),
                mode,
                ..pb::QueryRequest::default()
            })
        };
        let mode_of = |mode: i32| with_mode(mode).map(|request| request.mode).ok();
        assert_eq!(mode_of(0), Some(QueryMode::Loop));
        assert_eq!(mode_of(pb::QueryMode::Loop as i32), Some(QueryMode::Loop));
        assert_eq!(
            mode_of(pb::QueryMode::SinglePass as i32),
            Some(QueryMode::SinglePass)
        );
        assert!(matches!(
            with_mode(9),
            Err(EngineError::InvalidArgument { field, .. }) if field == "mode"
        ));
    }

    #[test]
    fn structs_round_trip_through_json() {
        let original = json!({"team": "a", "year": 2021, "ratio": 0.5, "tags": ["x", true, null], "nested": {"k": 1}});
        let map = original.as_object().cloned().unwrap_or_default();
        let back = struct_to_json(Some(json_to_struct(map)), "metadata").unwrap();
        assert_eq!(Value::Object(back), original);
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "year".to_string(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        let error = struct_to_json(Some(prost_types::Struct { fields }), "filters").unwrap_err();
        assert!(error.to_string().starts_with("filters.year:"), "{error}");
    }

    #[test]
    fn zero_budgets_are_refused() {
        let budget = pb::Budget {
            max_iterations: Some(0),
            ..Default::default()
        };
        assert!(budget_limits(budget).is_err());
        let budget = pb::Budget {
            max_search_calls: Some(0),
            ..Default::default()
        };
        assert!(budget_limits(budget).is_err());
        let budget = pb::Budget {
            max_time_seconds: Some(f64::INFINITY),
            ..Default::default()
        };
        assert!(budget_limits(budget).is_err());
    }
}
