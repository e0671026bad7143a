"""Readiness waits for the JSON workers, on both services.

Each server launches its JSON workers as it starts; until they have answered
their first task a large body would wait for the rest of their start (seconds
on a loaded machine). The workers here are slowed down from outside: a
``sitecustomize`` module on ``PYTHONPATH`` sleeps in every ``spawn`` worker
(their command line ends ``--multiprocessing-fork``) and nowhere else, so the
window before they answer lasts :data:`WORKER_DELAY` seconds however loaded
the machine is. Each test polls the readiness signal through that window and
checks it was not reported before the server logged its workers ready; the
servers' own code has no knob for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.security.stack import assert_no_traceback, serving_stack
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import MODEL_SERVER, health_status
from tests.support.processes import (
    VENV_BIN,
    ServerProcess,
    free_port,
    running_process,
)

pytestmark = pytest.mark.integration

WORKER_DELAY = 4.0
"""Seconds each JSON worker sleeps before it starts importing: longer than a
model server loading ``linear`` or a gateway checking its backend takes on an
idle machine, so that without the wait readiness would come inside the window."""
START_TIMEOUT = 1.0
"""The start timeout of the tests where the workers must miss it."""
WORKERS_READY = "JSON workers ready"
"""The line each server logs once its workers have answered."""

SLOW_WORKERS = f"""\
import sys
import time

if "--multiprocessing-fork" in sys.argv:
    time.sleep({WORKER_DELAY})
"""


@pytest.fixture(scope="module")
def slow_workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that makes every spawned worker sleep first."""
    directory = tmp_path_factory.mktemp("slow-workers")
    (directory / "sitecustomize.py").write_text(SLOW_WORKERS)
    return {"PYTHONPATH": str(directory)}


def _poll_until_ready(
    process: ServerProcess, is_ready: Callable[[], bool], timeout: float
) -> tuple[int, str]:
    """Poll ``is_ready`` every 50 ms until true: how many polls said not ready,
    and the server's log at the first that said ready."""
    deadline = time.monotonic() + timeout
    not_ready = 0
    while not is_ready():
        not_ready += 1
        assert process.popen.poll() is None, process.log_tail(40)
        assert time.monotonic() < deadline, process.log_tail(40)
        time.sleep(0.05)
    return not_ready, process.log_text()


def _model_server_argv(registry: Path, *flags: str) -> list[str]:
    return [
        str(MODEL_SERVER),
        f"--port={free_port()}",
        f"--rest_api_port={free_port()}",
        "--host=127.0.0.1",
        "--model_name=linear",
        f"--model_base_path={registry / 'linear'}",
        *flags,
    ]


def _flag_value(argv: list[str], flag: str) -> str:
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(flag + "="))


def test_the_model_server_loads_its_models_once_its_workers_answer(
    tmp_path: Path, slow_workers: dict[str, str]
) -> None:
    registry = tmp_path / "models"
    publish_linear_pipeline(registry, "linear")
    argv = _model_server_argv(registry)
    status_url = (
        f"http://127.0.0.1:{_flag_value(argv, '--rest_api_port')}/v1/models/linear"
    )
    target = f"127.0.0.1:{_flag_value(argv, '--port')}"

    def available() -> bool:
        try:
            answer = httpx.get(status_url, timeout=2)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and "AVAILABLE" in answer.text

    with running_process(
        argv, log_path=tmp_path / "model-server.log", env=slow_workers
    ) as process:
        not_ready, log = _poll_until_ready(process, available, 60)
        assert WORKERS_READY in log, process.log_tail(40)
        assert health_status(target) in (None, "NOT_SERVING", "SERVING")
        assert not_ready > 0
        # Health follows the models, which follow the workers.
        deadline = time.monotonic() + 10
        while health_status(target) != "SERVING":
            assert time.monotonic() < deadline, process.log_tail(40)
            time.sleep(0.1)
        assert_no_traceback(process)


def test_the_gateway_is_not_ready_before_its_workers_answer(
    tmp_path: Path, slow_workers: dict[str, str]
) -> None:
    port = free_port()
    answers: list[str] = []
    polling = threading.Event()

    def poll_readyz() -> None:
        # From before the gateway listens until the stack is up.
        while not polling.is_set():
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except httpx.TransportError:
                pass
            else:
                answers.append(
                    "ready"
                    if answer.status_code == 200
                    else str(answer.json()["checks"].get("json workers"))
                )
            time.sleep(0.05)

    poller = threading.Thread(target=poll_readyz, daemon=True)
    poller.start()
    try:
        # The stack returns once the gateway's ready file is written.
        with serving_stack(
            tmp_path, gateway_env=slow_workers, gateway_flags=[f"--port={port}"]
        ) as stack:
            gateway = stack.gateway
            assert WORKERS_READY in gateway.process.log_text()
            # The ready file's promise: health already says SERVING, as
            # /readyz and the protocol's readiness do.
            assert health_status(gateway.grpc_target) == "SERVING"
            assert httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200
            answer = httpx.get(f"{gateway.url}/v2/health/ready", timeout=5)
            assert answer.status_code == 200, answer.text
            polling.set()
            poller.join(10)
            assert "starting" in answers, answers
            # Never ready, then starting again.
            first_ready = answers.index("ready") if "ready" in answers else len(answers)
            assert "starting" not in answers[first_ready:], answers
            assert_no_traceback(gateway.process)
    finally:
        polling.set()


def _exit_status(process: ServerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while process.popen.poll() is None:
        assert time.monotonic() < deadline, process.log_tail(40)
        time.sleep(0.1)
    return process.popen.returncode


def test_workers_that_do_not_start_in_time_fail_the_start(
    tmp_path: Path, slow_workers: dict[str, str]
) -> None:
    registry = tmp_path / "models"
    publish_linear_pipeline(registry, "linear")
    argv = _model_server_argv(
        registry, f"--rest_api_json_workers_start_timeout_seconds={START_TIMEOUT}"
    )
    expected = f"the JSON workers did not start within {START_TIMEOUT:g} s"
    with running_process(
        argv, log_path=tmp_path / "model-server.log", env=slow_workers
    ) as process:
        # TF Serving's exit status for a server that cannot start.
        assert _exit_status(process, 30) == 255
        assert expected in process.log_text(), process.log_tail(40)
        assert "Loading 1 model(s)" not in process.log_text()
        assert_no_traceback(process)
    gateway_argv = [
        str(VENV_BIN / "python"),
        "-m",
        "gateway",
        "--host=127.0.0.1",
        "--port=0",
        "--grpc-port=0",
        "--default-backend=127.0.0.1:1",
        f"--json-workers-start-timeout-seconds={START_TIMEOUT}",
    ]
    with running_process(
        gateway_argv,
        log_path=tmp_path / "gateway.log",
        env={"GATEWAY_REGISTRY": str(registry), **slow_workers},
    ) as process:
        assert _exit_status(process, 30) == 1
        assert expected in process.log_text(), process.log_tail(40)
        assert_no_traceback(process)
