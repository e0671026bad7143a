"""TF Serving's REST API through the gateway, with TF Serving-style clients."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.models import linear_target
from tests.support.modelserver import ModelServer
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def test_row_and_columnar_formats(client: httpx.Client) -> None:
    rows = client.post(
        "/v1/models/linear/versions/1:predict",
        json={"instances": [{"a": 1.0, "b": 2.0}, {"a": 0.0, "b": -1.0}]},
    )
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(
        rows.json()["predictions"], [linear_target(1, 2, 1), linear_target(0, -1, 1)]
    )
    columns = client.post(
        "/v1/models/linear/labels/canary:predict",
        json={"inputs": {"a": [1.0, 0.0], "b": [2.0, -1.0]}},
    )
    assert columns.status_code == 200, columns.text
    np.testing.assert_allclose(
        columns.json()["outputs"], [linear_target(1, 2, 5), linear_target(0, -1, 5)]
    )
    assert columns.headers["x-model-version"] == "2"


def test_status_and_metadata_match_the_model_server(
    client: httpx.Client, main_model_server: ModelServer
) -> None:
    for path in (
        "/v1/models/linear/versions/1",
        "/v1/models/linear/versions/1/metadata",
    ):
        through = client.get(path)
        direct = httpx.get(main_model_server.rest_url + path, timeout=10)
        assert through.status_code == direct.status_code == 200
        assert through.json() == direct.json()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/v1/models/linear/versions/1:predict",
            {"instances": [{"a": "x", "b": 1}]},
        ),
        ("POST", "/v1/models/linear/versions/1:predict", {"instances": [{"a": 1.0}]}),
        ("POST", "/v1/models/linear/versions/1:predict", {"nothing": []}),
        (
            "POST",
            "/v1/models/linear/versions/99:predict",
            {"instances": [{"a": 1, "b": 2}]},
        ),
        ("POST", "/v1/models/no_such_model:predict", {"instances": [1.0]}),
        ("GET", "/v1/models/no_such_model", None),
        ("GET", "/v1/models/linear/versions/99", None),
    ],
)
def test_errors_have_tf_serving_status_and_body(
    client: httpx.Client,
    main_model_server: ModelServer,
    method: str,
    path: str,
    body: object,
) -> None:
    through = client.request(method, path, json=body)
    direct = httpx.request(
        method, main_model_server.rest_url + path, json=body, timeout=10
    )
    assert through.status_code == direct.status_code
    assert through.status_code in (400, 404)
    assert through.json() == direct.json()
    assert set(through.json()) == {"error"}


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/linear:predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_request_id_is_returned_and_reaches_the_backend(
    client: httpx.Client, gateway: GatewayProcess, main_model_server: ModelServer
) -> None:
    request_id = "gw-test-request-id-0001"
    response = client.post(
        "/v1/models/linear/versions/1:predict",
        json={"instances": [{"a": 1.0, "b": 1.0}]},
        headers={"x-request-id": request_id},
    )
    generated = client.post(
        "/v1/models/linear/versions/1:predict",
        json={"instances": [{"a": 1.0, "b": 1.0}]},
    )
    assert response.status_code == generated.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert len(generated.headers["x-request-id"]) == 32
    # Access lines are flushed in batches, a few tens of milliseconds later.
    wait_until(
        lambda: request_id in gateway.process.log_text(),
        timeout=5,
        what="the request id in the gateway's access log",
    )
    # The model server logs failed calls with their request id: make one fail.
    failing_id = "gw-test-request-id-0002"
    failed = client.get(
        "/v1/models/linear/versions/99", headers={"x-request-id": failing_id}
    )
    assert failed.status_code == 404
    assert failed.headers["x-request-id"] == failing_id
    wait_until(
        lambda: failing_id in main_model_server.process.log_text(),
        timeout=5,
        what="the request id in the model server's log",
    )
