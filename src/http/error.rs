//! The one place where errors become HTTP responses, in OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`. The statuses follow the gRPC codes the
//! same errors get in `api::status` (INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
//! PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
//! DEADLINE_EXCEEDED 504), so that a client sees the same refusal over either protocol.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::access::{AccessError, retry_after_seconds};
use crate::api::NotAdmitted;
use crate::cache::CacheError;
use crate::embed::EmbedError;
use crate::engine::EngineError;
use crate::llm::LlmError;
use crate::store::StoreError;

/// An error answered over HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// A stable machine-readable `code`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Whole seconds after which the request may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl HttpError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        HttpError {
            status,
            kind,
            code,
            message,
            param: None,
            retry_after: None,
        }
    }

    /// A 400 naming the field at fault.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut error = HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_argument",
            format!("{field}: {message}"),
        );
        error.param = Some(field);
        error
    }

    /// A 400 for a body that is not the JSON it should be.
    pub fn bad_body(message: impl Into<String>) -> Self {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            message.into(),
        )
    }

    /// A 413 for a body over the configured bound.
    pub fn too_large(limit: usize) -> Self {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// A 404 for a model this server does not serve.
    pub fn unknown_model(model: &str) -> Self {
        let mut error = HttpError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "model {model:?} does not exist: use \"deeprecall\" or \"deeprecall-<collection>\""
            ),
        );
        error.param = Some("model".into());
        error
    }

    /// A 404 for a path this server does not serve.
    pub fn no_route(path: &str) -> Self {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no route for {path}"),
        )
    }

    /// A 405 for a known path asked with another method.
    pub fn wrong_method() -> Self {
        HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this path".into(),
        )
    }

    fn internal() -> Self {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "internal error".into(),
        )
    }

    fn unavailable(message: impl Into<String>) -> Self {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message.into(),
        )
    }
}

impl From<EngineError> for HttpError {
    fn from(error: EngineError) -> Self {
        engine_error(&error)
    }
}

fn engine_error(error: &EngineError) -> HttpError {
    match error {
        EngineError::InvalidArgument { field, message } => HttpError::invalid(field, message),
        EngineError::Store(error) => store_error(error),
        EngineError::Llm(LlmError::Unavailable(reason) | LlmError::BadResponse(reason)) => {
            tracing::warn!(%reason, "model backend failed");
            HttpError::unavailable(format!("the model backend is unavailable: {reason}"))
        }
        EngineError::Llm(LlmError::Misconfigured(reason)) => {
            tracing::error!(%reason, "model backend misconfigured");
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "model_misconfigured",
                format!("the model backend is misconfigured: {reason}"),
            )
        }
        EngineError::Cache(CacheError::Unavailable(reason)) => {
            tracing::warn!(%reason, "cache unavailable");
            HttpError::unavailable("the cache is unavailable")
        }
        EngineError::ShuttingDown => HttpError::unavailable("the server is shutting down"),
        // Nobody is left to read it; 499 is what proxies log for a client that went away.
        EngineError::Cancelled => HttpError::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            "cancelled",
            "the query was cancelled".into(),
        ),
        EngineError::DeadlineExceeded(reason) => HttpError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "deadline_exceeded",
            format!("deadline exceeded: {reason}"),
        ),
        EngineError::Shared(error) => engine_error(error),
        EngineError::RunFailed(reason) => {
            tracing::error!(%reason, "a query's run failed");
            HttpError::internal()
        }
    }
}

