//! What the local embedder (`embed::local`) and the local reranker (`rerank::local`) share: reading a BERT model's directory,
//! tokenizing into batches, and running those batches on a lane of threads of their own.
//!
//! Weights are read into memory rather than mapped: mapping a file is `unsafe` in candle (the
//! file could change under the process) and the crate forbids `unsafe`. The copy costs one
//! model's size in memory while loading, and nothing after: the tensors own their data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokenizers::{EncodeInput, Encoding, Tokenizer, TruncationParams, TruncationStrategy};

use crate::lane::Lane;
use encoder::{Encoder, EncoderConfig};

mod encoder;
mod kernels;

/// Settings of a model run from a local directory, for the embedder and the reranker alike.
#[derive(Debug, Clone)]
pub struct LocalModelOptions {
    /// Threads that run forward passes, each one batch at a time. The matrix products of one
    /// pass also spread over candle's own pool of one thread per core.
    pub threads: usize,
    /// Texts (or query-passage pairs) in one forward pass at most; shorter ones are padded to
    /// the longest of their batch, so batches are made of texts of similar length.
    pub batch_size: usize,
    /// Tokens in one forward pass at most, padding included, unless one text alone is longer
    /// (see [`crate::config::DEFAULT_PASS_TOKENS`]).
    pub pass_tokens: usize,
    /// Longest input in tokens, special tokens included; longer inputs are cut with a warning.
    /// `None` takes the model's own limit (`sentence_bert_config.json`'s `max_seq_length`, or
    /// else `config.json`'s `max_position_embeddings`).
    pub max_tokens: Option<usize>,
}

impl Default for LocalModelOptions {
    fn default() -> Self {
        LocalModelOptions {
            threads: 2,
            batch_size: 32,
            pass_tokens: crate::config::DEFAULT_PASS_TOKENS,
            max_tokens: None,
        }
    }
}

/// Why a local model did not load or run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelError {
    /// The directory or the options cannot work: a missing or malformed file, a model of a
    /// kind this code does not run.
    #[error("{0}")]
    Misconfigured(String),
    /// A call failed: the tokenizer or a forward pass returned an error, the lane stopped.
    #[error("{0}")]
    Failed(String),
    /// The model returned numbers that are not finite.
    #[error("{0}")]
    BadOutput(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(error: candle_core::Error) -> Self {
        ModelError::Failed(format!("forward pass failed: {error}"))
    }
}

impl From<crate::lane::LaneError> for ModelError {
    fn from(error: crate::lane::LaneError) -> Self {
        ModelError::Failed(error.to_string())
    }
}

/// Returns the canonical form of `dir` and its last component, which names the model in ids.
pub(crate) fn model_dir(dir: &Path) -> Result<(PathBuf, String), ModelError> {
    let canonical = dir.canonicalize().map_err(|error| {
        ModelError::Misconfigured(format!(
            "model directory {} cannot be opened: {error}",
            dir.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(ModelError::Misconfigured(format!(
            "model directory {} is not a directory",
            dir.display()
        )));
    }
    let name = canonical
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    Ok((canonical, name))
}

/// Reads `dir/name`, with an error that names the file when it is missing.
pub(crate) fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>, ModelError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ModelError::Misconfigured(format!("model directory {} has no {name}", dir.display()))
        } else {
            ModelError::Misconfigured(format!("cannot read {}: {error}", path.display()))
        }
    })
}

/// Reads and parses the JSON file `dir/name`.
pub(crate) fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<T, ModelError> {
    let bytes = read_file(dir, name)?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ModelError::Misconfigured(format!(
            "{} is malformed: {error}",
            dir.join(name).display()
        ))
    })
}

/// Reads and parses `dir/name` when it exists.
pub(crate) fn read_optional_json<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, ModelError> {
    if dir.join(name).exists() {
        read_json(dir, name).map(Some)
    } else {
        Ok(None)
    }
}

/// The fields of `config.json` beyond BERT's own that decide whether the model can run here.
#[derive(serde::Deserialize)]
struct ModelKind {
    model_type: Option<String>,
}

/// A BERT encoder with its tokenizer, loaded from a directory holding `config.json`,
/// `model.safetensors` and `tokenizer.json`.
pub(crate) struct Bert {
    pub encoder: Encoder,
    pub tokenizer: Tokenizer,
    pub max_tokens: usize,
    pub pad_id: u32,
    /// The start of the weights' SHA-256, so that two models under one directory name never
    /// share an id.
    pub weights_digest: String,
}

