//! The tool protocol: parsing the model's arguments and formatting what goes back to it.
//! Tool results are JSON objects so that any model, the extractive one included, reads them
//! the same way.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::prompts::{LLM_QUERY, LLM_QUERY_BATCHED, SEARCH_DB, SUBMIT};
use crate::llm::ToolCall;
use crate::store::Hit;

/// A parsed tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolInvocation {
    /// `search_db`.
    Search {
        /// Search text.
        query: String,
        /// Hits wanted, if the model said.
        top_k: Option<usize>,
        /// The model's filters, which narrow the caller's.
        filters: Option<Map<String, Value>>,
    },
    /// `llm_query`.
    LlmQuery {
        /// The prompt.
        prompt: String,
    },
    /// `llm_query_batched`.
    LlmQueryBatched {
        /// The prompts.
        prompts: Vec<String>,
    },
    /// `submit`.
    Submit {
        /// The answer text.
        answer: String,
        /// Ids the model cites.
        citations: Vec<String>,
        /// The model's certainty, 0 to 1.
        certainty: Option<f64>,
    },
}

#[derive(Deserialize)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(default)]
    filters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct LlmQueryArgs {
    prompt: String,
}

#[derive(Deserialize)]
struct LlmQueryBatchedArgs {
    prompts: Vec<String>,
}

#[derive(Deserialize)]
struct SubmitArgs {
    answer: String,
    #[serde(default)]
    citations: Vec<String>,
    #[serde(default)]
    certainty: Option<f64>,
}

/// Parses a tool call, or returns a message the model can act on.
pub fn parse(call: &ToolCall) -> Result<ToolInvocation, String> {
    let arguments = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    let invalid =
        |error: serde_json::Error| format!("invalid arguments for {}: {error}", call.name);
    match call.name.as_str() {
        SEARCH_DB => {
            let args: SearchArgs = serde_json::from_str(arguments).map_err(invalid)?;
            if args.query.trim().is_empty() {
                return Err("invalid arguments for search_db: query is empty".to_string());
            }
            Ok(ToolInvocation::Search {
                query: args.query,
                top_k: args.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
                filters: args.filters,
            })
        }
        LLM_QUERY => {
            let args: LlmQueryArgs = serde_json::from_str(arguments).map_err(invalid)?;
            Ok(ToolInvocation::LlmQuery {
                prompt: args.prompt,
            })
        }
        LLM_QUERY_BATCHED => {
            let args: LlmQueryBatchedArgs = serde_json::from_str(arguments).map_err(invalid)?;
            Ok(ToolInvocation::LlmQueryBatched {
                prompts: args.prompts,
            })
        }
        SUBMIT => {
            let args: SubmitArgs = serde_json::from_str(arguments).map_err(invalid)?;
            Ok(ToolInvocation::Submit {
                answer: args.answer,
                citations: args.citations,
                certainty: args.certainty,
            })
        }
        other => Err(format!(
            "unknown tool {other:?}; the tools are {SEARCH_DB}, {LLM_QUERY}, {LLM_QUERY_BATCHED} and {SUBMIT}"
        )),
    }
}

/// Formats search hits for the model.
pub fn search_result(hits: &[Hit]) -> String {
    /// One hit as the model reads it, serialised from the hit itself rather than from a copy.
    /// Fields in alphabetical order, as a JSON object with sorted keys would have them.
    #[derive(Serialize)]
    struct HitResult<'a> {
        content: &'a str,
        id: &'a str,
        metadata: &'a Map<String, Value>,
        score: f64,
    }
    #[derive(Serialize)]
    struct SearchResult<'a> {
        hits: Vec<HitResult<'a>>,
    }
    let result = SearchResult {
        hits: hits
            .iter()
            .map(|hit| HitResult {
                content: &hit.content,
                id: &hit.id,
                metadata: &hit.metadata,
                score: hit.score,
            })
            .collect(),
    };
    // Strings, JSON maps and numbers cannot fail to serialise; the fallback is for the type
    // system only.
    serde_json::to_string(&result).unwrap_or_else(|_| json!({ "hits": [] }).to_string())
}

/// The reasoning trace's account of a search: how many hits, and which.
pub fn search_summary(hits: &[Hit]) -> String {
    let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
    format!("{} hit(s): {}", hits.len(), ids.join(", "))
}

/// Formats a sub-model answer for the model.
pub fn llm_query_result(response: &str) -> String {
    json!({ "response": response }).to_string()
}

/// Formats batched sub-model answers for the model.
pub fn llm_query_batched_result(responses: &[String]) -> String {
    json!({ "responses": responses }).to_string()
}

/// Formats a tool failure for the model.
pub fn error_result(message: &str) -> String {
    json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_results_carry_each_hit_whole_and_the_summary_names_them() {
        let mut metadata = Map::new();
        metadata.insert("team".into(), json!("a"));
        let hits = vec![
            Hit {
                id: "doc-1".into(),
                content: "The \"kestrel\" project.".into(),
                metadata,
                score: 0.5,
            },
            Hit {
                id: "doc-2".into(),
                content: String::new(),
                metadata: Map::new(),
                score: 0.25,
            },
        ];
        let result = search_result(&hits);
        assert_eq!(
            serde_json::from_str::<Value>(&result).unwrap(),
            json!({"hits": [
                {"id": "doc-1", "score": 0.5, "content": "The \"kestrel\" project.", "metadata": {"team": "a"}},
                {"id": "doc-2", "score": 0.25, "content": "", "metadata": {}},
            ]})
        );
        // Keys in the order a sorted JSON object has them, as before the direct serialiser.
        assert!(result.starts_with(r#"{"hits":[{"content":"#), "{result}");
        assert_eq!(search_summary(&hits), "2 hit(s): doc-1, doc-2");
        assert_eq!(search_result(&[]), r#"{"hits":[]}"#);
        assert_eq!(search_summary(&[]), "0 hit(s): ");
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "1".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn search_arguments_parse_with_optional_fields() {
        let parsed = parse(&call(
            "search_db",
            r#"{"query":"kestrel","top_k":3,"filters":{"team":"a"}}"#,
        ));
        let Ok(ToolInvocation::Search {
            query,
            top_k,
            filters,
        }) = parsed
        else {
            panic!("unexpected {parsed:?}");
        };
        assert_eq!((query.as_str(), top_k), ("kestrel", Some(3)));
        assert!(filters.is_some());
    }

    #[test]
    fn malformed_arguments_explain_themselves() {
        let error = parse(&call("search_db", "{not json"))
            .err()
            .unwrap_or_default();
        assert!(
            error.starts_with("invalid arguments for search_db"),
            "{error}"
        );
        let error = parse(&call("search_db", r#"{"query":"  "}"#))
            .err()
            .unwrap_or_default();
        assert!(error.contains("query is empty"), "{error}");
    }

    #[test]
    fn an_unknown_tool_lists_the_real_ones() {
        let error = parse(&call("browse", "{}")).err().unwrap_or_default();
        assert!(
            error.contains("unknown tool") && error.contains("search_db"),
            "{error}"
        );
    }

    #[test]
    fn sub_model_answers_reach_the_model_as_json() {
        assert_eq!(
            serde_json::from_str::<Value>(&llm_query_result("Porto, \"mostly\"")).unwrap(),
            json!({"response": "Porto, \"mostly\""})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&llm_query_batched_result(&["a".into(), "b".into()]))
                .unwrap(),
            json!({"responses": ["a", "b"]})
        );
    }
}
