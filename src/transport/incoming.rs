//! The connections a port accepts, in plaintext or TLS, each with its handshake deadline and
//! what is known of its peer: the address, and under mutual TLS the subject of its verified
//! certificate. The gRPC server takes them as a stream, the HTTP servers as an axum
//! [`Listener`].
//!
//! Accepting runs in a task of its own and every TLS handshake in a task of its own, so that a
//! client that connects and never finishes its handshake holds up nobody else; the handshake
//! deadline bounds each of them.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected as AxumConnected;
use axum::serve::{IncomingStream, Listener};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

use super::handshake::HandshakeDeadline;
use super::subject::Subject;

/// Connections accepted but not yet taken by the server.
const READY_CONNECTIONS: usize = 64;

/// What a request knows of the connection it came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The subject of the client certificate the handshake verified, under mutual TLS.
    pub client_subject: Option<Arc<Subject>>,
}

/// How a port accepts its connections.
#[derive(Debug, Clone)]
pub struct IncomingSettings {
    /// TLS, or plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time from the accept to the first request bytes, the TLS handshake included; zero for
    /// no limit.
    pub handshake_timeout: Duration,
    /// TCP keepalive of accepted sockets; `None` leaves the system's.
    pub tcp_keepalive: Option<Duration>,
}

/// A port's accepted connections, ready for a server.
#[derive(Debug)]
pub struct Incoming {
    ready: mpsc::Receiver<Connection>,
    local_addr: SocketAddr,
    _accepting: AbortOnDropHandle<()>,
}

impl Incoming {
    /// Starts accepting on `listener`. The listener closes when the `Incoming` is dropped.
    pub fn start(listener: TcpListener, settings: IncomingSettings) -> io::Result<Incoming> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_CONNECTIONS);
        let accepting = tokio::spawn(accept(listener, settings, sender));
        Ok(Incoming {
            ready,
            local_addr,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept(
    mut listener: TcpListener,
    settings: IncomingSettings,
    ready: mpsc::Sender<Connection>,
) {
    let acceptor = settings.tls.clone().map(TlsAcceptor::from);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = ready.closed() => return,
            // axum's accept, which waits out errors such as running out of descriptors.
            (stream, remote) = Listener::accept(&mut listener) => {
                configure(&stream, &settings);
                let deadline = (!settings.handshake_timeout.is_zero())
                    .then(|| Instant::now() + settings.handshake_timeout);
                match &acceptor {
                    None => {
                        let connection = Connection {
                            io: HandshakeDeadline::until(Transport::Plain(stream), deadline),
                            peer: PeerInfo { remote, client_subject: None },
                        };
                        if ready.send(connection).await.is_err() {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        handshakes.spawn(handshake(acceptor.clone(), stream, remote, deadline));
                    }
                }
            }
            Some(finished) = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Ok(Some(connection)) = finished
                    && ready.send(connection).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

fn configure(stream: &TcpStream, settings: &IncomingSettings) {
    // Without TCP_NODELAY the small frames of a stream wait for delayed ACKs (~40 ms each).
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(interval) = settings.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(interval)
            .with_interval(interval);
        if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
    }
}

/// Runs one TLS handshake within the deadline; `None` for one that failed or ran out of time,
/// which closes the connection.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    deadline: Option<Instant>,
) -> Option<Connection> {
    let accepting = acceptor.accept(stream);
    let accepted = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, accepting).await {
            Ok(accepted) => accepted,
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake not finished within the handshake timeout");
                return None;
            }
        },
        None => accepting.await,
    };
    let stream = match accepted {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%remote, %error, "TLS handshake failed");
            return None;
        }
    };
    let client_subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(Subject::of_certificate)
        .map(Arc::new);
    Some(Connection {
        io: HandshakeDeadline::until(Transport::Tls(Box::new(stream)), deadline),
        peer: PeerInfo {
            remote,
            client_subject,
        },
    })
}

impl Stream for Incoming {
    type Item = Result<Connection, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl Listener for Incoming {
    type Io = Connection;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => {
                let peer = connection.peer.clone();
                (connection, peer)
            }
            // The accepting task ends only when this side is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(PeerInfo {
            remote: self.local_addr,
            client_subject: None,
        })
    }
}

impl AxumConnected<IncomingStream<'_, Incoming>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection accepted by an [`Incoming`].
#[derive(Debug)]
pub struct Connection {
    io: HandshakeDeadline<Transport>,
    peer: PeerInfo,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
