//! Cases of searching: both rankings, their fusion, and filters of every operator.

use super::*;

pub(crate) async fn terms_the_fts_tokenizer_drops_do_not_break_search(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    // Characters a full-text tokenizer drops or folds leave the query's other words working.
    for query in ["\u{345} garonne", "garonne \u{2167}", "ǅ garonne"] {
        let hits = search_ids(store, request("docs", query, 3)).await;
        assert_eq!(
            hits.first().map(String::as_str),
            Some("toulouse"),
            "{query:?}"
        );
    }
    for query in ["\u{345}", "\u{2167}", "ǅ"] {
        let hits = store.search(request("docs", query, 3)).await;
        assert!(hits.is_ok(), "{query:?}: {hits:?}");
    }
}

pub(crate) async fn added_documents_are_found_by_keyword_and_by_similarity(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let outcome = store.add_documents("docs", corpus()).await.unwrap();
    assert_eq!(outcome.ids, vec!["northwind", "toulouse", "soup"]);
    assert_eq!(
        outcome.collection,
        CollectionInfo {
            name: "docs".into(),
            document_count: 3,
            version: 1
        }
    );

    let hits = store
        .search(request("docs", "Where is Northwind headquartered?", 2))
        .await
        .unwrap();
    assert_eq!(hits[0].id, "northwind");
    assert_eq!(hits[0].metadata, metadata(json!({"kind": "company"})));
    assert!(hits[0].content.contains("Zephyr X"));
    assert!(hits.len() <= 2);
    assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));

    // Misspelt words share no keyword but many character n-grams.
    let hits = search_ids(store, request("docs", "onoin suop recipes", 1)).await;
    assert_eq!(hits, vec!["soup"]);
}

pub(crate) async fn filter_applies_before_the_top_k_cut(open: impl Open) {
    // With no vectors at all, only the keyword side can find documents.
    for embedder in [
        Arc::new(HashingEmbedder::default()) as Arc<dyn Embedder>,
        Arc::new(Dense(HashingEmbedder::new(256))),
        Arc::new(ScriptedEmbedder(HashMap::new())),
    ] {
        let subject = open.open(embedder).await;
        let store = subject.store.as_ref();
        let mut documents: Vec<NewDocument> = (0..50)
            .map(|n| {
                doc_with(
                    &format!("common-{n:02}"),
                    &format!("Zephyr zephyr zephyr flight report {n}"),
                    json!({"team": "common"}),
                )
            })
            .collect();
        documents.push(doc_with(
            "rare",
            "A long unrelated memo about budgets, hiring, offices, parking, lunches and \
             travel policy, which mentions the zephyr once near the end.",
            json!({"team": "rare"}),
        ));
        store.add_documents("docs", documents).await.unwrap();

        let unfiltered = search_ids(store, request("docs", "zephyr", 3)).await;
        assert_eq!(unfiltered.len(), 3);
        assert!(!unfiltered.contains(&"rare".to_string()));

        let mut filtered = request("docs", "zephyr", 3);
        filtered.filter = Filter::from_json(&metadata(json!({"team": "rare"}))).unwrap();
        assert_eq!(search_ids(store, filtered).await, vec!["rare"]);

        let mut none = request("docs", "zephyr", 3);
        none.filter = Filter::from_json(&metadata(json!({"team": "nobody"}))).unwrap();
        assert!(store.search(none).await.unwrap().is_empty());
    }
}

pub(crate) async fn dense_vectors_rank_filter_and_forget_like_sparse_ones(open: impl Open) {
    let subject = open.open(Arc::new(Dense(HashingEmbedder::new(256)))).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    // Misspelt: no keyword matches, so the vector side alone finds it.
    let hits = search_ids(store, request("docs", "onoin suop recipes", 1)).await;
    assert_eq!(hits, vec!["soup"]);
    let mut cities = request("docs", "Northwind Toulouse", 3);
    cities.filter = Filter::from_json(&metadata(json!({"kind": "city"}))).unwrap();
    assert_eq!(search_ids(store, cities).await, vec!["toulouse"]);

    // Enough writes and deletes to renumber the index's rows: the survivors keep their vectors.
    let cities = [
        "Lisbon",
        "Oslo",
        "Nairobi",
        "Quito",
        "Hanoi",
        "Tbilisi",
        "Reykjavik",
        "Dakar",
        "Montevideo",
        "Yerevan",
        "Kampala",
        "Tallinn",
        "Windhoek",
        "Asuncion",
        "Bishkek",
        "Valletta",
        "Maputo",
        "Thimphu",
        "Ljubljana",
        "Paramaribo",
    ];
    let filler: Vec<NewDocument> = (0..120usize)
        .map(|n| {
            let text = match n.checked_sub(100) {
                Some(city) => format!("Shipment manifest bound for {}", cities[city]),
                None => format!("Filler note {n} on logistics"),
            };
            doc(&format!("filler-{n:03}"), &text)
        })
        .collect();
    store.add_documents("docs", filler).await.unwrap();
    let gone: Vec<String> = (0..100).map(|n| format!("filler-{n:03}")).collect();
    store.delete_documents("docs", gone).await.unwrap();
    store
        .delete_documents("docs", vec!["northwind".into()])
        .await
        .unwrap();
    let hits = search_ids(store, request("docs", "onoin suop recipes", 1)).await;
    assert_eq!(hits, vec!["soup"]);
    let hits = search_ids(store, request("docs", "Northwnd Aerospce Zephyr", 5)).await;
    assert!(!hits.contains(&"northwind".to_string()), "{hits:?}");
    // Misspelt again, so that only the vectors, in their renumbered rows, can tell them apart.
    let hits = search_ids(store, request("docs", "Shipmnt manifst Nairobbi", 1)).await;
    assert_eq!(hits, vec!["filler-102"]);
    let hits = search_ids(store, request("docs", "Shipmnt manifst Paramarib", 1)).await;
    assert_eq!(hits, vec!["filler-119"]);
}

