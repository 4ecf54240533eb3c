from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_MODE_UNSPECIFIED: _ClassVar[QueryMode]
    QUERY_MODE_LOOP: _ClassVar[QueryMode]
    QUERY_MODE_SINGLE_PASS: _ClassVar[QueryMode]

class BudgetResource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_RESOURCE_UNSPECIFIED: _ClassVar[BudgetResource]
    BUDGET_RESOURCE_ITERATIONS: _ClassVar[BudgetResource]
    BUDGET_RESOURCE_SEARCH_CALLS: _ClassVar[BudgetResource]
    BUDGET_RESOURCE_TOKENS: _ClassVar[BudgetResource]
    BUDGET_RESOURCE_TIME: _ClassVar[BudgetResource]
    BUDGET_RESOURCE_COST: _ClassVar[BudgetResource]
QUERY_MODE_UNSPECIFIED: QueryMode
QUERY_MODE_LOOP: QueryMode
QUERY_MODE_SINGLE_PASS: QueryMode
BUDGET_RESOURCE_UNSPECIFIED: BudgetResource
BUDGET_RESOURCE_ITERATIONS: BudgetResource
BUDGET_RESOURCE_SEARCH_CALLS: BudgetResource
BUDGET_RESOURCE_TOKENS: BudgetResource
BUDGET_RESOURCE_TIME: BudgetResource
BUDGET_RESOURCE_COST: BudgetResource

