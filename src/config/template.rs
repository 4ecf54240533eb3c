//! The commented configuration file `deeprecall init` writes.

/// A commented configuration file with every setting at its default, as `deeprecall init`
/// writes it.
pub const DEFAULT_CONFIG_TOML: &str = r#"# DeepRecall configuration. Every setting left active is at its default; a commented-out
# setting is unset by default, shown with an example value.
# Precedence: these defaults < this file < DEEPRECALL_* environment < command-line flags.
# Any setting can be set from the environment as DEEPRECALL_<SECTION>__<KEY>,
# e.g. DEEPRECALL_ENGINE__MAX_TOP_K=50.

[server]
# Address of the gRPC server (env DEEPRECALL_LISTEN, flag --listen).
listen = "127.0.0.1:50051"
# Largest request and response messages, in bytes.
max_request_bytes = 67108864
max_response_bytes = 67108864
# Seconds in-flight calls get to finish after SIGTERM/SIGINT; after that, running queries end
# with a partial result (env DEEPRECALL_SHUTDOWN_GRACE_SECONDS).
shutdown_grace_seconds = 30.0
# Seconds between HTTP/2 keepalive pings, and how long one may go unanswered.
http2_keepalive_seconds = 60
http2_keepalive_timeout_seconds = 20
# Seconds a new connection has to send the start of its first request before it is closed
# (0 for no limit).
handshake_timeout_seconds = 10
# Calls open at once on one connection.
max_concurrent_streams = 256
# Seconds a handler may take to answer (to start its stream, for Query and QueryBatch);
# a shorter grpc-timeout wins. 0 for no limit.
request_timeout_seconds = 300
# gRPC-Web (HTTP/1.1 and HTTP/2) on the same port, for browsers (flag --grpc-web), and the
# origins allowed to call it cross-origin (["*"] for any).
grpc_web = false
cors_allow_origins = []
# Address of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/documents, ...), e.g.
# "0.0.0.0:8080"; empty serves none (env DEEPRECALL_HTTP_LISTEN, flag --http-listen). Its
# largest request body, in bytes.
http_listen = ""
http_max_body_bytes = 16777216

[store]
# Where documents live: "embedded" (SQLite in data_dir, one replica) or "postgres" (PostgreSQL
# with pgvector, shared by every replica) (env DEEPRECALL_STORE, flag --store).
backend = "embedded"
# Where the SQLite database lives (env DEEPRECALL_DATA_DIR, flag --data-dir).
data_dir = "./deeprecall-data"
# SQLite connections used for reads.
read_connections = 4
# Dimensions of the feature-hashing embedder ([embedding] dimensions overrides it).
embedding_dimension = 4096
# PostgreSQL of the postgres store: postgres://user@host:5432/database (env
# DEEPRECALL_DATABASE_URL, flag --database-url). Never logged. The standard PG* variables
# (PGHOST, PGPASSWORD, ...) fill in what the URL leaves out.
database_url = ""
# File holding the password (env DEEPRECALL_DATABASE_PASSWORD_FILE, flag
# --database-password-file); it wins over PGPASSWORD, a password in the URL wins over both.
# database_password_file = "/run/secrets/deeprecall/password"
# Connections per replica; seconds to connect (and to wait for a pooled connection); seconds
# a statement may run; longest wait between attempts to reach the database at start.
pool_size = 16
connect_timeout_seconds = 5.0
statement_timeout_seconds = 30.0
connect_retry_max_seconds = 30.0
# Vector index: "hnsw" (searches stay fast as collections grow; written vectors enter the graph
# in the background, and are ranked exactly until they have) or "exact" (no index: each search
# scans its collection). Every replica must agree: the index is made or dropped at start.
vector_index = "hnsw"
# With "hnsw": tasks of this replica moving written vectors into the graph (each holds one
# connection and keeps one database core busy while it works); more drain a bulk load sooner
# on a database with cores to spare; 0 leaves the work to other replicas. Below pool_size.
vector_index_workers = 1
# With "hnsw": candidates the graph keeps while searching (pgvector's hnsw.ef_search, 1 to
# 1000); more finds more of the true neighbours, more slowly. Unset: 40 for the hashing
# embedder, whose folded graph only adds to the keyword matches ranked exactly, 100 for a
# dense one (openai, local), whose neighbours the graph alone finds.
# hnsw_ef_search = 100
# With "hnsw": pgvector 0.8's iterative scans, which go back into the graph until enough rows
# pass a search's filter: "relaxed_order", "strict_order" or "off". Set "off" on pgvector 0.7,
# which has none (searches work the same, but a selective filter may find fewer neighbours
# through the graph).
hnsw_iterative_scan = "relaxed_order"
# TLS: disable, prefer, require, verify-ca or verify-full; CA certificates (PEM) for the
# verify modes, the system roots when unset.
sslmode = "prefer"
# ssl_ca_file = "/etc/ssl/postgres-ca.pem"
# Milliseconds between checks that the store answers: while it does not, the health of
# deeprecall.v1.DeepRecall (readiness) reports NOT_SERVING and the server's ("", liveness)
# stays SERVING. 0 turns the checks off.
health_check_interval_ms = 5000
# Hybrid search fuses the vector ranking with BM25's: a passage scores vector_weight / (rrf_k +
# rank) from the first and 1 / (rrf_k + rank) from the second. Unset: 60 and 1 for the hashing
# embedder, 10 and 3 for a dense one (openai, local), whose ranking is the better one on
# questions worded otherwise than their answers (BENCHMARKS.md).
# rrf_k = 10.0
# vector_weight = 3.0
# Embedded store: from this many documents, a collection of dense vectors (openai, local) is
# searched through its HNSW graph (approximate, flat as it grows) rather than a full scan
# (exact, linear in its size).
hnsw_min_documents = 50000

