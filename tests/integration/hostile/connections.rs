//! Connections that hold the server's resources without asking anything: idle, dripping the
//! HTTP/2 preface, or dripping a frame after the handshake.

use deeprecall::api::pb;
use futures::StreamExt;

use super::HANG;
use crate::common::*;

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test]
async fn thousands_of_idle_and_slow_connections_leave_health_answering() {
    use tokio::io::AsyncWriteExt;

    let mut server = TestServer::start().await;
    let address = server.endpoint.trim_start_matches("http://").to_string();
    // Each connection costs two descriptors in this process (client and server side); leave
    // room for the rest of the test binary.
    let count = open_files_limit()
        .map_or(1_200, |limit| limit.saturating_sub(400) / 2)
        .min(1_200);
    assert!(count >= 300, "too few descriptors to test with: {count}");
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // SETTINGS (empty), then the header of a HEADERS frame announcing 16 KiB that never come.
    let mut handshaken = PREFACE.to_vec();
    handshaken.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let slow_headers: &[u8] = &[0x00, 0x40, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x01];
    let mut connections = Vec::with_capacity(count);
    for index in 0..count {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("the server accepts");
        if index % 3 == 2 {
            stream.write_all(&handshaken).await.expect("handshake sent");
        }
        connections.push(stream);
    }
    // Drip: the slow ones send one byte each round, idle ones nothing; health is asked from a
    // fresh connection between rounds.
    for round in 0..4 {
        for (index, stream) in connections.iter_mut().enumerate() {
            let byte = match index % 3 {
                0 => None,
                1 => PREFACE.get(round),
                _ => slow_headers.get(round),
            };
            if let Some(byte) = byte {
                // A connection the server closed is fine: that is a bound, too.
                let _ = stream.write_all(std::slice::from_ref(byte)).await;
            }
        }
        tokio::time::timeout(HANG, wait_until_serving(&server.endpoint))
            .await
            .unwrap_or_else(|_| panic!("health did not answer in round {round}"));
    }
    let mut fresh = deeprecall::api::DeepRecallClient::connect(server.endpoint.clone())
        .await
        .expect("a fresh connection");
    let stats = tokio::time::timeout(HANG, fresh.get_stats(pb::GetStatsRequest {}))
        .await
        .expect("answers");
    assert!(stats.is_ok(), "{stats:?}");
    drop(connections);
    let stats = server.client.get_stats(pb::GetStatsRequest {}).await;
    assert!(stats.is_ok(), "{stats:?}");
}

#[tokio::test]
async fn connections_that_never_begin_a_request_are_closed_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start_with(|config| config.server.handshake_timeout_seconds = 1).await;
    let address = server.endpoint.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    let mut dripping = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    dripping.write_all(b"PRI * HT").await.expect("first bytes");
    for (name, stream) in [("silent", &mut silent), ("dripping", &mut dripping)] {
        // The server may greet with its SETTINGS; then it closes the connection (end of
        // stream or reset), and the read never hangs.
        let closed = async {
            let mut buf = [0u8; 256];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout(HANG, closed)
            .await
            .unwrap_or_else(|_| panic!("the {name} connection was left open"));
    }
    wait_until_serving(&server.endpoint).await;
}

#[tokio::test]
async fn a_request_body_that_never_ends_is_cut_off_by_the_request_timeout() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tower::ServiceExt;

    let server = TestServer::start_with(|config| config.server.request_timeout_seconds = 1).await;
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    // The header of a 100-byte message, then nothing more, ever, on an open stream.
    let header = Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a]);
    let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(header))])
        .chain(futures::stream::pending());
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/deeprecall.v1.DeepRecall/AddDocuments")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(StreamBody::new(body)))
        .expect("request");
    let response = tokio::time::timeout(HANG, channel.clone().oneshot(request))
        .await
        .expect("the server answers the dripping call")
        .expect("an HTTP/2 answer");
    let status = tonic::Status::from_header_map(response.headers()).expect("a status");
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert!(status.message().contains("Timeout"), "{status:?}");
    wait_until_serving(&server.endpoint).await;
}
