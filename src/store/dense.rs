//! Dense vectors kept as one contiguous row per document and scanned in full, the layout a
//! neural embedder's vectors need: each fills every dimension, so an inverted index would
//! list every document under every dimension.
//!
//! The scan is memory-bound: a query reads every row once, in order, which the hardware
//! prefetcher streams. So it reads rows quantised to one byte a dimension (each row scaled by
//! its largest component), a quarter of the floats' bytes, and only the best candidates of
//! that pass are scored again on the exact floats. The dot products keep eight independent
//! sums so that the compiler turns them into SIMD multiply-adds without reassociating sums
//! itself.

use crate::embed::Embedding;

/// Lanes summed independently by [`dot`].
const LANES: usize = 8;

/// Rows of `dimension` floats, one per slot of the index, and the same rows quantised.
#[derive(Debug, Clone, Default)]
pub(crate) struct DenseRows {
    dimension: usize,
    values: Vec<f32>,
    /// Each row as `round(value / scale)`, with `scale` the row's largest magnitude / 127.
    codes: Vec<i8>,
    /// The scale of each row's codes.
    scales: Vec<f32>,
}

/// A query spread over a row's width, exact and quantised.
pub(crate) struct DenseQuery {
    values: Vec<f32>,
    codes: Vec<i8>,
    scale: f32,
}

impl DenseQuery {
    /// The query's floats.
    pub(crate) fn values(&self) -> &[f32] {
        &self.values
    }
}

impl DenseRows {
    pub(crate) fn new(dimension: usize) -> Self {
        DenseRows {
            dimension: dimension.max(1),
            values: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
        }
    }

    /// Returns the number of rows.
    pub(crate) fn len(&self) -> usize {
        self.scales.len()
    }

    /// Returns the floats of the row in `slot`, empty past the last row.
    pub(crate) fn row(&self, slot: usize) -> &[f32] {
        let start = slot * self.dimension;
        self.values
            .get(start..start + self.dimension)
            .unwrap_or(&[])
    }

    /// Appends a row; dimensions beyond the row's width are dropped, missing ones are zero.
    pub(crate) fn push(&mut self, embedding: &Embedding) {
        let row = self.spread_values(embedding);
        let (codes, scale) = quantise(&row);
        self.values.extend_from_slice(&row);
        self.codes.extend_from_slice(&codes);
        self.scales.push(scale);
    }

    fn spread_values(&self, embedding: &Embedding) -> Vec<f32> {
        let mut dense = vec![0.0; self.dimension];
        for (index, value) in embedding.indices.iter().zip(&embedding.values) {
            if let Some(slot) = dense.get_mut(*index as usize) {
                *slot = *value;
            }
        }
        dense
    }

    /// Spreads a query's embedding over a row's width.
    pub(crate) fn spread(&self, query: &Embedding) -> DenseQuery {
        let values = self.spread_values(query);
        let (codes, scale) = quantise(&values);
        DenseQuery {
            values,
            codes,
            scale,
        }
    }

    /// Writes each row's approximate dot product with `query`, from the quantised rows, into
    /// `scores`, slot by slot.
    pub(crate) fn approximate_into(&self, query: &DenseQuery, scores: &mut [f32]) {
        let rows = self.codes.chunks_exact(self.dimension).zip(&self.scales);
        for ((row, scale), score) in rows.zip(scores) {
            *score = dot_codes(row, &query.codes) as f32 * scale * query.scale;
        }
    }

    /// Returns the exact dot product of the row in `slot` with `query`.
    pub(crate) fn exact(&self, slot: usize, query: &DenseQuery) -> f32 {
        dot(self.row(slot), &query.values)
    }