impl Bert {
    /// Loads the encoder from `dir`. `declared_max` is the limit the model's packaging states
    /// (sentence-transformers' `max_seq_length`); `requested_max` is the caller's. `extra`
    /// loads further layers from the same weights (a classifier head) before they are freed.
    pub(crate) fn load<T>(
        dir: &Path,
        declared_max: Option<usize>,
        requested_max: Option<usize>,
        extra: impl FnOnce(VarBuilder<'_>, &EncoderConfig) -> candle_core::Result<T>,
    ) -> Result<(Bert, T), ModelError> {
        let kind: ModelKind = read_json(dir, "config.json")?;
        match kind.model_type.as_deref() {
            Some("bert") => {}
            other => {
                return Err(ModelError::Misconfigured(format!(
                    "{} names model_type {other:?}: only \"bert\" models run locally",
                    dir.join("config.json").display()
                )));
            }
        }
        let config: EncoderConfig = read_json(dir, "config.json")?;
        config.check().map_err(|reason| {
            ModelError::Misconfigured(format!("{}: {reason}", dir.join("config.json").display()))
        })?;
        let limit = config.max_position_embeddings;
        let max_tokens = requested_max.or(declared_max).unwrap_or(limit);
        // [CLS] and [SEP] twice for a pair; fewer tokens leave no room for text.
        if !(4..=limit).contains(&max_tokens) {
            return Err(ModelError::Misconfigured(format!(
                "max tokens {max_tokens} is outside 4..={limit}, the model's positions"
            )));
        }

        let mut tokenizer =
            Tokenizer::from_bytes(read_file(dir, "tokenizer.json")?).map_err(|error| {
                ModelError::Misconfigured(format!(
                    "{} is malformed: {error}",
                    dir.join("tokenizer.json").display()
                ))
            })?;
        let pad_id = tokenizer
            .get_padding()
            .map(|padding| padding.pad_id)
            .unwrap_or(config.pad_token_id);
        // tokenizer.json's own settings are what the model was exported with (all-MiniLM-L6-v2
        // ships truncation at 128 and fixed padding to 128), not what sentence-transformers
        // uses: truncation follows max_tokens and each batch is padded here.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..TruncationParams::default()
            }))
            .map_err(|error| ModelError::Misconfigured(format!("bad truncation: {error}")))?;

        let weights = read_file(dir, "model.safetensors")?;
        let weights_digest = format!("{:x}", Sha256::digest(&weights))[..12].to_string();
        let builder = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|error| {
                ModelError::Misconfigured(format!(
                    "{} is malformed: {error}",
                    dir.join("model.safetensors").display()
                ))
            })?;
        let weights_error = |error: candle_core::Error| {
            ModelError::Misconfigured(format!(
                "{} does not hold the model config.json describes: {error}",
                dir.join("model.safetensors").display()
            ))
        };
        // Exports of a task model (a cross-encoder) put the encoder under "bert."; exports of
        // the bare encoder (sentence-transformers) put it at the root.
        let encoder = if builder.contains_tensor("bert.embeddings.word_embeddings.weight") {
            builder.pp("bert")
        } else {
            builder.clone()
        };
        let encoder = Encoder::load(encoder, &config).map_err(weights_error)?;
        let extra = extra(builder, &config).map_err(weights_error)?;
        Ok((
            Bert {
                encoder,
                tokenizer,
                max_tokens,
                pad_id,
                weights_digest,
            },
            extra,
        ))
    }

    /// Tokenizes `inputs`, cut to `max_tokens`; returns the encodings and how many were cut.
    pub(crate) fn tokenize<'s, E>(
        &self,
        inputs: Vec<E>,
    ) -> Result<(Vec<Encoding>, usize), ModelError>
    where
        E: Into<EncodeInput<'s>> + Send,
    {
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|error| ModelError::Failed(format!("tokenizer failed: {error}")))?;
        let cut = encodings
            .iter()
            .filter(|encoding| !encoding.get_overflowing().is_empty())
            .count();
        Ok((encodings, cut))
    }

    /// Runs the encoder over one batch, padded to its longest member; returns the hidden
    /// states `(batch, tokens, hidden)` and the attention mask `(batch, tokens)` as `f32`.
    pub(crate) fn forward(&self, batch: &[Encoding]) -> Result<(Tensor, Tensor), ModelError> {
        let width = batch.iter().map(Encoding::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut type_ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        let mut lengths = Vec::with_capacity(batch.len());
        for encoding in batch {
            let padding = width - encoding.len();
            ids.extend_from_slice(encoding.get_ids());
            ids.extend(std::iter::repeat_n(self.pad_id, padding));
            type_ids.extend_from_slice(encoding.get_type_ids());
            type_ids.extend(std::iter::repeat_n(0, padding));
            let attended = encoding.get_attention_mask();
            // The tokenizer pads nothing here, so every token is attended to; the encoder
            // counts on padding only at the end.
            lengths.push(attended.iter().take_while(|&&bit| bit == 1).count());
            mask.extend(attended.iter().map(|&bit| bit as f32));
            mask.extend(std::iter::repeat_n(0.0, padding));
        }
        let hidden = self.encoder.forward(ids, &type_ids, width, &lengths)?;
        let mask = Tensor::from_vec(mask, (batch.len(), width), &Device::Cpu)?;
        Ok((hidden, mask))
    }
}

/// Starts the lane that runs a local model's calls.
pub(crate) fn start_lane(name: &str, threads: usize) -> Result<Lane, ModelError> {
    Lane::new(name, threads)
        .map_err(|error| ModelError::Misconfigured(format!("cannot start {name} threads: {error}")))
}

