"""``servekit-model-server``: the composition root.

Flags → :class:`~modelserver.settings.Settings` → :class:`~modelserver.dataplane.DataPlane`
→ the REST and gRPC servers, all in one process on one uvloop event loop.

Flags are TF Serving's (``tensorflow_model_server``): ``--flag=value`` and
``--flag value``; booleans also as a bare ``--flag`` and ``--flag=true|false|1|0``.
An unknown flag, a bad value or an invalid configuration prints the problem and
exits with status 255, as TF Serving's ``return -1`` does. Flags that TF Serving
has but that change nothing here (XLA, TPU, TFLite, profiler, cache flushing...)
are accepted and logged as ignored; the few whose meaning cannot be honoured
(TLS/ALTS credentials, platform configs) are refused.

servekit extensions: ``--host`` (bind address, default 0.0.0.0 like TF Serving;
tests pass 127.0.0.1), ``--grpc_max_message_bytes``, ``--inference_threads``,
``--log_level``, ``--json_native_logs`` and ``--own_warning_filters``. Every
setting can also come from ``MODELSERVER_<FLAG>`` variables.

Start-up: both servers start first (gRPC health NOT_SERVING, REST answering
status queries and ``/v2/health/ready`` 400), then, once the REST port's JSON
workers have answered, the configured models load;
once they have, health turns SERVING. From then on health follows
``DataPlane.ready`` (a model added by a config change that has not loaded yet
turns it NOT_SERVING until it has). SIGTERM or SIGINT: health turns NOT_SERVING, both servers stop accepting,
in-flight requests finish (up to :data:`DRAIN_SECONDS`), the dataplane stops, and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError
from servekit_protocol.logs import configure_logging

from modelserver import warning_filters
from modelserver.flags import FlagError, parse_flags, validation_message, version_text
from modelserver.observability import native_logs
from modelserver.settings import Settings

if TYPE_CHECKING:
    from servekit_protocol.json_codec import BodyParsers

    from modelserver.dataplane import DataPlane
    from modelserver.protocol.grpc.server import GrpcServer

logger = logging.getLogger("modelserver")

EXIT_FAILURE = 255
"""TF Serving's ``return -1`` as seen by a shell."""

READINESS_POLL_SECONDS = 0.1
"""How often gRPC health is brought in line with the dataplane's readiness."""

DRAIN_SECONDS = 25.0
"""How long in-flight requests may take to finish after SIGTERM (below
Kubernetes' default 30 s termination grace period)."""


