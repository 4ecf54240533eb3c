use std::path::Path;

use candle_core::{Device, Tensor};

use super::*;
use crate::embed::cosine;
use crate::local_model::{reference, test_model_dir};

fn options(batch_size: usize) -> LocalModelOptions {
    LocalModelOptions {
        threads: 2,
        batch_size,
        // Whole batches, so that the short texts are padded to the longest.
        pass_tokens: usize::MAX,
        max_tokens: None,
    }
}

fn reference_embeddings() -> Vec<(String, Vec<f32>)> {
    reference()["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|entry| {
            let text = entry["text"].as_str().expect("text").to_string();
            let vector = entry["vector"]
                .as_array()
                .expect("vector")
                .iter()
                .map(|value| value.as_f64().expect("a number") as f32)
                .collect();
            (text, vector)
        })
        .collect()
}

#[tokio::test]
async fn vectors_match_sentence_transformers_in_any_batching() {
    let expected = reference_embeddings();
    let texts: Vec<String> = expected.iter().map(|(text, _)| text.clone()).collect();
    // One text per pass, then batches that mix short texts with the one cut at 256 tokens,
    // then passes cut by their tokens: padding and the reordering by length must change
    // nothing.
    let by_tokens = LocalModelOptions {
        pass_tokens: 300,
        ..options(32)
    };
    for (batch_size, options) in [
        (1, options(1)),
        (3, options(3)),
        (32, options(32)),
        (32, by_tokens),
    ] {
        let embedder = LocalEmbedder::load(&test_model_dir(), options).unwrap();
        assert_eq!(embedder.dimension(), 384);
        assert!(embedder.dense());
        let embeddings = embedder.embed(&texts).await.unwrap();
        assert_eq!(embeddings.len(), texts.len());
        for ((text, want), got) in expected.iter().zip(&embeddings) {
            let got = got.to_dense(384);
            let similarity = cosine(&got, want);
            assert!(
                similarity >= 0.9999,
                "batch size {batch_size}: cosine {similarity} for {text:?}"
            );
            let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
        }
    }
}

#[tokio::test]
async fn the_id_names_the_model_its_weights_pooling_and_cut() {
    let embedder = LocalEmbedder::load(&test_model_dir(), options(8)).unwrap();
    let id = embedder.id();
    assert!(
        id.starts_with("local:all-minilm-l6-v2:") && id.ends_with(":mean-normalized:256"),
        "{id}"
    );
    assert_eq!(embedder.max_tokens(), 256);
    let shorter = LocalEmbedder::load(
        &test_model_dir(),
        LocalModelOptions {
            max_tokens: Some(64),
            ..options(8)
        },
    )
    .unwrap();
    assert!(shorter.id().ends_with(":64"), "{}", shorter.id());
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
}

/// A copy of the model directory's small files, with the weights linked, to break one file.
fn model_copy() -> tempfile::TempDir {
    let source = test_model_dir();
    let copy = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "tokenizer.json",
    ] {
        std::fs::copy(source.join(name), copy.path().join(name)).unwrap();
    }
    std::fs::create_dir(copy.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        source.join("1_Pooling/config.json"),
        copy.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        source.join("model.safetensors"),
        copy.path().join("model.safetensors"),
    )
    .unwrap();
    copy
}

fn refused(dir: &Path) -> String {
    match LocalEmbedder::load(dir, options(8)) {
        Err(EmbedError::Misconfigured(reason)) => reason,
        other => panic!("expected a misconfiguration, got {other:?}"),
    }
}

