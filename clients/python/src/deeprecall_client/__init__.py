"""Python client for the DeepRecall gRPC service.

`Client` (blocking) and `AsyncClient` (asyncio) wrap the generated stub: they send the API key,
build requests from plain values, iterate a Query's events and return its result, and raise
`DeepRecallError` with the gRPC status code when a call fails. The generated messages are in
`deeprecall_client.pb` and the generated stub in `deeprecall_client.pb_grpc`.

`DeepRecall`, `AsyncDeepRecall` and `QueryBudget` have the interface of the Python library
`deeprecall` 0.4, for its users: migrating is an import change (README, "Migrating from the
deeprecall library").
"""

from deeprecall_client._aio import AsyncClient
from deeprecall_client._common import DeepRecallError, MissingResultError
from deeprecall_client._compat import (
    AsyncDeepRecall,
    DeepRecall,
    DeepRecallResult,
    QueryBudget,
    ReasoningStep,
    Source,
    UsageInfo,
)
from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2 as pb
from deeprecall_client._proto.deeprecall.v1 import deeprecall_pb2_grpc as pb_grpc
from deeprecall_client._sync import Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncDeepRecall",
    "Client",
    "DeepRecall",
    "DeepRecallError",
    "DeepRecallResult",
    "MissingResultError",
    "QueryBudget",
    "ReasoningStep",
    "Source",
    "UsageInfo",
    "pb",
    "pb_grpc",
]
