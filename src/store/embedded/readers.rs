//! Read connections handed out one search at a time, and the blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use super::super::StoreError;

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
