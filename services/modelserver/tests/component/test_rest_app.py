"""The REST adapter in process: routing, codecs, errors, headers, limits."""

from __future__ import annotations

import gzip
import json
import logging

import httpx
import pytest
from modelserver.errors import ModelNotFound
from modelserver.types import ModelSpec
from servekit_protocol.logs import JsonFormatter, RequestContextFilter

from .conftest import FakeDataPlane, rest_app


async def test_predict_row_format(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    response = await rest.post(
        "/v1/models/half:predict", json={"instances": [1.0, 2.0]}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"predictions": [2.5, 3.0]}
    predict = next(call for call in dataplane.calls if call.api == "predict")
    assert predict.spec == ModelSpec("half")
    assert predict.protocol == "rest"
    assert predict.timeout == 5.0


async def test_predict_columnar_format(rest: httpx.AsyncClient) -> None:
    response = await rest.post("/v1/models/half:predict", json={"inputs": {"x": [4.0]}})
    assert response.json() == {"outputs": [4.0]}


@pytest.mark.parametrize(
    ("path", "spec"),
    [
        ("/v1/models/half/versions/1:predict", ModelSpec("half", version=1)),
        ("/v1/models/half/labels/stable:predict", ModelSpec("half", label="stable")),
        ("/V1/MODELS/half:predict", ModelSpec("half")),
        ("/v1/models/h%61lf:predict", ModelSpec("half")),
    ],
)
async def test_paths_select_the_model_spec(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane, path: str, spec: ModelSpec
) -> None:
    response = await rest.post(path, json={"instances": [0.0]})
    assert response.status_code == 200, response.text
    assert dataplane.calls[-1].spec == spec


async def test_signature_name_in_the_body_reaches_the_dataplane(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    response = await rest.post(
        "/v1/models/half:predict",
        json={"signature_name": "serving_default", "instances": [0.0]},
    )
    assert response.status_code == 200
    assert dataplane.calls[-1].spec.signature_name == "serving_default"


async def test_malformed_json_is_reported_before_an_unknown_model(
    rest: httpx.AsyncClient,
) -> None:
    response = await rest.post("/v1/models/nope:predict", content=b"{oops")
    assert response.status_code == 400
    assert response.json()["error"].startswith("JSON Parse error")
    response = await rest.post("/v1/models/nope:predict", json={"instances": [1.0]})
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(nope)"}


async def test_unknown_signature(rest: httpx.AsyncClient) -> None:
    response = await rest.post(
        "/v1/models/half:predict", json={"signature_name": "nope", "instances": [1.0]}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": 'Serving signature name: "nope" not found in signature def'
    }


async def test_regress_with_context(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    response = await rest.post(
        "/v1/models/half:regress",
        json={"signature_name": "regress", "context": {"x": 2.0}, "examples": [{}]},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.0]}
    assert dataplane.calls[-1].spec.signature_name == "regress"


async def test_classify(rest: httpx.AsyncClient) -> None:
    response = await rest.post(
        "/v1/models/half:classify", json={"examples": [{"x": 2.0}, {"x": 4.0}]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", 3.0]], [["", 4.0]]]}


async def test_status_and_metadata(rest: httpx.AsyncClient) -> None:
    status = await rest.get("/v1/models/half/versions/1")
    assert status.json() == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    metadata = (await rest.get("/v1/models/half/labels/stable/metadata")).json()
    assert metadata["model_spec"] == {
        "name": "half",
        "signature_name": "",
        "version": "1",
    }
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["x"] == {
        "name": "x:0",
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
    }
    assert signatures["regress"]["inputs"]["inputs"]["tensor_shape"] == {
        "dim": [],
        "unknown_rank": True,
    }


async def test_gzip_body(rest: httpx.AsyncClient) -> None:
    response = await rest.post(
        "/v1/models/half:predict",
        content=gzip.compress(b'{"instances": [6.0]}'),
        headers={"content-encoding": "gzip"},
    )
    assert response.json() == {"predictions": [5.0]}


async def test_body_limit_answers_413(dataplane: FakeDataPlane) -> None:
    app = rest_app(dataplane, max_body_bytes=64)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        big = json.dumps({"instances": [1.0] * 100}).encode()
        assert (
            await client.post("/v1/models/half:predict", content=big)
        ).status_code == 413
        # The limit applies to the inflated body too (a gzip bomb stays small).
        bomb = gzip.compress(big)
        assert len(bomb) < 64
        response = await client.post(
            "/v1/models/half:predict",
            content=bomb,
            headers={"content-encoding": "gzip"},
        )
        assert response.status_code == 413
        assert "limit" in response.json()["error"]


async def test_prometheus_path(rest: httpx.AsyncClient) -> None:
    response = await rest.get("/monitoring/prometheus/metrics")
    assert response.status_code == 200
    assert response.text == "# TYPE fake counter\n"
    assert response.headers["content-type"].startswith("text/plain")


async def test_no_prometheus_path_when_disabled(dataplane: FakeDataPlane) -> None:
    app = rest_app(dataplane, metrics_path=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/monitoring/prometheus/metrics")).status_code == 404


async def test_cors(dataplane: FakeDataPlane) -> None:
    transport = httpx.ASGITransport(app=rest_app(dataplane, enable_cors=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        preflight = await client.options(
            "/v1/models/half:predict", headers={"origin": "https://example.com"}
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert (await client.options("/v1/models/half:predict")).status_code == 400
        # gRPC-Web from a browser: its headers allowed, its status readable.
        web = await client.options(
            "/tensorflow.serving.PredictionService/Predict",
            headers={"origin": "https://example.com"},
        )
        assert web.status_code == 200
        assert "X-Grpc-Web" in web.headers["access-control-allow-headers"]
        assert "Grpc-Status" in web.headers["access-control-expose-headers"]
        call = await client.post(
            "/tensorflow.serving.PredictionService/Predict",
            content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc-web"},
        )
        assert call.headers["access-control-allow-origin"] == "*"
        assert call.headers["grpc-status"] == "5"  # no model has the name ""


async def test_unexpected_failures_hide_details(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    dataplane.error = RuntimeError("secret internals")
    with caplog.at_level(logging.ERROR):
        response = await rest.get("/v1/models/half", headers={"x-request-id": "r-1"})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error (request id r-1)"}
    assert "secret internals" in caplog.text


async def test_error_lines_carry_the_request_id(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    dataplane.error = ModelNotFound("gone")
    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.INFO, logger="modelserver"):
        response = await rest.get(
            "/v1/models/half", headers={"x-request-id": "abc-123"}
        )
    assert response.headers["x-request-id"] == "abc-123"
    (record,) = [r for r in caplog.records if r.name.startswith("modelserver.protocol")]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc-123"
    assert line["protocol"] == "rest"
    assert line["model"] == "half"
    assert line["status"] == 404


async def test_insane_request_ids_are_replaced(rest: httpx.AsyncClient) -> None:
    response = await rest.get("/v1/models/half", headers={"x-request-id": "x" * 500})
    assert len(response.headers["x-request-id"]) == 32


async def test_successes_are_logged_at_debug_only(
    rest: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.INFO, logger="modelserver"):
        await rest.get("/v1/models/half")
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="modelserver"):
        await rest.get("/v1/models/half", headers={"x-request-id": "ok-1"})
    (record,) = caplog.records
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "ok-1"
    assert line["status"] == 200
    assert line["seconds"] >= 0


async def test_oip_readiness_and_liveness(
    rest: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    ready = await rest.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    dataplane.loading.append("big")
    waiting = await rest.get("/v2/health/ready")
    # OIP: a 4xx means false.
    assert waiting.status_code == 400
    assert waiting.json() == {"ready": False, "waiting_for": ["big"]}
    live = await rest.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
