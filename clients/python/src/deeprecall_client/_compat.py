"""`DeepRecall` and `AsyncDeepRecall`: the Python library `deeprecall` 0.4's interface over the
DeepRecall service, so that its users migrate by changing an import.

The methods keep the library's signatures (`query(query, root_prompt=None, top_k=None,
budget=None, filters=None, context_prefix=None)`, `query_batch(queries, max_concurrency=4, ...)`,
`add_documents(documents, metadatas=None, ids=None)`, `close()`, context managers) and return
`DeepRecallResult` objects with its field names. What the library configured in process (the
vector store, the model backend, the cache) is the server's configuration here; the
constructor takes where the server is instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from google.protobuf import json_format

from deeprecall_client._aio import AsyncClient
from deeprecall_client._common import DeepRecallError, query_request
from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2 as pb
from deeprecall_client._sync import Client


@dataclass(frozen=True)
class QueryBudget:
    """Limits of one query; `None` leaves a limit at the server's default."""

    max_iterations: int | None = None
    max_search_calls: int | None = None
    max_tokens: int | None = None
    max_time_seconds: float | None = None
    max_cost_usd: float | None = None

    def to_proto(self) -> pb.Budget:
        """The `Budget` message, with only the limits that are set."""
        return pb.Budget(**{name: value for name, value in asdict(self).items() if value is not None})


@dataclass
class Source:
    """A passage the query found."""

    content: str
    metadata: dict[str, Any]
    score: float
    id: str


@dataclass
class ReasoningStep:
    """One action of the engine. `code` holds the tool call's arguments (JSON): the service
    calls tools where the library ran Python code."""

    iteration: int
    action: str
    code: str | None
    output: str | None
    searches: list[dict[str, Any]] = field(default_factory=list)
    sub_llm_calls: int = 0
    iteration_time: float | None = None


@dataclass
class UsageInfo:
    """Tokens and calls of one query, per model in `model_breakdown`."""

    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_calls: int = 0
    model_breakdown: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: DeepRecall: searches run and dollars spent.
    total_search_calls: int = 0
    total_cost_usd: float = 0.0


@dataclass
class DeepRecallResult:
    """The outcome of one query, with the library's field names; `citations`, `partial`,
    `cached` and `query_id` are DeepRecall's additions."""

    answer: str
    sources: list[Source]
    reasoning_trace: list[ReasoningStep]
    usage: UsageInfo
    execution_time: float
    query: str
    budget_status: dict[str, Any] | None
    error: str | None
    confidence: float | None
    citations: list[str] = field(default_factory=list)
    partial: bool = False
    cached: bool = False
    query_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable dict."""
        return asdict(self)

    @classmethod
    def failed(cls, query: str, error: str) -> DeepRecallResult:
        """The result of a query that failed, as `query_batch` reports it."""
        return cls(
            answer="",
            sources=[],
            reasoning_trace=[],
            usage=UsageInfo(),
            execution_time=0.0,
            query=query,
            budget_status=None,
            error=error,
            confidence=None,
        )


def result_from_proto(query: str, result: pb.QueryResult) -> DeepRecallResult:
    """Converts a `QueryResult` message to the library's result."""
    status = result.budget_status
    used = status.used
    budget_status: dict[str, Any] = {
        "iterations_used": used.iterations,
        "search_calls_used": used.search_calls,
        "tokens_used": used.tokens,
        "cost_usd": used.cost_usd,
        "time_elapsed": used.elapsed_seconds,
        "budget_exceeded": status.exhausted != pb.BUDGET_RESOURCE_UNSPECIFIED,
        "exhausted": pb.BudgetResource.Name(status.exhausted)
        if status.exhausted
        else None,
        "limits": json_format.MessageToDict(status.limits, preserving_proto_field_name=True),
    }
    usage = result.usage
    return DeepRecallResult(
        answer=result.answer,
        sources=[
            Source(
                content=source.content,
                metadata=json_format.MessageToDict(source.metadata),
                score=source.score,
                id=source.id,
            )
            for source in result.sources
        ],
        reasoning_trace=[
            ReasoningStep(
                iteration=step.step,
                action=step.action,
                code=step.input or None,
                output=step.output or None,
            )
            for step in result.reasoning_trace
        ],
        usage=UsageInfo(
            total_input_tokens=usage.input_tokens,
            total_output_tokens=usage.output_tokens,
            total_calls=usage.llm_calls,
            model_breakdown={
                model.model: {
                    "input_tokens": model.input_tokens,
                    "output_tokens": model.output_tokens,
                    "calls": model.calls,
                    "cost_usd": model.cost_usd,
                }
                for model in usage.models
            },
            total_search_calls=usage.search_calls,
            total_cost_usd=usage.cost_usd,
        ),
        execution_time=result.execution_time_seconds,
        query=query,
        budget_status=budget_status,
        error=result.error or None,
        confidence=result.confidence if result.sources else None,
        citations=list(result.citations),
        partial=result.partial,
        cached=result.cached,
        query_id=result.query_id,
    )


def _request(
    query: str,
    collection: str,
    root_prompt: str | None,
    top_k: int | None,
    budget: QueryBudget | None,
    filters: Mapping[str, Any] | None,
    context_prefix: str | None,
) -> pb.QueryRequest:
    return query_request(
        query,
        collection=collection,
        top_k=top_k or 0,
        filters=filters,
        budget=budget.to_proto() if budget is not None else None,
        root_prompt=root_prompt or "",
        context_prefix=context_prefix or "",
    )


