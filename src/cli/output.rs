//! How the client commands print: a readable live trace for people, JSON for machines. JSON
//! output is the proto3 JSON mapping of the contract's messages, as `buf curl` prints them.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};

use crate::api::pb;
use crate::api::pb::query_event::Event;

/// Prints a Query stream as it arrives.
pub struct TracePrinter {
    json: bool,
}

impl TracePrinter {
    /// Creates a printer; `json` prints every event, the result last, as one JSON line each.
    pub fn new(json: bool) -> Self {
        TracePrinter { json }
    }

    /// Prints one event.
    pub fn print(&mut self, event: &pb::QueryEvent) {
        if self.json {
            println!("{}", event_json(event));
            return;
        }
        let Some(kind) = &event.event else { return };
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

/// The contract's descriptors, read once from the descriptor set built into the binary.
fn descriptors() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// Returns a message of the contract as JSON in the proto3 JSON mapping, exactly as `buf curl`
/// and grpcurl print it: lowerCamelCase names, enums by name, 64-bit integers as strings,
/// fields at their default left out. `name` is the message's full name.
pub fn message_json(message: &impl prost::Message, name: &str) -> Value {
    let converted = descriptors()
        .and_then(|pool| pool.get_message_by_name(name))
        .ok_or_else(|| format!("{name} is not in the contract's descriptors"))
        .and_then(|descriptor| {
            DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
                .map_err(|error| error.to_string())
        })
        .and_then(|dynamic| serde_json::to_value(&dynamic).map_err(|error| error.to_string()));
    // The descriptors are built from the same contract as the types: this cannot fail, but a
    // printer reports rather than panics.
    converted.unwrap_or_else(|error| json!({ "error": error }))
}

/// Returns a Query event as JSON, in the proto3 JSON mapping.
pub fn event_json(event: &pb::QueryEvent) -> Value {
    message_json(event, "deeprecall.v1.QueryEvent")
}

/// Returns statistics as JSON, in the proto3 JSON mapping.
pub fn stats_json(stats: &pb::GetStatsResponse) -> Value {
    message_json(stats, "deeprecall.v1.GetStatsResponse")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_follow_the_proto3_json_mapping() {
        let event = pb::QueryEvent {
            sequence: 7,
            event: Some(Event::Result(pb::QueryResult {
                answer: "Tampere [k]".into(),
                coalesced: true,
                budget_status: Some(pb::BudgetStatus {
                    limits: Some(pb::Budget {
                        max_search_calls: Some(4),
                        max_tokens: Some(1000),
                        ..pb::Budget::default()
                    }),
                    used: None,
                    exhausted: pb::BudgetResource::Time as i32,
                }),
                ..pb::QueryResult::default()
            })),
            ..pb::QueryEvent::default()
        };
        let value = event_json(&event);
        let result = &value["result"];
        assert_eq!(result["answer"], "Tampere [k]");
        assert_eq!(result["coalesced"], true);
        assert_eq!(result["budgetStatus"]["limits"]["maxSearchCalls"], 4);
        assert_eq!(
            result["budgetStatus"]["limits"]["maxTokens"], "1000",
            "64-bit as a string"
        );
        assert_eq!(result["budgetStatus"]["exhausted"], "BUDGET_RESOURCE_TIME");
        assert_eq!(value["sequence"], 7);
        assert!(
            result.get("partial").is_none(),
            "defaults are left out, as buf curl does"
        );
    }
}
