//! The settings the server refuses before it opens, binds or connects anything.

use super::ServerError;
use crate::config::{Config, StoreBackend, VectorIndex};
use crate::store::postgres::MAX_HNSW_EF_SEARCH;

/// The settings the server refuses at startup that can be checked without opening, binding
/// or connecting anything: `serve` and `serve --check-config` both ask here, so the check
/// refuses exactly what the server would.
pub fn check_settings(config: &Config) -> Result<(), ServerError> {
    if config.limits.fallback_replicas == 0 {
        return Err(ServerError::Setting(
            "limits.fallback_replicas must be at least 1 (the replicas sharing the redis limit)"
                .into(),
        ));
    }
    for (name, value) in [
        ("store.rrf_k", config.store.rrf_k),
        ("store.vector_weight", config.store.vector_weight),
    ] {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(ServerError::Setting(format!(
                "{name} must be a number of at least 0, not {value}"
            )));
        }
    }
    let store = &config.store;
    if store.backend == StoreBackend::Postgres
        && store.vector_index == VectorIndex::Hnsw
        && store.vector_index_workers >= store.pool_size
    {
        return Err(ServerError::Setting(format!(
            "store.vector_index_workers ({}) must be below store.pool_size ({}): searches and \
             writes need connections too",
            store.vector_index_workers, store.pool_size
        )));
    }
    if let Some(ef_search) = store.hnsw_ef_search
        && !(1..=MAX_HNSW_EF_SEARCH).contains(&ef_search)
    {
        return Err(ServerError::Setting(format!(
            "store.hnsw_ef_search must be from 1 to {MAX_HNSW_EF_SEARCH}, not {ef_search}"
        )));
    }
    config
        .engine
        .check_default_budget()
        .map_err(ServerError::Setting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_budget_that_allows_nothing_is_refused_with_the_setting_named() {
        type Zero = fn(&mut Config);
        let zeroed: [(&str, Zero); 5] = [
            ("engine.max_iterations", |config| {
                config.engine.max_iterations = 0
            }),
            ("engine.max_search_calls", |config| {
                config.engine.max_search_calls = 0
            }),
            ("engine.max_tokens", |config| {
                config.engine.max_tokens = Some(0)
            }),
            ("engine.max_time_seconds", |config| {
                config.engine.max_time_seconds = 0.0
            }),
            ("engine.max_cost_usd", |config| {
                config.engine.max_cost_usd = Some(0.0)
            }),
        ];
        assert!(check_settings(&Config::default()).is_ok());
        for (setting, zero) in zeroed {
            let mut config = Config::default();
            zero(&mut config);
            let Err(error) = check_settings(&config) else {
                panic!("{setting} = 0 accepted");
            };
            assert!(error.to_string().contains(setting), "{setting}: {error}");
        }
    }

    #[test]
    fn fusion_settings_must_be_finite_and_not_negative() {
        let mut config = Config::default();
        config.store.rrf_k = Some(0.0);
        config.store.vector_weight = Some(2.5);
        assert!(check_settings(&config).is_ok());
        config.store.rrf_k = Some(f64::INFINITY);
        assert!(
            check_settings(&config)
                .unwrap_err()
                .to_string()
                .contains("store.rrf_k")
        );
        config.store.rrf_k = None;
        config.store.vector_weight = Some(-1.0);
        let error = check_settings(&config).unwrap_err().to_string();
        assert!(error.contains("store.vector_weight"), "{error}");
    }
}