class Budget(_message.Message):
    __slots__ = ("max_iterations", "max_search_calls", "max_tokens", "max_time_seconds", "max_cost_usd")
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEARCH_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    max_iterations: int
    max_search_calls: int
    max_tokens: int
    max_time_seconds: float
    max_cost_usd: float
    def __init__(self, max_iterations: _Optional[int] = ..., max_search_calls: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_time_seconds: _Optional[float] = ..., max_cost_usd: _Optional[float] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("query", "root_prompt", "top_k", "collection", "filters", "context_prefix", "budget", "skip_cache", "mode")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ROOT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    query: str
    root_prompt: str
    top_k: int
    collection: str
    filters: _struct_pb2.Struct
    context_prefix: str
    budget: Budget
    skip_cache: bool
    mode: QueryMode
    def __init__(self, query: _Optional[str] = ..., root_prompt: _Optional[str] = ..., top_k: _Optional[int] = ..., collection: _Optional[str] = ..., filters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context_prefix: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., skip_cache: _Optional[bool] = ..., mode: _Optional[_Union[QueryMode, str]] = ...) -> None: ...

class QueryEvent(_message.Message):
    __slots__ = ("sequence", "elapsed_seconds", "budget_used", "step_started", "llm_call", "search", "sub_llm_call", "step_completed", "budget_warning", "answer_delta", "result")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USED_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    LLM_CALL_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    SUB_LLM_CALL_FIELD_NUMBER: _ClassVar[int]
    STEP_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_WARNING_FIELD_NUMBER: _ClassVar[int]
    ANSWER_DELTA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    elapsed_seconds: float
    budget_used: BudgetUsage
    step_started: StepStarted
    llm_call: LlmCall
    search: SearchEvent
    sub_llm_call: SubLlmCall
    step_completed: StepCompleted
    budget_warning: BudgetWarning
    answer_delta: AnswerDelta
    result: QueryResult
    def __init__(self, sequence: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., budget_used: _Optional[_Union[BudgetUsage, _Mapping]] = ..., step_started: _Optional[_Union[StepStarted, _Mapping]] = ..., llm_call: _Optional[_Union[LlmCall, _Mapping]] = ..., search: _Optional[_Union[SearchEvent, _Mapping]] = ..., sub_llm_call: _Optional[_Union[SubLlmCall, _Mapping]] = ..., step_completed: _Optional[_Union[StepCompleted, _Mapping]] = ..., budget_warning: _Optional[_Union[BudgetWarning, _Mapping]] = ..., answer_delta: _Optional[_Union[AnswerDelta, _Mapping]] = ..., result: _Optional[_Union[QueryResult, _Mapping]] = ...) -> None: ...

class BudgetUsage(_message.Message):
    __slots__ = ("iterations", "search_calls", "tokens", "cost_usd", "elapsed_seconds")
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    search_calls: int
    tokens: int
    cost_usd: float
    elapsed_seconds: float
    def __init__(self, iterations: _Optional[int] = ..., search_calls: _Optional[int] = ..., tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class StepStarted(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...

class LlmCall(_message.Message):
    __slots__ = ("step", "model", "input_tokens", "output_tokens", "latency_seconds", "cost_usd", "tool_calls")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    step: int
    model: str
    input_tokens: int
    output_tokens: int
    latency_seconds: float
    cost_usd: float
    tool_calls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., latency_seconds: _Optional[float] = ..., cost_usd: _Optional[float] = ..., tool_calls: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchEvent(_message.Message):
    __slots__ = ("step", "query", "filters", "top_k", "hits", "latency_seconds", "cache_hit", "collection", "reranker", "rerank_failed")
    STEP_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    RERANK_FAILED_FIELD_NUMBER: _ClassVar[int]
    step: int
    query: str
    filters: _struct_pb2.Struct
    top_k: int
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    latency_seconds: float
    cache_hit: bool
    collection: str
    reranker: str
    rerank_failed: bool
    def __init__(self, step: _Optional[int] = ..., query: _Optional[str] = ..., filters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., top_k: _Optional[int] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., latency_seconds: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., collection: _Optional[str] = ..., reranker: _Optional[str] = ..., rerank_failed: _Optional[bool] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "rerank_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    rerank_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., rerank_score: _Optional[float] = ...) -> None: ...

class SubLlmCall(_message.Message):
    __slots__ = ("step", "model", "prompts", "failed", "input_tokens", "output_tokens", "latency_seconds", "cost_usd")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    step: int
    model: str
    prompts: int
    failed: int
    input_tokens: int
    output_tokens: int
    latency_seconds: float
    cost_usd: float
    def __init__(self, step: _Optional[int] = ..., model: _Optional[str] = ..., prompts: _Optional[int] = ..., failed: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., latency_seconds: _Optional[float] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class StepCompleted(_message.Message):
    __slots__ = ("step", "tools", "latency_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    latency_seconds: float
    def __init__(self, step: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., latency_seconds: _Optional[float] = ...) -> None: ...

class BudgetWarning(_message.Message):
    __slots__ = ("resource", "used", "limit", "message")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    resource: BudgetResource
    used: float
    limit: float
    message: str
    def __init__(self, resource: _Optional[_Union[BudgetResource, str]] = ..., used: _Optional[float] = ..., limit: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class AnswerDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("answer", "sources", "reasoning_trace", "usage", "execution_time_seconds", "budget_status", "confidence", "partial", "error", "cached", "citations", "query_id", "coalesced")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REASONING_TRACE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    answer: str
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    reasoning_trace: _containers.RepeatedCompositeFieldContainer[ReasoningStep]
    usage: Usage
    execution_time_seconds: float
    budget_status: BudgetStatus
    confidence: float
    partial: bool
    error: str
    cached: bool
    citations: _containers.RepeatedScalarFieldContainer[str]
    query_id: str
    coalesced: bool
    def __init__(self, answer: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., reasoning_trace: _Optional[_Iterable[_Union[ReasoningStep, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., execution_time_seconds: _Optional[float] = ..., budget_status: _Optional[_Union[BudgetStatus, _Mapping]] = ..., confidence: _Optional[float] = ..., partial: _Optional[bool] = ..., error: _Optional[str] = ..., cached: _Optional[bool] = ..., citations: _Optional[_Iterable[str]] = ..., query_id: _Optional[str] = ..., coalesced: _Optional[bool] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("id", "content", "metadata", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: str
    metadata: _struct_pb2.Struct
    score: float
    def __init__(self, id: _Optional[str] = ..., content: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class ReasoningStep(_message.Message):
    __slots__ = ("step", "action", "input", "output")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    step: int
    action: str
    input: str
    output: str
    def __init__(self, step: _Optional[int] = ..., action: _Optional[str] = ..., input: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "total_tokens", "llm_calls", "search_calls", "cost_usd", "models")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_CALLS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    llm_calls: int
    search_calls: int
    cost_usd: float
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., llm_calls: _Optional[int] = ..., search_calls: _Optional[int] = ..., cost_usd: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model", "calls", "input_tokens", "output_tokens", "cost_usd")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    def __init__(self, model: _Optional[str] = ..., calls: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("limits", "used", "exhausted")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    limits: Budget
    used: BudgetUsage
    exhausted: BudgetResource
    def __init__(self, limits: _Optional[_Union[Budget, _Mapping]] = ..., used: _Optional[_Union[BudgetUsage, _Mapping]] = ..., exhausted: _Optional[_Union[BudgetResource, str]] = ...) -> None: ...

class QueryBatchRequest(_message.Message):
    __slots__ = ("queries", "max_concurrency")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[QueryRequest]
    max_concurrency: int
    def __init__(self, queries: _Optional[_Iterable[_Union[QueryRequest, _Mapping]]] = ..., max_concurrency: _Optional[int] = ...) -> None: ...

class QueryBatchItem(_message.Message):
    __slots__ = ("index", "result", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    result: QueryResult
    error: QueryError
    def __init__(self, index: _Optional[int] = ..., result: _Optional[_Union[QueryResult, _Mapping]] = ..., error: _Optional[_Union[QueryError, _Mapping]] = ...) -> None: ...

class QueryError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "content", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: str
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., content: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AddDocumentsRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class AddDocumentsResponse(_message.Message):
    __slots__ = ("ids", "collection_version", "document_count")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection_version: int
    document_count: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection_version: _Optional[int] = ..., document_count: _Optional[int] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted", "collection_version", "document_count")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    collection_version: int
    document_count: int
    def __init__(self, deleted: _Optional[int] = ..., collection_version: _Optional[int] = ..., document_count: _Optional[int] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("deleted_documents", "cache_entries_removed")
    DELETED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    deleted_documents: int
    cache_entries_removed: int
    def __init__(self, deleted_documents: _Optional[int] = ..., cache_entries_removed: _Optional[int] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "missing_ids")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClearCacheRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ClearCacheResponse(_message.Message):
    __slots__ = ("entries_removed",)
    ENTRIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    entries_removed: int
    def __init__(self, entries_removed: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("collections", "cache", "usage", "server_version", "model", "uptime_seconds", "search_cache", "key_usage")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_CACHE_FIELD_NUMBER: _ClassVar[int]
    KEY_USAGE_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    cache: CacheStats
    usage: UsageTotals
    server_version: str
    model: str
    uptime_seconds: float
    search_cache: CacheStats
    key_usage: _containers.RepeatedCompositeFieldContainer[KeyUsage]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ..., usage: _Optional[_Union[UsageTotals, _Mapping]] = ..., server_version: _Optional[str] = ..., model: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., search_cache: _Optional[_Union[CacheStats, _Mapping]] = ..., key_usage: _Optional[_Iterable[_Union[KeyUsage, _Mapping]]] = ...) -> None: ...

class KeyUsage(_message.Message):
    __slots__ = ("key_name", "usage")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    usage: UsageTotals
    def __init__(self, key_name: _Optional[str] = ..., usage: _Optional[_Union[UsageTotals, _Mapping]] = ...) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("name", "document_count", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    document_count: int
    version: int
    def __init__(self, name: _Optional[str] = ..., document_count: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("hits", "misses", "entries", "evictions", "backend", "health")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    hits: int
    misses: int
    entries: int
    evictions: int
    backend: str
    health: CacheHealth
    def __init__(self, hits: _Optional[int] = ..., misses: _Optional[int] = ..., entries: _Optional[int] = ..., evictions: _Optional[int] = ..., backend: _Optional[str] = ..., health: _Optional[_Union[CacheHealth, _Mapping]] = ...) -> None: ...

class CacheHealth(_message.Message):
    __slots__ = ("reachable", "probe_latency_seconds", "failures")
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    PROBE_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    reachable: bool
    probe_latency_seconds: float
    failures: int
    def __init__(self, reachable: _Optional[bool] = ..., probe_latency_seconds: _Optional[float] = ..., failures: _Optional[int] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("queries", "cached_queries", "coalesced_queries", "input_tokens", "output_tokens", "search_calls", "llm_calls", "cost_usd", "models")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    CACHED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    COALESCED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_CALLS_FIELD_NUMBER: _ClassVar[int]
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    queries: int
    cached_queries: int
    coalesced_queries: int
    input_tokens: int
    output_tokens: int
    search_calls: int
    llm_calls: int
    cost_usd: float
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    def __init__(self, queries: _Optional[int] = ..., cached_queries: _Optional[int] = ..., coalesced_queries: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., search_calls: _Optional[int] = ..., llm_calls: _Optional[int] = ..., cost_usd: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ...) -> None: ...
