//! The `search_db` tool: the store's fused hits, through the search cache, reported as a trace
//! event.

use std::time::Instant;

use serde_json::Value;
use tracing::Instrument;

use super::{Guarded, Run, ToolOutcome};
use crate::cache::CacheKey;
use crate::engine::budget::BudgetResource;
use crate::engine::events::{EventKind, SearchRecord};
use crate::engine::tools;
use crate::store::{Filter, Hit, SearchRequest};
use crate::telemetry::spans;

impl Run<'_> {
    pub(super) async fn search(
        &self,
        step: u32,
        query: String,
        top_k: Option<usize>,
        filters: Option<serde_json::Map<String, Value>>,
    ) -> ToolOutcome {
        let model_filter = match filters.as_ref().map(Filter::from_json).transpose() {
            Ok(filter) => filter.unwrap_or_default(),
            Err(error) => return ToolOutcome::failed(&format!("invalid filters: {error}")),
        };
        if let Err(resource) = self.budget.lock().reserve_search() {
            return ToolOutcome::exhausted(resource);
        }
        let top_k = top_k
            .unwrap_or(self.prepared.top_k)
            .clamp(1, self.inner.config.max_top_k);
        // The caller's filters bound every search: the model's can only narrow them.
        let filter = self.prepared.filter.and(&model_filter);
        let request = SearchRequest {
            collection: self.prepared.collection.name.clone(),
            query: query.clone(),
            top_k,
            filter: filter.clone(),
        };
        let started = Instant::now();
        let collection = &self.prepared.collection;
        let span = spans::search(
            step,
            &collection.name,
            u32::try_from(top_k).unwrap_or(u32::MAX),
        );
        // Everything that changes the hits; the content version makes a write invalidate. A
        // search cache that keeps nothing needs no key: every search is a miss.
        let cache_key = self.inner.searches.keeps_entries().then(|| {
            CacheKey::digest_of(
                &collection.name,
                &serde_json::json!({
                    "collection_version": collection.version,
                    "query": query,
                    "filters": filter.to_json(),
                    "top_k": top_k,
                }),
            )
        });
        let cached = match &cache_key {
            Some(cache_key) if !self.prepared.request.skip_cache => {
                self.inner
                    .searches
                    .lookup::<Vec<Hit>>(cache_key)
                    .instrument(span.clone())
                    .await
            }
            _ => None,
        };
        let cache_hit = cached.is_some();
        if !self.prepared.request.skip_cache {
            self.inner
                .metrics
                .cache_lookup(self.inner.searches.name, cache_hit);
        }
        let hits = match cached {
            Some(hits) => hits,
            None => match self
                .guarded(self.inner.store.search(request))
                .instrument(span.clone())
                .await
            {
                Guarded::Done(Ok(hits)) => {
                    if let Some(cache_key) = &cache_key {
                        self.inner.searches.store(cache_key, &hits).await;
                    }
                    hits
                }
                Guarded::Done(Err(error)) => {
                    spans::record_error(&span, &error.to_string());
                    return ToolOutcome::failed(&format!("search failed: {error}"));
                }
                Guarded::Cancelled => return ToolOutcome::failed("cancelled"),
                Guarded::OutOfTime => return ToolOutcome::exhausted(BudgetResource::Time),
            },
        };
        spans::record_search(&span, hits.len(), cache_hit);
        spans::record_search_latency(&span, started.elapsed());
        self.usage.lock().search_calls += 1;
        {
            let mut sources = self.sources.lock();
            for hit in &hits {
                match sources.get_mut(&hit.id) {
                    Some(known) => known.score = known.score.max(hit.score),
                    None => {
                        sources.insert(hit.id.clone(), hit.clone());
                    }
                }
            }
        }
        self.emit(EventKind::Search(SearchRecord {
            step,
            collection: self.prepared.collection.name.clone(),
            query,
            filters: filter.to_json(),
            top_k: u32::try_from(top_k).unwrap_or(u32::MAX),
            hits: hits.iter().map(|hit| (hit.id.clone(), hit.score)).collect(),
            latency: started.elapsed(),
            cache_hit,
        }))
        .await;
        ToolOutcome::ok(tools::search_result(&hits), tools::search_summary(&hits))
    }
}
