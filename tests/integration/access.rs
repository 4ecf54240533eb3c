//! The front door over real gRPC: API keys, scopes, rate limits (in memory and shared through a
//! real Redis), load shedding, key reload on SIGHUP, and gRPC-Web.

use std::time::Duration;

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::config::{Backend, CacheBackend, Config, RateLimitStore};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use prost::Message;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::*;

const READER: &str = "reader-key-0000000001";
const WRITER: &str = "writer-key-0000000002";
const ADMIN: &str = "admin-key-00000000003";

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(20);

fn key(name: &str, secret: &str, scopes: &[Scope], collections: Option<&[&str]>) -> KeyEntry {
    KeyEntry {
        name: name.into(),
        key: Secret::new(secret),
        sha256: None,
        subject: None,
        scopes: scopes.to_vec(),
        collections: collections.map(|names| names.iter().map(|name| name.to_string()).collect()),
        requests_per_minute: None,
        burst: None,
    }
}

fn with_keys(config: &mut Config) {
    config.auth.keys = vec![
        key("reader", READER, &[Scope::Query], Some(&["default"])),
        key("writer", WRITER, &[Scope::Write], Some(&["team"])),
        key("admin", ADMIN, &[Scope::Admin], None),
    ];
}

/// A request carrying `authorization: Bearer <secret>`.
fn bearer<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("ascii"),
    );
    request
}

/// A request carrying `x-api-key: <secret>`.
fn api_key<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", secret.parse().expect("ascii"));
    request
}

async fn stats(
    client: &mut DeepRecallClient<Channel>,
    request: tonic::Request<pb::GetStatsRequest>,
) -> Result<pb::GetStatsResponse, tonic::Status> {
    client
        .get_stats(request)
        .await
        .map(tonic::Response::into_inner)
}

fn add_request(collection: &str, id: &str) -> pb::AddDocumentsRequest {
    pb::AddDocumentsRequest {
        collection: collection.into(),
        documents: vec![document(
            id,
            "Kestrel Fabrication is in Tampere.",
            json!({}),
        )],
    }
}

