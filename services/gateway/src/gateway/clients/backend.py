"""TF Serving's prediction and model services called on the gateway's backends
(:mod:`gateway.clients.pool`): over gRPC, or as gRPC-Web over the backend's REST
port when it has one (`clients/grpcweb.py`). Large answers that go back to the
client unchanged are kept as received (:mod:`gateway.clients.answers`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, overload

import grpc
from google.protobuf.message import DecodeError
from servekit_protocol import grpcweb as grpcweb_frames
from servekit_protocol import messages
from servekit_protocol.services import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
)

from gateway.clients import grpcweb
from gateway.clients.answers import ReceivedAnswer, read_answer, spec_field_number
from gateway.clients.forwarded import ForwardedPredict
from gateway.clients.forwarded_examples import (
    ForwardedExamples,
    ForwardedMultiInference,
)
from gateway.clients.http import (
    HttpAnswer,
    Refused,
    error_text,
)
from gateway.clients.pool import Backend, BackendPool
from gateway.clients.spliced import Spliced
from gateway.errors import (
    DeadlineExceeded,
)

logger = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]

_WEB_METHODS: dict[str, tuple[str, type[Any]]] = {
    "Predict": (PREDICTION_SERVICE, messages.PredictResponse),
    "Classify": (PREDICTION_SERVICE, messages.ClassificationResponse),
    "Regress": (PREDICTION_SERVICE, messages.RegressionResponse),
    "MultiInference": (PREDICTION_SERVICE, messages.MultiInferenceResponse),
    "GetModelMetadata": (PREDICTION_SERVICE, messages.GetModelMetadataResponse),
    "GetModelStatus": (MODEL_SERVICE, messages.GetModelStatusResponse),
}
"""Method -> its service and response message, for gRPC-Web calls."""


async def _grpc_web_call(
    backend: Backend, path: str, request: Any, timeout: float, metadata: Metadata
) -> bytes:
    """The answer message's bytes of a gRPC-Web call to ``path``."""
    assert backend.http is not None
    try:
        async with asyncio.timeout(timeout):
            if isinstance(request, Spliced):
                return await grpcweb.framed_call(
                    backend.http, path, request.framed(), timeout, metadata
                )
            return await grpcweb.unary_call(
                backend.http, path, request.SerializeToString(), timeout, metadata
            )
    except TimeoutError:
        backend.breaker.record_cancelled()
        raise DeadlineExceeded(
            f"deadline exceeded waiting for backend {backend.address}"
        ) from None


def _answer(response_type: Any, data: bytes, keep_from: int | None) -> Any:
    """The answer message: kept as its bytes from ``keep_from`` bytes up
    (`clients.answers`), else parsed.

    Raises:
        grpcweb.RpcFailed: INTERNAL, the answer does not parse.
    """
    if keep_from is not None and len(data) >= keep_from:
        kept = read_answer(data, spec_field_number(response_type))
        if kept is not None:
            return kept
    try:
        return response_type.FromString(data)
    except DecodeError as exc:
        raise grpcweb.RpcFailed(
            grpc.StatusCode.INTERNAL, f"unreadable {response_type.__name__}: {exc}"
        ) from exc


def _framed(message: bytes) -> tuple[bytes, bytes]:
    """A message framed as gRPC frames it (uncompressed), in two parts: the
    message is not copied behind its prefix."""
    return grpcweb_frames.prefix(len(message)), message