[embedding]
# What turns text into the store's vectors (env DEEPRECALL_EMBEDDER, flag --embedder):
# "hashing" (feature hashing of words: offline, lexical), "openai" (any OpenAI-compatible
# /v1/embeddings: OpenAI, Azure, TEI, Ollama, vLLM, LiteLLM) or "local" (a sentence-transformers
# model directory of the BERT family, run in-process on the CPU). Each collection records the
# embedder that made its vectors: under another one, its queries and writes fail with
# FAILED_PRECONDITION until `deeprecall reindex --collection NAME` re-embeds it.
embedder = "hashing"
# openai: model name and API root, empty for OpenAI's (flags --embedding-model,
# --embedding-base-url).
model = ""
base_url = ""
# Size of the vectors (flag --embedding-dimensions): openai needs it unless the model is one of
# OpenAI's; for hashing it overrides store.embedding_dimension.
# dimensions = 768
# openai: send "dimensions" with each request; unset sends it to text-embedding-3 models only.
# send_dimensions = true
# local: the model's directory (flag --embedding-model-dir).
# model_dir = "/models/all-minilm-l6-v2"
# openai: API key; prefer env DEEPRECALL_EMBEDDING_API_KEY or this file (its first line).
# api_key_file = "/run/secrets/deeprecall/embedding-key"
# Texts per request (per forward pass for local); estimated tokens per request; requests in
# flight at once; longest input in tokens (longer texts are cut, with a warning); threads of
# the local model; tokens per forward pass of the local model, padding included (a longer
# text runs alone: passes of a few hundred tokens keep their activations in the processor's
# caches); seconds per request.
batch_size = 32
batch_tokens = 16384
concurrency = 4
max_input_tokens = 8191
threads = 2
pass_tokens = 512
request_timeout_seconds = 60.0

[rerank]
# Reorders each search's fused candidates before the cut to top_k (env DEEPRECALL_RERANKER,
# flag --reranker): "none", "cohere" (Cohere's v2 /rerank, also served by TEI, Jina, Voyage,
# vLLM and Infinity) or "local" (a BERT cross-encoder directory, run in-process). A reranker
# that fails leaves the fused order, with a warning and deeprecall_rerank_failures_total.
reranker = "none"
# cohere: model and API root, empty for https://api.cohere.com/v2 (flags --reranker-model,
# --reranker-base-url).
model = ""
base_url = ""
# local: the cross-encoder's directory (flag --reranker-model-dir).
# model_dir = "/models/ms-marco-minilm-l-6-v2"
# cohere: API key; prefer env DEEPRECALL_RERANKER_API_KEY or this file (its first line).
# api_key_file = "/run/secrets/deeprecall/reranker-key"
# Candidates reordered per search; seconds a rerank request may take before the fused order
# stands; threads of the local model, query-passage pairs per forward pass and tokens per
# forward pass, padding included (a longer pair runs alone).
candidates = 50
request_timeout_seconds = 10.0
threads = 2
batch_size = 16
pass_tokens = 512

