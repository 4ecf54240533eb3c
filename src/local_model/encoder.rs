//! A BERT encoder for inference on the CPU: the same arithmetic as Hugging Face's `BertModel`
//! (absolute positions, post-layer normalisation, exact GELU), with candle's matrix products
//! and this module's fused kernels between them (see `kernels`).
//!
//! Per layer: one product for the queries, keys and values together (their weights
//! concatenated at load), the scores and context products per head, the output product, then
//! the feed-forward pair. Everything else happens in place on a product's output. Padding
//! sits at the end of each text, so the attention mask is each text's length.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::ModelError;
use super::kernels::{
    self, AttentionShape, BiasGelu, BiasResidualNorm, MaskedSoftmax, NormParams, tensor,
    with_values,
};

/// The fields of `config.json` the encoder runs by.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_activation() -> String {
    "gelu".into()
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_position_embedding_type() -> String {
    "absolute".into()
}

impl EncoderConfig {
    /// Refuses, naming the field, what this encoder does not compute.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\", BERT's exact GELU)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        Ok(())
    }
}

/// A product's weight, transposed at load so that a row of inputs times it gives a row of
/// outputs.
struct Product(Tensor);

impl Product {
    /// Reads the weight of `outputs × inputs` and its bias, which stays apart: the kernel
    /// after the product adds it.
    fn load(
        weights: &VarBuilder<'_>,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<(Tensor, Vec<f32>)> {
        let weight = weights.get((outputs, inputs), "weight")?;
        let bias = weights.get(outputs, "bias")?.to_vec1::<f32>()?;
        Ok((weight.t()?.contiguous()?, bias))
    }

    fn apply(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        rows.matmul(&self.0)
    }
}

fn norm_params(
    weights: &VarBuilder<'_>,
    size: usize,
    bias: Vec<f32>,
    epsilon: f64,
) -> candle_core::Result<NormParams> {
    Ok(NormParams {
        bias,
        weight: weights.get(size, "weight")?.to_vec1::<f32>()?,
        shift: weights.get(size, "bias")?.to_vec1::<f32>()?,
        epsilon: epsilon as f32,
    })
}

/// One encoder layer: self-attention, then the feed-forward pair, each closed by a layer
/// normalisation of its output plus its input.
struct Layer {
    query_key_value: Product,
    query_key_value_bias: Vec<f32>,
    attention_output: Product,
    attention_norm: NormParams,
    intermediate: Product,
    intermediate_bias: Vec<f32>,
    output: Product,
    output_norm: NormParams,
}

impl Layer {
    fn load(weights: VarBuilder<'_>, config: &EncoderConfig) -> candle_core::Result<Layer> {
        let (hidden, epsilon) = (config.hidden_size, config.layer_norm_eps);
        let attention = weights.pp("attention");
        let parts = ["query", "key", "value"]
            .map(|name| Product::load(&attention.pp("self").pp(name), hidden, hidden));
        let mut columns = Vec::with_capacity(3);
        let mut query_key_value_bias = Vec::with_capacity(3 * hidden);
        for part in parts {
            let (weight, bias) = part?;
            columns.push(weight);
            query_key_value_bias.extend(bias);
        }
        let (attention_output, bias) =
            Product::load(&attention.pp("output.dense"), hidden, hidden)?;
        let attention_norm = norm_params(&attention.pp("output.LayerNorm"), hidden, bias, epsilon)?;
        let (intermediate, intermediate_bias) = Product::load(
            &weights.pp("intermediate.dense"),
            hidden,
            config.intermediate_size,
        )?;
        let (output, bias) = Product::load(
            &weights.pp("output.dense"),
            config.intermediate_size,
            hidden,
        )?;
        let output_norm = norm_params(&weights.pp("output.LayerNorm"), hidden, bias, epsilon)?;
        Ok(Layer {
            query_key_value: Product(Tensor::cat(&columns, 1)?.contiguous()?),
            query_key_value_bias,
            attention_output: Product(attention_output),
            attention_norm,
            intermediate: Product(intermediate),
            intermediate_bias,
            output: Product(output),
            output_norm,
        })
    }

