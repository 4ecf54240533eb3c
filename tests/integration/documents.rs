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