pub(crate) async fn keyword_only_and_vector_only_hits_both_appear(open: impl Open) {
    let query = "quarterly revenue";
    let mut vectors = HashMap::new();
    vectors.insert(query.to_string(), axis(1));
    // Shares the query's vector but none of its words.
    vectors.insert("sales went up in the third period".to_string(), axis(1));
    // Shares the query's words but points elsewhere.
    vectors.insert("revenue tables, quarterly".to_string(), axis(2));
    vectors.insert("unrelated filler".to_string(), axis(3));
    let subject = open.open(Arc::new(ScriptedEmbedder(vectors))).await;
    let store = subject.store.as_ref();
    store
        .add_documents(
            "docs",
            vec![
                doc("semantic", "sales went up in the third period"),
                doc("keyword", "revenue tables, quarterly"),
                doc("filler", "unrelated filler"),
            ],
        )
        .await
        .unwrap();
    let hits = store.search(request("docs", query, 5)).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
    // Equal fused scores: one first place each, ordered by id.
    assert_eq!(ids, vec!["keyword", "semantic"]);
    assert_eq!(hits[0].score, hits[1].score);
    assert!((hits[0].score - 1.0 / 61.0).abs() < 1e-12);
}

pub(crate) async fn a_dense_embedders_ranking_outweighs_keyword_overlap(open: impl Open) {
    let unit = |along: f32, across: u32| {
        let norm = (along * along + 1.0).sqrt();
        Embedding {
            indices: vec![0, across],
            values: vec![along / norm, 1.0 / norm],
        }
    };
    let query = "amber lantern";
    let mut vectors = HashMap::new();
    vectors.insert(query.to_string(), axis(0));
    // The vectors' first choice, sharing no word with the query.
    vectors.insert("quiet harbor evening".to_string(), axis(0));
    let mut documents = vec![doc("target", "quiet harbor evening")];
    // Eight passages the vectors rank next, from cosine 0.95 down to 0.6.
    for n in 1..=8u32 {
        let text = format!("filler note {n}");
        let cosine = 0.95 - 0.05 * (n - 1) as f32;
        vectors.insert(
            text.clone(),
            unit(cosine / (1.0 - cosine * cosine).sqrt(), 1),
        );
        documents.push(doc(&format!("filler-{n}"), &text));
    }
    // The only keyword match, tenth by vector (cosine 0.29).
    vectors.insert("amber lantern catalogue".to_string(), unit(0.3, 2));
    documents.push(doc("decoy", "amber lantern catalogue"));
    let subject = open.open(Arc::new(Dense(ScriptedEmbedder(vectors)))).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", documents).await.unwrap();

    let hits = store.search(request("docs", query, 4)).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
    // Weight 3 and k 10: the target 3/11, the first filler 3/12, the decoy 3/20 + 1/11, the
    // second filler 3/13. Fused as a lexical embedder's (1/61 against 1/70 + 1/61), the
    // keyword match would come first.
    assert_eq!(ids, vec!["target", "filler-1", "decoy", "filler-2"]);
    assert!((hits[0].score - 3.0 / 11.0).abs() < 1e-9, "{hits:?}");
    assert!(
        (hits[2].score - (3.0 / 20.0 + 1.0 / 11.0)).abs() < 1e-9,
        "{hits:?}"
    );
}

pub(crate) async fn queries_without_content_terms_skip_keyword_search(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    assert!(
        store
            .search(request("docs", "", 3))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search(request("docs", "the of and", 3))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search(request("docs", "toulouse", 0))
            .await
            .unwrap()
            .is_empty()
    );
    // FTS5 syntax in the query is only text.
    let hits = store
        .search(request("docs", "\"toulouse\" OR NEAR(x y) * ^ col:\"", 3))
        .await
        .unwrap();
    assert!(!hits.is_empty());
}

