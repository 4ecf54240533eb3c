//! The mock's own time for a request, measured where a real provider's would begin and end:
//! at its socket. A request's time runs from the first byte of it read off the connection to
//! the start of the write of its answer's last bytes, so that parsing the request, writing the
//! answer's earlier parts and waiting for the mock's task to be scheduled count as the model's
//! latency, not as the client's overhead. It is recorded before those last bytes go out, so a
//! client that has its whole answer always finds the time in the mock's records.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::Shared;

/// Where a connection's current request stands. HTTP/1.1 answers requests on a connection
/// one after the other, so a read after the answer began writing starts the next request.
#[derive(Debug, Clone, Copy, Default)]
enum Phase {
    /// Nothing read since the last answer.
    #[default]
    Idle,
    /// A request's first bytes were read; no handler has taken it yet.
    Arrived(Instant),
    /// A handler took the request as record `index`; further reads are its body.
    Serving { index: usize, began: Instant },
    /// The answer to record `index` is being written.
    Answering { index: usize, began: Instant },
}

/// One connection's clock, shared by its socket and the handler of its current request.
#[derive(Debug, Clone, Default)]
pub(super) struct SocketClock {
    phase: Arc<Mutex<Phase>>,
}

impl SocketClock {
    /// Binds the connection's current request to record `index` and returns when its first
    /// byte was read (now, if nothing was: a request the socket did not see arrive).
    pub(super) fn serve(&self, index: usize) -> Instant {
        let mut phase = self.phase.lock();
        let began = match *phase {
            Phase::Arrived(began) => began,
            Phase::Idle | Phase::Serving { .. } | Phase::Answering { .. } => Instant::now(),
        };
        *phase = Phase::Serving { index, began };
        began
    }

    fn read(&self) {
        let mut phase = self.phase.lock();
        if let Phase::Idle | Phase::Answering { .. } = *phase {
            *phase = Phase::Arrived(Instant::now());
        }
    }

    /// Returns the record being answered and how long it had taken when a write of it began
    /// at `writing`.
    fn answer_time(&self, writing: Instant) -> Option<(usize, Duration)> {
        match *self.phase.lock() {
            Phase::Serving { index, began } | Phase::Answering { index, began } => {
                Some((index, writing.saturating_duration_since(began)))
            }
            Phase::Idle | Phase::Arrived(_) => None,
        }
    }

    /// Notes that bytes of the current request's answer went out: a read from now on starts
    /// the next request.
    fn answered(&self) {
        let mut phase = self.phase.lock();
        if let Phase::Serving { index, began } = *phase {
            *phase = Phase::Answering { index, began };
        }
    }
}

/// The mock's listener: TCP with `TCP_NODELAY`, each connection timed by its [`SocketClock`].
pub(super) struct TimedListener {
    pub(super) listener: TcpListener,
    pub(super) shared: Arc<Shared>,
}

/// What a handler learns of its connection.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub(super) clock: SocketClock,
}

impl Connected<IncomingStream<'_, TimedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TimedListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Listener for TimedListener {
    type Io = TimedStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own TCP accept, which waits out errors such as running out of descriptors.
        let (stream, _) = Listener::accept(&mut self.listener).await;
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs hold small SSE events back
        // for up to 40 ms, and a client could not observe the stream chunk by chunk.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "mock llm server could not set TCP_NODELAY");
        }
        let clock = SocketClock::default();
        let timed = TimedStream {
            stream,
            clock: clock.clone(),
            shared: Arc::clone(&self.shared),
        };
        (timed, Peer { clock })
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        // No connection of its own: a clock that never runs.
        self.listener.local_addr().map(|_: SocketAddr| Peer {
            clock: SocketClock::default(),
        })
    }
}

/// A connection that tells its clock when request bytes come in and answer bytes go out.
pub(super) struct TimedStream {
    stream: TcpStream,
    clock: SocketClock,
    shared: Arc<Shared>,
}

impl TimedStream {
    /// Records the answer's time as of a write that begins at `writing`, before the write: the
    /// bytes it sends may complete the answer and wake the client, which may then read the
    /// record at once, on another core, or on this one before the writing thread gets it back
    /// (that time is the client's, not the mock's). Each write of an answer moves its time on,
    /// so the record holds the start of the last one by the time the client has every byte.
    fn will_write(&self, writing: Instant, bytes: usize) {
        if bytes == 0 {
            return;
        }
        if let Some((index, elapsed)) = self.clock.answer_time(writing)
            && let Some(request) = self.shared.requests.lock().get_mut(index)
        {
            request.service_time = Some(elapsed);
        }
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(written)) = polled
            && *written > 0
        {
            self.clock.answered();
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.will_write(Instant::now(), buf.len());
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bytes = bufs.iter().map(|buf| buf.len()).sum();
        self.will_write(Instant::now(), bytes);
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
