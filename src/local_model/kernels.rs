//! The encoder's element-wise work, fused into one pass over each row and done in place on a
//! matrix product's output.
//!
//! candle runs a BERT layer as a chain of tensor operations, each allocating its result and
//! reading and writing the whole activation again: the bias after each product, the residual,
//! the scaling and masking of attention scores, and GELU through a scalar `erff`. Profiled on two
//! cores, that chain took more time than the matrix products. Here each row is read once and
//! written once, in the product's own output, and `exp` and `erf` are written so that the
//! compiler vectorises them; the only copies left are the heads' split and merge around the
//! attention products, which need each head's rows side by side.
//!
//! Rows are spread over rayon's current pool: a model thread that runs in a one-thread pool of
//! its own (see `on_own_pool`) keeps its rows to itself.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Shape};
use rayon::prelude::*;

/// `e^x` to within about two units in the last place over the range where `f32` holds it; below
/// about -87.3 it returns the smallest normal number's neighbourhood rather than a subnormal.
///
/// `x = n ln2 + r` with `|r| ≤ ln2/2`, `e^r` by its Taylor series to the sixth power (the
/// seventh term is below 2⁻²³ of the result there) and `2^n` built from its exponent bits.
/// No branch and no call, so a loop over it becomes vector instructions.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // ln 2 split so that n · LN2_HIGH is exact for every n this range gives.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer in one vector step.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let series = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    series * scale
}

/// GELU as BERT defines it, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, with `erfc` by Abramowitz and
/// Stegun's formula 7.1.26, whose absolute error is below 1.5e-7: the result is within
/// `1e-7 · max(|x|, 1)` of the exact one, well below what separates two activations here.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * a);
    let erfc = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5)))) * exp(-a * a);
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

/// Runs `kernel` compiled for the widest vector instructions this processor has (AVX2 and FMA
/// where present), chosen at run time: the build itself targets the baseline x86-64 that every
/// machine runs, whose vectors are half as wide. The kernel's body must be `inline(always)`
/// down to its loops for the choice to reach them.
#[inline(always)]
fn vectorised<K: pulp::WithSimd>(kernel: K) -> K::Output {
    pulp::Arch::new().dispatch(kernel)
}

/// Lanes of the reductions below: a sum over one accumulator is a chain that no compiler may
/// reorder into vectors, a sum over eight is eight chains it can.
const LANES: usize = 8;

#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = if value > *lane { value } else { *lane };
        }
    }
    lanes.iter().chain(rest).fold(
        f32::NEG_INFINITY,
        |max, &value| if value > max { value } else { max },
    )
}

/// One row: `gelu(value + bias)`.
struct GeluRow<'a> {
    row: &'a mut [f32],
    bias: &'a [f32],
}

impl pulp::WithSimd for GeluRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (value, &bias) in self.row.iter_mut().zip(self.bias) {
            *value = gelu(*value + bias);
        }
    }
}

/// Adds `bias` to each row of `rows` and applies GELU.
pub(crate) fn bias_gelu(rows: &mut [f32], bias: &[f32]) {
    rows.par_chunks_mut(bias.len())
        .for_each(|row| vectorised(GeluRow { row, bias }));
}

/// The parameters of a layer normalisation that follows a product: the product's bias, then
/// the normalisation's scale and shift.
#[derive(Debug, Clone)]
pub(crate) struct NormParams {
    pub bias: Vec<f32>,
    pub weight: Vec<f32>,
    pub shift: Vec<f32>,
    pub epsilon: f32,
}

/// One row: `LayerNorm(row + bias + residual)`, or of the row alone.
struct NormRow<'a> {
    row: &'a mut [f32],
    residual: Option<&'a [f32]>,
    params: &'a NormParams,
}

impl pulp::WithSimd for NormRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let NormRow {
            row,
            residual,
            params,
        } = self;
        if let Some(residual) = residual {
            for ((value, &bias), &residual) in row.iter_mut().zip(&params.bias).zip(residual) {
                *value += bias + residual;
            }
        }
        let width = row.len() as f32;
        let mean = sum(row) / width;
        for value in row.iter_mut() {
            *value -= mean;
        }
        let mut squares = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (lane, &value) in squares.iter_mut().zip(chunk) {
                *lane += value * value;
            }
        }
        let variance = (squares.iter().sum::<f32>()
            + rest.iter().map(|value| value * value).sum::<f32>())
            / width;
        let inverse = 1.0 / (variance + params.epsilon).sqrt();
        for ((value, &weight), &shift) in row.iter_mut().zip(&params.weight).zip(&params.shift) {
            *value = *value * inverse * weight + shift;
        }
    }
}

/// `rows ← LayerNorm(rows + bias + residual)`, row by row: the end of BERT's attention block
/// and of its feed-forward block.
pub(crate) fn bias_residual_norm(rows: &mut [f32], residual: &[f32], params: &NormParams) {
    let width = params.bias.len();
    rows.par_chunks_mut(width)
        .zip(residual.par_chunks(width))
        .for_each(|(row, residual)| {
            vectorised(NormRow {
                row,
                residual: Some(residual),
                params,
            })
        });
}

/// Layer normalisation alone, for the embeddings (whose sum is built by the caller).
pub(crate) fn norm(rows: &mut [f32], params: &NormParams) {
    rows.par_chunks_mut(params.bias.len()).for_each(|row| {
        vectorised(NormRow {
            row,
            residual: None,
            params,
        })
    });
}

