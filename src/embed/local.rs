//! Embeddings from a sentence-transformers model of the BERT family (all-MiniLM-L6-v2,
//! bge-small, e5-small, ...) run on the CPU with candle, from a directory and never a network.
//!
//! The directory is what sentence-transformers saves: `modules.json` lists a Transformer
//! (`config.json`, `model.safetensors`, `tokenizer.json` at its path), a Pooling module
//! (`1_Pooling/config.json`) and, for most models, a Normalize module. Each is honoured as
//! the model says, so that the vectors match what sentence-transformers computes; a module
//! this code does not run (a Dense projection, say) is refused at load rather than skipped.
//!
//! Calls run on a lane of their own threads, never on the async runtime, one batch of texts
//! of similar length per forward pass.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{D, Tensor};
use serde::Deserialize;
use tokenizers::Encoding;

use super::{EmbedError, Embedder, Embedding};
use crate::config::EmbeddingConfig;
use crate::lane::Lane;
pub use crate::local_model::LocalModelOptions;
use crate::local_model::{
    self as model, Bert, ModelError, read_json, read_optional_json, run_batches, start_lane,
};

impl From<ModelError> for EmbedError {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::Misconfigured(reason) => EmbedError::Misconfigured(reason),
            ModelError::Failed(reason) => EmbedError::Unavailable(reason),
            ModelError::BadOutput(reason) => EmbedError::BadResponse(reason),
        }
    }
}

/// How token vectors become one text vector, as `1_Pooling/config.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector ([CLS]).
    Cls,
    /// The mean of the text's token vectors, padding excluded.
    Mean,
    /// The largest value of each dimension over the text's tokens.
    Max,
    /// The sum of the token vectors over the square root of their number.
    MeanSqrtLen,
}

impl Pooling {
    fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean-sqrt-len",
        }
    }

    /// Pools `hidden` `(batch, tokens, dim)` under `mask` `(batch, tokens)` into `(batch, dim)`.
    fn apply(self, hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let mask3 = mask.unsqueeze(2)?;
        match self {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
            Pooling::Max => {
                // As sentence-transformers: padding gets -1e9, below any real activation.
                let floor = ((mask3.ones_like()? - &mask3)? * -1e9)?;
                hidden.broadcast_mul(&mask3)?.broadcast_add(&floor)?.max(1)
            }
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let sum = hidden.broadcast_mul(&mask3)?.sum(1)?;
                let count = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
                let count = if self == Pooling::Mean {
                    count
                } else {
                    count.sqrt()?
                };
                sum.broadcast_div(&count)
            }
        }
    }
}

/// `1_Pooling/config.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

impl PoolingConfig {
    fn pooling(&self) -> Result<Pooling, String> {
        let modes = [
            (self.pooling_mode_cls_token, Some(Pooling::Cls)),
            (self.pooling_mode_mean_tokens, Some(Pooling::Mean)),
            (self.pooling_mode_max_tokens, Some(Pooling::Max)),
            (
                self.pooling_mode_mean_sqrt_len_tokens,
                Some(Pooling::MeanSqrtLen),
            ),
            (self.pooling_mode_weightedmean_tokens, None),
            (self.pooling_mode_lasttoken, None),
        ];
        let chosen: Vec<Option<Pooling>> = modes
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, pooling)| pooling)
            .collect();
        match chosen.as_slice() {
            [Some(pooling)] => Ok(*pooling),
            [None] => Err("weighted-mean and last-token pooling are not supported".into()),
            [] => Err("no pooling mode is set".into()),
            _ => Err("more than one pooling mode is set; only one is supported".into()),
        }
    }
}

/// One entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// What the modules of a sentence-transformers directory ask for.
struct Pipeline {
    transformer: String,
    pooling: String,
    normalize: bool,
}

fn read_pipeline(dir: &Path) -> Result<Pipeline, ModelError> {
    let modules: Vec<Module> = read_json(dir, "modules.json")?;
    let (mut transformer, mut pooling, mut normalize) = (None, None, false);
    for module in modules {
        let kind = module.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Transformer" if transformer.is_none() && pooling.is_none() => {
                transformer = Some(module.path)
            }
            "Pooling" if transformer.is_some() && pooling.is_none() => pooling = Some(module.path),
            "Normalize" if pooling.is_some() => normalize = true,
            _ => {
                return Err(ModelError::Misconfigured(format!(
                    "{}: module {:?} is not supported here (only Transformer, Pooling and \
                     Normalize, in that order)",
                    dir.join("modules.json").display(),
                    module.kind
                )));
            }
        }
    }
    match (transformer, pooling) {
        (Some(transformer), Some(pooling)) => Ok(Pipeline {
            transformer,
            pooling,
            normalize,
        }),
        _ => Err(ModelError::Misconfigured(format!(
            "{} lacks a Transformer or a Pooling module",
            dir.join("modules.json").display()
        ))),
    }
}

/// The model and its settings, shared by the lane's threads.
struct Inner {
    bert: Bert,
    pooling: Pooling,
    normalize: bool,
}

