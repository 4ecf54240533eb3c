//! `deeprecall export` and `deeprecall import`: a collection as JSON Lines, one document a line
//! (`{"id": …, "content": …, "metadata": {…}}`), to move it between stores.
//!
//! Export reads the store the configuration names directly, a page at a time in id order, so
//! its memory stays bounded by a page; reading is safe while servers run on the same store.
//! Import writes through a running server's AddDocuments, so that the server's caches,
//! content versions and (embedded store) in-memory index stay right; it reads a batch of lines
//! at a time. Both resume by id: `export --after ID` continues after the last id written, and
//! `import --skip-existing` asks the server which ids of each batch it already has.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CliError, ClientArgs, ConfigArgs};
use crate::api::pb;
use crate::store::{DEFAULT_COLLECTION, DocumentStore};

/// Documents read from the store per page.
const EXPORT_PAGE: usize = 500;

/// Arguments of `deeprecall export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Collection to export (default: default).
    #[arg(long)]
    collection: Option<String>,
    /// Starts after this id (byte order), to resume an export that stopped.
    #[arg(long)]
    after: Option<String>,
    /// Writes here instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// Arguments of `deeprecall import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Collection to import into (default: default).
    #[arg(long)]
    collection: Option<String>,
    /// Reads this file instead of standard input.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Documents per AddDocuments call.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Skips documents whose id the collection already holds, to resume an import.
    #[arg(long)]
    skip_existing: bool,
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Document id.
    pub id: String,
    /// Document text.
    pub content: String,
    /// Document metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

pub(super) async fn export(args: ExportArgs) -> Result<(), CliError> {
    let config = args.config.load(Vec::new())?;
    let store_error = |error: crate::store::StoreError| CliError::Io(error.to_string());
    // Export reads stored documents only; the embedder is built all the same, because opening
    // a store checks it against the stored vectors.
    let embedder = crate::server::retrieval::build_embedder(&config, None)
        .map_err(|error| CliError::Io(error.to_string()))?;
    let store = crate::server::retrieval::open_store(&config, embedder, 1)
        .await
        .map_err(store_error)?;
    let collection = args
        .collection
        .unwrap_or_else(|| DEFAULT_COLLECTION.to_string());
    let total = store
        .collection(&collection)
        .await
        .map_err(store_error)?
        .ok_or_else(|| CliError::Usage(format!("collection {collection:?} does not exist")))?
        .document_count;
    let progress = progress_bar(Some(total), "documents");
    let sink: Box<dyn Write> =
        match &args.output {
            Some(path) => Box::new(std::fs::File::create(path).map_err(|error| {
                CliError::Io(format!("cannot create {}: {error}", path.display()))
            })?),
            None => Box::new(std::io::stdout().lock()),
        };
    let mut sink = BufWriter::new(sink);
    let written = export_to(
        store.as_ref(),
        &collection,
        args.after,
        &mut sink,
        &progress,
    )
    .await?;
    sink.flush()
        .map_err(|error| CliError::Io(format!("cannot write the export: {error}")))?;
    progress.finish_and_clear();
    eprintln!("exported {written} document(s) from {collection:?}");
    Ok(())
}

/// Writes the collection's documents after `after` as JSON Lines; returns how many.
pub async fn export_to(
    store: &dyn DocumentStore,
    collection: &str,
    mut after: Option<String>,
    sink: &mut impl Write,
    progress: &ProgressBar,
) -> Result<u64, CliError> {
    let mut written = 0u64;
    loop {
        let page = store
            .list_documents(collection, after.take(), EXPORT_PAGE)
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        let Some(last) = page.last() else {
            return Ok(written);
        };
        after = Some(last.id.clone());
        for document in page {
            let line = Line {
                id: document.id,
                content: document.content,
                metadata: document.metadata,
            };
            serde_json::to_writer(&mut *sink, &line)
                .map_err(|error| CliError::Io(format!("cannot write the export: {error}")))?;
            sink.write_all(b"\n")
                .map_err(|error| CliError::Io(format!("cannot write the export: {error}")))?;
            written += 1;
            progress.inc(1);
        }
    }
}

pub(super) async fn import(args: ImportArgs) -> Result<(), CliError> {
    if args.batch_size == 0 {
        return Err(CliError::Usage("--batch-size must be at least 1".into()));
    }
    let mut client = args.client.connect().await?;
    let source: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
            |error| CliError::Io(format!("cannot open {}: {error}", path.display())),
        )?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let collection = args.collection.unwrap_or_default();
    let progress = progress_bar(None, "documents");
    let mut summary = ImportSummary::default();
    let mut batch: Vec<Line> = Vec::with_capacity(args.batch_size);
    for (number, line) in source.lines().enumerate() {
        let line = line.map_err(|error| CliError::Io(format!("cannot read the input: {error}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let document: Line = serde_json::from_str(&line).map_err(|error| {
            CliError::Usage(format!("line {}: not a document: {error}", number + 1))
        })?;
        batch.push(document);
        if batch.len() == args.batch_size {
            send(
                &mut client,
                &collection,
                &mut batch,
                args.skip_existing,
                &mut summary,
            )
            .await?;
            progress.set_position(summary.added + summary.skipped);
        }
    }
    send(
        &mut client,
        &collection,
        &mut batch,
        args.skip_existing,
        &mut summary,
    )
    .await?;
    progress.finish_and_clear();
    eprintln!(
        "imported {} document(s), skipped {} already present",
        summary.added, summary.skipped
    );
    Ok(())
}

/// Counts of an import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ImportSummary {
    added: u64,
    skipped: u64,
}

async fn send(
    client: &mut super::ServerClient,
    collection: &str,
    batch: &mut Vec<Line>,
    skip_existing: bool,
    summary: &mut ImportSummary,
) -> Result<(), CliError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut lines = std::mem::take(batch);
    if skip_existing {
        let asked = pb::GetDocumentsRequest {
            collection: collection.to_string(),
            ids: lines.iter().map(|line| line.id.clone()).collect(),
        };
        match client.get_documents(asked).await {
            Ok(response) => {
                let present: std::collections::HashSet<String> = response
                    .into_inner()
                    .documents
                    .into_iter()
                    .map(|document| document.id)
                    .collect();
                let before = lines.len();
                lines.retain(|line| !present.contains(&line.id));
                summary.skipped += (before - lines.len()) as u64;
            }
            // A collection that does not exist yet holds none of them.
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    let count = lines.len() as u64;
    let documents = lines
        .into_iter()
        .map(|line| pb::Document {
            id: line.id,
            content: line.content,
            metadata: Some(crate::api::convert::json_to_struct(line.metadata)),
        })
        .collect();
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: collection.to_string(),
            documents,
        })
        .await?;
    summary.added += count;
    Ok(())
}

pub(super) fn progress_bar(total: Option<u64>, unit: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (progress, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            format!("{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed}}"),
        ),
        None => (
            ProgressBar::new_spinner(),
            format!("{{spinner}} {{pos}} {unit} {{elapsed}}"),
        ),
    };
    progress.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress
}
