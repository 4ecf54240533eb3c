//! A deadline on the start of every connection: the first bytes of a request (the 24-byte
//! HTTP/2 client preface, or the start of a gRPC-Web HTTP/1.1 request) must arrive within
//! `server.handshake_timeout_seconds` of the accept, or the connection is closed.
//!
//! hyper's HTTP/2 keepalive pings only start once the handshake is done, so without this a
//! client that connects and sends nothing, or drips the preface a byte at a time, holds a
//! socket and a task forever. Once the preface is in, the keepalive pings bound a peer that
//! stops answering, and `max_concurrent_streams` bounds what one connection can ask.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// Bytes a connection must send before its deadline: the length of the HTTP/2 preface.
const HANDSHAKE_BYTES: usize = 24;

/// A connection that fails its reads once `timeout` has passed without its first
/// [`HANDSHAKE_BYTES`] bytes, which makes the server drop it.
#[derive(Debug)]
pub struct HandshakeDeadline<IO> {
    inner: IO,
    received: usize,
    /// `None` once the handshake bytes are in: from then on the connection is left alone.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> HandshakeDeadline<IO> {
    /// Wraps a connection just accepted; a zero `timeout` sets no deadline.
    pub fn new(inner: IO, timeout: Duration) -> Self {
        let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
        HandshakeDeadline::until(inner, deadline)
    }

    /// Wraps a connection whose first request bytes must arrive by `deadline` (a TLS stream
    /// whose handshake already used part of the time); `None` sets none.
    pub fn until(inner: IO, deadline: Option<Instant>) -> Self {
        HandshakeDeadline {
            inner,
            received: 0,
            deadline: deadline.map(|deadline| Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Polled on every read, so that the timer wakes the connection's task even when the
        // peer sends nothing at all, and a peer dripping bytes is cut off all the same.
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request began within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.received += buf.filled().len() - before;
            if this.received >= HANDSHAKE_BYTES {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for HandshakeDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_read_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sent_its_preface_is_left_alone() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_secs(10));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut preface = [0u8; HANDSHAKE_BYTES];
        server.read_exact(&mut preface).await.unwrap();
        // Long after the deadline, the connection still reads what comes.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_dripped_too_slowly_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_secs(10));
        let mut byte = [0u8; 1];
        let mut outcome = Ok(0);
        for _ in 0..HANDSHAKE_BYTES {
            client.write_all(b"P").await.unwrap();
            outcome = server.read(&mut byte).await;
            if outcome.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
