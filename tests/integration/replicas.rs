//! More than one replica on one PostgreSQL: the real binary, several at once, on the test
//! PostgreSQL the harness starts (`scripts/install-postgres.sh` installs it); and what a
//! replica does when PostgreSQL is away at start or goes away while it serves (its readiness
//! follows the database).

use std::process::Child;
use std::time::Duration;

use deeprecall::api::{DeepRecallClient, pb};
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{
    RedisServer, add, document, query_result, question, spawn_binary_with_env, structure,
    wait_until_serving,
};
use crate::pg_harness::{self, TestPostgres};

/// A `deeprecall serve` process on the postgres store, killed on drop.
struct Replica {
    child: Child,
    endpoint: String,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    /// Starts the binary on `database_url` and returns once it logged its address (its
    /// store may still be opening).
    fn spawn(database_url: &str, extra_args: &[&str]) -> Replica {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let mut args = vec!["--store", "postgres", "--database-url", database_url];
        args.extend_from_slice(extra_args);
        let (child, endpoint) = spawn_binary_with_env(
            data_dir.path(),
            &args,
            &[
                ("DEEPRECALL_STORE__SSLMODE", "disable"),
                ("DEEPRECALL_STORE__POOL_SIZE", "4"),
                // Quick retries keep the test short; the default waits up to 30 s apart.
                ("DEEPRECALL_STORE__CONNECT_RETRY_MAX_SECONDS", "0.5"),
                ("DEEPRECALL_STORE__HEALTH_CHECK_INTERVAL_MS", "200"),
            ],
        );
        Replica {
            child,
            endpoint,
            _data_dir: data_dir,
        }
    }

    /// Starts the binary and waits until it serves.
    async fn serving(database_url: &str, extra_args: &[&str]) -> Replica {
        let replica = Replica::spawn(database_url, extra_args);
        wait_until_serving(&replica.endpoint).await;
        replica
    }

    async fn client(&self) -> DeepRecallClient<Channel> {
        DeepRecallClient::connect(self.endpoint.clone())
            .await
            .expect("client connects")
    }

    async fn service_health(&self) -> i32 {
        self.health_of("deeprecall.v1.DeepRecall").await
    }

