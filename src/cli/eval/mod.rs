//! `deeprecall eval`: asks a running server every question of a dataset, in the recursive loop,
//! in a single pass, or both side by side, and scores the answers (SQuAD exact match and token
//! F1, answer-contains, citation precision, supporting-document recall), with partial rate,
//! model calls, searches, tokens, cost and latency; optionally graded by a judge model. Writes
//! a Markdown table, and with `--out` the report, every result and the totals; `--compare`
//! shows what changed since an earlier run, `--baseline` fails when a score fell.

pub mod ask;
pub mod compare;
pub mod dataset;
pub mod judge;
pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use self::ask::{AskSettings, Mode, QuestionRecord};
use self::judge::Judge;
use self::report::Summary;
use super::{CliError, ClientArgs};
use crate::config::{self, Backend, Config, ConfigSources};

/// Which ways of answering to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeChoice {
    /// The recursive loop.
    Loop,
    /// One search and one answer call (plain RAG).
    SinglePass,
    /// Both, side by side on the same questions.
    Both,
}

impl ModeChoice {
    fn modes(self) -> Vec<Mode> {
        match self {
            ModeChoice::Loop => vec![Mode::Loop],
            ModeChoice::SinglePass => vec![Mode::SinglePass],
            ModeChoice::Both => vec![Mode::Loop, Mode::SinglePass],
        }
    }
}

/// Arguments of `deeprecall eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// JSONL dataset, one question a line: `question`, `answers`, and optionally
    /// `supporting_ids`, `filters`, `budget`, `id`.
    #[arg(long)]
    pub dataset: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Collection to ask about (default: the server's default).
    #[arg(long)]
    pub collection: Option<String>,
    /// Passages per search (default: the server's).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Questions in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The recursive loop, a single pass (one search, one answer call), or both.
    #[arg(long, value_enum, default_value_t = ModeChoice::Loop)]
    pub mode: ModeChoice,
    /// Folder for report.md, results.jsonl and summary.json (created; files replaced).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder of an earlier run: prints what changed, question by question.
    #[arg(long, value_name = "OLD_DIR")]
    pub compare: Option<PathBuf>,
    /// A summary.json whose quality scores this run must reach; exits non-zero otherwise.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Lets the server answer from its result cache (off: every answer is fresh, so cost and
    /// latency are real).
    #[arg(long)]
    pub use_cache: bool,
    /// Longest wait for one answer, in seconds; sent as the gRPC deadline.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_seconds: f64,
    /// Grades every answer with a judge model, configured as `serve` configures its model:
    /// [llm] in --config, DEEPRECALL_* variables, and the --judge-* flags over them.
    #[arg(long)]
    pub judge: bool,
    /// Configuration file whose [llm] section configures the judge; env DEEPRECALL_CONFIG.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Judge backend: openai or anthropic; else env DEEPRECALL_BACKEND.
    #[arg(long)]
    pub judge_backend: Option<String>,
    /// Judge model; else env DEEPRECALL_MODEL.
    #[arg(long)]
    pub judge_model: Option<String>,
    /// API root of the judge's backend; else env DEEPRECALL_BASE_URL.
    #[arg(long)]
    pub judge_base_url: Option<String>,
    /// File holding the judge's API key; else env DEEPRECALL_LLM_API_KEY.
    #[arg(long)]
    pub judge_api_key_file: Option<PathBuf>,
}

