//! Prometheus metrics: one registry, typed recording methods, and an HTTP endpoint serving
//! `GET /metrics` in the Prometheus text format, on a port of its own so that scraping never
//! competes with gRPC traffic and can stay inside the cluster.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client, rather than the
//! older `prometheus` crate: labels are typed structs checked at compile time (no label-count
//! mismatch panics at run time), there is no process-global registry to leak between tests,
//! and it brings no protobuf runtime. Every series is created on first use, so a scrape shows
//! only what happened, plus the gauges.
//!
//! Names carry the `deeprecall_` prefix and their unit; counters get `_total` from the
//! encoder. Label values that come from requests (method, collection, model) must come from a
//! bounded set: pass known RPC names only, and collection and model names the service knows.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::spans::ModelRole;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Path of the scrape endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Live tasks of the server's async runtime, read at each scrape: a task leak shows as a floor
/// that keeps climbing under steady traffic.
pub const RUNTIME_TASKS_METRIC: &str = "deeprecall_runtime_alive_tasks";

/// Buckets of durations in seconds: 5 ms to about 164 s, doubling, which covers a cached
/// answer as well as a long multi-hop run against a slow model.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Buckets of small counts per query (iterations, searches).
fn count_buckets() -> Histogram {
    Histogram::new([
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a query ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryOutcome {
    /// The model finished.
    Complete,
    /// A budget ran out or the run stopped early; the answer is partial.
    Partial,
    /// Served from the result cache.
    Cached,
    /// The query failed with an error status.
    Failed,
}

impl QueryOutcome {
    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryOutcome::Complete => "complete",
            QueryOutcome::Partial => "partial",
            QueryOutcome::Cached => "cached",
            QueryOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    role: &'static str,
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    level: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RerankerLabels {
    reranker: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CollectionLabels {
    collection: String,
}

/// The service's metrics. Cloning is cheap and shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    rpc_duration: HistogramFamily<MethodLabels>,
    query_duration: HistogramFamily<OutcomeLabels>,
    query_iterations: Histogram,
    query_searches: Histogram,
    queries_in_flight: Gauge,
    model_calls: Family<ModelLabels, Counter>,
    model_call_errors: Family<ModelLabels, Counter>,
    model_duration: HistogramFamily<ModelLabels>,
    model_tokens: Family<TokenLabels, Counter>,
    model_cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    cache_lookups: Family<CacheLabels, Counter>,
    rate_limited: Family<ReasonLabels, Counter>,
    rate_limit_fallbacks: Counter,
    rerank_failures: Family<RerankerLabels, Counter>,
    shed: Counter,
    documents: Family<CollectionLabels, Gauge>,
    trace_log_dropped: Counter,
    tls_reloads: Family<OutcomeLabels, Counter>,
    tls_certificate_expiry: Gauge,
    runtime_tasks: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Returns a fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let inner = Inner {
            rpc_requests: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_buckets),
            rpc_duration: Family::new_with_constructor(duration_buckets),
            query_duration: Family::new_with_constructor(duration_buckets),
            query_iterations: count_buckets(),
            query_searches: count_buckets(),
            queries_in_flight: Gauge::default(),
            model_calls: Family::default(),
            model_call_errors: Family::default(),
            model_duration: Family::new_with_constructor(duration_buckets),
            model_tokens: Family::default(),
            model_cost: Family::default(),
            cache_lookups: Family::default(),
            rate_limited: Family::default(),
            rate_limit_fallbacks: Counter::default(),
            rerank_failures: Family::default(),
            shed: Counter::default(),
            documents: Family::default(),
            trace_log_dropped: Counter::default(),
            tls_reloads: Family::default(),
            tls_certificate_expiry: Gauge::default(),
            runtime_tasks: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "deeprecall_rpc_requests",
            "gRPC calls finished, by method and status code",
            inner.rpc_requests.clone(),
        );
        registry.register(
            "deeprecall_rpc_duration_seconds",
            "Time from a gRPC call's arrival to its last response message, by method",
            inner.rpc_duration.clone(),
        );
        registry.register(
            "deeprecall_http_requests",
            "Requests to the OpenAI-compatible HTTP API answered, by route and HTTP status",
            inner.http_requests.clone(),
        );
        registry.register(
            "deeprecall_http_request_duration_seconds",
            "Time from an HTTP API request's arrival to the last byte of its response, by route",
            inner.http_duration.clone(),
        );
        registry.register(
            "deeprecall_query_duration_seconds",
            "Time from a query's start to its result, by outcome",
            inner.query_duration.clone(),
        );
        registry.register(
            "deeprecall_query_iterations",
            "Root-model turns per query",
            inner.query_iterations.clone(),
        );
        registry.register(
            "deeprecall_query_searches",
            "Searches per query",
            inner.query_searches.clone(),
        );
        registry.register(
            "deeprecall_queries_in_flight",
            "Queries running now",
            inner.queries_in_flight.clone(),
        );
        registry.register(
            "deeprecall_model_calls",
            "Model calls that answered, by model and role (root or sub)",
            inner.model_calls.clone(),
        );
        registry.register(
            "deeprecall_model_call_errors",
            "Model calls that failed after their retries, by model and role",
            inner.model_call_errors.clone(),
        );
        registry.register(
            "deeprecall_model_call_duration_seconds",
            "Duration of model calls that answered, retries included, by model and role",
            inner.model_duration.clone(),
        );
        registry.register(
            "deeprecall_model_tokens",
            "Model tokens, by model, role and direction (input or output)",
            inner.model_tokens.clone(),
        );
        registry.register(
            "deeprecall_model_cost_usd",
            "Model spend in US dollars, by model and role",
            inner.model_cost.clone(),
        );
        registry.register(
            "deeprecall_rerank_failures",
            "Searches whose reranker failed and that kept the fused order, by reranker",
            inner.rerank_failures.clone(),
        );
        registry.register(
            "deeprecall_cache_lookups",
            "Cache lookups, by level and result (hit or miss)",
            inner.cache_lookups.clone(),
        );
        registry.register(
            "deeprecall_rate_limited_requests",
            "Calls refused by a rate limit, by reason",
            inner.rate_limited.clone(),
        );
        registry.register(
            "deeprecall_rate_limit_fallbacks",
            "Rate checks this replica decided alone because the shared (Redis) store could not answer",
            inner.rate_limit_fallbacks.clone(),
        );
        registry.register(
            "deeprecall_shed_requests",
            "Calls refused because the server was at capacity",
            inner.shed.clone(),
        );
        registry.register(
            "deeprecall_documents",
            "Documents stored, by collection",
            inner.documents.clone(),
        );
        registry.register(
            "deeprecall_trace_log_dropped_lines",
            "Trace log lines dropped because the writer fell behind or the file could not be written",
            inner.trace_log_dropped.clone(),
        );
        registry.register(
            "deeprecall_tls_reloads",
            "TLS files that changed and were put in force (changed) or refused (failed)",
            inner.tls_reloads.clone(),
        );
        registry.register(
            "deeprecall_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the served TLS certificate expires; 0 without TLS",
            inner.tls_certificate_expiry.clone(),
        );
        registry.register(
            RUNTIME_TASKS_METRIC,
            "Tasks alive in the server's async runtime at the scrape",
            inner.runtime_tasks.clone(),
        );
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// Records a finished gRPC call. `method` is the RPC name (`Query`, `GetStats`, …).
    pub fn rpc_finished(&self, method: &str, code: tonic::Code, duration: Duration) {
        self.inner
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code_name(code),
            })
            .inc();
        self.inner
            .rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Records an HTTP API request answered with `status`. `route` is one of the API's routes
    /// (or `unknown`), so that clients probing paths cannot grow the metrics.
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// Records the time an HTTP API request took, to the last byte of its response (for a
    /// streamed completion, to the end of its stream, or to the client leaving).
    pub fn http_request_finished(&self, route: &'static str, duration: Duration) {
        self.inner
            .http_duration
            .get_or_create(&RouteLabels { route })
            .observe(duration.as_secs_f64());
    }

    /// Records a finished query: its duration, root-model turns and searches.
    pub fn query_finished(
        &self,
        outcome: QueryOutcome,
        duration: Duration,
        iterations: u32,
        searches: u32,
    ) {
        self.inner
            .query_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .observe(duration.as_secs_f64());
        // A cached answer ran no loop; counting its zeros would drag the distributions down.
        if outcome != QueryOutcome::Cached {
            self.inner.query_iterations.observe(f64::from(iterations));
            self.inner.query_searches.observe(f64::from(searches));
        }
    }

    /// Counts a query as running until the returned guard drops, so that a query that ends by
    /// cancellation or panic is uncounted too.
    pub fn query_started(&self) -> InFlightGuard {
        self.inner.queries_in_flight.inc();
        InFlightGuard {
            gauge: self.inner.queries_in_flight.clone(),
        }
    }

    /// Records a model call that answered.
    pub fn model_call(
        &self,
        role: ModelRole,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
        duration: Duration,
    ) {
        let labels = ModelLabels {
            model: model.to_string(),
            role: role.as_str(),
        };
        self.inner.model_calls.get_or_create(&labels).inc();
        self.inner
            .model_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.inner
                .model_cost
                .get_or_create(&labels)
                .inc_by(cost_usd);
        }
        for (direction, tokens) in [("input", input_tokens), ("output", output_tokens)] {
            self.inner
                .model_tokens
                .get_or_create(&TokenLabels {
                    model: model.to_string(),
                    role: role.as_str(),
                    direction,
                })
                .inc_by(tokens);
        }
    }

    /// Records a model call that failed after its retries.
    pub fn model_call_failed(&self, role: ModelRole, model: &str) {
        self.inner
            .model_call_errors
            .get_or_create(&ModelLabels {
                model: model.to_string(),
                role: role.as_str(),
            })
            .inc();
    }

    /// Records a cache lookup at `level` (`result`, `search`: `CacheLevel::name`).
    pub fn cache_lookup(&self, level: &str, hit: bool) {
        self.inner
            .cache_lookups
            .get_or_create(&CacheLabels {
                level: level.to_string(),
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// Records a call refused by a rate limit; `reason` names the limit (`key`, `global`, …).
    pub fn rate_limited(&self, reason: &str) {
        self.inner
            .rate_limited
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records a search whose reranker failed, so that its hits kept the fused order.
    pub fn rerank_failed(&self, reranker: &str) {
        self.inner
            .rerank_failures
            .get_or_create(&RerankerLabels {
                reranker: reranker.to_string(),
            })
            .inc();
    }

    /// Records a rate check decided without the shared store.
    pub fn rate_limit_fallback(&self) {
        self.inner.rate_limit_fallbacks.inc();
    }

    /// Records a call refused by load shedding.
    pub fn shed(&self) {
        self.inner.shed.inc();
    }

    /// Sets the number of documents in `collection`.
    pub fn set_documents(&self, collection: &str, documents: u64) {
        self.inner
            .documents
            .get_or_create(&CollectionLabels {
                collection: collection.to_string(),
            })
            .set(i64::try_from(documents).unwrap_or(i64::MAX));
    }

    /// Forgets a collection that no longer exists, so that its series stops being exported.
    pub fn remove_collection(&self, collection: &str) {
        self.inner.documents.remove(&CollectionLabels {
            collection: collection.to_string(),
        });
    }

    /// Returns the counter of dropped trace log lines, for [`super::TraceLog::open_with`].
    pub fn trace_log_dropped(&self) -> Counter {
        self.inner.trace_log_dropped.clone()
    }

    /// Records a look at the TLS files that found them changed: put in force, or refused.
    pub fn tls_reload(&self, applied: bool) {
        let outcome = if applied { "changed" } else { "failed" };
        self.inner
            .tls_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Sets when the served certificate expires, in seconds since the Unix epoch.
    pub fn set_tls_certificate_expiry(&self, not_after: u64) {
        self.inner
            .tls_certificate_expiry
            .set(i64::try_from(not_after).unwrap_or(i64::MAX));
    }

    /// Returns every series in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.inner
                .runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(error) = prometheus_text::encode(&mut text, &self.inner.registry) {
            // Writing into a String cannot fail; an error would come from a metric's encoder.
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }
}

/// Keeps a query counted as in flight; see [`Metrics::query_started`].
#[derive(Debug)]
#[must_use = "the query stops being counted when the guard drops"]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics<L>(
    listener: L,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let router = Router::new()
        .route(METRICS_PATH, get(scrape))
        .with_state(metrics);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        metrics.render(),
    )
}

/// Returns the status code as gRPC's own implementations label it (`OK`, `InvalidArgument`).
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use tokio::net::TcpListener;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|candidate| candidate == line)
    }

    #[test]
    fn recorded_values_appear_as_series() {
        let metrics = Metrics::new();
        metrics.rpc_finished("Query", tonic::Code::Ok, Duration::from_millis(40));
        metrics.rpc_finished("Query", tonic::Code::Ok, Duration::from_millis(60));
        metrics.rpc_finished(
            "AddDocuments",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        metrics.query_finished(QueryOutcome::Complete, Duration::from_millis(30), 3, 4);
        metrics.query_finished(QueryOutcome::Cached, Duration::from_millis(1), 0, 0);
        metrics.model_call(
            ModelRole::Root,
            "gpt-test",
            1200,
            80,
            0.25,
            Duration::from_millis(900),
        );
        metrics.model_call(
            ModelRole::Root,
            "gpt-test",
            800,
            20,
            0.5,
            Duration::from_secs(1),
        );
        metrics.model_call_failed(ModelRole::Sub, "small");
        metrics.cache_lookup("result", true);
        metrics.cache_lookup("search", false);
        metrics.cache_lookup("search", false);
        metrics.rate_limited("key");
        metrics.rate_limit_fallback();
        metrics.rate_limit_fallback();
        metrics.shed();
        metrics.set_documents("handbook", 42);
        metrics.trace_log_dropped().inc_by(3);

        let text = metrics.render();
        for line in [
            "# TYPE deeprecall_rpc_requests_total counter",
            r#"deeprecall_rpc_requests_total{method="Query",code="OK"} 2"#,
            r#"deeprecall_rpc_requests_total{method="AddDocuments",code="InvalidArgument"} 1"#,
            r#"deeprecall_rpc_duration_seconds_count{method="Query"} 2"#,
            r#"deeprecall_query_duration_seconds_count{outcome="complete"} 1"#,
            r#"deeprecall_query_duration_seconds_count{outcome="cached"} 1"#,
            r#"deeprecall_query_duration_seconds_bucket{outcome="complete",le="0.04"} 1"#,
            "deeprecall_query_iterations_count 1",
            "deeprecall_query_iterations_sum 3.0",
            r#"deeprecall_query_iterations_bucket{le="2"} 0"#,
            r#"deeprecall_query_iterations_bucket{le="3"} 1"#,
            "deeprecall_query_searches_sum 4.0",
            "deeprecall_queries_in_flight 0",
            r#"deeprecall_model_calls_total{model="gpt-test",role="root"} 2"#,
            r#"deeprecall_model_call_errors_total{model="small",role="sub"} 1"#,
            r#"deeprecall_model_tokens_total{model="gpt-test",role="root",direction="input"} 2000"#,
            r#"deeprecall_model_tokens_total{model="gpt-test",role="root",direction="output"} 100"#,
            r#"deeprecall_model_cost_usd_total{model="gpt-test",role="root"} 0.75"#,
            r#"deeprecall_model_call_duration_seconds_count{model="gpt-test",role="root"} 2"#,
            r#"deeprecall_cache_lookups_total{level="result",result="hit"} 1"#,
            r#"deeprecall_cache_lookups_total{level="search",result="miss"} 2"#,
            r#"deeprecall_rate_limited_requests_total{reason="key"} 1"#,
            "deeprecall_rate_limit_fallbacks_total 2",
            "deeprecall_shed_requests_total 1",
            r#"deeprecall_documents{collection="handbook"} 42"#,
            "deeprecall_trace_log_dropped_lines_total 3",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn in_flight_gauge_follows_guards() {
        let metrics = Metrics::new();
        let first = metrics.query_started();
        let second = metrics.clone().query_started();
        assert!(has_line(
            &metrics.render(),
            "deeprecall_queries_in_flight 2"
        ));
        drop(first);
        assert!(has_line(
            &metrics.render(),
            "deeprecall_queries_in_flight 1"
        ));
        drop(second);
        assert!(has_line(
            &metrics.render(),
            "deeprecall_queries_in_flight 0"
        ));
    }

    #[test]
    fn removed_collections_leave_the_output() {
        let metrics = Metrics::new();
        metrics.set_documents("old", 1);
        metrics.set_documents("kept", 2);
        metrics.remove_collection("old");
        let text = metrics.render();
        assert!(!text.contains(r#"collection="old""#));
        assert!(has_line(
            &text,
            r#"deeprecall_documents{collection="kept"} 2"#
        ));
    }

    #[tokio::test]
    async fn endpoint_serves_the_text_format_until_shutdown() {
        let metrics = Metrics::new();
        metrics.shed();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(listener, metrics, async {
            drop(stopped.await);
        }));

        let client = reqwest::Client::new();
        let response = client
            .get(format!("http://{address}{METRICS_PATH}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            prometheus_text::CONTENT_TYPE
        );
        let body = response.text().await.unwrap();
        assert!(
            has_line(&body, "deeprecall_shed_requests_total 1"),
            "{body}"
        );
        let missing = client
            .get(format!("http://{address}/other"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