/// A server whose model follows `script`, with one document in the default collection and its
/// limits set by `limits`.
async fn model_server(
    script: MockScript,
    limits: impl FnOnce(&mut deeprecall::config::LimitsConfig),
) -> (MockLlmServer, TestServer) {
    let mock = MockLlmServer::start(script).await.expect("mock starts");
    let server = TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        limits(&mut config.limits);
    })
    .await;
    let mut writer = server.client.clone();
    add(
        &mut writer,
        "",
        vec![document("k", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    (mock, server)
}

/// Runs a query to its end, returning the status of the call or of the stream.
async fn run_query(
    client: &mut DeepRecallClient<Channel>,
    request: tonic::Request<pb::QueryRequest>,
) -> Result<pb::QueryResult, tonic::Status> {
    let mut stream = client.query(request).await?.into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        last = event.event;
    }
    match last {
        Some(pb::query_event::Event::Result(result)) => Ok(result),
        other => panic!("the stream did not end with a result: {other:?}"),
    }
}

fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

#[tokio::test]
async fn keys_are_required_in_either_header_and_health_is_exempt() {
    let mut server = TestServer::start_with(with_keys).await;
    let client = &mut server.client;

    let missing = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("missing API key"), "{missing:?}");

    let mut basic = tonic::Request::new(pb::GetStatsRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic cmVhZGVy".parse().expect("ascii"));
    let malformed = stats(client, basic).await.unwrap_err();
    assert_eq!(malformed.code(), Code::Unauthenticated);
    assert!(malformed.message().contains("Bearer"), "{malformed:?}");

    let wrong = "reader-key-0000000009";
    let unknown = stats(client, bearer(pb::GetStatsRequest {}, wrong))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(unknown.message(), "unknown API key");

    stats(client, bearer(pb::GetStatsRequest {}, READER))
        .await
        .expect("bearer key admitted");
    stats(client, api_key(pb::GetStatsRequest {}, READER))
        .await
        .expect("x-api-key admitted");

    let channel = Channel::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "deeprecall.v1.DeepRecall".into(),
        })
        .await
        .expect("health needs no key")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn scopes_and_collection_lists_bound_each_key() {
    let mut server = TestServer::start_with(with_keys).await;
    let client = &mut server.client;
    client
        .add_documents(bearer(add_request("", "kestrel"), ADMIN))
        .await
        .expect("admin writes anywhere");
    client
        .add_documents(bearer(add_request("team", "osprey"), WRITER))
        .await
        .expect("writer writes its collection");

    let denied = client
        .add_documents(bearer(add_request("", "x"), READER))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("\"write\""), "{denied:?}");

    let elsewhere = client
        .add_documents(bearer(add_request("default", "x"), WRITER))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
    assert!(elsewhere.message().contains("\"default\""), "{elsewhere:?}");

    let writer_query = run_query(client, bearer(question("Where is Kestrel?"), WRITER))
        .await
        .unwrap_err();
    assert_eq!(writer_query.code(), Code::PermissionDenied);

    let clear_all = client
        .clear_cache(bearer(pb::ClearCacheRequest::default(), WRITER))
        .await
        .unwrap_err();
    assert_eq!(clear_all.code(), Code::PermissionDenied);
    client
        .clear_cache(bearer(
            pb::ClearCacheRequest {
                collection: "team".into(),
            },
            WRITER,
        ))
        .await
        .expect("writer clears its collection");

    let answer = run_query(client, bearer(question("Where is Kestrel?"), READER))
        .await
        .expect("reader queries default");
    assert!(answer.answer.contains("Tampere"), "{answer:?}");
    let mut other = question("Where is Osprey?");
    other.collection = "team".into();
    let denied = run_query(client, bearer(other.clone(), READER))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let batch = pb::QueryBatchRequest {
        queries: vec![question("Where is Kestrel?"), other],
        max_concurrency: 2,
    };
    let denied = client.query_batch(bearer(batch, READER)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().starts_with("queries[1]:"), "{denied:?}");

    let seen = stats(client, bearer(pb::GetStatsRequest {}, READER))
        .await
        .expect("stats");
    let names: Vec<&str> = seen
        .collections
        .iter()
        .map(|collection| collection.name.as_str())
        .collect();
    assert_eq!(names, ["default"]);
    let all = stats(client, bearer(pb::GetStatsRequest {}, ADMIN))
        .await
        .expect("stats");
    assert_eq!(all.collections.len(), 2);
}

