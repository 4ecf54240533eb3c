//! Load shedding: a bound on the queries running at once, with a short waiting line. Past
//! both, a query is refused at once: a client told "overloaded" can go to another replica or
//! back off, where one left queued holds memory and a connection for nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AccessError;

/// Settings of the query slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSettings {
    /// Queries running at once; 0 for no bound.
    pub max_running: usize,
    /// Queries waiting for a slot at most; beyond it they are refused at once.
    pub max_waiting: usize,
    /// Longest wait for a slot.
    pub max_wait: Duration,
}

/// The query slots of one server.
pub struct QuerySlots {
    settings: SlotSettings,
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    shed: AtomicU64,
}

impl fmt::Debug for QuerySlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuerySlots")
            .field("settings", &self.settings)
            .field("running", &self.running())
            .field("waiting", &self.waiting())
            .field("shed", &self.shed())
            .finish()
    }
}

/// A query's slot, given back when dropped.
#[derive(Debug)]
pub struct QuerySlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl QuerySlots {
    /// Slots as the settings say.
    pub fn new(settings: SlotSettings) -> Self {
        QuerySlots {
            settings,
            semaphore: Arc::new(Semaphore::new(settings.max_running)),
            waiting: Arc::new(AtomicUsize::new(0)),
            shed: AtomicU64::new(0),
        }
    }

    /// Takes a slot: at once if one is free, after a bounded wait if the line has room, else
    /// an error at once.
    pub async fn acquire(&self) -> Result<QuerySlot, AccessError> {
        if self.settings.max_running == 0 {
            return Ok(QuerySlot { _permit: None });
        }
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() {
            return Ok(QuerySlot {
                _permit: Some(permit),
            });
        }
        let place = WaitingPlace::take(&self.waiting, self.settings.max_waiting);
        let Some(_place) = place else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(AccessError::Overloaded {
                running: self.running(),
                queued: self.waiting(),
            });
        };
        let waited = tokio::time::timeout(
            self.settings.max_wait,
            Arc::clone(&self.semaphore).acquire_owned(),
        )
        .await;
        match waited {
            Ok(Ok(permit)) => Ok(QuerySlot {
                _permit: Some(permit),
            }),
            // The semaphore is never closed; a closed one would mean no slot ever frees.
            Ok(Err(_)) | Err(_) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(AccessError::QueueTimeout {
                    waited: self.settings.max_wait,
                })
            }
        }
    }

    /// Takes up to `wanted` slots that are free now, without waiting or joining the line:
    /// the slots a batch runs its items on beyond its call's own. A batch so widens into spare
    /// capacity only, and never past the bound or ahead of a query already waiting.
    pub fn take_free(&self, wanted: usize) -> Vec<QuerySlot> {
        if self.settings.max_running == 0 {
            return (0..wanted).map(|_| QuerySlot { _permit: None }).collect();
        }
        let mut taken = Vec::with_capacity(wanted);
        while taken.len() < wanted {
            let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() else {
                break;
            };
            taken.push(QuerySlot {
                _permit: Some(permit),
            });
        }
        taken
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.settings
            .max_running
            .saturating_sub(self.semaphore.available_permits())
    }

    /// Queries waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Queries refused so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// A place in the waiting line, left when dropped (also when the caller gives up waiting).
struct WaitingPlace<'a>(&'a AtomicUsize);

impl<'a> WaitingPlace<'a> {
    fn take(waiting: &'a AtomicUsize, max_waiting: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max_waiting).then_some(count + 1)
            })
            .ok()
            .map(|_| WaitingPlace(waiting))
    }
}

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until a query waits in line; the bound only catches one that never does.
    async fn until_queued(slots: &QuerySlots) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while slots.waiting() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a query queued");
    }

    #[tokio::test]
    async fn slots_then_a_bounded_line_then_refusal() {
        let slots = Arc::new(QuerySlots::new(SlotSettings {
            max_running: 2,
            max_waiting: 1,
            max_wait: Duration::from_secs(5),
        }));
        let first = slots.acquire().await.unwrap();
        let _second = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire().await.map(|_| ()) }
        });
        until_queued(&slots).await;
        assert!(matches!(
            slots.acquire().await,
            Err(AccessError::Overloaded {
                running: 2,
                queued: 1
            })
        ));
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.shed(), 1);
    }

    #[tokio::test]
    async fn a_wait_for_a_slot_is_bounded() {
        let slots = QuerySlots::new(SlotSettings {
            max_running: 1,
            max_waiting: 4,
            max_wait: Duration::from_millis(200),
        });
        let _held = slots.acquire().await.unwrap();
        assert!(matches!(
            slots.acquire().await,
            Err(AccessError::QueueTimeout { .. })
        ));
        assert_eq!(slots.waiting(), 0);
        assert!(matches!(
            slots.acquire().await,
            Err(AccessError::QueueTimeout { .. })
        ));
        // Each refusal counts, a timed-out wait as much as a full line.
        assert_eq!(slots.shed(), 2);
    }

    #[tokio::test]
    async fn free_slots_are_taken_without_waiting_and_never_ahead_of_a_waiting_query() {
        let slots = Arc::new(QuerySlots::new(SlotSettings {
            max_running: 4,
            max_waiting: 1,
            max_wait: Duration::from_secs(5),
        }));
        let call = slots.acquire().await.unwrap();

        let extra = slots.take_free(8);
        assert_eq!(extra.len(), 3, "only the free slots");
        assert_eq!(slots.running(), 4);
        assert!(slots.take_free(1).is_empty());

        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire().await.map(|_| ()) }
        });
        until_queued(&slots).await;
        drop(call);
        assert!(
            slots.take_free(1).is_empty(),
            "the freed slot is the waiter's"
        );
        waiter.await.unwrap().unwrap();

        drop(extra);
        assert_eq!(slots.running(), 0);
        assert_eq!(slots.take_free(2).len(), 2);
    }

    #[tokio::test]
    async fn no_bound_means_no_refusal() {
        let slots = QuerySlots::new(SlotSettings {
            max_running: 0,
            max_waiting: 0,
            max_wait: Duration::ZERO,
        });
        let held: Vec<QuerySlot> = futures::future::join_all((0..100).map(|_| slots.acquire()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(held.len(), 100);
        assert_eq!(slots.take_free(64).len(), 64);
    }
}
