//! The spans of a query, built in one place so that every call site uses the same names and
//! fields, and exporters, dashboards and tests can rely on them.
//!
//! A `tracing` span declares its fields when it is created; a value known only later (tokens,
//! hits) is declared `Empty` here and filled in by the `record_*` functions. Recording a field
//! a span did not declare does nothing, which is why the fields live here.
//!
//! Spans follow a future only when it is wrapped with `.instrument(span)`; holding
//! `span.enter()` across an `.await` attaches other tasks' work to it. The parent of a span is
//! the current span where it is created, so create a child inside the instrumented future.
//!
//! ```text
//! query                        one per Query / QueryBatch item, parent from `traceparent`
//! ├── iteration step=1         one per root-model turn
//! │   ├── model.call           root model, tokens, cost, retries
//! │   ├── search               collection, hits, cache hit
//! │   └── model.call role=sub  sub-model over a batch of prompts
//! └── iteration step=2 …
//! ```

use std::time::Duration;

use tracing::Span;
use tracing::field::Empty;

// Integers go in as i64: `tracing-opentelemetry` exports i64 as an OTLP int but renders
// unsigned values through `Debug`, as strings.

/// Fully qualified name of the gRPC service, as OpenTelemetry's `rpc.service` wants it.
const RPC_SERVICE: &str = "deeprecall.v1.DeepRecall";

/// Returns the span of one query. `method` is the RPC (`Query`, `QueryBatch`); the remote
/// parent, if any, must be set right after (`otel::set_remote_parent`), before it is entered.
pub fn query(method: &str, query_id: &str, collection: &str) -> Span {
    tracing::info_span!(
        "query",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = RPC_SERVICE,
        rpc.method = method,
        query_id,
        collection,
        iterations = Empty,
        searches = Empty,
        input_tokens = Empty,
        output_tokens = Empty,
        cost_usd = Empty,
        partial = Empty,
        cached = Empty,
    )
}

/// What a finished query reports on its span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuerySummary {
    /// Root-model turns.
    pub iterations: u32,
    /// Searches run.
    pub searches: u32,
    /// Prompt tokens over all models.
    pub input_tokens: u64,
    /// Completion tokens over all models.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// The answer is partial (a budget ran out, the caller left).
    pub partial: bool,
    /// Served from the result cache.
    pub cached: bool,
}

/// Records the outcome of a query on its span.
pub fn record_query(span: &Span, summary: &QuerySummary) {
    span.record("iterations", i64::from(summary.iterations));
    span.record("searches", i64::from(summary.searches));
    span.record("input_tokens", int(summary.input_tokens));
    span.record("output_tokens", int(summary.output_tokens));
    span.record("cost_usd", summary.cost_usd);
    span.record("partial", summary.partial);
    span.record("cached", summary.cached);
}

/// Marks a span as failed, with a message for the trace view. Works on any span of this
/// module, since each declares the status fields.
pub fn record_error(span: &Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
}

/// Returns the span of one iteration of the loop.
pub fn iteration(step: u32) -> Span {
    tracing::info_span!(
        "iteration",
        step = i64::from(step),
        tools = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records the tools an iteration ran, in the model's order.
pub fn record_iteration_tools(span: &Span, tools: &[String]) {
    span.record("tools", tools.join(",").as_str());
}

/// Which model a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    /// The root model that drives the loop.
    Root,
    /// The cheaper sub-model behind `llm_query`.
    Sub,
    /// The embedding model behind the store's vectors.
    Embedding,
    /// The reranker that reorders search results.
    Rerank,
}

impl ModelRole {
    /// Returns the name used in spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Root => "root",
            ModelRole::Sub => "sub",
            ModelRole::Embedding => "embedding",
            ModelRole::Rerank => "rerank",
        }
    }
}

/// Returns the span of one model call (all its HTTP attempts). Attribute names follow
/// OpenTelemetry's `gen_ai` conventions where one exists.
pub fn model_call(role: ModelRole, model: &str) -> Span {
    tracing::info_span!(
        "model.call",
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        role = role.as_str(),
        gen_ai.request.model = model,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        cost_usd = Empty,
        latency_ms = Empty,
        retries = Empty,
        prompts = Empty,
    )
}

/// What a model call used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelCallSummary {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Time from the first attempt to the last byte.
    pub latency: Duration,
    /// Prompts in the call (1 for the root model, more for a batched sub-model call).
    pub prompts: u32,
}

