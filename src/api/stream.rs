//! The one helper behind every server-streaming RPC: it owns the channel (bounded, so a slow
//! reader applies backpressure), runs the producer as a task, and stops the work when the
//! caller goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;

/// The response stream type of every streaming RPC.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that cancels a token when dropped: tonic drops the response stream when the client
/// cancels or disconnects, and that must stop the work behind it.
struct CancelOnDrop<S> {
    inner: S,
    _guard: DropGuard,
}

impl<S: Stream + Unpin> Stream for CancelOnDrop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Runs `produce` as a task that sends into a channel of `capacity` messages, and returns the
/// receiving end as the response stream. `cancel` is cancelled when the caller goes away; the
/// producer should also stop as soon as a send fails.
pub fn spawn_stream<T, F, Fut>(
    capacity: usize,
    cancel: CancellationToken,
    produce: F,
) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    tokio::spawn(produce(sender));
    Box::pin(CancelOnDrop {
        inner: ReceiverStream::new(receiver),
        _guard: cancel.drop_guard(),
    })
}
