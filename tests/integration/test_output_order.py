"""Two model servers on one registry answer the same request with the same bytes.

Signatures reach the answers through protobuf maps, which iterate in a different
order in every process; so answers list outputs, signatures and tensors in name
order, and a gateway in front (its own process, reading the model server's gRPC
answers) writes the same bytes. The model here is a scikit-learn classifier whose manifest lists its
inputs and outputs out of name order, with two signatures, so neither the
manifest's order nor a map's can pass for name order by chance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

FEATURES = ("zeta", "alpha", "mid", "beta", "omega", "kappa")
ROWS = [
    {name: float(index + position) for position, name in enumerate(FEATURES)}
    for index in range(3)
]


def publish_classifier(root: Path) -> None:
    """A logistic regression over FEATURES; `serving_default` answers
    `probabilities` and `predictions` (listed in that order), `proba` only
    `probabilities`."""
    import joblib
    import numpy as np
    import pandas as pd
    from modelregistry import Registry
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(60, len(FEATURES))), columns=FEATURES)
    labels = np.array(["cat", "dog", "eel"])[np.arange(60) % 3]
    model = LogisticRegression(max_iter=500).fit(frame, labels)
    inputs = {name: {"dtype": "float64", "shape": [-1]} for name in FEATURES}
    probabilities = {"dtype": "float64", "shape": [-1, 3]}
    with Registry(root).publish("animals", framework="sklearn") as draft:
        joblib.dump(model, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="classification",
            classes=["cat", "dog", "eel"],
            features=[{"name": name, "dtype": "float64"} for name in FEATURES],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": inputs,
                    "outputs": {
                        "probabilities": probabilities,
                        "predictions": {"dtype": "string", "shape": [-1]},
                    },
                },
                "proba": {
                    "method": "predict",
                    "inputs": inputs,
                    "outputs": {"probabilities": probabilities},
                },
            },
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("output-order") / "models"
    publish_classifier(root)
    return root


@pytest.fixture(scope="module")
def servers(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ModelServer]]:
    logs = tmp_path_factory.mktemp("output-order-logs")
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                model_server(
                    [
                        "--model_name=animals",
                        f"--model_base_path={registry / 'animals'}",
                    ],
                    log_path=logs / f"model-server-{replica}.log",
                )
            )
            for replica in (1, 2)
        ]


def keys_in_order(document: Any) -> list[list[str]]:
    """The keys of every JSON object in `document`, object by object."""
    found: list[list[str]] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            found.append(list(value))
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(document)
    return found


@pytest.mark.parametrize(
    "body",
    [{"instances": ROWS}, {"inputs": {name: [1.0, 2.0] for name in FEATURES}}],
    ids=["row", "columnar"],
)
def test_both_replicas_write_the_outputs_in_name_order(
    servers: list[ModelServer], body: dict[str, Any]
) -> None:
    answers = [
        httpx.post(
            f"{server.rest_url}/v1/models/animals:predict", json=body, timeout=30
        )
        for server in servers
    ]
    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    assert answers[0].content == answers[1].content
    document = json.loads(answers[0].content)
    if "predictions" in document:
        assert [list(row) for row in document["predictions"]] == [
            ["predictions", "probabilities"]
        ] * len(ROWS)
    else:
        assert list(document["outputs"]) == ["predictions", "probabilities"]


def test_both_replicas_describe_the_model_in_name_order(
    servers: list[ModelServer],
) -> None:
    answers = [
        httpx.get(f"{server.rest_url}/v1/models/animals/metadata", timeout=30)
        for server in servers
    ]
    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    assert answers[0].content == answers[1].content
    signatures = json.loads(answers[0].content)["metadata"]["signature_def"][
        "signature_def"
    ]
    assert list(signatures) == ["proba", "serving_default"]
    default = signatures["serving_default"]
    assert list(default["inputs"]) == sorted(FEATURES)
    assert list(default["outputs"]) == ["predictions", "probabilities"]
    for keys in keys_in_order(signatures):
        if set(keys) <= set(FEATURES) | {"predictions", "probabilities"}:
            assert keys == sorted(keys)


@pytest.fixture(scope="module")
def gateway(
    registry: Path,
    servers: list[ModelServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """A gateway calling the first replica over gRPC (no REST backends), so its
    JSON is written from protobuf answers it parsed itself."""
    env = {
        "GATEWAY_REGISTRY": str(registry),
        "GATEWAY_DEFAULT_BACKEND": servers[0].grpc_target,
    }
    with running_gateway(tmp_path_factory.mktemp("output-order-gw"), env=env) as gw:
        yield gw


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/models/animals:predict", {"instances": ROWS}),
        ("GET", "/v1/models/animals/metadata", None),
    ],
    ids=["predict", "metadata"],
)
def test_a_gateway_writes_the_model_servers_bytes(
    gateway: GatewayProcess,
    servers: list[ModelServer],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    via, direct = (
        httpx.request(method, f"{base}{path}", json=body, timeout=30)
        for base in (gateway.url, servers[1].rest_url)
    )
    assert via.status_code == direct.status_code == 200, via.text
    assert via.content == direct.content
