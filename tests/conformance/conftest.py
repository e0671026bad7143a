"""One ``servekit-model-server`` for the whole conformance suite.

It serves TF Serving's own test SavedModels (copied from
``../shared/tfserving-testdata``; tests needing them skip when it is absent),
plus models built here: ``half_plus`` (a TF2 SavedModel with a string
signature) and ``linear`` (a scikit-learn pipeline published with
``modelregistry``). Prometheus is enabled at TF Serving's default path.

The gRPC tests share ``channel`` and the official ``prediction`` and ``models``
stubs (one per module), ``rpc_error`` and ``TIMEOUT``; the REST tests ``error_of``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import (
    TFSERVING_TESTDATA,
    copy_tfserving_testdata,
    publish_linear_pipeline,
    save_tf_half_plus,
)
from tests.support.modelserver import (
    ModelServer,
    model_server,
    write_monitoring_config,
)

if TYPE_CHECKING:
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

TESTDATA_MODELS = (
    "half_plus_two",
    "half_plus_three",
    "half_plus_two_tf2",
    "saved_model_counter",
    "saved_model_half_plus_two_2_versions",
)
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


def _config_entry(name: str, base_path: Path, platform: str, extra: str = "") -> str:
    return (
        f"  config {{\n    name: {json.dumps(name)}\n"
        f"    base_path: {json.dumps(str(base_path))}\n"
        f"    model_platform: {json.dumps(platform)}\n{extra}  }}\n"
    )


@pytest.fixture(scope="session")
def testdata_available() -> bool:
    return (TFSERVING_TESTDATA / "models").is_dir()


@pytest.fixture(scope="session")
def conformance_server(
    tmp_path_factory: pytest.TempPathFactory, testdata_available: bool
) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("conformance")
    entries = []
    if testdata_available:
        models = copy_tfserving_testdata(root / "tfs", *TESTDATA_MODELS)
        for name in TESTDATA_MODELS:
            extra = ""
            if name == TWO_VERSIONS:
                extra = (
                    "    model_version_policy { all {} }\n"
                    '    version_labels { key: "stable" value: 123 }\n'
                    '    version_labels { key: "canary" value: 124 }\n'
                )
            entries.append(_config_entry(name, models / name, "tensorflow", extra))
    save_tf_half_plus(root / "built" / "half_plus" / "1")
    entries.append(
        _config_entry("half_plus", root / "built" / "half_plus", "tensorflow")
    )
    registry = root / "registry"
    publish_linear_pipeline(registry, "linear", offset=1.0)
    entries.append(_config_entry("linear", registry / "linear", "sklearn"))
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(entries) + "}\n")
    monitoring = write_monitoring_config(root)
    with model_server(
        [f"--model_config_file={config}", f"--monitoring_config_file={monitoring}"],
        log_path=root / "server.log",
    ) as server:
        yield server


@dataclass(frozen=True)
class Target:
    """Where a conformance test sends its calls: the model server itself, or the
    gateway in front of it (which must be the same drop-in for TF Serving)."""

    name: str
    rest_url: str
    grpc_target: str


@pytest.fixture(scope="session")
def conformance_gateway(
    conformance_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("conformance-gateway")
    # An empty registry: every model is routed to the default backend.
    (root / "registry").mkdir()
    with running_gateway(
        root,
        env={
            "GATEWAY_REGISTRY": str(root / "registry"),
            "GATEWAY_DEFAULT_BACKEND": conformance_server.grpc_target,
            "PYTHONPATH": "",
        },
    ) as gateway:
        yield gateway


@pytest.fixture(scope="session", params=["model-server", "gateway"])
def target(request: pytest.FixtureRequest, conformance_server: ModelServer) -> Target:
    if request.param == "gateway":
        gateway: GatewayProcess = request.getfixturevalue("conformance_gateway")
        return Target("gateway", gateway.url, gateway.grpc_target)
    return Target(
        "model-server", conformance_server.rest_url, conformance_server.grpc_target
    )


@pytest.fixture(scope="session")
def rest(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.rest_url, timeout=30) as client:
        yield client


@pytest.fixture
def needs_testdata(testdata_available: bool) -> None:
    if not testdata_available:
        pytest.skip(f"TF Serving test data is absent ({TFSERVING_TESTDATA})")


def expected_metadata(file_name: str) -> dict[str, Any]:
    """An ``expected/*_metadata.json`` answer of TF Serving."""
    path = TFSERVING_TESTDATA / "expected" / file_name
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def without_empty_defaults(signature_map: dict[str, Any]) -> dict[str, Any]:
    """Drop ``"defaults": {}`` (older TF Serving JSON printers omitted it)."""
    return {
        key: {k: v for k, v in signature.items() if not (k == "defaults" and v == {})}
        for key, signature in signature_map.items()
    }


MODEL_SERVER_ONLY: dict[str, str] = {
    "test_prometheus_endpoint[gateway]": "the gateway's metrics are at /metrics",
    "test_calls_are_counted_as_grpc_web[gateway]": "reads the model server's metrics",
    "test_paths_outside_the_api_are_404[gateway]": "the gateway serves /v2 too",
}
"""Features of the model server process rather than of the TF Serving API."""


@pytest.fixture(autouse=True)
def _gateway_expectations(request: pytest.FixtureRequest) -> None:
    name = request.node.name
    for prefix, reason in MODEL_SERVER_ONLY.items():
        if name.startswith(prefix):
            pytest.skip(reason)


def error_of(response: httpx.Response) -> str:
    """The ``error`` text of a TF Serving error body (which must be JSON)."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    message: str = body["error"]
    return message


TIMEOUT = 30.0
"""Seconds each gRPC call of the conformance tests may take."""


@pytest.fixture(scope="module")
def channel(target: Target) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        target.grpc_target,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def prediction(
    channel: grpc.Channel,
) -> prediction_service_pb2_grpc.PredictionServiceStub:
    """The official PredictionService stub (TensorFlow is imported only here)."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    """The official ModelService stub."""
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)


def rpc_error(call: object, *args: object) -> grpc.RpcError:
    """The error `call(*args)` raises (it must raise one)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=TIMEOUT)  # type: ignore[operator]
    return caught.value
