//! Result and search caches over gRPC: each backend, persistence, isolation, coalescing.

use std::time::Duration;

use deeprecall::api::pb;
use deeprecall::config::{Backend, CacheBackend, Config};
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use deeprecall::secret::Secret;
use serde_json::json;

use crate::common::*;

/// Longest a test waits for what should happen at once: it only bounds a hang.
const HANG: Duration = Duration::from_secs(20);

fn use_backend(config: &mut Config, backend: CacheBackend, dir: &std::path::Path) {
    config.cache.backend = backend;
    config.cache.path = dir.join("cache.db");
}

fn use_redis(config: &mut Config, redis: &RedisServer) {
    config.cache.backend = CacheBackend::Redis;
    config.cache.redis_url = redis.url.clone();
}

/// Waits until the result cache holds `entries` entries.
async fn until_results_cached(server: &mut TestServer, entries: u64) {
    tokio::time::timeout(HANG, async {
        loop {
            let stats = server
                .client
                .get_stats(pb::GetStatsRequest {})
                .await
                .expect("stats")
                .into_inner();
            if stats.cache.is_some_and(|cache| cache.entries >= entries) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the result was cached");
}

#[tokio::test]
async fn every_backend_hits_on_repeat_and_misses_after_a_write() {
    let redis = RedisServer::start();
    for backend in [
        CacheBackend::Memory,
        CacheBackend::Sqlite,
        CacheBackend::Redis,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut server = TestServer::start_with(|config| {
            use_backend(config, backend, dir.path());
            config.cache.redis_url = redis.url.clone();
            // A lookup slower than the timeout is a miss; on a busy machine 250 ms is not
            // enough to make this test about hits rather than about timing.
            config.cache.redis_timeout_ms = 10_000;
        })
        .await;
        add(
            &mut server.client,
            "",
            vec![document("a", "Kestrel is in Tampere.", json!({}))],
        )
        .await;
        let first = query_result(&mut server.client, question("Where is Kestrel?")).await;
        // A network cache is written on the side, after the answer: wait for the write.
        until_results_cached(&mut server, 1).await;
        let second = query_result(&mut server.client, question("Where is Kestrel?")).await;
        assert!(!first.cached && second.cached, "{backend:?}");
        add(
            &mut server.client,
            "",
            vec![document("b", "Kestrel moved to Oulu.", json!({}))],
        )
        .await;
        let third = query_result(&mut server.client, question("Where is Kestrel?")).await;
        assert!(
            !third.cached,
            "{backend:?}: a write makes older entries unreachable"
        );
        until_results_cached(&mut server, 2).await;
        let fourth = query_result(&mut server.client, question("Where is Kestrel?")).await;
        assert!(fourth.cached, "{backend:?}");
        server
            .client
            .delete_documents(pb::DeleteDocumentsRequest {
                collection: String::new(),
                ids: vec!["b".into()],
            })
            .await
            .unwrap();
        let after_delete = query_result(&mut server.client, question("Where is Kestrel?")).await;
        assert!(!after_delete.cached, "{backend:?}: a delete does too");
        let ids: Vec<&str> = after_delete
            .sources
            .iter()
            .map(|source| source.id.as_str())
            .collect();
        assert_eq!(ids, ["a"], "{backend:?}");

        let stats = server
            .client
            .get_stats(pb::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        let results = stats.cache.unwrap();
        let searches = stats.search_cache.unwrap();
        assert_eq!(results.hits, 2, "{backend:?}");
        assert!(searches.misses >= 2, "{backend:?}");
        let expected = match backend {
            CacheBackend::Memory => "memory",
            CacheBackend::Sqlite => "sqlite",
            _ => "redis",
        };
        assert_eq!(results.backend, expected);
        if backend == CacheBackend::Redis {
            let health = results.health.unwrap();
            assert!(health.reachable && health.failures == 0, "{health:?}");
            assert!(results.entries >= 1);
        }

        let cleared = server
            .client
            .clear_cache(pb::ClearCacheRequest {
                collection: "default".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            cleared.entries_removed >= 2,
            "{backend:?}: results and searches"
        );
        let after = query_result(&mut server.client, question("Where is Kestrel?")).await;
        assert!(!after.cached, "{backend:?}");
    }
}

#[tokio::test]
async fn the_sqlite_cache_survives_a_restart() {
    let cache_dir = tempfile::tempdir().unwrap();
    let path = cache_dir.path().to_path_buf();
    let mut server =
        TestServer::start_with(|config| use_backend(config, CacheBackend::Sqlite, &path)).await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Osprey is in Calgary.", json!({}))],
    )
    .await;
    let first = query_result(&mut server.client, question("Where is Osprey?")).await;
    assert!(!first.cached);
    let data = server.stop_keeping_data().await;

    let mut restarted = TestServer::start_in(data.path(), |config| {
        use_backend(config, CacheBackend::Sqlite, &path)
    })
    .await;
    let again = query_result(&mut restarted.client, question("Where is Osprey?")).await;
    assert!(again.cached, "the entry outlived the process");
    assert_eq!(again.answer, first.answer);
}

#[tokio::test]
async fn different_filters_or_collections_never_share_an_entry() {
    let mut server = TestServer::start().await;
    let documents = vec![
        document("a", "The launch is in March.", json!({"team": "red"})),
        document("b", "The launch is in April.", json!({"team": "blue"})),
    ];
    add(&mut server.client, "", documents.clone()).await;
    add(&mut server.client, "other", documents).await;
    let ask = |team: &str, collection: &str| {
        let mut request = question("When is the launch?");
        request.filters = Some(structure(json!({ "team": team })));
        request.collection = collection.to_string();
        request
    };
    let red = query_result(&mut server.client, ask("red", "")).await;
    let blue = query_result(&mut server.client, ask("blue", "")).await;
    let other = query_result(&mut server.client, ask("red", "other")).await;
    assert!(!red.cached && !blue.cached && !other.cached);
    let ids = |result: &pb::QueryResult| -> Vec<String> {
        result
            .sources
            .iter()
            .map(|source| source.id.clone())
            .collect()
    };
    assert_eq!(ids(&red), ["a"]);
    assert_eq!(ids(&blue), ["b"]);
    assert_eq!(ids(&other), ["a"]);
    assert!(
        query_result(&mut server.client, ask("blue", ""))
            .await
            .cached
    );
}

#[tokio::test]
async fn a_hundred_identical_concurrent_queries_cause_one_run() {
    // The model holds its answer until every query has been sent.
    let mock = MockLlmServer::start(MockScript::replies(vec![MockReply::held(MockReply::text(
        "Tampere.",
    ))]))
    .await
    .unwrap();
    let mut server = TestServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock-model".into();
        config.llm.base_url = mock.base_url();
        config.llm.api_key = Secret::new("k");
    })
    .await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    let streams = (0..100).map(|_| {
        let mut client = server.client.clone();
        async move {
            client
                .query(question("Where is Kestrel?"))
                .await
                .expect("query accepted")
                .into_inner()
        }
    });
    let streams = futures::future::join_all(streams).await;
    mock.release_held();
    let results = tokio::time::timeout(
        HANG,
        futures::future::join_all(streams.into_iter().map(stream_result)),
    )
    .await
    .expect("every query ended");
    assert_eq!(mock.request_count(), 1, "one model call for 100 queries");
    assert!(results.iter().all(|result| result.answer == "Tampere."));
    let shared = results.iter().filter(|result| result.coalesced).count();
    let cached = results.iter().filter(|result| result.cached).count();
    assert_eq!(shared + cached, 99);
    assert!(shared > 0);
}

#[tokio::test]
async fn replicas_share_the_redis_cache() {
    let redis = RedisServer::start();
    let mut first = TestServer::start_with(|config| use_redis(config, &redis)).await;
    let mut second = TestServer::start_with(|config| use_redis(config, &redis)).await;
    // Replicas over the same content: each store holds the same documents at the same version.
    for server in [&mut first, &mut second] {
        add(
            &mut server.client,
            "",
            vec![document("a", "Vellum is in Lyon.", json!({}))],
        )
        .await;
    }
    let answered = query_result(&mut first.client, question("Where is Vellum?")).await;
    assert!(!answered.cached);
    // Written on the side, after the answer: wait for the write.
    until_results_cached(&mut first, 1).await;
    let shared = query_result(&mut second.client, question("Where is Vellum?")).await;
    assert!(
        shared.cached,
        "the second replica found the first one's answer in Redis"
    );
    assert_eq!(shared.answer, answered.answer);
}

#[tokio::test]
async fn a_redis_killed_mid_test_only_turns_the_cache_off() {
    let mut redis = RedisServer::start();
    let mut server = TestServer::start_with(|config| use_redis(config, &redis)).await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Corvid is in Porto.", json!({}))],
    )
    .await;
    assert!(
        !query_result(&mut server.client, question("Where is Corvid?"))
            .await
            .cached
    );
    until_results_cached(&mut server, 1).await;
    assert!(
        query_result(&mut server.client, question("Where is Corvid?"))
            .await
            .cached
    );

    redis.kill();
    for _ in 0..3 {
        let result = tokio::time::timeout(
            HANG,
            query_result(&mut server.client, question("Where is Corvid?")),
        )
        .await
        .expect("a dead Redis does not stall queries");
        assert!(!result.cached && result.answer.contains("Porto"));
    }
    let stats = server
        .client
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let health = stats.cache.unwrap().health.unwrap();
    assert!(!health.reachable);
    assert!(health.failures >= 3, "{health:?}");
}
