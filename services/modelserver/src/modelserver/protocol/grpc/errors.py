"""Map :class:`~modelserver.errors.ServingError` to gRPC status, once for every RPC.

:func:`rpc` wraps each servicer method: it binds the request context for the
logs (``x-request-id`` from the call metadata, or a new one, sent back in the
trailing metadata), runs the method, and turns a ``ServingError`` into
``context.abort(exc.grpc_code, message)``. The code comes from the error class,
whose HTTP status comes from the same table (:mod:`modelserver.errors`), so REST
and gRPC cannot disagree. Messages longer than 1024 characters are cut as TF
Serving cuts them (``...TRUNCATED``). Any other exception is a bug: it is logged
with its traceback and the client gets INTERNAL without the details.
Failed calls are logged at INFO, successful ones at DEBUG only.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import grpc.aio
from servekit_protocol.grpc_codes import to_grpc
from servekit_protocol.logs import (
    REQUEST_ID_HEADER,
    bind_request_id,
    incoming_request_id,
)

from modelserver.errors import ServingError

logger = logging.getLogger(__name__)

MAX_ERROR_MESSAGE_LENGTH = 1024
"""TF Serving's ``kErrorMessageLimit`` (``grpc_status_util.cc``)."""


class Labelled(Protocol):
    """A servicer that names its protocol for metrics and logs."""

    protocol: str


ServicerT = TypeVar("ServicerT", bound=Labelled)
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
# grpc ships no type information: the servicer context is untyped.
Context: TypeAlias = Any
Method = Callable[[ServicerT, RequestT, Context], Awaitable[ResponseT]]


def truncate_message(message: str) -> str:
    """Cut a status message to TF Serving's limit."""
    if len(message) > MAX_ERROR_MESSAGE_LENGTH:
        return message[:MAX_ERROR_MESSAGE_LENGTH] + "...TRUNCATED"
    return message


def rpc(
    method: Method[ServicerT, RequestT, ResponseT],
) -> Method[ServicerT, RequestT, ResponseT]:
    """Decorate a servicer method with request ids and error mapping."""

    @functools.wraps(method)
    async def handle(self: ServicerT, request: RequestT, context: Context) -> ResponseT:
        started = time.perf_counter()
        incoming = incoming_request_id(context.invocation_metadata())
        request_id = bind_request_id(incoming, self.protocol)
        trailing = ((REQUEST_ID_HEADER, request_id),)
        context.set_trailing_metadata(trailing)
        try:
            response = await method(self, request, context)
        except ServingError as exc:
            logger.info(
                "%s answered %s: %s",
                method.__name__,
                exc.grpc_code.name,
                exc.message,
                extra={
                    "grpc_code": exc.grpc_code.name,
                    "api_error": type(exc).__name__,
                },
            )
            await context.abort(
                to_grpc(exc.grpc_code),
                truncate_message(exc.message),
                trailing_metadata=trailing,
            )
        except Exception:
            logger.exception("%s failed", method.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"Internal server error (request id {request_id})",
                trailing_metadata=trailing,
            )
        else:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s answered OK",
                    method.__name__,
                    extra={"grpc_code": "OK", "seconds": time.perf_counter() - started},
                )
            return response
        raise AssertionError("context.abort returned")  # pragma: no cover

    return handle
