"""Gateway settings: environment variables with the `GATEWAY_` prefix, or CLI flags.

Built once in `__main__` (or by the caller of `create_app`) and passed down; nothing
else in the gateway reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from servekit_protocol import http1, loop_heartbeat, segments, tensor_limits
from servekit_protocol.grpc_server import Http2Limits
from servekit_protocol.json_codec import offload as json_offload

from gateway.security import credentials


class Settings(BaseSettings):
    """Everything the gateway can be told; each field maps to `GATEWAY_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", extra="ignore", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Interface both servers bind (`0.0.0.0` in containers)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port (v1, v2, typed endpoints, health, metrics); 0 picks a free one."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port (PredictionService, ModelService); 0 picks a free one."""
    registry: Path | None = Path("models")
    """Registry folder: typed endpoints, label lookups, default routes file location."""
    routes_file: Path | None = None
    """Routing and rollout YAML; default `<registry>/routes.yaml`; re-read on change."""
    api_keys_file: Path | None = None
    """API keys YAML (names, sha256 of the keys, scopes, rates); re-read on change."""
    auth_enabled: bool = False
    """Require an API key on model endpoints (on in deployment manifests)."""
    default_backend: str = "127.0.0.1:8500"
    """TF Serving gRPC address for models that no route names."""
    framework_backends: dict[str, str] = Field(default_factory=dict)
    """Framework -> backend for models no route names, e.g.
    `{"tensorflow": "tfserving:8500", "sklearn": "modelserver:8500"}` (JSON in the
    environment); the framework comes from the registry manifest."""
    rest_backends: dict[str, str] = Field(default_factory=dict)
    """Backend gRPC address -> its REST address (TF Serving's `--rest_api_port`),
    e.g. `{"127.0.0.1:8500": "127.0.0.1:8501"}` (JSON in the environment). v1
    `:predict` requests routed to such a backend are forwarded to its REST API as
    they came instead of being translated to gRPC (not while shadowing)."""
    backend_grpc_web: bool = True
    """Make the gRPC calls to a backend with a REST address (`rest_backends`) as
    gRPC-Web on that port: the servekit model server speaks it, and it costs both
    sides less than Python gRPC. A backend that does not (TF Serving) is found out
    on the first call and called over gRPC."""
    backend_grpc_client: Literal["grpcio", "h2"] = "h2"
    """Client of the calls made to a backend's gRPC port (every call to TF
    Serving, and to a backend without a REST address): `h2`, the gateway's own
    HTTP/2 client (`clients/h2grpc.py`), which reads a large answer frame by
    frame, or `grpcio` (grpc.aio), which holds the event loop while it copies
    a large answer (64 MiB: 61-100 ms). Health checks use grpcio either way."""
    backend_max_answer_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    """Largest answer message the `h2` client accepts from a backend, and
    largest answer body over HTTP/1.1 (gRPC-Web and forwarded REST calls)
    (RESOURCE_EXHAUSTED beyond); grpcio's calls have no limit. The default is
    four times the servekit model server's default message limit."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger gets 413."""
    grpc_parse_offload_bytes: int = Field(default=1024 * 1024, ge=0)
    """Size from which a gRPC message is not parsed on the event loop (parsing
    and serializing a Predict again cost it about 5 ms a MiB that no other call
    is served): a Predict (gRPC or gRPC-Web) is forwarded to its backend as it
    came, only its model spec and tensor shapes read; an Open Inference
    Protocol ModelInfer is parsed and turned into arrays in the JSON workers.
    A backend's answer of this size or more is kept as its bytes and parsed
    (for REST callers: decoded into arrays) in a worker thread. 0 parses
    every message on the loop."""
    shared_memory_dir: str = Field(default_factory=segments.default_directory)
    """Folder of the shared memory files through which large ModelInfer
    messages and their Predicts cross to and from the JSON workers (default
    `/dev/shm`, a tmpfs; the temporary folder where there is none). It needs
    room for about twice the largest message at once, per call in flight;
    where it has none a call goes through the workers' pipe instead, slower
    and holding the event loop longer, with a warning. Checked at start: it
    must exist and be writable."""
    json_offload_bytes: int = Field(default=json_offload.DEFAULT_THRESHOLD_BYTES, gt=0)
    """Size from which a JSON body the gateway translates is parsed (and turned
    into arrays) in a worker process rather than on the event loop, so that a
    large body does not hold up other clients' calls."""
    json_workers: int = Field(default=json_offload.DEFAULT_WORKERS, gt=0)
    """Worker processes parsing large JSON bodies and writing large answers at
    the same time (launched at start; readiness waits for them)."""
    json_workers_start_timeout_seconds: float = Field(
        default=json_offload.DEFAULT_START_TIMEOUT_SECONDS, gt=0
    )
    """Seconds the JSON workers may take to start before the gateway gives up
    starting (exit status 1)."""
    json_answer_offload_elements: int = Field(
        default=json_offload.DEFAULT_ANSWER_THRESHOLD_ELEMENTS, gt=0
    )
    """Tensor elements from which a v1 `:predict` answer the gateway writes
    (translated from gRPC) is written in a worker process rather than on the
    event loop, so that a large answer does not hold up other clients' calls;
    also v2 and typed answers, `:classify` answers in `(label, score)` pairs and
    `:regress` answers in values."""
    http2: Http2Limits = Field(default_factory=Http2Limits)
    """HTTP/2 limits of the gRPC port (streams, header size, windows, floods,
    timeouts, connections) as JSON, e.g. `{"idle_timeout_seconds": 120}`;
    defaults in `servekit_protocol.grpc_server.limits`."""
    max_in_flight: int = Field(default=512, gt=0)
    """Requests served at once across HTTP and gRPC; more get 503 at once."""
    max_timeout_ms: int = Field(default=30_000, gt=0)
    """Cap on client-supplied deadlines (`x-request-timeout-ms`, gRPC deadline)."""
    default_timeout_ms: int = Field(default=30_000, gt=0)
    """Deadline of a request that supplies none (capped by `max_timeout_ms`)."""
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    """Token refill rate for keys whose entry has no `rate` (0: unlimited)."""
    rate_limit_burst: float = Field(default=0.0, ge=0)
    """Bucket size for keys whose entry has no `rate` (0: same as the rate)."""
    retries: int = Field(default=2, ge=0, le=10)
    """Extra attempts of an idempotent backend call that failed with UNAVAILABLE."""
    retry_backoff_ms: float = Field(default=25.0, ge=0)
    """First retry delay; doubled for each further attempt, with jitter."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive backend failures (UNAVAILABLE) that open its circuit."""
    breaker_reset_seconds: float = Field(default=2.0, gt=0)
    """How long an open circuit fails fast before one probe call is let through."""
    coalesce_max_rows: int = Field(default=32, ge=0)
    """Most rows in one backend Predict merged from concurrent requests of the same
    model, version and signature (0 or 1: never merge). Keep it at or below the
    backends' `max_batch_size`; a larger merge that is refused is halved."""
    coalesce_max_in_flight: int = Field(default=1, ge=1)
    """Predict calls of one model, version and signature in flight per backend at
    once; further requests wait and are merged into the next call."""
    metadata_ttl_seconds: float = Field(default=2.0, ge=0)
    """How long a signature fetched for `latest` or a label is reused."""
    reload_interval_seconds: float = Field(default=1.0, gt=0)
    """How often the routes file, keys file and registry are checked for changes."""
    access_log: bool = True
    """Log one JSON line per request."""
    log_level: str = "INFO"
    """Root log level."""
    ready_file: Path | None = None
    """Once both servers listen, the backends have been checked once and the JSON
    workers have started, write their ports here as JSON (for supervisors)."""
    auth_failures_per_second: float = Field(
        default=credentials.DEFAULT_FAILURES_PER_SECOND, gt=0
    )
    """Failed authentication attempts a client address earns back per second;
    an address out of attempts is answered 429 / RESOURCE_EXHAUSTED before its
    key is looked at."""
    auth_failure_burst: float = Field(default=credentials.DEFAULT_FAILURE_BURST, gt=0)
    """Failed authentication attempts a client address may make at once."""
    max_request_tensor_elements: int = Field(
        default=tensor_limits.DEFAULT_MAX_ELEMENTS, ge=1
    )
    """Elements of all the input tensors of one Predict together (v1 JSON, gRPC,
    gRPC-Web), checked from the declared shapes before any is decoded; more is
    400 / INVALID_ARGUMENT."""
    max_request_tensor_bytes: int = Field(default=tensor_limits.DEFAULT_MAX_BYTES, ge=1)
    """Bytes of all the input tensors of one Predict together once decoded,
    checked like `max_request_tensor_elements`."""
    http_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    """Seconds an idle keep-alive HTTP connection is kept between requests."""
    http_header_timeout_seconds: float = Field(
        default=http1.DEFAULT_HEADER_TIMEOUT, gt=0
    )
    """Seconds an HTTP request's line and headers may take to arrive, from its first
    byte (or the connection's opening); 408 or closed after."""
    http_body_timeout_seconds: float = Field(default=http1.DEFAULT_BODY_TIMEOUT, gt=0)
    """Seconds an HTTP request body may take to arrive after its headers; 408
    after."""
    http_max_header_bytes: int = Field(default=http1.DEFAULT_MAX_HEADER_BYTES, ge=1024)
    """Bytes of HTTP request line and headers accepted; 431 beyond."""
    http_max_connections: int = Field(default=http1.DEFAULT_MAX_CONNECTIONS, ge=1)
    """HTTP connections held at once; more are answered 503 and closed."""
    event_loop_heartbeat_ms: float = Field(
        default=loop_heartbeat.DEFAULT_INTERVAL_MS, ge=0
    )
    """Milliseconds between the event loop's heartbeats, which measure how long
    the loop was held (`gateway_event_loop_busy_seconds`, `..._lag_seconds`);
    0 turns them off."""

    @field_validator("rest_backends")
    @classmethod
    def _check_rest_backends(cls, value: dict[str, str]) -> dict[str, str]:
        # Found at start-up rather than as a 500 on the first forwarded request.
        for grpc_address, rest_address in value.items():
            host, _, port = rest_address.rpartition(":")
            # A scheme would pass the port check and then fail every call, which
            # the gRPC-Web client takes for a backend without gRPC-Web.
            if not host or not port.isdigit() or "/" in host:
                raise ValueError(
                    f"REST address of {grpc_address!r} is not host:port: "
                    f"{rest_address!r}"
                )
        return value

    @field_validator("shared_memory_dir")
    @classmethod
    def _check_shared_memory_dir(cls, value: str) -> str:
        # Found at start-up rather than as a warning on every large call.
        return segments.check_directory(value)

    @model_validator(mode="after")
    def _check_auth_has_keys(self) -> Settings:
        # Turning auth on without keys would lock every client out; refuse to start
        # rather than serve nothing but 401s.
        if self.auth_enabled and self.api_keys_file is None:
            raise ValueError("GATEWAY_AUTH_ENABLED needs GATEWAY_API_KEYS_FILE")
        return self

    def listener_limits(self) -> http1.ListenerLimits:
        """What the HTTP port allows a connection."""
        return http1.ListenerLimits(
            idle_timeout=self.http_idle_timeout_seconds,
            header_timeout=self.http_header_timeout_seconds,
            body_timeout=self.http_body_timeout_seconds,
            max_header_bytes=self.http_max_header_bytes,
            max_connections=self.http_max_connections,
        )

    def resolved_routes_file(self) -> Path | None:
        """The routes file to watch: explicit, else `<registry>/routes.yaml`."""
        if self.routes_file is not None:
            return self.routes_file
        if self.registry is not None:
            return self.registry / "routes.yaml"
        return None
