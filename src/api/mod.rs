//! The gRPC service: each handler validates, converts, calls the engine and converts back.

pub mod convert;
mod deadline;
pub mod status;
pub mod stream;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::access::{AccessError, Caller, FrontDoor};
use crate::engine::{Engine, EngineError, EventSink, PreparedQuery};
use crate::telemetry::{self, spans};
use stream::{ResponseStream, drive_stream, spawn_stream};

/// Generated protobuf types and service stubs.
pub mod pb {
    tonic::include_proto!("deeprecall.v1");

    /// Encoded file descriptor set of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("deeprecall_descriptor");
}

pub use pb::deep_recall_client::DeepRecallClient;
pub use pb::deep_recall_server::DeepRecallServer;

/// Whether the service takes calls: not before the engine is ready (the store is still
/// opening), and not once the server is draining for shutdown. Shared with the server's
/// start-up and shutdown sequences, which also learn from it when the calls it admitted have
/// all ended.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    engine: Arc<OnceLock<Engine>>,
    draining: Arc<AtomicBool>,
    calls: Arc<OpenCalls>,
}

/// Calls admitted and not yet ended.
#[derive(Debug, Default)]
struct OpenCalls {
    count: AtomicUsize,
    none_left: Notify,
}

/// One admitted call, counted until it is dropped: with the handler for a unary call, with the
/// response stream's work for a streaming one.
#[derive(Debug)]
pub struct OpenCall(Arc<OpenCalls>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Admission {
    /// Starts admitting calls to `engine`.
    pub fn open(&self, engine: Engine) {
        if self.engine.set(engine).is_err() {
            tracing::warn!("the engine was already open; keeping the first one");
        }
    }

    /// Refuses every new call from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves once no admitted call is open: every unary call has answered and every stream
    /// has ended or lost its caller.
    pub async fn calls_ended(&self) {
        loop {
            let notified = self.calls.none_left.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read, so an end in between is not missed.
            notified.as_mut().enable();
            if self.calls.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Whether calls are taken now: the engine is open and the server is not draining. Health
    /// reports SERVING exactly then.
    pub fn is_ready(&self) -> bool {
        self.engine.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    /// Admits one call over any protocol: the engine, and the call's count, held until the
    /// returned [`OpenCall`] is dropped.
    pub fn enter(&self) -> Result<(Engine, OpenCall), NotAdmitted> {
        // Counted before the check: shutdown sets `draining` and then waits for the count, so
        // a call that passed the check is always waited for.
        self.calls.count.fetch_add(1, Ordering::SeqCst);
        let call = OpenCall(Arc::clone(&self.calls));
        if self.draining.load(Ordering::SeqCst) {
            return Err(NotAdmitted::Draining);
        }
        let engine = self.engine.get().cloned().ok_or(NotAdmitted::Starting)?;
        Ok((engine, call))
    }

    fn admit(&self) -> Result<(Engine, OpenCall), Status> {
        self.enter().map_err(|refusal| match refusal {
            NotAdmitted::Draining => EngineError::ShuttingDown.into(),
            NotAdmitted::Starting => Status::unavailable(NotAdmitted::Starting.to_string()),
        })
    }
}

/// Why [`Admission::enter`] refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// The store is still opening.
    #[error("the server is starting: the store is still opening")]
    Starting,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Draining,
}

/// The DeepRecall gRPC service.
#[derive(Debug, Clone)]
pub struct DeepRecallService {
    admission: Admission,
    door: Arc<FrontDoor>,
    started: Instant,
}

impl DeepRecallService {
    /// Creates the service; it answers once `admission` is opened with an engine. Calls reach
    /// it through `door`'s layer, which gives each its [`Caller`].
    pub fn new(admission: Admission, door: Arc<FrontDoor>) -> Self {
        DeepRecallService {
            admission,
            door,
            started: Instant::now(),
        }
    }
}

/// The caller the front door admitted. Every call passes the front door, so a call without one
/// is a wiring fault, refused rather than let in unchecked.
fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| AccessError::NoIdentity.into())
}

#[tonic::async_trait]
impl pb::deep_recall_server::DeepRecall for DeepRecallService {
    type QueryStream = ResponseStream<pb::QueryEvent>;
    type QueryBatchStream = ResponseStream<pb::QueryBatchItem>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let (engine, open_call) = self.admission.admit()?;
        let caller = caller_of(&request)?;
        caller.check_collection(&request.get_ref().collection)?;
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let parent = telemetry::extract_parent(request.metadata().as_ref());
        let query = convert::query_request(request.into_inner())?;
        let mut prepared = engine.prepare(query, deadline).await?;
        prepared.account = Arc::clone(&caller.name);
        prepared.span = spans::query("Query", &prepared.query_id, &prepared.collection.name);
        telemetry::set_parent(&prepared.span, parent);

        let cancel = CancellationToken::new();
        let run_cancel = cancel.clone();
        let buffer = engine.config().event_buffer;
        let (sink, events) = EventSink::channel(buffer, prepared.started);
        let run = async move {
            let _open_call = open_call;
            engine
                .run(prepared, sink, run_cancel)
                .await
                .map(drop)
                .map_err(Status::from)
        };
        Ok(Response::new(drive_stream(
            Box::pin(run),
            events,
            convert::event,
            cancel,
        )))
    }

    async fn query_batch(
        &self,
        request: Request<pb::QueryBatchRequest>,
    ) -> Result<Response<Self::QueryBatchStream>, Status> {
        let (engine, open_call) = self.admission.admit()?;
        let caller = caller_of(&request)?;
        let deadline = deadline::from_metadata(request.metadata(), Instant::now());
        let parent = telemetry::extract_parent(request.metadata().as_ref());
        let pb::QueryBatchRequest {
            queries,
            max_concurrency,
        } = request.into_inner();
        // A batch touching a collection beyond the key's is refused whole, before it is charged.
        for (index, query) in queries.iter().enumerate() {
            caller
                .check_collection(&query.collection)
                .map_err(|error| {
                    status::bounded(Status::permission_denied(format!(
                        "queries[{index}]: {error}"
                    )))
                })?;
        }
        let concurrency = engine.validate_batch(queries.len(), max_concurrency as usize)?;
        self.door.charge_batch(&caller, queries.len()).await?;
        // The call holds one query slot; items beyond it run on slots free right now, held
        // until the batch ends. A batch so counts against `max_concurrent_queries` like the
        // queries it runs, and on a busy server runs narrower instead of waiting.
        let extra_slots = self
            .door
            .slots()
            .take_free(concurrency.min(queries.len()).saturating_sub(1));
        let concurrency = 1 + extra_slots.len();
        let items = queries.into_iter().map(convert::query_request).collect();

        let cancel = CancellationToken::new();
        // Each item is a query span of its own, continuing the caller's trace.
        let span_of = Arc::new(move |prepared: &PreparedQuery| {
            let span = spans::query("QueryBatch", &prepared.query_id, &prepared.collection.name);
            telemetry::set_parent(&span, parent.clone());
            span
        });
        let results = engine.query_batch(
            items,
            Arc::clone(&caller.name),
            span_of,
            concurrency,
            deadline,
            cancel.clone(),
        );
        let stream = spawn_stream(concurrency, cancel, move |sender| async move {
            // Given back after the remaining runs, declared later, are dropped.
            let _open_call = open_call;
            let _extra_slots = extra_slots;
            let mut results = std::pin::pin!(results);
            while let Some((index, outcome)) = results.next().await {
                let outcome = match outcome {
                    Ok(result) => {
                        pb::query_batch_item::Outcome::Result(convert::query_result(result))
                    }
                    Err(error) => {
                        let status = Status::from(error);
                        pb::query_batch_item::Outcome::Error(pb::QueryError {
                            code: status::code_number(status.code()),
                            message: status.message().to_string(),
                        })
                    }
                };
                let item = pb::QueryBatchItem {
                    index: index as u32,
                    outcome: Some(outcome),
                };
                // A gone caller ends the loop, which drops the remaining runs.
                if sender.send(Ok(item)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn add_documents(
        &self,
        request: Request<pb::AddDocumentsRequest>,
    ) -> Result<Response<pb::AddDocumentsResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        caller_of(&request)?.check_collection(&request.get_ref().collection)?;
        let pb::AddDocumentsRequest {
            collection,
            documents,
        } = request.into_inner();
        let documents = convert::documents(documents)?;
        let outcome = engine
            .add_documents(non_empty(&collection), documents)
            .await?;
        Ok(Response::new(convert::add_documents_response(outcome)))
    }

    async fn delete_documents(
        &self,
        request: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        caller_of(&request)?.check_collection(&request.get_ref().collection)?;
        let pb::DeleteDocumentsRequest { collection, ids } = request.into_inner();
        let outcome = engine.delete_documents(non_empty(&collection), ids).await?;
        Ok(Response::new(convert::delete_documents_response(outcome)))
    }

    async fn clear_cache(
        &self,
        request: Request<pb::ClearCacheRequest>,
    ) -> Result<Response<pb::ClearCacheResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        caller_of(&request)?.check_clear(&request.get_ref().collection)?;
        let pb::ClearCacheRequest { collection } = request.into_inner();
        let entries_removed = engine.clear_cache(non_empty(&collection)).await?;
        Ok(Response::new(pb::ClearCacheResponse { entries_removed }))
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        let caller = caller_of(&request)?;
        let pb::ListCollectionsRequest {} = request.into_inner();
        let mut collections = engine.list_collections().await?;
        collections.retain(|collection| caller.may_see(&collection.name));
        Ok(Response::new(convert::list_collections_response(
            collections,
        )))
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        let caller = caller_of(&request)?;
        let pb::DeleteCollectionRequest { collection } = request.into_inner();
        if !collection.is_empty() {
            caller.check_collection(&collection)?;
        }
        let deleted = engine.delete_collection(&collection).await?;
        Ok(Response::new(pb::DeleteCollectionResponse {
            deleted_documents: deleted.documents,
            cache_entries_removed: deleted.cache_entries,
        }))
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        caller_of(&request)?.check_collection(&request.get_ref().collection)?;
        let pb::GetDocumentsRequest { collection, ids } = request.into_inner();
        let documents = engine
            .get_documents(non_empty(&collection), ids.clone())
            .await?;
        Ok(Response::new(convert::get_documents_response(
            &ids, documents,
        )))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let (engine, _open_call) = self.admission.admit()?;
        let caller = caller_of(&request)?;
        let pb::GetStatsRequest {} = request.into_inner();
        let mut stats = engine.stats().await?;
        caller.restrict_stats(&mut stats);
        Ok(Response::new(convert::stats(stats, self.started.elapsed())))
    }
}

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}
