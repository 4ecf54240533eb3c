//! How the client commands print: a readable live trace for people, JSON for machines. JSON
//! output uses the proto's JSON field names (lowerCamelCase).

use serde_json::{Value, json};

use crate::api::convert::struct_to_json;
use crate::api::pb;
use crate::api::pb::query_event::Event;

/// Prints a Query stream as it arrives.
pub struct TracePrinter {
    json: bool,
}

impl TracePrinter {
    /// Creates a printer; `json` prints only the final result, as one JSON object.
    pub fn new(json: bool) -> Self {
        TracePrinter { json }
    }

    /// Prints one event.
    pub fn print(&mut self, event: &pb::QueryEvent) {
        let Some(kind) = &event.event else { return };
        if self.json {
            if let Event::Result(result) = kind {
                println!("{}", result_json(result));
            }
            return;
        }
        match kind {
            Event::StepStarted(step) => println!("step {}", step.step),
            Event::LlmCall(call) => {
                let action = if call.tool_calls.is_empty() {
                    "answers".to_string()
                } else {
                    format!("calls {}", call.tool_calls.join(", "))
                };
                println!(
                    "  model {} {action} ({} in / {} out tokens, {})",
                    call.model,
                    call.input_tokens,
                    call.output_tokens,
                    millis(call.latency_seconds)
                );
            }
            Event::Search(search) => {
                let hits: Vec<String> = search
                    .hits
                    .iter()
                    .map(|hit| format!("{} ({:.4})", hit.id, hit.score))
                    .collect();
                println!(
                    "  search {:?}: {} hit(s) in {}{}",
                    search.query,
                    search.hits.len(),
                    millis(search.latency_seconds),
                    if search.cache_hit { ", cached" } else { "" }
                );
                for hit in hits {
                    println!("    {hit}");
                }
            }
            Event::SubLlmCall(call) => println!(
                "  sub-model {}: {} prompt(s), {} failed, {}",
                call.model,
                call.prompts,
                call.failed,
                millis(call.latency_seconds)
            ),
            Event::StepCompleted(step) => println!(
                "  step {} done in {}",
                step.step,
                millis(step.latency_seconds)
            ),
            Event::BudgetWarning(warning) => println!("  ! budget: {}", warning.message),
            Event::AnswerDelta(delta) => print!("{}", delta.text),
            Event::Result(result) => print_result(result),
        }
    }
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn print_result(result: &pb::QueryResult) {
    println!();
    let mut flags = Vec::new();
    if result.partial {
        flags.push("partial".to_string());
    }
    if result.cached {
        flags.push("cached".to_string());
    }
    flags.push(format!("confidence {:.2}", result.confidence));
    println!("answer ({}):", flags.join(", "));
    println!("  {}", result.answer);
    if !result.error.is_empty() {
        println!("  note: {}", result.error);
    }
    if !result.sources.is_empty() {
        println!("sources:");
        for source in &result.sources {
            let cited = if result.citations.contains(&source.id) {
                "*"
            } else {
                " "
            };
            let preview: String = source.content.chars().take(90).collect();
            let ellipsis = if source.content.chars().count() > 90 {
                "…"
            } else {
                ""
            };
            println!(
                " {cited} {} ({:.4}): {}{ellipsis}",
                source.id,
                source.score,
                preview.replace('\n', " ")
            );
        }
    }
    if let Some(usage) = &result.usage {
        println!(
            "usage: {} model call(s), {} search(es), {} tokens, ${:.4}; {}",
            usage.llm_calls,
            usage.search_calls,
            usage.total_tokens,
            usage.cost_usd,
            millis(result.execution_time_seconds)
        );
    }
}

/// Returns a result as JSON, with the proto's JSON field names.
pub fn result_json(result: &pb::QueryResult) -> Value {
    let sources: Vec<Value> = result
        .sources
        .iter()
        .map(|source| {
            json!({
                "id": source.id,
                "content": source.content,
                "metadata": struct_to_json(source.metadata.clone(), "metadata").unwrap_or_default(),
                "score": source.score,
            })
        })
        .collect();
    let trace: Vec<Value> = result
        .reasoning_trace
        .iter()
        .map(|step| {
            json!({"step": step.step, "action": step.action, "input": step.input, "output": step.output})
        })
        .collect();
    json!({
        "queryId": result.query_id,
        "answer": result.answer,
        "citations": result.citations,
        "sources": sources,
        "reasoningTrace": trace,
        "usage": result.usage.as_ref().map(usage_json),
        "executionTimeSeconds": result.execution_time_seconds,
        "budgetStatus": result.budget_status.as_ref().map(|status| json!({
            "used": status.used.as_ref().map(|used| json!({
                "iterations": used.iterations,
                "searchCalls": used.search_calls,
                "tokens": used.tokens,
                "costUsd": used.cost_usd,
                "elapsedSeconds": used.elapsed_seconds,
            })),
            "exhausted": pb::BudgetResource::try_from(status.exhausted)
                .map(|resource| resource.as_str_name())
                .unwrap_or("BUDGET_RESOURCE_UNSPECIFIED"),
        })),
        "confidence": result.confidence,
        "partial": result.partial,
        "error": result.error,
        "cached": result.cached,
    })
}

fn usage_json(usage: &pb::Usage) -> Value {
    json!({
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
        "llmCalls": usage.llm_calls,
        "searchCalls": usage.search_calls,
        "costUsd": usage.cost_usd,
        "models": usage.models.iter().map(model_json).collect::<Vec<_>>(),
    })
}

fn model_json(model: &pb::ModelUsage) -> Value {
    json!({
        "model": model.model,
        "calls": model.calls,
        "inputTokens": model.input_tokens,
        "outputTokens": model.output_tokens,
        "costUsd": model.cost_usd,
    })
}

/// Returns statistics as JSON, with the proto's JSON field names.
pub fn stats_json(stats: &pb::GetStatsResponse) -> Value {
    json!({
        "collections": stats.collections.iter().map(|collection| json!({
            "name": collection.name,
            "documentCount": collection.document_count,
            "version": collection.version,
        })).collect::<Vec<_>>(),
        "cache": stats.cache.as_ref().map(cache_json),
        "searchCache": stats.search_cache.as_ref().map(cache_json),
        "usage": stats.usage.as_ref().map(usage_totals_json),
        "keyUsage": stats.key_usage.iter().map(|key| json!({
            "keyName": key.key_name,
            "usage": key.usage.as_ref().map(usage_totals_json),
        })).collect::<Vec<_>>(),
        "serverVersion": stats.server_version,
        "model": stats.model,
        "uptimeSeconds": stats.uptime_seconds,
    })
}

fn usage_totals_json(usage: &pb::UsageTotals) -> Value {
    json!({
        "queries": usage.queries,
        "cachedQueries": usage.cached_queries,
        "coalescedQueries": usage.coalesced_queries,
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "searchCalls": usage.search_calls,
        "llmCalls": usage.llm_calls,
        "costUsd": usage.cost_usd,
        "models": usage.models.iter().map(model_json).collect::<Vec<_>>(),
    })
}

fn cache_json(cache: &pb::CacheStats) -> Value {
    json!({
        "hits": cache.hits,
        "misses": cache.misses,
        "entries": cache.entries,
        "evictions": cache.evictions,
        "backend": cache.backend,
        "health": cache.health.as_ref().map(|health| json!({
            "reachable": health.reachable,
            "probeLatencySeconds": health.probe_latency_seconds,
            "failures": health.failures,
        })),
    })
}

/// Prints statistics for people.
pub fn print_stats(stats: &pb::GetStatsResponse) {
    println!(
        "deeprecall {} · model {} · up {:.0} s",
        stats.server_version, stats.model, stats.uptime_seconds
    );
    println!("collections:");
    if stats.collections.is_empty() {
        println!("  (none)");
    }
    for collection in &stats.collections {
        println!(
            "  {:<24} {:>8} document(s)  version {}",
            collection.name, collection.document_count, collection.version
        );
    }
    for (level, cache) in [("result", &stats.cache), ("search", &stats.search_cache)] {
        if let Some(cache) = cache {
            println!(
                "{level} cache ({}): {} hit(s), {} miss(es), {} entr(ies), {} eviction(s)",
                cache.backend, cache.hits, cache.misses, cache.entries, cache.evictions
            );
            if let Some(health) = &cache.health {
                println!(
                    "  {}: probe {:.2} ms, {} failed operation(s) since start",
                    if health.reachable {
                        "reachable"
                    } else {
                        "UNREACHABLE"
                    },
                    health.probe_latency_seconds * 1000.0,
                    health.failures
                );
            }
        }
    }
    if let Some(usage) = &stats.usage {
        println!("usage: {}", usage_line(usage));
    }
    for key in &stats.key_usage {
        if let Some(usage) = &key.usage {
            println!("  key {:<20} {}", key.key_name, usage_line(usage));
        }
    }
}

fn usage_line(usage: &pb::UsageTotals) -> String {
    format!(
        "{} quer(ies) ({} cached), {} model call(s), {} search(es), {} in / {} out tokens, ${:.4}",
        usage.queries,
        usage.cached_queries,
        usage.llm_calls,
        usage.search_calls,
        usage.input_tokens,
        usage.output_tokens,
        usage.cost_usd
    )
}
