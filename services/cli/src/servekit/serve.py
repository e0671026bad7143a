"""`servekit serve`: the model server on the registry and the gateway in front, as two
local processes supervised until Ctrl-C or SIGTERM.

Start-up: regenerate the registry's serving configs; start `servekit-model-server`
on `<registry>/servekit.config` (polled every second, so publishing, labels,
promote and rollback are followed live); start the gateway with the model server as
its default backend; wait until every model in the registry is AVAILABLE through
the gateway; print the URLs and a sample request. Shutdown stops the gateway first
(the front door drains), then the model server. If either process dies, the other
is stopped and the command fails.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from modelregistry import Registry, RegistryError
from rich.console import Console

CONFIG_POLL_SECONDS = 1
STOP_TIMEOUT_SECONDS = 30.0


class ServeError(Exception):
    """A process failed to start or died; the message says which and why."""


@dataclass(frozen=True)
class ServeOptions:
    """What `servekit serve` was asked for."""

    registry: Path
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    model_server_port: int = 8500
    model_server_rest_port: int = 8501
    ready_timeout: float = 180.0
    log_dir: Path | None = None
    """Where the two processes' JSON logs go (default: a temporary folder)."""


@dataclass
class Child:
    """One supervised process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM (both servers drain), SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        return self.popen.returncode


def _start(name: str, argv: Sequence[str], log_path: Path) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            list(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: the terminal's Ctrl-C reaches only this supervisor,
            # which then stops the children in order.
            start_new_session=True,
        )
    return Child(name, popen, log_path)


def model_server_argv(options: ServeOptions) -> list[str]:
    """The model server command line (TF Serving's flags)."""
    return [
        sys.executable,
        "-m",
        "modelserver",
        f"--port={options.model_server_port}",
        f"--rest_api_port={options.model_server_rest_port}",
        f"--host={options.host}",
        f"--model_config_file={options.registry / 'servekit.config'}",
        f"--model_config_file_poll_wait_seconds={CONFIG_POLL_SECONDS}",
        f"--file_system_poll_wait_seconds={CONFIG_POLL_SECONDS}",
    ]


def gateway_argv(options: ServeOptions, ready_file: Path) -> list[str]:
    """The gateway command line: the model server is its default backend (gRPC,
    and REST for lone v1 predicts)."""
    backend = _connect_host(options.host)
    return [
        sys.executable,
        "-m",
        "gateway",
        f"--host={options.host}",
        f"--port={options.port}",
        f"--grpc-port={options.grpc_port}",
        f"--registry={options.registry}",
        f"--default-backend={backend}:{options.model_server_port}",
        "--rest-backends="
        + json.dumps(
            {
                f"{backend}:{options.model_server_port}": (
                    f"{backend}:{options.model_server_rest_port}"
                )
            }
        ),
        f"--ready-file={ready_file}",
    ]


def _connect_host(host: str) -> str:
    # A server bound to every interface is reached on loopback.
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read() or b"null")
        except ValueError:
            body = None
        return int(error.code), body
    except (OSError, ValueError):
        return 0, None


def _model_available(base_url: str, model: str) -> bool:
    status, body = _get_json(f"{base_url}/v1/models/{model}")
    if status != 200 or not isinstance(body, dict):
        return False
    return any(
        entry.get("state") == "AVAILABLE"
        for entry in body.get("model_version_status", [])
    )


def _availability_probe(base_url: str, model: str) -> Callable[[], bool]:
    return lambda: _model_available(base_url, model)


