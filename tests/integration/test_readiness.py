"""Ready means every configured model is loaded, on every endpoint that says so.

A registry of twelve models whose loads are slowed by their warmup (each replays
its examples through a step that sleeps), served by the model server with the
gateway in front, on a machine kept busy by two spinning processes. From the
moment the processes start, a client polls the model server's
``/v2/health/ready``, its gRPC health and the gateway's ``/readyz``; once one of
them has said ready, every configured model is asked for through it in every
round that follows, and none may answer 404 ("Servable not found").
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import MODEL_SERVER, health_status
from tests.support.processes import free_port, running_process

pytestmark = pytest.mark.integration

MODELS = [f"model_{index:02d}" for index in range(12)]
WARMUP_STEP_SECONDS = 0.1
"""Each warmup request sleeps this long: with two examples a load takes at least
0.2 s, so twelve loads one at a time leave a window of seconds before ready."""
ROUNDS_AFTER_READY = 3
TIMEOUT_SECONDS = 180.0


@contextlib.contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """Spinning processes, so the servers start on a loaded machine."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _answer(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0


def test_no_404_for_a_configured_model_once_ready(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    for index, name in enumerate(MODELS):
        publish_linear_pipeline(
            registry, name, offset=float(index), sleep_seconds=WARMUP_STEP_SECONDS
        )
    grpc_port, rest_port = free_port(), free_port()
    model_server_argv = [
        MODEL_SERVER,
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--host=127.0.0.1",
        f"--model_config_file={registry / 'servekit.config'}",
        "--num_load_threads=1",
    ]
    seen: dict[str, list[str]] = {"model server": [], "grpc": [], "gateway": []}
    not_found: list[str] = []
    with (
        busy_cpus(2),
        running_process(model_server_argv, log_path=tmp_path / "modelserver.log"),
        running_gateway(
            tmp_path / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": f"127.0.0.1:{grpc_port}",
                "GATEWAY_RELOAD_INTERVAL_SECONDS": "0.3",
            },
        ) as gateway,
        httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=10) as server,
        httpx.Client(base_url=gateway.url, timeout=10) as front,
    ):
        ready = {"model server": False, "grpc": False, "gateway": False}
        rounds_after = 0
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while rounds_after < ROUNDS_AFTER_READY:
            assert time.monotonic() < deadline, f"never ready: {seen}"
            answers = {
                "model server": str(_answer(server, "/v2/health/ready")),
                "grpc": str(health_status(f"127.0.0.1:{grpc_port}")),
                "gateway": str(_answer(front, "/readyz")),
            }
            for name, answer in answers.items():
                if not seen[name] or seen[name][-1] != answer:
                    seen[name].append(answer)
                ready[name] = ready[name] or answer in ("200", "SERVING")
            for model in MODELS:
                body = {"instances": [{"a": 1.0, "b": 1.0}]}
                if ready["model server"] or ready["grpc"]:
                    status = server.get(f"/v1/models/{model}")
                    states = (
                        [e["state"] for e in status.json()["model_version_status"]]
                        if status.status_code == 200
                        else []
                    )
                    if states != ["AVAILABLE"]:
                        not_found.append(f"model server status {model}: {status.text}")
                    answer = server.post(f"/v1/models/{model}:predict", json=body)
                    if answer.status_code == 404:
                        not_found.append(f"model server predict {model}: {answer.text}")
                if ready["gateway"]:
                    answer = front.post(f"/v1/models/{model}:predict", json=body)
                    if answer.status_code == 404:
                        not_found.append(f"gateway predict {model}: {answer.text}")
            if all(ready.values()):
                rounds_after += 1
            time.sleep(0.05)
    assert not_found == []
    # Polled from the first moment: each endpoint said "not ready" before "ready"
    # (0: no answer yet, 400/503/NOT_SERVING: loading), and never went back.
    for name, answers in seen.items():
        assert answers[-1] in ("200", "SERVING"), (name, answers)
        assert len(answers) >= 2, (name, answers)
        assert answers.index(answers[-1]) == len(answers) - 1, (name, answers)
