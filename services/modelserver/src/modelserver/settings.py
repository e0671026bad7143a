"""Settings of the model server: TF Serving's flags plus a few servekit extensions.

Field names are TF Serving's flag names, so ``__main__`` maps ``--flag=value``
straight onto ``Settings(flag=value)``. Every field can also come from the
environment with the ``MODELSERVER_`` prefix (``MODELSERVER_REST_API_PORT=8501``),
which is how container images set them without rewriting the command line.

The batching and monitoring text protos named by ``batching_parameters_file`` and
``monitoring_config_file`` are parsed into :class:`BatchingSettings` and
:class:`MonitoringSettings` when the settings are built, so a bad file fails at
start-up, as in TF Serving. Settings are created once in ``__main__`` and passed
down; there is no module-level instance.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from servekit_protocol import http1, loop_heartbeat, segments, tensor_limits
from servekit_protocol.grpc_server import Http2Limits
from servekit_protocol.json_codec import offload as json_offload


class BatchingSettings(BaseModel):
    """TF Serving's ``BatchingParameters`` (``--batching_parameters_file``).

    Defaults are those TF Serving's shared batch scheduler applies to unset fields.
    """

    max_batch_size: int = Field(default=1000, ge=1)
    """Largest number of rows in one batch; larger single requests are refused."""

    batch_timeout_micros: int = Field(default=0, ge=0)
    """How long the first queued request waits for others before its batch runs."""

    max_enqueued_batches: int = Field(default=10, ge=1)
    """Queue bound in batches: requests beyond
    ``max_enqueued_batches * max_batch_size`` waiting rows get UNAVAILABLE at once."""

    num_batch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    """How many batches of one queue may run at the same time."""

    thread_pool_name: str = "batch_threads"
    """Accepted for compatibility; the pool name only appears in thread names."""

    allowed_batch_sizes: tuple[int, ...] = ()
    """Increasing batch sizes; a batch is padded (last row repeated) to the next one.
    The last entry must equal ``max_batch_size``."""

    pad_variable_length_inputs: bool = False
    """Pad inputs whose non-batch dimensions differ between requests to the largest
    size so that they can share a batch."""

    enable_large_batch_splitting: bool = False
    """Accepted for compatibility; requests larger than ``max_batch_size`` are
    refused instead of split."""

    max_execution_batch_size: int | None = None
    """Accepted for compatibility (only meaningful with batch splitting)."""

    @model_validator(mode="after")
    def _check_allowed_sizes(self) -> BatchingSettings:
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be increasing and positive")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    "Last entry in allowed_batch_sizes must match max_batch_size; "
                    f"last entry was {sizes[-1]}; expected {self.max_batch_size}"
                )
        return self


class MonitoringSettings(BaseModel):
    """TF Serving's ``MonitoringConfig`` (``--monitoring_config_file``)."""

    prometheus_enabled: bool = False
    """Expose Prometheus metrics on the REST port."""

    prometheus_path: str = "/monitoring/prometheus/metrics"
    """URL path of the Prometheus text (TF Serving's default)."""


