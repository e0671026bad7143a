"""Ready means every configured model is loaded, on every endpoint that says so.

A registry of twelve models whose loads are slowed by their warmup (each replays
its examples through a step that sleeps), served by the model server with the
gateway in front, on a machine kept busy by two spinning processes. From before
the model server starts, a client polls its ``/v2/health/ready``, its gRPC
health and the gateway's ``/readyz``; once one of them has said ready, every
configured model is asked for through it in every round that follows, and none
may answer 404 ("Servable not found"). Nothing here assumes how fast the machine
is: the order of events is fixed by the test, and only the overall limits are
times, set for a machine loaded many times over.

A version that fails to load does not hold readiness back: a load refused for a
digest mismatch ends at once, one that raises ends after its retries; either is
reported in model status (END with its error) while the other models serve.

``servekit serve`` says it is ready only then: the first requests after its
announcement find every model loaded.

``servekit loadtest`` waits for that readiness before its first request: started
before its target exists, on a model whose load takes seconds, it sends nothing
until the server says ready, and no request of its run fails.
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelregistry import Registry

from tests.support.gateway import running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import MODEL_SERVER, health_status, model_server
from tests.support.processes import REPO_ROOT, VENV_BIN, free_port, running_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODELS = [f"model_{index:02d}" for index in range(12)]
WARMUP_STEP_SECONDS = 0.1
"""Each warmup request sleeps this long: with two examples a load takes at least
0.2 s, so twelve loads one at a time leave a window of seconds before ready."""
ROUNDS_AFTER_READY = 3
TIMEOUT_SECONDS = 420.0
"""The longest a test waits for readiness: twelve loads take about 10 s on an
idle machine and about a minute at a load average of 17 on two cores."""


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


GATEWAY_NO_ANSWER = "503: a backend did not answer in time"
NO_ANSWERS = {"0", "None", GATEWAY_NO_ANSWER}
"""What a poll records when no readiness answer came in time: nothing listening
yet (0, None), a poll or a backend check timed out on a loaded machine. Such an
answer says nothing about the models and may come at any point."""
READY = {"200", "SERVING"}


def _gateway_readiness(client: httpx.Client) -> str:
    """The gateway's /readyz as a poll records it."""
    try:
        response = client.get("/readyz")
    except httpx.TransportError:
        return "0"
    if response.status_code == 503:
        checks = str(response.json()["checks"]).lower()
        if "deadline exceeded" in checks or "unreachable" in checks:
            return GATEWAY_NO_ANSWER
    return str(response.status_code)


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
        contextlib.ExitStack() as model_server_running,
        running_gateway(
            tmp_path / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": f"127.0.0.1:{grpc_port}",
                "GATEWAY_RELOAD_INTERVAL_SECONDS": "0.3",
            },
        ) as gateway,
        httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as server,
        httpx.Client(base_url=gateway.url, timeout=30) as front,
    ):
        ready = {"model server": False, "grpc": False, "gateway": False}
        rounds_after = 0
        started = False
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while rounds_after < ROUNDS_AFTER_READY:
            assert time.monotonic() < deadline, f"never ready: {seen}"
            answers = {
                "model server": str(_answer(server, "/v2/health/ready")),
                "grpc": str(health_status(f"127.0.0.1:{grpc_port}")),
                "gateway": _gateway_readiness(front),
            }
            for name, answer in answers.items():
                if not seen[name] or seen[name][-1] != answer:
                    seen[name].append(answer)
                ready[name] = ready[name] or answer in READY
            if not started:
                # The first round ran before the model server existed: each
                # endpoint's first answer is "not ready" however fast it loads.
                model_server_running.enter_context(
                    running_process(
                        model_server_argv, log_path=tmp_path / "modelserver.log"
                    )
                )
                started = True
            for model in MODELS:
                with contextlib.suppress(httpx.TimeoutException):
                    _ask(model, server, front, ready, not_found)
            if all(ready.values()):
                rounds_after += 1
            time.sleep(0.05)
    assert not_found == []
    # Polled from the first moment: each endpoint answered something else
    # before "ready" (nothing listening, or 400/503/NOT_SERVING: loading), and
    # after it never "not ready" again (a timed-out poll says neither).
    for name, answers in seen.items():
        first_ready = next(i for i, answer in enumerate(answers) if answer in READY)
        assert first_ready >= 1, (name, answers)
        after = set(answers[first_ready:])
        assert after <= READY | NO_ANSWERS, (name, answers)