/// The rows of one head's scores, each over its text's first `length` keys.
struct SoftmaxRows<'a> {
    matrix: &'a mut [f32],
    tokens: usize,
    length: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.matrix.chunks_mut(self.tokens) {
            let (keys, padding) = row.split_at_mut(self.length);
            let max = max(keys);
            for value in keys.iter_mut() {
                *value = exp(*value - max);
            }
            let inverse = 1.0 / sum(keys);
            for value in keys.iter_mut() {
                *value *= inverse;
            }
            padding.fill(0.0);
        }
    }
}

/// Softmax over attention scores laid out `(batch · heads, tokens, tokens)`: each row over the
/// keys `0..length` of its text, the keys past it (padding) getting zero, as BERT's additive
/// mask of the most negative `f32` gives once exponentiated.
pub(crate) fn masked_softmax(scores: &mut [f32], tokens: usize, heads: usize, lengths: &[usize]) {
    scores
        .par_chunks_mut(tokens * tokens)
        .enumerate()
        .for_each(|(index, matrix)| {
            vectorised(SoftmaxRows {
                matrix,
                tokens,
                length: lengths[index / heads].clamp(1, tokens),
            })
        });
}

/// The rows of a contiguous `f32` tensor, or an error naming the op.
fn rows_of<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op}: the tensor is not contiguous f32"),
    }
}

/// [`rows_of`] for reading.
fn values_of<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{op}: the tensor is not contiguous f32"),
    }
}

/// [`bias_gelu`] on a tensor in place.
pub(crate) struct BiasGelu<'a>(pub &'a [f32]);

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        bias_gelu(rows_of(storage, layout, self.name())?, self.0);
        Ok(())
    }
}

/// [`bias_residual_norm`] on a tensor in place, the residual being the second tensor.
pub(crate) struct BiasResidualNorm<'a>(pub &'a NormParams);

impl InplaceOp2 for BiasResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<()> {
        let rows = rows_of(storage, layout, self.name())?;
        let residual = values_of(residual, residual_layout, "bias-residual-norm's residual")?;
        if residual.len() != rows.len() {
            candle_core::bail!("bias-residual-norm: the residual's size differs");
        }
        bias_residual_norm(rows, residual, self.0);
        Ok(())
    }
}

/// [`masked_softmax`] on a tensor of scores in place.
pub(crate) struct MaskedSoftmax<'a> {
    pub tokens: usize,
    pub heads: usize,
    pub lengths: &'a [usize],
}

impl InplaceOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let scores = rows_of(storage, layout, self.name())?;
        if scores.len() != self.lengths.len() * self.heads * self.tokens * self.tokens {
            candle_core::bail!("masked-softmax: the scores' size does not match the batch");
        }
        masked_softmax(scores, self.tokens, self.heads, self.lengths);
        Ok(())
    }
}

/// Rearranges the product of the fused query, key and value weights, `(batch · tokens, 3 ·
/// hidden)`, into `(3 · batch · heads, tokens, head size)`: the queries, then the keys, then
/// the values, each head's rows contiguous for the attention products. Adds the three biases
/// on the way and scales the queries by `1/√head size`, which the scores would otherwise be.
pub(crate) fn split_heads(
    fused: &[f32],
    bias: &[f32],
    shape: AttentionShape,
    query_scale: f32,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        tokens,
        heads,
        head_size,
    } = shape;
    let hidden = heads * head_size;
    let mut out = vec![0.0; fused.len()];
    out.par_chunks_mut(tokens * head_size)
        .enumerate()
        .for_each(|(index, block)| {
            let (part, text, head) = (
                index / (batch * heads),
                index / heads % batch,
                index % heads,
            );
            let column = part * hidden + head * head_size;
            let scale = if part == 0 { query_scale } else { 1.0 };
            let bias = &bias[column..column + head_size];
            for (token, out_row) in block.chunks_mut(head_size).enumerate() {
                let start = (text * tokens + token) * 3 * hidden + column;
                for ((value, &input), &bias) in out_row
                    .iter_mut()
                    .zip(&fused[start..start + head_size])
                    .zip(bias)
                {
                    *value = (input + bias) * scale;
                }
            }
        });
    out
}

/// Puts the heads' outputs, `(batch · heads, tokens, head size)`, back side by side:
/// `(batch · tokens, hidden)`.
pub(crate) fn merge_heads(context: &[f32], shape: AttentionShape) -> Vec<f32> {
    let AttentionShape {
        tokens,
        heads,
        head_size,
        ..
    } = shape;
    let hidden = heads * head_size;
    let mut out = vec![0.0; context.len()];
    out.par_chunks_mut(hidden)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (text, token) = (row / tokens, row % tokens);
            for (head, out_head) in out_row.chunks_mut(head_size).enumerate() {
                let start = ((text * heads + head) * tokens + token) * head_size;
                out_head.copy_from_slice(&context[start..start + head_size]);
            }
        });
    out
}

/// The sizes of one attention computation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_size: usize,
}

/// The contiguous `f32` values of a tensor, as a slice into its storage.
pub(crate) fn with_values<T>(
    tensor: &candle_core::Tensor,
    work: impl FnOnce(&[f32]) -> T,
) -> candle_core::Result<T> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(storage) => Ok(work(values_of(storage, layout, "read")?)),
        _ => candle_core::bail!("expected a tensor on the CPU"),
    }
}

/// A tensor of `shape` holding `values`.
pub(crate) fn tensor(
    values: Vec<f32>,
    shape: impl Into<Shape>,
) -> candle_core::Result<candle_core::Tensor> {
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

#[cfg(test)]
#[path = "kernels_tests.rs"]
mod tests;
