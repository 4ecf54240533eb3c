//! Probes of the machine under the engine suite: the transport floor (round trips that carry
//! nothing of DeepRecall) and how much slower memory-bound work runs after idling.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::middle;
use crate::cli::CliError;
use crate::llm::mock_server::{MockLlmServer, MockScript, Recording};

/// Times round trips on loopback that carry nothing of DeepRecall, as a query's own travel
/// does: a model call through the same reqwest client to the mock, answered "ok" at once, and
/// counted as the overhead is (the round trip minus the mock's own time at its socket); and a
/// gRPC health check on a bare tonic server, the caller's path. Back to back and, with a slow
/// mock, each after idling as long as the mock takes: a query at concurrency 1 pays one cold
/// model round trip after every model call, so three of them are the floor under its overhead
/// on this machine, whatever the engine does between them.
pub(super) async fn transport_floor_probe(idle: Duration) -> Result<String, CliError> {
    const BACK_TO_BACK: usize = 200;
    const AFTER_IDLE: usize = 16;
    let probe_error =
        |error: &dyn std::fmt::Display| CliError::Io(format!("transport probe: {error}"));

    let mock = MockLlmServer::start(MockScript::default().with_recording(Recording::Light))
        .await
        .map_err(|error| probe_error(&error))?;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());
    let body = r#"{"model":"probe","messages":[{"role":"user","content":"ping"}]}"#;
    let model_round_trip = async || -> Result<(), CliError> {
        let response = http
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| probe_error(&error))?;
        response
            .bytes()
            .await
            .map_err(|error| probe_error(&error))?;
        Ok(())
    };
    let model = round_trip_times(idle, BACK_TO_BACK, AFTER_IDLE, model_round_trip).await?;
    // The mock served the requests one at a time, in the order sent, warm-up first. Without
    // its time for each, the floor would be overstated; better no number.
    let mock_times: Vec<Duration> = mock
        .requests()
        .iter()
        .skip(1)
        .map(|request| request.service_time)
        .collect::<Option<_>>()
        .filter(|times: &Vec<Duration>| {
            times.len() == model.back_to_back.len() + model.after_idle.len()
        })
        .ok_or_else(|| probe_error(&"the mock did not time every request"))?;
    let beyond_the_mock = |times: &[Duration], first: usize| -> Vec<Duration> {
        times
            .iter()
            .zip(mock_times.iter().skip(first))
            .map(|(round_trip, mock)| round_trip.saturating_sub(*mock))
            .collect()
    };
    let mut model_warm = beyond_the_mock(&model.back_to_back, 0);
    let mut model_cold = beyond_the_mock(&model.after_idle, BACK_TO_BACK);

    let grpc_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| probe_error(&error))?;
    let grpc_address = grpc_listener
        .local_addr()
        .map_err(|error| probe_error(&error))?;
    let (_health, health_service) = tonic_health::server::health_reporter();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                grpc_listener,
            )),
    );
    let grpc = async {
        let endpoint = format!("http://{grpc_address}");
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|error| probe_error(&error))?
            .connect()
            .await
            .map_err(|error| CliError::Connect {
                endpoint,
                message: error.to_string(),
            })?;
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let health_check = async || -> Result<(), CliError> {
            health
                .clone()
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            Ok(())
        };
        round_trip_times(idle, BACK_TO_BACK, AFTER_IDLE, health_check).await
    }
    .await;
    grpc_server.abort();
    let mut grpc = grpc?;

    let micros = |times: &mut [Duration]| middle(times).as_secs_f64() * 1e6;
    let (model_warm, grpc_warm) = (micros(&mut model_warm), micros(&mut grpc.back_to_back));
    Ok(if idle.is_zero() {
        format!(
            "transport alone on this machine (p50, no DeepRecall code): a model round trip beyond the mock's own time {model_warm:.0} µs (three: {:.2} ms), a gRPC health check on a bare tonic server {grpc_warm:.0} µs",
            3.0 * model_warm / 1000.0,
        )
    } else {
        let (model_cold, grpc_cold) = (micros(&mut model_cold), micros(&mut grpc.after_idle));
        format!(
            "transport alone on this machine (p50, no DeepRecall code): a model round trip beyond the mock's own time {model_warm:.0} µs back to back, {model_cold:.0} µs after {} ms idle (three: {:.2} ms); a gRPC health check on a bare tonic server {grpc_warm:.0} µs, {grpc_cold:.0} µs after idle",
            idle.as_millis(),
            3.0 * model_cold / 1000.0,
        )
    })
}

