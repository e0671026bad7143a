"""The gateway's OpenAPI document tells the truth about its typed endpoints.

Schemathesis reads `/openapi.json` from a running gateway in front of a running
model server, generates requests from it (valid and invalid, with a fixed seed
and a bounded number per operation), and runs every one of its checks on the
answers: no 5xx, every status and content type documented, every body matching
its schema, schema-valid rows accepted, schema-violating rows refused, wrong
methods answered 405. The registry has a float64 regression (no missing values),
the same with an imputer (null accepted), a float32 one (values beyond
float32's range refused), and an imputing one published before manifests
recorded `nullable` (null taken in every float column, as then).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayProcess, gateway_over_registry
from tests.support.models import (
    publish_linear_pipeline,
    publish_linear_pipeline_before_nullable,
)
from tests.support.processes import VENV_BIN

pytestmark = pytest.mark.integration

SEED = 20261206
"""Fixed, so a run generates the same requests every time."""
MAX_EXAMPLES = 40
"""Generated requests per operation and phase: enough for the boundaries the
schemas state (ranges, nulls, lengths, extra fields), under a minute on 2 cores."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openapi") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0)
    publish_linear_pipeline(root, "imputed", offset=2.0, impute=True)
    publish_linear_pipeline(root, "narrow", offset=3.0, dtype="float32")
    publish_linear_pipeline_before_nullable(root, "old", offset=4.0, impute=True)
    return root


@pytest.fixture(scope="module")
def gateway(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("openapi-servers")
    with gateway_over_registry(registry, folder) as gw:
        yield gw


def test_schemathesis_finds_nothing(gateway: GatewayProcess, tmp_path: Path) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    assert {
        "/models/linear/predict",
        "/models/imputed/predict",
        "/models/narrow/versions/1/predict",
        "/models/old/predict",
    } <= set(document["paths"])
    run = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "run",
            f"{gateway.url}/openapi.json",
            "--checks=all",
            f"--seed={SEED}",
            f"--max-examples={MAX_EXAMPLES}",
            "--workers=1",
            "--generation-database=none",
            "--no-color",
            f"--report-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # Whatever it keeps between runs stays out of the checkout.
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout


@pytest.mark.parametrize(
    ("path", "value", "status"),
    [
        # Beyond float32's range a value would reach the model as infinity.
        ("/models/narrow/predict", 1e39, 422),
        ("/models/narrow/predict", -3.5e38, 422),
        ("/models/narrow/predict", 3e38, 200),
        # float64 takes it; JSON cannot carry what is beyond float64.
        ("/models/linear/predict", 1e39, 200),
        ("/models/linear/predict", 10**309, 422),
    ],
)
def test_values_outside_the_input_dtype_are_refused(
    gateway: GatewayProcess, path: str, value: float, status: int
) -> None:
    answer = httpx.post(
        gateway.url + path,
        content=f'{{"instances": [{{"a": {value!r}, "b": 0.0}}]}}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    if status == 422:
        body = answer.json()
        assert body["detail"][0]["loc"] == ["body", "instances", 0, "a"]
        assert set(body) == {"error", "detail"}


def test_an_output_beyond_json_numbers_is_a_documented_null(
    gateway: GatewayProcess,
) -> None:
    # 2 a + 3 b overflows float64: the model answers infinity, JSON carries null,
    # and the schema says so.
    answer = httpx.post(
        f"{gateway.url}/models/linear/predict",
        json={"instances": [{"a": 1.7e308, "b": 1.7e308}]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [None]
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    response = document["components"]["schemas"]["LinearV1ServingDefaultResponse"]
    item = response["properties"]["predictions"]["items"]
    assert {"type": "null"} in item["anyOf"]
    assert "not a finite number" in item["description"]


def test_null_is_accepted_only_where_the_model_imputes(
    gateway: GatewayProcess,
) -> None:
    row = {"instances": [{"a": None, "b": 1.0}]}
    imputed = httpx.post(f"{gateway.url}/models/imputed/predict", json=row, timeout=30)
    assert imputed.status_code == 200, imputed.text
    plain = httpx.post(f"{gateway.url}/models/linear/predict", json=row, timeout=30)
    assert plain.status_code == 422, plain.text
