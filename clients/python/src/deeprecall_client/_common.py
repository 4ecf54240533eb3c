"""Pieces shared by the sync and asyncio clients: targets, TLS, metadata, request building,
errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import grpc
from google.protobuf import struct_pb2

from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2 as pb

#: A query: its text, or a complete request.
QueryLike = Union[str, pb.QueryRequest]
#: A document: a message, or a mapping with `content` and optional `id` and `metadata`.
DocumentLike = Union[pb.Document, Mapping[str, Any]]
#: A budget: a message, or a mapping of its fields (`max_search_calls=4`, ...).
BudgetLike = Union[pb.Budget, Mapping[str, Any]]

# The server sends up to 64 MiB by default (`server.max_response_bytes`); grpcio's own 4 MiB
# limit would reject a result whose sources carry large documents.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


class DeepRecallError(Exception):
    """A call that ended with a gRPC status other than OK.

    `code` is the `grpc.StatusCode` (e.g. `INVALID_ARGUMENT`), `details` the server's message,
    which names the offending field for bad input, and `retry_after` the seconds the server
    asks to wait before retrying (RESOURCE_EXHAUSTED), when it says.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)
        self.retry_after = _retry_after(self.trailing_metadata)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> DeepRecallError:
        """Builds the error from what grpcio raised (a `grpc.Call` in practice)."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else ()
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", tuple(trailing or ()))


class MissingResultError(DeepRecallError):
    """A Query stream that ended cleanly without its final `result` event."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNKNOWN, "the query stream ended without a result")


def _retry_after(metadata: Sequence[tuple[str, str | bytes]]) -> float | None:
    for key, value in metadata:
        if key.lower() == "retry-after":
            try:
                return float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
    return None


def channel_target(target: str) -> tuple[str, bool]:
    """Splits `http://host:port`, `https://host:port` or `host:port` into a grpcio target and
    whether the channel uses TLS (plain `host:port` does not)."""
    if target.startswith("https://"):
        return target[len("https://") :].rstrip("/"), True
    if target.startswith("http://"):
        return target[len("http://") :].rstrip("/"), False
    return target, False


def channel_credentials(
    target: str,
    tls: bool,
    credentials: grpc.ChannelCredentials | None,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
) -> grpc.ChannelCredentials | None:
    """Returns the credentials of the channel to `target`, or None for a plaintext one.

    `tls` says whether the target asked for TLS (`https://`). The PEM options need an
    `https://` target; without them such a target trusts the system's roots. `credentials`,
    made by the caller, are used as they are and exclude the PEM options.
    """
    pem = {
        "root_certificates": root_certificates,
        "certificate_chain": certificate_chain,
        "private_key": private_key,
    }
    given = [name for name, value in pem.items() if value is not None]
    for name in given:
        if not isinstance(pem[name], bytes):
            raise TypeError(
                f"{name} takes PEM bytes (e.g. Path(...).read_bytes()), "
                f"not {type(pem[name]).__name__}"
            )
    if given and credentials is not None:
        raise ValueError(f"pass either credentials or {', '.join(given)}, not both")
    if (certificate_chain is None) != (private_key is None):
        raise ValueError(
            "certificate_chain and private_key go together: a client certificate and its key"
        )
    if given and not tls:
        names = ", ".join(given)
        raise ValueError(f"TLS options ({names}) need an https:// target, not {target!r}")
    if credentials is not None:
        return credentials
    if not tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


def call_metadata(
    api_key: str | None, extra: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """Returns the metadata sent with every call: the API key as a bearer token, then `extra`."""
    metadata: list[tuple[str, str]] = []
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    metadata.extend(extra)
    return tuple(metadata)


def to_struct(value: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    """Converts a JSON-like mapping to a `google.protobuf.Struct`."""
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def query_request(
    query: QueryLike,
    *,
    collection: str = "",
    top_k: int = 0,
    filters: Mapping[str, Any] | struct_pb2.Struct | None = None,
    budget: BudgetLike | None = None,
    root_prompt: str = "",
    context_prefix: str = "",
    skip_cache: bool = False,
    mode: pb.QueryMode | str = pb.QUERY_MODE_UNSPECIFIED,
) -> pb.QueryRequest:
    """Builds a `QueryRequest` from a question and keyword fields, or passes a request through."""
    if isinstance(query, pb.QueryRequest):
        return query
    return pb.QueryRequest(
        query=query,
        collection=collection,
        top_k=top_k,
        filters=to_struct(filters),
        budget=budget if budget is None or isinstance(budget, pb.Budget) else pb.Budget(**budget),
        root_prompt=root_prompt,
        context_prefix=context_prefix,
        skip_cache=skip_cache,
        mode=mode,
    )


def batch_request(queries: Iterable[QueryLike], max_concurrency: int) -> pb.QueryBatchRequest:
    """Builds a `QueryBatchRequest`; plain strings become default queries."""
    return pb.QueryBatchRequest(
        queries=[query_request(query) for query in queries],
        max_concurrency=max_concurrency,
    )


def document(value: DocumentLike) -> pb.Document:
    """Converts a mapping (`{"id": ..., "content": ..., "metadata": {...}}`) to a `Document`."""
    if isinstance(value, pb.Document):
        return value
    unknown = set(value) - {"id", "content", "metadata"}
    if unknown:
        raise TypeError(f"unknown document fields: {sorted(unknown)}")
    return pb.Document(
        id=value.get("id", ""),
        content=value.get("content", ""),
        metadata=to_struct(value.get("metadata")),
    )