    /// Keeps the rows of the slots `remap` keeps, in order: `remap[old]` is the new slot, or
    /// `u32::MAX` for a dropped one. New slots never come after old ones, so rows move down
    /// in place.
    pub(crate) fn compact(&mut self, remap: &[u32]) {
        let width = self.dimension;
        for (old, new) in remap.iter().enumerate() {
            let new = *new as usize;
            if new != u32::MAX as usize && new != old {
                let from = old * width;
                self.values.copy_within(from..from + width, new * width);
                self.codes.copy_within(from..from + width, new * width);
                self.scales.copy_within(old..old + 1, new);
            }
        }
        let kept = remap.iter().filter(|new| **new != u32::MAX).count();
        self.values.truncate(kept * width);
        self.values.shrink_to_fit();
        self.codes.truncate(kept * width);
        self.codes.shrink_to_fit();
        self.scales.truncate(kept);
        self.scales.shrink_to_fit();
    }
}

/// Quantises a row to one byte a component, scaled by its largest magnitude.
fn quantise(row: &[f32]) -> (Vec<i8>, f32) {
    let largest = row
        .iter()
        .fold(0.0f32, |largest, value| largest.max(value.abs()));
    if largest == 0.0 || !largest.is_finite() {
        return (vec![0; row.len()], 0.0);
    }
    let scale = largest / 127.0;
    let codes = row
        .iter()
        .map(|value| (value / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scale)
}

/// The dot product of two quantised rows of equal width.
fn dot_codes(a: &[i8], b: &[i8]) -> i32 {
    let mut sums = [0i32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: i32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..LANES {
            sums[lane] += i32::from(x[lane]) * i32::from(y[lane]);
        }
    }
    sums.iter().sum::<i32>() + tail
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
    fn quantised_dot_products_stay_close_to_the_exact_ones() {
        let mut rows = DenseRows::new(384);
        let unit = |seed: f32| {
            let raw: Vec<f32> = (0..384).map(|i| (i as f32 * seed).sin()).collect();
            let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
            raw.iter().map(|v| v / norm).collect::<Vec<f32>>()
        };
        for seed in [0.1, 0.2, 0.3, 0.7] {
            rows.push(&Embedding::from_dense(&unit(seed)));
        }
        let query = rows.spread(&Embedding::from_dense(&unit(0.21)));
        let mut approximate = vec![0.0; 4];
        rows.approximate_into(&query, &mut approximate);
        for (slot, approximate) in approximate.iter().enumerate() {
            let exact = rows.exact(slot, &query);
            assert!(
                (approximate - exact).abs() < 0.01,
                "{approximate} for {exact}"
            );
        }
    }

    #[test]
    fn rows_are_scored_in_slot_order_and_compaction_keeps_the_live_ones() {
        let mut rows = DenseRows::new(3);
        // Rows of different magnitudes quantise with different scales.
        for values in [[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.25]] {
            rows.push(&Embedding::from_dense(&values));
        }
        let query = rows.spread(&Embedding::from_dense(&[0.5, 2.0, 12.0]));
        let exact: Vec<f32> = (0..3).map(|slot| rows.exact(slot, &query)).collect();
        assert_eq!(exact, [2.0, 2.0, 3.0]);
        let mut approximate = vec![0.0; 3];
        rows.approximate_into(&query, &mut approximate);
        for (approximate, exact) in approximate.iter().zip(&exact) {
            assert!(
                (approximate - exact).abs() < 0.2,
                "{approximate} for {exact}"
            );
        }

        rows.compact(&[u32::MAX, 0, 1]);
        let exact: Vec<f32> = (0..2).map(|slot| rows.exact(slot, &query)).collect();
        assert_eq!(exact, [2.0, 3.0]);
        let mut approximate = vec![0.0; 2];
        rows.approximate_into(&query, &mut approximate);
        // Each row kept its own scale through the move.
        for (approximate, exact) in approximate.iter().zip(&exact) {
            assert!(
                (approximate - exact).abs() < 0.2,
                "{approximate} for {exact}"
            );
        }
    }

    #[test]
    fn dimensions_beyond_the_width_are_dropped() {
        let mut rows = DenseRows::new(2);
        rows.push(&Embedding {
            indices: vec![1, 5],
            values: vec![1.0, 9.0],
        });
        assert_eq!(
            rows.exact(0, &rows.spread(&Embedding::from_dense(&[0.0, 2.0]))),
            2.0
        );
    }
}
