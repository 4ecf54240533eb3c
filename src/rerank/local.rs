//! A cross-encoder of the BERT family (the ms-marco-MiniLM rerankers, say) run on the CPU with
//! candle, from a directory: `config.json`, `model.safetensors` and `tokenizer.json` as
//! transformers saves a `BertForSequenceClassification`. The query and each passage are read
//! together, as one pair of segments, and scored by the classifier over the pooled [CLS].
//!
//! Scores are what sentence-transformers' `CrossEncoder.predict` returns: the single logit
//! through a sigmoid, or the bare logit when the model's config names the identity as its
//! activation. Models with more than one label (a classifier, not a relevance scorer) are
//! refused at load.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::IndexOp;
use candle_nn::{Linear, Module};
use serde::Deserialize;
use tokenizers::Encoding;

use super::{RerankError, Reranker};
use crate::config::RerankConfig;
use crate::lane::Lane;
use crate::local_model::{
    self as model, Bert, LocalModelOptions, ModelError, read_json, run_batches, start_lane,
};

impl From<ModelError> for RerankError {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::Misconfigured(reason) => RerankError::Misconfigured(reason),
            ModelError::Failed(reason) => RerankError::Unavailable(reason),
            ModelError::BadOutput(reason) => RerankError::BadResponse(reason),
        }
    }
}

/// The fields of `config.json` that say how logits become scores.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HeadConfig {
    num_labels: Option<usize>,
    id2label: Option<std::collections::BTreeMap<String, String>>,
    sentence_transformers: Option<SentenceTransformersConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SentenceTransformersConfig {
    activation_fn: Option<String>,
}

impl HeadConfig {
    fn labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|labels| labels.len()))
            .unwrap_or(2)
    }

    /// sentence-transformers applies a sigmoid to a one-label model's logit unless the model
    /// says otherwise.
    fn sigmoid(&self) -> bool {
        match self
            .sentence_transformers
            .as_ref()
            .and_then(|config| config.activation_fn.as_deref())
        {
            Some(name) => name.ends_with("Sigmoid"),
            None => true,
        }
    }
}

/// BERT's pooler and the classifier over it.
struct Head {
    pooler: Linear,
    classifier: Linear,
}

/// The model and its settings, shared by the lane's threads.
struct Inner {
    bert: Bert,
    head: Head,
    sigmoid: bool,
}

impl Inner {
    fn forward(&self, batch: &[Encoding]) -> Result<Vec<f32>, ModelError> {
        let (hidden, _mask) = self.bert.forward(batch)?;
        let cls = hidden.i((.., 0))?;
        let pooled = self.head.pooler.forward(&cls)?.tanh()?;
        let logits = self.head.classifier.forward(&pooled)?.squeeze(1)?;
        let scores = if self.sigmoid {
            candle_nn::ops::sigmoid(&logits)?
        } else {
            logits
        };
        let scores = scores.to_vec1::<f32>()?;
        if scores.iter().any(|score| !score.is_finite()) {
            return Err(ModelError::BadOutput(
                "the local reranker returned a score that is not finite".into(),
            ));
        }
        Ok(scores)
    }
}

/// A [`Reranker`] running a BERT cross-encoder on the CPU.
pub struct LocalReranker {
    inner: Arc<Inner>,
    lane: Lane,
    options: LocalModelOptions,
    id: String,
}

impl std::fmt::Debug for LocalReranker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalReranker")
            .field("id", &self.id)
            .field("options", &self.options)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl LocalReranker {
    /// Loads the cross-encoder in `dir` and starts its threads. Fails with
    /// [`RerankError::Misconfigured`] naming the file when one is missing or malformed, or when
    /// the model is not a one-label BERT classifier.
    pub fn load(dir: &Path, options: LocalModelOptions) -> Result<Self, RerankError> {
        let (dir, name) = model::model_dir(dir)?;
        let head_config: HeadConfig = read_json(&dir, "config.json")?;
        if head_config.labels() != 1 {
            return Err(RerankError::Misconfigured(format!(
                "{} describes a classifier with {} labels; a reranker has one (a relevance \
                 score)",
                dir.join("config.json").display(),
                head_config.labels()
            )));
        }
        let (bert, head) = Bert::load(&dir, None, options.max_tokens, |weights, config| {
            let hidden = config.hidden_size;
            Ok(Head {
                pooler: candle_nn::linear(hidden, hidden, weights.pp("bert.pooler.dense"))?,
                classifier: candle_nn::linear(hidden, 1, weights.pp("classifier"))?,
            })
        })?;
        let sigmoid = head_config.sigmoid();
        let id = format!(
            "local:{name}:{}:{}",
            bert.weights_digest,
            if sigmoid { "sigmoid" } else { "logit" }
        );
        let lane = start_lane("local-reranker", options.threads)?;
        Ok(LocalReranker {
            inner: Arc::new(Inner {
                bert,
                head,
                sigmoid,
            }),
            lane,
            options: options.clone(),
            id,
        })
    }
}

#[async_trait]
impl Reranker for LocalReranker {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn score(&self, query: &str, passages: &[String]) -> Result<Vec<f32>, RerankError> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        let pairs: Vec<(String, String)> = passages
            .iter()
            .map(|passage| (query.to_string(), passage.clone()))
            .collect();
        let (encodings, cut) = self
            .lane
            .run(move || inner.bert.tokenize(pairs))
            .await
            .map_err(ModelError::from)??;
        if cut > 0 {
            tracing::debug!(
                model = %self.id,
                pairs = cut,
                max_tokens = self.inner.bert.max_tokens,
                "query-passage pairs longer than the reranker takes were cut"
            );
        }
        Ok(run_batches(
            &self.lane,
            &self.inner,
            encodings,
            &self.options,
            Inner::forward,
        )
        .await?)
    }
}

/// Builds the local reranker that `[rerank]` describes: `model_dir`, `threads`, `batch_size`.
pub fn from_config(config: &RerankConfig) -> Result<Arc<LocalReranker>, RerankError> {
    let dir = config.model_dir.as_deref().ok_or_else(|| {
        RerankError::Misconfigured(
            "the local reranker needs a model directory: set --reranker-model-dir".into(),
        )
    })?;
    Ok(Arc::new(LocalReranker::load(
        dir,
        LocalModelOptions {
            threads: config.threads,
            batch_size: config.batch_size,
            pass_tokens: config.pass_tokens,
            max_tokens: None,
        },
    )?))
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