/// Runs `deeprecall eval`.
pub async fn run(args: EvalArgs) -> Result<(), CliError> {
    let questions =
        dataset::load(&args.dataset).map_err(|error| CliError::Usage(error.to_string()))?;
    if args.concurrency == 0 {
        return Err(CliError::Usage("--concurrency must be at least 1".into()));
    }
    let timeout = Duration::try_from_secs_f64(args.timeout_seconds)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| CliError::Usage("--timeout-seconds must be a positive number".into()))?;
    // Everything that can be refused is refused before the first question is asked.
    let old_results = args
        .compare
        .as_deref()
        .map(compare::read_results)
        .transpose()?;
    let baseline: Option<Summary> = match &args.baseline {
        None => None,
        Some(path) => Some(serde_json::from_str(&report::read(path)?).map_err(|error| {
            CliError::Usage(format!("{} is not a summary.json: {error}", path.display()))
        })?),
    };
    let judge = if args.judge {
        Some(build_judge(&args)?)
    } else {
        None
    };
    let client = args.client.connect().await?;
    let settings = AskSettings {
        collection: args.collection.clone().unwrap_or_default(),
        top_k: args.top_k.unwrap_or(0),
        use_cache: args.use_cache,
        timeout,
    };
    let modes = args.mode.modes();

    let progress = ProgressBar::new((questions.len() * modes.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg:12} {bar:40} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut records: Vec<QuestionRecord> = Vec::with_capacity(questions.len() * modes.len());
    // One mode after the other, so that neither one's latency includes the other's load.
    for mode in &modes {
        progress.set_message(mode.name());
        let mut answered: Vec<(usize, QuestionRecord)> =
            futures::stream::iter(questions.iter().enumerate())
                .map(|(index, question)| {
                    let client = client.clone();
                    let settings = &settings;
                    let judge = judge.as_ref();
                    async move {
                        let mut record = ask::ask(client, question, *mode, settings).await;
                        if let Some(judge) = judge {
                            record.judge = Some(
                                judge
                                    .grade(&question.question, &question.answers, &record.answer)
                                    .await,
                            );
                        }
                        (index, record)
                    }
                })
                .buffer_unordered(args.concurrency)
                .inspect(|_| progress.inc(1))
                .collect()
                .await;
        answered.sort_by_key(|(index, _)| *index);
        records.extend(answered.into_iter().map(|(_, record)| record));
    }
    progress.finish_and_clear();

    let summary = Summary {
        dataset: args.dataset.display().to_string(),
        questions: questions.len(),
        collection: settings.collection.clone(),
        modes: modes
            .iter()
            .map(|mode| {
                let of_mode: Vec<&QuestionRecord> = records
                    .iter()
                    .filter(|record| record.mode == *mode)
                    .collect();
                (
                    *mode,
                    report::summarize(&of_mode, judge.as_ref().map(Judge::name)),
                )
            })
            .collect(),
    };
    println!("{}", report::summary_table(&summary));
    if let Some(dir) = &args.out {
        report::write_outputs(dir, &summary, &records)?;
        println!(
            "wrote {}, {} and {}",
            dir.join("report.md").display(),
            dir.join("results.jsonl").display(),
            dir.join("summary.json").display()
        );
    }
    if let (Some(old_dir), Some(old)) = (&args.compare, &old_results) {
        let comparison = compare::compare_markdown(old_dir, old, &records);
        println!("\n{comparison}");
        if let Some(dir) = &args.out {
            report::write(&dir.join("compare.md"), &comparison)?;
        }
    }
    if let Some(baseline) = &baseline {
        let fallen = compare::below_baseline(baseline, &summary)?;
        if !fallen.is_empty() {
            return Err(CliError::Usage(format!(
                "scores fell below the baseline: {}",
                fallen.join("; ")
            )));
        }
        println!("every score is at or above the baseline");
    }
    Ok(())
}

/// Builds the judge from the `[llm]` settings, as `serve` builds its model.
fn build_judge(args: &EvalArgs) -> Result<Judge, CliError> {
    let mut flags = Vec::new();
    let mut flag = |path: &str, value: Option<String>| {
        if let Some(value) = value {
            flags.push((path.to_string(), value));
        }
    };
    flag("llm.backend", args.judge_backend.clone());
    flag("llm.model", args.judge_model.clone());
    flag("llm.base_url", args.judge_base_url.clone());
    flag(
        "llm.api_key_file",
        args.judge_api_key_file
            .as_deref()
            .map(|path: &Path| path.display().to_string()),
    );
    let config = Config::load(&ConfigSources {
        file: args.config.clone(),
        env: config::process_env(),
        flags,
    })?;
    judge_from(&config)
}

/// The judge the configuration's `[llm]` section names; the offline reader cannot grade.
pub fn judge_from(config: &Config) -> Result<Judge, CliError> {
    if config.llm.backend == Backend::Extractive {
        return Err(CliError::Usage(
            "--judge needs a model that can grade: set --judge-backend (openai or anthropic) \
             and --judge-model, or [llm] in the configuration"
                .into(),
        ));
    }
    let models = crate::server::models::build(&config.llm)
        .map_err(|error| CliError::Usage(format!("judge: {error}")))?;
    Ok(Judge::new(Arc::clone(&models.model), models.prices))
}
