"""The gateway's Prometheus metrics, on a registry owned by the app (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from servekit_protocol.loop_heartbeat import STALL_BUCKETS

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


UNKNOWN_MODEL = "__unknown__"
"""The `model` label of every request for a model not known to exist."""
SUCCESS_CODES = frozenset({"200", "OK"})


class GatewayMetrics:
    """Every metric the gateway exports.

    Model names come from clients, so a `model` label only ever carries a name
    known to exist: one a backend has answered successfully, or one that
    `known_model` (the routes file) names. Every other name is counted as
    :data:`UNKNOWN_MODEL`, so made-up names cannot add series.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to response, by model, version, route, protocol, code.",
            ["model", "version", "route", "protocol", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_duration = Histogram(
            "gateway_backend_duration_seconds",
            "Backend call latency by backend and method.",
            ["backend", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.coalesced_requests = Histogram(
            "gateway_coalesced_requests",
            "Client requests answered by one backend Predict call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "gateway_backend_errors_total",
            "Failed backend calls by backend, method and gRPC code.",
            ["backend", "method", "code"],
            registry=self.registry,
        )
        self.backend_retries = Counter(
            "gateway_backend_retries_total",
            "Backend calls retried after UNAVAILABLE.",
            ["backend", "method"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "gateway_circuit_open",
            "1 while a backend's circuit breaker is open or half-open.",
            ["backend"],
            registry=self.registry,
        )
        self.circuit_rejections = Counter(
            "gateway_circuit_rejections_total",
            "Calls refused at once because the backend's circuit was open.",
            ["backend"],
            registry=self.registry,
        )
        self.route_requests = Counter(
            "gateway_route_requests_total",
            "Requests per routing decision (stable, canary, explicit, default).",
            ["model", "route"],
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "gateway_shadow_requests_total",
            "Mirrored requests by outcome (agree, disagree, error).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "gateway_rejections_total",
            "Requests refused before any backend call, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being served now (HTTP and gRPC).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "gateway_config_reloads_total",
            "Reloads of the routes file, keys file and registry, by file and result.",
            ["source", "result"],
            registry=self.registry,
        )
        self.loop_busy = Histogram(
            "gateway_event_loop_busy_seconds",
            "CPU time the event loop's thread spent between two heartbeats: "
            "a callback that holds the loop shows as a stretch at least as long.",
            buckets=STALL_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How much later than due each event loop heartbeat ran (wall clock).",
            buckets=STALL_BUCKETS,
            registry=self.registry,
        )

        # Labelled children, looked up once: `labels()` costs more than the
        # observation itself on the hot path.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._models: set[str] = set()
        self.known_model: Callable[[str], bool] = lambda _model: False
        """Whether a model name not yet answered may be a label value (set by
        whoever builds the gateway, from the routes)."""

    def model_label(self, model: str) -> str:
        """`model`, or :data:`UNKNOWN_MODEL` for a name not known to exist."""
        if not model or model in self._models:
            return model
        if self.known_model(model):
            self._models.add(model)
            return model
        return UNKNOWN_MODEL

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._children[key] = child
        return child

    def observe_request(
        self,
        model: str,
        version: str,
        route: str,
        protocol: str,
        code: str,
        seconds: float,
    ) -> None:
        """One served request in `gateway_request_duration_seconds`."""
        if code in SUCCESS_CODES and model:
            # A backend answered for it: the model exists.
            self._models.add(model)
        model = self.model_label(model)
        self._child(
            self.request_duration, model, version, route, protocol, code
        ).observe(seconds)

    def observe_loop(self, busy: float, lag: float) -> None:
        """Record one heartbeat's stretch (see `servekit_protocol.loop_heartbeat`)."""
        self.loop_busy.observe(busy)
        self.loop_lag.observe(lag)

    def observe_backend(self, backend: str, method: str, seconds: float) -> None:
        self._child(self.backend_duration, backend, method).observe(seconds)

    def count_route(self, model: str, route: str) -> None:
        self._child(self.route_requests, self.model_label(model), route).inc()
