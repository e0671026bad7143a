"""A version published before manifests recorded `Feature.nullable` keeps answering
through the typed endpoints as it did when it was published.

Then, every float column of a tabular model took null, sent to the model as NaN:
a pipeline that imputes answered, one that does not answered the backend's 400.
A version published now records which columns its model imputes and refuses
null elsewhere with 422. The gateway says which versions keep the old schema,
once each, in its JSON log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayProcess, gateway_over_registry
from tests.support.models import (
    MANIFEST_FIELDS_ADDED_SINCE_NULLABLE,
    linear_target,
    publish_linear_pipeline,
    publish_linear_pipeline_before_nullable,
)

pytestmark = pytest.mark.integration

NULL_ROW = {"instances": [{"a": None, "b": 1.0}]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("before-nullable") / "models"
    publish_linear_pipeline_before_nullable(root, "old-plain", offset=1.0)
    publish_linear_pipeline_before_nullable(
        root, "old-imputed", offset=2.0, impute=True
    )
    publish_linear_pipeline(root, "new-plain", offset=1.0)
    publish_linear_pipeline(root, "new-imputed", offset=2.0, impute=True)
    return root


@pytest.fixture(scope="module")
def gateway(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("before-nullable-servers")
    with gateway_over_registry(registry, folder) as gw:
        yield gw


def test_the_manifests_are_as_each_publisher_wrote_them(registry: Path) -> None:
    def manifest(name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            (registry / name / "1" / "servekit.json").read_text()
        )
        return found

    def features(name: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = manifest(name)["features"]
        return found

    assert all("nullable" not in f for f in features("old-plain"))
    assert not MANIFEST_FIELDS_ADDED_SINCE_NULLABLE & set(manifest("old-plain"))
    assert [f["nullable"] for f in features("new-plain")] == [False, False]
    assert [f["nullable"] for f in features("new-imputed")] == [True, True]


@pytest.mark.parametrize(
    "path", ["/models/{}/predict", "/models/{}/versions/1/predict"]
)
def test_null_answers_as_it_did_for_a_version_published_before(
    gateway: GatewayProcess, path: str
) -> None:
    # The imputing pipeline fills `a` with its median, as the version published
    # now does: the same model, the same answer.
    old = httpx.post(
        gateway.url + path.format("old-imputed"), json=NULL_ROW, timeout=30
    )
    new = httpx.post(
        gateway.url + path.format("new-imputed"), json=NULL_ROW, timeout=30
    )
    assert old.status_code == 200, old.text
    assert new.status_code == 200, new.text
    assert old.json()["predictions"] == new.json()["predictions"]
    assert old.json()["model"] == "old-imputed"

    # Without an imputer the model refuses the NaN, and the backend's 400 is
    # what the client gets, in TF Serving's error body.
    plain = httpx.post(
        gateway.url + path.format("old-plain"), json=NULL_ROW, timeout=30
    )
    assert plain.status_code == 400, plain.text
    body = plain.json()
    assert set(body) == {"error"}
    assert "NaN" in body["error"]


def test_a_version_published_now_refuses_null_where_it_does_not_impute(
    gateway: GatewayProcess,
) -> None:
    answer = httpx.post(
        f"{gateway.url}/models/new-plain/predict", json=NULL_ROW, timeout=30
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "instances", 0, "a"]


def test_values_still_answer_on_the_old_versions(gateway: GatewayProcess) -> None:
    answer = httpx.post(
        f"{gateway.url}/models/old-plain/predict",
        json={"instances": [{"a": 0.5, "b": 2.0}]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == pytest.approx(
        # Least squares on exact data: equal to the formula to rounding.
        [linear_target(0.5, 2.0, 1.0)],
        rel=1e-9,
    )


def test_the_schema_says_why_null_is_taken(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    old = schemas["OldPlainV1ServingDefaultRow"]["properties"]["a"]
    assert {"type": "null"} in old["anyOf"]
    assert "predates" in old["description"] and "400" in old["description"]
    new = schemas["NewPlainV1ServingDefaultRow"]["properties"]["a"]
    assert "anyOf" not in new and new["type"] == "number"


def test_the_gateway_logs_each_old_version_once(gateway: GatewayProcess) -> None:
    lines = [
        json.loads(line)
        for line in gateway.process.log_text().splitlines()
        if line.startswith("{")
    ]
    warned = [line for line in lines if "unrecorded_columns" in line]
    assert sorted((line["servable"], line["servable_version"]) for line in warned) == [
        ("old-imputed", 1),
        ("old-plain", 1),
    ]
    assert all(line["unrecorded_columns"] == ["a", "b"] for line in warned)
    assert all("servekit models publish" in line["message"] for line in warned)
    assert all(line["level"] == "WARNING" for line in warned)