/// Times of a round trip, in the order taken.
#[derive(Debug, Default)]
struct RoundTrips {
    back_to_back: Vec<Duration>,
    /// Each after sleeping the idle time; empty when it is zero.
    after_idle: Vec<Duration>,
}

/// Times `round_trip` `back_to_back` times in a row after one untimed to warm up, then, when
/// `idle` is not zero, `after_idle` times each after sleeping `idle`.
async fn round_trip_times(
    idle: Duration,
    back_to_back: usize,
    after_idle: usize,
    mut round_trip: impl AsyncFnMut() -> Result<(), CliError>,
) -> Result<RoundTrips, CliError> {
    round_trip().await?;
    let mut times = RoundTrips::default();
    for _ in 0..back_to_back {
        let began = Instant::now();
        round_trip().await?;
        times.back_to_back.push(began.elapsed());
    }
    if !idle.is_zero() {
        for _ in 0..after_idle {
            tokio::time::sleep(idle).await;
            let began = Instant::now();
            round_trip().await?;
            times.after_idle.push(began.elapsed());
        }
    }
    Ok(times)
}

/// The bytes [`cold_cache_probe`] walks: past the two cores' L2 caches, well inside a
/// shared L3.
const PROBE_BYTES: usize = 8 << 20;

/// Measures how much slower this machine runs memory-bound work after idling for `idle`, as
/// a query does after each model call: the same walk over [`PROBE_BYTES`] back to back, then
/// each time after sleeping. On a virtual machine whose neighbours use the shared cache while
/// it idles, the second is markedly slower, and so is every step of a query at concurrency 1
/// with a slow model, however little work the step does.
pub(super) async fn cold_cache_probe(idle: Duration) -> String {
    const WALKS: usize = 16;
    let mut memory = vec![1u8; PROBE_BYTES];
    let mut walk = || {
        let began = Instant::now();
        // One byte per cache line, written back so that the walk cannot be skipped.
        for line in memory.chunks_mut(64) {
            line[0] = std::hint::black_box(line[0].wrapping_add(1));
        }
        began.elapsed()
    };
    walk();
    let mut warm: Vec<Duration> = (0..WALKS).map(|_| walk()).collect();
    let mut cold = Vec::with_capacity(WALKS);
    for _ in 0..WALKS {
        tokio::time::sleep(idle).await;
        cold.push(walk());
    }
    let (warm, cold) = (middle(&mut warm), middle(&mut cold));
    format!(
        "this machine after {} ms idle: a walk over {} MiB takes {:.0} µs against {:.0} µs back to back ({:.1}x)",
        idle.as_millis(),
        PROBE_BYTES >> 20,
        cold.as_secs_f64() * 1e6,
        warm.as_secs_f64() * 1e6,
        cold.as_secs_f64() / warm.as_secs_f64().max(f64::MIN_POSITIVE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_are_timed_back_to_back_and_after_idling_only_when_asked() {
        let mut calls = 0;
        let times = round_trip_times(Duration::ZERO, 5, 3, async || {
            calls += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(calls, 6, "one warm-up and five timed");
        assert_eq!((times.back_to_back.len(), times.after_idle.len()), (5, 0));

        let mut calls = 0;
        let times = round_trip_times(Duration::from_millis(2), 5, 3, async || {
            calls += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(calls, 9);
        assert_eq!(times.after_idle.len(), 3);
        assert!(
            times
                .after_idle
                .iter()
                .all(|time| *time < Duration::from_secs(1))
        );

        let failed = round_trip_times(Duration::ZERO, 5, 3, async || {
            Err(CliError::Io("refused".into()))
        })
        .await;
        assert!(matches!(failed, Err(CliError::Io(message)) if message == "refused"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_transport_probe_talks_to_real_http_and_grpc_servers() {
        let warm_only = transport_floor_probe(Duration::ZERO).await.unwrap();
        assert!(
            warm_only.contains("a model round trip beyond the mock's own time"),
            "{warm_only}"
        );
        assert!(warm_only.contains("a gRPC health check"), "{warm_only}");
        assert!(!warm_only.contains("after"), "{warm_only}");

        let with_idle = transport_floor_probe(Duration::from_millis(1))
            .await
            .unwrap();
        assert!(with_idle.contains("after 1 ms idle"), "{with_idle}");
    }
}
