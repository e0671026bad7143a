"""`inference.GRPCInferenceService` through the gateway with servekit's own stub:
the same auth, routing, request ids, metrics and error table as TF Serving's
services on the gRPC port; and the binary tensor extension on the HTTP port."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import oip_messages as oip
from servekit_protocol.oip_services import GRPCInferenceServiceStub

from tests.support.gateway import ApiKeys, GatewayProcess
from tests.support.models import linear_target

pytestmark = pytest.mark.integration


def infer_request(
    model: str = "linear", version: str = "", raw: bool = True
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version, id="r-1")
    for name, values in (("a", [1.0, 2.0]), ("b", [0.5, -1.0])):
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[2])
        if raw:
            request.raw_input_contents.append(struct.pack("<2d", *values))
        else:
            tensor.contents.fp64_contents.extend(values)
    return request


def _predictions(response: oip.ModelInferResponse) -> list[float]:
    (output,) = response.outputs
    assert output.name == "predictions"
    assert output.datatype == "FP64"
    if response.raw_output_contents:
        return list(np.frombuffer(response.raw_output_contents[0], dtype="<f8"))
    return list(output.contents.fp64_contents)


@pytest.mark.parametrize("raw", [True, False])
def test_model_infer_with_version_id_and_request_id(
    gateway: GatewayProcess, api_keys: ApiKeys, raw: bool
) -> None:
    metadata = [("x-api-key", api_keys.admin), ("x-request-id", "oip-id-1")]
    before = gateway.metric(
        "gateway_request_duration_seconds_count",
        model="linear",
        protocol="grpc",
        code="OK",
    )
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(
            infer_request(version="2", raw=raw), timeout=10, metadata=metadata
        )
    assert response.id == "r-1"
    assert response.model_name == "linear"
    assert response.model_version == "2"
    # Answered in the form the request used.
    assert bool(response.raw_output_contents) is raw
    np.testing.assert_allclose(
        _predictions(response), [linear_target(1, 0.5, 5), linear_target(2, -1, 5)]
    )
    assert ("x-request-id", "oip-id-1") in [
        (item.key, item.value) for item in call.trailing_metadata()
    ]
    after = gateway.metric(
        "gateway_request_duration_seconds_count",
        model="linear",
        protocol="grpc",
        code="OK",
    )
    assert after == before + 1


def test_routing_and_labels_apply_to_model_infer(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    metadata = [("x-api-key", api_keys.admin)]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        versions = {
            stub.ModelInfer(
                infer_request("rollout"), timeout=10, metadata=metadata
            ).model_version
            for _ in range(60)
        }
        labelled = stub.ModelInfer(
            infer_request("rollout", version="canary"), timeout=10, metadata=metadata
        )
    # rollout splits 50/50 between stable (v1) and canary (v2).
    assert versions == {"1", "2"}
    assert labelled.model_version == "2"


@pytest.mark.parametrize(
    ("metadata", "model", "code"),
    [
        ([], "linear", grpc.StatusCode.UNAUTHENTICATED),
        ([("x-api-key", "LINEAR_ONLY")], "rollout", grpc.StatusCode.PERMISSION_DENIED),
        ([("x-api-key", "ADMIN")], "no_such_model", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_model_infer_errors_use_the_shared_status_table(
    gateway: GatewayProcess,
    api_keys: ApiKeys,
    metadata: list[tuple[str, str]],
    model: str,
    code: grpc.StatusCode,
) -> None:
    keys = {"LINEAR_ONLY": api_keys.linear_only, "ADMIN": api_keys.admin}
    metadata = [(key, keys.get(value, value)) for key, value in metadata]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for method, request in (
            (stub.ModelInfer, infer_request(model)),
            (stub.ModelMetadata, oip.ModelMetadataRequest(name=model)),
            (stub.ModelReady, oip.ModelReadyRequest(name=model)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                method(
                    request,
                    timeout=10,
                    metadata=[*metadata, ("x-request-id", "oip-error")],
                )
            assert caught.value.code() == code
            assert dict(caught.value.trailing_metadata())["x-request-id"] == "oip-error"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.raw_input_contents.pop(), "raw_input_contents has 1 entries"),
        (lambda r: r.inputs[0].ClearField("datatype"), "unsupported datatype"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 3), "needs 16 bytes"),
    ],
)
def test_bad_model_infer_requests_are_invalid_argument(
    gateway: GatewayProcess,
    api_keys: ApiKeys,
    mutate: Callable[[oip.ModelInferRequest], object],
    message: str,
) -> None:
    request = infer_request()
    mutate(request)
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=10, metadata=[("x-api-key", api_keys.admin)]
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


def test_server_and_model_metadata(gateway: GatewayProcess, api_keys: ApiKeys) -> None:
    metadata = [("x-api-key", api_keys.admin)]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        # Server health needs no key, as on HTTP.
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
        server = stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=10)
        assert server.name == "servekit-gateway"
        assert "binary_tensor_data" in server.extensions
        ready = stub.ModelReady(
            oip.ModelReadyRequest(name="linear", version="1"),
            timeout=10,
            metadata=metadata,
        )
        assert ready.ready
        model = stub.ModelMetadata(
            oip.ModelMetadataRequest(name="linear"), timeout=10, metadata=metadata
        )
        config = stub.ModelConfig(
            oip.ModelConfigRequest(name="linear"), timeout=10, metadata=metadata
        ).config
    assert model.name == "linear"
    assert list(model.versions) == ["1", "2"]
    assert model.platform == "sklearn"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("a", "FP64", [-1]),
        ("b", "FP64", [-1]),
    ]
    assert [t.name for t in model.outputs] == ["predictions"]
    assert config.name == "linear"
    assert config.backend == "sklearn"
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("a", oip.DataType.TYPE_FP64, [-1]),
        ("b", oip.DataType.TYPE_FP64, [-1]),
    ]


def test_binary_tensors_over_http(gateway: GatewayProcess, api_keys: ApiKeys) -> None:
    a = np.array([1.0, 2.0])
    b = np.array([0.5, -1.0])
    header = json.dumps(
        {
            "id": "bin-1",
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP64",
                    "shape": [2],
                    "parameters": {"binary_data_size": 16},
                },
                {"name": "b", "datatype": "FP64", "shape": [2], "data": b.tolist()},
            ],
            "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = httpx.post(
        f"{gateway.url}/v2/models/linear/versions/1/infer",
        content=header + a.astype("<f8").tobytes(),
        headers={
            "x-api-key": api_keys.admin,
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    assert answer["id"] == "bin-1"
    assert answer["model_version"] == "1"
    (output,) = answer["outputs"]
    assert output["parameters"] == {"binary_data_size": 16}
    np.testing.assert_allclose(
        np.frombuffer(response.content[length:], dtype="<f8"),
        [linear_target(1, 0.5, 1), linear_target(2, -1, 1)],
    )
    short = httpx.post(
        f"{gateway.url}/v2/models/linear/infer",
        content=header + b"\0" * 8,
        headers={
            "x-api-key": api_keys.admin,
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=10,
    )
    assert short.status_code == 400
    assert "runs past the end" in short.json()["error"]


def test_answers_are_compressed_when_the_client_accepts_it(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    rows = 200  # 1,600 bytes of binary output: above the compression threshold
    a = np.arange(rows, dtype="<f8")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP64",
                    "shape": [rows],
                    "parameters": {"binary_data_size": a.nbytes},
                },
                {
                    "name": "b",
                    "datatype": "FP64",
                    "shape": [rows],
                    "data": [0.0] * rows,
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {
        "x-api-key": api_keys.admin,
        "Inference-Header-Content-Length": str(len(header)),
        "Accept-Encoding": "deflate",
    }
    url = f"{gateway.url}/v2/models/linear/versions/1/infer"
    with httpx.Client(timeout=10) as client:
        response = client.post(url, content=header + a.tobytes(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == "deflate"
    # httpx inflated it; the header length counts the JSON before compression.
    length = int(response.headers["inference-header-content-length"])
    np.testing.assert_allclose(
        np.frombuffer(response.content[length:], dtype="<f8"), 2 * a + 1.0
    )
