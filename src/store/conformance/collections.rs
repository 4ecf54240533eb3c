//! Cases of the collections API: reading documents back, listing, deleting a collection, names.

use super::*;

pub(crate) async fn deleting_a_collection_removes_it_with_its_documents(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    store
        .add_documents("kept", vec![doc("toulouse", "Toulouse again")])
        .await
        .unwrap();
    let before = store.collection("docs").await.unwrap().unwrap();
    let deleted = store.delete_collection("docs").await.unwrap();
    assert_eq!(deleted, Some(before.clone()));
    assert_eq!(store.collection("docs").await.unwrap(), None);
    assert!(matches!(
        store.search(request("docs", "toulouse", 3)).await,
        Err(StoreError::CollectionNotFound(_))
    ));
    assert_eq!(store.delete_collection("docs").await.unwrap(), None);
    let names: Vec<String> = store
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, vec!["kept"]);
    assert_eq!(
        search_ids(store, request("kept", "toulouse", 3)).await,
        vec!["toulouse"]
    );

    // Created again, it starts empty, and nothing of the old one comes back.
    let again = store
        .add_documents("docs", vec![doc("fresh", "a fresh start")])
        .await
        .unwrap();
    assert_eq!(again.collection.document_count, 1);
    assert_eq!(
        search_ids(store, request("docs", "northwind toulouse soup fresh", 10)).await,
        vec!["fresh"]
    );
}

pub(crate) async fn documents_are_read_back_by_id_in_the_order_asked(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let ids = |list: &[&str]| list.iter().map(|id| id.to_string()).collect::<Vec<_>>();
    let documents = store
        .get_documents("docs", ids(&["soup", "missing", "northwind", "soup"]))
        .await
        .unwrap();
    let read: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(read, vec!["soup", "northwind"]);
    assert!(documents[0].content.starts_with("The onion soup"));
    assert_eq!(documents[1].metadata, metadata(json!({"kind": "company"})));
    assert!(
        store
            .get_documents("docs", Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.get_documents("missing", ids(&["soup"])).await,
        Err(StoreError::CollectionNotFound(_))
    ));
}

pub(crate) async fn documents_are_listed_in_pages_by_id(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let mut documents: Vec<NewDocument> = (0..25)
        .map(|n| doc_with(&format!("id-{n:02}"), &format!("text {n}"), json!({"n": n})))
        .collect();
    // Byte order: upper case before lower case, whatever the database's collation says.
    documents.push(doc("Zulu", "upper"));
    documents.push(doc("alpha", "lower"));
    store.add_documents("docs", documents).await.unwrap();
    store
        .add_documents("other", vec![doc("id-99", "elsewhere")])
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_documents("docs", after.clone(), 10)
            .await
            .unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.id.clone());
        listed.extend(page);
    }
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    let mut expected: Vec<String> = (0..25).map(|n| format!("id-{n:02}")).collect();
    expected.insert(0, "alpha".into());
    expected.insert(0, "Zulu".into());
    assert_eq!(ids, expected);
    assert_eq!(listed[2].content, "text 0");
    assert_eq!(listed[2].metadata, metadata(json!({"n": 0})));
    assert!(matches!(
        store.list_documents("missing", None, 10).await,
        Err(StoreError::CollectionNotFound(_))
    ));
}

pub(crate) async fn unknown_collections_are_errors(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    assert!(matches!(
        store.search(request("missing", "toulouse", 3)).await,
        Err(StoreError::CollectionNotFound(name)) if name == "missing"
    ));
    assert!(matches!(
        store.delete_documents("missing", vec!["a".into()]).await,
        Err(StoreError::CollectionNotFound(_))
    ));
    assert_eq!(store.collection("missing").await.unwrap(), None);
}

pub(crate) async fn invalid_collection_names_are_rejected(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    for name in ["", "has space", "semi;colon", &"x".repeat(65)] {
        assert!(matches!(
            store.add_documents(name, corpus()).await,
            Err(StoreError::InvalidCollectionName(_))
        ));
        assert!(matches!(
            store.search(request(name, "a", 1)).await,
            Err(StoreError::InvalidCollectionName(_))
        ));
    }
    assert!(store.collections().await.unwrap().is_empty());
}

pub(crate) async fn collections_are_listed_by_name_and_searched_separately(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store
        .add_documents("zeta", vec![doc("z", "shared words here")])
        .await
        .unwrap();
    store
        .add_documents("alpha", vec![doc("a1", "shared words"), doc("a2", "more")])
        .await
        .unwrap();
    let names: Vec<(String, u64)> = store
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|info| (info.name, info.document_count))
        .collect();
    assert_eq!(names, vec![("alpha".into(), 2), ("zeta".into(), 1)]);
    assert_eq!(
        search_ids(store, request("zeta", "shared words", 5)).await,
        vec!["z"]
    );
    assert_eq!(
        search_ids(store, request("alpha", "shared words", 5)).await,
        vec!["a1"]
    );
}

/// What search caches key on: a store names the embedder it was opened with and the fusion of
/// its two rankings, which differs for dense vectors.
pub(crate) async fn a_store_names_its_embedder_and_its_ranking(open: impl Open) {
    let dense: Arc<dyn Embedder> = Arc::new(Dense(HashingEmbedder::new(256)));
    for embedder in [hashing(), dense] {
        let subject = open.open(Arc::clone(&embedder)).await;
        assert_eq!(subject.store.embedder_id(), embedder.id());
        assert_eq!(
            subject.store.ranking_id(),
            crate::store::Fusion::for_embedder(embedder.as_ref(), None, None).id()
        );
    }
}
