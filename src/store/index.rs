//! In-memory vector index of one collection, rebuilt from SQLite at start.
//!
//! Vectors are L2-normalised, so cosine similarity is a dot product. Sparse vectors (the
//! hashing embedder's) sit in an inverted index, one posting list per dimension, so that a
//! query touches only the documents that share one of its non-zero dimensions; dense vectors
//! (a neural embedder's) sit in contiguous rows scanned in full ([`DenseRows`]). Deletions leave tombstones that are compacted away once they
//! make up a quarter of the slots.
//!
//! Ranking reads dense arrays (scores and slot rowids): with feature hashing nearly every
//! document shares some bucket with a query, so the per-document cost of a search is what
//! counts, and metadata is read only for the candidates a filter has to judge.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde_json::{Map, Value};

use super::Filter;
use super::dense::DenseRows;
use super::hnsw::Graph;
use crate::embed::Embedding;

/// Below this many slots, tombstones cost too little to be worth a compaction pass.
const MIN_SLOTS_TO_COMPACT: usize = 64;

/// Candidates of the quantised ranking scored again exactly, per hit wanted, and at least
/// this many more than the hits.
const DENSE_OVERSAMPLE: usize = 4;
const DENSE_MIN_EXTRA: usize = 32;

/// Live documents from which a dense collection gets an HNSW graph and its searches ask it
/// rather than scanning every row, unless the store says otherwise
/// (`store.hnsw_min_documents`). Measured at 384 dimensions (BENCHMARKS.md): unfiltered, the
/// graph overtakes the scan between 10,000 and 30,000 documents; with a filter admitting 30%,
/// between 30,000 and 100,000. Below this the scan is exact and under about 4 ms, and no
/// graph costs memory or time.
pub(crate) const GRAPH_MIN_DOCUMENTS: usize = 50_000;

/// Source of index generations: a graph built from one generation's rows is installed only in
/// the same generation, which a compaction or a reload ends.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, AtomicOrdering::Relaxed)
}

/// A graph to build away from the index: a copy of the rows it covers.
pub(crate) struct GraphJob {
    rows: DenseRows,
    generation: u64,
}

/// A graph built by a [`GraphJob`], for [`VectorIndex::install_graph`].
pub(crate) struct BuiltGraph {
    graph: Graph,
    generation: u64,
}

impl GraphJob {
    /// Builds the graph over the copied rows: seconds per 10,000 rows, on the caller's thread.
    pub(crate) fn build(self) -> BuiltGraph {
        let mut graph = Graph::new();
        while graph.len() < self.rows.len() {
            graph.insert(&self.rows);
        }
        BuiltGraph {
            graph,
            generation: self.generation,
        }
    }
}

/// Rowid of a deleted slot. SQLite assigns positive rowids, so it never names a document.
const TOMBSTONE: i64 = i64::MIN;

thread_local! {
    /// Score accumulator reused across searches on the same thread, so that a query does not
    /// allocate a buffer the size of the collection.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug, Clone, Copy)]
struct Posting {
    slot: u32,
    value: f32,
}

/// What the index keeps of a document besides its vector.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) rowid: i64,
    pub(crate) doc_id: String,
    pub(crate) metadata: Map<String, Value>,
}

/// How an index keeps its vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Posting lists per dimension, for vectors with few non-zero dimensions.
    #[default]
    Sparse,
    /// One row of `dimension` floats per document, scanned in full below `graph_from` live
    /// documents and searched through an HNSW graph from there.
    Dense {
        /// Width of a row.
        dimension: usize,
        /// Live documents from which searches ask the graph.
        graph_from: usize,
    },
}

/// The vector index of one collection.
#[derive(Debug, Default)]
pub(crate) struct VectorIndex {
    postings: HashMap<u32, Vec<Posting>>,
    /// The vectors, row by slot, when the layout is dense; `postings` stays empty then.
    dense: Option<DenseRows>,
    /// The graph over the dense rows, once the collection has reached `graph_from` documents
    /// and a thread of the store has built it; kept up to date by every write from then on.
    graph: Option<Graph>,
    /// Live documents from which a dense collection gets a graph.
    graph_from: usize,
    /// Set while a graph is being built for this index.
    graph_building: bool,
    /// Ends with each compaction, so that a graph built over the rows before it is dropped.
    generation: u64,
    /// Rowid of each slot, or [`TOMBSTONE`] for a deleted document whose postings remain.
    slot_rowids: Vec<i64>,
    /// The entry of each slot, `None` for a deleted document.
    entries: Vec<Option<Entry>>,
    by_rowid: HashMap<i64, u32>,
    dead: usize,
}

