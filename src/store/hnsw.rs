//! A hierarchical navigable small world graph (Malkov and Yashunin, 2016) over the rows of a
//! collection's [`DenseRows`]: the approximate index that keeps dense searches flat as a
//! collection grows past what a full scan serves in time (BENCHMARKS.md has the crossing).
//!
//! Nodes are the index's slots. Each node lives on layer 0 and, with falling odds, on layers
//! above it; a search descends greedily from the top layer's entry point and explores layer 0
//! breadth-first among the `ef` best seen so far. Neighbours are chosen by the paper's
//! heuristic (a candidate is kept only if it is closer to the node than to any neighbour kept
//! before it), which keeps the graph navigable across clusters.
//!
//! A deleted document's node stays in the graph as a waypoint until the index compacts; then
//! the survivors that lost a neighbour choose again among their remaining neighbours and the
//! neighbours of the ones they lost, as pgvector repairs its graph on vacuum.
//!
//! Filters apply during the search: every node is a waypoint, only matching ones are results,
//! and the search goes on until it holds `ef` matching nodes or has visited its budget. A
//! search that ends with fewer than asked tells its caller, which then scans.
//!
//! Settings: `M` 16 (32 on layer 0) and `ef_construction` 100, pgvector's and hnswlib's usual
//! values; `ef_search` at least 160 and twice the hits asked (on clustered 48-dimension test
//! vectors, recall@10 was 0.88 at 64, 0.93 at 100 and over 0.95 at 160).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use super::dense::{DenseRows, dot};

/// Neighbours of a node on the layers above 0.
const M: usize = 16;
/// Neighbours of a node on layer 0.
const M0: usize = 2 * M;
/// Candidates weighed when a node's neighbours are chosen.
const EF_CONSTRUCTION: usize = 100;
/// The smallest candidate list of a search.
const EF_SEARCH: usize = 160;
/// Nodes a search may visit per entry of its candidate list: with a selective filter, a search
/// walks through many non-matching nodes before it has `ef` matching ones.
const VISITS_PER_EF: usize = 256;
/// Layers above 0, at most: with M = 16, layer 17 would hold one node in 16^17.
const MAX_LEVEL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored {
    similarity: f32,
    node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity
            .total_cmp(&other.similarity)
            .then_with(|| other.node.cmp(&self.node))
    }
}

/// The graph: for each node, its neighbours on each of its layers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Graph {
    links: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    top: usize,
    /// State of the generator that draws each node's level: seeded, so that one sequence of
    /// writes always builds one graph.
    seed: u64,
}

impl Graph {
    pub(crate) fn new() -> Self {
        Graph {
            seed: 0x9E37_79B9_7F4A_7C15,
            ..Graph::default()
        }
    }

