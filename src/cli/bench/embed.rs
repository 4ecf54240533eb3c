//! `deeprecall bench embed`: chunks/s of the configured embedder over the passages of
//! `--corpus`, cycled to `--chunks` texts; with `--python`, sentence-transformers embeds the
//! same texts with the same model, batch size and threads in the same run, and the two are
//! printed side by side with how far their vectors are apart.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::Deserialize;

use super::BenchArgs;
use super::retrieval::{CHUNK_SIZE, retrieval_config};
use crate::cli::CliError;
use crate::cli::ingest::read_chunks;
use crate::config::EmbedderKind;
use crate::embed::{Embedder, Embedding, cosine};
use crate::server::retrieval::build_embedder;

/// sentence-transformers' side, run as `PYTHON -c`.
const PEER_SCRIPT: &str = include_str!("../../../scripts/st-throughput.py");

/// What the Python side prints.
#[derive(Debug, Deserialize)]
struct PeerRun {
    texts: usize,
    seconds: f64,
    torch: String,
    first: Vec<Vec<f32>>,
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), CliError> {
    let config = retrieval_config(args);
    let model_dir = match (&config.embedding.embedder, &config.embedding.model_dir) {
        (EmbedderKind::Local, Some(dir)) => dir.clone(),
        _ => {
            return Err(CliError::Usage(
                "bench embed needs --embedding-model-dir DIR (a sentence-transformers model)"
                    .into(),
            ));
        }
    };
    if args.chunks == 0 {
        return Err(CliError::Usage("--chunks must be at least 1".into()));
    }
    let (chunks, _) = read_chunks(std::slice::from_ref(&args.corpus), CHUNK_SIZE)?;
    if chunks.is_empty() {
        return Err(CliError::Usage(format!(
            "{} holds no text to embed",
            args.corpus.display()
        )));
    }
    let texts: Vec<String> = chunks
        .iter()
        .map(|chunk| chunk.content.clone())
        .cycle()
        .take(args.chunks)
        .collect();
    let embedder =
        build_embedder(&config, None).map_err(|error| CliError::Io(error.to_string()))?;
    let settings = &config.embedding;
    println!(
        "embed: {} chunks ({} distinct passages of {}), batch size {}, {} threads",
        texts.len(),
        chunks.len(),
        args.corpus.display(),
        settings.batch_size,
        settings.threads
    );

    let (seconds, vectors) = embed_timed(embedder.as_ref(), &texts).await?;
    println!("| embedder | chunks/s | seconds |");
    println!("|---|---:|---:|");
    println!(
        "| {} (candle) | {:.1} | {:.2} |",
        embedder.id(),
        texts.len() as f64 / seconds,
        seconds
    );

    if let Some(python) = &args.python {
        let peer = run_peer(
            python,
            &model_dir,
            &texts,
            settings.batch_size,
            settings.threads,
        )?;
        println!(
            "| sentence-transformers (torch {}) | {:.1} | {:.2} |",
            peer.torch,
            peer.texts as f64 / peer.seconds,
            peer.seconds
        );
        let dimension = embedder.dimension();
        let lowest = peer
            .first
            .iter()
            .zip(&vectors)
            .map(|(theirs, ours)| cosine(theirs, &ours.to_dense(dimension)))
            .fold(f64::INFINITY, f64::min);
        println!(
            "lowest cosine between the two sides' vectors of the first {} chunks: {lowest:.6}",
            peer.first.len().min(vectors.len())
        );
    }
    Ok(())
}

/// Embeds `texts` after a warm-up batch; returns the seconds the whole set took.
async fn embed_timed(
    embedder: &dyn Embedder,
    texts: &[String],
) -> Result<(f64, Vec<Embedding>), CliError> {
    let failed = |error: crate::embed::EmbedError| CliError::Io(error.to_string());
    embedder
        .embed(&texts[..texts.len().min(32)])
        .await
        .map_err(failed)?;
    let started = Instant::now();
    let vectors = embedder.embed(texts).await.map_err(failed)?;
    Ok((started.elapsed().as_secs_f64(), vectors))
}

fn run_peer(
    python: &Path,
    model_dir: &Path,
    texts: &[String],
    batch_size: usize,
    threads: usize,
) -> Result<PeerRun, CliError> {
    let io = |error: std::io::Error| CliError::Io(error.to_string());
    let file = tempfile::NamedTempFile::new().map_err(io)?;
    let json = serde_json::to_vec(texts).map_err(|error| CliError::Io(error.to_string()))?;
    std::fs::write(file.path(), json).map_err(io)?;
    let output = Command::new(python)
        .arg("-c")
        .arg(PEER_SCRIPT)
        .arg(model_dir)
        .arg(file.path())
        .arg(batch_size.to_string())
        .arg(threads.to_string())
        .output()
        .map_err(|error| CliError::Io(format!("cannot run {}: {error}", python.display())))?;
    if !output.status.success() {
        return Err(CliError::Io(format!(
            "{} failed ({}): {}",
            python.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|error| {
        CliError::Io(format!(
            "{} printed no result ({error}): {line}",
            python.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_embeddings_are_compared_as_dense_vectors() {
        let embedding = Embedding::from_dense(&[0.0, 3.0, 0.0, 4.0]);
        assert_eq!(embedding.to_dense(4), vec![0.0, 3.0, 0.0, 4.0]);
        assert_eq!(embedding.to_dense(2), vec![0.0, 3.0]);
        assert!((cosine(&[0.0, 3.0, 0.0, 4.0], &[0.0, 6.0, 0.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    }
}
