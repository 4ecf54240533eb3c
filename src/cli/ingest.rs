//! `deeprecall ingest`: reads text and Markdown files, cuts them into chunks on paragraph and
//! sentence boundaries, and sends them over gRPC in batches.
//!
//! A chunk's id is `<path relative to the argument>#<chunk number>`, so ingesting the same file
//! again replaces its chunks. Its metadata holds `source` (that path) and `chunk` (the number).

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::{CliError, ClientArgs};
use crate::api::{DeepRecallClient, pb};

/// File extensions ingested; everything else is skipped and counted.
const EXTENSIONS: &[&str] = &["txt", "text", "md", "markdown"];

/// Arguments of `deeprecall ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files or directories (read recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
    /// Collection to add to (default: default).
    #[arg(long)]
    collection: Option<String>,
    /// Largest chunk, in characters; at least 100.
    #[arg(long, default_value_t = 1200)]
    chunk_size: usize,
    /// Chunks per AddDocuments call.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

/// A piece of a file, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Document id.
    pub id: String,
    /// Text.
    pub content: String,
    /// `source` and `chunk`.
    pub metadata: Map<String, Value>,
}

/// Summary of an ingest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Files read.
    pub files: usize,
    /// Files skipped (not text or Markdown, or unreadable).
    pub skipped: usize,
    /// Chunks sent.
    pub chunks: usize,
}