#[tokio::test]
async fn rate_limits_count_exactly_and_say_when_to_retry() {
    let mut server = TestServer::start_with(|config| {
        with_keys(config);
        // One request a minute after the burst: no token comes back while the test runs.
        config.limits.requests_per_minute = 1;
        config.limits.burst = 3;
        config.auth.keys[1].requests_per_minute = Some(2);
        config.auth.keys[1].burst = Some(1);
        config.auth.keys[1].collections = None;
    })
    .await;
    let client = &mut server.client;
    for _ in 0..3 {
        stats(client, bearer(pb::GetStatsRequest {}, READER))
            .await
            .expect("within the burst");
    }
    let limited = stats(client, bearer(pb::GetStatsRequest {}, READER))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!((59..=60).contains(&retry_after(&limited)), "{limited:?}");
    assert!(
        limited.message().contains("1 requests per minute"),
        "{limited:?}"
    );

    // Another key has its own bucket, and its own override: burst 1, 2 per minute.
    client
        .clear_cache(bearer(pb::ClearCacheRequest::default(), WRITER))
        .await
        .expect("own bucket");
    let limited = client
        .clear_cache(bearer(pb::ClearCacheRequest::default(), WRITER))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!((29..=30).contains(&retry_after(&limited)), "{limited:?}");

    // A batch larger than the burst can never pass, and says so (its call still costs one).
    let too_big = pb::QueryBatchRequest {
        queries: vec![question("Kestrel?"); 4],
        max_concurrency: 2,
    };
    let refused = client
        .query_batch(bearer(too_big, ADMIN))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("burst of 3"), "{refused:?}");
    // A batch costs one request per query: two fit the admin's remaining two, and the next
    // call is one too many.
    let batch = pb::QueryBatchRequest {
        queries: vec![question("Where is Kestrel?"), question("Kestrel?")],
        max_concurrency: 2,
    };
    let mut items = client
        .query_batch(bearer(batch.clone(), ADMIN))
        .await
        .expect("two more requests fit")
        .into_inner();
    while items.message().await.expect("items").is_some() {}
    let limited = client.query_batch(bearer(batch, ADMIN)).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn calls_refused_for_their_key_are_limited_per_address() {
    let mut server = TestServer::start_with(|config| {
        with_keys(config);
        config.limits.refused_per_minute = 1;
        config.limits.refused_burst = 3;
    })
    .await;
    let client = &mut server.client;
    let wrong = "reader-key-0000000009";
    for _ in 0..2 {
        let refused = stats(client, bearer(pb::GetStatsRequest {}, wrong))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let missing = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let told = stats(client, bearer(pb::GetStatsRequest {}, wrong))
        .await
        .unwrap_err();
    assert_eq!(told.code(), Code::ResourceExhausted, "{told:?}");
    assert!(told.message().contains("unknown API key"), "{told:?}");
    assert!((59..=60).contains(&retry_after(&told)), "{told:?}");

    // The address's valid keys are not held back.
    stats(client, bearer(pb::GetStatsRequest {}, READER))
        .await
        .expect("a valid key is admitted");
}

#[tokio::test]
async fn without_keys_the_limit_is_per_client_address() {
    let mut server = TestServer::start_with(|config| {
        config.limits.requests_per_minute = 1;
        config.limits.burst = 2;
    })
    .await;
    let client = &mut server.client;
    for _ in 0..2 {
        stats(client, tonic::Request::new(pb::GetStatsRequest {}))
            .await
            .expect("within the burst");
    }
    let limited = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
}

fn limited_through(redis: &RedisServer) -> impl FnOnce(&mut Config) + use<> {
    let url = redis.url.clone();
    move |config: &mut Config| {
        config.limits.store = RateLimitStore::Redis;
        config.limits.redis_url = url;
        config.limits.requests_per_minute = 1;
        config.limits.burst = 4;
    }
}

#[tokio::test]
async fn two_replicas_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let mut first = TestServer::start_with(limited_through(&redis)).await;
    let mut second = TestServer::start_with(limited_through(&redis)).await;
    for client in [&mut first.client, &mut second.client] {
        for _ in 0..2 {
            stats(client, tonic::Request::new(pb::GetStatsRequest {}))
                .await
                .expect("within the shared burst");
        }
    }
    for client in [&mut first.client, &mut second.client] {
        let limited = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(limited.code(), Code::ResourceExhausted);
        assert!((59..=60).contains(&retry_after(&limited)), "{limited:?}");
    }
}

