//! Statuses tonic answers from its codec, before a handler runs, brought in line with the
//! gRPC spec (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
//!
//! A request message over `server.max_request_bytes` is refused by tonic with OUT_OF_RANGE;
//! the spec prescribes RESOURCE_EXHAUSTED for a message larger than the configured limit, and
//! clients retry or back off by the code. The message, which names the limit, stays.

use std::task::{Context, Poll};

use futures::TryFutureExt;
use futures::future::MapOk;
use http::HeaderValue;
use tonic::Code;
use tower::{Layer, Service};

/// What tonic's decoder says of a message over the limit.
const TOO_LARGE: &[u8] = b"Error, decoded message length too large";

/// Rewrites tonic's OUT_OF_RANGE for an oversize request message to RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecStatusLayer;

impl<S> Layer<S> for SpecStatusLayer {
    type Service = SpecStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SpecStatus { inner }
    }
}

/// The service of [`SpecStatusLayer`].
#[derive(Debug, Clone)]
pub struct SpecStatus<S> {
    inner: S,
}

impl<S, Request, Body> Service<Request> for SpecStatus<S>
where
    S: Service<Request, Response = http::Response<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<Body>) -> http::Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.inner.call(request).map_ok(spec_status)
    }
}

/// The request's status is in the headers of a trailers-only answer: the codec refuses the
/// message before the handler, and so before any response body, exists.
fn spec_status<Body>(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == (Code::OutOfRange as i32).to_string().as_bytes());
    let too_large = headers
        .get("grpc-message")
        .is_some_and(|message| percent_decoded(message.as_bytes()).starts_with(TOO_LARGE));
    if out_of_range && too_large {
        response.headers_mut().insert(
            "grpc-status",
            HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}

/// `grpc-message` is percent-encoded (spaces included, as tonic writes it).
fn percent_decoded(raw: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        let escaped = (raw[index] == b'%')
            .then(|| raw.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(raw[index]);
                index += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: Code, message: &str) -> http::Response<()> {
        let mut response = http::Response::new(());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from(code as i32));
        response.headers_mut().insert(
            "grpc-message",
            HeaderValue::from_str(message).unwrap_or(HeaderValue::from_static("")),
        );
        response
    }

    fn code_of(response: &http::Response<()>) -> Option<&[u8]> {
        response
            .headers()
            .get("grpc-status")
            .map(HeaderValue::as_bytes)
    }

    #[test]
    fn only_an_oversize_request_becomes_resource_exhausted() {
        let oversize = spec_status(response(
            Code::OutOfRange,
            "Error,%20decoded%20message%20length%20too%20large:%20found%209%20bytes",
        ));
        assert_eq!(code_of(&oversize), Some(&b"8"[..]));
        let other = spec_status(response(Code::OutOfRange, "top_k: out of range"));
        assert_eq!(code_of(&other), Some(&b"11"[..]));
        let internal = spec_status(response(Code::Internal, "failed to decode"));
        assert_eq!(code_of(&internal), Some(&b"13"[..]));
    }
}
