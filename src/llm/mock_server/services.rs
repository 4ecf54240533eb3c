//! The endpoints beside chat: OpenAI's `/v1/embeddings` and Cohere's rerank (`/v2/rerank`, the
//! shape TEI, Jina, Voyage, vLLM and Infinity also serve).
//!
//! Answers are computed, not scripted: vectors come from feature hashing, so texts sharing
//! words get similar vectors, and rerank scores are the cosine similarity of query and
//! document. A test of semantic search over the mock therefore behaves like one over a real,
//! if crude, model; the script only decides when the endpoint misbehaves.

use super::*;
use crate::embed::HashingEmbedder;

/// Dimensions of the vectors behind rerank scores.
const RERANK_DIMENSION: usize = 1024;

/// An endpoint other than chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Embeddings,
    Rerank,
}

impl Service {
    /// The error shape the endpoint answers with. Cohere's errors are `{"message": …}`, which
    /// clients read the same way as OpenAI's nested message.
    pub(super) fn error_api(self) -> Api {
        Api::OpenAi
    }
}

/// What an embeddings or rerank request asked for.
pub(super) struct ServiceRequest {
    pub(super) service: Service,
    model: String,
    /// Embeddings: the inputs. Rerank: the documents.
    texts: Vec<String>,
    /// Rerank only.
    query: String,
    /// Embeddings: `dimensions`, when asked.
    dimensions: Option<usize>,
    /// Rerank: `top_n`, when asked.
    top_n: Option<usize>,
}

impl ServiceRequest {
    pub(super) fn read(service: Service, body: &Value) -> Self {
        let strings = |value: Option<&Value>| -> Vec<String> {
            match value {
                Some(Value::String(text)) => vec![text.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => text.clone(),
                        // Cohere v1 also took documents as `{"text": …}` objects.
                        other => other
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let count = |key: &str| {
            body.get(key)
                .and_then(Value::as_u64)
                .and_then(|value| usize::try_from(value).ok())
        };
        let (texts, query) = match service {
            Service::Embeddings => (strings(body.get("input")), String::new()),
            Service::Rerank => (
                strings(body.get("documents")),
                body.get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
        };
        ServiceRequest {
            service,
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(FALLBACK_MODEL)
                .to_string(),
            texts,
            query,
            dimensions: count("dimensions"),
            top_n: count("top_n"),
        }
    }
}

/// Answers an embeddings or rerank request as the plan says.
pub(super) async fn respond_service(
    shared: &Shared,
    request: ServiceRequest,
    plan: Plan,
    mut guard: AbandonGuard,
) -> Response {
    let api = request.service.error_api();
    if wait_turn(shared, &plan, guard.arrived).await.is_err() {
        return stopping(api, guard);
    }
    let answer = match plan.action {
        Action::Answer(_) => Ok(Fault::None),
        Action::WrongCount => Ok(Fault::WrongCount),
        Action::WrongShape => Ok(Fault::WrongShape),
        Action::Status {
            code,
            retry_after,
            body,
        } => Err(status_response(api, code, retry_after.as_deref(), &body)),
        Action::Hang => {
            let _ = shared.pause_until(None).await;
            return stopping(api, guard);
        }
        Action::MalformedJson => Err(raw_json_response(MALFORMED_BODY.as_bytes().to_vec())),
        Action::TruncatedStream => {
            let whole = answer_body(shared, &request, Fault::None, plan.usage).to_string();
            let mut bytes = whole.into_bytes();
            bytes.truncate(bytes.len() / 2);
            Err(raw_json_response(bytes))
        }
    };
    guard.disarm();
    match answer {
        Ok(fault) => json_response(&answer_body(shared, &request, fault, plan.usage)),
        Err(response) => response,
    }
}

/// A deliberate mistake in an otherwise correct answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    WrongCount,
    WrongShape,
}

fn answer_body(
    shared: &Shared,
    request: &ServiceRequest,
    fault: Fault,
    usage: Option<Usage>,
) -> Value {
    let tokens = usage.map_or_else(
        || {
            let chars: usize = request.texts.iter().map(|text| text.chars().count()).sum();
            token_count(chars + request.query.chars().count())
        },
        |usage| usage.input_tokens,
    );
    match request.service {
        Service::Embeddings => embeddings_body(shared, request, fault, tokens),
        Service::Rerank => rerank_body(shared, request, fault, tokens),
    }
}

fn embeddings_body(shared: &Shared, request: &ServiceRequest, fault: Fault, tokens: u64) -> Value {
    let dimension = request
        .dimensions
        .unwrap_or(shared.embedding_dimension)
        .max(1);
    let embedder = HashingEmbedder::new(dimension);
    let mut texts: &[String] = &request.texts;
    if fault == Fault::WrongCount {
        texts = texts.split_last().map_or(texts, |(_, rest)| rest);
    }
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut vector = dense(&embedder, text, dimension);
            if fault == Fault::WrongShape {
                vector.push(0.0);
            }
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

fn rerank_body(shared: &Shared, request: &ServiceRequest, fault: Fault, tokens: u64) -> Value {
    let embedder = HashingEmbedder::new(RERANK_DIMENSION);
    let query = dense(&embedder, &request.query, RERANK_DIMENSION);
    let mut results: Vec<(usize, f32)> = request
        .texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let document = dense(&embedder, text, RERANK_DIMENSION);
            let cosine: f32 = query.iter().zip(&document).map(|(a, b)| a * b).sum();
            (index, cosine.clamp(0.0, 1.0))
        })
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    results.truncate(request.top_n.unwrap_or(usize::MAX));
    match fault {
        Fault::None => {}
        Fault::WrongCount => {
            results.pop();
        }
        Fault::WrongShape => {
            if let Some(first) = results.first_mut() {
                first.0 = request.texts.len();
            }
        }
    }
    let results: Vec<Value> = results
        .iter()
        .map(|(index, score)| json!({"index": index, "relevance_score": score}))
        .collect();
    json!({
        "id": format!("rerank-mock-{}", shared.next_id()),
        "results": results,
        "meta": {"billed_units": {"search_units": 1, "input_tokens": tokens}},
    })
}

fn dense(embedder: &HashingEmbedder, text: &str, dimension: usize) -> Vec<f32> {
    let sparse = embedder.embed_text(text);
    let mut vector = vec![0.0; dimension];
    for (index, value) in sparse.indices.iter().zip(&sparse.values) {
        if let Some(slot) = vector.get_mut(*index as usize) {
            *slot = *value;
        }
    }
    vector
}