#[tokio::test]
async fn a_dead_redis_leaves_each_replica_limiting_alone() {
    let mut redis = RedisServer::start();
    let mut server = TestServer::start_with(limited_through(&redis)).await;
    let client = &mut server.client;
    add(
        client,
        "",
        vec![document("k", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    redis.kill();

    // The local buckets start fresh: the burst of four again, then refusals, each answered
    // within the Redis timeout rather than hanging.
    for _ in 0..4 {
        let result = tokio::time::timeout(
            HANG,
            run_query(client, tonic::Request::new(question("Where is Kestrel?"))),
        )
        .await
        .expect("answered, not hanging on the dead Redis")
        .expect("served without Redis");
        assert!(result.answer.contains("Tampere"), "{result:?}");
    }
    let limited = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_dead_redis_leaves_each_replica_its_share_of_the_limit() {
    let mut redis = RedisServer::start();
    let limited_in_halves = |config: &mut Config| {
        limited_through(&redis)(config);
        config.limits.requests_per_minute = 2;
        config.limits.fallback_replicas = 2;
    };
    let (mut first, metrics_port) = TestServer::start_with_metrics(limited_in_halves).await;
    let mut second = TestServer::start_with(limited_in_halves).await;
    // While Redis answers, the two share the whole burst of four.
    stats(
        &mut first.client,
        tonic::Request::new(pb::GetStatsRequest {}),
    )
    .await
    .expect("within the shared burst");
    redis.kill();

    // Without it, each admits its half of the burst, two, from fresh local buckets: the fleet
    // stays at the shared limit's four instead of eight.
    for client in [&mut first.client, &mut second.client] {
        for _ in 0..2 {
            stats(client, tonic::Request::new(pb::GetStatsRequest {}))
                .await
                .expect("within the replica's share");
        }
        let limited = stats(client, tonic::Request::new(pb::GetStatsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(limited.code(), Code::ResourceExhausted);
        // Half the rate: one request a minute, where the whole rate would allow one in 30 s.
        assert!((59..=60).contains(&retry_after(&limited)), "{limited:?}");
    }
    let text = scrape_metrics(metrics_port).await;
    assert_eq!(
        sample(&text, "deeprecall_rate_limit_fallbacks_total"),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test]
async fn overload_is_refused_at_once_not_queued() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const STREAMS: usize = 200;
    const RUNNING: usize = 10;
    const WAITING: usize = 5;
    const REFUSED: usize = STREAMS - RUNNING - WAITING;
    // No model call ends until every refusal is in: a refusal queued behind the model would
    // never come, and the test would stop at its bound.
    let (mock, server) = model_server(
        MockScript::replies(vec![MockReply::held(MockReply::text(
            "Kestrel is in Tampere.",
        ))]),
        |limits| {
            limits.max_concurrent_queries = RUNNING;
            limits.max_queued_queries = WAITING;
            limits.max_queue_wait_ms = 60_000;
        },
    )
    .await;

    let refusals = Arc::new(AtomicUsize::new(0));
    let calls = (0..STREAMS).map(|n| {
        let mut client = server.client.clone();
        let refusals = Arc::clone(&refusals);
        async move {
            let outcome = run_query(
                &mut client,
                tonic::Request::new(question(&format!("Kestrel {n}?"))),
            )
            .await;
            if matches!(&outcome, Err(status) if status.code() == Code::ResourceExhausted) {
                refusals.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        }
    });
    let release_after_the_refusals = async {
        while refusals.load(Ordering::SeqCst) < REFUSED {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        mock.release_held();
    };
    let (outcomes, ()) = tokio::time::timeout(
        HANG,
        futures::future::join(futures::future::join_all(calls), release_after_the_refusals),
    )
    .await
    .expect("every refusal came while the model held its answers");

    let answered = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let refused: Vec<&tonic::Status> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().err())
        .collect();
    assert!(
        refused
            .iter()
            .all(|status| status.code() == Code::ResourceExhausted
                && status.message().contains("overloaded")),
        "{refused:?}"
    );
    assert_eq!(answered, RUNNING + WAITING);
    assert_eq!(refused.len(), REFUSED);
}

#[tokio::test]
async fn a_batch_runs_its_items_on_free_query_slots_only() {
    const RUNNING: usize = 3;
    // No model call ends until the test lets it: the batch holds every slot it took.
    let (mock, server) = model_server(
        MockScript::replies(vec![MockReply::held(MockReply::text(
            "Kestrel is in Tampere.",
        ))]),
        |limits| {
            limits.max_concurrent_queries = RUNNING;
            limits.max_queued_queries = 0;
        },
    )
    .await;

    let mut batch_client = server.client.clone();
    let batch = tokio::spawn(async move {
        let queries = (0..5)
            .map(|n| question(&format!("Where is Kestrel, take {n}?")))
            .collect();
        let mut stream = batch_client
            .query_batch(pb::QueryBatchRequest {
                queries,
                max_concurrency: 5,
            })
            .await?
            .into_inner();
        let mut items = Vec::new();
        while let Some(item) = stream.message().await? {
            items.push(item);
        }
        Ok::<_, tonic::Status>(items)
    });
    tokio::time::timeout(HANG, async {
        while mock.request_count() < RUNNING {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the batch's items reached the model");
    // The call's slot and the two free ones: the batch takes no more than the server allows.
    let mut client = server.client.clone();
    let refused = run_query(&mut client, tonic::Request::new(question("Kestrel?")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("overloaded"), "{refused:?}");
    assert_eq!(
        mock.request_count(),
        RUNNING,
        "no item beyond the free slots started"
    );

    mock.release_held();
    let items = tokio::time::timeout(HANG, batch)
        .await
        .expect("the batch ends")
        .expect("batch task")
        .expect("batch succeeds");
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|item| matches!(item.outcome, Some(pb::query_batch_item::Outcome::Result(_))))
    );
    // Every slot came back with the batch's end.
    run_query(&mut client, tonic::Request::new(question("Kestrel again?")))
        .await
        .expect("a slot is free again");
}

#[tokio::test]
async fn the_key_file_is_reloaded_on_sighup_and_calls_in_flight_finish() {
    // The model holds its answer until the test lets it go: a query stays in flight across
    // the reload, however long that takes.
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::held(MockReply::text(
        "Kestrel is in Tampere.",
    ))]))
    .await
    .expect("mock starts");
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let keys_file = data_dir.path().join("keys.toml");
    let key_file = |name: &str, secret: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nkey = \"{secret}\"\nscopes = [\"query\", \"write\"]\n"
        )
    };
    std::fs::write(&keys_file, key_file("alice", READER)).expect("key file written");
    let keys_path = keys_file.display().to_string();
    let base_url = mock.base_url();
    let (child, endpoint, mut log) = spawn_binary_logging(
        &data_dir.path().join("data"),
        &["--keys-file", &keys_path],
        &[
            ("DEEPRECALL_BACKEND", "openai"),
            ("DEEPRECALL_MODEL", "mock-model"),
            ("DEEPRECALL_BASE_URL", &base_url),
            ("DEEPRECALL_LLM_API_KEY", "test-key"),
            ("DEEPRECALL_CACHE", "none"),
        ],
    );
    let child = KilledOnDrop(child);
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint).await.expect("connects");
    client
        .add_documents(bearer(add_request("", "k"), READER))
        .await
        .expect("alice writes");
    let mut in_flight_client = client.clone();
    let in_flight = tokio::spawn(async move {
        run_query(
            &mut in_flight_client,
            bearer(question("Where is Kestrel?"), READER),
        )
        .await
    });
    tokio::time::timeout(Duration::from_secs(20), async {
        while mock.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("alice's query reached the model");

    std::fs::write(&keys_file, key_file("bob", WRITER)).expect("key file rewritten");
    hang_up(&child);
    log.wait_for("SIGHUP: API keys reloaded").await;
    stats(&mut client, bearer(pb::GetStatsRequest {}, WRITER))
        .await
        .expect("bob admitted");
    let gone = stats(&mut client, bearer(pb::GetStatsRequest {}, READER))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);

    // Alice's query was admitted before the reload: it runs to its end.
    mock.release_held();
    let result = in_flight
        .await
        .expect("query task")
        .expect("the call in flight finished");
    assert_eq!(result.answer, "Kestrel is in Tampere.");
    assert!(!result.partial);

    // A broken file keeps the keys in force.
    std::fs::write(&keys_file, "[[keys]\nbroken").expect("key file broken");
    hang_up(&child);
    log.wait_for("SIGHUP: API keys not reloaded").await;
    stats(&mut client, bearer(pb::GetStatsRequest {}, WRITER))
        .await
        .expect("bob still admitted");
}

/// One gRPC-Web frame: flag byte, big-endian length, payload.
fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn query_streams_over_grpc_web_with_cors_for_allowed_origins() {
    let mut server = TestServer::start_with(|config| {
        config.server.grpc_web = true;
        config.server.cors_allow_origins = vec!["https://app.example".into()];
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![document(
            "k",
            "Kestrel Fabrication is in Tampere.",
            json!({}),
        )],
    )
    .await;
    let http = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let url = format!("{}/deeprecall.v1.DeepRecall/Query", server.endpoint);

    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("preflight");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let request = question("Where is Kestrel Fabrication?").encode_to_vec();
    let response = http
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "https://app.example")
        .body(grpc_web_frame(0, &request))
        .send()
        .await
        .expect("gRPC-Web call");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes().await.expect("body").to_vec();
    let (mut events, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload: Vec<u8> = body.drain(..5 + length).skip(5).collect();
        if flag & 0x80 != 0 {
            trailers = String::from_utf8_lossy(&payload).into_owned();
        } else {
            events.push(pb::QueryEvent::decode(payload.as_slice()).expect("an event"));
        }
    }
    assert!(body.is_empty(), "a cut frame: {body:?}");
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    match events.last().and_then(|event| event.event.clone()) {
        Some(pb::query_event::Event::Result(result)) => {
            assert!(result.answer.contains("Tampere"), "{result:?}")
        }
        other => panic!("no result over gRPC-Web: {other:?}"),
    }
}

#[tokio::test]
async fn usage_is_accounted_per_key_under_concurrency() {
    const ALICE: &str = "alice-key-00000000004";
    const BOB: &str = "bob-key-0000000000005";
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::text(
        "Kestrel is in Tampere.",
    )]))
    .await
    .expect("mock starts");
    let mut server = TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("test-key");
        config.cache.backend = CacheBackend::None;
        config.auth.keys = vec![
            key("alice", ALICE, &[Scope::Query], None),
            key("bob", BOB, &[Scope::Query], None),
            key("admin", ADMIN, &[Scope::Admin], None),
        ];
    })
    .await;
    server
        .client
        .add_documents(bearer(add_request("", "kestrel"), ADMIN))
        .await
        .expect("documents added");

    let calls = (0..50).map(|n| {
        let mut client = server.client.clone();
        let secret = if n % 5 < 3 { ALICE } else { BOB };
        async move {
            run_query(
                &mut client,
                bearer(question(&format!("Where is Kestrel, take {n}?")), secret),
            )
            .await
            .expect("answered")
        }
    });
    futures::future::join_all(calls).await;

    let all = stats(&mut server.client, bearer(pb::GetStatsRequest {}, ADMIN))
        .await
        .expect("stats");
    let totals = all.usage.expect("totals");
    let usage_of = |name: &str| {
        all.key_usage
            .iter()
            .find(|key| key.key_name == name)
            .and_then(|key| key.usage.clone())
            .expect("the key's usage")
    };
    let (alice, bob) = (usage_of("alice"), usage_of("bob"));
    assert_eq!((alice.queries, bob.queries), (30, 20));
    assert_eq!(totals.queries, 50);
    assert_eq!(alice.llm_calls + bob.llm_calls, totals.llm_calls);
    assert_eq!(alice.input_tokens + bob.input_tokens, totals.input_tokens);
    assert_eq!(
        alice.output_tokens + bob.output_tokens,
        totals.output_tokens
    );
    assert_eq!(alice.search_calls + bob.search_calls, totals.search_calls);
    assert!(
        totals.llm_calls >= 50 && totals.input_tokens > 0,
        "{totals:?}"
    );
    assert!((alice.cost_usd + bob.cost_usd - totals.cost_usd).abs() < 1e-9);

    // A key sees its own usage only.
    let own = stats(&mut server.client, bearer(pb::GetStatsRequest {}, BOB))
        .await
        .expect("stats");
    assert_eq!(own.usage.expect("own usage"), bob);
    let names: Vec<&str> = own
        .key_usage
        .iter()
        .map(|key| key.key_name.as_str())
        .collect();
    assert_eq!(names, ["bob"]);
}
