//! The one place where errors become gRPC statuses.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::access::{AccessError, retry_after_seconds};
use crate::cache::CacheError;
use crate::embed::EmbedError;
use crate::engine::EngineError;
use crate::llm::LlmError;
use crate::store::StoreError;

impl From<EngineError> for Status {
    fn from(error: EngineError) -> Self {
        bounded(status_of(&error))
    }
}

/// Longest status message sent, in bytes. Messages quote what the caller sent (a collection
/// name, a metadata key, an operator), and the message travels in the `grpc-message` header,
/// percent-encoded: an echo of a 16 KiB name would exceed the 16 KiB header list that HTTP/2
/// clients accept, and the caller would get a protocol error instead of the status.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts an over-long message in its middle, keeping its start (the field it names) and its
/// end (what to do about it).
pub fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_MESSAGE_BYTES {
        return status;
    }
    let head_end = floor_char_boundary(message, MAX_MESSAGE_BYTES * 2 / 3);
    let tail_start = ceil_char_boundary(message, message.len() - MAX_MESSAGE_BYTES / 4);
    let cut = format!("{} … {}", &message[..head_end], &message[tail_start..]);
    Status::with_metadata(status.code(), cut, status.metadata().clone())
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

fn status_of(error: &EngineError) -> Status {
    match error {
        EngineError::InvalidArgument { field, message } => {
            Status::invalid_argument(format!("{field}: {message}"))
        }
        EngineError::Store(error) => store_status(error),
        EngineError::Llm(error) => llm_status(error),
        EngineError::Cache(CacheError::Unavailable(reason)) => {
            tracing::warn!(%reason, "cache unavailable");
            Status::unavailable("the cache is unavailable")
        }
        EngineError::ShuttingDown => Status::unavailable("the server is shutting down"),
        EngineError::Cancelled => Status::cancelled("the query was cancelled"),
        EngineError::DeadlineExceeded(reason) => Status::deadline_exceeded(*reason),
        EngineError::Shared(error) => status_of(error),
        EngineError::RunFailed(reason) => {
            tracing::error!(%reason, "a query's run failed");
            Status::internal("the query's run failed")
        }
    }
}

fn store_status(error: &StoreError) -> Status {
    match error {
        StoreError::CollectionNotFound(name) => {
            Status::not_found(format!("collection {name:?} does not exist"))
        }
        StoreError::InvalidCollectionName(_) => {
            Status::invalid_argument(format!("collection: {error}"))
        }
        StoreError::InvalidFilter(error) => Status::invalid_argument(format!("filters: {error}")),
        StoreError::Embed(EmbedError::Unavailable(reason) | EmbedError::BadResponse(reason)) => {
            tracing::warn!(%reason, "embedding backend failed");
            Status::unavailable("the embedding backend is unavailable")
        }
        StoreError::Embed(EmbedError::Misconfigured(reason)) => {
            tracing::error!(%reason, "embedder misconfigured");
            Status::failed_precondition(format!("the embedder is misconfigured: {reason}"))
        }
        StoreError::Unavailable(reason) => {
            tracing::warn!(%reason, "document store unavailable");
            Status::unavailable("the document store is unavailable")
        }
        StoreError::EmbedderMismatch { .. } => Status::failed_precondition(error.to_string()),
        StoreError::Unsupported(reason) => Status::unimplemented(reason.clone()),
        StoreError::Full(reason) => {
            tracing::error!(%reason, "document store out of disk space");
            Status::resource_exhausted(
                "the document store's disk is full: the write was not stored",
            )
        }
        StoreError::Database(_)
        | StoreError::SchemaTooNew { .. }
        | StoreError::Corrupt(_)
        | StoreError::Task(_) => {
            // Internals stay in the log, not in the caller's message.
            tracing::error!(%error, "storage failure");
            Status::internal("storage failure")
        }
    }
}

fn llm_status(error: &LlmError) -> Status {
    match error {
        LlmError::Unavailable(reason) | LlmError::BadResponse(reason) => {
            tracing::warn!(%reason, "model backend failed");
            Status::unavailable(format!("the model backend is unavailable: {reason}"))
        }
        LlmError::Misconfigured(reason) => {
            tracing::error!(%reason, "model backend misconfigured");
            Status::failed_precondition(format!("the model backend is misconfigured: {reason}"))
        }
    }
}

impl From<AccessError> for Status {
    fn from(error: AccessError) -> Self {
        access_status(&error)
    }
}

