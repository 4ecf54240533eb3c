//! Dense vectors kept as one contiguous row per document and scanned in full, the layout a
//! neural embedder's vectors need: each fills every dimension, so an inverted index would
//! list every document under every dimension.
//!
//! The scan is memory-bound: a query reads every row once, in order, which the hardware
//! prefetcher streams. The dot product keeps eight independent sums so that the compiler
//! turns it into SIMD multiply-adds without reassociating floating-point sums itself.

use crate::embed::Embedding;

/// Lanes summed independently by [`dot`].
const LANES: usize = 8;

/// Rows of `dimension` floats, one per slot of the index.
#[derive(Debug, Clone, Default)]
pub(crate) struct DenseRows {
    dimension: usize,
    values: Vec<f32>,
}

impl DenseRows {
    pub(crate) fn new(dimension: usize) -> Self {
        DenseRows {
            dimension: dimension.max(1),
            values: Vec::new(),
        }
    }

    pub(crate) fn dimension(&self) -> usize {
        self.dimension
    }

    /// Appends a row; dimensions beyond the row's width are dropped, missing ones are zero.
    pub(crate) fn push(&mut self, embedding: &Embedding) {
        let start = self.values.len();
        self.values.resize(start + self.dimension, 0.0);
        let row = &mut self.values[start..];
        for (index, value) in embedding.indices.iter().zip(&embedding.values) {
            if let Some(slot) = row.get_mut(*index as usize) {
                *slot = *value;
            }
        }
    }

    /// Spreads a query's embedding over a row's width.
    pub(crate) fn spread(&self, query: &Embedding) -> Vec<f32> {
        let mut dense = vec![0.0; self.dimension];
        for (index, value) in query.indices.iter().zip(&query.values) {
            if let Some(slot) = dense.get_mut(*index as usize) {
                *slot = *value;
            }
        }
        dense
    }

    /// Writes each row's dot product with `query` into `scores`, slot by slot.
    pub(crate) fn score_into(&self, query: &[f32], scores: &mut [f32]) {
        for (row, score) in self.values.chunks_exact(self.dimension).zip(scores) {
            *score = dot(row, query);
        }
    }

    /// Keeps the rows of the slots `remap` keeps, in order: `remap[old]` is the new slot, or
    /// `u32::MAX` for a dropped one. New slots never come after old ones, so rows move down
    /// in place.
    pub(crate) fn compact(&mut self, remap: &[u32]) {
        let width = self.dimension;
        for (old, new) in remap.iter().enumerate() {
            if *new != u32::MAX && *new as usize != old {
                let from = old * width;
                self.values
                    .copy_within(from..from + width, *new as usize * width);
            }
        }
        let kept = remap.iter().filter(|new| **new != u32::MAX).count();
        self.values.truncate(kept * width);
        self.values.shrink_to_fit();
    }
}

/// The dot product of two rows of equal width.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_agrees_with_the_plain_sum_at_every_width() {
        for width in [1, 7, 8, 9, 16, 384, 385] {
            let a: Vec<f32> = (0..width).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..width).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "width {width}");
        }
    }

    #[test]
    fn rows_are_scored_in_slot_order_and_compaction_keeps_the_live_ones() {
        let mut rows = DenseRows::new(3);
        for values in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] {
            rows.push(&Embedding::from_dense(&values));
        }
        let query = rows.spread(&Embedding::from_dense(&[0.5, 2.0, 3.0]));
        let mut scores = vec![0.0; 3];
        rows.score_into(&query, &mut scores);
        assert_eq!(scores, [0.5, 2.0, 3.0]);

        rows.compact(&[u32::MAX, 0, 1]);
        let mut scores = vec![0.0; 2];
        rows.score_into(&query, &mut scores);
        assert_eq!(scores, [2.0, 3.0]);
    }

    #[test]
    fn dimensions_beyond_the_width_are_dropped() {
        let mut rows = DenseRows::new(2);
        rows.push(&Embedding {
            indices: vec![1, 5],
            values: vec![1.0, 9.0],
        });
        let mut scores = vec![0.0; 1];
        rows.score_into(
            &rows.spread(&Embedding::from_dense(&[0.0, 2.0])),
            &mut scores,
        );
        assert_eq!(scores, [2.0]);
    }
}