/// Records what a model call used on its span.
pub fn record_model_call(span: &Span, summary: &ModelCallSummary) {
    span.record("gen_ai.usage.input_tokens", int(summary.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(summary.output_tokens));
    span.record("cost_usd", summary.cost_usd);
    span.record("latency_ms", millis(summary.latency));
    span.record("prompts", i64::from(summary.prompts));
}

/// Records the attempts after the first one on the current span, when it is a model call.
/// Meant for the retry loop of the HTTP client, which does not know its span.
pub fn record_retries(retries: u32) {
    Span::current().record("retries", i64::from(retries));
}

/// Returns the span of one `search_db` call.
pub fn search(step: u32, collection: &str, top_k: u32) -> Span {
    tracing::info_span!(
        "search",
        otel.status_code = Empty,
        otel.status_description = Empty,
        step = i64::from(step),
        collection,
        top_k = i64::from(top_k),
        hits = Empty,
        cache_hit = Empty,
        latency_ms = Empty,
    )
}

/// Records a search's hits and whether they came from the cache.
pub fn record_search(span: &Span, hits: usize, cache_hit: bool) {
    span.record("hits", i64::try_from(hits).unwrap_or(i64::MAX));
    span.record("cache_hit", cache_hit);
}

/// Records a search's duration; the span's own start and end say the same, but logs and
/// backends that flatten attributes show this one.
pub fn record_search_latency(span: &Span, latency: Duration) {
    span.record("latency_ms", millis(latency));
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Test equipment: a tracing layer that keeps every field recorded on a span, and a scoped
/// default subscriber that other tests cannot keep these spans from.
#[cfg(test)]
pub(crate) mod recorded {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    /// Collects the fields recorded on spans, by span name.
    #[derive(Clone, Default)]
    pub(crate) struct Fields(Arc<Mutex<Vec<(String, String, String)>>>);

    struct Visitor<'a> {
        span: &'a str,
        fields: &'a Fields,
    }

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.fields.0.lock().push((
                self.span.to_string(),
                field.name().to_string(),
                format!("{value:?}"),
            ));
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Fields {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: Context<'_, S>,
        ) {
            attrs.record(&mut Visitor {
                span: attrs.metadata().name(),
                fields: self,
            });
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: Context<'_, S>,
        ) {
            let name = ctx.span(id).map(|span| span.name()).unwrap_or_default();
            values.record(&mut Visitor {
                span: name,
                fields: self,
            });
        }
    }

    /// Makes `subscriber` the current thread's default for as long as the guard lives, with
    /// the spans of this module recorded by it whatever other tests run at once.
    ///
    /// `tracing` decides once per process whether a callsite is wanted, and while at most one
    /// subscriber is registered it asks the registering thread's default: a test on another
    /// thread, with no subscriber, that reaches a span first has it cached as never wanted,
    /// for every thread. Registering each span here (under a bare registry, so that
    /// `subscriber` sees none of them) and rebuilding the cache afterwards undoes that; a
    /// later rebuild is asked of every registered subscriber, this one included.
    pub(crate) fn scoped(
        subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    ) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            drop((
                super::query("Query", "", ""),
                super::iteration(0),
                super::model_call(super::ModelRole::Root, ""),
                super::search(0, "", 0),
            ));
        });
        let guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    impl Fields {
        /// The last value recorded for `field` on a span named `span`, as its `Debug` text.
        pub(crate) fn get(&self, span: &str, field: &str) -> Option<String> {
            self.0
                .lock()
                .iter()
                .rev()
                .find(|(name, key, _)| name == span && key == field)
                .map(|(_, _, value)| value.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::recorded::Fields;
    use super::*;

    #[test]
    fn recorded_values_land_on_declared_fields() {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        {
            let _default = super::recorded::scoped(subscriber);
            let query = query("Query", "q-7", "handbook");
            let model = model_call(ModelRole::Sub, "small-model");
            record_model_call(
                &model,
                &ModelCallSummary {
                    input_tokens: 120,
                    output_tokens: 30,
                    cost_usd: 0.002,
                    latency: Duration::from_millis(250),
                    prompts: 3,
                },
            );
            model.in_scope(|| record_retries(2));
            record_query(
                &query,
                &QuerySummary {
                    iterations: 2,
                    searches: 3,
                    partial: true,
                    ..QuerySummary::default()
                },
            );
            record_error(&query, "budget ran out");
            let search = search(1, "handbook", 5);
            record_search(&search, 4, false);
        }
        assert_eq!(fields.get("query", "query_id").as_deref(), Some("\"q-7\""));
        assert_eq!(fields.get("query", "searches").as_deref(), Some("3"));
        assert_eq!(fields.get("query", "partial").as_deref(), Some("true"));
        assert_eq!(
            fields.get("query", "otel.status_code").as_deref(),
            Some("\"ERROR\"")
        );
        assert_eq!(
            fields
                .get("model.call", "gen_ai.usage.input_tokens")
                .as_deref(),
            Some("120")
        );
        assert_eq!(fields.get("model.call", "role").as_deref(), Some("\"sub\""));
        assert_eq!(fields.get("model.call", "retries").as_deref(), Some("2"));
        assert_eq!(
            fields.get("model.call", "latency_ms").as_deref(),
            Some("250.0")
        );
        assert_eq!(fields.get("search", "hits").as_deref(), Some("4"));
        assert_eq!(fields.get("search", "cache_hit").as_deref(), Some("false"));
    }
}
