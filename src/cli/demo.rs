//! `deeprecall demo`: a server on a throwaway data directory, the bundled handbook ingested,
//! and multi-hop questions asked with the reasoning printed live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::output::TracePrinter;
use super::{CliError, READY_TIMEOUT, connect, ingest, wait_until_serving};
use crate::api::pb;
use crate::config::Config;
use crate::server;

/// The sample handbook and questions, built into the binary.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/demo_examples.rs"));
}

/// Arguments of `deeprecall demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder holding `handbook/` and `questions.json`; by default the sample handbook built
    /// into the binary.
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Questions to ask, from the top of `questions.json`.
    #[arg(long, default_value_t = 3)]
    questions: usize,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let data_dir = tempfile::tempdir()
        .map_err(|error| CliError::Io(format!("cannot create a data directory: {error}")))?;
    let (examples, origin) = match &args.examples {
        Some(folder) => (folder.clone(), folder.display().to_string()),
        None => (
            unpack_embedded(data_dir.path())?,
            "the handbook built into the binary".to_string(),
        ),
    };
    let questions = super::eval::dataset::load(&examples.join("questions.json"))
        .map_err(|error| CliError::Io(error.to_string()))?;

    let mut config = Config::default();
    config.store.data_dir = data_dir.path().join("data");
    config.server.shutdown_grace_seconds = 1.0;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| CliError::Io(format!("cannot listen: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError::Io(error.to_string()))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(config, listener, async {
        let _ = stopped.await;
    }));

    let endpoint = format!("http://{address}");
    println!("DeepRecall demo: server on {endpoint}, data in a temporary directory\n");
    wait_until_serving(&endpoint, READY_TIMEOUT).await?;
    let mut client = connect(&endpoint, None).await?;
    let summary = ingest::ingest_paths(
        &mut client,
        &[examples.join("handbook")],
        "",
        1200,
        256,
        false,
    )
    .await?;
    println!(
        "ingested {} chunk(s) from {} handbook file(s) of {origin}\n",
        summary.chunks, summary.files
    );

    let mut answered = 0;
    let asked = questions.len().min(args.questions);
    for question in questions.iter().take(asked) {
        println!("════ {}", question.question);
        let mut stream = client
            .query(pb::QueryRequest {
                query: question.question.clone(),
                ..pb::QueryRequest::default()
            })
            .await?
            .into_inner();
        let mut printer = TracePrinter::new(false);
        let mut answer = String::new();
        while let Some(event) = stream.message().await? {
            if let Some(pb::query_event::Event::Result(result)) = &event.event {
                answer = result.answer.clone();
            }
            printer.print(&event);
        }
        let found = question
            .answers
            .iter()
            .any(|accepted| super::eval::metrics::contains_score(&answer, accepted) > 0.0);
        answered += usize::from(found);
        println!(
            "expected {:?}: {}\n",
            question.answers[0],
            if found { "found" } else { "not found" }
        );
    }
    println!("{answered} of {asked} answers contain the expected fact.");

    let _ = stop.send(());
    if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(10), server).await {
        return Err(error.into());
    }
    Ok(())
}

/// Writes the built-in handbook and questions under `dir` as an examples folder; returns it.
fn unpack_embedded(dir: &Path) -> Result<PathBuf, CliError> {
    let examples = dir.join("examples");
    let handbook = examples.join("handbook");
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text)
            .map_err(|error| CliError::Io(format!("cannot write {}: {error}", path.display())))
    };
    std::fs::create_dir_all(&handbook)
        .map_err(|error| CliError::Io(format!("cannot create {}: {error}", handbook.display())))?;
    for (name, text) in embedded::HANDBOOK {
        write(handbook.join(name), text)?;
    }
    write(examples.join("questions.json"), embedded::QUESTIONS)?;
    Ok(examples)
}
