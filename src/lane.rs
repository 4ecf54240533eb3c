//! A fixed set of threads of its own for blocking work, with a queue in front: the SQLite
//! connections of the embedded store and of the sqlite cache each get one.
//!
//! tokio's blocking pool starts a thread whenever none is idle at the moment of the call. With
//! calls waiting for a connection, each one handed on from a finished call reached the pool
//! before the thread that ran that call was idle again, so the pool grew to 20–36 threads for 5
//! connections under 64 concurrent queries, more on a busier machine; each thread keeps its own
//! allocator heap and stack, and those threads were most of the server's memory (BENCHMARKS.md).
//! A lane's threads are exactly its connections, however many calls wait and however slow the
//! machine.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Why a call on a lane did not return its work's result.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// The lane's threads have stopped (they stop only when the lane is dropped).
    #[error("the {0} threads have stopped")]
    Stopped(String),
    /// The work panicked; the thread lives on for the next call.
    #[error("a {0} call panicked")]
    Panicked(String),
}

/// Threads that run blocking calls one at a time each, in the order the calls came.
pub struct Lane {
    name: String,
    threads: usize,
    jobs: mpsc::Sender<Job>,
    /// Calls sent and not yet taken by a thread.
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Lane")
            .field("name", &self.name)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// Starts `threads` threads (at least one) named after `name`; they end once the lane is
    /// dropped and the calls already queued have run.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Lane> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for number in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("{name}-{number}"))
                .spawn(move || {
                    loop {
                        // One idle thread waits on the queue, the others on the lock.
                        let job = receiver.lock().recv();
                        let Ok(job) = job else { break };
                        queued.fetch_sub(1, Ordering::SeqCst);
                        job();
                    }
                })?;
        }
        Ok(Lane {
            name: name.to_string(),
            threads: threads.max(1),
            jobs,
            queued,
        })
    }

    /// Returns the number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Returns the number of calls waiting for a thread.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Runs `work` on one of the lane's threads once one is free. A call whose caller stopped
    /// waiting before a thread took it is skipped; once started, it runs to its end.
    pub async fn run<T, F>(&self, work: F) -> Result<T, LaneError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        let job: Job = Box::new(move || {
            if done.is_closed() {
                return;
            }
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
        });
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(LaneError::Stopped(self.name.clone()));
        }
        match outcome.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_panic)) => Err(LaneError::Panicked(self.name.clone())),
            Err(_) => Err(LaneError::Stopped(self.name.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Barrier;
    use std::time::Duration;

    use super::*;

    /// Waits until `done` holds; the bound only ends a hang.
    async fn eventually(done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the condition comes true");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_beyond_the_threads_queue_and_run_on_the_same_threads() {
        let lane = Arc::new(Lane::new("test-lane", 2).unwrap());
        let thread_name = || std::thread::current().name().map(str::to_string);
        // Both threads held until released, so that the later calls must queue.
        let started = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Barrier::new(3));
        let held: Vec<_> = (0..2)
            .map(|_| {
                let lane = Arc::clone(&lane);
                let (started, release) = (Arc::clone(&started), Arc::clone(&release));
                tokio::spawn(async move {
                    lane.run(move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.wait();
                        thread_name()
                    })
                    .await
                })
            })
            .collect();
        eventually(|| started.load(Ordering::SeqCst) == 2).await;
        let queued: Vec<_> = (0..5)
            .map(|_| {
                let lane = Arc::clone(&lane);
                tokio::spawn(async move { lane.run(thread_name).await })
            })
            .collect();
        eventually(|| lane.queued() == 5).await;
        tokio::task::spawn_blocking(move || release.wait())
            .await
            .unwrap();
        let mut names = BTreeSet::new();
        for call in held.into_iter().chain(queued) {
            names.insert(call.await.unwrap().unwrap().unwrap());
        }
        assert_eq!(
            names,
            BTreeSet::from(["test-lane-0".to_string(), "test-lane-1".to_string()])
        );
        assert_eq!(lane.queued(), 0);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_thread_serves_the_next_call() {
        let lane = Lane::new("panicky", 1).unwrap();
        let panicked = lane.run(|| -> u8 { panic!("broken call") }).await;
        assert!(matches!(panicked, Err(LaneError::Panicked(name)) if name == "panicky"));
        assert_eq!(lane.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_abandoned_while_queued_never_runs() {
        let lane = Arc::new(Lane::new("abandoned", 1).unwrap());
        let (started, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let holding = {
            let lane = Arc::clone(&lane);
            let (started, release) = (Arc::clone(&started), Arc::clone(&release));
            tokio::spawn(async move {
                lane.run(move || {
                    started.wait();
                    release.wait();
                })
                .await
            })
        };
        tokio::task::spawn_blocking({
            let started = Arc::clone(&started);
            move || started.wait()
        })
        .await
        .unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let abandoned = {
            let lane = Arc::clone(&lane);
            let ran = Arc::clone(&ran);
            tokio::spawn(async move { lane.run(move || ran.fetch_add(1, Ordering::SeqCst)).await })
        };
        eventually(|| lane.queued() == 1).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        tokio::task::spawn_blocking(move || release.wait())
            .await
            .unwrap();
        holding.await.unwrap().unwrap();
        // A call queued after the abandoned one runs, so the abandoned one was passed over.
        assert_eq!(lane.run(|| 1).await.unwrap(), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
