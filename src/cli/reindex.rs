//! `deeprecall reindex`: re-embeds a collection with the configured embedder, on the store
//! directly, while servers keep serving it.

use std::sync::Arc;

use clap::Args;

use super::{CliError, ConfigArgs};
use crate::server::retrieval::{build_embedder, open_store};
use crate::store::DEFAULT_COLLECTION;

/// Documents embedded per batch when none is configured.
const DEFAULT_BATCH: usize = 256;

#[derive(Debug, Args)]
pub(super) struct ReindexArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Collection to re-embed (default: default).
    #[arg(long)]
    collection: Option<String>,
    /// Documents embedded and staged per batch: what a stopped run redoes at most.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch_size: usize,
}

pub(super) async fn reindex(args: ReindexArgs) -> Result<(), CliError> {
    let config = args.config.load(Vec::new())?;
    let failed = |error: &dyn std::fmt::Display| CliError::Io(error.to_string());
    let embedder = build_embedder(&config, None).map_err(|error| failed(&error))?;
    let store = open_store(&config, embedder, 1)
        .await
        .map_err(|error| failed(&error))?;
    let collection = args
        .collection
        .unwrap_or_else(|| DEFAULT_COLLECTION.to_string());
    let progress = super::transfer::progress_bar(None, "documents");
    let shown = progress.clone();
    let report = store
        .reindex(
            &collection,
            args.batch_size,
            Arc::new(move |done, total| {
                shown.set_length(total);
                shown.set_position(done);
            }),
        )
        .await
        .map_err(|error| failed(&error))?;
    progress.finish_and_clear();
    if report.previous_embedder == report.embedder {
        println!(
            "collection {collection:?} is already embedded with {}: nothing to do",
            report.embedder
        );
    } else {
        println!(
            "collection {collection:?}: {} documents now embedded with {} (was {}); {} embedded \
             by this run",
            report.documents, report.embedder, report.previous_embedder, report.embedded
        );
    }
    Ok(())
}
