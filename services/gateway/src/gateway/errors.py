"""The gateway's error tree, on the wire contract's one status table.

Every failure the gateway reports is a `GatewayError` naming its gRPC code
(`servekit_protocol.status.Code`); its HTTP status is TF Serving's for that code
(`HTTP_STATUS_FOR_CODE`, shared with the model server), so both of the gateway's
fronts and both services agree. Two HTTP-only refinements are documented in the
contract (`HTTP_REFINEMENTS`): 413 for a body over the limit, 422 for typed
fields that fail their schema. Errors the backend returned keep the backend's
code and message (TF Serving clients read them) and map through the same table.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from servekit_protocol.grpc_codes import from_grpc, to_grpc
from servekit_protocol.status import HTTP_REFINEMENTS, HTTP_STATUS_FOR_CODE, Code


class GatewayError(Exception):
    """Base of every failure the gateway answers.

    Subclasses set `code`; `status` (HTTP) is the table's entry for it unless the
    class sets one of the contract's HTTP refinements itself.
    """

    code: ClassVar[Code] = Code.INTERNAL
    status: ClassVar[int] = HTTP_STATUS_FOR_CODE[Code.INTERNAL]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "status" not in vars(cls):
            cls.status = HTTP_STATUS_FOR_CODE[cls.code]
        elif HTTP_REFINEMENTS.get(cls.status) is not cls.code:
            raise TypeError(f"{cls.__name__}: HTTP {cls.status} is not {cls.code!r}")

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return to_grpc(self.code)

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. `Retry-After`)."""
        return {}

    def public_message(self) -> str:
        """What the client sees: internal details stay in the logs for 5xx."""
        return self.message


class InvalidInput(GatewayError):
    """A request that cannot be parsed or does not fit the model's signature."""

    code = Code.INVALID_ARGUMENT


class UnprocessableInput(GatewayError):
    """Rows that do not fit a typed endpoint's schema (field-level `detail`)."""

    code = Code.INVALID_ARGUMENT
    status = 422

    def __init__(self, message: str, detail: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.detail = detail


class Unauthenticated(GatewayError):
    """No API key, or an unknown one."""

    code = Code.UNAUTHENTICATED

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="servekit"'}


class PermissionDenied(GatewayError):
    """A valid key whose scopes do not include the model."""

    code = Code.PERMISSION_DENIED


class ModelNotFound(GatewayError):
    """No such model (or version, or label) behind the gateway."""

    code = Code.NOT_FOUND


class PayloadTooLarge(GatewayError):
    """The request body exceeds `max_body_bytes`."""

    code = Code.RESOURCE_EXHAUSTED
    status = 413


class RateLimited(GatewayError):
    """The key's token bucket is empty."""

    code = Code.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        # Retry-After takes whole seconds; rounding up never invites an early retry.
        return {"Retry-After": str(max(1, int(-(-self.retry_after_seconds // 1))))}


class Overloaded(GatewayError):
    """Too many requests in flight: shed at once instead of queueing."""

    code = Code.UNAVAILABLE


class ModelNotReady(GatewayError):
    """The model exists but no version is AVAILABLE."""

    code = Code.UNAVAILABLE


class BackendUnavailable(GatewayError):
    """The backend could not be reached (after retries), or its circuit is open."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before the backend answered."""

    code = Code.DEADLINE_EXCEEDED


class BackendError(GatewayError):
    """Any other error the backend returned, passed through with its code and message."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.backend_code = code

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_FOR_CODE[from_grpc(self.backend_code)]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.backend_code


def unreadable_answer(exc: Exception) -> BackendError:
    """INTERNAL for a backend's answer that does not parse as a
    PredictResponse: the same status and message whether the gateway parsed it
    on receipt or kept its bytes and parsed it later."""
    return BackendError(f"unreadable PredictResponse: {exc}", grpc.StatusCode.INTERNAL)


def internal_error_message() -> str:
    """The body of a 500 caused by a bug in the gateway (details go to the log)."""
    return "internal error in the gateway"