impl VectorIndex {
    /// Returns an empty index keeping its vectors as `layout` says.
    pub(crate) fn with_layout(layout: Layout) -> Self {
        VectorIndex {
            dense: match layout {
                Layout::Sparse => None,
                Layout::Dense { dimension, .. } => Some(DenseRows::new(dimension)),
            },
            generation: next_generation(),
            graph_from: match layout {
                Layout::Sparse => usize::MAX,
                Layout::Dense { graph_from, .. } => graph_from,
            },
            ..VectorIndex::default()
        }
    }

    /// Returns the number of live documents.
    pub(crate) fn len(&self) -> usize {
        self.by_rowid.len()
    }

    /// Returns true once searches go through the graph.
    pub(crate) fn searches_graph(&self) -> bool {
        self.graph.is_some() && self.by_rowid.len() >= self.graph_from
    }

    /// Returns the graph to build when the index has grown to need one and none is built or
    /// being built; the index then counts it as being built until [`Self::install_graph`].
    pub(crate) fn graph_job(&mut self) -> Option<GraphJob> {
        let rows = self.dense.as_ref()?;
        if self.graph.is_some() || self.graph_building || self.by_rowid.len() < self.graph_from {
            return None;
        }
        self.graph_building = true;
        Some(GraphJob {
            rows: rows.clone(),
            generation: self.generation,
        })
    }

    /// Forgets the job [`Self::graph_job`] handed out when it could not run: the next write
    /// hands out another.
    pub(crate) fn install_graph_failed(&mut self) {
        self.graph_building = false;
    }

    /// Installs a graph built by [`GraphJob::build`] and links the rows written since its
    /// copy was taken. Returns false, installing nothing, when a compaction or a reload has
    /// renumbered the rows meanwhile; then [`Self::graph_job`] hands out a new job.
    pub(crate) fn install_graph(&mut self, built: BuiltGraph) -> bool {
        self.graph_building = false;
        let Some(rows) = &self.dense else {
            return false;
        };
        if built.generation != self.generation {
            return false;
        }
        let mut graph = built.graph;
        while graph.len() < rows.len() {
            graph.insert(rows);
        }
        self.graph = Some(graph);
        true
    }

    /// Adds a document, replacing any document already stored under `rowid`.
    pub(crate) fn insert(
        &mut self,
        rowid: i64,
        doc_id: String,
        metadata: Map<String, Value>,
        embedding: &Embedding,
    ) {
        debug_assert_ne!(rowid, TOMBSTONE);
        self.remove(rowid);
        let Ok(slot) = u32::try_from(self.slot_rowids.len()) else {
            // 4 billion slots cannot fit in memory anyway; refusing beats wrapping around.
            tracing::error!(rowid, "vector index is full");
            return;
        };
        match &mut self.dense {
            Some(rows) => {
                rows.push(embedding);
                if let Some(graph) = &mut self.graph {
                    graph.insert(rows);
                }
            }
            None => {
                for (index, value) in embedding.indices.iter().zip(&embedding.values) {
                    if *value != 0.0 {
                        self.postings.entry(*index).or_default().push(Posting {
                            slot,
                            value: *value,
                        });
                    }
                }
            }
        }
        self.slot_rowids.push(rowid);
        self.entries.push(Some(Entry {
            rowid,
            doc_id,
            metadata,
        }));
        self.by_rowid.insert(rowid, slot);
    }

    /// Removes the document stored under `rowid`; returns false if there was none.
    pub(crate) fn remove(&mut self, rowid: i64) -> bool {
        let Some(slot) = self.by_rowid.remove(&rowid) else {
            return false;
        };
        let slot = slot as usize;
        if let (Some(slot_rowid), Some(entry)) =
            (self.slot_rowids.get_mut(slot), self.entries.get_mut(slot))
        {
            *slot_rowid = TOMBSTONE;
            *entry = None;
            self.dead += 1;
        }
        if self.slot_rowids.len() >= MIN_SLOTS_TO_COMPACT && self.dead * 4 > self.slot_rowids.len()
        {
            self.compact();
        }
        true
    }

    /// Returns the document stored under `rowid`.
    pub(crate) fn get(&self, rowid: i64) -> Option<&Entry> {
        let slot = *self.by_rowid.get(&rowid)?;
        self.entries.get(slot as usize)?.as_ref()
    }