thread_local! {
    /// A one-thread rayon pool for each model thread. candle spreads every matrix product over
    /// rayon's global pool of one thread per core, so several model threads running batches
    /// at once ask for more threads than there are cores: on two cores, two model threads ran
    /// 52 chunks/s that way and 72 each in a pool of its own (`bench embed`); one model thread
    /// with the global pool ran 57.
    static OWN_POOL: Option<rayon::ThreadPool> =
        rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
}

/// Runs `work` on this thread's own rayon pool when the model has several threads, and on
/// candle's global one when it has one.
fn on_own_pool<T: Send>(shared_threads: bool, work: impl FnOnce() -> T + Send) -> T {
    if !shared_threads {
        return work();
    }
    OWN_POOL.with(|pool| match pool {
        Some(pool) => pool.install(work),
        None => work(),
    })
}

/// How many texts each forward pass takes, for texts of `lengths` tokens sorted longest
/// first: at most `texts`, and no more than `tokens` once padded to the pass's longest (its
/// first), except that a pass always takes one.
fn pass_sizes(lengths: &[usize], texts: usize, tokens: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let longest = lengths[start].max(1);
        let size = texts.min(tokens / longest).clamp(1, lengths.len() - start);
        sizes.push(size);
        start += size;
    }
    sizes
}

/// Runs `forward` over `encodings` in passes that [`pass_sizes`] bounds, each a call on
/// `lane`, and returns the outputs in the encodings' order. Encodings are grouped by length
/// first, so that a pass pads its short members little: on mixed texts that halves the work.
pub(crate) async fn run_batches<M, T>(
    lane: &Lane,
    model: &Arc<M>,
    encodings: Vec<Encoding>,
    options: &LocalModelOptions,
    forward: fn(&M, &[Encoding]) -> Result<Vec<T>, ModelError>,
) -> Result<Vec<T>, ModelError>
where
    M: Send + Sync + 'static,
    T: Send + 'static,
{
    let total = encodings.len();
    let mut order: Vec<(usize, Encoding)> = encodings.into_iter().enumerate().collect();
    order.sort_by_key(|(_, encoding)| std::cmp::Reverse(encoding.len()));
    let lengths: Vec<usize> = order.iter().map(|(_, encoding)| encoding.len()).collect();
    let mut batches = Vec::new();
    let mut order = order.into_iter();
    for size in pass_sizes(&lengths, options.batch_size.max(1), options.pass_tokens) {
        let batch: Vec<(usize, Encoding)> = order.by_ref().take(size).collect();
        let model = Arc::clone(model);
        batches.push(async move {
            let (positions, batch): (Vec<usize>, Vec<Encoding>) = batch.into_iter().unzip();
            let shared = lane.threads() > 1;
            let outputs = lane
                .run(move || on_own_pool(shared, || forward(&model, &batch)))
                .await??;
            if outputs.len() != positions.len() {
                return Err(ModelError::BadOutput(format!(
                    "{} outputs for a batch of {}",
                    outputs.len(),
                    positions.len()
                )));
            }
            Ok(positions.into_iter().zip(outputs).collect::<Vec<_>>())
        });
    }
    let mut slots: Vec<Option<T>> = (0..total).map(|_| None).collect();
    for (position, output) in futures::future::try_join_all(batches)
        .await?
        .into_iter()
        .flatten()
    {
        slots[position] = Some(output);
    }
    slots
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| ModelError::BadOutput("a batch left an input without output".into()))
}

#[cfg(test)]
#[test]
fn passes_are_bounded_by_texts_and_by_padded_tokens() {
    // Ten texts of 100 tokens, then five of 10: by texts alone, by tokens alone, by both.
    let lengths: Vec<usize> = [vec![100; 10], vec![10; 5]].concat();
    assert_eq!(pass_sizes(&lengths, 4, usize::MAX), [4, 4, 4, 3]);
    assert_eq!(pass_sizes(&lengths, 100, 300), [3, 3, 3, 3, 3]);
    assert_eq!(pass_sizes(&lengths, 100, 250), [2, 2, 2, 2, 2, 5]);
    // A text longer than the pass's tokens runs alone rather than not at all.
    assert_eq!(pass_sizes(&[600, 600, 5], 32, 512), [1, 1, 1]);
    assert_eq!(pass_sizes(&[], 32, 512), Vec::<usize>::new());
}

/// The model the tests run: all-MiniLM-L6-v2 as `scripts/install-models.sh` unpacks it.
#[cfg(test)]
pub(crate) fn test_model_dir() -> PathBuf {
    let dir = std::env::var_os("DEEPRECALL_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".models/all-minilm-l6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run scripts/install-models.sh (or point DEEPRECALL_TEST_MODEL_DIR at \
         a copy of all-MiniLM-L6-v2)",
        dir.display()
    );
    dir
}

/// What `scripts/reference-vectors.py` computed with sentence-transformers.
#[cfg(test)]
pub(crate) fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!(
        "../../tests/fixtures/local-models-reference.json"
    ))
    .expect("the reference fixture is JSON")
}