    /// Returns the number of nodes, deleted ones included.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let bits = self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
        let level = -uniform.ln() / (M as f64).ln();
        (level as usize).min(MAX_LEVEL)
    }

    /// Links the row in slot `len()` of `rows`: the next row the graph does not hold yet.
    pub(crate) fn insert(&mut self, rows: &DenseRows) {
        let Ok(node) = u32::try_from(self.links.len()) else {
            return;
        };
        let level = self.random_level();
        self.links.push(vec![Vec::new(); level + 1]);
        let Some(entry) = self.entry else {
            self.entry = Some(node);
            self.top = level;
            return;
        };
        let query = rows.row(node as usize);
        let similarity = |other: u32| dot(query, rows.row(other as usize));
        let mut closest = Scored {
            similarity: similarity(entry),
            node: entry,
        };
        for layer in (level + 1..=self.top).rev() {
            closest = self.greedy(closest, layer, &similarity);
        }
        let mut entry_points = vec![closest];
        for layer in (0..=level.min(self.top)).rev() {
            let found = self.search_layer(
                &entry_points,
                EF_CONSTRUCTION,
                layer,
                &similarity,
                &|_| true,
                usize::MAX,
            );
            let chosen = select(&found, M, rows);
            let most = if layer == 0 { M0 } else { M };
            for &neighbour in &chosen {
                let list = &mut self.links[neighbour as usize][layer];
                list.push(node);
                if list.len() > most {
                    self.prune(neighbour, layer, most, rows);
                }
            }
            self.links[node as usize][layer] = chosen;
            entry_points = found;
        }
        if level > self.top {
            self.top = level;
            self.entry = Some(node);
        }
    }

    /// Returns up to `top_k` `(slot, similarity)` pairs among the nodes `accept` admits, best
    /// first, and whether the search could have found more: false when it ran out of its visit
    /// budget or of the graph before it held `top_k`, and the caller should scan instead.
    pub(crate) fn search(
        &self,
        rows: &DenseRows,
        query: &[f32],
        top_k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Option<Vec<(u32, f32)>> {
        let entry = self.entry?;
        let similarity = |other: u32| dot(query, rows.row(other as usize));
        let mut closest = Scored {
            similarity: similarity(entry),
            node: entry,
        };
        for layer in (1..=self.top).rev() {
            closest = self.greedy(closest, layer, &similarity);
        }
        let ef = top_k.saturating_mul(2).max(EF_SEARCH);
        let budget = ef.saturating_mul(VISITS_PER_EF);
        let found = self.search_layer(&[closest], ef, 0, &similarity, accept, budget);
        if found.len() < top_k {
            return None;
        }
        Some(
            found
                .into_iter()
                .take(top_k)
                .map(|scored| (scored.node, scored.similarity))
                .collect(),
        )
    }

    /// Moves from `from` to whichever neighbour on `layer` is closer, until none is.
    fn greedy(&self, mut from: Scored, layer: usize, similarity: &dyn Fn(u32) -> f32) -> Scored {
        loop {
            let mut moved = false;
            for &neighbour in self.neighbours(from.node, layer) {
                let candidate = Scored {
                    similarity: similarity(neighbour),
                    node: neighbour,
                };
                if candidate > from {
                    from = candidate;
                    moved = true;
                }
            }
            if !moved {
                return from;
            }
        }
    }

    fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
        self.links
            .get(node as usize)
            .and_then(|layers| layers.get(layer))
            .map_or(&[], Vec::as_slice)
    }

    /// The `ef` best nodes `accept` admits that a best-first walk of `layer` reaches from
    /// `entry_points`, best first; the walk stops once its next candidate is worse than all of
    /// them, or after `budget` visits.
    fn search_layer(
        &self,
        entry_points: &[Scored],
        ef: usize,
        layer: usize,
        similarity: &dyn Fn(u32) -> f32,
        accept: &dyn Fn(u32) -> bool,
        budget: usize,
    ) -> Vec<Scored> {
        let mut visited: HashSet<u32> = HashSet::with_capacity(ef * 8);
        let mut candidates: BinaryHeap<Scored> = BinaryHeap::new();
        let mut results: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef + 1);
        for point in entry_points {
            if visited.insert(point.node) {
                candidates.push(*point);
                if accept(point.node) {
                    results.push(Reverse(*point));
                }
            }
        }
        while results.len() > ef {
            results.pop();
        }
        while let Some(candidate) = candidates.pop() {
            let worst = results.peek().map(|Reverse(worst)| *worst);
            if results.len() >= ef && worst.is_some_and(|worst| candidate < worst) {
                break;
            }
            if visited.len() >= budget {
                break;
            }
            for &neighbour in self.neighbours(candidate.node, layer) {
                if !visited.insert(neighbour) {
                    continue;
                }
                let scored = Scored {
                    similarity: similarity(neighbour),
                    node: neighbour,
                };
                let worst = results.peek().map(|Reverse(worst)| *worst);
                if results.len() < ef || worst.is_some_and(|worst| scored > worst) {
                    candidates.push(scored);
                    if accept(neighbour) {
                        results.push(Reverse(scored));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        // Ascending order of `Reverse` is best first.
        results
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(scored)| scored)
            .collect()
    }

    /// Cuts `node`'s neighbours on `layer` back to `most`, chosen again by the heuristic.
    fn prune(&mut self, node: u32, layer: usize, most: usize, rows: &DenseRows) {
        let row = rows.row(node as usize);
        let mut scored: Vec<Scored> = self.links[node as usize][layer]
            .iter()
            .map(|&neighbour| Scored {
                similarity: dot(row, rows.row(neighbour as usize)),
                node: neighbour,
            })
            .collect();
        scored.sort_by(|a, b| b.cmp(a));
        self.links[node as usize][layer] = select(&scored, most, rows);
    }

    /// Drops the nodes `remap` drops and renumbers the others (`remap[old]` is the new slot,
    /// `u32::MAX` for a dropped one), as the index renumbers its slots; `rows` are already
    /// renumbered. A survivor that lost neighbours chooses again among the ones it kept and
    /// the survivors its lost ones linked to.
    pub(crate) fn compact(&mut self, remap: &[u32], rows: &DenseRows) {
        let alive = |old: u32| {
            remap
                .get(old as usize)
                .copied()
                .filter(|new| *new != u32::MAX)
        };
        let mut links: Vec<Vec<Vec<u32>>> = Vec::with_capacity(rows.len());
        for (old, layers) in self.links.iter().enumerate() {
            let Some(new) = alive(old as u32) else {
                continue;
            };
            let mut renumbered = Vec::with_capacity(layers.len());
            for (layer, neighbours) in layers.iter().enumerate() {
                let kept: Vec<u32> = neighbours.iter().filter_map(|&n| alive(n)).collect();
                if kept.len() == neighbours.len() {
                    renumbered.push(kept);
                    continue;
                }
                let mut pool: Vec<u32> = kept;
                for &lost in neighbours.iter().filter(|&&n| alive(n).is_none()) {
                    for &second in self.neighbours(lost, layer) {
                        if let Some(second) = alive(second)
                            && second != new
                            && !pool.contains(&second)
                        {
                            pool.push(second);
                        }
                    }
                }
                let row = rows.row(new as usize);
                let mut scored: Vec<Scored> = pool
                    .into_iter()
                    .map(|neighbour| Scored {
                        similarity: dot(row, rows.row(neighbour as usize)),
                        node: neighbour,
                    })
                    .collect();
                scored.sort_by(|a, b| b.cmp(a));
                renumbered.push(select(&scored, if layer == 0 { M0 } else { M }, rows));
            }
            links.push(renumbered);
        }
        self.entry = self.entry.and_then(alive);
        if self.entry.is_none() {
            // The highest survivor becomes the entry point.
            let highest = links
                .iter()
                .enumerate()
                .max_by_key(|(node, layers)| (layers.len(), Reverse(*node)));
            self.entry = highest.map(|(node, _)| node as u32);
        }
        self.top = self
            .entry
            .and_then(|entry| links.get(entry as usize))
            .map_or(0, |layers| layers.len().saturating_sub(1));
        self.links = links;
    }
}

/// Chooses up to `most` neighbours among `candidates` (best first): a candidate closer to a
/// neighbour already chosen than to the node adds no new direction and is passed over, then
/// the passed-over ones fill what is left, best first.
fn select(candidates: &[Scored], most: usize, rows: &DenseRows) -> Vec<u32> {
    let mut chosen: Vec<u32> = Vec::with_capacity(most);
    let mut passed: Vec<u32> = Vec::new();
    for candidate in candidates {
        if chosen.len() >= most {
            break;
        }
        let row = rows.row(candidate.node as usize);
        let diverse = chosen
            .iter()
            .all(|&kept| dot(row, rows.row(kept as usize)) < candidate.similarity);
        if diverse {
            chosen.push(candidate.node);
        } else {
            passed.push(candidate.node);
        }
    }
    for node in passed {
        if chosen.len() >= most {
            break;
        }
        chosen.push(node);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Embedding;

    /// Unit vectors from a seeded generator, clustered around a few centres as embeddings of
    /// related texts are.
    fn vectors(count: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..dimension).map(|_| next()).collect())
            .collect();
        (0..count)
            .map(|n| {
                let centre = &centres[n % centres.len()];
                let raw: Vec<f32> = centre.iter().map(|c| c + next() * 0.8).collect();
                let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
                raw.iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn rows_of(vectors: &[Vec<f32>]) -> (DenseRows, Graph) {
        let mut rows = DenseRows::new(vectors[0].len());
        let mut graph = Graph::new();
        for vector in vectors {
            rows.push(&Embedding::from_dense(vector));
            graph.insert(&rows);
        }
        (rows, graph)
    }

    fn exact(
        rows: &DenseRows,
        query: &[f32],
        top_k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut all: Vec<Scored> = (0..rows.len() as u32)
            .filter(|node| accept(*node))
            .map(|node| Scored {
                similarity: dot(query, rows.row(node as usize)),
                node,
            })
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter()
            .take(top_k)
            .map(|scored| scored.node)
            .collect()
    }

    fn recall(
        rows: &DenseRows,
        graph: &Graph,
        queries: &[Vec<f32>],
        accept: &dyn Fn(u32) -> bool,
    ) -> f64 {
        let mut found = 0;
        for query in queries {
            let truth = exact(rows, query, 10, accept);
            let got = graph.search(rows, query, 10, accept).expect("enough nodes");
            assert!(got.iter().all(|(node, _)| accept(*node)));
            assert!(
                got.windows(2).all(|pair| pair[0].1 >= pair[1].1),
                "best first"
            );
            found += got.iter().filter(|(node, _)| truth.contains(node)).count();
        }
        found as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn searches_find_nearly_every_true_neighbour_with_and_without_a_filter() {
        let data = vectors(4_000, 48, 7);
        let (rows, graph) = rows_of(&data);
        let queries = vectors(50, 48, 99);
        let everything = recall(&rows, &graph, &queries, &|_| true);
        assert!(everything >= 0.95, "recall@10 {everything}");
        let a_tenth = recall(&rows, &graph, &queries, &|node| node % 10 == 3);
        assert!(
            a_tenth >= 0.9,
            "recall@10 with a filter admitting a tenth: {a_tenth}"
        );
    }

    #[test]
    fn a_filter_admitting_too_few_nodes_sends_the_caller_to_the_scan() {
        let data = vectors(2_000, 16, 3);
        let (rows, graph) = rows_of(&data);
        assert_eq!(graph.search(&rows, &data[0], 10, &|node| node < 5), None);
        assert!(Graph::new().search(&rows, &data[0], 1, &|_| true).is_none());
        let one = graph.search(&rows, &data[0], 1, &|_| true).unwrap();
        assert_eq!(one[0].0, 0, "a stored vector finds itself");
    }

    #[test]
    fn compaction_keeps_the_survivors_reachable() {
        let data = vectors(3_000, 32, 11);
        let (mut rows, mut graph) = rows_of(&data);
        // Drop every third node, the entry point among them.
        let entry = graph.entry.unwrap();
        let dropped = |old: usize| old.is_multiple_of(3) || old == entry as usize;
        let mut remap = vec![u32::MAX; data.len()];
        let mut next = 0;
        for (old, slot) in remap.iter_mut().enumerate() {
            if !dropped(old) {
                *slot = next;
                next += 1;
            }
        }
        rows.compact(&remap);
        graph.compact(&remap, &rows);
        assert_eq!(graph.len(), rows.len());
        assert!(
            graph
                .entry
                .is_some_and(|entry| (entry as usize) < rows.len())
        );
        assert!(
            graph
                .links
                .iter()
                .flatten()
                .flatten()
                .all(|&n| (n as usize) < rows.len())
        );
        let queries = vectors(40, 32, 5);
        let after = recall(&rows, &graph, &queries, &|_| true);
        assert!(after >= 0.95, "recall@10 after compaction {after}");
        // And it goes on growing.
        for vector in vectors(200, 32, 13) {
            rows.push(&Embedding::from_dense(&vector));
            graph.insert(&rows);
        }
        assert!(recall(&rows, &graph, &queries, &|_| true) >= 0.95);
    }

    #[test]
    fn levels_thin_out_by_m() {
        let mut graph = Graph::new();
        let levels: Vec<usize> = (0..20_000).map(|_| graph.random_level()).collect();
        let above = levels.iter().filter(|level| **level >= 1).count();
        // One node in M reaches layer 1: 1,250 expected.
        assert!((1_000..1_500).contains(&above), "{above}");
        assert!(levels.iter().all(|level| *level <= MAX_LEVEL));
    }
}
