//! The REST endpoints besides chat: models, documents, the cache, usage. Request bodies follow
//! the reference system's (`documents`, `metadatas`, `ids`), plus `collection`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::chat::MODEL;
use super::error::HttpError;
use crate::access::Caller;
use crate::engine::{Engine, UsageTotals};
use crate::store::{NewDocument, WriteOutcome};

/// `POST /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDocuments {
    documents: Vec<String>,
    metadatas: Option<Vec<Option<Map<String, Value>>>>,
    ids: Option<Vec<Option<String>>>,
    collection: Option<String>,
}

impl AddDocuments {
    /// The collection named, if any.
    pub fn collection(&self) -> &str {
        self.collection.as_deref().unwrap_or("")
    }
}

/// `DELETE /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteDocuments {
    ids: Vec<String>,
    collection: Option<String>,
}

impl DeleteDocuments {
    /// The collection named, if any.
    pub fn collection(&self) -> &str {
        self.collection.as_deref().unwrap_or("")
    }
}

/// `POST /v1/cache/clear`; an empty body clears every collection's entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearCache {
    collection: Option<String>,
}

impl ClearCache {
    /// The collection named, if any.
    pub fn collection(&self) -> &str {
        self.collection.as_deref().unwrap_or("")
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

/// Adds documents; `metadatas` and `ids`, when given, pair with `documents` by position.
pub async fn add_documents(engine: &Engine, request: AddDocuments) -> Result<Value, HttpError> {
    let AddDocuments {
        documents,
        metadatas,
        ids,
        collection,
    } = request;
    let count = documents.len();
    if let Some(metadatas) = &metadatas
        && metadatas.len() != count
    {
        return Err(HttpError::invalid(
            "metadatas",
            format!("has {} entries for {count} documents", metadatas.len()),
        ));
    }
    if let Some(ids) = &ids
        && ids.len() != count
    {
        return Err(HttpError::invalid(
            "ids",
            format!("has {} entries for {count} documents", ids.len()),
        ));
    }
    let mut metadatas = metadatas.map(Vec::into_iter);
    let mut ids = ids.map(Vec::into_iter);
    let documents = documents
        .into_iter()
        .map(|content| NewDocument {
            id: ids
                .as_mut()
                .and_then(Iterator::next)
                .flatten()
                .filter(|id| !id.is_empty()),
            content,
            metadata: metadatas
                .as_mut()
                .and_then(Iterator::next)
                .flatten()
                .unwrap_or_default(),
        })
        .collect();
    let outcome = engine
        .add_documents(non_empty(collection.as_deref()), documents)
        .await?;
    Ok(write_outcome(outcome, "ids"))
}

/// Deletes documents by id.
pub async fn delete_documents(
    engine: &Engine,
    request: DeleteDocuments,
) -> Result<Value, HttpError> {
    let DeleteDocuments { ids, collection } = request;
    let outcome = engine
        .delete_documents(non_empty(collection.as_deref()), ids)
        .await?;
    Ok(write_outcome(outcome, "deleted_ids"))
}

fn write_outcome(outcome: WriteOutcome, ids_field: &str) -> Value {
    let mut body = json!({
        "status": "ok",
        "count": outcome.ids.len(),
        "collection": outcome.collection.name,
        "collection_version": outcome.collection.version,
        "document_count": outcome.collection.document_count,
    });
    body[ids_field] = json!(outcome.ids);
    body
}

/// Clears the query and search caches.
pub async fn clear_cache(engine: &Engine, request: ClearCache) -> Result<Value, HttpError> {
    let ClearCache { collection } = request;
    let removed = engine.clear_cache(non_empty(collection.as_deref())).await?;
    Ok(json!({"status": "ok", "entries_removed": removed}))
}

/// The models this server answers as: `deeprecall` and one per collection the caller may use.
pub async fn models(engine: &Engine, caller: &Caller, created: u64) -> Result<Value, HttpError> {
    let stats = engine.stats().await?;
    let model = |id: String| json!({"id": id, "object": "model", "created": created, "owned_by": "deeprecall"});
    let mut data = vec![model(MODEL.to_string())];
    data.extend(
        stats
            .collections
            .iter()
            .filter(|collection| caller.may_see(&collection.name))
            .map(|collection| model(format!("{MODEL}-{}", collection.name))),
    );
    Ok(json!({"object": "list", "data": data}))
}

/// Usage as the caller may see it: its own, or every key's for an admin.
pub async fn usage(engine: &Engine, caller: &Caller) -> Result<Value, HttpError> {
    let mut stats = engine.stats().await?;
    caller.restrict_stats(&mut stats);
    let mut body = totals(&stats.usage);
    body["accounts"] = Value::Object(
        stats
            .accounts
            .iter()
            .map(|(name, usage)| (name.clone(), totals(usage)))
            .collect(),
    );
    body["collections"] = Value::Object(
        stats
            .collections
            .iter()
            .map(|collection| {
                (
                    collection.name.clone(),
                    json!({"documents": collection.document_count, "version": collection.version}),
                )
            })
            .collect(),
    );
    Ok(body)
}

fn totals(usage: &UsageTotals) -> Value {
    json!({
        "queries": usage.queries,
        "cached_queries": usage.cached_queries,
        "coalesced_queries": usage.coalesced_queries,
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "search_calls": usage.search_calls,
        "llm_calls": usage.llm_calls,
        "cost_usd": usage.cost_usd,
        "models": usage.models.iter().map(super::wire::model_usage).collect::<Vec<_>>(),
    })
}
