//! The single-pass mode: plain retrieval-augmented generation on the same engine, model and
//! store as the loop. One search for the question as asked, then one model call that sees the
//! hits as the answer of that search and may only submit. It exists so that `deeprecall eval
//! --mode both` can show what the loop buys; it shares the loop's budget checks, events,
//! citation validation and partial answers, and never makes a second model call (a run that
//! cannot make its one call ends partial, its answer stitched from the hits).

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::{Outcome, Run, estimate_prompt_tokens, estimate_tool_tokens};
use crate::engine::prompts::{self, SEARCH_DB};
use crate::engine::{EngineError, EventKind, QueryResult};
use crate::llm::{ChatRequest, Message, ToolCall};
use crate::telemetry::spans;

/// Id of the search call shown to the model, as if it had made it.
const SEARCH_CALL_ID: &str = "single_pass_search";

impl Run<'_> {
    /// Runs one search and one answer call, and returns the result, which has also been
    /// emitted as the last event. Fails only when the model fails and the search found nothing.
    pub(in crate::engine) async fn execute_single_pass(self) -> Result<QueryResult, EngineError> {
        let outcome = self.single_pass().await?;
        Ok(self.finish(outcome).await)
    }

    async fn single_pass(&self) -> Result<Outcome, EngineError> {
        if let Some(reason) = self.cancel_reason() {
            return Ok(Outcome::Stopped {
                exhausted: None,
                reason,
            });
        }
        const STEP: u32 = 1;
        let request = &self.prepared.request;
        let iteration = spans::iteration(STEP);
        self.emit(EventKind::StepStarted { step: STEP }).await;
        let step_started = Instant::now();

        let arguments = serde_json::json!({ "query": request.query }).to_string();
        let searched = self
            .search(STEP, request.query.clone(), None, None)
            .instrument(iteration.clone())
            .await;
        self.trace_step(STEP, SEARCH_DB, &arguments, &searched.summary);
        if let Some(resource) = searched.exhausted {
            let budget = self.budget.lock();
            return Ok(self.exhausted(resource, &budget));
        }
        if searched.failed {
            return Ok(Outcome::Stopped {
                exhausted: None,
                reason: searched.summary,
            });
        }

        // The model sees the search as one it made itself: every backend reads hits in that
        // form, and with `submit` the only tool on offer it has to answer.
        let messages = Arc::new(vec![
            Message::system(prompts::single_pass_system_prompt(&request.root_prompt)),
            Message::user(prompts::user_message(
                &request.query,
                &self.prepared.collection.name,
                self.prepared.collection.document_count,
                &request.context_prefix,
            )),
            Message::assistant(
                String::new(),
                vec![ToolCall {
                    id: SEARCH_CALL_ID.to_string(),
                    name: SEARCH_DB.to_string(),
                    arguments,
                }],
            ),
            Message::tool_result(SEARCH_CALL_ID, searched.content),
        ]);
        let tools = prompts::single_pass_tools();
        let model = &self.inner.model;
        let prompt_tokens = estimate_prompt_tokens(&messages) + estimate_tool_tokens(&tools);
        let price = self.inner.prices.per_token(model.name());
        let (max_tokens, deadline) = {
            let mut budget = self.budget.lock();
            let planned = budget.start_iteration(
                prompt_tokens,
                price,
                self.inner.config.max_completion_tokens,
            );
            match planned {
                Ok(cap) => (cap, budget.deadline()),
                Err(resource) => return Ok(self.exhausted(resource, &budget)),
            }
        };
        let call = ChatRequest {
            messages,
            tools,
            max_tokens: Some(max_tokens),
            deadline,
        };
        let response = match self.call_root(STEP, call, &iteration).await? {
            Ok(response) => response,
            Err(ended) => return Ok(ended),
        };
        let mut tools = vec![SEARCH_DB.to_string()];
        tools.extend(response.tool_calls.iter().map(|call| call.name.clone()));
        spans::record_iteration_tools(&iteration, &tools);
        self.emit(EventKind::StepCompleted {
            step: STEP,
            tools,
            latency: step_started.elapsed(),
        })
        .await;

        if let Some(outcome) = self.submitted(STEP, &response.tool_calls) {
            return Ok(outcome);
        }
        if response.tool_calls.is_empty() && !response.content.trim().is_empty() {
            self.trace_step(STEP, "answer", "", "plain-text answer");
            return Ok(Outcome::Answer {
                text: response.content,
                claimed_citations: Vec::new(),
                certainty: None,
            });
        }
        Ok(Outcome::Stopped {
            exhausted: None,
            reason: "the model's single-pass reply held no answer".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use tokio_util::sync::CancellationToken;

    use crate::cache::{CacheLevel, MemoryCache};
    use crate::engine::{
        BudgetLimits, Engine, EngineConfig, EngineParts, EventKind, EventSink, QueryMode,
        QueryRequest, QueryResult,
    };
    use crate::llm::scripted::{ScriptedModel, ScriptedReply};
    use crate::llm::{ChatModel, LlmError};
    use crate::store::{
        CollectionInfo, DocumentStore, Hit, NewDocument, SearchRequest, StoreError, StoredDocument,
        WriteOutcome,
    };

    /// A `default` collection of one document that every search finds; searches are counted.
    #[derive(Debug, Default)]
    struct OneDocument {
        searches: Mutex<usize>,
    }

    #[async_trait]
    impl DocumentStore for OneDocument {
        fn embedder_id(&self) -> String {
            "test-embedder".into()
        }

        async fn add_documents(
            &self,
            _collection: &str,
            _documents: Vec<NewDocument>,
        ) -> Result<WriteOutcome, StoreError> {
            unimplemented!("the single-pass tests do not write")
        }

        async fn delete_documents(
            &self,
            _collection: &str,
            _ids: Vec<String>,
        ) -> Result<WriteOutcome, StoreError> {
            unimplemented!("the single-pass tests do not write")
        }

        async fn search(&self, _request: SearchRequest) -> Result<Vec<Hit>, StoreError> {
            *self.searches.lock() += 1;
            Ok(vec![Hit {
                id: "klaxon".into(),
                content: "Klaxon Industries is headquartered in Porto.".into(),
                metadata: Default::default(),
                score: 1.0,
            }])
        }

        async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
            Ok((name == "default").then(|| CollectionInfo {
                name: name.to_string(),
                document_count: 1,
                version: 1,
            }))
        }

        async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
            Ok(self.collection("default").await?.into_iter().collect())
        }

        async fn delete_collection(
            &self,
            _name: &str,
        ) -> Result<Option<CollectionInfo>, StoreError> {
            unimplemented!("the single-pass tests do not write")
        }

        async fn list_documents(
            &self,
            _collection: &str,
            _after: Option<String>,
            _limit: usize,
        ) -> Result<Vec<StoredDocument>, StoreError> {
            unimplemented!("the single-pass tests only search")
        }

        async fn get_documents(
            &self,
            _collection: &str,
            _ids: Vec<String>,
        ) -> Result<Vec<StoredDocument>, StoreError> {
            unimplemented!("the single-pass tests only search")
        }
    }

    fn level(name: &'static str) -> CacheLevel {
        CacheLevel {
            name,
            cache: Arc::new(MemoryCache::new(Default::default())),
            ttl: Duration::from_secs(60),
        }
    }

    async fn single_pass(
        store: Arc<OneDocument>,
        model: Arc<ScriptedModel>,
        budget: BudgetLimits,
    ) -> (QueryResult, Vec<EventKind>) {
        let model: Arc<dyn ChatModel> = model;
        let engine = Engine::new(
            EngineParts {
                store,
                sub_model: Arc::clone(&model),
                model,
                prices: Default::default(),
                results: level("result"),
                searches: level("search"),
                rerank: None,
            },
            EngineConfig::default(),
        );
        let request = QueryRequest {
            query: "Where is Klaxon Industries headquartered?".into(),
            budget,
            mode: QueryMode::SinglePass,
            ..QueryRequest::default()
        };
        let prepared = engine.prepare(request, None).await.expect("prepared");
        let (sink, mut events) = EventSink::channel(64, prepared.started);
        let result = engine
            .run(prepared, sink, CancellationToken::new())
            .await
            .expect("a result");
        let mut kinds = Vec::new();
        while let Ok(event) = events.try_recv() {
            kinds.push(event.kind);
        }
        (result, kinds)
    }

    #[tokio::test]
    async fn one_search_and_one_call_answer_a_single_pass() {
        let store = Arc::new(OneDocument::default());
        let model = Arc::new(ScriptedModel::new(
            "scripted",
            Duration::ZERO,
            vec![ScriptedModel::tool(
                "submit",
                serde_json::json!({"answer": "Porto [klaxon]", "citations": ["klaxon"]}),
            )],
        ));
        let (result, events) = single_pass(
            Arc::clone(&store),
            Arc::clone(&model),
            BudgetLimits::default(),
        )
        .await;
        assert_eq!(result.answer, "Porto [klaxon]");
        assert_eq!(result.citations, vec!["klaxon"]);
        assert!(!result.partial);
        assert_eq!(
            (result.usage.llm_calls(), result.usage.search_calls),
            (1, 1)
        );
        assert_eq!(*store.searches.lock(), 1);
        let requests = model.requests();
        assert_eq!(requests.len(), 1);
        let offered: Vec<&str> = requests[0].tools.iter().map(|tool| tool.name).collect();
        assert_eq!(offered, vec!["submit"]);
        let order: Vec<&str> = events
            .iter()
            .map(|kind| match kind {
                EventKind::StepStarted { .. } => "step",
                EventKind::Search(_) => "search",
                EventKind::LlmCall(_) => "call",
                EventKind::StepCompleted { .. } => "done",
                EventKind::Result(_) => "result",
                _ => "other",
            })
            .collect();
        assert_eq!(order, vec!["step", "search", "call", "done", "result"]);
    }

    #[tokio::test]
    async fn a_single_pass_that_cannot_afford_its_call_ends_partial_without_one() {
        let store = Arc::new(OneDocument::default());
        let model = Arc::new(ScriptedModel::new("scripted", Duration::ZERO, Vec::new()));
        let budget = BudgetLimits {
            max_tokens: Some(20),
            ..BudgetLimits::default()
        };
        let (result, _) = single_pass(store, Arc::clone(&model), budget).await;
        assert!(result.partial);
        assert!(model.requests().is_empty());
        assert_eq!(
            (result.usage.llm_calls(), result.usage.search_calls),
            (0, 1)
        );
        assert!(result.answer.contains("Porto"), "{}", result.answer);
    }

    #[tokio::test]
    async fn a_failed_answer_call_is_not_followed_by_a_summing_up_call() {
        let store = Arc::new(OneDocument::default());
        let model = Arc::new(ScriptedModel::new(
            "scripted",
            Duration::ZERO,
            vec![ScriptedReply::Fail(LlmError::Unavailable("down".into()))],
        ));
        let (result, _) = single_pass(store, Arc::clone(&model), BudgetLimits::default()).await;
        assert!(result.partial);
        assert_eq!(model.requests().len(), 1);
        assert!(
            result
                .error
                .as_deref()
                .is_some_and(|error| error.contains("down"))
        );
    }
}