impl Inner {
    fn forward(&self, batch: &[Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        let (hidden, mask) = self.bert.forward(batch)?;
        let mut pooled = self.pooling.apply(&hidden, &mask)?;
        if self.normalize {
            // torch.nn.functional.normalize: divide by the norm, at least 1e-12.
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled = pooled.broadcast_div(&norm)?;
        }
        let rows = pooled.to_vec2::<f32>()?;
        if rows.iter().flatten().any(|value| !value.is_finite()) {
            return Err(ModelError::BadOutput(
                "the local model returned a vector that is not finite".into(),
            ));
        }
        Ok(rows)
    }
}

/// An [`Embedder`] running a sentence-transformers model of the BERT family on the CPU.
pub struct LocalEmbedder {
    inner: Arc<Inner>,
    lane: Lane,
    options: LocalModelOptions,
    id: String,
    dimension: usize,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalEmbedder")
            .field("id", &self.id)
            .field("options", &self.options)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl LocalEmbedder {
    /// Loads the model saved by sentence-transformers in `dir` and starts its threads. Fails
    /// with [`EmbedError::Misconfigured`] naming the file when one is missing or malformed, or
    /// when the model needs something this code does not run.
    pub fn load(dir: &Path, options: LocalModelOptions) -> Result<Self, EmbedError> {
        let (dir, name) = model::model_dir(dir)?;
        let pipeline = read_pipeline(&dir)?;
        let pooling_config: PoolingConfig = read_json(&dir.join(&pipeline.pooling), "config.json")?;
        let pooling = pooling_config.pooling().map_err(|reason| {
            EmbedError::Misconfigured(format!(
                "{}: {reason}",
                dir.join(&pipeline.pooling).join("config.json").display()
            ))
        })?;
        let declared: Option<SentenceBertConfig> =
            read_optional_json(&dir, "sentence_bert_config.json")?;
        let transformer_dir = dir.join(&pipeline.transformer);
        let (bert, ()) = Bert::load(
            &transformer_dir,
            declared.and_then(|declared| declared.max_seq_length),
            options.max_tokens,
            |_, _| Ok(()),
        )?;
        let dimension = bert.encoder.hidden_size();
        if let Some(declared) = pooling_config.word_embedding_dimension
            && declared != dimension
        {
            return Err(EmbedError::Misconfigured(format!(
                "{} says {declared} dimensions, config.json's hidden_size is {dimension}",
                dir.join(&pipeline.pooling).join("config.json").display()
            )));
        }
        // Everything that changes the vectors: the weights, the pooling, the normalisation and
        // where long texts are cut. The batch size does not.
        let id = format!(
            "local:{name}:{}:{}{}:{}",
            bert.weights_digest,
            pooling.name(),
            if pipeline.normalize {
                "-normalized"
            } else {
                ""
            },
            bert.max_tokens
        );
        let lane = start_lane("local-embedder", options.threads)?;
        Ok(LocalEmbedder {
            inner: Arc::new(Inner {
                bert,
                pooling,
                normalize: pipeline.normalize,
            }),
            lane,
            options: options.clone(),
            id,
            dimension,
        })
    }

    /// Returns the longest input in tokens; longer texts are cut.
    pub fn max_tokens(&self) -> usize {
        self.inner.bert.max_tokens
    }

    /// Returns each text's vector as the model computes it, before it becomes an
    /// [`Embedding`], and how many texts were cut.
    async fn embed_dense(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), ModelError> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let inner = Arc::clone(&self.inner);
        let owned = texts.to_vec();
        let (encodings, cut) = self.lane.run(move || inner.bert.tokenize(owned)).await??;
        let vectors = run_batches(
            &self.lane,
            &self.inner,
            encodings,
            &self.options,
            Inner::forward,
        )
        .await?;
        Ok((vectors, cut))
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn dense(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        let (vectors, cut) = self.embed_dense(texts).await?;
        if cut > 0 {
            tracing::warn!(
                model = %self.id,
                texts = cut,
                max_tokens = self.max_tokens(),
                "texts longer than the local embedding model takes were cut"
            );
        }
        Ok(vectors
            .iter()
            .map(|vector| Embedding::from_dense(vector))
            .collect())
    }
}

/// Builds the local embedder that `[embedding]` describes: `model_dir`, `threads` and
/// `batch_size`; `dimensions`, when set, must be the model's.
pub fn from_config(config: &EmbeddingConfig) -> Result<Arc<LocalEmbedder>, EmbedError> {
    let dir = config.model_dir.as_deref().ok_or_else(|| {
        EmbedError::Misconfigured(
            "the local embedder needs a model directory: set --embedding-model-dir".into(),
        )
    })?;
    let embedder = LocalEmbedder::load(
        dir,
        LocalModelOptions {
            threads: config.threads,
            batch_size: config.batch_size,
            pass_tokens: config.pass_tokens,
            max_tokens: None,
        },
    )?;
    if let Some(dimensions) = config.dimensions
        && dimensions != embedder.dimension()
    {
        return Err(EmbedError::Misconfigured(format!(
            "embedding dimensions is {dimensions} but the model in {} makes {}",
            dir.display(),
            embedder.dimension()
        )));
    }
    Ok(Arc::new(embedder))
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
