//! AddDocuments, DeleteDocuments and durability.

use std::time::Duration;

use deeprecall::api::{DeepRecallClient, pb};
use serde_json::json;

use crate::common::*;

async fn collection_stats(server: &mut TestServer, name: &str) -> Option<pb::CollectionStats> {
    server
        .client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .collections
        .into_iter()
        .find(|collection| collection.name == name)
}

#[tokio::test]
async fn documents_get_ids_versions_and_replacements() {
    let mut server = TestServer::start().await;
    let first = add(
        &mut server.client,
        "notes",
        vec![
            document("", "Generated ids are UUIDs.", json!({})),
            document("fixed", "The first version of fixed.", json!({"rev": 1})),
        ],
    )
    .await;
    assert_eq!(first.ids.len(), 2);
    assert_eq!(first.ids[0].len(), 36, "a generated id: {}", first.ids[0]);
    assert_eq!(first.ids[1], "fixed");
    assert_eq!(first.document_count, 2);

    let second = add(
        &mut server.client,
        "notes",
        vec![document(
            "fixed",
            "The second version of fixed.",
            json!({"rev": 2}),
        )],
    )
    .await;
    assert_eq!(second.document_count, 2, "re-adding an id replaces it");
    assert!(second.collection_version > first.collection_version);

    let mut request = question("Which version of fixed?");
    request.collection = "notes".into();
    let result = query_result(&mut server.client, request).await;
    let fixed = result
        .sources
        .iter()
        .find(|s| s.id == "fixed")
        .expect("found");
    assert!(fixed.content.contains("second"));
    let metadata = fixed.metadata.clone().expect("metadata");
    assert_eq!(metadata, structure(json!({"rev": 2})));
}

#[tokio::test]
async fn deleted_documents_are_no_longer_found() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![
            document("keep", "Marlin boats are blue.", json!({})),
            document("drop", "Marlin boats are red.", json!({})),
        ],
    )
    .await;
    let deleted = server
        .client
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: String::new(),
            ids: vec!["drop".into(), "never-existed".into()],
        })
        .await
        .expect("deleted")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.document_count, 1);

    let result = query_result(
        &mut server.client,
        question("What colour are Marlin boats?"),
    )
    .await;
    assert!(result.sources.iter().all(|source| source.id != "drop"));
    assert!(result.sources.iter().any(|source| source.id == "keep"));
}

#[tokio::test]
async fn a_restart_keeps_documents_and_rebuilds_the_index() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "kept",
        vec![document(
            "osprey",
            "Osprey Installers are based in Calgary.",
            json!({"kind": "partner"}),
        )],
    )
    .await;
    let data_dir = server.stop_keeping_data().await;

    let mut restarted = TestServer::start_in(data_dir.path(), |_| {}).await;
    let stats = collection_stats(&mut restarted, "kept")
        .await
        .expect("collection survives");
    assert_eq!(stats.document_count, 1);
    let mut request = question("Where are the installers based?");
    request.collection = "kept".into();
    request.filters = Some(structure(json!({"kind": "partner"})));
    let result = query_result(&mut restarted.client, request).await;
    assert_eq!(
        result.sources.first().map(|s| s.id.as_str()),
        Some("osprey")
    );
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_dash_nine() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, endpoint) = spawn_binary(data_dir.path(), &[]);
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint).await.expect("connects");
    let documents = (0..50)
        .map(|n| {
            document(
                &format!("doc-{n}"),
                &format!("Durable fact number {n}."),
                json!({}),
            )
        })
        .collect();
    let response = add(&mut client, "durable", documents).await;
    assert_eq!(response.document_count, 50);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (mut child, endpoint) = spawn_binary(data_dir.path(), &[]);
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint).await.expect("connects");
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let durable = stats
        .collections
        .iter()
        .find(|collection| collection.name == "durable")
        .expect("collection survives");
    assert_eq!(durable.document_count, 50);
    let mut request = question("Durable fact number 42?");
    request.collection = "durable".into();
    let result = tokio::time::timeout(Duration::from_secs(10), query_result(&mut client, request))
        .await
        .expect("answers");
    assert!(result.sources.iter().any(|source| source.id == "doc-42"));
    child.kill().expect("stopped");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn while_the_store_opens_health_is_not_serving_and_calls_are_unavailable() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let data_dir = tempfile::tempdir().expect("temporary directory");
    let database = data_dir
        .path()
        .join(deeprecall::store::embedded::DATABASE_FILE);
    // Another connection holds the database exclusively, so opening the store waits for it
    // (up to SQLite's busy timeout) and the server stays in its opening state meanwhile.
    let holder = rusqlite::Connection::open(&database).expect("database created");
    holder
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("exclusive lock");
    let mut config = deeprecall::config::Config::default();
    config.store.data_dir = data_dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(deeprecall::server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("the server listens while the store opens");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: deeprecall::server::SERVICE_NAME.to_string(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    let mut client = DeepRecallClient::new(channel);
    let refused = client
        .query(question("Anything yet?"))
        .await
        .expect_err("no query before the store is open");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let refused = client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document("a", "Too early.", json!({}))],
        })
        .await
        .expect_err("no write before the store is open");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    drop(holder);
    wait_until_serving(&endpoint).await;
    add(
        &mut client,
        "",
        vec![document("a", "Kestrel is in Tampere.", json!({}))],
    )
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task does not panic")
        .expect("clean stop");
}