[engine]
# Passages per search when a request says 0, and the most a request may ask for.
default_top_k = 5
max_top_k = 100
# Request limits, in bytes.
max_query_bytes = 8192
max_prompt_bytes = 32768
max_document_bytes = 1048576
# Most documents (or ids) per AddDocuments / DeleteDocuments call.
max_documents_per_call = 10000
# QueryBatch: most queries, default and largest concurrency.
max_batch_queries = 10000
default_batch_concurrency = 4
max_batch_concurrency = 64
# Default budget of a query; a request may set its own.
max_iterations = 10
max_search_calls = 20
max_time_seconds = 120.0
# max_tokens = 200000
# max_cost_usd = 0.50
# Turns in a row whose tool calls all fail before a run stops.
max_consecutive_tool_errors = 3
# Sub-model prompts run at once, and the most prompts per llm_query_batched call.
sub_model_concurrency = 8
max_batched_prompts = 32
# Most sources in a result (cited sources are always kept).
max_sources = 20
# Trace events buffered per stream before the run waits for a slow reader.
event_buffer = 64
# Completion tokens asked for per model call, at most.
max_completion_tokens = 4096
# Milliseconds kept before a caller's gRPC deadline for the result's trip back: a run with a
# deadline finishes this much earlier (the time a summing-up call needs is measured per run).
deadline_reserve_ms = 100

[llm]
# Root model backend: "extractive" (offline, no model needed), "openai" (any OpenAI-compatible
# API) or "anthropic" (env DEEPRECALL_BACKEND, flag --backend).
backend = "extractive"
# Model name; for Azure OpenAI the deployment name (env DEEPRECALL_MODEL, flag --model).
model = ""
# API root; empty takes the backend's public endpoint (env DEEPRECALL_BASE_URL, flag --base-url).
base_url = ""
# The API key comes from DEEPRECALL_LLM_API_KEY or from this file (flag --api-key-file).
# api_key_file = "/run/secrets/llm-api-key"
# It may also be written here, but a key in a config file ends up in backups, images and
# version control: prefer the environment or a secrets file.
# api_key = "sk-..."
# Seconds to connect, and for a whole model request.
connect_timeout_seconds = 10.0
request_timeout_seconds = 120.0
# Retries per model call: attempts in all, first backoff and longest backoff (ms).
max_attempts = 4
retry_base_ms = 500
retry_max_ms = 20000
# Stream replies so the answer's text reaches the caller as it is written.
stream = true
# Azure OpenAI: setting api-version selects the deployment URL and the api-key header.
# azure_api_version = "2024-06-01"
# "max_completion_tokens" for OpenAI's reasoning models.
max_tokens_field = "max_tokens"
# Ask for each call's cost (OpenRouter).
request_cost = false
anthropic_version = "2023-06-01"
# extractive_max_followups = 2

[llm.headers]
# "HTTP-Referer" = "https://example.com"

[llm.sub]
# The sub-model answering llm_query; unset fields take the root model's.
# backend = "openai"
# model = "gpt-4o-mini"
# base_url = ""
# api_key_file = ""

[llm.prices]
# US dollars per million tokens, for backends that do not report a cost.
# "gpt-4o-mini" = { input_per_million = 0.15, output_per_million = 0.60 }

[cache]
# Cache backend: "memory", "sqlite", "redis" or "none" (env DEEPRECALL_CACHE, flag --cache).
backend = "memory"
# Seconds a cached result stays valid (env DEEPRECALL_CACHE_TTL, flag --cache-ttl).
ttl_seconds = 3600
# Seconds cached search hits stay valid.
search_ttl_seconds = 600
# File of the sqlite cache (flag --cache-path); the search cache sits beside it.
path = "./deeprecall-cache.db"
# Redis of the redis cache (env DEEPRECALL_REDIS_URL, flag --redis-url), and its key prefix.
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "deeprecall"
# Milliseconds a redis operation may take before it counts as failed (a lookup as a miss).
redis_timeout_ms = 250
# Bounds of the memory cache.
max_entries = 10000
max_bytes = 268435456

[auth]
# API keys: off when no key is configured. A key file (TOML, one [[keys]] table per key) is
# re-read on SIGHUP (env DEEPRECALL_KEYS_FILE, flag --keys-file).
# keys_file = "/etc/deeprecall/keys.toml"
# Keys may also be listed here, as in the key file:
# keys = [{ name = "ci", sha256 = "<hex digest>", scopes = ["query"] }]
keys = []
# Services callable without a key.
exempt_services = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]

