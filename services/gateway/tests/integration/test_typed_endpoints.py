"""Typed per-model endpoints: schemas from the manifests, 422 before any backend call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from modelregistry import Registry

from tests.support.gateway import GatewayProcess
from tests.support.models import linear_target
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def _backend_predicts(gateway: GatewayProcess) -> float:
    return gateway.metric("gateway_backend_duration_seconds_count", method="Predict")


def test_openapi_documents_each_model_and_version(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/models/linear/predict",
        "/models/linear/versions/1/predict",
        "/models/linear/versions/2/predict",
    ):
        assert "post" in paths[path]
    schemas = document["components"]["schemas"]
    row = schemas["LinearV1ServingDefaultRow"]
    assert set(row["required"]) == {"a", "b"}
    assert row["additionalProperties"] is False
    assert httpx.get(f"{gateway.url}/docs").status_code == 200


def test_typed_predict_uses_the_routed_version(client: httpx.Client) -> None:
    response = client.post(
        "/models/linear/versions/2/predict",
        json={"instances": [{"a": 1.0, "b": 2.0}, {"a": -1, "b": 0.5}]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "linear"
    assert body["version"] == 2
    np.testing.assert_allclose(
        body["predictions"], [linear_target(1, 2, 5), linear_target(-1, 0.5, 5)]
    )
    routed = client.post(
        "/models/linear/predict",
        json={"instances": [{"a": 1.0, "b": 2.0}]},
        headers={"x-user-id": "typed-user"},
    )
    assert routed.status_code == 200, routed.text
    version = routed.json()["version"]
    offset = {1: 1.0, 2: 5.0}[version]
    np.testing.assert_allclose(
        routed.json()["predictions"], [linear_target(1, 2, offset)]
    )


@pytest.mark.parametrize(
    ("rows", "field", "error_type"),
    [
        ([{"a": "one", "b": 2.0}], ["body", "instances", 0, "a"], "float_type"),
        ([{"a": 1.0}], ["body", "instances", 0, "b"], "missing"),
        (
            [{"a": 1.0, "b": 2.0, "c": 3.0}],
            ["body", "instances", 0, "c"],
            "extra_forbidden",
        ),
        ([], ["body", "instances"], "too_short"),
        (
            [{"a": 1.0, "b": 2.0}, {"a": True, "b": 1.0}],
            ["body", "instances", 1, "a"],
            "float_type",
        ),
    ],
)
def test_invalid_rows_get_field_level_422_without_backend_call(
    gateway: GatewayProcess,
    client: httpx.Client,
    rows: list[dict[str, Any]],
    field: list[Any],
    error_type: str,
) -> None:
    before = _backend_predicts(gateway)
    response = client.post("/models/linear/predict", json={"instances": rows})
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(
        error["loc"] == field and error["type"] == error_type
        for error in body["detail"]
    ), body
    assert body["error"].startswith("invalid input at")
    assert _backend_predicts(gateway) == before


def test_new_version_with_other_features_regenerates_the_schema(
    gateway: GatewayProcess, client: httpx.Client, main_registry: Path
) -> None:
    registry = Registry(main_registry)
    with registry.publish("evolving", framework="sklearn") as draft:
        _write_mean_model(draft.path, ["height", "width"])
        draft.manifest.update(_mean_manifest(["height", "width"]))
    wait_until(
        lambda: (
            "/models/evolving/predict"
            in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
        ),
        timeout=15,
        what="the typed endpoint of a newly published model",
    )
    with registry.publish("evolving", framework="sklearn") as draft:
        _write_mean_model(draft.path, ["height", "depth"])
        draft.manifest.update(_mean_manifest(["height", "depth"]))

    def schema_has_depth() -> bool:
        schemas = httpx.get(f"{gateway.url}/openapi.json").json()["components"][
            "schemas"
        ]
        row = schemas.get("EvolvingV2ServingDefaultRow", {})
        return "depth" in row.get("properties", {})

    wait_until(schema_has_depth, timeout=15, what="the v2 schema")
    old_fields = client.post(
        "/models/evolving/versions/2/predict",
        json={"instances": [{"height": 1.0, "width": 2.0}]},
    )
    assert old_fields.status_code == 422
    assert (
        client.post(
            "/models/evolving/versions/1/predict",
            json={"instances": [{"height": 1.0, "depth": 2.0}]},
        ).status_code
        == 422
    )


def _write_mean_model(path: Path, columns: list[str]) -> None:
    import joblib
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    frame = pd.DataFrame({column: [1.0, 2.0] for column in columns})
    joblib.dump(DummyRegressor().fit(frame, [0.0, 1.0]), path / "model.joblib")


def _mean_manifest(columns: list[str]) -> dict[str, Any]:
    return {
        "artifact": "model.joblib",
        "task": "regression",
        "features": [{"name": column, "dtype": "float64"} for column in columns],
        "signatures": {
            "serving_default": {
                "method": "predict",
                "inputs": {c: {"dtype": "float64", "shape": [-1]} for c in columns},
                "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
            }
        },
        "examples": [dict.fromkeys(columns, 1.0)],
    }
