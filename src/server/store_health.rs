//! Readiness that follows the document store: while the store cannot be reached, the
//! service's own health entry reports NOT_SERVING, so that a readiness probe on it takes the
//! replica out of its Service's endpoints and traffic goes to replicas that can answer. The
//! whole-server entry (`""`) is left alone: a liveness probe on it must not restart a replica
//! whose database is away, which would not bring the database back.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::SERVICE_NAME;
use crate::engine::Engine;

/// Asks the store whether it is reachable every `every`, and moves the service's health entry
/// when the answer changes. A check that takes longer than `every` counts as a failure: a
/// database that answers that slowly cannot serve queries either. Runs until aborted.
pub async fn follow_store(engine: Engine, health: HealthReporter, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The caller has just reported SERVING after opening the store.
    let mut reachable = true;
    loop {
        ticks.tick().await;
        let outcome = match tokio::time::timeout(every, engine.check_store()).await {
            Ok(outcome) => outcome.map_err(|error| error.to_string()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        match (reachable, outcome) {
            (true, Err(reason)) => {
                tracing::warn!(%reason, "document store unreachable: reporting NOT_SERVING");
                health
                    .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                    .await;
                reachable = false;
            }
            (false, Ok(())) => {
                tracing::info!("document store reachable again: reporting SERVING");
                health
                    .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                    .await;
                reachable = true;
            }
            _ => {}
        }
    }
}
