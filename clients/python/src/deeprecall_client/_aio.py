"""The asyncio client, on `grpc.aio`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, Union

import grpc
import grpc.aio

from deeprecall_client._common import (
    DEFAULT_OPTIONS,
    DeepRecallError,
    DocumentLike,
    MissingResultError,
    QueryLike,
    batch_request,
    call_metadata,
    channel_credentials,
    channel_target,
    document,
    query_request,
)
from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2 as pb
from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2_grpc as pb_grpc

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

#: A callback for each event: a plain function or a coroutine function.
EventCallback = Callable[[pb.QueryEvent], Union[None, Awaitable[None]]]


class AsyncClient:
    """An asyncio DeepRecall client; the same surface as `Client`, awaited, and the same
    options (`api_key`, TLS through an `https://` target and `root_certificates`,
    `certificate_chain`, `private_key`).

    Create it inside the event loop that uses it:

        async with AsyncClient("localhost:50051", api_key=key) as client:
            async for event in client.query_events("Where is Kestrel?"):
                print(event)
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        address, tls = channel_target(target)
        channel_options = list(DEFAULT_OPTIONS) + list(options)
        credentials = channel_credentials(
            target, tls, credentials, root_certificates, certificate_chain, private_key
        )
        self.channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(address, credentials, options=channel_options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=channel_options)
        )
        #: The generated stub, for anything the convenience methods do not cover.
        self.stub = pb_grpc.DeepRecallStub(self.channel)
        self._metadata = call_metadata(api_key, metadata)
        self._timeout = timeout

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self.channel.close(None)

    async def query_events(
        self, query: QueryLike, *, timeout: float | None = None, **fields: Any
    ) -> AsyncIterator[pb.QueryEvent]:
        """Runs one query and yields its events as they arrive; the last one is the `result`.

        Leaving the loop early (or cancelling the task) cancels the query on the server.
        """
        request = query_request(query, **fields)
        call = self.stub.Query(request, timeout=self._deadline(timeout), metadata=self._metadata)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error
        finally:
            # Cancelling a finished call does nothing; leaving the loop early stops the run.
            call.cancel()

    async def query(
        self,
        query: QueryLike,
        *,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> pb.QueryResult:
        """Runs one query and returns its result, handing every event to `on_event` first."""
        result: pb.QueryResult | None = None
        async for event in self.query_events(query, timeout=timeout, **fields):
            if on_event is not None:
                outcome = on_event(event)
                if outcome is not None:
                    await outcome
            if event.WhichOneof("event") == "result":
                result = event.result
        if result is None:
            raise MissingResultError()
        return result

    async def query_batch(
        self,
        queries: Iterable[QueryLike],
        *,
        max_concurrency: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.QueryBatchItem]:
        """Runs many queries and yields one item per query in completion order."""
        request = batch_request(queries, max_concurrency)
        call = self.stub.QueryBatch(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        try:
            async for item in call:
                yield item
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error
        finally:
            # Cancelling a finished call does nothing; leaving the loop early stops the run.
            call.cancel()

    async def add_documents(
        self,
        documents: Iterable[DocumentLike],
        *,
        collection: str = "",
        timeout: float | None = None,
    ) -> pb.AddDocumentsResponse:
        """Adds documents (messages or dicts with `content`, optional `id` and `metadata`)."""
        request = pb.AddDocumentsRequest(
            collection=collection, documents=[document(value) for value in documents]
        )
        return await self._unary(self.stub.AddDocuments, request, timeout)

    async def delete_documents(
        self, ids: Iterable[str], *, collection: str = "", timeout: float | None = None
    ) -> pb.DeleteDocumentsResponse:
        """Deletes documents by id; unknown ids are ignored."""
        request = pb.DeleteDocumentsRequest(collection=collection, ids=list(ids))
        return await self._unary(self.stub.DeleteDocuments, request, timeout)

    async def clear_cache(
        self, collection: str = "", *, timeout: float | None = None
    ) -> pb.ClearCacheResponse:
        """Clears the caches of one collection, or of all when `collection` is empty."""
        return await self._unary(
            self.stub.ClearCache, pb.ClearCacheRequest(collection=collection), timeout
        )

    async def get_stats(self, *, timeout: float | None = None) -> pb.GetStatsResponse:
        """Returns documents per collection, cache counters and cumulative usage."""
        return await self._unary(self.stub.GetStats, pb.GetStatsRequest(), timeout)

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._timeout

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return await method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error


__all__ = ["AsyncClient"]
