//! The `search_db` tool: the store's fused hits, through the search cache, reordered by the
//! reranker when one is configured, and reported as a trace event.

use std::time::Instant;

use serde::{Deserialize, Serialize};
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
        let rerank = self.inner.rerank.as_ref();
        let request = SearchRequest {
            collection: self.prepared.collection.name.clone(),
            query: query.clone(),
            // The reranker chooses among more candidates than the search keeps.
            top_k: rerank.map_or(top_k, |stage| stage.candidates.max(top_k)),
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
                    "embedder": self.inner.store.embedder_id(),
                    "ranking": self.inner.store.ranking_id(),
                    "reranker": rerank.map(|stage| (stage.reranker.id(), stage.candidates)),
                }),
            )
        });
        let cached = match &cache_key {
            Some(cache_key) if !self.prepared.request.skip_cache => {
                self.inner
                    .searches
                    .lookup::<RankedHits>(cache_key)
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
        let ranked = match cached {
            Some(ranked) => ranked,
            None => {
                let candidates = match self
                    .guarded(self.inner.store.search(request))
                    .instrument(span.clone())
                    .await
                {
                    Guarded::Done(Ok(hits)) => hits,
                    Guarded::Done(Err(error)) => {
                        spans::record_error(&span, &error.to_string());
                        return ToolOutcome::failed(&format!("search failed: {error}"));
                    }
                    Guarded::Cancelled => return ToolOutcome::failed("cancelled"),
                    Guarded::OutOfTime => return ToolOutcome::exhausted(BudgetResource::Time),
                };
                let ranked = match self.rerank(&query, candidates, top_k).await {
                    Guarded::Done(ranked) => ranked,
                    Guarded::Cancelled => return ToolOutcome::failed("cancelled"),
                    Guarded::OutOfTime => return ToolOutcome::exhausted(BudgetResource::Time),
                };
                // A fallback order is kept only for this search: once the reranker is back,
                // the same search should get its order.
                if let Some(cache_key) = &cache_key
                    && !ranked.rerank_failed
                {
                    self.inner.searches.store(cache_key, &ranked).await;
                }
                ranked
            }
        };
        let RankedHits {
            hits,
            rerank_scores,
            rerank_failed,
        } = ranked;
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
            reranker: rerank.map(|stage| stage.reranker.id()),
            rerank_scores,
            rerank_failed,
        }))
        .await;
        ToolOutcome::ok(tools::search_result(&hits), tools::search_summary(&hits))
    }

    /// Reorders the fused candidates by the reranker's scores, best first, and keeps `top_k`.
    /// A reranker that fails leaves the fused order: a worse order beats no answer.
    async fn rerank(&self, query: &str, mut hits: Vec<Hit>, top_k: usize) -> Guarded<RankedHits> {
        let Some(stage) = &self.inner.rerank else {
            hits.truncate(top_k);
            return Guarded::Done(RankedHits::fused(hits, false));
        };
        if hits.is_empty() {
            return Guarded::Done(RankedHits::fused(hits, false));
        }
        let passages: Vec<String> = hits.iter().map(|hit| hit.content.clone()).collect();
        let scores = match self.guarded(stage.reranker.score(query, &passages)).await {
            Guarded::Done(Ok(scores)) if scores.len() == hits.len() => scores,
            Guarded::Done(outcome) => {
                let reason = match outcome {
                    Ok(scores) => format!("{} scores for {} passages", scores.len(), hits.len()),
                    Err(error) => error.to_string(),
                };
                let reranker = stage.reranker.id();
                tracing::warn!(%reranker, %reason, "reranking failed; the fused order stands");
                self.inner.metrics.rerank_failed(&reranker);
                hits.truncate(top_k);
                return Guarded::Done(RankedHits::fused(hits, true));
            }
            Guarded::Cancelled => return Guarded::Cancelled,
            Guarded::OutOfTime => return Guarded::OutOfTime,
        };
        let mut scored: Vec<(Hit, f64)> = hits
            .into_iter()
            .zip(scores.into_iter().map(f64::from))
            .collect();
        // Stable: passages the reranker ties keep their fused order.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(top_k);
        let (hits, rerank_scores) = scored.into_iter().unzip();
        Guarded::Done(RankedHits {
            hits,
            rerank_scores,
            rerank_failed: false,
        })
    }
}

/// A search's hits in their final order, as the search cache keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RankedHits {
    hits: Vec<Hit>,
    /// The reranker's score of each hit, in the same order; empty when no reranker ran.
    #[serde(default)]
    rerank_scores: Vec<f64>,
    /// The reranker failed and the hits keep the fused order.
    #[serde(default)]
    rerank_failed: bool,
}

impl RankedHits {
    fn fused(hits: Vec<Hit>, rerank_failed: bool) -> Self {
        RankedHits {
            hits,
            rerank_scores: Vec::new(),
            rerank_failed,
        }
    }
}