def _ask(
    model: str,
    server: httpx.Client,
    front: httpx.Client,
    ready: dict[str, bool],
    not_found: list[str],
) -> None:
    """Once an endpoint has said ready, ask for `model` through it: every
    configured model must be there (status AVAILABLE, no 404 on predict)."""
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


def test_a_version_that_fails_to_load_is_reported_and_does_not_block_readiness(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "models"
    publish_linear_pipeline(registry, "sound")
    publish_linear_pipeline(registry, "tampered")
    # Its pickle no longer matches the manifest's sha256: refused, not retried.
    with (registry / "tampered" / "1" / "model.joblib").open("ab") as artifact:
        artifact.write(b"tampered")
    # Listed with its digest, but not a pickle: the load raises and is retried.
    with Registry(registry).publish("unreadable", framework="sklearn") as draft:
        (draft.path / "model.joblib").write_bytes(b"not a pickle")
        draft.manifest.update(artifact="model.joblib", task="regression")
    body = {"instances": [{"a": 1.0, "b": 1.0}]}
    with (
        model_server(
            [
                f"--model_config_file={registry / 'servekit.config'}",
                "--max_num_load_retries=2",
                "--load_retry_interval_micros=200000",
            ],
            log_path=tmp_path / "modelserver.log",
            ready_timeout=TIMEOUT_SECONDS,
        ) as server,
        running_gateway(
            tmp_path / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": server.grpc_target,
            },
        ) as gateway,
        httpx.Client(base_url=server.rest_url, timeout=30) as rest,
        httpx.Client(base_url=gateway.url, timeout=30) as front,
    ):
        # model_server returned: gRPC health said SERVING.
        assert server.health_seen[-1] == "SERVING"
        ready = rest.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        log = server.process.log_text()
        for name, attempts in (("tampered", 1), ("unreadable", 3)):
            status = rest.get(f"/v1/models/{name}").json()["model_version_status"]
            assert [entry["state"] for entry in status] == ["END"], status
            assert status[0]["status"]["error_code"] != "OK", status
            assert status[0]["status"]["error_message"], status
            failures = log.count(f"Loading {name} version 1 failed")
            assert failures == attempts, log
        assert rest.post("/v1/models/sound:predict", json=body).status_code == 200
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while _gateway_readiness(front) != "200":
            assert time.monotonic() < deadline, front.get("/readyz").text
            time.sleep(0.1)
        answer = front.post("/v1/models/sound:predict", json=body)
        assert answer.status_code == 200, answer.text


SERVE_MODELS = [f"serve_{index:02d}" for index in range(6)]
SERVE_STEP_SECONDS = 0.3
"""Each model's warmup sleeps at least 2 x 0.3 s: six loads leave seconds in
which a premature "ready" would send the first request into a 404."""


