//! `deeprecall export` and `deeprecall import` with the real binary: a collection moved from
//! the embedded store to PostgreSQL and back out, unchanged, and an import resumed.

use std::path::Path;
use std::process::Command;

use deeprecall::api::pb;
use deeprecall::config::{SslMode, StoreBackend};
use deeprecall::secret::Secret;
use serde_json::json;

use crate::common::{TestServer, add, document};
use crate::pg_harness;

/// Runs the binary to the end off the runtime; returns its standard error.
async fn run(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(&args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
    })
    .await
    .expect("the command's thread")
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).expect("the export file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_moves_from_the_embedded_store_to_postgres_and_back_unchanged() {
    let embedded_dir = tempfile::tempdir().expect("directory");
    let mut embedded = TestServer::start_in(embedded_dir.path(), |_| {}).await;
    let documents: Vec<pb::Document> = (0..700)
        .map(|n| {
            document(
                &format!("doc-{n:04}"),
                &format!("Fact number {n} about \"quoted\" things\non two lines."),
                json!({"n": n, "tags": ["a", "b"], "nested": {"deep": n % 3 == 0}}),
            )
        })
        .collect();
    add(&mut embedded.client, "atlas", documents).await;
    let data_dir = tempfile::tempdir().expect("directory");
    let files = tempfile::tempdir().expect("directory");
    let from_embedded = files.path().join("embedded.jsonl");
    // The server keeps running: export only reads.
    let stderr = run(vec![
        "export".into(),
        "--data-dir".into(),
        embedded_dir.path().display().to_string(),
        "--collection".into(),
        "atlas".into(),
        "-o".into(),
        from_embedded.display().to_string(),
    ])
    .await;
    assert!(stderr.contains("exported 700 document(s)"), "{stderr}");
    assert_eq!(text(&from_embedded).lines().count(), 700);

    let postgres = pg_harness::shared();
    let url = postgres.url(&postgres.create_database().await);
    let mut on_postgres = TestServer::start_with(|config| {
        config.store.backend = StoreBackend::Postgres;
        config.store.database_url = Secret::new(url.clone());
        config.store.sslmode = SslMode::Disable;
        config.store.pool_size = 4;
    })
    .await;
    // Half of it first, as if an import had stopped there.
    let half = files.path().join("half.jsonl");
    let exported = text(&from_embedded);
    let first_half: Vec<&str> = exported.lines().take(350).collect();
    std::fs::write(&half, first_half.join("\n")).expect("write");
    let import = |input: &Path| {
        vec![
            "import".to_string(),
            "--server".into(),
            on_postgres.endpoint.clone(),
            "--collection".into(),
            "atlas".into(),
            "--skip-existing".into(),
            "-i".into(),
            input.display().to_string(),
        ]
    };
    run(import(&half)).await;
    let stderr = run(import(&from_embedded)).await;
    assert!(
        stderr.contains("imported 350 document(s), skipped 350"),
        "{stderr}"
    );

    let read = on_postgres
        .client
        .get_documents(pb::GetDocumentsRequest {
            collection: "atlas".into(),
            ids: vec!["doc-0007".into()],
        })
        .await
        .expect("get documents")
        .into_inner();
    assert_eq!(read.documents.len(), 1);
    assert!(
        read.documents[0]
            .content
            .contains("\"quoted\" things\non two lines")
    );

    let from_postgres = files.path().join("postgres.jsonl");
    run(vec![
        "export".into(),
        "--data-dir".into(),
        data_dir.path().display().to_string(),
        "--store".into(),
        "postgres".into(),
        "--database-url".into(),
        url,
        "--collection".into(),
        "atlas".into(),
        "-o".into(),
        from_postgres.display().to_string(),
    ])
    .await;
    assert_eq!(text(&from_postgres), text(&from_embedded));
}
