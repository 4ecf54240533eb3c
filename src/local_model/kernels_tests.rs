use super::*;

/// Reproducible values in about -4..4, without a random crate's state.
fn values(count: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 8.0 - 4.0
        })
        .collect()
}

fn close(actual: &[f32], expected: &[f32], tolerance: f32) {
    assert_eq!(actual.len(), expected.len());
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * e.abs().max(1.0),
            "at {index}: {a} against {e}"
        );
    }
}

#[test]
fn exp_agrees_with_the_standard_library_over_the_range_of_f32() {
    let mut x = -87.0f32;
    while x < 88.0 {
        let (ours, std) = (exp(x), x.exp());
        assert!(
            (ours - std).abs() <= 3e-7 * std,
            "exp({x}) = {ours}, the standard library says {std}"
        );
        x += 0.0137;
    }
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-1000.0) < 1e-37, "{}", exp(-1000.0));
    assert!(exp(1000.0).is_finite());
}

#[test]
fn gelu_agrees_with_the_exact_definition() {
    let mut x = -12.0f64;
    while x < 12.0 {
        let exact = 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2);
        let ours = gelu(x as f32) as f64;
        // The formula's absolute error of 1.5e-7 on erfc, times |x|/2.
        assert!(
            (ours - exact).abs() <= 1e-7 * x.abs().max(1.0) + 1e-7 * exact.abs(),
            "gelu({x}) = {ours}, exactly {exact}"
        );
        x += 0.0071;
    }
    assert_eq!(gelu(0.0), 0.0);
}

#[test]
fn bias_gelu_adds_each_columns_bias_before_the_activation() {
    let (rows, width) = (5, 7);
    let input = values(rows * width, 1);
    let bias = values(width, 2);
    let mut output = input.clone();
    bias_gelu(&mut output, &bias);
    let expected: Vec<f32> = input
        .iter()
        .enumerate()
        .map(|(index, value)| gelu(value + bias[index % width]))
        .collect();
    assert_eq!(output, expected);
}

fn naive_norm(row: &[f32], params: &NormParams) -> Vec<f32> {
    let row: Vec<f64> = row.iter().map(|&value| value as f64).collect();
    let mean = row.iter().sum::<f64>() / row.len() as f64;
    let variance = row.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / row.len() as f64;
    row.iter()
        .zip(&params.weight)
        .zip(&params.shift)
        .map(|((value, &weight), &shift)| {
            ((value - mean) / (variance + params.epsilon as f64).sqrt() * weight as f64
                + shift as f64) as f32
        })
        .collect()
}

#[test]
fn bias_residual_norm_normalises_the_sum_of_product_bias_and_residual() {
    // A width the lanes divide, and one they leave a remainder of with an epsilon large
    // enough to move the result.
    for (width, epsilon) in [(16, 1e-12), (13, 0.5)] {
        let rows = 4;
        let params = NormParams {
            bias: values(width, 3),
            weight: values(width, 4),
            shift: values(width, 5),
            epsilon,
        };
        let input = values(rows * width, 6);
        let residual = values(rows * width, 7);
        let mut output = input.clone();
        bias_residual_norm(&mut output, &residual, &params);
        let mut expected = Vec::new();
        for row in 0..rows {
            let sum: Vec<f32> = (0..width)
                .map(|column| {
                    let index = row * width + column;
                    input[index] + params.bias[column] + residual[index]
                })
                .collect();
            expected.extend(naive_norm(&sum, &params));
        }
        close(&output, &expected, 1e-5);

        let mut alone = input.clone();
        norm(&mut alone, &params);
        let expected: Vec<f32> = input
            .chunks(width)
            .flat_map(|row| naive_norm(row, &params))
            .collect();
        close(&alone, &expected, 1e-5);
    }
}

#[test]
fn softmax_covers_each_texts_own_tokens_and_zeroes_its_padding() {
    let (tokens, heads, lengths) = (5, 2, [5usize, 3]);
    let input = values(lengths.len() * heads * tokens * tokens, 8);
    let mut scores = input.clone();
    masked_softmax(&mut scores, tokens, heads, &lengths);
    for (matrix, (scores, input)) in scores
        .chunks(tokens * tokens)
        .zip(input.chunks(tokens * tokens))
        .enumerate()
    {
        let length = lengths[matrix / heads];
        for (row, input) in scores.chunks(tokens).zip(input.chunks(tokens)) {
            let total: f64 = input[..length].iter().map(|&x| (x as f64).exp()).sum();
            let expected: Vec<f32> = input[..length]
                .iter()
                .map(|&x| ((x as f64).exp() / total) as f32)
                .collect();
            close(&row[..length], &expected, 1e-6);
            assert!(row[length..].iter().all(|&value| value == 0.0), "{row:?}");
        }
    }
}

#[test]
fn heads_split_with_their_biases_and_merge_back_in_place() {
    let shape = AttentionShape {
        batch: 2,
        tokens: 3,
        heads: 2,
        head_size: 4,
    };
    let hidden = shape.heads * shape.head_size;
    let rows = shape.batch * shape.tokens;
    let fused = values(rows * 3 * hidden, 9);
    let bias = values(3 * hidden, 10);
    let split = split_heads(&fused, &bias, shape, 0.5);

    // One value of each part: text 1, token 2, head 1, position 3 within the head.
    let (text, token, head, position) = (1, 2, 1, 3);
    for part in 0..3 {
        let column = part * hidden + head * shape.head_size + position;
        let input = fused[(text * shape.tokens + token) * 3 * hidden + column] + bias[column];
        let expected = if part == 0 { input * 0.5 } else { input };
        let block = (part * shape.batch + text) * shape.heads + head;
        let at = (block * shape.tokens + token) * shape.head_size + position;
        assert_eq!(split[at], expected, "part {part}");
    }

    // The values' part, merged back, is the fused input's value columns plus their bias.
    let values_part = &split[2 * rows * hidden..];
    let merged = merge_heads(values_part, shape);
    for row in 0..rows {
        for column in 0..hidden {
            assert_eq!(
                merged[row * hidden + column],
                fused[row * 3 * hidden + 2 * hidden + column] + bias[2 * hidden + column]
            );
        }
    }
}
