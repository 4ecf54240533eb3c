//! Raw gRPC over HTTP/2: any bytes, any headers, to any method of the real server, and the
//! status the server answers with; and a generator of random, mutated protobuf messages for a
//! method's input type, read from the contract's descriptors.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::transport::Channel;
use tower::ServiceExt;

/// Longest a single call may take: it only turns a hang into a failure.
const CALL_HANG: Duration = Duration::from_secs(30);

/// One method of a service, with its input type.
#[derive(Clone)]
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request message's descriptor.
    pub input: MessageDescriptor,
}

/// Every method of every service of the contract, plus health's `Check` (its `Watch` is a
/// stream that never ends on a valid request, and reflection is a bidirectional conversation:
/// both are tonic's own, not ours). A method added to the proto is fuzzed without a change here.
pub fn methods() -> Vec<Method> {
    let mut methods = Vec::new();
    for set in [
        deeprecall::api::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let pool = DescriptorPool::decode(set).expect("descriptor set decodes");
        for service in pool.services() {
            for method in service.methods() {
                if service.full_name() == "grpc.health.v1.Health" && method.name() != "Check" {
                    continue;
                }
                methods.push(Method {
                    path: format!("/{}/{}", service.full_name(), method.name()),
                    input: method.input(),
                });
            }
        }
    }
    methods
}

/// What the server answered: its gRPC status (from the headers of a trailers-only answer, or
/// from the trailers) and its message.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub http: u16,
    /// `grpc-status`, if any.
    pub code: Option<i32>,
    /// `grpc-message`, percent-decoded.
    pub message: String,
}

/// Frames `payload` as one length-prefixed gRPC message.
pub fn frame(payload: &[u8], compressed: bool) -> Bytes {
    let mut framed = Vec::with_capacity(payload.len() + 5);
    framed.push(u8::from(compressed));
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    Bytes::from(framed)
}

/// Sends `body` (already framed) to `path` with the gRPC headers and `extra` ones, and reads
/// the whole answer.
pub async fn call(channel: &Channel, path: &str, extra: &[(&str, &str)], body: Bytes) -> Reply {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(Full::new(body)))
        .expect("request builds");
    let exchange = async {
        let response = match channel.clone().oneshot(request).await {
            Ok(response) => response,
            Err(error) => {
                return Reply {
                    http: 0,
                    code: None,
                    message: format!("no HTTP/2 answer: {error:?}"),
                };
            }
        };
        let (parts, body) = response.into_parts();
        let mut code = grpc_status(&parts.headers);
        let mut message = grpc_message(&parts.headers);
        let collected = match body.collect().await {
            Ok(collected) => collected,
            Err(error) => {
                return Reply {
                    http: parts.status.as_u16(),
                    code,
                    message: format!("the answer's body broke off: {error:?}"),
                };
            }
        };
        if let Some(trailers) = collected.trailers()
            && code.is_none()
        {
            code = grpc_status(trailers);
            message = grpc_message(trailers);
        }
        Reply {
            http: parts.status.as_u16(),
            code,
            message,
        }
    };
    tokio::time::timeout(CALL_HANG, exchange)
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within {CALL_HANG:?}"))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

fn grpc_message(headers: &http::HeaderMap) -> String {
    let raw = headers
        .get("grpc-message")
        .map(|value| value.as_bytes().to_vec())
        .unwrap_or_default();
    percent_decode(&raw)
}

fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        if raw[index] == b'%'
            && index + 2 < raw.len()
            && let Ok(byte) = u8::from_str_radix(
                std::str::from_utf8(&raw[index + 1..index + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(byte);
            index += 3;
        } else {
            out.push(raw[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Strings a hostile caller sends: empty, ordinary, NUL and control characters, bidi
/// overrides, huge, and names of things that exist.
const STRINGS: &[&str] = &[
    "",
    "default",
    "q",
    "What does Klaxon make?",
    "kestrel",
    "a\0b",
    "\0",
    "\u{1b}[31mred\u{1b}[0m",
    "tab\there\nnewline\r",
    "\u{202e}reversed",
    "\u{7f}\u{85}\u{2028}",
    "日本語のテキスト",
    "$and",
    "$gt",
    "../../etc/passwd",
    "Robert'); DROP TABLE documents;--",
];

/// A random string: one of [`STRINGS`], random characters, or a long run.
fn random_string(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(0..10) {
        0..=5 => STRINGS[rng.usize(0..STRINGS.len())].as_bytes().to_vec(),
        6 | 7 => (0..rng.usize(0..40))
            .map(|_| rng.char(..))
            .collect::<String>()
            .into_bytes(),
        8 => "x".repeat(rng.usize(1..20_000)).into_bytes(),
        // Not UTF-8: a string field that cannot decode.
        _ => (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect(),
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn length_delimited(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    tag(out, number, 2);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Numbers at the edges: zero, one, negatives (as 64-bit varints), the extremes.
fn random_integer(rng: &mut fastrand::Rng) -> u64 {
    const EDGES: &[u64] = &[
        0,
        1,
        2,
        3,
        5,
        100,
        101,
        1_000,
        u32::MAX as u64,
        i32::MAX as u64,
        i64::MAX as u64,
        u64::MAX,
        (-1_i64) as u64,
        (-100_i64) as u64,
    ];
    if rng.bool() {
        EDGES[rng.usize(0..EDGES.len())]
    } else {
        rng.u64(..)
    }
}

fn random_double(rng: &mut fastrand::Rng) -> f64 {
    const EDGES: &[f64] = &[
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        1e-300,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    EDGES[rng.usize(0..EDGES.len())]
}

/// A random message of type `descriptor` in wire format: each field present or not, repeated
/// and map fields zero to three times, nested messages down to `depth` levels.
pub fn random_message(
    rng: &mut fastrand::Rng,
    descriptor: &MessageDescriptor,
    depth: u32,
) -> Vec<u8> {
    let mut out = Vec::new();
    for field in descriptor.fields() {
        if rng.bool() {
            continue;
        }
        let count = if field.is_list() || field.is_map() {
            rng.usize(0..4)
        } else {
            1
        };
        let number = field.number();
        for _ in 0..count {
            match field.kind() {
                Kind::String => length_delimited(&mut out, number, &random_string(rng)),
                Kind::Bytes => {
                    let bytes: Vec<u8> = (0..rng.usize(0..32)).map(|_| rng.u8(..)).collect();
                    length_delimited(&mut out, number, &bytes);
                }
                Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => {
                    tag(&mut out, number, 1);
                    out.extend_from_slice(&random_double(rng).to_le_bytes());
                }
                Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => {
                    tag(&mut out, number, 5);
                    out.extend_from_slice(&(random_double(rng) as f32).to_le_bytes());
                }
                Kind::Message(inner) => {
                    if depth > 0 {
                        let payload = random_message(rng, &inner, depth - 1);
                        length_delimited(&mut out, number, &payload);
                    }
                }
                // Every integer kind, bools and enums are varints.
                _ => {
                    tag(&mut out, number, 0);
                    varint(&mut out, random_integer(rng));
                }
            }
        }
    }
    out
}

/// A case for `descriptor`: a random message, often mutated (bits flipped, cut short, bytes
/// inserted or repeated), or plain random bytes.
pub fn random_case(rng: &mut fastrand::Rng, descriptor: &MessageDescriptor) -> Vec<u8> {
    if rng.u8(0..8) == 0 {
        return (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
    }
    let mut bytes = random_message(rng, descriptor, 4);
    if bytes.is_empty() || rng.bool() {
        return bytes;
    }
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..bytes.len().max(1));
        match rng.u8(0..4) {
            0 => {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= 1 << rng.u8(0..8);
                }
            }
            1 => bytes.truncate(at),
            2 => {
                let inserted: Vec<u8> = (0..rng.usize(1..6)).map(|_| rng.u8(..)).collect();
                let at = at.min(bytes.len());
                bytes.splice(at..at, inserted);
            }
            _ => {
                let end = (at + rng.usize(1..16)).min(bytes.len());
                let repeated = bytes[at.min(end)..end].to_vec();
                bytes.splice(end..end, repeated);
            }
        }
    }
    bytes
}

/// Field numbers by name, so that hand-built messages follow the contract.
pub fn field_number(descriptor: &MessageDescriptor, name: &str) -> u32 {
    descriptor
        .get_field_by_name(name)
        .unwrap_or_else(|| panic!("{} has a field {name}", descriptor.full_name()))
        .number()
}

/// Writes a length-delimited field; public for the hand-built messages of the tests.
pub fn put_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    length_delimited(out, number, payload);
}

/// The descriptor of a message of the contract, by full name.
pub fn message(name: &str) -> MessageDescriptor {
    DescriptorPool::decode(deeprecall::api::pb::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes")
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("the contract has {name}"))
}
