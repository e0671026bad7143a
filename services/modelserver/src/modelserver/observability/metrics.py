"""Prometheus metrics of the model server, on an injected ``CollectorRegistry``.

TF Serving exports ``:tensorflow:serving:request_count`` and friends; those names
are not legal in the Prometheus text format's recommended style, so servekit uses
``modelserver_*`` names with the same meaning:

=====================================================  ==========================================
``modelserver_request_count_total``                     requests by model, version, api, protocol,
                                                        status (gRPC code name, ``OK`` on success)
``modelserver_request_latency_seconds``                 latency histogram, same labels
``modelserver_batch_size``                              rows per executed batch (after padding),
                                                        by model, version, signature
``modelserver_batch_queue_depth``                       rows waiting in a batch queue
``modelserver_model_load_latency_seconds``              time to load + warm up a version
``modelserver_model_version_state``                     1 for a version's current state
                                                        (START, LOADING, AVAILABLE, UNLOADING, END)
``modelserver_event_loop_busy_seconds``                 CPU the event loop's thread spent between
                                                        two heartbeats (``--event_loop_heartbeat_ms``)
``modelserver_event_loop_lag_seconds``                  how late each heartbeat ran (wall clock)
=====================================================  ==========================================

``version`` is ``""`` when a request failed before a version was resolved.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from servekit_protocol.loop_heartbeat import STALL_BUCKETS

from modelserver.types import VersionState

REQUEST_LABELS = ("model", "version", "api", "protocol", "status")
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
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The model server's metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.request_count = Counter(
            "modelserver_request_count",
            "Requests answered, by model, version, API, protocol and status.",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "modelserver_request_latency_seconds",
            "Time from request decode to answer inside the dataplane.",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelserver_batch_size",
            "Rows in each executed batch, padding included.",
            ("model", "version", "signature"),
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelserver_batch_queue_depth",
            "Rows waiting in a batch queue.",
            ("model", "version", "signature"),
            registry=self.registry,
        )
        self.load_latency = Histogram(
            "modelserver_model_load_latency_seconds",
            "Time to load and warm up a model version.",
            ("model", "version"),
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.version_state = Gauge(
            "modelserver_model_version_state",
            "1 for the current state of a model version, 0 for the others.",
            ("model", "version", "state"),
            registry=self.registry,
        )
        self.loop_busy = Histogram(
            "modelserver_event_loop_busy_seconds",
            "CPU time the event loop's thread spent between two heartbeats: "
            "a callback that holds the loop shows as a stretch at least as long.",
            buckets=STALL_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "modelserver_event_loop_lag_seconds",
            "How much later than due each event loop heartbeat ran (wall clock).",
            buckets=STALL_BUCKETS,
            registry=self.registry,
        )
        # labels() locks and validates on every call; requests reuse few label
        # sets, so their children are kept here.
        self._request_children: dict[
            tuple[str, str, str, str, str], tuple[Counter, Histogram]
        ] = {}

    def observe_request(
        self,
        *,
        model: str,
        version: str,
        api: str,
        protocol: str,
        status: str,
        seconds: float,
    ) -> None:
        """Count one answered request and record its latency."""
        labels = (model, version, str(api), protocol, status)
        children = self._request_children.get(labels)
        if children is None:
            children = (
                self.request_count.labels(*labels),
                self.request_latency.labels(*labels),
            )
            self._request_children[labels] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_loop(self, busy: float, lag: float) -> None:
        """Record one heartbeat's stretch (see ``servekit_protocol.loop_heartbeat``)."""
        self.loop_busy.observe(busy)
        self.loop_lag.observe(lag)

    def set_version_state(self, model: str, version: int, state: VersionState) -> None:
        """Mark ``state`` as the current one of a version."""
        version_label = str(version)
        for candidate in VersionState:
            self.version_state.labels(model, version_label, candidate.value).set(
                1.0 if candidate is state else 0.0
            )

    def forget_version(self, model: str, version: int) -> None:
        """Drop a version's per-version series once it is gone from status."""
        version_label = str(version)
        for candidate in VersionState:
            with contextlib.suppress(KeyError):
                self.version_state.remove(model, version_label, candidate.value)
