//! Cases of writing: ids, replacing, deleting, versions, concurrent writers.

use super::*;

pub(crate) async fn missing_ids_are_generated(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let documents = vec![
        NewDocument {
            id: None,
            content: "first".into(),
            metadata: Map::new(),
        },
        NewDocument {
            id: Some(String::new()),
            content: "second".into(),
            metadata: Map::new(),
        },
    ];
    let outcome = store.add_documents("docs", documents).await.unwrap();
    assert_eq!(outcome.ids.len(), 2);
    assert_ne!(outcome.ids[0], outcome.ids[1]);
    for id in &outcome.ids {
        assert!(Uuid::parse_str(id).is_ok(), "{id}");
    }
    assert_eq!(outcome.collection.document_count, 2);
    let hits = search_ids(store, request("docs", "second", 1)).await;
    assert_eq!(hits, vec![outcome.ids[1].clone()]);
}

pub(crate) async fn re_adding_an_id_replaces_the_document(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let outcome = store
        .add_documents(
            "docs",
            vec![doc_with(
                "soup",
                "Gazpacho is served cold.",
                json!({"kind": "cold"}),
            )],
        )
        .await
        .unwrap();
    assert_eq!(outcome.collection.document_count, 3);

    let hits = store.search(request("docs", "gazpacho", 3)).await.unwrap();
    assert_eq!(hits[0].id, "soup");
    assert_eq!(hits[0].content, "Gazpacho is served cold.");
    assert_eq!(hits[0].metadata, metadata(json!({"kind": "cold"})));
    let hits = search_ids(store, request("docs", "onion butter simmer", 3)).await;
    assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

    let mut old_filter = request("docs", "soup", 3);
    old_filter.filter = Filter::from_json(&metadata(json!({"kind": "recipe"}))).unwrap();
    assert!(store.search(old_filter).await.unwrap().is_empty());
}

pub(crate) async fn duplicate_ids_in_one_call_keep_the_last_document(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let outcome = store
        .add_documents(
            "docs",
            vec![
                doc("a", "apples are red"),
                doc("b", "bananas are yellow"),
                doc("a", "avocados are green"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome.ids, vec!["a", "b", "a"]);
    assert_eq!(outcome.collection.document_count, 2);
    let hits = store.search(request("docs", "avocados", 5)).await.unwrap();
    assert_eq!(hits[0].id, "a");
    assert_eq!(hits[0].content, "avocados are green");
    let hits = store
        .search(request("docs", "apples red", 5))
        .await
        .unwrap();
    assert!(
        hits.iter().all(|hit| !hit.content.contains("apples")),
        "{hits:?}"
    );
}

pub(crate) async fn delete_removes_documents_and_reports_the_ids_that_existed(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let outcome = store
        .delete_documents("docs", vec!["soup".into(), "nope".into(), "soup".into()])
        .await
        .unwrap();
    assert_eq!(outcome.ids, vec!["soup"]);
    assert_eq!(outcome.collection.document_count, 2);
    let hits = search_ids(store, request("docs", "onion soup recipe", 5)).await;
    assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

    // The id is free again.
    store
        .add_documents("docs", vec![doc("soup", "Miso soup")])
        .await
        .unwrap();
    let hits = search_ids(store, request("docs", "miso", 1)).await;
    assert_eq!(hits, vec!["soup"]);
}

pub(crate) async fn version_changes_on_every_write_that_changes_content(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let version = |outcome: WriteOutcome| outcome.collection.version;
    let first = version(store.add_documents("docs", corpus()).await.unwrap());
    assert!(first >= 1);
    let second = version(
        store
            .add_documents("docs", vec![doc("x", "x")])
            .await
            .unwrap(),
    );
    assert!(second > first);
    let third = version(
        store
            .delete_documents("docs", vec!["x".into()])
            .await
            .unwrap(),
    );
    assert!(third > second);
    // Nothing deleted, nothing changed: caches keyed on the version stay valid.
    let unchanged = version(
        store
            .delete_documents("docs", vec!["x".into()])
            .await
            .unwrap(),
    );
    assert_eq!(unchanged, third);
    assert_eq!(
        version(store.delete_documents("docs", vec![]).await.unwrap()),
        third
    );
    let other = store.add_documents("other", corpus()).await.unwrap();
    assert!(other.collection.version >= 1);
    assert_eq!(
        store.collection("docs").await.unwrap().unwrap().version,
        third,
        "a write to another collection leaves this one's version"
    );
}

/// Under concurrent writers every write is counted, gets a version of its own, and the
/// collection ends at the newest version: a version committed later is never lower than one
/// committed before it, which is what lets a cached result keyed on a version never be
/// served after a write.
pub(crate) async fn concurrent_writes_and_searches_stay_consistent(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = Arc::clone(&subject.store);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for n in 0..10 {
                let id = format!("w{writer}-{n}");
                let written = store
                    .add_documents("docs", vec![doc(&id, &format!("report {writer} {n}"))])
                    .await
                    .unwrap();
                versions.push(written.collection.version);
                store.search(request("docs", "report", 5)).await.unwrap();
            }
            versions
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for task in tasks {
        let written = task.await.unwrap();
        // One writer's versions rise with its writes.
        assert!(
            written.windows(2).all(|pair| pair[0] < pair[1]),
            "{written:?}"
        );
        versions.extend(written);
    }
    assert_eq!(versions.len(), 40, "a version per write: {versions:?}");
    let info = store.collection("docs").await.unwrap().unwrap();
    assert_eq!(info.document_count, 40);
    assert_eq!(Some(&info.version), versions.last());
}
