//! Identical queries in flight at once share one run: the first caller leads it, later ones
//! follow, and the run stops when the last of them leaves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::ready;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{EngineError, QueryResult};

/// A run shared by identical queries.
#[derive(Debug)]
pub(super) struct Flight {
    /// The run's outcome, once there is one.
    pub(super) outcome: watch::Sender<Option<Result<QueryResult, Arc<EngineError>>>>,
    /// Callers still waiting for it.
    pub(super) callers: AtomicUsize,
    /// Stops the run; cancelled when the last caller leaves.
    pub(super) stop: CancellationToken,
}

impl Flight {
    pub(super) fn new() -> Self {
        Flight {
            outcome: watch::channel(None).0,
            callers: AtomicUsize::new(1),
            stop: CancellationToken::new(),
        }
    }
}

/// A flight's run, driven by its leader's task while the leader waits for it. A leader that
/// leaves before the end (it cancelled, or its caller went away) hands what is left of the run
/// to a task of its own: followers may still wait for it, and a run stopped because every
/// caller left still ends the way a cancelled run does, its usage accounted.
pub(super) struct FlightRun(pub(super) Option<BoxFuture<'static, ()>>);

impl Future for FlightRun {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(run) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        ready!(run.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(())
    }
}

impl Drop for FlightRun {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            // Outside a runtime (it is shutting down) there is nothing to finish the run on.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(run);
            }
        }
    }
}

/// One caller's share of a flight: when the last caller leaves (returns, cancels, or is
/// dropped with its request), the run stops.
pub(super) struct Caller {
    pub(super) flight: Arc<Flight>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        if self.flight.callers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.flight.stop.cancel();
        }
    }
}
