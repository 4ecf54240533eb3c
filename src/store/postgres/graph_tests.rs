//! Tests of the PostgreSQL store's vector graph: the backlog searched exactly until the
//! indexer moves it into the graph, the indexer itself, and what searches ask of the graph.

use std::sync::Arc;

use super::tests::{fresh_database, settings};
use super::*;
use crate::embed::{Embedding, HashingEmbedder};
use crate::store::conformance::{corpus, hashing, request, search_ids};

/// Bounds a wait for something the code guarantees will happen; reached only on a hang.
const HANG: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until `done` holds, for at most [`HANG`].
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub(super) async fn count(store: &PostgresStore, sql: &str) -> i64 {
    store
        .pool
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

async fn ungraphed(store: &PostgresStore) -> i64 {
    count(
        store,
        "SELECT count(*) FROM deeprecall_documents WHERE folded IS NULL",
    )
    .await
}

pub(super) async fn drain(store: &PostgresStore) -> u64 {
    let mut moved = 0;
    loop {
        match store.graph_batch(7).await.unwrap() {
            0 => return moved,
            batch => moved += batch,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_searched_exactly_until_their_vectors_enter_the_graph() {
    let url = fresh_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    let watch = BacklogWatch::new(&settings(url)).unwrap();
    let documents = corpus();
    let written = documents.len() as i64;
    store.add_documents("docs", documents).await.unwrap();
    assert_eq!(backlog::pending(&store.pool).await.unwrap(), written);
    assert_eq!(watch.pending().await.unwrap(), written);
    assert_eq!(ungraphed(&store).await, written);

    // A misspelling shares no keyword: only the vector ranking can find it.
    let misspelt = request("docs", "Northwnd Aerospce", 1);
    assert_eq!(
        search_ids(&store, misspelt.clone()).await,
        vec!["northwind"]
    );

    assert_eq!(drain(&store).await, written as u64);
    assert_eq!(backlog::pending(&store.pool).await.unwrap(), 0);
    assert_eq!(watch.pending().await.unwrap(), 0);
    assert_eq!(ungraphed(&store).await, 0);
    assert_eq!(search_ids(&store, misspelt).await, vec!["northwind"]);

    // A replaced document leaves the graph's ranking for the backlog's, with its new vector.
    store
        .add_documents(
            "docs",
            vec![crate::store::conformance::doc(
                "northwind",
                "Quillfeather Balloons sells hot air balloons",
            )],
        )
        .await
        .unwrap();
    assert_eq!(backlog::pending(&store.pool).await.unwrap(), 1);
    let balloon = request("docs", "Quillfeathr Baloons", 1);
    assert_eq!(search_ids(&store, balloon.clone()).await, vec!["northwind"]);
    assert_eq!(drain(&store).await, 1);
    assert_eq!(search_ids(&store, balloon).await, vec!["northwind"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_index_writes_fill_in_their_graph_vectors_at_once() {
    let url = fresh_database().await;
    let graphed = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    graphed.add_documents("docs", corpus()).await.unwrap();
    let mut config = settings(url);
    config.vector_index = crate::config::VectorIndex::Exact;
    let exact = PostgresStore::connect(&config, hashing()).await.unwrap();
    let replaced = crate::store::conformance::doc("northwind", "a zeppelin hangar");
    exact.add_documents("docs", vec![replaced]).await.unwrap();
    exact
        .add_documents(
            "docs",
            vec![crate::store::conformance::doc("late", "zeppelin")],
        )
        .await
        .unwrap();
    // The replaced document no longer waits for an indexer; the new one never did.
    assert_eq!(
        backlog::pending(&exact.pool).await.unwrap(),
        corpus().len() as i64 - 1
    );
    assert_eq!(
        count(
            &exact,
            "SELECT count(*) FROM deeprecall_documents \
             WHERE doc_id IN ('northwind', 'late') AND folded IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_store_moves_its_writes_into_the_graph_by_itself() {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&settings(url), hashing())
        .await
        .unwrap();
    let documents: Vec<NewDocument> = (0..600)
        .map(|n| crate::store::conformance::doc(&format!("d{n}"), &format!("note {n} on item{n}")))
        .collect();
    store.add_documents("docs", documents).await.unwrap();
    eventually("the backlog never drained", || async {
        ungraphed(&store).await == 0
    })
    .await;
    assert_eq!(backlog::pending(&store.pool).await.unwrap(), 0);
}

/// Indexers on two replicas and a writer replacing the same documents, all at once: every
/// vector moves exactly once, nobody deadlocks or fails, and each document ends in the graph
/// with the vector of its last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexers_share_the_backlog_with_each_other_and_with_writers() {
    let url = fresh_database().await;
    let replicas: Vec<PostgresStore> = futures::future::join_all((0..2).map(|_| {
        let config = settings(url.clone());
        async move { PostgresStore::connect_without_indexer(&config, hashing()).await }
    }))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let version = |round: usize| -> Vec<NewDocument> {
        (0..300)
            .map(|n| {
                crate::store::conformance::doc(
                    &format!("d{n}"),
                    &format!("round{round} entry{n} text{}", n * round),
                )
            })
            .collect()
    };
    replicas[0].add_documents("docs", version(0)).await.unwrap();
    let writer = {
        let store = replicas[1].clone();
        tokio::spawn(async move {
            for round in 1..=5 {
                store.add_documents("docs", version(round)).await.unwrap();
            }
        })
    };
    let indexers = replicas.iter().map(|store| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut moved = 0;
            for _ in 0..200 {
                moved += store.graph_batch(25).await.unwrap();
            }
            moved
        })
    });
    let moved: Vec<u64> = futures::future::join_all(indexers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    writer.await.unwrap();
    let left = drain(&replicas[0]).await;
    assert!(moved.iter().sum::<u64>() + left >= 300, "{moved:?} {left}");
    assert_eq!(ungraphed(&replicas[0]).await, 0);
    assert_eq!(backlog::pending(&replicas[0].pool).await.unwrap(), 0);

    // Every stored folded vector is the one of the document's last version.
    let client = replicas[0].pool.get().await.unwrap();
    let embedder = HashingEmbedder::default();
    for document in version(5) {
        let id = document.id.clone().unwrap();
        let expected = embedder.embed(&[document.content]).await.unwrap().remove(0);
        let similarity: f64 = client
            .query_one(
                "SELECT -(folded <#> $2::text::halfvec)::float8 FROM deeprecall_documents \
                 WHERE doc_id = $1",
                &[
                    &id,
                    &sql::folded_text(&expected, replicas[0].graph_dimension),
                ],
            )
            .await
            .unwrap()
            .get(0);
        assert!(similarity > 0.99, "{id}: {similarity}");
    }
}

/// A database whose graph vectors have another dimension (folded by another build) gets its
/// index for this build's dimension at start, and its rows folded again by the indexers, while
/// searches keep finding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_vectors_of_another_dimension_are_folded_again() {
    let url = fresh_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    store.add_documents("docs", corpus()).await.unwrap();
    drain(&store).await;
    let client = store.pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "DROP INDEX deeprecall_documents_folded_{dimension};
             UPDATE deeprecall_documents SET folded = '[0.6,0.8,0,0]';
             CREATE INDEX deeprecall_documents_folded_4 ON deeprecall_documents
                 USING hnsw ((folded::halfvec(4)) halfvec_ip_ops) WHERE vector_dims(folded) = 4;",
            dimension = store.graph_dimension
        ))
        .await
        .unwrap();
    drop(client);

    let reopened = PostgresStore::connect_without_indexer(&settings(url), hashing())
        .await
        .unwrap();
    let written = corpus().len() as i64;
    assert_eq!(backlog::pending(&reopened.pool).await.unwrap(), written);
    let indexes: Vec<String> = reopened
        .pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT indexname FROM pg_indexes \
             WHERE indexname LIKE 'deeprecall_documents_folded%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        indexes,
        vec![format!(
            "deeprecall_documents_folded_{}",
            reopened.graph_dimension
        )]
    );
    let misspelt = request("docs", "Northwnd Aerospce", 1);
    assert_eq!(
        search_ids(&reopened, misspelt.clone()).await,
        vec!["northwind"]
    );
    assert_eq!(drain(&reopened).await, written as u64);
    assert_eq!(search_ids(&reopened, misspelt).await, vec!["northwind"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_matches_are_ranked_by_vector_whatever_the_folded_graph_proposes() {
    let url = fresh_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(url), hashing())
        .await
        .unwrap();
    let mut documents: Vec<NewDocument> = (0..400)
        .map(|n| crate::store::conformance::doc(&format!("filler-{n}"), &format!("filler {n}")))
        .collect();
    documents.push(crate::store::conformance::doc(
        "hangar",
        "The zeppelin hangar stands in Friedrichshafen",
    ));
    documents.push(crate::store::conformance::doc(
        "rides",
        "Zeppelin rides leave at noon, weather permitting",
    ));
    store.add_documents("docs", documents).await.unwrap();
    drain(&store).await;

    // The worst graph folding can give: every filler exactly where the query points, the
    // documents that share its words exactly opposite, so that no proposal of the graph
    // is one of them.
    let query = "zeppelin hangar";
    let embedding = HashingEmbedder::default().embed_text(query);
    let towards = folded_text(&embedding, store.graph_dimension);
    let away = folded_text(
        &Embedding {
            values: embedding.values.iter().map(|value| -value).collect(),
            ..embedding.clone()
        },
        store.graph_dimension,
    );
    let client = store.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE deeprecall_documents SET folded = CASE WHEN doc_id LIKE 'filler-%' \
             THEN $1::text::halfvec ELSE $2::text::halfvec END",
            &[&towards, &away],
        )
        .await
        .unwrap();
    assert_eq!(ungraphed(&store).await, 0);

    // The two documents that share the query's words; past them, fillers tie on hash
    // collisions, and which of them the graph proposes is arbitrary.
    let exact = store.ranking_exactly();
    let through_the_graph = store.search(request("docs", query, 2)).await.unwrap();
    assert_eq!(
        through_the_graph,
        exact.search(request("docs", query, 2)).await.unwrap()
    );
    assert_eq!(through_the_graph[0].id, "hangar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_up_to_a_page_keep_their_vectors_out_of_the_toast_table() {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&settings(url), hashing())
        .await
        .unwrap();
    // Sixty distinct words: a few hundred hashed features, a row of about 4 kB, which
    // PostgreSQL's default target of 2 kB would cut up.
    let content: String = (0..60).map(|n| format!("wordnumber{n} ")).collect();
    store
        .add_documents(
            "docs",
            vec![crate::store::conformance::doc("long", &content)],
        )
        .await
        .unwrap();
    let row_bytes = count(
        &store,
        "SELECT pg_column_size(d.*)::bigint FROM deeprecall_documents d",
    )
    .await;
    assert!(row_bytes > 2_100, "the row is {row_bytes} bytes");
    let toasted = count(
        &store,
        "SELECT pg_relation_size(reltoastrelid) FROM pg_class \
         WHERE relname = 'deeprecall_documents'",
    )
    .await;
    assert_eq!(toasted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_keep_the_configured_or_the_graphs_own_ef_search() {
    async fn session_ef_search(config: StoreConfig, embedder: Arc<dyn Embedder>) -> String {
        let store = PostgresStore::connect_without_indexer(&config, embedder)
            .await
            .unwrap();
        let client = store.pool.get().await.unwrap();
        client
            .query_one("SELECT current_setting('hnsw.ef_search')", &[])
            .await
            .unwrap()
            .get(0)
    }
    let url = fresh_database().await;
    assert_eq!(
        session_ef_search(settings(url.clone()), hashing()).await,
        HNSW_EF_SEARCH_FOLDED.to_string()
    );
    let configured = StoreConfig {
        hnsw_ef_search: Some(77),
        ..settings(url)
    };
    assert_eq!(session_ef_search(configured, hashing()).await, "77");
    let dense: Arc<dyn Embedder> =
        Arc::new(crate::store::conformance::Dense(HashingEmbedder::new(64)));
    assert_eq!(
        session_ef_search(settings(fresh_database().await), dense).await,
        HNSW_EF_SEARCH_DENSE.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_scan_iteratively_as_configured_and_send_nothing_when_off() {
    use crate::config::IterativeScan;

    let url = fresh_database().await;
    for (scan, expected) in [
        (IterativeScan::RelaxedOrder, "relaxed_order"),
        (IterativeScan::StrictOrder, "strict_order"),
        // pgvector 0.8's own default: nothing was sent.
        (IterativeScan::Off, "off"),
    ] {
        let config = StoreConfig {
            hnsw_iterative_scan: scan,
            ..settings(url.clone())
        };
        let store = PostgresStore::connect_without_indexer(&config, hashing())
            .await
            .unwrap();
        let client = store.pool.get().await.unwrap();
        // Loads pgvector into the session, which defines its settings.
        client.simple_query("SELECT '[1]'::vector").await.unwrap();
        let (setting, source): (String, String) = {
            let row = client
                .query_one(
                    "SELECT setting, source FROM pg_settings WHERE name = 'hnsw.iterative_scan'",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(setting, expected, "{scan:?}");
        assert_eq!(
            source == "client",
            scan != IterativeScan::Off,
            "{scan:?}: {source}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_wakes_its_replicas_indexer_without_waiting_for_the_poll() {
    let url = fresh_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    // Polling once an hour, on a pool of its own: once the worker has had its first look
    // (a connection opened and given back), only the write's wake can move its rows.
    let indexer_pool = connect::pool(&settings(url), HNSW_EF_SEARCH_FOLDED).unwrap();
    let store = PostgresStore {
        indexer: Some(Arc::new(Indexer::spawn(
            &indexer_pool,
            1,
            store.graph(),
            std::time::Duration::from_secs(3_600),
        ))),
        ..store
    };
    eventually("the indexer never had its first look", || async {
        let status = indexer_pool.status();
        status.size == 1 && status.available == 1
    })
    .await;
    store.add_documents("docs", corpus()).await.unwrap();
    eventually("the write did not wake the indexer", || async {
        ungraphed(&store).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_stops_with_the_last_clone_of_its_store() {
    let url = fresh_database().await;
    let config = StoreConfig {
        database_url: crate::secret::Secret::new(format!(
            "{url}?application_name=indexer-that-stops"
        )),
        ..settings(url.clone())
    };
    let store = PostgresStore::connect(&config, hashing()).await.unwrap();
    store.add_documents("docs", corpus()).await.unwrap();
    let clone = store.clone();
    drop(store);
    eventually("the indexer never drained", || async {
        ungraphed(&clone).await == 0
    })
    .await;
    drop(clone);

    let observer = PostgresStore::connect_without_indexer(&settings(url), hashing())
        .await
        .unwrap();
    eventually(
        "the dropped store's indexer kept its connection",
        || async {
            count(
                &observer,
                "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'indexer-that-stops'",
            )
            .await
                == 0
        },
    )
    .await;
}

/// The graph holds every collection's rows, so a scan of it for a collection holding a small
/// share of them reads many other rows for each of its own: such a collection is ranked
/// exactly instead, by a statement planned for its id, which reads its own rows by the
/// collection's index rather than the whole table; a large one goes through the graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_share_of_the_database_is_ranked_exactly_by_its_own_rows() {
    let url = fresh_database().await;
    let store = PostgresStore::connect_without_indexer(&settings(url), hashing())
        .await
        .unwrap();
    for batch in 0..4 {
        let fillers: Vec<NewDocument> = (0..1_000)
            .map(|n| {
                let n = batch * 1_000 + n;
                crate::store::conformance::doc(&format!("filler-{n}"), &format!("filler {n}"))
            })
            .collect();
        store.add_documents("big", fillers).await.unwrap();
    }
    store.add_documents("small", corpus()).await.unwrap();
    drain(&store).await;
    let client = store.pool.get().await.unwrap();
    client
        .batch_execute("ANALYZE deeprecall_documents")
        .await
        .unwrap();

    // 3 documents of 4,003: 3² <= 4 * 30 * 4,003. 4,000: 4,000² > 4 * 30 * 4,003.
    for (collection, through_the_graph) in [("small", false), ("big", true)] {
        let asked = request(collection, "filler Toulouse river", 10);
        let embedding = HashingEmbedder::default()
            .embed(std::slice::from_ref(&asked.query))
            .await
            .unwrap()
            .remove(0);
        let search = store
            .search_query(&client, asked, &embedding)
            .await
            .unwrap();
        assert_eq!(
            search.folded_query.is_some(),
            through_the_graph,
            "{collection}"
        );
        let explain = format!("EXPLAIN (ANALYZE, COSTS OFF) {}", search.statement);
        let plan: Vec<String> = client
            .query_typed(&explain, &search.typed_parameters())
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let uses_the_graph = plan
            .iter()
            .any(|line| line.contains("deeprecall_documents_folded_"));
        assert_eq!(uses_the_graph, through_the_graph, "{collection}: {plan:#?}");
        if !through_the_graph {
            assert!(
                plan.iter()
                    .all(|line| !line.contains("Seq Scan on deeprecall_documents")),
                "{collection}'s own rows, by its index: {plan:#?}"
            );
        }
        assert!(
            plan.iter().all(|line| !line.contains("Gather")),
            "no parallel workers: {plan:#?}"
        );
    }
    assert_eq!(
        search_ids(&store, request("small", "Garonne river", 1)).await,
        ["toulouse"]
    );
    assert_eq!(
        search_ids(&store, request("big", "filler 17", 1)).await,
        ["filler-17"]
    );
}
