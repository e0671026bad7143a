"""The gateway's error tree and the one table between HTTP statuses and gRPC codes.

Every failure the gateway reports is a `GatewayError` whose `status` is the HTTP
answer; the gRPC front derives its code from the same table, so both protocols agree.
Errors the backend returned keep the backend's gRPC code and message (TF Serving
clients read them), mapped to HTTP the way TF Serving's REST server maps them.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc

# HTTP status -> gRPC code for errors the gateway raises itself.
HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# gRPC code -> HTTP status, as TF Serving's REST server translates its own errors.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class GatewayError(Exception):
    """Base of every failure the gateway answers; `status` is the HTTP status."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return int(self.status)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return HTTP_TO_GRPC.get(self.http_status, grpc.StatusCode.UNKNOWN)

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. `Retry-After`)."""
        return {}

    def public_message(self) -> str:
        """What the client sees: internal details stay in the logs for 5xx."""
        return self.message


class InvalidInput(GatewayError):
    """A request that cannot be parsed or does not fit the model's signature."""

    status = HTTPStatus.BAD_REQUEST


class UnprocessableInput(GatewayError):
    """Rows that do not fit a typed endpoint's schema (field-level `detail`)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, message: str, detail: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.detail = detail


class Unauthenticated(GatewayError):
    """No API key, or an unknown one."""

    status = HTTPStatus.UNAUTHORIZED

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="servekit"'}


class PermissionDenied(GatewayError):
    """A valid key whose scopes do not include the model."""

    status = HTTPStatus.FORBIDDEN


class ModelNotFound(GatewayError):
    """No such model (or version, or label) behind the gateway."""

    status = HTTPStatus.NOT_FOUND


class PayloadTooLarge(GatewayError):
    """The request body exceeds `max_body_bytes`."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class RateLimited(GatewayError):
    """The key's token bucket is empty."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        # Retry-After takes whole seconds; rounding up never invites an early retry.
        return {"Retry-After": str(max(1, int(-(-self.retry_after_seconds // 1))))}


class Overloaded(GatewayError):
    """Too many requests in flight: shed at once instead of queueing."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class ModelNotReady(GatewayError):
    """The model exists but no version is AVAILABLE."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class BackendUnavailable(GatewayError):
    """The backend could not be reached (after retries), or its circuit is open."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before the backend answered."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class BackendError(GatewayError):
    """Any other error the backend returned, passed through with its code and message."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code

    @property
    def http_status(self) -> int:
        return GRPC_TO_HTTP.get(self.code, 500)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.code


def internal_error_message() -> str:
    """The body of a 500 caused by a bug in the gateway (details go to the log)."""
    return "internal error in the gateway"