def _wait_for(
    what: str,
    predicate: Callable[[], bool],
    children: Sequence[Child],
    deadline: float,
) -> None:
    while not predicate():
        for child in children:
            if not child.alive():
                raise ServeError(
                    f"{child.name} exited with status {child.popen.returncode} while "
                    f"waiting for {what}; its log ({child.log_path}) ends with:\n"
                    f"{child.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise ServeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def sample_requests(registry: Registry, base_url: str) -> list[str]:
    """curl lines for one model (the one with the shortest example row, so the
    line stays readable): v1 and its typed endpoint; without manifests, status."""
    candidates: list[tuple[int, str, str]] = []
    for name in registry.models():
        try:
            version = registry.resolve(name)
            manifest = registry.manifest(name, version)
        except RegistryError:
            continue
        if manifest.examples:
            body = json.dumps({"instances": manifest.examples[:1]})
            candidates.append((len(body), name, body))
    if candidates:
        _, name, body = min(candidates)
        return [
            f"curl -s -X POST {base_url}/v1/models/{name}:predict "
            f"-d {shlex.quote(body)}",
            f"curl -s -X POST {base_url}/models/{name}/predict "
            f"-H 'content-type: application/json' -d {shlex.quote(body)}",
        ]
    for name in registry.models():
        return [
            f"curl -s {base_url}/v1/models/{name}",
            f"curl -s {base_url}/v1/models/{name}/metadata",
        ]
    return []


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Turn SIGTERM/SIGINT into a flag the supervisor loop checks."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {
        signum: signal.signal(signum, handler)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def serve(options: ServeOptions, console: Console | None = None) -> int:
    """Run both processes until a signal; return the exit code.

    Raises:
        ServeError: a process failed to start or become ready.
    """
    console = console if console is not None else Console(stderr=True)
    registry = Registry(options.registry)
    if not options.registry.is_dir():
        raise ServeError(f"registry folder {options.registry} does not exist")
    registry.write_configs()
    models = registry.models()
    log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="servekit-serve-"))
    ready_file = log_dir / "gateway-ready.json"
    ready_file.unlink(missing_ok=True)
    children: list[Child] = []
    with _stop_signals() as received:
        try:
            deadline = time.monotonic() + options.ready_timeout
            with console.status("starting the model server...") as status:
                server = _start(
                    "model server",
                    model_server_argv(options),
                    log_dir / "modelserver.log",
                )
                children.append(server)
                gateway = _start(
                    "gateway",
                    gateway_argv(options, ready_file),
                    log_dir / "gateway.log",
                )
                children.append(gateway)
                status.update("waiting for the gateway to listen...")
                _wait_for("the gateway", ready_file.exists, children, deadline)
                base_url = f"http://{_connect_host(options.host)}:{options.port}"
                for index, model in enumerate(models, start=1):
                    status.update(f"loading models ({index}/{len(models)}): {model}...")
                    _wait_for(
                        f"model {model!r} to be AVAILABLE",
                        _availability_probe(base_url, model),
                        children,
                        deadline,
                    )
                    if received:
                        break
                if not received:
                    # The one meaning of ready: the gateway's backends have
                    # every configured model loaded (also ones not listed above).
                    status.update("waiting for the gateway's /readyz...")
                    _wait_for(
                        "the gateway's /readyz",
                        lambda: _get_json(f"{base_url}/readyz")[0] == 200,
                        children,
                        deadline,
                    )
            if not received:
                _announce(console, options, registry, base_url, models, log_dir)
            while not received:
                for child in children:
                    if not child.alive():
                        raise ServeError(
                            f"{child.name} exited with status {child.popen.returncode}; "
                            f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                        )
                time.sleep(0.2)
            console.print("stopping: gateway first, then the model server...")
        finally:
            # The front door drains first, so no request reaches a stopped backend.
            for child in reversed(children):
                child.stop()
    console.print("stopped")
    return 0


def _announce(
    console: Console,
    options: ServeOptions,
    registry: Registry,
    base_url: str,
    models: list[str],
    log_dir: Path,
) -> None:
    grpc_host = _connect_host(options.host)
    console.print(
        f"[bold green]servekit is ready[/], serving {len(models)} model(s): "
        f"{', '.join(models) or 'none yet (publish one; it is picked up live)'}"
    )
    console.print(f"  gateway REST   {base_url}   (v1, /v2, /models/<m>/predict)")
    console.print(f"  OpenAPI docs   {base_url}/docs")
    console.print(f"  gateway gRPC   {grpc_host}:{options.grpc_port}")
    console.print(
        f"  model server   {grpc_host}:{options.model_server_port} (gRPC), "
        f"http://{grpc_host}:{options.model_server_rest_port} (REST)"
    )
    console.print(f"  metrics        {base_url}/metrics")
    console.print(f"  logs           {log_dir}")
    samples = sample_requests(registry, base_url)
    if samples:
        console.print("try:")
        for line in samples:
            # Plain print: rich would wrap and mark up the JSON.
            sys.stdout.write(f"  {line}\n")
        sys.stdout.flush()
    console.print("Ctrl-C stops both processes.")