    /// `rows` is `(batch · tokens, hidden)`; returns the layer's output in the same shape.
    fn forward(
        &self,
        rows: &Tensor,
        shape: AttentionShape,
        lengths: &[usize],
    ) -> candle_core::Result<Tensor> {
        let AttentionShape {
            batch,
            tokens,
            heads,
            head_size,
        } = shape;
        let fused = self.query_key_value.apply(rows)?;
        let scale = 1.0 / (head_size as f32).sqrt();
        let split = with_values(&fused, |fused| {
            kernels::split_heads(fused, &self.query_key_value_bias, shape, scale)
        })?;
        let blocks = batch * heads;
        let split = tensor(split, (3 * blocks, tokens, head_size))?;
        let queries = split.narrow(0, 0, blocks)?;
        let keys = split.narrow(0, blocks, blocks)?;
        let values = split.narrow(0, 2 * blocks, blocks)?;
        let scores = queries.matmul(&keys.t()?)?;
        scores.inplace_op1(&MaskedSoftmax {
            tokens,
            heads,
            lengths,
        })?;
        let context = scores.matmul(&values)?;
        let merged = with_values(&context, |context| kernels::merge_heads(context, shape))?;
        let merged = tensor(merged, (batch * tokens, heads * head_size))?;

        let attended = self.attention_output.apply(&merged)?;
        attended.inplace_op2(rows, &BiasResidualNorm(&self.attention_norm))?;
        let intermediate = self.intermediate.apply(&attended)?;
        intermediate.inplace_op1(&BiasGelu(&self.intermediate_bias))?;
        let output = self.output.apply(&intermediate)?;
        output.inplace_op2(&attended, &BiasResidualNorm(&self.output_norm))?;
        Ok(output)
    }
}

/// A BERT encoder's weights, ready to run.
pub(crate) struct Encoder {
    config: EncoderConfig,
    word_embeddings: candle_nn::Embedding,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embedding_norm: NormParams,
    layers: Vec<Layer>,
}

impl Encoder {
    /// Loads the encoder from `weights`, rooted where `embeddings.` and `encoder.` are.
    pub(crate) fn load(
        weights: VarBuilder<'_>,
        config: &EncoderConfig,
    ) -> candle_core::Result<Encoder> {
        let hidden = config.hidden_size;
        let embeddings = weights.pp("embeddings");
        let word_embeddings =
            candle_nn::embedding(config.vocab_size, hidden, embeddings.pp("word_embeddings"))?;
        let table = |name: &str, rows: usize| -> candle_core::Result<Vec<f32>> {
            embeddings
                .get((rows, hidden), &format!("{name}.weight"))?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let position_embeddings = table("position_embeddings", config.max_position_embeddings)?;
        let token_type_embeddings = table("token_type_embeddings", config.type_vocab_size)?;
        let embedding_norm = norm_params(
            &embeddings.pp("LayerNorm"),
            hidden,
            vec![0.0; hidden],
            config.layer_norm_eps,
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| Layer::load(weights.pp(format!("encoder.layer.{index}")), config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Encoder {
            config: config.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embedding_norm,
            layers,
        })
    }

    /// The width of each token's vector.
    pub(crate) fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Runs texts of `lengths` tokens, padded at the end to `tokens`: `ids` and `type_ids` are
    /// `batch · tokens` long. Returns the hidden states `(batch, tokens, hidden)`.
    pub(crate) fn forward(
        &self,
        ids: Vec<u32>,
        type_ids: &[u32],
        tokens: usize,
        lengths: &[usize],
    ) -> Result<Tensor, ModelError> {
        let hidden = self.config.hidden_size;
        let batch = lengths.len();
        if tokens > self.config.max_position_embeddings {
            return Err(ModelError::Failed(format!(
                "{tokens} tokens is more than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        if let Some(&type_id) = type_ids
            .iter()
            .find(|&&type_id| type_id as usize >= self.config.type_vocab_size)
        {
            return Err(ModelError::Failed(format!(
                "token type {type_id} is outside the model's {}",
                self.config.type_vocab_size
            )));
        }
        let ids = Tensor::from_vec(ids, batch * tokens, &candle_core::Device::Cpu)?;
        let words = self.word_embeddings.forward(&ids)?;
        let embedded = with_values(&words, |words| {
            let mut sum = words.to_vec();
            for (position, (row, &type_id)) in sum.chunks_mut(hidden).zip(type_ids).enumerate() {
                let position = position % tokens * hidden;
                let kind = type_id as usize * hidden;
                let positions = &self.position_embeddings[position..position + hidden];
                let kinds = &self.token_type_embeddings[kind..kind + hidden];
                for ((value, &position), &kind) in row.iter_mut().zip(positions).zip(kinds) {
                    *value += position + kind;
                }
            }
            kernels::norm(&mut sum, &self.embedding_norm);
            sum
        })?;
        let mut rows = tensor(embedded, (batch * tokens, hidden))?;
        let shape = AttentionShape {
            batch,
            tokens,
            heads: self.config.num_attention_heads,
            head_size: hidden / self.config.num_attention_heads,
        };
        for layer in &self.layers {
            rows = layer.forward(&rows, shape, lengths)?;
        }
        Ok(rows.reshape((batch, tokens, hidden))?)
    }
}