fn store_error(error: &StoreError) -> HttpError {
    match error {
        StoreError::CollectionNotFound(name) => {
            let mut refused = HttpError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "collection_not_found",
                format!("collection {name:?} does not exist"),
            );
            refused.param = Some("collection".into());
            refused
        }
        StoreError::InvalidCollectionName(_) => HttpError::invalid("collection", error),
        StoreError::InvalidFilter(error) => HttpError::invalid("filters", error),
        StoreError::Embed(EmbedError::Unavailable(reason) | EmbedError::BadResponse(reason)) => {
            tracing::warn!(%reason, "embedding backend failed");
            HttpError::unavailable("the embedding backend is unavailable")
        }
        StoreError::Embed(EmbedError::Misconfigured(reason)) => {
            tracing::error!(%reason, "embedder misconfigured");
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "embedder_misconfigured",
                format!("the embedder is misconfigured: {reason}"),
            )
        }
        StoreError::Unavailable(reason) => {
            tracing::warn!(%reason, "document store unavailable");
            HttpError::unavailable("the document store is unavailable")
        }
        StoreError::EmbedderMismatch { .. } => HttpError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "embedder_mismatch",
            error.to_string(),
        ),
        StoreError::Unsupported(reason) => HttpError::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "unsupported",
            reason.clone(),
        ),
        StoreError::Full(reason) => {
            tracing::error!(%reason, "document store out of disk space");
            HttpError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "server_error",
                "storage_full",
                "the document store's disk is full: the write was not stored".into(),
            )
        }
        StoreError::Database(_)
        | StoreError::SchemaTooNew { .. }
        | StoreError::Corrupt(_)
        | StoreError::Task(_) => {
            tracing::error!(%error, "storage failure");
            HttpError::internal()
        }
    }
}

impl From<AccessError> for HttpError {
    fn from(error: AccessError) -> Self {
        let message = error.to_string();
        match &error {
            AccessError::MissingKey
            | AccessError::MalformedKey(_)
            | AccessError::UnknownKey
            | AccessError::UnknownSubject(_) => HttpError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                message,
            ),
            AccessError::MissingScope { .. }
            | AccessError::CollectionDenied { .. }
            | AccessError::ClearAllDenied { .. } => HttpError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "permission_denied",
                message,
            ),
            AccessError::RateLimited { retry_after, .. }
            | AccessError::TooManyRefusals { retry_after } => HttpError {
                retry_after: Some(retry_after_seconds(*retry_after)),
                ..HttpError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    message,
                )
            },
            AccessError::BatchOverBurst { .. } => HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                message,
            ),
            // Load shedding: the server, not the caller's rate, is out of room.
            AccessError::Overloaded { .. } | AccessError::QueueTimeout { .. } => HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "server_overloaded",
                message,
            ),
            AccessError::InvalidKeys(_) | AccessError::NoIdentity => {
                tracing::error!(%error, "access control failure");
                HttpError::internal()
            }
        }
    }
}

impl From<NotAdmitted> for HttpError {
    fn from(refusal: NotAdmitted) -> Self {
        HttpError::unavailable(refusal.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_error_kind_has_the_status_of_its_grpc_code() {
        let cases = [
            (EngineError::invalid("top_k", "too big"), 400),
            (
                EngineError::Store(StoreError::CollectionNotFound("x".into())),
                404,
            ),
            (EngineError::Store(StoreError::Task("panic".into())), 500),
            (EngineError::Llm(LlmError::Unavailable("down".into())), 503),
            (EngineError::ShuttingDown, 503),
            (EngineError::DeadlineExceeded("no time left"), 504),
            (EngineError::RunFailed("panicked".into()), 500),
        ];
        for (error, status) in cases {
            assert_eq!(HttpError::from(error).status.as_u16(), status);
        }
        let access = [
            (AccessError::UnknownKey, 401),
            (AccessError::ClearAllDenied { caller: "k".into() }, 403),
            (
                AccessError::Overloaded {
                    running: 1,
                    queued: 0,
                },
                429,
            ),
        ];
        for (error, status) in access {
            assert_eq!(HttpError::from(error).status.as_u16(), status);
        }
    }

    #[test]
    fn a_rate_limited_call_carries_retry_after_in_whole_seconds() {
        let response = HttpError::from(AccessError::RateLimited {
            per_minute: 60,
            retry_after: Duration::from_millis(1_200),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()),
            Some("2")
        );
    }

    #[test]
    fn internal_errors_keep_details_out_of_the_message() {
        let error = HttpError::from(EngineError::Store(StoreError::Corrupt(
            "row 7 of /var/data".into(),
        )));
        assert_eq!(error.message, "internal error");
    }

    #[test]
    fn a_collection_of_another_embedder_is_a_conflict_naming_both() {
        let error = HttpError::from(EngineError::Store(StoreError::EmbedderMismatch {
            collection: "handbook".into(),
            stored: "hashing-v1:4096".into(),
            configured: "openai:text-embedding-3-small:1536".into(),
        }));
        assert_eq!(error.status, StatusCode::CONFLICT);
        assert!(
            error.message.contains("hashing-v1:4096"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("deeprecall reindex"),
            "{}",
            error.message
        );
    }
}
