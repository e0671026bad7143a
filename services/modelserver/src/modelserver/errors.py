"""The model server's single error tree.

Every error a client can see is a :class:`ServingError`. Each class names its gRPC
code (``servekit_protocol.status.Code``); its HTTP status comes from
``HTTP_STATUS_FOR_CODE``, the table TF Serving's REST server uses
(``ToHTTPStatusCode`` in ``tensorflow_serving/model_servers/http_server.cc``),
shared with the gateway, so the two transports and the two services can never
disagree. The REST layer answers ``{"error": str(exc)}`` with ``exc.status``; the
gRPC layer aborts with ``exc.grpc_code`` and ``str(exc)``. Nothing here imports
grpc.

Messages follow TF Serving's wording where clients may match on it, e.g.
``Servable not found for request: Latest(half_plus_two)``.
"""

from __future__ import annotations

from typing import ClassVar

from servekit_protocol.status import HTTP_STATUS_FOR_CODE, Code


class ServingError(Exception):
    """Base of every error the model server answers with.

    Subclasses set ``grpc_code``; ``status`` is derived from it.
    """

    grpc_code: ClassVar[Code] = Code.INTERNAL
    status: ClassVar[int] = HTTP_STATUS_FOR_CODE[Code.INTERNAL]
    """The HTTP status: the table's entry for ``grpc_code``."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.status = HTTP_STATUS_FOR_CODE[cls.grpc_code]

    @property
    def message(self) -> str:
        """The client-facing message."""
        return str(self)

    @property
    def code_value(self) -> int:
        """The numeric gRPC code, as stored in ``StatusProto.error_code``."""
        return int(self.grpc_code)


class ModelNotFound(ServingError):
    """No version of the model is loaded (or the model is unknown)."""

    grpc_code = Code.NOT_FOUND


class VersionNotFound(ServingError):
    """The requested version is not loaded and AVAILABLE."""

    grpc_code = Code.NOT_FOUND


class LabelNotFound(ServingError):
    """The requested version label is not assigned (TF Serving: INVALID_ARGUMENT)."""

    grpc_code = Code.INVALID_ARGUMENT


class SignatureNotFound(ServingError):
    """The version has no signature of that name (TF Serving: INVALID_ARGUMENT)."""

    grpc_code = Code.INVALID_ARGUMENT


class InvalidInput(ServingError):
    """Wrong tensor names, dtypes, shapes or values; malformed requests."""

    grpc_code = Code.INVALID_ARGUMENT


class PredictSignatureNotFound(SignatureNotFound):
    """Predict's unknown signature: TF Serving answers FAILED_PRECONDITION (400)."""

    grpc_code = Code.FAILED_PRECONDITION


class FailedPrecondition(ServingError):
    """The request is valid but the model cannot run it in its current state,
    e.g. a version label that points at a version which is not AVAILABLE."""

    grpc_code = Code.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    """The runtime ran out of memory or another resource for this request."""

    grpc_code = Code.RESOURCE_EXHAUSTED


class InvalidConfig(ServingError):
    """A config file or ReloadConfigRequest that cannot be parsed or applied."""

    grpc_code = Code.INVALID_ARGUMENT


class ModelNotReady(ServingError):
    """The server is starting or stopping and cannot answer yet."""

    grpc_code = Code.UNAVAILABLE


class Overloaded(ServingError):
    """The batch queue is full: retry later rather than queue forever."""

    grpc_code = Code.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""

    grpc_code = Code.DEADLINE_EXCEEDED


class Unimplemented(ServingError):
    """The model or its runtime does not support this API."""

    grpc_code = Code.UNIMPLEMENTED


class InternalError(ServingError):
    """A runtime failure that is not the client's fault."""

    grpc_code = Code.INTERNAL


class LoadError(ServingError):
    """A model version could not be loaded; reported in its status, never raised
    to a client request.

    ``code_value`` keeps the loader's own code (e.g. TensorFlow's NOT_FOUND for a
    missing file) for the version status; it defaults to the class's code.
    """

    grpc_code = Code.UNKNOWN

    def __init__(self, message: str, *, code_value: int | None = None) -> None:
        super().__init__(message)
        self._code_value = code_value

    @property
    def code_value(self) -> int:
        """The numeric gRPC code reported in the version status."""
        if self._code_value is not None:
            return self._code_value
        return int(self.grpc_code)


class ArtifactNotFound(LoadError):
    """The version directory lacks a file the runtime needs."""

    grpc_code = Code.NOT_FOUND


class IntegrityFailure(LoadError):
    """An artifact's sha256 does not match its manifest (the pickle is refused)."""

    grpc_code = Code.DATA_LOSS


_CLASS_FOR_CODE: dict[Code, type[ServingError]] = {
    Code.INVALID_ARGUMENT: InvalidInput,
    Code.OUT_OF_RANGE: InvalidInput,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.UNIMPLEMENTED: Unimplemented,
    Code.UNAVAILABLE: ModelNotReady,
    Code.NOT_FOUND: ModelNotFound,
}


def error_for_code(code_value: int, message: str) -> ServingError:
    """The ServingError for a numeric gRPC code (e.g. a TensorFlow ``OpError``'s)."""
    try:
        code = Code(code_value)
    except ValueError:
        code = Code.INTERNAL
    return _CLASS_FOR_CODE.get(code, InternalError)(message)