def _documents(
    documents: Sequence[str],
    metadatas: Sequence[Mapping[str, Any]] | None,
    ids: Sequence[str] | None,
) -> list[dict[str, Any]]:
    if metadatas is not None and len(metadatas) != len(documents):
        raise ValueError(f"metadatas has {len(metadatas)} entries for {len(documents)} documents")
    if ids is not None and len(ids) != len(documents):
        raise ValueError(f"ids has {len(ids)} entries for {len(documents)} documents")
    return [
        {
            "content": content,
            "metadata": dict(metadatas[index]) if metadatas is not None else {},
            "id": ids[index] if ids is not None else "",
        }
        for index, content in enumerate(documents)
    ]


def _in_order(
    queries: Sequence[str], items: Sequence[pb.QueryBatchItem]
) -> list[DeepRecallResult]:
    results: list[DeepRecallResult | None] = [None] * len(queries)
    for item in items:
        query = queries[item.index]
        if item.WhichOneof("outcome") == "result":
            results[item.index] = result_from_proto(query, item.result)
        else:
            results[item.index] = DeepRecallResult.failed(query, item.error.message)
    return [
        result
        if result is not None
        else DeepRecallResult.failed(queries[index], "the server sent no outcome")
        for index, result in enumerate(results)
    ]


class DeepRecall:
    """The library's `DeepRecall` engine, answered by a DeepRecall server over gRPC.

        with DeepRecall("localhost:50051", api_key=key) as engine:
            engine.add_documents(["Kestrel is in Tampere."], ids=["kestrel"])
            result = engine.query("Where is Kestrel?", budget=QueryBudget(max_search_calls=5))
            print(result.answer, result.usage.total_input_tokens)

    `collection` is the collection every call uses; `timeout` the deadline of each call, in
    seconds. Other keyword arguments go to `Client`: the TLS options `root_certificates`,
    `certificate_chain` and `private_key` (PEM bytes, for an `https://` target), `credentials`,
    `metadata`, `options`.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        collection: str = "",
        timeout: float | None = None,
        **client_options: Any,
    ) -> None:
        self.client = Client(target, api_key=api_key, timeout=timeout, **client_options)
        self.collection = collection

    def __enter__(self) -> DeepRecall:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self.client.close()

    def query(
        self,
        query: str,
        root_prompt: str | None = None,
        top_k: int | None = None,
        budget: QueryBudget | None = None,
        filters: Mapping[str, Any] | None = None,
        context_prefix: str | None = None,
    ) -> DeepRecallResult:
        """Answers one question. A budget that runs out is not an error: the result is then
        partial, with `error` saying which limit ended it."""
        request = _request(
            query, self.collection, root_prompt, top_k, budget, filters, context_prefix
        )
        return result_from_proto(query, self.client.query(request))

    def query_batch(
        self,
        queries: Sequence[str],
        max_concurrency: int = 4,
        root_prompt: str | None = None,
        top_k: int | None = None,
        budget: QueryBudget | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[DeepRecallResult]:
        """Answers many questions, at most `max_concurrency` at once, and returns the results in
        the order of `queries`; a query that failed has `error` set."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        requests = [
            _request(query, self.collection, root_prompt, top_k, budget, filters, None)
            for query in queries
        ]
        items = list(self.client.query_batch(requests, max_concurrency=max_concurrency))
        return _in_order(queries, items)

    def add_documents(
        self,
        documents: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Adds documents and returns their ids (generated where `ids` gives none)."""
        response = self.client.add_documents(
            _documents(documents, metadatas, ids), collection=self.collection
        )
        return list(response.ids)

    def delete_documents(self, ids: Sequence[str]) -> int:
        """Deletes documents by id and returns how many there were."""
        return self.client.delete_documents(ids, collection=self.collection).deleted


class AsyncDeepRecall:
    """The library's `AsyncDeepRecall`, answered by a DeepRecall server over `grpc.aio`: the
    same methods as `DeepRecall`, awaited. Create it inside the event loop that uses it."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        collection: str = "",
        timeout: float | None = None,
        **client_options: Any,
    ) -> None:
        self.client = AsyncClient(target, api_key=api_key, timeout=timeout, **client_options)
        self.collection = collection

    async def __aenter__(self) -> AsyncDeepRecall:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection."""
        await self.client.close()

    async def query(
        self,
        query: str,
        root_prompt: str | None = None,
        top_k: int | None = None,
        budget: QueryBudget | None = None,
        filters: Mapping[str, Any] | None = None,
        context_prefix: str | None = None,
    ) -> DeepRecallResult:
        """Answers one question."""
        request = _request(
            query, self.collection, root_prompt, top_k, budget, filters, context_prefix
        )
        return result_from_proto(query, await self.client.query(request))

    async def query_batch(
        self,
        queries: Sequence[str],
        max_concurrency: int = 4,
        root_prompt: str | None = None,
        top_k: int | None = None,
        budget: QueryBudget | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[DeepRecallResult]:
        """Answers many questions; results in the order of `queries`."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        requests = [
            _request(query, self.collection, root_prompt, top_k, budget, filters, None)
            for query in queries
        ]
        items = [
            item
            async for item in self.client.query_batch(requests, max_concurrency=max_concurrency)
        ]
        return _in_order(queries, items)

    async def add_documents(
        self,
        documents: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Adds documents and returns their ids."""
        response = await self.client.add_documents(
            _documents(documents, metadatas, ids), collection=self.collection
        )
        return list(response.ids)

    async def delete_documents(self, ids: Sequence[str]) -> int:
        """Deletes documents by id and returns how many there were."""
        response = await self.client.delete_documents(ids, collection=self.collection)
        return response.deleted


__all__ = [
    "AsyncDeepRecall",
    "DeepRecall",
    "DeepRecallError",
    "DeepRecallResult",
    "QueryBudget",
    "ReasoningStep",
    "Source",
    "UsageInfo",
]