/// The status of a call the front door refused. A rate-limited call carries `retry-after`
/// metadata: whole seconds until the same call would be admitted.
pub fn access_status(error: &AccessError) -> Status {
    bounded(unbounded_access_status(error))
}

fn unbounded_access_status(error: &AccessError) -> Status {
    let message = error.to_string();
    match error {
        AccessError::MissingKey
        | AccessError::MalformedKey(_)
        | AccessError::UnknownKey
        | AccessError::UnknownSubject(_) => Status::unauthenticated(message),
        AccessError::MissingScope { .. }
        | AccessError::CollectionDenied { .. }
        | AccessError::ClearAllDenied { .. } => Status::permission_denied(message),
        AccessError::RateLimited { retry_after, .. }
        | AccessError::TooManyRefusals { retry_after } => {
            let mut metadata = MetadataMap::new();
            metadata.insert(
                "retry-after",
                MetadataValue::from(retry_after_seconds(*retry_after)),
            );
            Status::with_metadata(Code::ResourceExhausted, message, metadata)
        }
        AccessError::BatchOverBurst { .. }
        | AccessError::Overloaded { .. }
        | AccessError::QueueTimeout { .. } => Status::resource_exhausted(message),
        AccessError::InvalidKeys(_) | AccessError::NoIdentity => {
            tracing::error!(%error, "access control failure");
            Status::internal("access control failure")
        }
    }
}

/// Returns the numeric gRPC code of a status, as batch items carry it.
pub fn code_number(code: Code) -> i32 {
    code as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_code() {
        let cases = [
            (
                EngineError::invalid("top_k", "too big"),
                Code::InvalidArgument,
            ),
            (
                EngineError::Store(StoreError::CollectionNotFound("x".into())),
                Code::NotFound,
            ),
            (
                EngineError::Store(StoreError::Task("panic".into())),
                Code::Internal,
            ),
            (
                EngineError::Store(StoreError::Unavailable("connection refused".into())),
                Code::Unavailable,
            ),
            (
                EngineError::Store(StoreError::Database("syntax error".into())),
                Code::Internal,
            ),
            (
                EngineError::Store(StoreError::Full("database or disk is full".into())),
                Code::ResourceExhausted,
            ),
            (
                EngineError::Store(StoreError::EmbedderMismatch {
                    collection: "c".into(),
                    stored: "a".into(),
                    configured: "b".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                EngineError::Store(StoreError::Unsupported("no".into())),
                Code::Unimplemented,
            ),
            (
                EngineError::Store(StoreError::Embed(EmbedError::Misconfigured("key".into()))),
                Code::FailedPrecondition,
            ),
            (
                EngineError::Store(StoreError::Embed(EmbedError::BadResponse("65".into()))),
                Code::Unavailable,
            ),
            (
                EngineError::Llm(LlmError::Unavailable("down".into())),
                Code::Unavailable,
            ),
            (
                EngineError::Llm(LlmError::Misconfigured("bad key".into())),
                Code::FailedPrecondition,
            ),
            (EngineError::ShuttingDown, Code::Unavailable),
            (EngineError::RunFailed("panicked".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn internal_errors_keep_details_out_of_the_message() {
        let status = Status::from(EngineError::Store(StoreError::Corrupt(
            "row 7 of /var/data".into(),
        )));
        assert_eq!(status.message(), "storage failure");
    }

    #[test]
    fn being_told_to_back_off_carries_retry_after() {
        let status = access_status(&AccessError::TooManyRefusals {
            retry_after: std::time::Duration::from_millis(1_500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()),
            Some("2")
        );
        assert!(
            status.message().contains("unknown API key"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn long_messages_are_cut_in_the_middle_keeping_field_and_advice() {
        let name = "é".repeat(10_000);
        let status = Status::from(EngineError::Store(StoreError::InvalidCollectionName(name)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES + 8,
            "{}",
            status.message().len()
        );
        assert!(
            status
                .message()
                .starts_with("collection: invalid collection name")
        );
        assert!(
            status.message().ends_with("'_', '-' or '.'"),
            "{}",
            status.message()
        );
        let short = Status::from(EngineError::invalid("query", "must not be empty"));
        assert_eq!(short.message(), "query: must not be empty");
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = Status::from(EngineError::invalid(
            "queries[2].query",
            "must not be empty",
        ));
        assert_eq!(status.message(), "queries[2].query: must not be empty");
    }
}
