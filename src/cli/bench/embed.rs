//! `deeprecall bench embed`: chunks/s of the configured embedder over the passages of
//! `--corpus`, cycled to `--chunks` texts; with `--python`, sentence-transformers embeds the
//! same texts with the same model, batch size and threads in the same run, round after round
//! (`--rounds`), the two sides alternating; the medians are compared, and a round whose
//! vectors disagree (cosine below 0.9999) fails the bench.

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

    if args.rounds == 0 {
        return Err(CliError::Usage("--rounds must be at least 1".into()));
    }
    let dimension = embedder.dimension();
    println!("| round | local (candle) chunks/s | sentence-transformers chunks/s | ratio |");
    println!("|---:|---:|---:|---:|");
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut peer_torch = None;
    for round in 1..=args.rounds {
        let (seconds, vectors) = embed_timed(embedder.as_ref(), &texts).await?;
        let local = texts.len() as f64 / seconds;
        ours.push(local);
        let Some(python) = &args.python else {
            println!("| {round} | {local:.1} | | |");
            continue;
        };
        let peer = run_peer(
            python,
            &model_dir,
            &texts,
            settings.batch_size,
            settings.threads,
        )?;
        let peer_rate = peer.texts as f64 / peer.seconds;
        theirs.push(peer_rate);
        ratios.push(local / peer_rate);
        println!(
            "| {round} | {local:.1} | {peer_rate:.1} | {:.2} |",
            local / peer_rate
        );
        let lowest = peer
            .first
            .iter()
            .zip(&vectors)
            .map(|(theirs, ours)| cosine(theirs, &ours.to_dense(dimension)))
            .fold(f64::INFINITY, f64::min);
        if lowest < 0.9999 {
            return Err(CliError::Io(format!(
                "the two sides computed different vectors: lowest cosine {lowest:.6} over the \
                 first {} chunks",
                peer.first.len().min(vectors.len())
            )));
        }
        peer_torch = Some(peer.torch);
    }
    println!();
    println!(
        "{} (candle): median {:.1} chunks/s",
        embedder.id(),
        median(&mut ours)
    );
    if let Some(torch) = peer_torch {
        println!(
            "sentence-transformers (torch {torch}): median {:.1} chunks/s; median ratio {:.2}; \
             the vectors agree (cosine >= 0.9999 over the first chunks of every round)",
            median(&mut theirs),
            median(&mut ratios)
        );
    }
    Ok(())
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        count if count % 2 == 1 => values[count / 2],
        count => (values[count / 2 - 1] + values[count / 2]) / 2.0,
    }
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
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

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
