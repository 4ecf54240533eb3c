//! The threads of the store's connections, the read connections, and the blocking pool for
//! the one-off work of opening the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use super::super::StoreError;
use crate::lane::Lane;

/// The threads of one kind of connection: one for the writer, one per reader. A call queues
/// for one of them on the async side, so the store's threads stay exactly its connections
/// however many calls wait (see [`Lane`]).
pub(super) struct Threads(Lane);

impl Threads {
    pub(super) fn start(name: &str, connections: usize) -> Result<Self, StoreError> {
        Lane::new(name, connections)
            .map(Threads)
            .map_err(|error| StoreError::Task(format!("cannot start the {name} threads: {error}")))
    }

    /// Returns the number of calls waiting for a thread.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.0.queued()
    }

    /// Runs `work` on one of the threads once one is free; once started, it runs to its end
    /// even if the caller stops waiting for it.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        self.0
            .run(work)
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?
    }
}

/// Runs blocking work on tokio's blocking pool.
pub(super) async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
}

pub(super) async fn with_connection<T, F>(
    connection: &Arc<Mutex<Connection>>,
    work: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let connection = Arc::clone(connection);
    blocking(move || work(&mut connection.lock())).await
}

/// Read-only connections handed out one search at a time.
pub(super) struct ReaderPool {
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) returned: Condvar,
    /// Searches waiting for a connection; tests read it to know a search is blocked.
    waiting: AtomicUsize,
}

impl ReaderPool {
    pub(super) fn new(connections: Vec<Connection>) -> Self {
        Self {
            idle: Mutex::new(connections),
            returned: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `work` with a connection, waiting for one if all are busy.
    pub(super) fn with<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = {
            let mut idle = self.idle.lock();
            match idle.pop() {
                Some(connection) => connection,
                None => {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    let connection = loop {
                        self.returned.wait(&mut idle);
                        if let Some(connection) = idle.pop() {
                            break connection;
                        }
                    };
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    connection
                }
            }
        };
        self.lease(connection, work)
    }

    /// Returns the number of searches waiting for a connection.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Runs `work` with a connection if one is idle; returns `None` rather than wait.
    pub(super) fn try_with<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let connection = self.idle.lock().pop()?;
        Some(self.lease(connection, work))
    }

    fn lease<T>(
        &self,
        connection: Connection,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Returns the connection even if `work` panics, so the pool never shrinks.
        let lease = Lease {
            pool: self,
            connection: Some(connection),
        };
        match &lease.connection {
            Some(connection) => work(connection),
            None => Err(StoreError::Task("reader connection lost".to_string())),
        }
    }
}

struct Lease<'a> {
    pool: &'a ReaderPool,
    connection: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.idle.lock().push(connection);
            self.pool.returned.notify_one();
        }
    }
}
