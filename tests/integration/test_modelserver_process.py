"""The model server as a process: JSON log lines with request ids, the command
line, HandleReloadConfigRequest, and SIGTERM draining in-flight requests.

The drain test stops the module's server, so it runs last.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import MODEL_SERVER, ModelServer, model_server
from tests.support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_SECONDS = 1.5


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("process") / "registry"
    publish_linear_pipeline(root, "slow", offset=3.0, sleep_seconds=SLOW_SECONDS)
    publish_linear_pipeline(root, "extra", offset=4.0)
    return root


@pytest.fixture(scope="module")
def server(registry: Path) -> Iterator[ModelServer]:
    config = registry.parent / "models.config"
    config.write_text(
        "model_config_list { config { "
        f'name: "slow" base_path: {json.dumps(str(registry / "slow"))} '
        'model_platform: "sklearn" } }\n'
    )
    with model_server(
        [f"--model_config_file={config}"], log_path=registry.parent / "server.log"
    ) as running:
        yield running


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log's JSON lines (TensorFlow's own C++ logging is not JSON)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_logs_are_json_lines_with_request_ids(server: ModelServer) -> None:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        answer = client.get("/v1/models/missing", headers={"x-request-id": "log-1"})
        assert answer.status_code == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "missing"
        with pytest.raises(grpc.RpcError):
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=30, metadata=(("x-request-id", "log-2"),)
            )

    def logged() -> bool:
        ids = {line.get("request_id") for line in json_lines(server.process.log_text())}
        return {"log-1", "log-2"} <= ids

    wait_until(logged, timeout=10, what="the request log lines")
    lines = json_lines(server.process.log_text())
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    by_id = {line.get("request_id"): line for line in lines}
    assert by_id["log-1"]["protocol"] == "rest"
    assert by_id["log-1"]["model"] == "missing"
    assert by_id["log-2"]["protocol"] == "grpc"


def test_handle_reload_config_request_replaces_the_model_list(
    server: ModelServer, registry: Path
) -> None:
    config = model_server_config_pb2.ModelServerConfig()
    for name in ("slow", "extra"):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(registry / name)
        entry.model_platform = "sklearn"
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest(config=config)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        response = stub.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        bad = model_management_pb2.ReloadConfigRequest()
        with pytest.raises(grpc.RpcError) as caught:
            stub.HandleReloadConfigRequest(bad, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        answer = client.post(
            "/v1/models/extra:predict", json={"instances": [{"a": 1.0, "b": 1.0}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == pytest.approx(
            [linear_target(1.0, 1.0, 4.0)]
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # The other flag errors are covered in-process by the flag unit tests.
        (["--no_such_flag=1"], "unknown argument: --no_such_flag=1"),
        (["--port=8500"], "model_base_path"),
    ],
)
def test_bad_command_lines_exit_with_an_error(
    arguments: list[str], message: str
) -> None:
    finished = subprocess.run(
        [str(MODEL_SERVER), *arguments], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 255
    assert message in finished.stdout + finished.stderr


def test_sigterm_drains_in_flight_requests_and_exits_0(server: ModelServer) -> None:
    results: list[int | str] = []
    # Connections are opened first so that the requests are on the wire, not
    # still connecting, when the signal arrives.
    clients = [httpx.Client(base_url=server.rest_url, timeout=60) for _ in range(3)]
    for client in clients:
        assert client.get("/v1/models/slow").status_code == 200

    def call(client: httpx.Client) -> None:
        try:
            answer = client.post(
                "/v1/models/slow:predict", json={"instances": [{"a": 1.0, "b": 0.0}]}
            )
            results.append(answer.status_code)
        except httpx.HTTPError as error:
            results.append(repr(error))
        finally:
            client.close()

    callers = [threading.Thread(target=call, args=(client,)) for client in clients]
    for caller in callers:
        caller.start()
    # The requests are in the model's sleep when the signal arrives.
    time.sleep(SLOW_SECONDS / 3)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    for caller in callers:
        caller.join(timeout=60)
    assert results == [200, 200, 200]
    assert time.monotonic() - started < 30
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.rest_url + "/v1/models/slow", timeout=5)