[limits]
# Requests per minute per key, or per client address without auth; 0 turns rate limits off
# (env DEEPRECALL_RATE_LIMIT_PER_MINUTE, flag --rate-limit-per-minute). A QueryBatch costs one
# request per query.
requests_per_minute = 0
# Requests admitted at once after a quiet spell (flag --rate-limit-burst).
burst = 20
# While keys are on: calls refused for a missing, malformed or unknown key, per client address
# per minute, and at once after a quiet spell; beyond them such calls get RESOURCE_EXHAUSTED
# with retry-after instead of UNAUTHENTICATED. Valid keys from the address are not held back.
# 0 turns this off.
refused_per_minute = 60
refused_burst = 20
# "memory" (each replica alone) or "redis" (one limit shared by every replica; flag
# --rate-limit-store). While Redis cannot answer, each replica limits alone.
store = "memory"
# Redis of the redis store (env DEEPRECALL_REDIS_URL, flag --redis-url), its key prefix and the
# longest wait for it.
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "deeprecall:ratelimit"
redis_timeout_ms = 250
# While Redis cannot answer, each replica limits alone, to 1/N of every rate with N here: set
# it to the replica count to keep the fleet near the shared limit during an outage; 1 lets
# each replica admit the whole rate (env DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS).
fallback_replicas = 1
# Callers tracked in memory at most; idle ones are forgotten first.
max_tracked_callers = 100000
# Queries running at once, 0 for no bound (flag --max-concurrent-queries); how many may wait
# for a slot, and for how long (ms), before being refused with RESOURCE_EXHAUSTED.
max_concurrent_queries = 256
max_queued_queries = 64
max_queue_wait_ms = 1000

[telemetry]
# tracing filter directives (env DEEPRECALL_LOG).
log_filter = "info"
# "text" or "json" (env DEEPRECALL_LOG_FORMAT).
log_format = "text"
# OpenTelemetry collector for spans, e.g. "http://otel-collector:4317" (OTLP/gRPC) or
# "http://otel-collector:4318" (OTLP/HTTP); empty exports nothing (flag --otlp-endpoint,
# env DEEPRECALL_OTLP_ENDPOINT). The protocol is inferred unless set: "grpc", "http/protobuf".
otlp_endpoint = ""
otlp_protocol = ""
service_name = "deeprecall"
# Share of new traces exported; a caller's traceparent decides for the traces it continues.
sampling_ratio = 1.0
# Prometheus metrics on their own port, e.g. "0.0.0.0:9464" (flag --metrics-listen,
# env DEEPRECALL_METRICS_LISTEN); empty serves none.
metrics_listen = ""
# JSONL file of every trace event (flag --trace-log, env DEEPRECALL_TRACE_LOG), rotated past
# trace_log_max_bytes, keeping trace_log_keep_files old files.
trace_log = ""
trace_log_max_bytes = 104857600
trace_log_keep_files = 5

[tls]
# TLS on the gRPC port and the HTTP port: the certificate chain (leaf first) and its key, as
# PEM (flags --tls-cert and --tls-key, env DEEPRECALL_TLS_CERT and DEEPRECALL_TLS_KEY). Unset
# serves plaintext. TLS 1.2 and 1.3 only.
# cert = "/etc/deeprecall/tls/tls.crt"
# key = "/etc/deeprecall/tls/tls.key"
# Mutual TLS: the CAs whose client certificates are accepted (flag --tls-client-ca, env
# DEEPRECALL_TLS_CLIENT_CA). A key file entry may name a certificate subject instead of a key.
# client_ca = "/etc/deeprecall/tls/ca.crt"
# "required": a connection without a client certificate is refused; "optional": one without
# must present an API key.
client_auth = "required"
# Seconds between looks at the files for a change (a rotated Secret); SIGHUP reloads at once.
# 0 reloads on SIGHUP only.
reload_interval_seconds = 10
# Serve the Prometheus port over TLS too, with the same certificate.
metrics = false

[telemetry.resource_attributes]
# "deployment.environment" = "prod"

[telemetry.otlp_headers]
# Sent with every export (gRPC metadata or HTTP headers) besides OTEL_EXPORTER_OTLP_HEADERS,
# whose value wins for a header named in both; values are secrets and never logged. For a
# vendor that wants an API key:
# "x-api-key" = "<key>"
"#;
