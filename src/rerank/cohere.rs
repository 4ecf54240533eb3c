//! Reranking through Cohere's v2 `/rerank` request shape, which TEI (`/rerank` behind its
//! Cohere-compatible route), Jina, Voyage, vLLM and Infinity also serve.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{RerankError, Reranker};
use crate::llm::http::{HttpClient, RetryPolicy, bearer_client, endpoint};
use crate::llm::{LlmError, UsageMeter};
use crate::secret::Secret;

/// Cohere's API root.
pub const COHERE_BASE_URL: &str = "https://api.cohere.com/v2";

/// Settings of a Cohere-compatible reranker.
#[derive(Debug, Clone)]
pub struct CohereRerankerConfig {
    /// API root; requests go to `{base_url}/rerank`.
    pub base_url: String,
    /// API key; local servers need none.
    pub api_key: Secret,
    /// Model name.
    pub model: String,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request, retries included: a search waits no longer than this for a
    /// better order.
    pub request_timeout: Duration,
    /// Retries of one request, within `request_timeout`.
    pub retry: RetryPolicy,
}

impl Default for CohereRerankerConfig {
    fn default() -> Self {
        CohereRerankerConfig {
            base_url: COHERE_BASE_URL.into(),
            api_key: Secret::default(),
            model: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(2),
            },
        }
    }
}

/// A Cohere-compatible reranker.
#[derive(Debug)]
pub struct CohereReranker {
    model: String,
    url: reqwest::Url,
    http: HttpClient,
    request_timeout: Duration,
    meter: Option<UsageMeter>,
}

impl CohereReranker {
    /// Builds the reranker, checking the settings.
    pub fn new(config: CohereRerankerConfig) -> Result<Self, RerankError> {
        let model = config.model.trim().to_string();
        if model.is_empty() {
            return Err(RerankError::Misconfigured(
                "the cohere reranker needs a model: set --reranker-model".into(),
            ));
        }
        let base = config.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RerankError::Misconfigured(format!(
                "reranker base URL {base:?} must start with http:// or https://"
            )));
        }
        let http = bearer_client(
            &config.api_key,
            &[],
            config.connect_timeout,
            config.request_timeout,
            config.retry,
        )
        .map_err(misconfigured)?;
        Ok(CohereReranker {
            model,
            url: endpoint(&format!("{base}/rerank")).map_err(misconfigured)?,
            http,
            request_timeout: config.request_timeout,
            meter: None,
        })
    }

    /// Returns the reranker reporting its usage to `meter`.
    pub fn with_meter(mut self, meter: UsageMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    async fn call(&self, query: &str, passages: &[String]) -> Result<Vec<f32>, RerankError> {
        let request = RerankRequest {
            model: &self.model,
            query,
            documents: passages,
            top_n: passages.len(),
        };
        // Retries stop at the request's timeout, not at a fresh one per attempt.
        let deadline = Instant::now() + self.request_timeout;
        let response = self
            .http
            .post_json(&self.url, &request, Some(deadline))
            .await
            .map_err(|error| match error {
                LlmError::Misconfigured(reason) => RerankError::Misconfigured(reason),
                LlmError::Unavailable(reason) | LlmError::BadResponse(reason) => {
                    RerankError::Unavailable(reason)
                }
            })?;
        let body = response
            .bytes()
            .await
            .map_err(|error| RerankError::Unavailable(format!("reading the answer: {error}")))?;
        let answer: RerankResponse = serde_json::from_slice(&body).map_err(|error| {
            RerankError::BadResponse(format!("the answer is not a rerank result: {error}"))
        })?;
        scores_in_order(passages.len(), &answer.results)
    }
}

#[async_trait]
impl Reranker for CohereReranker {
    fn id(&self) -> String {
        format!("cohere:{}", self.model)
    }

    async fn score(&self, query: &str, passages: &[String]) -> Result<Vec<f32>, RerankError> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let outcome = self.call(query, passages).await;
        if let Some(meter) = &self.meter {
            match &outcome {
                // Cohere bills searches, not tokens: each call counts, priced at nothing.
                Ok(_) => meter.record(&self.model, 0, started.elapsed()),
                Err(_) => meter.failed(&self.model),
            }
        }
        outcome
    }
}

