//! Trace events of a run and the sink that streams them to the caller as they happen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use parking_lot::Mutex;

use super::budget::{BudgetUsage, BudgetWarning};
use super::result::QueryResult;
use crate::telemetry::TraceLog;

/// One trace event, stamped with its place in the stream and the budget used when it happened.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    /// Position in the stream, from 0.
    pub sequence: u32,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Budget used so far.
    pub budget_used: BudgetUsage,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// An iteration began.
    StepStarted {
        /// Iteration, from 1.
        step: u32,
    },
    /// The root model answered.
    LlmCall(ModelCallRecord),
    /// A search ran.
    Search(SearchRecord),
    /// The sub-model answered one or more prompts.
    SubLlmCall(SubModelCallRecord),
    /// An iteration ended.
    StepCompleted {
        /// Iteration, from 1.
        step: u32,
        /// Tools run, in the model's order.
        tools: Vec<String>,
        /// Duration of the iteration.
        latency: Duration,
    },
    /// A limit is near or at its end.
    BudgetWarning(BudgetWarning),
    /// A piece of the final answer.
    AnswerDelta(String),
    /// The final result; always last.
    Result(Box<QueryResult>),
}

/// A root model call.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCallRecord {
    /// Iteration.
    pub step: u32,
    /// Model name.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Duration.
    pub latency: Duration,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Tools requested.
    pub tool_calls: Vec<String>,
}

/// A search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRecord {
    /// Iteration.
    pub step: u32,
    /// Collection searched.
    pub collection: String,
    /// Search text.
    pub query: String,
    /// Effective filters (caller's and model's together).
    pub filters: Map<String, Value>,
    /// Hits asked for.
    pub top_k: u32,
    /// `(id, score)` of each hit, best first.
    pub hits: Vec<(String, f64)>,
    /// Duration.
    pub latency: Duration,
    /// Whether the hits came from a cache.
    pub cache_hit: bool,
    /// The reranker that ordered the hits, if one is configured.
    pub reranker: Option<String>,
    /// The reranker's score of each hit, in the order of `hits`; empty when no reranker ran.
    pub rerank_scores: Vec<f64>,
    /// The reranker failed, and the hits keep the fused order.
    pub rerank_failed: bool,
}

/// A sub-model call, possibly of several prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct SubModelCallRecord {
    /// Iteration.
    pub step: u32,
    /// Model name.
    pub model: String,
    /// Prompts in the call.
    pub prompts: u32,
    /// Prompts that failed.
    pub failed: u32,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Duration.
    pub latency: Duration,
    /// Cost in US dollars.
    pub cost_usd: f64,
}

/// Where a run's events go. Cloning shares the sequence counter, so events emitted from
/// concurrent tool calls still get unique, increasing sequence numbers.
#[derive(Debug, Clone)]
pub struct EventSink {
    sender: Option<mpsc::Sender<TraceEvent>>,
    started: Instant,
    sequence: Arc<Mutex<u32>>,
    closed: Arc<AtomicBool>,
    /// The trace log and the query id its lines carry.
    log: Option<(TraceLog, Arc<str>)>,
}

impl EventSink {
    /// Returns a sink that streams into a channel and a receiver for it. The channel is bounded:
    /// a slow reader slows the run rather than growing memory.
    pub fn channel(capacity: usize, started: Instant) -> (EventSink, mpsc::Receiver<TraceEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let sink = EventSink {
            sender: Some(sender),
            started,
            sequence: Arc::new(Mutex::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            log: None,
        };
        (sink, receiver)
    }

    /// Returns a sink that drops every event (batch items report only their result).
    pub fn discard(started: Instant) -> EventSink {
        EventSink {
            sender: None,
            started,
            sequence: Arc::new(Mutex::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            log: None,
        }
    }

    /// Returns the sink writing every event to `log` as well, tagged with `query_id`, whether
    /// or not a caller still reads them.
    pub fn logged_to(mut self, log: TraceLog, query_id: &str) -> EventSink {
        self.log = Some((log, Arc::from(query_id)));
        self
    }

    /// Returns true once the receiver has gone away.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
            || self.sender.as_ref().is_some_and(mpsc::Sender::is_closed)
    }

    /// Sends one event, waiting for room in the channel. A gone receiver is remembered, not an
    /// error: the run notices through [`EventSink::is_closed`] and its cancellation token.
    pub async fn emit(&self, budget_used: BudgetUsage, kind: EventKind) {
        let permit = match &self.sender {
            None => None,
            Some(sender) => match sender.reserve().await {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.closed.store(true, Ordering::Relaxed);
                    None
                }
            },
        };
        if permit.is_none() && self.log.is_none() {
            return;
        }
        // Numbering and sending under one lock keeps sequence numbers in delivery order when
        // concurrent tool calls emit at once.
        let mut sequence = self.sequence.lock();
        let event = TraceEvent {
            sequence: *sequence,
            elapsed: self.started.elapsed(),
            budget_used,
            kind,
        };
        *sequence += 1;
        if let Some((log, query_id)) = &self.log {
            // Never waits: a log that cannot keep up drops lines and counts them.
            log.record_event(query_id, &event);
        }
        if let Some(permit) = permit {
            permit.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sink_is_closed_once_its_reader_leaves_and_numbers_what_it_sends() {
        let (sink, mut receiver) = EventSink::channel(4, Instant::now());
        assert!(!sink.is_closed());
        sink.emit(BudgetUsage::default(), EventKind::StepStarted { step: 1 })
            .await;
        sink.clone()
            .emit(BudgetUsage::default(), EventKind::StepStarted { step: 2 })
            .await;
        let first = receiver.recv().await.expect("first event");
        let second = receiver.recv().await.expect("second event");
        assert_eq!((first.sequence, second.sequence), (0, 1));

        drop(receiver);
        // Seen at once, before anything else is sent.
        assert!(sink.is_closed());
        // Sending to a gone reader neither waits nor fails, and is remembered.
        sink.emit(BudgetUsage::default(), EventKind::StepStarted { step: 3 })
            .await;
        assert!(sink.is_closed());
    }

    #[tokio::test]
    async fn a_discarding_sink_is_never_closed() {
        let sink = EventSink::discard(Instant::now());
        sink.emit(BudgetUsage::default(), EventKind::StepStarted { step: 1 })
            .await;
        assert!(!sink.is_closed());
    }
}
