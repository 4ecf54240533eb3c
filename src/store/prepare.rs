//! What every store does to documents and queries before its own I/O: ids resolved, duplicates
//! dropped, texts embedded and embeddings put in canonical form; and the constants of the
//! fused ranking, so that both stores rank alike.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{NewDocument, StoreError};
use crate::embed::{EmbedError, Embedder, Embedding};

/// Texts per embedder call, which bounds the size of a request to a remote embedder.
const EMBED_BATCH: usize = 256;
/// The usual constant of reciprocal rank fusion (Cormack et al., 2009), kept for lexical
/// embedders (the hashing one), whose vector ranking is word overlap in another form.
pub(crate) const RRF_K: f64 = 60.0;
/// The fusion of a dense (semantic) embedder's ranking with BM25. With k = 60 the score of a
/// rank barely falls with it, so a passage both rankings list anywhere beats one that only
/// the vectors put first; a dense embedder lists every passage, and on questions worded
/// otherwise than their answers BM25's list is mostly wrong, so the hybrid fell to recall@5
/// 0.50 where the vectors alone reached 0.92 (`bench retrieval` on examples/paraphrases.jsonl,
/// BENCHMARKS.md). With k = 10 and the vectors weighing 3, BM25's first place is worth about
/// what separates the vectors' first and seventh places: it reorders near neighbours and
/// breaks ties, and cannot lift a passage the vectors rank far down: 0.90 there, and 0.90 on
/// questions.json, where BM25 is strong, as the vectors alone.
const DENSE_RRF_K: f64 = 10.0;
const DENSE_VECTOR_WEIGHT: f64 = 3.0;

/// How a store fuses its two rankings: each passage scores the sum, over the rankings that
/// list it, of weight / (k + rank), the vector ranking's weight `vector_weight`, BM25's 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    /// The rank offset k.
    pub k: f64,
    /// The vector ranking's weight against BM25's 1.
    pub vector_weight: f64,
}

impl Fusion {
    /// The fusion for `embedder`'s vectors, with the settings that are set taking over.
    pub fn for_embedder(
        embedder: &dyn Embedder,
        rrf_k: Option<f64>,
        vector_weight: Option<f64>,
    ) -> Fusion {
        let (k, weight) = if embedder.dense() {
            (DENSE_RRF_K, DENSE_VECTOR_WEIGHT)
        } else {
            (RRF_K, 1.0)
        };
        // The server refuses other values at start; a library caller's fall back.
        let usable = |value: f64| value.is_finite() && value >= 0.0;
        Fusion {
            k: rrf_k.filter(|value| usable(*value)).unwrap_or(k),
            vector_weight: vector_weight
                .filter(|value| usable(*value))
                .unwrap_or(weight),
        }
    }

    /// Names the fusion in search cache keys.
    pub(crate) fn id(&self) -> String {
        format!("rrf:k={}:vector_weight={}", self.k, self.vector_weight)
    }

    /// The score a passage gets from `rank` (0 first) in the vector ranking or in BM25's.
    pub(crate) fn score(&self, by_vector: bool, rank: usize) -> f64 {
        let weight = if by_vector { self.vector_weight } else { 1.0 };
        weight / (self.k + rank as f64 + 1.0)
    }
}
const MIN_CANDIDATES: usize = 30;
const CANDIDATES_PER_HIT: usize = 3;

/// Returns how many candidates each ranking contributes to the fusion for `top_k` hits.
pub(crate) fn candidates_for(top_k: usize) -> usize {
    top_k.saturating_mul(CANDIDATES_PER_HIT).max(MIN_CANDIDATES)
}

/// A document ready to be written: id resolved, embedded, metadata serialised.
pub(crate) struct PreparedDocument {
    pub(crate) doc_id: String,
    pub(crate) content: String,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) metadata_json: String,
    pub(crate) embedding: Embedding,
}

/// Resolves ids (an empty or missing id gets a UUID), keeps the last document of each id, and
/// embeds the survivors. Returns the ids in input order, with repeats, and the documents to
/// write.
pub(crate) async fn prepare_documents(
    embedder: &dyn Embedder,
    documents: Vec<NewDocument>,
) -> Result<(Vec<String>, Vec<PreparedDocument>), StoreError> {
    // An empty id is what proto3 sends for "no id"; treating it as one would store a
    // document nobody can address.
    let ids: Vec<String> = documents
        .iter()
        .map(|document| match &document.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => Uuid::new_v4().to_string(),
        })
        .collect();
    // Within one call the last document with an id wins, so only the winners are written.
    let mut winner: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (position, id) in ids.iter().enumerate() {
        winner.insert(id, position);
    }
    let mut prepared = Vec::with_capacity(winner.len());
    for (position, document) in documents.into_iter().enumerate() {
        let id = &ids[position];
        if winner.get(id.as_str()) != Some(&position) {
            continue;
        }
        let metadata_json = serde_json::to_string(&document.metadata)
            .map_err(|err| StoreError::Corrupt(format!("unserialisable metadata: {err}")))?;
        prepared.push(PreparedDocument {
            doc_id: id.clone(),
            content: document.content,
            metadata: document.metadata,
            metadata_json,
            embedding: Embedding::default(),
        });
    }
    drop(winner);

    let contents: Vec<String> = prepared
        .iter()
        .map(|document| document.content.clone())
        .collect();
    let embeddings = embed_all(embedder, &contents).await?;
    drop(contents);
    for (document, embedding) in prepared.iter_mut().zip(embeddings) {
        document.embedding = embedding;
    }
    Ok((ids, prepared))
}