    /// Returns true when the document stored under `rowid` exists and matches the filter.
    pub(crate) fn matches(&self, rowid: i64, filter: &Filter) -> bool {
        self.get(rowid)
            .is_some_and(|entry| filter.matches(&entry.metadata))
    }

    /// Returns up to `top_k` `(rowid, similarity)` pairs among the documents that match the
    /// filter, most similar first (ties by rowid). Only documents with a positive similarity are
    /// returned: the others share nothing with the query.
    pub(crate) fn search(
        &self,
        query: &Embedding,
        top_k: usize,
        filter: &Filter,
    ) -> Vec<(i64, f32)> {
        if top_k == 0 || query.indices.is_empty() || self.by_rowid.is_empty() {
            return Vec::new();
        }
        SCORES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scores) => self.search_with(&mut scores, query, top_k, filter),
            // Only reachable through re-entrancy, which the index does not do; stay correct anyway.
            Err(_) => self.search_with(&mut Vec::new(), query, top_k, filter),
        })
    }

    fn search_with(
        &self,
        scores: &mut Vec<f32>,
        query: &Embedding,
        top_k: usize,
        filter: &Filter,
    ) -> Vec<(i64, f32)> {
        scores.clear();
        scores.resize(self.slot_rowids.len(), 0.0);
        if let Some(rows) = &self.dense {
            return self.search_dense(rows, scores, query, top_k, filter);
        }
        for (index, weight) in query.indices.iter().zip(&query.values) {
            let Some(postings) = self.postings.get(index) else {
                continue;
            };
            for posting in postings {
                if let Some(score) = scores.get_mut(posting.slot as usize) {
                    *score += weight * posting.value;
                }
            }
        }

        self.best(scores, top_k, filter)
            .into_iter()
            .map(|candidate| (candidate.rowid, candidate.score))
            .collect()
    }

    /// Ranks by the quantised rows, then scores the best of them again on the exact floats:
    /// quantisation moves a score by about 0.01, so a few times `top_k` candidates hold the
    /// exact best.
    fn search_dense(
        &self,
        rows: &DenseRows,
        scores: &mut [f32],
        query: &Embedding,
        top_k: usize,
        filter: &Filter,
    ) -> Vec<(i64, f32)> {
        let query = rows.spread(query);
        if let Some(graph) = self.graph.as_ref().filter(|_| self.searches_graph()) {
            let accept = |slot: u32| {
                let slot = slot as usize;
                self.entries
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|entry| filter.is_empty() || filter.matches(&entry.metadata))
            };
            if let Some(found) = graph.search(rows, query.values(), top_k, &accept) {
                return found
                    .into_iter()
                    .filter(|(_, similarity)| *similarity > 0.0)
                    .filter_map(|(slot, similarity)| {
                        Some((*self.slot_rowids.get(slot as usize)?, similarity))
                    })
                    .collect();
            }
        }
        rows.approximate_into(&query, scores);
        let shortlist = top_k
            .saturating_mul(DENSE_OVERSAMPLE)
            .max(top_k + DENSE_MIN_EXTRA);
        let mut exact: Vec<Candidate> = self
            .best(scores, shortlist, filter)
            .into_iter()
            .filter_map(|candidate| {
                let slot = *self.by_rowid.get(&candidate.rowid)? as usize;
                Some(Candidate {
                    score: rows.exact(slot, &query),
                    rowid: candidate.rowid,
                })
            })
            .filter(|candidate| candidate.score > 0.0)
            .collect();
        exact.sort_by(|a, b| b.cmp(a));
        exact.truncate(top_k);
        exact
            .into_iter()
            .map(|candidate| (candidate.rowid, candidate.score))
            .collect()
    }

    /// Returns the best `top_k` candidates that match the filter, best first, keeping them in
    /// a min-heap.
    ///
    /// The filter runs only on a candidate that would enter the heap, which gives the same
    /// result as filtering everything first and cutting after. Slots are visited in order, so
    /// the metadata the filter reads is visited in memory order too: judging candidates in rank
    /// order instead would judge fewer of them, but each at the price of several cache misses,
    /// which measured slower.
    fn best(&self, scores: &[f32], top_k: usize, filter: &Filter) -> Vec<Candidate> {
        let capacity = top_k.min(self.by_rowid.len());
        let mut best: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(capacity + 1);
        for (slot, (score, rowid)) in scores.iter().zip(&self.slot_rowids).enumerate() {
            if *score <= 0.0 || *rowid == TOMBSTONE {
                continue;
            }
            let candidate = Candidate {
                score: *score,
                rowid: *rowid,
            };
            if best.len() >= capacity
                && best
                    .peek()
                    .is_some_and(|Reverse(worst)| candidate <= *worst)
            {
                continue;
            }
            if !filter.is_empty() {
                let passes = self
                    .entries
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|entry| filter.matches(&entry.metadata));
                if !passes {
                    continue;
                }
            }
            best.push(Reverse(candidate));
            if best.len() > capacity {
                best.pop();
            }
        }
        // Ascending order of `Reverse` is best first.
        best.into_sorted_vec()
            .into_iter()
            .map(|Reverse(candidate)| candidate)
            .collect()
    }

    /// Renumbers the live slots and drops the postings of dead ones.
    fn compact(&mut self) {
        let mut remap = vec![u32::MAX; self.slot_rowids.len()];
        let mut slot_rowids = Vec::with_capacity(self.by_rowid.len());
        let mut entries = Vec::with_capacity(self.by_rowid.len());
        for (old, entry) in std::mem::take(&mut self.entries).into_iter().enumerate() {
            if let Some(entry) = entry {
                // Fits: there are fewer live slots than old ones, which fit in u32.
                let new = slot_rowids.len() as u32;
                remap[old] = new;
                self.by_rowid.insert(entry.rowid, new);
                slot_rowids.push(entry.rowid);
                entries.push(Some(entry));
            }
        }
        if let Some(rows) = &mut self.dense {
            rows.compact(&remap);
            if let Some(graph) = &mut self.graph {
                graph.compact(&remap, rows);
            }
        }
        self.postings.retain(|_, postings| {
            postings.retain_mut(|posting| {
                let new = remap[posting.slot as usize];
                posting.slot = new;
                new != u32::MAX
            });
            postings.shrink_to_fit();
            !postings.is_empty()
        });
        self.slot_rowids = slot_rowids;
        self.entries = entries;
        self.dead = 0;
        self.generation = next_generation();
        debug_assert_eq!(self.entries.len(), self.by_rowid.len());
    }
}

