"""TF Serving gRPC clients: one channel per backend address, reused by every request;
as gRPC-Web over the backend's REST port when it has one (`clients/grpcweb.py`).

Each call gets the request's remaining deadline, the request id in metadata, retries
with jittered exponential backoff on UNAVAILABLE (every call the gateway makes is
idempotent: predict, classify, regress, metadata, status), failover to the next
backend of the route, and a circuit breaker per backend that refuses calls at once
while the backend is down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import grpc
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.services import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    ModelServiceStub,
    PredictionServiceStub,
)

from gateway.clients import grpcweb
from gateway.clients.answers import ReceivedAnswer, read_answer, spec_field_number
from gateway.clients.breaker import BreakerState, CircuitBreaker
from gateway.clients.forwarded import ForwardedPredict
from gateway.clients.forwarded_examples import (
    ForwardedExamples,
    ForwardedMultiInference,
)
from gateway.clients.http import (
    ConnectionFailed,
    HttpAnswer,
    HttpBackend,
    Refused,
    error_text,
)
from gateway.clients.spliced import Spliced
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
)
from gateway.observability.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

Response = TypeVar("Response")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A restarted backend must be found again within about a second, not after
    # grpc's default reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Retries are ours (bounded by the request deadline and the breaker).
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
]


@dataclass(frozen=True)
class RetryPolicy:
    """How the pool retries UNAVAILABLE."""

    retries: int
    backoff_seconds: float

    def delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
        factor: float = 2.0 ** (attempt - 1)
        return random.uniform(0.5, 1.0) * self.backoff_seconds * factor


class Backend:
    """One model server address: its channel, stubs and breaker."""

    def __init__(
        self,
        address: str,
        breaker: CircuitBreaker,
        metrics: GatewayMetrics,
        rest_address: str | None = None,
        grpc_web: bool = True,
    ) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.prediction = PredictionServiceStub(self.channel)
        self._raw: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self.models = ModelServiceStub(self.channel)
        self.http = HttpBackend(rest_address) if rest_address is not None else None
        """The same server's REST API, when the settings name it."""
        self.grpc_web = grpc_web and self.http is not None
        """Whether gRPC calls go as gRPC-Web to `http` (until it proves not to
        speak it)."""
        self.breaker = breaker
        self.last_error = ""
        """The last UNAVAILABLE detail, quoted while the circuit is open."""
        self._circuit_gauge = metrics.circuit_state.labels(address)
        self._circuit_rejections = metrics.circuit_rejections.labels(address)
        self._metrics = metrics

    def raw(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """The method at ``path`` taking and giving serialized messages."""
        call = self._raw.get(path)
        if call is None:
            call = self._raw[path] = self.channel.unary_unary(path)
        return call

    def refuse(self) -> None:
        self._circuit_rejections.inc()

    def publish_state(self) -> None:
        self._circuit_gauge.set(0 if self.breaker.state is BreakerState.CLOSED else 1)

    async def close(self) -> None:
        if self.http is not None:
            self.http.close()
        await self.channel.close(grace=None)


class BackendPool:
    """Every backend the gateway has talked to, created on first use."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        retry: RetryPolicy,
        breaker_factory: Callable[[], CircuitBreaker],
        rest_addresses: Mapping[str, str] | None = None,
        grpc_web: bool = True,
    ) -> None:
        self._metrics = metrics
        self._grpc_web = grpc_web
        self._retry = retry
        self._breaker_factory = breaker_factory
        self.rest_addresses: Mapping[str, str] = dict(rest_addresses or {})
        self._backends: dict[str, Backend] = {}
        self._turn = itertools.count()

    def get(self, address: str) -> Backend:
        backend = self._backends.get(address)
        if backend is None:
            backend = Backend(
                address,
                self._breaker_factory(),
                self._metrics,
                self.rest_addresses.get(address),
                self._grpc_web,
            )
            self._backends[address] = backend
        return backend

    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    async def close(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        await asyncio.gather(*(backend.close() for backend in backends))

    def _order(self, addresses: Sequence[str]) -> list[Backend]:
        if len(addresses) == 1:
            return [self.get(addresses[0])]
        start = next(self._turn) % len(addresses)
        return [self.get(a) for a in (*addresses[start:], *addresses[:start])]

    async def call(
        self,
        addresses: Sequence[str],
        method: str,
        invoke: Callable[
            [Backend, float, Sequence[tuple[str, str]]], Awaitable[Response]
        ],
        deadline: float,
        metadata: Sequence[tuple[str, str]],
    ) -> tuple[Response, Backend]:
        """Run `invoke(backend, timeout, metadata)` on the first backend that answers.

        Args:
            addresses: the route's backends, tried round-robin.
            method: the RPC name, for metrics.
            invoke: performs the RPC on one backend with a timeout in seconds.
            deadline: absolute `time.monotonic()` deadline of the request.
            metadata: gRPC metadata to send (request id).

        Raises:
            BackendUnavailable: every backend is down or its circuit is open.
            DeadlineExceeded: the deadline passed.
            BackendError: the backend answered with another error.
        """
        attempt = 0
        backends = self._order(addresses)
        while True:
            backend = next((b for b in backends if b.breaker.allow()), None)
            if backend is None:
                for refused in backends:
                    refused.refuse()
                wait = min(b.breaker.retry_after() for b in backends)
                detail = backends[0].last_error
                raise BackendUnavailable(
                    f"backend {backends[0].address} is unavailable "
                    f"(circuit open, next probe in {wait:.1f}s)"
                    + (f": {detail}" if detail else "")
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                backend.breaker.record_cancelled()
                raise DeadlineExceeded("deadline exceeded before the backend call")
            started = time.perf_counter()
            try:
                response = await invoke(backend, remaining, metadata)
            except (grpc.aio.AioRpcError, grpcweb.RpcFailed, ConnectionFailed) as exc:
                if isinstance(exc, ConnectionFailed):
                    code, detail = grpc.StatusCode.UNAVAILABLE, str(exc)
                elif isinstance(exc, grpcweb.RpcFailed):
                    code, detail = exc.code, exc.details
                else:
                    code, detail = exc.code(), exc.details() or ""
                self._metrics.backend_errors.labels(
                    backend.address, method, code.name
                ).inc()
                if code is grpc.StatusCode.UNAVAILABLE:
                    backend.breaker.record_failure()
                    backend.publish_state()
                    last_failure = detail or "unavailable"
                    backend.last_error = last_failure
                    logger.warning(
                        "backend %s unavailable on %s: %s",
                        backend.address,
                        method,
                        last_failure,
                    )
                    if attempt >= self._retry.retries:
                        raise BackendUnavailable(
                            f"backend {backend.address} is unavailable: {last_failure}"
                        ) from exc
                    attempt += 1
                    self._metrics.backend_retries.labels(backend.address, method).inc()
                    delay = self._retry.delay(attempt)
                    if time.monotonic() + delay >= deadline:
                        raise BackendUnavailable(
                            f"backend {backend.address} is unavailable: {last_failure}"
                        ) from exc
                    await asyncio.sleep(delay)
                    if len(backends) > 1:
                        backends = backends[1:] + backends[:1]
                    continue
                backend.breaker.record_neutral()
                backend.publish_state()
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise DeadlineExceeded(
                        f"deadline exceeded waiting for backend {backend.address}"
                    ) from exc
                raise BackendError(detail or code.name, code) from exc
            except asyncio.CancelledError:
                backend.breaker.record_cancelled()
                raise
            self._metrics.observe_backend(
                backend.address, method, time.perf_counter() - started
            )
            if backend.breaker.state is not BreakerState.CLOSED or attempt:
                backend.breaker.record_success()
                backend.publish_state()
            else:
                backend.breaker.record_success()
            return response, backend


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
    ) -> messages.PredictResponse: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: ForwardedPredict,
        deadline: float,
        metadata: Metadata,
    ) -> messages.PredictResponse | ReceivedAnswer: ...

    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest | ForwardedPredict,
        deadline: float,
        metadata: Metadata,
    ) -> messages.PredictResponse | ReceivedAnswer:
        """A forwarded request's answer may come back as its bytes (see
        `ForwardedPredict.keep_answer_from`)."""
        keep_from = (
            request.keep_answer_from if isinstance(request, ForwardedPredict) else None
        )
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
