//! Collections and documents as API: ListCollections, GetDocuments and DeleteCollection over
//! gRPC, on the embedded store and on PostgreSQL, with their scopes.

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::config::{Config, StoreBackend};
use deeprecall::secret::Secret;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{TestServer, add, document, query_events, question};
use crate::pg_harness;

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|id| id.to_string()).collect()
}

async fn names(client: &mut DeepRecallClient<Channel>) -> Vec<(String, u64)> {
    client
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("list collections")
        .into_inner()
        .collections
        .into_iter()
        .map(|collection| (collection.name, collection.document_count))
        .collect()
}

async fn exercise(client: &mut DeepRecallClient<Channel>) {
    add(
        client,
        "atlas",
        vec![
            document("a1", "Atlas moved to Oulu.", json!({"n": 1})),
            document("a2", "Atlas is a project.", json!({"n": 2})),
        ],
    )
    .await;
    add(
        client,
        "",
        vec![document("d1", "A default fact.", json!({}))],
    )
    .await;
    assert_eq!(
        names(client).await,
        vec![("atlas".to_string(), 2), ("default".to_string(), 1)]
    );

    let read = client
        .get_documents(pb::GetDocumentsRequest {
            collection: "atlas".into(),
            ids: ids(&["a2", "nope", "a1", "a2", "nope"]),
        })
        .await
        .expect("get documents")
        .into_inner();
    let found: Vec<&str> = read.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(found, vec!["a2", "a1"]);
    assert_eq!(read.documents[1].content, "Atlas moved to Oulu.");
    assert_eq!(read.missing_ids, vec!["nope"]);
    let metadata =
        deeprecall::api::convert::struct_to_json(read.documents[0].metadata.clone(), "metadata")
            .expect("metadata");
    assert_eq!(metadata.get("n").and_then(|n| n.as_f64()), Some(2.0));

    let deleted = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: "atlas".into(),
        })
        .await
        .expect("delete collection")
        .into_inner();
    assert_eq!(deleted.deleted_documents, 2);
    assert_eq!(names(client).await, vec![("default".to_string(), 1)]);

    let mut gone = question("Where is Atlas?");
    gone.collection = "atlas".into();
    let status = client.query(gone).await.expect_err("no such collection");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let again = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: "atlas".into(),
        })
        .await
        .expect_err("already gone");
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    let unnamed = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: String::new(),
        })
        .await
        .expect_err("a name is required");
    assert_eq!(unnamed.code(), Code::InvalidArgument, "{unnamed:?}");
    let no_ids = client
        .get_documents(pb::GetDocumentsRequest {
            collection: String::new(),
            ids: Vec::new(),
        })
        .await
        .expect_err("ids are required");
    assert_eq!(no_ids.code(), Code::InvalidArgument, "{no_ids:?}");

    // Created again, it holds only what is written after.
    add(
        client,
        "atlas",
        vec![document("a3", "Atlas returns.", json!({}))],
    )
    .await;
    let mut asked = question("Where is Atlas?");
    asked.collection = "atlas".into();
    let events = query_events(client, asked).await;
    let Some(pb::query_event::Event::Result(result)) =
        events.last().and_then(|event| event.event.clone())
    else {
        panic!("no result");
    };
    assert!(!result.cached);
    let sources: Vec<&str> = result.sources.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(sources, vec!["a3"]);
}

#[tokio::test]
async fn collections_are_listed_read_and_deleted_on_the_embedded_store() {
    let mut server = TestServer::start().await;
    exercise(&mut server.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_listed_read_and_deleted_on_postgres() {
    let postgres = pg_harness::shared();
    let url = postgres.url(&postgres.create_database().await);
    let mut server = TestServer::start_with(|config| {
        config.store.backend = StoreBackend::Postgres;
        config.store.database_url = Secret::new(url);
        config.store.sslmode = deeprecall::config::SslMode::Disable;
        config.store.pool_size = 4;
    })
    .await;
    exercise(&mut server.client).await;
}

const READER: &str = "reader-key-0000000001";
const WRITER: &str = "writer-key-0000000002";

fn with_keys(config: &mut Config) {
    let key = |name: &str, secret: &str, scope: Scope| KeyEntry {
        name: name.into(),
        key: Secret::new(secret),
        sha256: None,
        subject: None,
        scopes: vec![scope],
        collections: Some(vec!["default".to_string()]),
        requests_per_minute: None,
        burst: None,
    };
    config.auth.keys = vec![
        key("reader", READER, Scope::Query),
        key("writer", WRITER, Scope::Write),
    ];
}

fn keyed<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", secret.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn reading_collections_needs_query_and_deleting_one_needs_write() {
    let mut server = TestServer::start_with(with_keys).await;
    let client = &mut server.client;
    client
        .add_documents(keyed(
            pb::AddDocumentsRequest {
                collection: String::new(),
                documents: vec![document("d1", "A fact.", json!({}))],
            },
            WRITER,
        ))
        .await
        .expect("the writer writes");

    let listed = client
        .list_collections(keyed(pb::ListCollectionsRequest {}, READER))
        .await
        .expect("the reader lists");
    assert_eq!(listed.into_inner().collections.len(), 1);
    client
        .get_documents(keyed(
            pb::GetDocumentsRequest {
                collection: String::new(),
                ids: ids(&["d1"]),
            },
            READER,
        ))
        .await
        .expect("the reader reads");
    let refused = client
        .delete_collection(keyed(
            pb::DeleteCollectionRequest {
                collection: "default".into(),
            },
            READER,
        ))
        .await
        .expect_err("reading is not writing");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = client
        .list_collections(keyed(pb::ListCollectionsRequest {}, WRITER))
        .await
        .expect_err("writing is not reading");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let outside = client
        .delete_collection(keyed(
            pb::DeleteCollectionRequest {
                collection: "other".into(),
            },
            WRITER,
        ))
        .await
        .expect_err("a collection outside the key's list");
    assert_eq!(outside.code(), Code::PermissionDenied, "{outside:?}");
    client
        .delete_collection(keyed(
            pb::DeleteCollectionRequest {
                collection: "default".into(),
            },
            WRITER,
        ))
        .await
        .expect("the writer deletes");
}
