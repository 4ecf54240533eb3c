//! Request bodies in, engine results out: bounded reading, strict parsing that names the field
//! at fault, and the JSON shapes of results shared by the endpoints.

use axum::body::Body;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::HttpError;
use crate::engine::result::{BudgetStatus, ModelUsage, Usage};
use crate::engine::{BudgetLimits, BudgetResource, BudgetUsage, QueryResult};
use crate::store::Hit;

/// Reads a body of at most `limit` bytes and parses it as `T`. A body over the bound is a 413;
/// bad JSON, a wrong type or an unknown field is a 400 naming the field (`messages[1].role`).
pub async fn parse<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, HttpError> {
    parse_bytes(&read(body, limit).await?)
}

/// Like [`parse`], for a body that may be left out: an empty one means every default.
pub async fn parse_optional<T: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, HttpError> {
    let bytes = read(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_bytes(&bytes)
}

/// Reads a whole body of at most `limit` bytes.
async fn read(body: Body, limit: usize) -> Result<axum::body::Bytes, HttpError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        if is_length_limit(&error) {
            HttpError::too_large(limit)
        } else {
            HttpError::bad_body(format!("cannot read the request body: {error}"))
        }
    })
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        if current.to_string().contains("length limit exceeded") {
            return true;
        }
        source = current.source();
    }
    false
}

/// Parses JSON bytes as `T`, naming the field at fault.
pub fn parse_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.is_empty() {
        return Err(HttpError::bad_body(
            "the request body is empty: send a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return HttpError::bad_body(format!("the request body is not valid JSON: {inner}"));
        }
        // An unknown field is reported at the object holding it; the message names it.
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        HttpError::invalid(field, strip_position(&inner.to_string()))
    })
}

/// serde_json ends its messages with the line and column, meaningless once the field is named.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |position| &message[..position])
}

/// A source as JSON.
pub fn source(hit: &Hit) -> Value {
    json!({
        "id": hit.id,
        "content": hit.content,
        "metadata": hit.metadata,
        "score": hit.score,
    })
}

/// The name of a budget resource in JSON, as a request spells its limit without `max_`.
pub fn resource_name(resource: BudgetResource) -> &'static str {
    match resource {
        BudgetResource::Iterations => "iterations",
        BudgetResource::SearchCalls => "search_calls",
        BudgetResource::Tokens => "tokens",
        BudgetResource::Time => "time",
        BudgetResource::Cost => "cost",
    }
}

fn limits(limits: &BudgetLimits) -> Value {
    json!({
        "max_iterations": limits.max_iterations,
        "max_search_calls": limits.max_search_calls,
        "max_tokens": limits.max_tokens,
        "max_time_seconds": limits.max_time.map(|time| time.as_secs_f64()),
        "max_cost_usd": limits.max_cost_usd,
    })
}

/// Budget used so far, as every trace event and result carries it.
pub fn budget_usage(used: &BudgetUsage) -> Value {
    json!({
        "iterations": used.iterations,
        "search_calls": used.search_calls,
        "tokens": used.tokens,
        "cost_usd": used.cost_usd,
        "elapsed_seconds": used.elapsed.as_secs_f64(),
    })
}

fn budget_status(status: &BudgetStatus) -> Value {
    json!({
        "limits": limits(&status.limits),
        "used": budget_usage(&status.used),
        "exhausted": status.exhausted.map(resource_name),
    })
}

/// Usage of one model.
pub fn model_usage(usage: &ModelUsage) -> Value {
    json!({
        "model": usage.model,
        "calls": usage.calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": usage.cost_usd,
    })
}

fn usage(usage: &Usage) -> Value {
    json!({
        "models": usage.models.iter().map(model_usage).collect::<Vec<_>>(),
        "search_calls": usage.search_calls,
        "input_tokens": usage.input_tokens(),
        "output_tokens": usage.output_tokens(),
        "llm_calls": usage.llm_calls(),
        "cost_usd": usage.cost_usd(),
    })
}

/// OpenAI's `usage` object of a completion: real tokens of every model call of the run.
pub fn completion_usage(result: &QueryResult) -> Value {
    let prompt = result.usage.input_tokens();
    let completion = result.usage.output_tokens();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// The `deeprecall` extension of a completion: everything of the result that OpenAI's shape
/// has no field for. `answer` is the final, cited answer, whatever was streamed before it.
pub fn extension(result: &QueryResult) -> Value {
    let mut fields = Map::new();
    fields.insert("query_id".into(), json!(result.query_id));
    fields.insert("answer".into(), json!(result.answer));
    fields.insert("citations".into(), json!(result.citations));
    fields.insert(
        "sources".into(),
        Value::Array(result.sources.iter().map(source).collect()),
    );
    fields.insert(
        "reasoning_trace".into(),
        Value::Array(
            result
                .reasoning_trace
                .iter()
                .map(|step| {
                    json!({
                        "step": step.step,
                        "action": step.action,
                        "input": step.input,
                        "output": step.output,
                    })
                })
                .collect(),
        ),
    );
    fields.insert("usage".into(), usage(&result.usage));
    fields.insert("budget_status".into(), budget_status(&result.budget));
    fields.insert(
        "execution_time_seconds".into(),
        json!(result.execution_time.as_secs_f64()),
    );
    fields.insert("confidence".into(), json!(result.confidence));
    fields.insert("partial".into(), json!(result.partial));
    fields.insert("error".into(), json!(result.error));
    fields.insert("cached".into(), json!(result.cached));
    fields.insert("coalesced".into(), json!(result.coalesced));
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only parsed")]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only parsed")]
    struct Inner {
        count: u32,
    }

    fn refusal(body: &str) -> HttpError {
        match parse_bytes::<Outer>(body.as_bytes()) {
            Ok(parsed) => panic!("accepted {parsed:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let error = refusal(r#"{"items": [{"count": 1}, {"count": "two"}]}"#);
        assert_eq!(error.status.as_u16(), 400);
        assert_eq!(error.param.as_deref(), Some("items[1].count"));
        assert!(
            error.message.starts_with("items[1].count: invalid type"),
            "{}",
            error.message
        );

        let error = refusal(r#"{"items": [], "colour": "red"}"#);
        assert!(
            error.message.contains("unknown field `colour`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn bad_json_is_a_bad_request() {
        let error = refusal(r#"{"items": ["#);
        assert_eq!(error.status.as_u16(), 400);
        assert_eq!(error.code, "invalid_json");
        assert_eq!(refusal("").code, "invalid_json");
    }
}
