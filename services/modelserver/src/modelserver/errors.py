"""The model server's single error tree.

Every error a client can see is a :class:`ServingError`. Each class names its gRPC
code; its HTTP status comes from :data:`HTTP_STATUS_FOR_GRPC_CODE`, the same table
TF Serving's REST server uses (``ToHTTPStatusCode`` in
``tensorflow_serving/model_servers/http_server.cc``), so the two transports can
never disagree. The REST layer answers ``{"error": str(exc)}`` with ``exc.status``;
the gRPC layer aborts with ``exc.grpc_code`` and ``str(exc)``.

Messages follow TF Serving's wording where clients may match on it, e.g.
``Servable not found for request: Latest(half_plus_two)``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

import grpc

HTTP_STATUS_FOR_GRPC_CODE: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    # 499 has no HTTPStatus member; TF Serving's CLIENT_CLOSED_REQUEST is nginx's 499.
    grpc.StatusCode.CANCELLED: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}
"""gRPC code -> HTTP status, TF Serving's REST mapping (the only such table)."""

GRPC_CODE_FOR_VALUE: dict[int, grpc.StatusCode] = {
    code.value[0]: code for code in grpc.StatusCode
}
"""Numeric gRPC code (as in ``StatusProto.error_code``) -> ``grpc.StatusCode``."""


class ServingError(Exception):
    """Base of every error the model server answers with.

    Subclasses set ``grpc_code``; ``status`` is derived from it.
    """

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.status = HTTP_STATUS_FOR_GRPC_CODE[cls.grpc_code]

    @property
    def message(self) -> str:
        """The client-facing message."""
        return str(self)

    @property
    def code_value(self) -> int:
        """The numeric gRPC code, as stored in ``StatusProto.error_code``."""
        return int(self.grpc_code.value[0])


class ModelNotFound(ServingError):
    """No version of the model is loaded (or the model is unknown)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class VersionNotFound(ServingError):
    """The requested version is not loaded and AVAILABLE."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class LabelNotFound(ServingError):
    """The requested version label is not assigned (TF Serving: INVALID_ARGUMENT)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class SignatureNotFound(ServingError):
    """The version has no signature of that name (TF Serving: INVALID_ARGUMENT)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidInput(ServingError):
    """Wrong tensor names, dtypes, shapes or values; malformed requests."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class PredictSignatureNotFound(SignatureNotFound):
    """Predict's unknown signature: TF Serving answers FAILED_PRECONDITION (400)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class FailedPrecondition(ServingError):
    """The request is valid but the model cannot run it in its current state,
    e.g. a version label that points at a version which is not AVAILABLE."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    """The runtime ran out of memory or another resource for this request."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InvalidConfig(ServingError):
    """A config file or ReloadConfigRequest that cannot be parsed or applied."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotReady(ServingError):
    """The server is starting or stopping and cannot answer yet."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class Overloaded(ServingError):
    """The batch queue is full: retry later rather than queue forever."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ServingError):
    """The model or its runtime does not support this API."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ServingError):
    """A runtime failure that is not the client's fault."""

    grpc_code = grpc.StatusCode.INTERNAL


class LoadError(ServingError):
    """A model version could not be loaded; reported in its status, never raised
    to a client request.

    ``code_value`` keeps the loader's own code (e.g. TensorFlow's NOT_FOUND for a
    missing file) for the version status; it defaults to the class's code.
    """

    grpc_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code_value: int | None = None) -> None:
        super().__init__(message)
        self._code_value = code_value

    @property
    def code_value(self) -> int:
        """The numeric gRPC code reported in the version status."""
        if self._code_value is not None:
            return self._code_value
        return int(self.grpc_code.value[0])


class ArtifactNotFound(LoadError):
    """The version directory lacks a file the runtime needs."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class IntegrityFailure(LoadError):
    """An artifact's sha256 does not match its manifest (the pickle is refused)."""

    grpc_code = grpc.StatusCode.DATA_LOSS


_CLASS_FOR_CODE: dict[grpc.StatusCode, type[ServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: ModelNotReady,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
}


def error_for_code(code_value: int, message: str) -> ServingError:
    """The ServingError for a numeric gRPC code (e.g. a TensorFlow ``OpError``'s)."""
    code = GRPC_CODE_FOR_VALUE.get(code_value, grpc.StatusCode.INTERNAL)
    return _CLASS_FOR_CODE.get(code, InternalError)(message)
