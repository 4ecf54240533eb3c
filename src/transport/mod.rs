//! What the server's ports accept: TCP connections, in plaintext or TLS, each bounded by a
//! handshake deadline and carrying what is known of its peer. The gRPC port, the HTTP port
//! and the metrics port all accept through here.

pub mod handshake;
pub mod incoming;
pub mod subject;
pub mod tls;

pub use incoming::{Incoming, IncomingSettings, PeerInfo};
pub use subject::Subject;
pub use tls::{ServerTls, TlsError, TlsFiles};