    async fn health_of(&self, service: &str) -> i32 {
        let channel = Channel::from_shared(self.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status
    }

    /// Follows the service's health with `Watch` until it reports `status`; the bound only
    /// ends a hang.
    async fn until_service_health(&self, status: ServingStatus) {
        let channel = Channel::from_shared(self.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        let mut updates = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: "deeprecall.v1.DeepRecall".to_string(),
            })
            .await
            .expect("health watch answers")
            .into_inner();
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(update) = updates.message().await.expect("health watch streams") {
                if update.status == status as i32 {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(reached, Ok(true), "service health never became {status:?}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fresh_database() -> String {
    let server = pg_harness::shared();
    server.url(&server.create_database().await)
}

async fn documents_in(client: &mut DeepRecallClient<Channel>, collection: &str) -> Option<u64> {
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    stats
        .collections
        .iter()
        .find(|stats| stats.name == collection)
        .map(|stats| stats.document_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_searched_at_once_and_never_answered_from_cache_on_another() {
    let url = fresh_database().await;
    let redis = RedisServer::start();
    let shared_cache = ["--cache", "redis", "--redis-url", redis.url.as_str()];
    let a = Replica::serving(&url, &shared_cache).await;
    let b = Replica::serving(&url, &shared_cache).await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    add(
        &mut on_a,
        "",
        vec![document("tampere", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    let first = query_result(&mut on_b, question("Where is Kestrel?")).await;
    assert!(!first.cached);
    assert!(first.sources.iter().any(|source| source.id == "tampere"));
    // The cache is shared: A answers B's question from it.
    let again = query_result(&mut on_a, question("Where is Kestrel?")).await;
    assert!(again.cached, "the replicas share the redis cache");

    add(
        &mut on_a,
        "",
        vec![document("oulu", "Kestrel moved to Oulu.", json!({}))],
    )
    .await;
    let after = query_result(&mut on_b, question("Where is Kestrel?")).await;
    assert!(
        !after.cached,
        "an answer cached before A's write is not served by B"
    );
    assert!(
        after.sources.iter().any(|source| source.id == "oulu"),
        "{:?}",
        after.sources
    );
    assert_eq!(documents_in(&mut on_b, "default").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_at_once_on_an_empty_database_migrate_once_and_all_serve() {
    let url = fresh_database().await;
    let replicas = [
        Replica::spawn(&url, &[]),
        Replica::spawn(&url, &[]),
        Replica::spawn(&url, &[]),
    ];
    for replica in &replicas {
        wait_until_serving(&replica.endpoint).await;
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let migrations: Vec<(i64, String)> = client
        .query(
            "SELECT version, name FROM deeprecall_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("migrations table")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        migrations.len() as i64,
        deeprecall::store::postgres::known_version(),
        "{migrations:?}"
    );
    // Each replica writes and reads the one schema.
    for (n, replica) in replicas.iter().enumerate() {
        let mut client = replica.client().await;
        add(
            &mut client,
            "",
            vec![document(&format!("r{n}"), "shared fact", json!({}))],
        )
        .await;
    }
    let mut client = replicas[0].client().await;
    assert_eq!(documents_in(&mut client, "default").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_value_holding_sql_is_only_data() {
    let url = fresh_database().await;
    let replica = Replica::serving(&url, &[]).await;
    let mut client = replica.client().await;
    let hostile = "'; DROP TABLE deeprecall_documents; --";
    add(
        &mut client,
        "",
        vec![
            document("odd", "Kestrel is in Tampere.", json!({"team": hostile})),
            document("plain", "Kestrel is in Oulu.", json!({"team": "blue"})),
        ],
    )
    .await;
    for (filter, expected) in [
        (json!({"team": hostile}), vec!["odd"]),
        (json!({"team": "' OR '1'='1"}), vec![]),
        (
            json!({"team": {"$in": [hostile, "x') OR TRUE --"]}}),
            vec!["odd"],
        ),
    ] {
        let mut request = question("Where is Kestrel?");
        request.filters = Some(structure(filter.clone()));
        let result = query_result(&mut client, request).await;
        let ids: Vec<&str> = result.sources.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, expected, "{filter}");
    }
    assert_eq!(documents_in(&mut client, "default").await, Some(2));
}

/// Moving a shared database to another embedder, as a rollout would: replicas on the new
/// settings refuse the collection until `deeprecall reindex` has re-embedded it beside the
/// old vectors, which replicas on the old settings serve until the swap, and refuse after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_is_reindexed_online_while_replicas_on_both_embedders_serve() {
    let url = fresh_database().await;
    let old = Replica::serving(&url, &[]).await;
    let mut on_old = old.client().await;
    add(
        &mut on_old,
        "",
        vec![
            document("tampere", "Kestrel is in Tampere.", json!({})),
            document("oulu", "Osprey is in Oulu.", json!({})),
        ],
    )
    .await;
    let new = Replica::serving(&url, &["--embedding-dimensions", "256"]).await;
    let mut on_new = new.client().await;
    let refused = on_new
        .query(question("Where is Kestrel?"))
        .await
        .expect_err("another embedder's collection");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    for part in ["hashing-v1:4096", "hashing-v1:256", "deeprecall reindex"] {
        assert!(refused.message().contains(part), "{}", refused.message());
    }
    assert!(
        !query_result(&mut on_old, question("Where is Kestrel?"))
            .await
            .sources
            .is_empty()
    );

    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
                .args(["reindex", "--store", "postgres", "--database-url", &url])
                .args(["--embedding-dimensions", "256", "--collection", "default"])
                .env("DEEPRECALL_STORE__SSLMODE", "disable")
                .output()
                .expect("the binary runs")
        }
    })
    .await
    .expect("the command's thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("2 documents now embedded with hashing-v1:256"),
        "{stdout}"
    );

    let answered = query_result(&mut on_new, question("Where is Kestrel?")).await;
    assert!(
        answered.sources.iter().any(|source| source.id == "tampere"),
        "{:?}",
        answered.sources
    );
    let refused = on_old
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document("late", "Written the old way.", json!({}))],
        })
        .await
        .expect_err("the collection moved to the new embedder");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(documents_in(&mut on_new, "default").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_its_database_waits_not_serving_then_serves() {
    let postgres = TestPostgres::start();
    let database = postgres.create_database().await;
    let url = postgres.url(&database);
    postgres.stop();

    let replica = Replica::spawn(&url, &[]);
    assert_eq!(
        replica.service_health().await,
        ServingStatus::NotServing as i32
    );
    let mut client = replica.client().await;
    let refused = client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document("a", "too early", json!({}))],
        })
        .await
        .expect_err("refused while the store is not open");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Still alive, still trying.
    assert_eq!(
        replica.service_health().await,
        ServingStatus::NotServing as i32
    );

    postgres.restart();
    wait_until_serving(&replica.endpoint).await;
    add(&mut client, "", vec![document("a", "in time", json!({}))]).await;
    assert_eq!(documents_in(&mut client, "default").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_mid_flight_takes_readiness_away_and_loses_nothing_acknowledged() {
    let postgres = TestPostgres::start();
    let database = postgres.create_database().await;
    let url = postgres.url(&database);
    let replica = Replica::serving(&url, &[]).await;
    let mut client = replica.client().await;
    let acknowledged: Vec<pb::Document> = (0..20)
        .map(|n| document(&format!("d{n}"), &format!("fact number {n}"), json!({})))
        .collect();
    add(&mut client, "", acknowledged).await;

    postgres.stop();
    // Readiness follows the database, liveness does not: a restart would not bring it back.
    replica
        .until_service_health(ServingStatus::NotServing)
        .await;
    assert_eq!(replica.health_of("").await, ServingStatus::Serving as i32);
    let error = client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document("lost", "written while down", json!({}))],
        })
        .await
        .expect_err("no database, no write");
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert!(error.message().contains("store"), "{error:?}");
    let error = client
        .query(question("fact number 3"))
        .await
        .expect_err("no database, no query");
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");

    postgres.restart();
    replica.until_service_health(ServingStatus::Serving).await;
    // The pool replaces its dead connections by itself; the bound only ends a hang.
    let recovered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let attempt = client
                .add_documents(pb::AddDocumentsRequest {
                    collection: String::new(),
                    documents: vec![document("after", "written after the restart", json!({}))],
                })
                .await;
            match attempt {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("unexpected {status:?}"),
            }
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the replica recovers once the database is back"
    );
    assert_eq!(documents_in(&mut client, "default").await, Some(21));
    let result = query_result(&mut client, question("fact number 3")).await;
    assert!(result.sources.iter().any(|source| source.id == "d3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_enforce_one_rate_limit_together() {
    let url = fresh_database().await;
    let redis = RedisServer::start();
    let limits = [
        "--rate-limit-store",
        "redis",
        "--redis-url",
        redis.url.as_str(),
        "--rate-limit-per-minute",
        "1",
        "--rate-limit-burst",
        "3",
    ];
    let a = Replica::serving(&url, &limits).await;
    let b = Replica::serving(&url, &limits).await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    // Three calls in all fit the burst, whichever replica takes them.
    for on_a_first in [true, false, true] {
        let client = if on_a_first { &mut on_a } else { &mut on_b };
        client
            .get_stats(pb::GetStatsRequest {})
            .await
            .expect("within the shared burst");
    }
    let refused = on_b
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect_err("the fourth call is over the shared limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_replicas_measures_one_and_two_replicas_beside_the_embedded_store() {
    let mut database = fresh_database().await;
    database.push_str(if database.contains('?') { "&" } else { "?" });
    database.push_str("sslmode=disable");
    let redis = RedisServer::start();
    let redis_url = redis.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(["bench", "replicas", "--database-url", &database])
            .args(["--redis-url", &redis_url])
            .args([
                "--concurrency",
                "2",
                "--samples",
                "4",
                "--mock-latency-ms",
                "1",
            ])
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("the bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("replicas: "))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for (row, topology) in rows.iter().zip([
        "1 on the embedded store",
        "1 on one postgres and one redis",
        "2 on one postgres and one redis",
    ]) {
        assert!(row.starts_with(&format!("replicas: {topology}")), "{row}");
        assert!(
            row.contains("queries/s") && row.contains("the mock allows"),
            "{row}"
        );
    }
}
