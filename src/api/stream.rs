//! The response streams of the server-streaming RPCs. Both stop the work behind them when the
//! caller goes away: tonic drops a response stream when its client cancels or disconnects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
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

/// A stream of the events one task's work sends into a bounded channel, followed by its error
/// if it fails. The work is polled by whoever polls the stream (the HTTP/2 stream's task), so
/// an event goes from the channel into the response with no task in between.
pub fn drive_stream<E, T>(
    work: BoxFuture<'static, Result<(), Status>>,
    events: mpsc::Receiver<E>,
    convert: fn(E) -> T,
    cancel: CancellationToken,
) -> ResponseStream<T>
where
    E: Send + 'static,
    T: Send + 'static,
{
    Box::pin(CancelOnDrop {
        inner: Driven {
            work: Some(work),
            events,
            convert,
            failure: None,
        },
        _guard: cancel.drop_guard(),
    })
}

struct Driven<E, T> {
    /// `None` once the work has finished.
    work: Option<BoxFuture<'static, Result<(), Status>>>,
    events: mpsc::Receiver<E>,
    convert: fn(E) -> T,
    /// The work's error, sent after its last event.
    failure: Option<Status>,
}

impl<E, T> Stream for Driven<E, T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // Events first: the work may be waiting for room in the channel.
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => return Poll::Ready(Some(Ok((this.convert)(event)))),
                Poll::Ready(None) if this.work.is_none() => {
                    return Poll::Ready(this.failure.take().map(Err));
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            let Some(work) = this.work.as_mut() else {
                return Poll::Pending;
            };
            match work.as_mut().poll(cx) {
                Poll::Ready(outcome) => {
                    this.work = None;
                    this.failure = outcome.err();
                    // A copy of the sender may outlive the work: what was sent is still
                    // delivered, and the stream ends then rather than wait for that copy.
                    this.events.close();
                }
                // What the work sent before it paused goes out now, not after the task has
                // been scheduled again behind the work it woke.
                Poll::Pending => {
                    return match this.events.poll_recv(cx) {
                        Poll::Ready(Some(event)) => Poll::Ready(Some(Ok((this.convert)(event)))),
                        Poll::Ready(None) | Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn describe(item: Result<String, Status>) -> String {
        item.unwrap_or_else(|status| format!("{:?}: {}", status.code(), status.message()))
    }

    #[tokio::test]
    async fn a_driven_stream_sends_the_events_then_the_error() {
        let (sender, events) = mpsc::channel(1);
        let work = async move {
            for n in 0..3 {
                // The channel holds one event: the stream must drain it for the work to go on.
                sender.send(n).await.map_err(|_| Status::internal("gone"))?;
            }
            Err(Status::unavailable("model down"))
        };
        let stream = drive_stream(
            work.boxed(),
            events,
            |n: i32| format!("event {n}"),
            CancellationToken::new(),
        );
        let items: Vec<String> = stream.map(describe).collect().await;
        assert_eq!(
            items,
            ["event 0", "event 1", "event 2", "Unavailable: model down"]
        );
    }

    #[tokio::test]
    async fn an_event_goes_out_in_the_poll_in_which_the_work_sent_it() {
        let (sender, events) = mpsc::channel(4);
        let work = async move {
            sender.send(7).await.map_err(|_| Status::internal("gone"))?;
            std::future::pending::<Result<(), Status>>().await
        };
        let mut stream = drive_stream(work.boxed(), events, |n: i32| n, CancellationToken::new());
        let first = stream.next().now_or_never();
        assert!(matches!(first, Some(Some(Ok(7)))), "{first:?}");
        assert!(stream.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_driven_stream_ends_with_its_work_even_if_a_sender_lives_on() {
        let (sender, events) = mpsc::channel(4);
        let kept = sender.clone();
        let work = async move {
            sender.send(1).await.map_err(|_| Status::internal("gone"))?;
            Ok(())
        };
        let stream = drive_stream(work.boxed(), events, |n: i32| n, CancellationToken::new());
        let items: Vec<i32> = stream.map(|item| item.unwrap_or(-1)).collect().await;
        assert_eq!(items, [1]);
        assert!(kept.is_closed(), "nothing more is taken");
    }

    #[tokio::test]
    async fn dropping_a_driven_stream_drops_its_work_and_cancels() {
        struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                if let Some(signal) = self.0.take() {
                    let _ = signal.send(());
                }
            }
        }
        let (signal, mut dropped) = tokio::sync::oneshot::channel();
        let (_sender, events) = mpsc::channel::<i32>(1);
        let work = async move {
            let _guard = Dropped(Some(signal));
            std::future::pending::<Result<(), Status>>().await
        };
        let cancel = CancellationToken::new();
        let mut stream = drive_stream(work.boxed(), events, |n: i32| n, cancel.clone());
        assert!(
            stream.next().now_or_never().is_none(),
            "nothing to send yet"
        );
        drop(stream);
        assert!(cancel.is_cancelled());
        assert!(
            dropped.try_recv().is_ok(),
            "the work was dropped with the stream"
        );
    }
}