class Settings(BaseSettings):
    """Everything the model server process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="MODELSERVER_",
        env_nested_delimiter="__",
        extra="forbid",
        protected_namespaces=(),
        # The docstrings below become the field descriptions --help prints.
        use_attribute_docstrings=True,
    )

    # --- ports and transports -------------------------------------------------
    host: str = "0.0.0.0"
    """servekit extension: address both servers bind (TF Serving binds all)."""

    port: int = Field(default=8500, ge=0, le=65535)
    """gRPC port; 0 disables gRPC."""

    grpc_socket_path: str = ""
    """If set, also listen for gRPC on this UNIX socket."""

    grpc_max_threads: int = Field(default=0, ge=0)
    """Accepted for compatibility; gRPC runs on the asyncio loop (0 = auto)."""

    grpc_channel_arguments: str = ""
    """Comma separated ``key=value`` gRPC server arguments,
    e.g. ``grpc.max_connection_age_ms=2000``."""

    grpc_max_message_bytes: int = Field(default=256 * 1024 * 1024, ge=4 * 1024 * 1024)
    """servekit extension: largest gRPC message received or sent (TF Serving: no
    limit; gRPC's default of 4 MiB is too small for image batches)."""

    event_loop_heartbeat_ms: float = Field(
        default=loop_heartbeat.DEFAULT_INTERVAL_MS, ge=0
    )
    """servekit extension: milliseconds between the event loop's heartbeats,
    which measure how long the loop was held (Prometheus
    ``modelserver_event_loop_busy_seconds`` and ``..._lag_seconds``); 0 turns
    them off."""

    grpc_parse_offload_bytes: int = Field(default=1024 * 1024, ge=0)
    """servekit extension: size from which a gRPC ``Predict`` message is parsed,
    and its tensors decoded, in a worker process (the JSON workers,
    ``--rest_api_json_workers``) rather than on the event loop, so that a large
    message does not hold up other clients' calls; 0 parses every message on
    the event loop."""

    shared_memory_dir: str = Field(default_factory=segments.default_directory)
    """servekit extension: folder of the shared memory files through which
    large gRPC messages, REST bodies and answers cross to and from the JSON
    workers (default ``/dev/shm``, a tmpfs; the temporary folder where there
    is none). It needs room for about twice the largest message at once, per
    call in flight; where it has none a call goes through the workers' pipe
    instead, slower and holding the event loop longer, with a warning. Checked
    at start: it must exist and be writable."""

    enable_grpc_healthcheck_service: bool = True
    """Serve ``grpc.health.v1.Health`` (TF Serving defaults to off; servekit on)."""

    http2: Http2Limits = Field(default_factory=Http2Limits)
    """servekit extension: HTTP/2 limits of the gRPC port (streams, header size,
    windows, floods, timeouts, connections), one variable per field:
    ``MODELSERVER_HTTP2__IDLE_TIMEOUT_SECONDS=120``; defaults in
    ``servekit_protocol.grpc_server.limits``."""

    rest_api_port: int = Field(default=8501, ge=0, le=65535)
    """REST port; 0 disables REST (TF Serving's default is 0, servekit's 8501)."""

    rest_api_num_threads: int = Field(default=0, ge=0)
    """Accepted for compatibility; REST runs on the asyncio loop (0 = auto)."""

    rest_api_timeout_in_ms: int = Field(default=30000, ge=0)
    """Deadline of a REST call; 0 = none. Late calls answer 504."""

    rest_api_enable_cors_support: bool = False
    """Add permissive CORS headers to REST answers."""

    rest_api_idle_timeout_seconds: float = Field(default=5.0, gt=0)
    """servekit extension: seconds an idle keep-alive REST connection is kept."""

    rest_api_header_timeout_seconds: float = Field(
        default=http1.DEFAULT_HEADER_TIMEOUT, gt=0
    )
    """servekit extension: seconds a REST request's line and headers may take to
    arrive, from its first byte (or the connection's opening); 408 or closed after."""

    rest_api_body_timeout_seconds: float = Field(
        default=http1.DEFAULT_BODY_TIMEOUT, gt=0
    )
    """servekit extension: seconds a REST request body may take to arrive after its
    headers; 408 after."""

    rest_api_max_header_bytes: int = Field(
        default=http1.DEFAULT_MAX_HEADER_BYTES, ge=1024
    )
    """servekit extension: bytes of REST request line and headers accepted; 431
    beyond."""

    rest_api_max_connections: int = Field(default=http1.DEFAULT_MAX_CONNECTIONS, ge=1)
    """servekit extension: REST connections held at once; more are answered 503 and
    closed."""

    rest_api_json_offload_bytes: int = Field(
        default=json_offload.DEFAULT_THRESHOLD_BYTES, ge=1
    )
    """servekit extension: size from which a REST JSON body is parsed (and turned
    into arrays) in a worker process rather than on the event loop, so that a
    large body does not hold up other clients' calls."""

    rest_api_json_workers: int = Field(default=json_offload.DEFAULT_WORKERS, ge=1)
    """servekit extension: worker processes parsing large REST JSON bodies and
    writing large answers at the same time (launched at start; the models load
    once they answer, so no readiness signal comes before them)."""

    rest_api_json_workers_start_timeout_seconds: float = Field(
        default=json_offload.DEFAULT_START_TIMEOUT_SECONDS, gt=0
    )
    """servekit extension: seconds the REST JSON workers may take to start
    before the server gives up starting (exit status 255)."""

    rest_api_json_answer_offload_elements: int = Field(
        default=json_offload.DEFAULT_ANSWER_THRESHOLD_ELEMENTS, ge=1
    )
    """servekit extension: tensor elements (``:classify``: ``(label, score)``
    pairs; ``:regress``: values) from which a REST ``:predict``, ``:classify``
    or ``:regress`` answer's JSON is written in a worker process rather than on
    the event loop, so that a large answer does not hold up other clients'
    calls."""

    enable_serialization_as_tensor_content: bool = False
    """Answer Predict (gRPC and gRPC-Web) with each output's bytes in
    ``tensor_content`` instead of TF Serving's default, the dtype's typed field
    (``float_val``, ``int_val``...)."""

    # --- models -----------------------------------------------------------------
    model_name: str = "default"
    """Name of the single model (ignored with ``model_config_file``)."""

    model_base_path: str = ""
    """Folder of the single model's version directories (ignored with
    ``model_config_file``, otherwise required)."""

    model_config_file: str = ""
    """ModelServerConfig text proto listing the models to serve."""

    model_config_file_poll_wait_seconds: int = 0
    """Re-read ``model_config_file`` this often; 0 = read once at start."""

    file_system_poll_wait_seconds: int = 1
    """Scan base paths for new/removed versions this often; 0 = once at start,
    negative = never."""

    allow_version_labels_for_unavailable_models: bool = False
    """Allow a label to point at a version that is not AVAILABLE (yet)."""

    enable_model_warmup: bool = True
    """Replay warmup requests (SavedModel ``assets.extra/tf_serving_warmup_requests``,
    scikit-learn manifest ``examples``) before a version serves."""

    num_request_iterations_for_warmup: int = Field(default=0, ge=0)
    """Replay each warmup record this many times (0 = the record's own count)."""

    num_load_threads: int = Field(default=0, ge=0)
    """Versions loaded in parallel (0 = one at a time)."""

    num_unload_threads: int = Field(default=0, ge=0)
    """Accepted for compatibility; unloads run in the load pool."""

    max_num_load_retries: int = Field(default=5, ge=0)
    """Retries of a failed load before the version is reported as failed."""

    load_retry_interval_micros: int = 60 * 1000 * 1000
    """Wait between load retries; negative = no wait."""

    saved_model_tags: str = "serve"
    """Comma separated MetaGraphDef tags loaded from SavedModels."""

    enable_signature_method_name_check: bool = False
    """Require classify/regress signatures to carry their method names (when off,
    as in TF Serving, any signature with the right inputs/outputs serves them)."""

    # --- TensorFlow session -------------------------------------------------------
    tensorflow_session_parallelism: int = Field(default=0, ge=0)
    """Threads of a TensorFlow session (0 = auto); sets intra and inter op."""

    tensorflow_intra_op_parallelism: int = Field(default=0, ge=0)
    """Threads used inside one op (0 = auto)."""

    tensorflow_inter_op_parallelism: int = Field(default=0, ge=0)
    """Ops run concurrently (0 = auto)."""

    per_process_gpu_memory_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of GPU memory a session may take (0 = TensorFlow decides)."""

    # --- batching and monitoring ---------------------------------------------------
    enable_batching: bool = False
    """Merge concurrent requests of one model version and signature into batches."""

    batching_parameters_file: str = ""
    """BatchingParameters text proto (used with ``enable_batching``)."""

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    """Batching parameters; read from ``batching_parameters_file`` when given."""

    monitoring_config_file: str = ""
    """MonitoringConfig text proto (Prometheus path)."""

    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    """Monitoring configuration; read from ``monitoring_config_file`` when given."""

    # --- servekit extensions ---------------------------------------------------------
    inference_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    """Threads running unbatched inference calls."""

    inline_inference_micros: int = Field(default=500, ge=0)
    """An unbatched call whose signature's last 16 calls each took at most this
    long (and had at least as many rows) runs on the event loop instead of an
    inference thread (:mod:`modelserver.inline`); 0 runs every call in a thread."""

    own_warning_filters: bool = True
    """Keep the process's warning filters to Python's defaults
    (:mod:`modelserver.warning_filters`): scikit-learn forests pay for every filter
    in every call. Off keeps the filters the imports installed."""

    max_request_tensor_elements: int = Field(
        default=tensor_limits.DEFAULT_MAX_ELEMENTS, ge=1
    )
    """Elements of all the input tensors of one request together (REST, gRPC,
    gRPC-Web), checked from the declared shapes before any is decoded; more is
    INVALID_ARGUMENT / 400. For Classify, Regress and MultiInference, the values
    of the tf.Examples once the context is merged into each, counted before any
    example is decoded (:mod:`modelserver.examplesize`). TF Serving has no such
    limit."""

    max_request_tensor_bytes: int = Field(default=tensor_limits.DEFAULT_MAX_BYTES, ge=1)
    """Bytes of all the input tensors of one request together once decoded,
    checked like ``max_request_tensor_elements``; for tf.Examples, 8 bytes a
    float or int64 value, a bytes value's bytes plus 48, 16 a feature of an
    example and 48 an example (what they really take decoded,
    :mod:`modelserver.examplesize`)."""

    json_native_logs: bool = True
    """Log what native libraries (TensorFlow, gRPC core) write to stderr as JSON
    lines of the ``native`` logger (:mod:`modelserver.observability.native_logs`).
    Off leaves their lines as they are."""

    @field_validator("shared_memory_dir")
    @classmethod
    def _check_shared_memory_dir(cls, value: str) -> str:
        # Found at start-up rather than as a warning on every large call.
        return segments.check_directory(value)

    @model_validator(mode="after")
    def _read_config_files(self) -> Settings:
        # Imported here because config.py imports this module's models.
        from modelserver import config

        if self.batching_parameters_file:
            self.batching = config.load_batching_settings(
                Path(self.batching_parameters_file)
            )
        if self.monitoring_config_file:
            self.monitoring = config.load_monitoring_settings(
                Path(self.monitoring_config_file)
            )
        if not self.model_config_file and not self.model_base_path:
            raise ValueError(
                "Both server_options.model_base_path and "
                "server_options.model_config_file are empty!"
            )
        return self
