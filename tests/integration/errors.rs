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

/// What a client command reports when it cannot talk to `endpoint`: the error of connecting,
/// or else of its first call.
async fn client_failure(endpoint: &str) -> String {
    match deeprecall::cli::connect(endpoint, None).await {
        Err(error) => error.to_string(),
        Ok(mut client) => match client.get_stats(pb::GetStatsRequest {}).await {
            Err(status) => deeprecall::cli::CliError::from(status).to_string(),
            Ok(_) => panic!("{endpoint} answered"),
        },
    }
}

/// A TCP server on 127.0.0.1 that answers every connection with `reply`.
async fn answering_with(reply: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(reply).await;
                // Open until the client hangs up, so that it reads the reply before anything.
                while matches!(socket.read(&mut request).await, Ok(read) if read > 0) {}
            });
        }
    });
    address.to_string()
}

#[tokio::test]
async fn client_commands_take_host_and_port_and_say_why_a_connection_fails() {
    let server = TestServer::start().await;
    let host_port = server.endpoint.trim_start_matches("http://").to_string();
    let mut client = deeprecall::cli::connect(&host_port, None)
        .await
        .expect("host:port is a plaintext server");
    client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("a call through host:port");

    // Nothing listens on port 1 (a privileged port no test binds).
    let message = client_failure("127.0.0.1:1").await;
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains("deeprecall serve"), "{message}");

    // TLS asked of a plaintext server.
    let message = client_failure(&format!("https://{host_port}")).await;
    assert!(message.contains("TLS"), "{message}");
    assert!(message.contains("http://"), "{message}");

    // An HTTP/1.1 server, and a TLS server asked for plaintext (its alert is not HTTP/2).
    for reply in [
        &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..],
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46][..],
    ] {
        let message = client_failure(&answering_with(reply).await).await;
        assert!(message.contains("gRPC server over HTTP/2"), "{message}");
    }
}

#[tokio::test]
async fn every_budget_limit_at_zero_is_an_invalid_argument_naming_it() {
    let mut server = TestServer::start().await;
    add(
        &mut server.client,
        "",
        vec![document("a", "Something.", json!({}))],
    )
    .await;
    let zero = pb::Budget::default;
    for (budget, field) in [
        (
            pb::Budget {
                max_iterations: Some(0),
                ..zero()
            },
            "budget.max_iterations",
        ),
        (
            pb::Budget {
                max_search_calls: Some(0),
                ..zero()
            },
            "budget.max_search_calls",
        ),
        (
            pb::Budget {
                max_tokens: Some(0),
                ..zero()
            },
            "budget.max_tokens",
        ),
        (
            pb::Budget {
                max_time_seconds: Some(0.0),
                ..zero()
            },
            "budget.max_time_seconds",
        ),
        (
            pb::Budget {
                max_cost_usd: Some(0.0),
                ..zero()
            },
            "budget.max_cost_usd",
        ),
    ] {
        let mut request = question("ok?");
        request.budget = Some(budget);
        assert_invalid(&query_status(&mut server, request).await, field);
    }
    // The smallest values that are not zero run.
    let mut request = question("Something?");
    request.budget = Some(pb::Budget {
        max_iterations: Some(1),
        max_search_calls: Some(1),
        ..zero()
    });
    query_result(&mut server.client, request).await;
}