pub(crate) async fn every_filter_operator_admits_what_the_filter_matches(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let metadata_of = [
        json!({"team": "platform", "year": 2020, "tag": ["a", "b"], "live": true}),
        json!({"team": "search", "year": 2023.5, "tag": "c", "owner": null}),
        json!({"team": "platform", "year": "2021", "tag": ["c", "d"]}),
        json!({"year": 2024, "score": 9_007_199_254_740_993_u64}),
        json!({"team": "Platform", "year": -1, "day": "2024-02-01"}),
        json!({"team": "ops", "day": "2024-01-01", "score": 1.5, "live": false}),
        json!({}),
    ];
    let documents: Vec<NewDocument> = metadata_of
        .iter()
        .enumerate()
        .map(|(n, meta)| doc_with(&format!("d{n}"), &format!("ledger entry {n}"), meta.clone()))
        .collect();
    let all: Vec<(String, Map<String, Value>)> = documents
        .iter()
        .map(|document| {
            (
                document.id.clone().unwrap_or_default(),
                document.metadata.clone(),
            )
        })
        .collect();
    store.add_documents("docs", documents).await.unwrap();
    let filters = [
        json!({"team": "platform"}),
        json!({"team": {"$eq": "platform"}}),
        json!({"team": {"$ne": "platform"}}),
        json!({"team": {"$in": ["search", "ops", 3]}}),
        json!({"team": {"$in": []}}),
        json!({"tag": "a"}),
        json!({"tag": {"$ne": "c"}}),
        json!({"tag": {"$in": ["d", "x"]}}),
        json!({"year": {"$gte": 2020, "$lt": 2024}}),
        json!({"year": {"$gt": 2020}}),
        json!({"year": {"$lte": 2020}}),
        json!({"year": 2020.0}),
        json!({"year": {"$gt": "2020"}}),
        json!({"day": {"$gt": "2024-01-01"}}),
        json!({"day": {"$lte": "2024-01-01"}}),
        json!({"team": {"$gt": "Z"}}),
        json!({"owner": null}),
        json!({"owner": {"$ne": null}}),
        json!({"live": true}),
        json!({"live": {"$ne": true}}),
        json!({"score": 9_007_199_254_740_993_u64}),
        json!({"score": 9_007_199_254_740_992_u64}),
        json!({"score": {"$gt": 1}}),
        json!({"$and": [{"team": "platform"}, {"year": {"$lt": 2021}}]}),
        json!({"missing": {"$ne": 1}}),
        json!({"missing": 1}),
        // Four conditions at once.
        json!({"team": {"$ne": "x"}, "year": {"$gte": 0, "$lt": 3000}, "tag": {"$ne": "zz"}}),
    ];
    for filter_json in filters {
        let filter = Filter::from_json(&metadata(filter_json.clone())).unwrap();
        let mut expected: Vec<String> = all
            .iter()
            .filter(|(_, meta)| filter.matches(meta))
            .map(|(id, _)| id.clone())
            .collect();
        expected.sort();
        let mut search = request("docs", "ledger entry", 50);
        search.filter = filter;
        let mut found = search_ids(store, search).await;
        found.sort();
        assert_eq!(found, expected, "filter {filter_json}");
    }
}

pub(crate) async fn filter_values_are_data_whatever_they_hold(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let hostile = "x'); DROP TABLE documents; --";
    store
        .add_documents(
            "docs",
            vec![
                doc_with("plain", "quarterly ledger", json!({"team": "ops"})),
                doc_with(
                    "odd",
                    "quarterly ledger",
                    json!({"team": hostile, hostile: 1}),
                ),
            ],
        )
        .await
        .unwrap();
    for filter_json in [
        json!({"team": hostile}),
        json!({"team": {"$in": [hostile, "' OR 1=1 --"]}}),
        json!({hostile: {"$gte": 1}}),
    ] {
        let mut search = request("docs", "quarterly ledger", 5);
        search.filter = Filter::from_json(&metadata(filter_json.clone())).unwrap();
        assert_eq!(
            search_ids(store, search).await,
            vec!["odd"],
            "{filter_json}"
        );
    }
    let mut search = request("docs", "quarterly ledger", 5);
    search.filter = Filter::from_json(&metadata(json!({"team": "' OR '1'='1"}))).unwrap();
    assert!(search_ids(store, search).await.is_empty());
    // The search text is data too, for SQL and for full-text syntax alike.
    let hits = search_ids(
        store,
        request("docs", "ledger'; DROP TABLE documents; -- & | !", 5),
    )
    .await;
    assert_eq!(hits.len(), 2);
    assert_eq!(
        store
            .collection("docs")
            .await
            .unwrap()
            .unwrap()
            .document_count,
        2
    );
}
