//! A response body that reports how long its request took once its last byte has gone out,
//! so that a streamed completion is timed to its end, as a gRPC stream is, and not to its
//! headers.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// Wraps `inner`; `finished` gets the time since `started` once, when the body ends, fails,
/// or is dropped unfinished (the client went away).
pub struct TimedBody<F: FnOnce(std::time::Duration) + Send + 'static> {
    inner: Body,
    started: Instant,
    finished: Option<F>,
}

impl<F: FnOnce(std::time::Duration) + Send + 'static> TimedBody<F> {
    pub fn new(inner: Body, started: Instant, finished: F) -> Self {
        TimedBody {
            inner,
            started,
            finished: Some(finished),
        }
    }

    fn finish(&mut self) {
        if let Some(finished) = self.finished.take() {
            finished(self.started.elapsed());
        }
    }
}

// Nothing is pinned structurally: `Body` is `Unpin`, the rest is plain data.
impl<F: FnOnce(std::time::Duration) + Send + 'static> Unpin for TimedBody<F> {}

impl<F: FnOnce(std::time::Duration) + Send + 'static> http_body::Body for TimedBody<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(std::time::Duration) + Send + 'static> Drop for TimedBody<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn reports_once_when_the_body_has_been_read_to_its_end() {
        let reported = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reported);
        let body = TimedBody::new(Body::from("hello"), Instant::now(), move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let bytes = axum::body::to_bytes(Body::new(body), 1024)
            .await
            .expect("body reads");
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(reported.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reports_when_dropped_unread() {
        let reported = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reported);
        let body = TimedBody::new(Body::from("never read"), Instant::now(), move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(reported.load(Ordering::SeqCst), 0);
        drop(body);
        assert_eq!(reported.load(Ordering::SeqCst), 1);
    }
}
