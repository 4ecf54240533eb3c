//! The HTTP plumbing shared by the model backends: one client with explicit timeouts, and
//! retries per call with exponential backoff and full jitter, honouring `Retry-After`, never
//! waiting past the caller's deadline.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;

use super::LlmError;
use crate::secret::Secret;

/// How a backend retries one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with full jitter.
    pub base_delay: Duration,
    /// Longest wait between attempts (a longer `Retry-After` still wins, within the deadline).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Returns the wait before attempt `attempt + 1` (attempts count from 1): a uniformly random
    /// share of the capped exponential delay, so that many callers do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Parses a backend's endpoint once, at startup: a URL given as a string would be parsed
/// again on every call.
pub fn endpoint(url: &str) -> Result<reqwest::Url, LlmError> {
    reqwest::Url::parse(url)
        .map_err(|error| LlmError::Misconfigured(format!("endpoint {url:?} is not a URL: {error}")))
}

/// Builds a client that sends `extra` headers and, when a key is set, `Authorization: Bearer`:
/// the form of OpenAI-compatible and Cohere-compatible services.
pub fn bearer_client(
    api_key: &Secret,
    extra: &[(String, String)],
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
) -> Result<HttpClient, LlmError> {
    let mut pairs = extra.to_vec();
    if !api_key.is_empty() {
        pairs.push((
            "authorization".into(),
            format!("Bearer {}", api_key.expose()),
        ));
    }
    HttpClient::new(connect_timeout, request_timeout, headers(&pairs)?, retry)
}

/// An HTTP client for one backend.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// Why one attempt failed, and whether another may succeed.
enum Attempt {
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    Fail(LlmError),
}

impl HttpClient {
    /// Builds a client with the given timeouts and default headers.
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        headers: HeaderMap,
        retry: RetryPolicy,
    ) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .default_headers(headers)
            .user_agent(concat!("deeprecall/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                LlmError::Misconfigured(format!("cannot build HTTP client: {error}"))
            })?;
        Ok(HttpClient { client, retry })
    }

    /// Posts `body` as JSON to `url` and returns the successful response. Retries 429, 5xx,
    /// connection failures and timeouts; fails fast on other statuses. Gives up rather than
    /// wait past `deadline`. The body is serialised once; retries send the same bytes.
    pub async fn post_json(
        &self,
        url: &reqwest::Url,
        body: &impl Serialize,
        deadline: Option<Instant>,
    ) -> Result<reqwest::Response, LlmError> {
        let body = bytes::Bytes::from(serde_json::to_vec(body).map_err(|error| {
            LlmError::Misconfigured(format!("the request cannot be written as JSON: {error}"))
        })?);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The model call continues the caller's trace: its span is the current one.
            let mut request_headers = HeaderMap::new();
            request_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            crate::telemetry::inject_current(&mut request_headers);
            let sent = self
                .client
                .post(url.clone())
                .headers(request_headers)
                .body(body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(response) if response.status().is_success() => {
                    // Shows on the model-call span the engine wraps this call in.
                    crate::telemetry::spans::record_retries(attempt - 1);
                    return Ok(response);
                }
                Ok(response) => classify_status(response).await,
                Err(error) if error.is_connect() || error.is_timeout() => Attempt::Retry {
                    reason: describe(&error),
                    retry_after: None,
                },
                Err(error) => Attempt::Fail(LlmError::Unavailable(describe(&error))),
            };
            let (reason, retry_after) = match outcome {
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            if attempt >= self.retry.max_attempts {
                return Err(LlmError::Unavailable(format!(
                    "{reason} (gave up after {attempt} attempts)"
                )));
            }
            let wait = retry_after.unwrap_or_else(|| self.retry.backoff(attempt));
            if let Some(deadline) = deadline
                && Instant::now() + wait >= deadline
            {
                return Err(LlmError::Unavailable(format!(
                    "{reason} (no time left in the budget to retry)"
                )));
            }
            tracing::warn!(%reason, attempt, wait_ms = wait.as_millis() as u64, "model call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

async fn classify_status(response: reqwest::Response) -> Attempt {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<f64>().ok())
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok());
    let body = response.text().await.unwrap_or_default();
    let detail = error_detail(&body);
    let reason = format!("HTTP {}: {detail}", status.as_u16());
    match status {
        StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
            reason,
            retry_after,
        },
        status if status.is_server_error() => Attempt::Retry {
            reason,
            retry_after,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Fail(LlmError::Misconfigured(
            format!("the API key was rejected ({reason})"),
        )),
        StatusCode::NOT_FOUND => Attempt::Fail(LlmError::Misconfigured(format!(
            "the model or URL does not exist ({reason})"
        ))),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Attempt::Fail(
            LlmError::Misconfigured(format!("the backend refused the request ({reason})")),
        ),
        _ => Attempt::Fail(LlmError::Unavailable(reason)),
    }
}

/// Returns the provider's error message from an error body, or the start of the body.
fn error_detail(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .or_else(|| value.get("message"))
                .and_then(|message| message.as_str().map(str::to_string))
        });
    message.unwrap_or_else(|| body.chars().take(200).collect())
}

fn describe(error: &reqwest::Error) -> String {
    // reqwest's top-level message hides the cause ("error sending request").
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Builds a header map from name/value pairs, refusing invalid ones with a clear message.
pub fn headers(pairs: &[(String, String)]) -> Result<HeaderMap, LlmError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| LlmError::Misconfigured(format!("invalid header name {name:?}")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| LlmError::Misconfigured(format!("invalid value for header {name}")))?;
        if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("api-key")
            || name.eq_ignore_ascii_case("x-api-key")
        {
            value.set_sensitive(true);
        }
        map.insert(header, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        for _ in 0..100 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(2) <= Duration::from_millis(200));
            assert!(policy.backoff(5) <= Duration::from_millis(350));
        }
    }

    #[test]
    fn provider_error_messages_are_extracted() {
        assert_eq!(
            error_detail(r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#),
            "Rate limit reached"
        );
        assert_eq!(error_detail("plain failure"), "plain failure");
    }
}
