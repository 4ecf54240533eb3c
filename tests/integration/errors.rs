//! Bad input gets a clear status naming the field, and nothing is written.

use deeprecall::api::pb;
use serde_json::json;
use tonic::Code;

use crate::common::*;

async fn query_status(server: &mut TestServer, request: pb::QueryRequest) -> tonic::Status {
    match server.client.query(request).await {
        Err(status) => status,
        Ok(_) => panic!("the query was accepted"),
    }
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(field),
        "message {:?} does not name {field}",
        status.message()
    );
}

#[tokio::test]
async fn bad_queries_are_invalid_arguments_naming_the_field() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Something.", json!({}))],
    )
    .await;

    assert_invalid(&query_status(&mut server, question("")).await, "query");
    assert_invalid(
        &query_status(&mut server, question(" \n\t ")).await,
        "query",
    );
    let long = "q".repeat(8 * 1024 + 1);
    let status = query_status(&mut server, question(&long)).await;
    assert_invalid(&status, "query");
    assert!(status.message().contains("8192"), "{}", status.message());

    let mut request = question("ok?");
    request.top_k = 101;
    assert_invalid(&query_status(&mut server, request).await, "top_k");

    for filter in [
        json!({"year": {"$near": 3}}),
        json!({"tags": {"$in": "not-a-list"}}),
        json!({"$or": []}),
        json!({"year": {"$gt": [1]}}),
    ] {
        let mut request = question("ok?");
        request.filters = Some(structure(filter.clone()));
        assert_invalid(&query_status(&mut server, request).await, "filters");
    }

    let mut request = question("ok?");
    request.budget = Some(pb::Budget {
        max_time_seconds: Some(-1.0),
        ..pb::Budget::default()
    });
    assert_invalid(
        &query_status(&mut server, request).await,
        "budget.max_time_seconds",
    );

    let mut request = question("ok?");
    request.collection = "no such collection!".into();
    assert_invalid(&query_status(&mut server, request).await, "collection");

    let mut request = question("ok?");
    request.collection = "absent".into();
    let status = query_status(&mut server, request).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("absent"));
}

#[tokio::test]
async fn bad_documents_reject_the_whole_call_before_anything_is_written() {
    let mut server = TestServer::start().await;
    let add_status = |documents: Vec<pb::Document>| {
        let mut client = server.client.clone();
        async move {
            client
                .add_documents(pb::AddDocumentsRequest {
                    collection: "strict".into(),
                    documents,
                })
                .await
                .expect_err("refused")
        }
    };

    let oversize = "x".repeat(1024 * 1024 + 1);
    let status = add_status(vec![
        document("fine", "A fine document.", json!({})),
        document("huge", &oversize, json!({})),
    ])
    .await;
    assert_invalid(&status, "documents[1].content");

    let status = add_status(vec![
        document("fine", "A fine document.", json!({})),
        document("empty", "  ", json!({})),
    ])
    .await;
    assert_invalid(&status, "documents[1].content");

    let too_many = (0..10_001)
        .map(|n| document(&n.to_string(), "x", json!({})))
        .collect();
    assert_invalid(&add_status(too_many).await, "documents");

    let stats = server
        .client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert!(
        stats
            .collections
            .iter()
            .all(|collection| collection.name != "strict"),
        "nothing was written"
    );

    let status = server
        .client
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: "strict".into(),
            ids: vec!["fine".into()],
        })
        .await
        .expect_err("no such collection");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_batches_are_invalid_arguments() {
    let mut server = TestServer::start().await;
    for (queries, max_concurrency, field) in [
        (vec![question("a")], 65, "max_concurrency"),
        (vec![], 0, "queries"),
        (vec![question("a"); 10_001], 4, "queries"),
    ] {
        let status = server
            .client
            .query_batch(pb::QueryBatchRequest {
                queries,
                max_concurrency,
            })
            .await
            .expect_err("refused");
        assert_invalid(&status, field);
    }
}