/// Embeds one search text.
pub(crate) async fn embed_query(
    embedder: &dyn Embedder,
    query: String,
) -> Result<Embedding, StoreError> {
    Ok(embed_all(embedder, &[query])
        .await?
        .pop()
        .unwrap_or_default())
}

/// Embeds texts in batches, checking that the embedder kept its contract.
pub(crate) async fn embed_all(
    embedder: &dyn Embedder,
    texts: &[String],
) -> Result<Vec<Embedding>, StoreError> {
    let mut embeddings = Vec::with_capacity(texts.len());
    for batch in texts.chunks(EMBED_BATCH) {
        let batch_embeddings = embedder.embed(batch).await?;
        if batch_embeddings.len() != batch.len() {
            return Err(EmbedError::BadResponse(format!(
                "{} embeddings for {} texts",
                batch_embeddings.len(),
                batch.len()
            ))
            .into());
        }
        embeddings.extend(batch_embeddings.into_iter().map(sanitize));
    }
    Ok(embeddings)
}

/// Puts an embedding in the form the index and the stored format expect: matching lengths,
/// ascending unique indices, finite non-zero values. A non-finite value would turn every
/// score it touches into NaN and hide the document from every search.
pub(crate) fn sanitize(embedding: Embedding) -> Embedding {
    let Embedding { indices, values } = embedding;
    let well_formed = indices.len() == values.len()
        && indices.windows(2).all(|pair| pair[0] < pair[1])
        && values
            .iter()
            .all(|value| value.is_finite() && *value != 0.0);
    if well_formed {
        return Embedding { indices, values };
    }
    let mut pairs: Vec<(u32, f32)> = indices
        .into_iter()
        .zip(values)
        .filter(|(_, value)| value.is_finite())
        .collect();
    pairs.sort_by_key(|(index, _)| *index);
    let mut clean = Embedding::default();
    for (index, value) in pairs {
        match (clean.indices.last(), clean.values.last_mut()) {
            (Some(last), Some(sum)) if *last == index => *sum += value,
            _ => {
                clean.indices.push(index);
                clean.values.push(value);
            }
        }
    }
    let (indices, values) = clean
        .indices
        .into_iter()
        .zip(clean.values)
        .filter(|(_, value)| *value != 0.0)
        .unzip();
    Embedding { indices, values }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashingEmbedder;

    #[derive(Debug)]
    struct Dense;

    #[async_trait::async_trait]
    impl Embedder for Dense {
        fn id(&self) -> String {
            "dense".into()
        }
        fn dimension(&self) -> usize {
            4
        }
        fn dense(&self) -> bool {
            true
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
            Ok(vec![Embedding::default(); texts.len()])
        }
    }

    #[test]
    fn fusion_follows_the_embedder_unless_set_and_ignores_unusable_settings() {
        let lexical = Fusion::for_embedder(&HashingEmbedder::default(), None, None);
        assert_eq!((lexical.k, lexical.vector_weight), (60.0, 1.0));
        assert_eq!(lexical.score(true, 0), 1.0 / 61.0);
        assert_eq!(lexical.score(false, 2), 1.0 / 63.0);
        let dense = Fusion::for_embedder(&Dense, None, None);
        assert_eq!((dense.k, dense.vector_weight), (10.0, 3.0));
        assert_eq!(dense.score(true, 0), 3.0 / 11.0);
        assert_eq!(dense.score(false, 0), 1.0 / 11.0);
        let set = Fusion::for_embedder(&Dense, Some(0.0), Some(0.5));
        assert_eq!((set.k, set.vector_weight), (0.0, 0.5));
        let unusable = Fusion::for_embedder(&Dense, Some(f64::NAN), Some(-1.0));
        assert_eq!(unusable, dense);
        assert_eq!(dense.id(), "rrf:k=10:vector_weight=3");
    }

    #[test]
    fn sanitize_sorts_merges_and_drops_bad_values() {
        let messy = Embedding {
            indices: vec![5, 1, 5, 3, 9],
            values: vec![0.5, 0.25, 0.5, f32::NAN, 0.0],
        };
        assert_eq!(
            sanitize(messy),
            Embedding {
                indices: vec![1, 5],
                values: vec![0.25, 1.0]
            }
        );
    }

    /// Each input breaks exactly one rule of a well-formed embedding, so none of them may take
    /// the path that returns a well-formed embedding untouched.
    #[test]
    fn sanitize_mends_each_broken_rule_alone() {
        let embedding = |indices: Vec<u32>, values: Vec<f32>| Embedding { indices, values };
        let cases = [
            (
                embedding(vec![1, 2, 3], vec![0.5, 0.25]),
                embedding(vec![1, 2], vec![0.5, 0.25]),
            ),
            (
                embedding(vec![4, 4], vec![0.5, 0.25]),
                embedding(vec![4], vec![0.75]),
            ),
            (
                embedding(vec![3, 1], vec![0.5, 0.25]),
                embedding(vec![1, 3], vec![0.25, 0.5]),
            ),
            (
                embedding(vec![1, 2], vec![0.5, 0.0]),
                embedding(vec![1], vec![0.5]),
            ),
            (
                embedding(vec![1, 2], vec![0.0, 0.0]),
                embedding(vec![], vec![]),
            ),
            (
                embedding(vec![1, 2], vec![f32::INFINITY, 0.5]),
                embedding(vec![2], vec![0.5]),
            ),
        ];
        for (broken, mended) in cases {
            assert_eq!(sanitize(broken.clone()), mended, "{broken:?}");
        }
        let well_formed = embedding(vec![1, 7], vec![0.6, -0.8]);
        assert_eq!(sanitize(well_formed.clone()), well_formed);
    }
}