pub(super) async fn run(args: IngestArgs) -> Result<(), CliError> {
    if args.chunk_size < 100 {
        return Err(CliError::Usage("--chunk-size must be at least 100".into()));
    }
    if args.batch_size == 0 {
        return Err(CliError::Usage("--batch-size must be at least 1".into()));
    }
    let mut client = args.client.connect().await?;
    let collection = args.collection.unwrap_or_default();
    let summary = ingest_paths(
        &mut client,
        &args.paths,
        &collection,
        args.chunk_size,
        args.batch_size,
        true,
    )
    .await?;
    println!(
        "ingested {} chunk(s) from {} file(s) into {:?}{}",
        summary.chunks,
        summary.files,
        if collection.is_empty() {
            "default"
        } else {
            &collection
        },
        if summary.skipped > 0 {
            format!(
                "; skipped {} file(s) that are not text or Markdown",
                summary.skipped
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Reads, chunks and sends every file under `paths`.
pub async fn ingest_paths<T>(
    client: &mut DeepRecallClient<T>,
    paths: &[PathBuf],
    collection: &str,
    chunk_size: usize,
    batch_size: usize,
    show_progress: bool,
) -> Result<IngestSummary, CliError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (chunks, mut summary) = read_chunks(paths, chunk_size)?;

    let progress = if show_progress {
        ProgressBar::new(chunks.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for batch in chunks.chunks(batch_size) {
        let documents = batch
            .iter()
            .map(|chunk| pb::Document {
                id: chunk.id.clone(),
                content: chunk.content.clone(),
                metadata: Some(crate::api::convert::json_to_struct(chunk.metadata.clone())),
            })
            .collect();
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: collection.to_string(),
                documents,
            })
            .await?;
        summary.chunks += batch.len();
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    Ok(summary)
}

fn has_text_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| EXTENSIONS.contains(&extension.to_lowercase().as_str()))
}

/// Returns the files under `root` (or `root` itself), sorted so ingests are repeatable.
fn collect_files(root: &Path) -> Result<Vec<PathBuf>, CliError> {
    let metadata = std::fs::metadata(root)
        .map_err(|error| CliError::Io(format!("cannot read {}: {error}", root.display())))?;
    if !metadata.is_dir() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|error| CliError::Io(format!("cannot read {}: {error}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_hidden = entry.file_name().to_string_lossy().starts_with('.');
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && !is_hidden => pending.push(path),
                Ok(kind) if kind.is_file() && !is_hidden => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every text and Markdown file under `paths` and cuts it into chunks; files that are
/// not text, or cannot be read, are skipped and counted.
pub fn read_chunks(
    paths: &[PathBuf],
    chunk_size: usize,
) -> Result<(Vec<Chunk>, IngestSummary), CliError> {
    let mut summary = IngestSummary::default();
    let mut chunks = Vec::new();
    for root in paths {
        let files = collect_files(root)?;
        let base = if root.is_dir() {
            root.as_path()
        } else {
            root.parent().unwrap_or(Path::new(""))
        };
        for file in files {
            if !has_text_extension(&file) {
                summary.skipped += 1;
                continue;
            }
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("skipping {}: {error}", file.display());
                    summary.skipped += 1;
                    continue;
                }
            };
            summary.files += 1;
            let source = file
                .strip_prefix(base)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            chunks.extend(chunk_file(&source, &text, chunk_size));
        }
    }
    Ok((chunks, summary))
}

/// Cuts a file into chunks of at most `chunk_size` characters: whole paragraphs where they
/// fit, else whole sentences, else (a single huge sentence) hard cuts.
pub fn chunk_file(source: &str, text: &str, chunk_size: usize) -> Vec<Chunk> {
    let mut pieces: Vec<String> = Vec::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if paragraph.chars().count() <= chunk_size {
            pieces.push(paragraph.to_string());
            continue;
        }
        for sentence in crate::text::sentences(paragraph) {
            pieces.extend(hard_split(sentence, chunk_size));
        }
    }

    let mut contents: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        let needed = current.chars().count() + piece.chars().count() + 2;
        if !current.is_empty() && needed > chunk_size {
            contents.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(&piece);
    }
    if !current.trim().is_empty() {
        contents.push(current);
    }

    contents
        .into_iter()
        .enumerate()
        .map(|(index, content)| {
            let mut metadata = Map::new();
            metadata.insert("source".into(), Value::from(source));
            metadata.insert("chunk".into(), Value::from(index));
            Chunk {
                id: format!("{source}#{index}"),
                content,
                metadata,
            }
        })
        .collect()
}

/// Cuts every `chunk_size` characters. A cut can leave a part of only spaces (a run of them
/// as long as a chunk); it is dropped, since the server refuses a blank document.
fn hard_split(sentence: &str, chunk_size: usize) -> Vec<String> {
    let characters: Vec<char> = sentence.chars().collect();
    characters
        .chunks(chunk_size.max(1))
        .map(|part| part.iter().collect::<String>())
        .filter(|part| !part.trim().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_one_chunk_with_source_and_number() {
        let chunks = chunk_file("a.md", "# Title\n\nOne paragraph.", 1200);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].id, "a.md#0");
        assert_eq!(chunks[0].metadata["source"], "a.md");
        assert_eq!(chunks[0].metadata["chunk"], 0);
    }

    #[test]
    fn paragraphs_pack_up_to_the_size_and_never_split_when_they_fit() {
        let paragraph = "word ".repeat(30);
        let text = [paragraph.trim(); 5].join("\n\n");
        let chunks = chunk_file("b.txt", &text, 320);
        assert_eq!(chunks.len(), 3);
        for chunk in &chunks {
            assert!(chunk.content.chars().count() <= 320);
        }
    }

    #[test]
    fn long_paragraphs_split_on_sentences_and_long_sentences_hard() {
        let sentence = format!("{}.", "a".repeat(150));
        let paragraph = [sentence.as_str(); 4].join(" ");
        let chunks = chunk_file("c.txt", &paragraph, 200);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|chunk| chunk.content.ends_with('.')));

        let huge = "b".repeat(450);
        let chunks = chunk_file("d.txt", &huge, 200);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.content.chars().count()).collect();
        assert_eq!(sizes, vec![200, 200, 50]);
    }

    #[test]
    fn a_hard_cut_never_makes_a_blank_chunk() {
        let chunks = chunk_file("e.txt", "aaaa        bbbb", 4);
        let contents: Vec<&str> = chunks.iter().map(|c| c.content.as_str()).collect();
        assert_eq!(contents, vec!["aaaa", "bbbb"]);
    }

    #[test]
    fn only_text_and_markdown_are_ingested() {
        assert!(has_text_extension(Path::new("x/README.MD")));
        assert!(has_text_extension(Path::new("notes.txt")));
        assert!(!has_text_extension(Path::new("image.png")));
        assert!(!has_text_extension(Path::new("Makefile")));
    }
}
