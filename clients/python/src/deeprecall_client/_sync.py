"""The blocking client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

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


class Client:
    """A blocking DeepRecall client.

    `target` is `host:port` or `http://host:port` for a plaintext channel, `https://host:port`
    for TLS. Over TLS the server's certificate is checked against the system's roots, or against
    `root_certificates` (the PEM of a private CA); `certificate_chain` and `private_key` (PEM)
    present a client certificate, for a server that requires one (mutual TLS). `credentials`,
    a `grpc.ChannelCredentials` of your own, replaces all three. `api_key`, when set, goes with
    every call as `authorization: Bearer <key>`. `timeout` is the default deadline of each call,
    in seconds. Failed calls raise `DeepRecallError` carrying the gRPC status code.

        with Client("localhost:50051") as client:
            client.add_documents([{"id": "k", "content": "Kestrel is in Tampere."}])
            result = client.query("Where is Kestrel?", on_event=print)
            print(result.answer)

        with Client(
            "https://deeprecall.internal:50051",
            root_certificates=Path("ca.crt").read_bytes(),
            certificate_chain=Path("client.crt").read_bytes(),
            private_key=Path("client.key").read_bytes(),
        ) as client:
            print(client.get_stats())

    A call that cannot complete the TLS handshake (an untrusted server certificate, or a
    missing client certificate) fails with `UNAVAILABLE`.
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
        self.channel: grpc.Channel = (
            grpc.secure_channel(address, credentials, options=channel_options)
            if credentials is not None
            else grpc.insecure_channel(address, options=channel_options)
        )
        #: The generated stub, for anything the convenience methods do not cover.
        self.stub = pb_grpc.DeepRecallStub(self.channel)
        self._metadata = call_metadata(api_key, metadata)
        self._timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def query_events(
        self, query: QueryLike, *, timeout: float | None = None, **fields: Any
    ) -> Iterator[pb.QueryEvent]:
        """Runs one query and yields its events as they arrive; the last one is the `result`.

        `fields` are `QueryRequest` fields (`collection`, `top_k`, `filters` as a dict, `budget`
        as a dict or `Budget`, `root_prompt`, `context_prefix`, `skip_cache`, and `mode`:
        `QUERY_MODE_SINGLE_PASS` for one search and one answer call). Closing the iterator early
        cancels the query on the server.
        """
        request = query_request(query, **fields)
        call = self.stub.Query(request, timeout=self._deadline(timeout), metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error
        finally:
            # Cancelling a finished call does nothing; leaving the loop early stops the run.
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def query(
        self,
        query: QueryLike,
        *,
        on_event: Callable[[pb.QueryEvent], None] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> pb.QueryResult:
        """Runs one query and returns its result, handing every event to `on_event` first.

        A budget that runs out is not an error: the result then has `partial` set.
        """
        result: pb.QueryResult | None = None
        for event in self.query_events(query, timeout=timeout, **fields):
            if on_event is not None:
                on_event(event)
            if event.WhichOneof("event") == "result":
                result = event.result
        if result is None:
            raise MissingResultError()
        return result

    def query_batch(
        self,
        queries: Iterable[QueryLike],
        *,
        max_concurrency: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.QueryBatchItem]:
        """Runs many queries and yields one item per query in completion order.

        Each item has the query's `index` and either its `result` or its `error` (a failing query
        does not stop the others); `item.WhichOneof("outcome")` tells which.
        """
        request = batch_request(queries, max_concurrency)
        call = self.stub.QueryBatch(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error
        finally:
            # Cancelling a finished call does nothing; leaving the loop early stops the run.
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def add_documents(
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
        return self._unary(self.stub.AddDocuments, request, timeout)

    def delete_documents(
        self, ids: Iterable[str], *, collection: str = "", timeout: float | None = None
    ) -> pb.DeleteDocumentsResponse:
        """Deletes documents by id; unknown ids are ignored."""
        request = pb.DeleteDocumentsRequest(collection=collection, ids=list(ids))
        return self._unary(self.stub.DeleteDocuments, request, timeout)

    def clear_cache(
        self, collection: str = "", *, timeout: float | None = None
    ) -> pb.ClearCacheResponse:
        """Clears the caches of one collection, or of all when `collection` is empty."""
        return self._unary(
            self.stub.ClearCache, pb.ClearCacheRequest(collection=collection), timeout
        )

    def get_stats(self, *, timeout: float | None = None) -> pb.GetStatsResponse:
        """Returns documents per collection, cache counters and cumulative usage."""
        return self._unary(self.stub.GetStats, pb.GetStatsRequest(), timeout)

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._timeout

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise DeepRecallError.from_rpc_error(error) from error


__all__ = ["Client"]