class Stoppable(Protocol):
    """A started server (REST or gRPC)."""

    async def stop(self) -> None: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Run the model server until SIGTERM/SIGINT; return the exit status."""
    try:
        values, options = parse_flags(sys.argv[1:] if argv is None else argv)
    except FlagError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    if options.version:
        print(version_text())
        return 0
    configure_logging(options.log_level)
    for name in options.ignored:
        logger.warning("--%s is accepted for compatibility and has no effect", name)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        logger.error("Failed to start server. Error: %s", validation_message(exc))
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        logger.error("Failed to start server. Error: %s", exc)
        return EXIT_FAILURE
    if settings.own_warning_filters:
        warning_filters.install()
    native_stderr = None
    if settings.json_native_logs:
        native_stderr = native_logs.capture()
        configure_logging(options.log_level, stream=native_stderr.stream)
    import uvloop

    try:
        return uvloop.run(serve(settings))
    finally:
        if native_stderr is not None:
            native_stderr.close()


def _worker_modules(settings: Settings) -> tuple[str, ...]:
    """The modules of the functions the JSON workers will run."""
    modules = ["modelserver.protocol.rest.codec"] if settings.rest_api_port else []
    if settings.port or settings.grpc_socket_path or settings.rest_api_port:
        # Large Classify, Regress and MultiInference answers (gRPC, gRPC-Web).
        modules.append("modelserver.protocol.grpc.largeanswers")
        if settings.grpc_parse_offload_bytes:
            modules.append("modelserver.protocol.grpc.largeexamples")
    return tuple(modules)


async def serve(settings: Settings) -> int:
    """Serve until a termination signal; return the exit status.

    Imports the heavy modules here so ``--help`` and flag errors stay fast.
    """
    from prometheus_client import generate_latest
    from servekit_protocol.http1 import ListenerLimits
    from servekit_protocol.json_codec import BodyParsers
    from servekit_protocol.json_codec.offload import WorkersNotStarted
    from servekit_protocol.loop_heartbeat import LoopHeartbeat

    from modelserver.dataplane import DataPlane
    from modelserver.errors import ServingError
    from modelserver.observability.metrics import Metrics
    from modelserver.protocol.grpc.server import GrpcServer, parse_channel_arguments
    from modelserver.protocol.rest.app import create_app
    from modelserver.protocol.rest.server import RestServer

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    metrics = Metrics()
    heartbeat: LoopHeartbeat | None = None
    if settings.event_loop_heartbeat_ms > 0:
        heartbeat = LoopHeartbeat(
            settings.event_loop_heartbeat_ms / 1000, metrics.observe_loop
        )
        heartbeat.start()
    dataplane = DataPlane.from_settings(settings, metrics)
    parsers = BodyParsers(
        settings.rest_api_json_offload_bytes,
        settings.rest_api_json_workers,
        settings.rest_api_json_answer_offload_elements,
        settings.shared_memory_dir,
    )
    grpc_server: GrpcServer | None = None
    rest_server: RestServer | None = None
    if not settings.port and not settings.grpc_socket_path:
        logger.error(
            "Failed to start server. Error: At least one of server_options.grpc_port "
            "or server_options.grpc_socket_path must be set."
        )
        return EXIT_FAILURE
    if settings.port or settings.grpc_socket_path:
        grpc_server = GrpcServer(
            dataplane,
            host=settings.host,
            port=settings.port or None,
            max_message_bytes=settings.grpc_max_message_bytes,
            channel_arguments=parse_channel_arguments(settings.grpc_channel_arguments),
            socket_path=settings.grpc_socket_path,
            enable_health=settings.enable_grpc_healthcheck_service,
            packed_outputs=settings.enable_serialization_as_tensor_content,
            grace=DRAIN_SECONDS,
            limits=settings.http2,
            parsers=parsers,
            parse_offload_bytes=settings.grpc_parse_offload_bytes,
        )
    if settings.rest_api_port:
        if settings.rest_api_port == settings.port:
            logger.error(
                "server_options.http_port cannot be same as grpc_port. "
                "Please use a different port for HTTP/REST API."
            )
            return EXIT_FAILURE
        # Launched first, and the models load once they answer, so that no
        # readiness signal (model status, health) comes before them and no
        # large body or answer waits for their start (seconds). They import
        # the modules of the functions run there.
        parsers.start(preload=_worker_modules(settings))
        monitoring = settings.monitoring
        app = create_app(
            dataplane,
            timeout=settings.rest_api_timeout_in_ms / 1000
            if settings.rest_api_timeout_in_ms > 0
            else None,
            metrics_path=monitoring.prometheus_path
            if monitoring.prometheus_enabled
            else None,
            render_metrics=lambda: generate_latest(metrics.registry),
            enable_cors=settings.rest_api_enable_cors_support,
            max_body_bytes=settings.grpc_max_message_bytes,
            packed_outputs=settings.enable_serialization_as_tensor_content,
            parsers=parsers,
            grpc_parse_offload_bytes=settings.grpc_parse_offload_bytes,
        )
        rest_server = RestServer(
            app,
            host=settings.host,
            port=settings.rest_api_port,
            grace=DRAIN_SECONDS,
            limits=ListenerLimits(
                idle_timeout=settings.rest_api_idle_timeout_seconds,
                header_timeout=settings.rest_api_header_timeout_seconds,
                body_timeout=settings.rest_api_body_timeout_seconds,
                max_header_bytes=settings.rest_api_max_header_bytes,
                max_connections=settings.rest_api_max_connections,
            ),
        )

    elif grpc_server is not None and settings.grpc_parse_offload_bytes:
        parsers.start(preload=_worker_modules(settings))

    started: list[Stoppable] = []
    following: asyncio.Task[None] | None = None
    exit_status = 0
    try:
        # Before the gRPC port can make segments of this process's own id.
        from servekit_protocol import segments

        await segments.sweep_at_start(logger, settings.shared_memory_dir)
        for server in (grpc_server, rest_server):
            if server is not None:
                await server.start()
                started.append(server)
        loading = asyncio.create_task(
            _start_up(
                dataplane,
                parsers if _worker_modules(settings) else None,
                settings.rest_api_json_workers_start_timeout_seconds,
            ),
            name="initial-load",
        )
        stop_waiter = asyncio.create_task(stopping.wait(), name="stop-waiter")
        await asyncio.wait({loading, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()
            if grpc_server is not None:
                following = asyncio.create_task(
                    _follow_readiness(dataplane, grpc_server), name="readiness"
                )
            # The libraries and models loaded so far (TensorFlow alone is
            # millions of objects) never become garbage; a full collection
            # that walks them all stalls every request for over 100 ms.
            gc.freeze()
            logger.info("Models loaded; serving")
        await stop_waiter
        if following is not None:
            following.cancel()
        logger.info("Termination signal received; draining in-flight requests")
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
    except (OSError, ServingError, WorkersNotStarted) as exc:
        logger.error("Failed to start server. Error: %s", exc)
        exit_status = EXIT_FAILURE
    finally:
        await _shutdown(started)
        if heartbeat is not None:
            heartbeat.stop()
        parsers.close()
        try:
            await dataplane.stop()
        except Exception:
            logger.exception("Stopping the dataplane failed")
            exit_status = EXIT_FAILURE
    logger.info("Server stopped", extra={"exit_status": exit_status})
    return exit_status


async def _start_up(
    dataplane: DataPlane, parsers: BodyParsers | None, workers_timeout: float
) -> None:
    """Wait for the JSON workers to start (when there are any), then load the
    configured models.

    Raises:
        WorkersNotStarted: Not within ``workers_timeout`` seconds.
        InvalidConfig: See ``DataPlane.start``.
    """
    if parsers is not None:
        await parsers.wait_started(workers_timeout)
    await dataplane.start()


async def _follow_readiness(dataplane: DataPlane, grpc_server: GrpcServer) -> None:
    # Polled rather than pushed: readiness is a cheap scan of the configured
    # models, and a poll cannot miss a change however the registry made it.
    serving: bool | None = None
    while True:
        ready = dataplane.ready()
        if ready != serving:
            await grpc_server.set_serving(ready)
            if serving is not None:
                logger.info("Readiness changed: %s", "ready" if ready else "not ready")
            serving = ready
        await asyncio.sleep(READINESS_POLL_SECONDS)


async def _shutdown(started: Sequence[Stoppable]) -> None:
    # Both transports stop accepting and drain at the same time; the dataplane
    # stays up until they are done so that in-flight requests can complete.
    results = await asyncio.gather(
        *(server.stop() for server in started), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            logger.error("Stopping a server failed: %r", result)


if __name__ == "__main__":
    sys.exit(main())
