"""gRPC status codes and TF Serving's table from them to HTTP statuses.

Both services answer every error twice, over gRPC with a code and over REST with
an HTTP status, and a TF Serving client must see the same pair from either port.
The table is TF Serving's own (`ToHTTPStatusCode` in
`tensorflow_serving/model_servers/http_server.cc`); the codes are gRPC's numbers
(`google.rpc.Code`, the values of `grpc.StatusCode`). Nothing here imports grpc:
error trees use `Code`, and only the gRPC adapters convert it (`grpc_codes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType


class Code(IntEnum):
    """The gRPC status codes, by their wire numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request its client gave up on; TF Serving's CANCELLED
(`net_http::HTTPStatusCode::CLIENT_CLOSED_REQUEST`). `http.HTTPStatus` lacks it."""

HTTP_STATUS_FOR_CODE: Mapping[Code, int] = MappingProxyType(
    {
        Code.OK: 200,
        Code.CANCELLED: CLIENT_CLOSED_REQUEST,
        Code.UNKNOWN: 500,
        Code.INVALID_ARGUMENT: 400,
        Code.DEADLINE_EXCEEDED: 504,
        Code.NOT_FOUND: 404,
        Code.ALREADY_EXISTS: 409,
        Code.PERMISSION_DENIED: 403,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.FAILED_PRECONDITION: 400,
        Code.ABORTED: 409,
        Code.OUT_OF_RANGE: 400,
        Code.UNIMPLEMENTED: 501,
        Code.INTERNAL: 500,
        Code.UNAVAILABLE: 503,
        Code.DATA_LOSS: 500,
        Code.UNAUTHENTICATED: 401,
    }
)
"""gRPC code -> HTTP status, exactly as TF Serving's REST server answers."""

HTTP_REFINEMENTS: Mapping[int, Code] = MappingProxyType(
    {
        413: Code.RESOURCE_EXHAUSTED,
        422: Code.INVALID_ARGUMENT,
    }
)
"""HTTP-only statuses a servekit error may answer with instead of its code's
table entry: a body over the size limit (413; gRPC says RESOURCE_EXHAUSTED for an
oversized message) and typed-endpoint fields that fail their schema (422; gRPC
has only INVALID_ARGUMENT). TF Serving has neither case."""


def http_status(code: int) -> int:
    """The HTTP status TF Serving answers for a numeric gRPC code (500 for codes
    outside the table, as its `default:` branch)."""
    try:
        return HTTP_STATUS_FOR_CODE[Code(code)]
    except ValueError:
        return 500


def code_name(value: int) -> str:
    """The name of a numeric code (`UNKNOWN` for numbers gRPC does not define)."""
    try:
        return Code(value).name
    except ValueError:
        return Code.UNKNOWN.name


def agrees(code: Code, status: int) -> bool:
    """Whether an error answering `code` over gRPC and `status` over HTTP keeps
    the table (or one of its documented HTTP refinements)."""
    return HTTP_STATUS_FOR_CODE[code] == status or HTTP_REFINEMENTS.get(status) is code