class BackendClient:
    """Typed TF Serving calls over the pool; every method raises like `BackendPool.call`."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool

    async def _unary(
        self,
        addresses: Sequence[str],
        stub: str,
        method: str,
        request: Any,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Any:
        """Call `method` on the backend's `stub` ("prediction" or "models"), as
        gRPC-Web on its REST port when it has one that speaks it. An answer of
        `keep_from` bytes or more comes back as a `ReceivedAnswer` (its bytes
        as sent; None: always parsed)."""
        service, response_type = _WEB_METHODS[method]
        path = f"/{service}/{method}"

        async def invoke(backend: Backend, timeout: float, md: Metadata) -> Any:
            if backend.grpc_web and backend.http is not None:
                try:
                    data = await _grpc_web_call(backend, path, request, timeout, md)
                except grpcweb.NotSpoken as exc:
                    backend.grpc_web = False
                    logger.warning(
                        "backend %s has no gRPC-Web on %s (%s): calling it over gRPC",
                        backend.address,
                        backend.http.address,
                        exc,
                    )
                else:
                    return _answer(response_type, data, keep_from)
            if backend.h2 is not None:
                parts = (
                    request.framed()
                    if isinstance(request, Spliced)
                    else _framed(request.SerializeToString())
                )
                data = await backend.h2.unary(path, parts, timeout, md)
                return _answer(response_type, data, keep_from)
            if isinstance(request, Spliced) or keep_from is not None:
                data = await backend.raw(path)(
                    request.SerializeToString(), timeout=timeout, metadata=md
                )
                return _answer(response_type, data, keep_from)
            call = getattr(getattr(backend, stub), method)
            return await call(request, timeout=timeout, metadata=md)

        response, _ = await self.pool.call(
            addresses, method, invoke, deadline, metadata
        )
        return response

    async def forward_rest(
        self,
        addresses: Sequence[str],
        target: str,
        body: bytes,
        deadline: float,
        metadata: Metadata,
    ) -> HttpAnswer:
        """POST `body` to `target` on a backend's REST API (every address must
        have one); the answer comes back whatever its status, but a 503 is retried
        as gRPC's UNAVAILABLE is.

        Raises:
            BackendUnavailable, DeadlineExceeded: as `BackendPool.call`.
        """
        headers = (("content-type", "application/json"), *metadata)

        async def invoke(backend: Backend, timeout: float, _md: Metadata) -> Any:
            assert backend.http is not None
            try:
                async with asyncio.timeout(timeout):
                    answer = await backend.http.request("POST", target, body, headers)
            except TimeoutError:
                backend.breaker.record_cancelled()
                raise DeadlineExceeded(
                    f"deadline exceeded waiting for backend {backend.address}"
                ) from None
            if answer.status == 503:
                raise Refused(f"answered 503: {error_text(answer.body)}")
            return answer

        answer: HttpAnswer
        answer, _ = await self.pool.call(
            addresses, "RestForward", invoke, deadline, metadata
        )
        return answer

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest,
        deadline: float,
        metadata: Metadata,
        keep_from: None = None,
    ) -> messages.PredictResponse: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest | ForwardedPredict,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.PredictResponse | ReceivedAnswer: ...

    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest | ForwardedPredict,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.PredictResponse | ReceivedAnswer:
        """The answer may come back as its bytes from ``keep_from`` bytes up
        (a forwarded request's own `ForwardedPredict.keep_answer_from`): a
        small request's answer is judged by its size too."""
        if isinstance(request, ForwardedPredict):
            keep_from = request.keep_answer_from
        response: messages.PredictResponse | ReceivedAnswer = await self._unary(
            addresses, "prediction", "Predict", request, deadline, metadata, keep_from
        )
        return response

    async def classify(
        self,
        addresses: Sequence[str],
        request: messages.ClassificationRequest | ForwardedExamples,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.ClassificationResponse | ReceivedAnswer:
        """``keep_from``: as `_unary`'s (None: parsed)."""
        response: messages.ClassificationResponse | ReceivedAnswer = await self._unary(
            addresses, "prediction", "Classify", request, deadline, metadata, keep_from
        )
        return response

    async def regress(
        self,
        addresses: Sequence[str],
        request: messages.RegressionRequest | ForwardedExamples,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.RegressionResponse | ReceivedAnswer:
        """``keep_from``: as `_unary`'s (None: parsed)."""
        response: messages.RegressionResponse | ReceivedAnswer = await self._unary(
            addresses, "prediction", "Regress", request, deadline, metadata, keep_from
        )
        return response

    async def multi_inference(
        self,
        addresses: Sequence[str],
        request: messages.MultiInferenceRequest | ForwardedMultiInference,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.MultiInferenceResponse | ReceivedAnswer:
        """``keep_from``: as `_unary`'s (None: parsed)."""
        response: messages.MultiInferenceResponse | ReceivedAnswer = await self._unary(
            addresses,
            "prediction",
            "MultiInference",
            request,
            deadline,
            metadata,
            keep_from,
        )
        return response

    async def model_metadata(
        self,
        addresses: Sequence[str],
        request: messages.GetModelMetadataRequest,
        deadline: float,
        metadata: Metadata,
    ) -> messages.GetModelMetadataResponse:
        response: messages.GetModelMetadataResponse = await self._unary(
            addresses, "prediction", "GetModelMetadata", request, deadline, metadata
        )
        return response

    async def model_status(
        self,
        addresses: Sequence[str],
        request: messages.GetModelStatusRequest,
        deadline: float,
        metadata: Metadata,
    ) -> messages.GetModelStatusResponse:
        response: messages.GetModelStatusResponse = await self._unary(
            addresses, "models", "GetModelStatus", request, deadline, metadata
        )
        return response
