"""The gateway's backends: one gRPC channel per backend address, reused by
every request (and an HTTP client for its REST port when it has one), its
circuit breaker, and :class:`BackendPool`, which runs one call with the
request's remaining deadline, retries with jittered exponential backoff on
UNAVAILABLE (every call the gateway makes is idempotent), failover to the next
backend of the route, and the breaker's accounting."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from servekit_protocol.services import ModelServiceStub, PredictionServiceStub

from gateway.clients import grpcweb
from gateway.clients.breaker import BreakerState, CircuitBreaker
from gateway.clients.h2grpc import H2Channel
from gateway.clients.http import AnswerTooLarge, ConnectionFailed, HttpBackend
from gateway.errors import BackendError, BackendUnavailable, DeadlineExceeded
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
        h2_max_answer_bytes: int | None = None,
        *,
        max_answer_bytes: int,
    ) -> None:
        self.address = address
        # The health checks (clients/health.py) stay on grpcio's stub: one small
        # call per check, nothing the event loop waits on.
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.h2 = (
            H2Channel(address, h2_max_answer_bytes)
            if h2_max_answer_bytes is not None
            else None
        )
        """The HTTP/2 client of `clients.h2grpc`, when the settings choose it
        for the unary calls (`Settings.backend_grpc_client`)."""
        self.prediction = PredictionServiceStub(self.channel)
        self._raw: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self.models = ModelServiceStub(self.channel)
        self.http = (
            HttpBackend(rest_address, max_answer_bytes)
            if rest_address is not None
            else None
        )
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
        if self.h2 is not None:
            await self.h2.close()
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
        h2_max_answer_bytes: int | None = None,
        *,
        max_answer_bytes: int,
    ) -> None:
        """``h2_max_answer_bytes``: call the backends' gRPC ports with
        `clients.h2grpc`, answers capped at that size (None: grpc.aio);
        ``max_answer_bytes``: the cap on answers over HTTP/1.1 (gRPC-Web and
        REST)."""
        self._metrics = metrics
        self._max_answer_bytes = max_answer_bytes
        self._grpc_web = grpc_web
        self._h2_max_answer_bytes = h2_max_answer_bytes
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
                self._h2_max_answer_bytes,
                max_answer_bytes=self._max_answer_bytes,
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
            except (
                grpc.aio.AioRpcError,
                grpcweb.RpcFailed,
                ConnectionFailed,
                AnswerTooLarge,
            ) as exc:
                if isinstance(exc, ConnectionFailed):
                    code, detail = grpc.StatusCode.UNAVAILABLE, str(exc)
                elif isinstance(exc, AnswerTooLarge):
                    # As grpcio and the h2 client answer a message over their limit.
                    code, detail = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
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