/// Turns results (ordered by relevance, each naming a passage) into one score per passage, in
/// the passages' order. Every passage must be scored exactly once.
fn scores_in_order(count: usize, results: &[RerankResult]) -> Result<Vec<f32>, RerankError> {
    if results.len() != count {
        return Err(RerankError::BadResponse(format!(
            "{} scores for {count} passages",
            results.len()
        )));
    }
    let mut scores: Vec<Option<f32>> = vec![None; count];
    for result in results {
        let slot = scores.get_mut(result.index).ok_or_else(|| {
            RerankError::BadResponse(format!("a score for passage {} of {count}", result.index))
        })?;
        if slot.replace(result.relevance_score).is_some() {
            return Err(RerankError::BadResponse(format!(
                "passage {} scored twice",
                result.index
            )));
        }
        if !result.relevance_score.is_finite() {
            return Err(RerankError::BadResponse(format!(
                "passage {} scored {}",
                result.index, result.relevance_score
            )));
        }
    }
    // Every slot is filled: as many results as passages, none repeated, none out of range.
    Ok(scores.into_iter().map(Option::unwrap_or_default).collect())
}

fn misconfigured(error: LlmError) -> RerankError {
    RerankError::Misconfigured(error.to_string())
}

#[derive(Serialize)]
struct RerankRequest<'a> {
    model: &'a str,
    query: &'a str,
    documents: &'a [String],
    top_n: usize,
}

#[derive(Deserialize)]
struct RerankResponse {
    results: Vec<RerankResult>,
}

#[derive(Deserialize)]
struct RerankResult {
    index: usize,
    relevance_score: f32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript};

    async fn reranker(replies: Vec<MockReply>) -> (MockLlmServer, CohereReranker) {
        let server = MockLlmServer::start(MockScript::default().with_rerank_replies(replies))
            .await
            .unwrap();
        let reranker = CohereReranker::new(CohereRerankerConfig {
            base_url: format!("{}/v2", server.origin()),
            model: "rerank-mock".into(),
            api_key: Secret::new("key".to_string()),
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
            ..CohereRerankerConfig::default()
        })
        .unwrap();
        (server, reranker)
    }

    fn passages() -> Vec<String> {
        [
            "The Halifax office opened in 2019.",
            "Travel expenses for conferences are reimbursed.",
            "Conference travel is reimbursed within 30 days.",
        ]
        .map(String::from)
        .to_vec()
    }

    #[tokio::test]
    async fn scores_come_back_in_the_passages_order() {
        let (server, reranker) = reranker(Vec::new()).await;
        let scores = reranker
            .score("conference travel reimbursed", &passages())
            .await
            .unwrap();
        assert_eq!(scores.len(), 3);
        // The mock answers best first; in passage order the Halifax passage scores lowest.
        assert!(scores[0] < scores[1] && scores[0] < scores[2], "{scores:?}");
        let request = &server.requests()[0];
        assert_eq!(request.path, "/v2/rerank");
        assert_eq!(request.body["model"], "rerank-mock");
        assert_eq!(request.body["query"], "conference travel reimbursed");
        assert_eq!(request.body["top_n"], 3);
        assert_eq!(request.header("authorization"), Some("Bearer key"));
        assert_eq!(reranker.id(), "cohere:rerank-mock");
    }

    #[tokio::test]
    async fn a_missing_or_foreign_score_is_a_bad_response() {
        for (reply, expected) in [
            (MockReply::WrongCount, "2 scores for 3 passages"),
            (MockReply::WrongShape, "a score for passage 3 of 3"),
            (MockReply::MalformedJson, "not a rerank result"),
        ] {
            let (_server, reranker) = reranker(vec![reply]).await;
            let error = reranker.score("q", &passages()).await.unwrap_err();
            assert!(
                matches!(&error, RerankError::BadResponse(reason) if reason.contains(expected)),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_server_is_retried_then_unavailable() {
        let (server, reranker) = reranker(vec![MockReply::status(500, "down")]).await;
        let error = reranker.score("q", &passages()).await.unwrap_err();
        assert!(matches!(error, RerankError::Unavailable(_)), "{error}");
        assert_eq!(server.request_count(), 2);

        let (server, reranker) =
            self::reranker(vec![MockReply::rate_limited("0"), MockReply::Correct]).await;
        assert_eq!(reranker.score("q", &passages()).await.unwrap().len(), 3);
        assert_eq!(server.request_count(), 2);
    }

    #[tokio::test]
    async fn no_passages_need_no_request() {
        let (server, reranker) = reranker(Vec::new()).await;
        assert!(reranker.score("q", &[]).await.unwrap().is_empty());
        assert_eq!(server.request_count(), 0);
    }

    #[test]
    fn a_score_given_twice_is_refused() {
        let twice = [
            RerankResult {
                index: 0,
                relevance_score: 0.9,
            },
            RerankResult {
                index: 0,
                relevance_score: 0.1,
            },
        ];
        assert!(matches!(
            scores_in_order(2, &twice),
            Err(RerankError::BadResponse(reason)) if reason.contains("twice")
        ));
    }
}