#[test]
fn a_model_directory_that_cannot_work_is_refused_naming_the_file() {
    assert!(refused(Path::new("/nonexistent/model")).contains("/nonexistent/model"));

    let copy = model_copy();
    std::fs::remove_file(copy.path().join("tokenizer.json")).unwrap();
    assert!(refused(copy.path()).contains("has no tokenizer.json"));

    let copy = model_copy();
    std::fs::write(
        copy.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    assert!(refused(copy.path()).contains("sentence_transformers.models.Dense"));

    let copy = model_copy();
    std::fs::write(
        copy.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_weightedmean_tokens": true}"#,
    )
    .unwrap();
    assert!(refused(copy.path()).contains("weighted-mean"));

    let copy = model_copy();
    std::fs::write(
        copy.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 768, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    assert!(refused(copy.path()).contains("768"));

    let copy = model_copy();
    let config = std::fs::read_to_string(copy.path().join("config.json")).unwrap();
    std::fs::write(
        copy.path().join("config.json"),
        config.replace("\"bert\"", "\"xlm-roberta\""),
    )
    .unwrap();
    assert!(refused(copy.path()).contains("xlm-roberta"));

    // BERT checkpoints whose encoder computes something else than this one.
    for (field, value) in [
        ("hidden_act", "\"gelu_new\""),
        ("position_embedding_type", "\"relative_key\""),
        ("num_attention_heads", "5"),
    ] {
        let copy = model_copy();
        let path = copy.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&path, config.to_string()).unwrap();
        let reason = refused(copy.path());
        assert!(
            reason.contains("config.json") && reason.contains(field),
            "{field}: {reason}"
        );
    }

    let copy = model_copy();
    std::fs::remove_file(copy.path().join("model.safetensors")).unwrap();
    std::fs::write(copy.path().join("model.safetensors"), b"not weights").unwrap();
    assert!(refused(copy.path()).contains("model.safetensors"));
}

#[test]
fn the_configured_dimensions_must_be_the_models() {
    let mut config = EmbeddingConfig {
        model_dir: Some(test_model_dir()),
        dimensions: Some(768),
        ..EmbeddingConfig::default()
    };
    match from_config(&config) {
        Err(EmbedError::Misconfigured(reason)) => assert!(reason.contains("768"), "{reason}"),
        other => panic!("expected a misconfiguration, got {other:?}"),
    }
    config.dimensions = Some(384);
    assert_eq!(from_config(&config).unwrap().dimension(), 384);
    config.model_dir = None;
    assert!(matches!(
        from_config(&config),
        Err(EmbedError::Misconfigured(_))
    ));
}

fn tensor(rows: &[&[f32]]) -> Tensor {
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).unwrap()
}

/// One text of three tokens of two dimensions, the last token padding.
fn pooled(pooling: Pooling) -> Vec<f32> {
    let hidden = Tensor::from_vec(
        vec![1.0f32, -2.0, 3.0, 4.0, 100.0, 100.0],
        (1, 3, 2),
        &Device::Cpu,
    )
    .unwrap();
    let mask = tensor(&[&[1.0, 1.0, 0.0]]);
    pooling
        .apply(&hidden, &mask)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()[0]
        .clone()
}

#[test]
fn pooling_follows_its_mode_and_ignores_padding() {
    assert_eq!(pooled(Pooling::Cls), vec![1.0, -2.0]);
    assert_eq!(pooled(Pooling::Mean), vec![2.0, 1.0]);
    assert_eq!(pooled(Pooling::Max), vec![3.0, 4.0]);
    let root2 = 2f32.sqrt();
    let sqrt_len = pooled(Pooling::MeanSqrtLen);
    assert!((sqrt_len[0] - 4.0 / root2).abs() < 1e-6 && (sqrt_len[1] - 2.0 / root2).abs() < 1e-6);
}

#[test]
fn the_pooling_config_must_name_exactly_one_mode() {
    let config = |json: &str| {
        serde_json::from_str::<PoolingConfig>(json)
            .unwrap()
            .pooling()
    };
    assert_eq!(
        config(r#"{"pooling_mode_cls_token": true}"#),
        Ok(Pooling::Cls)
    );
    assert_eq!(
        config(r#"{"pooling_mode_max_tokens": true}"#),
        Ok(Pooling::Max)
    );
    assert_eq!(
        config(r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#),
        Ok(Pooling::MeanSqrtLen)
    );
    assert!(config("{}").unwrap_err().contains("no pooling mode"));
    assert!(
        config(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#)
            .unwrap_err()
            .contains("more than one")
    );
    assert!(config(r#"{"pooling_mode_lasttoken": true}"#).is_err());
}
