//! Read connections handed out one search at a time, and the blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::super::StoreError;

/// Turns at the blocking pool for one kind of connection. A call waits for its turn here, on
/// the async side, and only then takes a blocking thread, so the threads in use stay near the
/// number of connections: a thread waiting in the pool for a connection holds its stack and
/// its allocator arena, and under 64 concurrent queries these waiting threads were most of the
/// process's memory.
pub(super) struct Turns {
    free: Arc<Semaphore>,
    /// Calls waiting for a turn; tests read it to know a call is queued.
    queued: AtomicUsize,
}

impl Turns {
    pub(super) fn new(connections: usize) -> Self {
        Turns {
            free: Arc::new(Semaphore::new(connections.max(1))),
            queued: AtomicUsize::new(0),
        }
    }

    /// Returns the number of calls waiting for a turn.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Runs `work` on the blocking pool once a turn is free; the turn is held until `work`
    /// ends, even if the caller stops waiting for it.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let turn = Arc::clone(&self.free).acquire_owned().await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let turn = turn.map_err(|error| StoreError::Task(error.to_string()))?;
        blocking(move || {
            let _turn = turn;
            work()
        })
        .await
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