/// Ordered from worst to best: lower score, then higher rowid.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    rowid: i64,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.rowid.cmp(&self.rowid))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::embed::HashingEmbedder;

    fn metadata(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn unit(pairs: &[(u32, f32)]) -> Embedding {
        let norm = pairs.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        Embedding {
            indices: pairs.iter().map(|(i, _)| *i).collect(),
            values: pairs.iter().map(|(_, v)| v / norm).collect(),
        }
    }

    fn filter(value: Value) -> Filter {
        Filter::from_json(&metadata(value)).unwrap()
    }

    /// A dense vector of `dimension` values pointing mostly along `axis`, a little along the
    /// next one by `tilt`.
    fn leaning(axis: u32, tilt: f32, dimension: u32) -> Embedding {
        let norm = (1.0 + tilt * tilt).sqrt();
        unit(&[
            (axis % dimension, 1.0 / norm),
            ((axis + 1) % dimension, tilt / norm),
        ])
    }

    #[test]
    fn a_graph_is_built_away_from_the_index_and_catches_up_on_install() {
        let layout = Layout::Dense {
            dimension: 16,
            graph_from: 40,
        };
        let mut index = VectorIndex::with_layout(layout);
        let add = |index: &mut VectorIndex, n: i64| {
            let group = json!({"group": n % 2});
            let embedding = leaning(n as u32, (n as f32) / 100.0, 16);
            index.insert(n + 1, format!("doc-{n}"), metadata(group), &embedding);
        };
        for n in 0..39 {
            add(&mut index, n);
        }
        assert!(index.graph_job().is_none(), "not due below graph_from");
        add(&mut index, 39);
        let job = index.graph_job().expect("due at graph_from");
        assert!(index.graph_job().is_none(), "one build at a time");
        // Written while the graph is built: linked on install.
        for n in 40..60 {
            add(&mut index, n);
        }
        assert!(!index.searches_graph());
        assert!(index.install_graph(job.build()));
        assert!(index.searches_graph());
        assert_eq!(index.graph.as_ref().map(Graph::len), Some(60));
        let query = leaning(57, 0.57, 16);
        let hits = index.search(&query, 1, &Filter::default());
        assert_eq!(hits[0].0, 58, "a row written during the build is found");
        let odd = index.search(&query, 3, &filter(json!({"group": 1})));
        assert_eq!(odd.len(), 3);
        assert!(odd.iter().all(|(rowid, _)| (rowid - 1) % 2 == 1), "{odd:?}");
        assert!(index.graph_job().is_none(), "built once");

        // A compaction during a build renumbers the rows: that graph is refused, and the next
        // job builds over the new rows.
        let mut index = VectorIndex::with_layout(layout);
        for n in 0..100 {
            add(&mut index, n);
        }
        let job = index.graph_job().expect("due");
        for n in 0..30 {
            index.remove(n + 1);
        }
        assert!(!index.install_graph(job.build()));
        assert!(!index.searches_graph());
        let job = index.graph_job().expect("due again after the refusal");
        assert!(index.install_graph(job.build()));
        let hits = index.search(&leaning(77, 0.77, 16), 1, &Filter::default());
        assert_eq!(hits[0].0, 78);

        // A job that could not run is forgotten.
        let mut index = VectorIndex::with_layout(layout);
        for n in 0..40 {
            add(&mut index, n);
        }
        assert!(index.graph_job().is_some());
        index.install_graph_failed();
        assert!(index.graph_job().is_some());
        // Sparse layouts never get one.
        let mut sparse = VectorIndex::with_layout(Layout::Sparse);
        sparse.insert(1, "a".into(), Map::new(), &unit(&[(1, 1.0)]));
        assert!(sparse.graph_job().is_none());
    }

    #[test]
    fn search_ranks_by_cosine_and_skips_unrelated_documents() {
        let mut index = VectorIndex::default();
        index.insert(1, "a".into(), Map::new(), &unit(&[(0, 1.0), (1, 1.0)]));
        index.insert(2, "b".into(), Map::new(), &unit(&[(0, 1.0)]));
        index.insert(3, "c".into(), Map::new(), &unit(&[(5, 1.0)]));
        let hits = index.search(&unit(&[(0, 1.0)]), 10, &Filter::default());
        let rowids: Vec<i64> = hits.iter().map(|(rowid, _)| *rowid).collect();
        assert_eq!(rowids, vec![2, 1]);
        assert!((hits[0].1 - 1.0).abs() < 1e-6);
        assert!(hits[0].1 > hits[1].1);
    }

    #[test]
    fn search_cuts_to_top_k_and_breaks_ties_by_rowid() {
        let mut index = VectorIndex::default();
        for rowid in [5, 3, 9, 1] {
            index.insert(rowid, rowid.to_string(), Map::new(), &unit(&[(7, 1.0)]));
        }
        let hits = index.search(&unit(&[(7, 1.0)]), 3, &Filter::default());
        let rowids: Vec<i64> = hits.iter().map(|(rowid, _)| *rowid).collect();
        assert_eq!(rowids, vec![1, 3, 5]);
        assert!(
            index
                .search(&unit(&[(7, 1.0)]), 0, &Filter::default())
                .is_empty()
        );
        assert!(
            index
                .search(&Embedding::default(), 3, &Filter::default())
                .is_empty()
        );
    }

    #[test]
    fn filter_applies_before_the_cut() {
        let mut index = VectorIndex::default();
        for rowid in 0..100 {
            let team = if rowid == 99 { "rare" } else { "common" };
            // The rare document is the least similar of all.
            let similarity = 1.0 - rowid as f32 / 200.0;
            let embedding = unit(&[(0, similarity), (1, 1.0 - similarity)]);
            index.insert(
                rowid,
                rowid.to_string(),
                metadata(json!({"team": team})),
                &embedding,
            );
        }
        let hits = index.search(&unit(&[(0, 1.0)]), 3, &filter(json!({"team": "rare"})));
        assert_eq!(
            hits.iter().map(|(rowid, _)| *rowid).collect::<Vec<_>>(),
            vec![99]
        );
    }

    #[test]
    fn filtered_and_unfiltered_searches_agree_with_a_full_sort() {
        let embedder = HashingEmbedder::new(128);
        let mut index = VectorIndex::default();
        for rowid in 0..500 {
            let text = format!(
                "item {} colour {} size {}",
                rowid % 13,
                rowid % 5,
                rowid % 7
            );
            let meta = metadata(json!({"bucket": rowid % 10, "odd": rowid % 2 == 1}));
            index.insert(rowid, rowid.to_string(), meta, &embedder.embed_text(&text));
        }
        let query = embedder.embed_text("item 3 colour 2");
        let all = index.search(&query, usize::MAX, &Filter::default());
        assert!(all.windows(2).all(|pair| pair[0].1 >= pair[1].1));
        for (filter_json, top_k) in [
            (json!({}), 10),
            (json!({"bucket": 7}), 5),
            (json!({"bucket": 7}), 500),
            (json!({"odd": true, "bucket": {"$in": [1, 3]}}), 70),
            (json!({"bucket": 11}), 5),
        ] {
            let filter = filter(filter_json);
            let expected: Vec<(i64, f32)> = all
                .iter()
                .filter(|(rowid, _)| index.matches(*rowid, &filter))
                .take(top_k)
                .copied()
                .collect();
            assert_eq!(index.search(&query, top_k, &filter), expected);
        }
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut index = VectorIndex::default();
        index.insert(1, "a".into(), Map::new(), &unit(&[(0, 1.0)]));
        index.insert(1, "a".into(), metadata(json!({"v": 2})), &unit(&[(1, 1.0)]));
        assert_eq!(index.len(), 1);
        assert!(
            index
                .search(&unit(&[(0, 1.0)]), 5, &Filter::default())
                .is_empty()
        );
        assert_eq!(
            index
                .search(&unit(&[(1, 1.0)]), 5, &Filter::default())
                .len(),
            1
        );
        assert!(index.matches(1, &filter(json!({"v": 2}))));

        assert!(index.remove(1));
        assert!(!index.remove(1));
        assert_eq!(index.len(), 0);
        assert!(index.get(1).is_none());
        assert!(
            index
                .search(&unit(&[(1, 1.0)]), 5, &Filter::default())
                .is_empty()
        );
    }

    #[test]
    fn compaction_keeps_live_documents_searchable() {
        let embedder = HashingEmbedder::new(256);
        let mut index = VectorIndex::default();
        for rowid in 0..200 {
            let text = format!("document number {rowid} about topic {}", rowid % 7);
            index.insert(
                rowid,
                format!("d{rowid}"),
                Map::new(),
                &embedder.embed_text(&text),
            );
        }
        for rowid in (0..200).filter(|rowid| rowid % 3 != 0) {
            index.remove(rowid);
        }
        assert!(index.entries.len() < 200, "compaction should have run");
        assert!(index.dead * 4 <= index.entries.len());
        assert_eq!(index.len(), 67);
        for (rowid, slot) in &index.by_rowid {
            let entry = index.entries[*slot as usize].as_ref().unwrap();
            assert_eq!(entry.rowid, *rowid);
            assert_eq!(index.slot_rowids[*slot as usize], *rowid);
        }

        let query = embedder.embed_text("document number 42 about topic 0");
        let hits = index.search(&query, 1, &Filter::default());
        assert_eq!(hits[0].0, 42);
        assert_eq!(
            index.get(42).map(|entry| entry.doc_id.as_str()),
            Some("d42")
        );
        let all = index.search(&query, 1000, &Filter::default());
        assert!(all.iter().all(|(rowid, _)| rowid % 3 == 0));
    }

    #[test]
    fn compaction_waits_until_a_quarter_of_at_least_the_minimum_slots_are_dead() {
        let slots = MIN_SLOTS_TO_COMPACT as i64;
        let mut index = VectorIndex::default();
        for rowid in 1..=slots {
            index.insert(rowid, rowid.to_string(), Map::new(), &unit(&[(1, 1.0)]));
        }
        // Exactly a quarter dead is not yet more than a quarter.
        for rowid in 1..=slots / 4 {
            assert!(index.remove(rowid));
        }
        assert_eq!(index.slot_rowids.len(), MIN_SLOTS_TO_COMPACT);
        assert_eq!(index.dead, MIN_SLOTS_TO_COMPACT / 4);
        assert!(index.remove(slots / 4 + 1));
        assert_eq!(index.slot_rowids.len(), index.len());
        assert_eq!(index.dead, 0);

        // A small index keeps its tombstones however many there are.
        let mut small = VectorIndex::default();
        for rowid in 1..=10 {
            small.insert(rowid, rowid.to_string(), Map::new(), &unit(&[(1, 1.0)]));
        }
        for rowid in 1..=9 {
            assert!(small.remove(rowid));
        }
        assert_eq!(small.slot_rowids.len(), 10);
        assert_eq!(small.dead, 9);
    }

    #[test]
    fn candidates_are_equal_exactly_when_they_order_equal() {
        let candidate = |score: f32, rowid: i64| Candidate { score, rowid };
        assert_eq!(candidate(0.5, 3), candidate(0.5, 3));
        assert_ne!(candidate(0.5, 3), candidate(0.5, 4));
        assert_ne!(candidate(0.5, 3), candidate(0.25, 3));
    }
}
