"""`servekit-gateway`: the composition root.

Flags (or `GATEWAY_*` variables) -> Settings -> Gateway -> the HTTP app (uvicorn)
and the gRPC server, both on one event loop in one process.

    servekit-gateway [--port 8000 --grpc-port 8001 --default-backend HOST:PORT ...]
    servekit-gateway keys new --name NAME [--scope MODEL ...] [--rate N --burst N]
    servekit-gateway keys hash KEY

gRPC health is SERVING only while `/readyz` is 200 (every backend ready).
SIGTERM or SIGINT: gRPC health turns NOT_SERVING, both servers stop accepting,
in-flight requests finish (up to `DRAIN_SECONDS`), then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from pydantic import ValidationError
from servekit_protocol import segments
from servekit_protocol.grpc_server.limits import described_fields
from servekit_protocol.http1 import protocol_class
from servekit_protocol.json_codec.offload import WorkersNotStarted
from servekit_protocol.loop_heartbeat import LoopHeartbeat

from gateway.grpcfront.server import (
    create_grpc_server,
    follow_readiness,
    mark_serving,
)
from gateway.main import build_gateway, create_app
from gateway.observability.logging import configure_logging
from gateway.observability.metrics import GatewayMetrics
from gateway.routing.config import RoutesFileError
from gateway.security.keys import KeysFileError, generate_key, hash_key
from gateway.settings import Settings

logger = logging.getLogger("gateway")

FIRST_CHECK_SECONDS = 10.0
"""Most start-up waits for the first backend readiness check before saying it
listens (an unreachable backend answers at once; a silent one takes its timeout)."""

DRAIN_SECONDS = 20.0
"""How long in-flight requests may take after SIGTERM (below Kubernetes' 30 s)."""

WORKER_MODULES = (
    "gateway.signatures",
    "gateway.codecs.v2",
    "gateway.codecs.v2_grpc",
    "gateway.codecs.answers",
    "gateway.codecs.typed_body",
)
"""What the JSON workers import as they start: the modules of the functions they
run and of their arguments."""

HTTP2_DEST_PREFIX = "http2__"
"""``--http2-<field>`` sets one field of the gRPC port's HTTP/2 limits
(``Settings.http2``), e.g. ``--http2-idle-timeout-seconds 120``."""

# flag -> Settings field; only flags given on the command line override the env.
_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "--grpc-port": ("grpc_port", int),
    "--registry": ("registry", str),
    "--routes-file": ("routes_file", str),
    "--api-keys-file": ("api_keys_file", str),
    "--default-backend": ("default_backend", str),
    "--max-body-bytes": ("max_body_bytes", int),
    "--shared-memory-dir": ("shared_memory_dir", str),
    "--json-offload-bytes": ("json_offload_bytes", int),
    "--grpc-parse-offload-bytes": ("grpc_parse_offload_bytes", int),
    "--json-workers": ("json_workers", int),
    "--json-answer-offload-elements": ("json_answer_offload_elements", int),
    "--json-workers-start-timeout-seconds": (
        "json_workers_start_timeout_seconds",
        float,
    ),
    "--max-in-flight": ("max_in_flight", int),
    "--max-timeout-ms": ("max_timeout_ms", int),
    "--default-timeout-ms": ("default_timeout_ms", int),
    "--rate-limit-per-second": ("rate_limit_per_second", float),
    "--rate-limit-burst": ("rate_limit_burst", float),
    "--framework-backends": ("framework_backends", json.loads),
    "--rest-backends": ("rest_backends", json.loads),
    "--http2": ("http2", json.loads),
    "--backend-grpc-web": ("backend_grpc_web", json.loads),
    "--backend-grpc-client": ("backend_grpc_client", str),
    "--backend-max-answer-bytes": ("backend_max_answer_bytes", int),
    "--retries": ("retries", int),
    "--retry-backoff-ms": ("retry_backoff_ms", float),
    "--breaker-failures": ("breaker_failures", int),
    "--breaker-reset-seconds": ("breaker_reset_seconds", float),
    "--coalesce-max-rows": ("coalesce_max_rows", int),
    "--coalesce-max-in-flight": ("coalesce_max_in_flight", int),
    "--metadata-ttl-seconds": ("metadata_ttl_seconds", float),
    "--reload-interval-seconds": ("reload_interval_seconds", float),
    "--log-level": ("log_level", str),
    "--ready-file": ("ready_file", str),
    "--auth-failures-per-second": ("auth_failures_per_second", float),
    "--auth-failure-burst": ("auth_failure_burst", float),
    "--max-request-tensor-elements": ("max_request_tensor_elements", int),
    "--max-request-tensor-bytes": ("max_request_tensor_bytes", int),
    "--http-idle-timeout-seconds": ("http_idle_timeout_seconds", float),
    "--http-header-timeout-seconds": ("http_header_timeout_seconds", float),
    "--http-body-timeout-seconds": ("http_body_timeout_seconds", float),
    "--http-max-header-bytes": ("http_max_header_bytes", int),
    "--http-max-connections": ("http_max_connections", int),
    "--event-loop-heartbeat-ms": ("event_loop_heartbeat_ms", float),
}


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit-gateway",
        description=(
            "The servekit gateway: TF Serving REST (/v1), Open Inference Protocol "
            "(/v2), typed endpoints and TF Serving gRPC in front of model servers. "
            "Every flag can also be set as GATEWAY_<NAME> (e.g. GATEWAY_GRPC_PORT). "
            "Subcommands: 'keys new', 'keys hash'."
        ),
    )
    for flag, (field, kind) in _FLAGS.items():
        description = Settings.model_fields[field].description or ""
        parser.add_argument(flag, dest=field, type=kind, default=None, help=description)
    for name, (kind, default, description) in described_fields().items():
        # One flag per HTTP/2 limit, as the model server's --http2_<field>.
        parser.add_argument(
            "--http2-" + name.replace("_", "-"),
            dest=HTTP2_DEST_PREFIX + name,
            type=kind,
            default=None,
            help=f"{description} (default: {default})",
        )
    parser.add_argument(
        "--auth",
        dest="auth_enabled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=Settings.model_fields["auth_enabled"].description,
    )
    parser.add_argument(
        "--access-log",
        dest="access_log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=Settings.model_fields["access_log"].description,
    )
    return parser


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields the command line gives: the ``--http2-<field>``
    flags are folded into ``http2``, over the fields ``--http2`` JSON gives;
    fields no flag gives keep their ``GATEWAY_HTTP2`` value or default."""
    overrides: dict[str, Any] = {}
    http2: dict[str, Any] = {}
    for name, value in vars(args).items():
        if value is None:
            continue
        if name.startswith(HTTP2_DEST_PREFIX):
            http2[name.removeprefix(HTTP2_DEST_PREFIX)] = value
        else:
            overrides[name] = value
    if http2:
        given = overrides.get("http2", {})
        # Anything but an object is left for the settings to refuse.
        overrides["http2"] = {**given, **http2} if isinstance(given, dict) else given
    return overrides


def keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit-gateway keys", description="Create or hash API keys."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser(
        "new", help="generate a key; print it once and the keys-file entry to add"
    )
    new.add_argument("--name", required=True, help="name of the key's holder")
    new.add_argument(
        "--scope",
        action="append",
        default=None,
        help="model the key may use (repeatable; default: every model, '*')",
    )
    new.add_argument("--rate", type=float, default=None, help="requests per second")
    new.add_argument("--burst", type=float, default=None, help="bucket size")
    hashed = sub.add_parser("hash", help="print the sha256 to store for a key")
    hashed.add_argument("key")
    return parser


def run_keys(argv: Sequence[str]) -> int:
    args = keys_parser().parse_args(argv)
    if args.action == "hash":
        sys.stdout.write(hash_key(args.key) + "\n")
        return 0
    key = generate_key()
    entry: dict[str, Any] = {
        "name": args.name,
        "sha256": hash_key(key),
        "scopes": args.scope or ["*"],
    }
    if args.rate is not None:
        entry["rate"] = {"per_second": args.rate}
        if args.burst is not None:
            entry["rate"]["burst"] = args.burst
    sys.stderr.write(
        "the key (shown once; store it, the gateway keeps only its hash):\n"
    )
    sys.stdout.write(key + "\n")
    sys.stderr.write("add to the keys file under 'keys:':\n")
    sys.stderr.write(yaml.safe_dump([entry], sort_keys=False))
    return 0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns the signals so
    the gRPC server drains too, and nothing re-raises them at the end."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound_port(server: uvicorn.Server) -> int:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the HTTP server has no listening socket")


async def serve(settings: Settings) -> None:
    """Run both servers until SIGTERM/SIGINT, then drain and stop."""
    gateway = build_gateway(settings)
    heartbeat = _start_heartbeat(settings, gateway.metrics)
    # Launched first: they import while the servers start and the backends are
    # checked, and readiness waits for them, so that no large body or answer
    # waits for their start (seconds). They import the modules of what they
    # run (v1 parsing unpickles a SignatureSet).
    gateway.parsers.start(preload=WORKER_MODULES)
    workers = asyncio.create_task(
        gateway.parsers.wait_started(settings.json_workers_start_timeout_seconds)
    )
    app = create_app(settings, gateway=gateway)
    grpc_server, health = create_grpc_server(gateway)
    grpc_port = grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    if grpc_port == 0:
        raise OSError(f"cannot bind gRPC on {settings.host}:{settings.grpc_port}")
    # Before the gRPC port can make segments of this process's own id.
    await segments.sweep_at_start(logger, settings.shared_memory_dir)
    await grpc_server.start()
    # NOT_SERVING until the JSON workers have started and the backends are
    # ready; from then on health follows /readyz.
    await mark_serving(health, False)
    limits = settings.listener_limits()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http=protocol_class(limits, "http"),
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # The gateway does not use the client address; the middleware costs time.
        proxy_headers=False,
        timeout_graceful_shutdown=int(DRAIN_SECONDS),
    )
    http_server = _Server(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def request_stop(signum: int) -> None:
        if stopping.is_set():
            http_server.force_exit = True
            return
        logger.info("signal %d: draining and stopping", signum)
        stopping.set()
        http_server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)

    def stop_unless_started(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            request_stop(0)

    workers.add_done_callback(stop_unless_started)
    http_task = asyncio.create_task(http_server.serve())
    while not http_server.started and not http_task.done():
        await asyncio.sleep(0.02)
    if http_task.done():
        await http_task
        _raise_if_failed(workers)
        raise SystemExit("the HTTP server did not start")
    http_port = _bound_port(http_server)
    # What start-up imported lives as long as the process: keep full garbage
    # collections from walking it again and again while requests wait.
    gc.freeze()
    logger.info(
        "gateway ready",
        extra={
            "http": f"http://{settings.host}:{http_port}",
            "grpc": f"{settings.host}:{grpc_port}",
            "default_backend": settings.default_backend,
            "backend_grpc_client": settings.backend_grpc_client,
        },
    )
    stop_requested = asyncio.create_task(stopping.wait())
    await asyncio.wait({workers, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    health_task: asyncio.Task[None] | None = None
    if _started(workers):
        # Health follows the checks only from here: the workers are part of
        # readiness, and the first check made now is fresh (ReadinessCache).
        first_check = asyncio.Event()
        health_task = asyncio.create_task(
            follow_readiness(health, app.state.readiness, first_check)
        )
        # Whoever reads the ready file may ask gRPC health at once: it answers
        # the first check's result, not a default.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_check.wait(), FIRST_CHECK_SECONDS)
        if settings.ready_file is not None:
            _write_ready_file(settings.ready_file, http_port, grpc_port)
    await stop_requested
    if health_task is not None:
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_task
    await mark_serving(health, False)
    await asyncio.gather(http_task, grpc_server.stop(grace=DRAIN_SECONDS))
    await gateway.close()
    workers.cancel()
    if heartbeat is not None:
        heartbeat.stop()
    _raise_if_failed(workers)
    logger.info("gateway stopped")


def _start_heartbeat(
    settings: Settings, metrics: GatewayMetrics
) -> LoopHeartbeat | None:
    """The event loop's heartbeat into `metrics`, unless turned off."""
    if settings.event_loop_heartbeat_ms <= 0:
        return None
    heartbeat = LoopHeartbeat(
        settings.event_loop_heartbeat_ms / 1000, metrics.observe_loop
    )
    heartbeat.start()
    return heartbeat


def _started(workers: asyncio.Task[None]) -> bool:
    return workers.done() and not workers.cancelled() and workers.exception() is None


def _raise_if_failed(workers: asyncio.Task[None]) -> None:
    if workers.done() and not workers.cancelled():
        failure = workers.exception()
        if failure is not None:
            raise failure


def _write_ready_file(path: Path, http_port: int, grpc_port: int) -> None:
    # Written atomically so a poller never reads half a file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(
        json.dumps({"http_port": http_port, "grpc_port": grpc_port, "pid": os.getpid()})
    )
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["keys"]:
        return run_keys(arguments[1:])
    args = serve_parser().parse_args(arguments)
    try:
        settings = Settings(**settings_overrides(args))
    except ValidationError as exc:
        sys.stderr.write(f"servekit-gateway: invalid settings: {exc}\n")
        return 2
    configure_logging(settings.log_level)
    try:
        _run(settings)
    except (RoutesFileError, KeysFileError, OSError, WorkersNotStarted) as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0


def _run(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
