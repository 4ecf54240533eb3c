use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::*;
use crate::local_model::{reference, test_model_dir};

/// Builds in `target` the cross-encoder `scripts/reference-vectors.py` builds: all-MiniLM-L6-v2's
/// encoder and pooler under "bert.", and a classifier of weights sin(j + 1) / 2, bias 0.05.
fn build_cross_encoder(target: &Path, config_extra: serde_json::Value) {
    let source = test_model_dir();
    let weights =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(name, tensor)| (format!("bert.{name}"), tensor))
        .collect();
    let head: Vec<f32> = (0..384)
        .map(|j| ((j + 1) as f64).sin() as f32 / 2.0)
        .collect();
    tensors.insert(
        "classifier.weight".into(),
        Tensor::from_vec(head, (1, 384), &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "classifier.bias".into(),
        Tensor::from_vec(vec![0.05f32], 1, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, target.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "LABEL_0"});
    for (key, value) in config_extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    std::fs::write(target.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(source.join("tokenizer.json"), target.join("tokenizer.json")).unwrap();
}

fn options() -> LocalModelOptions {
    LocalModelOptions {
        threads: 2,
        batch_size: 3,
        pass_tokens: usize::MAX,
        max_tokens: None,
    }
}

#[tokio::test]
async fn scores_match_sentence_transformers_cross_encoder() {
    let dir = tempfile::tempdir().unwrap();
    build_cross_encoder(dir.path(), serde_json::json!({}));
    let reranker = LocalReranker::load(dir.path(), options()).unwrap();
    assert!(reranker.id().ends_with(":sigmoid"), "{}", reranker.id());

    let expected = reference();
    let rerank = &expected["rerank"];
    let query = rerank["query"].as_str().unwrap();
    let passages: Vec<String> = rerank["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|passage| passage.as_str().unwrap().to_string())
        .collect();
    let scores = reranker.score(query, &passages).await.unwrap();
    let want: Vec<f32> = rerank["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|score| score.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(scores.len(), want.len());
    for (got, want) in scores.iter().zip(&want) {
        assert!((got - want).abs() < 1e-4, "{scores:?} against {want:?}");
    }
    assert!(reranker.score(query, &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_identity_activation_returns_the_logit() {
    let dir = tempfile::tempdir().unwrap();
    build_cross_encoder(
        dir.path(),
        serde_json::json!({"sentence_transformers": {
            "activation_fn": "torch.nn.modules.linear.Identity"
        }}),
    );
    let reranker = LocalReranker::load(dir.path(), options()).unwrap();
    assert!(reranker.id().ends_with(":logit"), "{}", reranker.id());
    let expected = reference();
    let rerank = &expected["rerank"];
    let passage = rerank["passages"][0].as_str().unwrap().to_string();
    let logit = reranker
        .score(rerank["query"].as_str().unwrap(), &[passage])
        .await
        .unwrap()[0];
    let sigmoid = rerank["scores"][0].as_f64().unwrap() as f32;
    assert!(
        (1.0 / (1.0 + (-logit).exp()) - sigmoid).abs() < 1e-4,
        "logit {logit} against sigmoid {sigmoid}"
    );
}

#[test]
fn a_classifier_of_several_labels_or_no_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build_cross_encoder(
        dir.path(),
        serde_json::json!({"id2label": {"0": "NO", "1": "YES"}}),
    );
    match LocalReranker::load(dir.path(), options()) {
        Err(RerankError::Misconfigured(reason)) => assert!(reason.contains("2 labels"), "{reason}"),
        other => panic!("expected a misconfiguration, got {other:?}"),
    }
    let config = RerankConfig::default();
    match from_config(&config) {
        Err(RerankError::Misconfigured(reason)) => {
            assert!(reason.contains("--reranker-model-dir"), "{reason}")
        }
        other => panic!("expected a misconfiguration, got {other:?}"),
    }
}