def test_serve_says_ready_only_once_every_model_answers(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    for index, name in enumerate(SERVE_MODELS):
        publish_linear_pipeline(
            registry, name, offset=float(index), sleep_seconds=SERVE_STEP_SECONDS
        )
    ports = [free_port() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [free_port() for _ in range(4)]
    http_port, grpc_port, ms_port, ms_rest_port = ports
    output = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    argv: list[str | os.PathLike[str]] = [
        VENV_BIN / "servekit", "serve",
        "--registry", registry,
        "--port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--model-server-port", str(ms_port),
        "--model-server-rest-port", str(ms_rest_port),
        "--log-dir", tmp_path / "logs",
    ]  # fmt: skip
    body = {"instances": [{"a": 1.0, "b": 1.0}]}
    with (
        busy_cpus(2),
        running_process(
            argv,
            log_path=output,
            env=env,
            ready=lambda: "servekit is ready" in output.read_text(),
            ready_timeout=TIMEOUT_SECONDS,
            stop_timeout=40,
        ),
        httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as front,
    ):
        # The first requests after the announcement: none may find a model
        # still loading, through either endpoint that says ready.
        answers = {
            model: front.post(f"/v1/models/{model}:predict", json=body).status_code
            for model in SERVE_MODELS
        }
        assert answers == dict.fromkeys(SERVE_MODELS, 200), output.read_text()
        assert front.get("/readyz").status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{ms_rest_port}/v2/health/ready")
        assert ready.status_code == 200, ready.text


LOADTEST_MODEL = "slow_linear"
LOADTEST_STEP_SECONDS = 0.2
LOADTEST_WARMUP_ITERATIONS = 10
"""Warmup replays the manifest's examples (one batch, then each of two rows) this
many times through a step that sleeps: the load sleeps 30 x 0.2 = 6 s at least,
however fast the machine, while each predict call sleeps only 0.2 s."""


def test_loadtest_sends_its_first_request_only_once_ready(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    publish_linear_pipeline(
        registry, LOADTEST_MODEL, sleep_seconds=LOADTEST_STEP_SECONDS
    )
    grpc_port, rest_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{rest_port}"
    out = tmp_path / "run"
    # The tests choose the registry explicitly; a developer's own must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    loadtest_log = tmp_path / "loadtest.log"
    # Started before the server exists, so it cannot be ready when the load test
    # begins whatever the machine's load: the wait is certain, not a race.
    with loadtest_log.open("wb") as log:
        loadtest = subprocess.Popen(
            [
                VENV_BIN / "servekit", "loadtest",
                "--target", base_url,
                "--model", LOADTEST_MODEL,
                "--registry", registry,
                "--users", "2",
                "--duration", "3s",
                "--ready-timeout", "120",
                "--out", out,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
        )  # fmt: skip
    # (time the poll was sent, what it answered); 0: no answer yet.
    polls: list[tuple[float, int]] = []
    try:
        with (
            running_process(
                [
                    MODEL_SERVER,
                    f"--port={grpc_port}",
                    f"--rest_api_port={rest_port}",
                    "--host=127.0.0.1",
                    f"--model_config_file={registry / 'servekit.config'}",
                    f"--num_request_iterations_for_warmup={LOADTEST_WARMUP_ITERATIONS}",
                ],
                log_path=tmp_path / "modelserver.log",
            ),
            httpx.Client(base_url=base_url, timeout=10) as client,
        ):
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while loadtest.poll() is None:
                assert time.monotonic() < deadline, loadtest_log.read_text()
                sent = time.time()
                polls.append((sent, _answer(client, "/v2/health/ready")))
                time.sleep(0.05)
    finally:
        if loadtest.poll() is None:
            loadtest.kill()
        loadtest.wait()
    output = loadtest_log.read_text()
    assert loadtest.returncode == 0, output
    with (out / "requests.csv").open() as handle:
        requests = list(csv.DictReader(handle))
    assert requests, output
    # No 404 (model still loading) or 503 (server not ready) in the run.
    assert [r["error"] for r in requests if r["success"] != "1"] == []
    answers = [status for _, status in polls]
    # The server was up and still loading (400 from OIP's readiness path, as
    # Triton answers it)...
    assert any(status not in (0, 200) for status in answers), answers
    assert answers[-1] == 200, answers
    # ...and readiness only goes from "not ready" to "ready" (a loaded model
    # stays loaded), so every request that started after the last "not ready"
    # poll was sent started after the server said ready, and none before it.
    last_not_ready = max(sent for sent, status in polls if status != 200)
    first_request = min(float(r["start"]) for r in requests)
    assert first_request > last_not_ready, (first_request, last_not_ready, output)
