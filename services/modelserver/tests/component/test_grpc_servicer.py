"""The gRPC adapter on a real grpc.aio server: conversions, deadlines, health."""

from __future__ import annotations

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelserver.protocol.grpc.server import (
    GrpcServer,
    parse_channel_arguments,
    server_options,
)
from modelserver.types import ModelSpec
from servekit_protocol import examples, messages, tensors
from servekit_protocol.metadata import unpack_signature_def_map
from servekit_protocol.services import ModelServiceStub, PredictionServiceStub

from .conftest import FakeDataPlane


async def test_predict(channel: grpc.aio.Channel, dataplane: FakeDataPlane) -> None:
    request = messages.PredictRequest()
    request.model_spec.name = "half"
    request.model_spec.version_label = "stable"
    tensors.from_ndarray(np.array([1.0, 3.0], np.float32), into=request.inputs["x"])
    response = await PredictionServiceStub(channel).Predict(request, timeout=10)
    assert tensors.to_ndarray(response.outputs["y"]).tolist() == [2.5, 3.5]
    assert response.model_spec.name == "half"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    call = dataplane.calls[-1]
    assert call.spec == ModelSpec("half", label="stable")
    assert call.protocol == "grpc"
    # The client's deadline reaches the dataplane as the time left. gRPC rounds
    # the grpc-timeout it sends up to a coarser value (seen: 10.099 s for 10 s).
    assert call.timeout is not None
    assert 0 < call.timeout <= 10.5


async def test_predict_answers_in_typed_fields_as_tf_serving(
    channel: grpc.aio.Channel,
) -> None:
    # TF Serving's default (AsProtoField): a client without TensorFlow reads
    # outputs[name].float_val. The request's packed bytes are accepted as well.
    request = messages.PredictRequest()
    request.model_spec.name = "half"
    tensors.from_ndarray(
        np.array([1.0, 3.0], np.float32), into=request.inputs["x"], packed=True
    )
    response = await PredictionServiceStub(channel).Predict(request, timeout=10)
    assert list(response.outputs["y"].float_val) == [2.5, 3.5]
    assert not response.outputs["y"].tensor_content


async def test_tensor_content_answers_when_asked(dataplane: FakeDataPlane) -> None:
    # --enable_serialization_as_tensor_content
    server = GrpcServer(
        dataplane,
        host="127.0.0.1",
        port=0,
        max_message_bytes=4 * 1024 * 1024,
        packed_outputs=True,
        grace=1,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
            request = messages.PredictRequest()
            request.model_spec.name = "half"
            tensors.from_ndarray(np.array([1.0], np.float32), into=request.inputs["x"])
            response = await PredictionServiceStub(opened).Predict(request, timeout=10)
    finally:
        await server.stop()
    answer = response.outputs["y"]
    assert answer.tensor_content == np.array([2.5], "<f4").tobytes()
    assert not answer.float_val


async def test_version_and_output_filter_are_read(
    channel: grpc.aio.Channel, dataplane: FakeDataPlane
) -> None:
    request = messages.PredictRequest()
    request.model_spec.name = "half"
    request.model_spec.version.value = 2
    request.output_filter.append("y")
    tensors.from_ndarray(np.array([0.0], np.float32), into=request.inputs["x"])
    await PredictionServiceStub(channel).Predict(request, timeout=10)
    predict = dataplane.calls[-1].payload
    assert predict.spec == ModelSpec("half", version=2)
    assert predict.output_filter == ("y",)
    assert dataplane.calls[-1].timeout is not None


async def test_regress_with_context(channel: grpc.aio.Channel) -> None:
    request = messages.RegressionRequest()
    request.model_spec.name = "half"
    request.model_spec.signature_name = "regress"
    request.input.CopyFrom(
        examples.from_dicts([{}, {"x": [6.0]}], context={"x": [2.0]})
    )
    response = await PredictionServiceStub(channel).Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [3.0, 5.0]
    assert response.model_spec.signature_name == "regress"


async def test_classify(channel: grpc.aio.Channel) -> None:
    request = messages.ClassificationRequest()
    request.model_spec.name = "half"
    request.input.CopyFrom(examples.from_dicts([{"x": 4.0}]))
    response = await PredictionServiceStub(channel).Classify(request, timeout=10)
    classes = response.result.classifications[0].classes
    assert [(c.label, c.score) for c in classes] == [("", 4.0)]


async def test_multi_inference(channel: grpc.aio.Channel) -> None:
    request = messages.MultiInferenceRequest()
    for signature in ("regress", "serving_default"):
        task = request.tasks.add()
        task.model_spec.name = "half"
        task.model_spec.signature_name = signature
        task.method_name = "tensorflow/serving/regress"
    request.input.CopyFrom(examples.from_dicts([{"x": 2.0}]))
    response = await PredictionServiceStub(channel).MultiInference(request, timeout=10)
    assert [r.regression_result.regressions[0].value for r in response.results] == [
        3.0,
        3.0,
    ]
    assert [r.model_spec.signature_name for r in response.results] == [
        "regress",
        "serving_default",
    ]


async def test_metadata(channel: grpc.aio.Channel) -> None:
    request = messages.GetModelMetadataRequest()
    request.model_spec.name = "half"
    request.metadata_field.append("signature_def")
    response = await PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=10
    )
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == ""
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signature_map = unpack_signature_def_map(packed)
    default = signature_map.signature_def["serving_default"]
    assert default.inputs["x"].dtype == messages.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1]
    assert (
        signature_map.signature_def["regress"]
        .inputs["inputs"]
        .tensor_shape.unknown_rank
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([], "GetModelMetadataRequest must specify at least one metadata_field"),
        (["other"], "Metadata field other is not supported"),
    ],
)
async def test_metadata_field_validation(
    channel: grpc.aio.Channel, fields: list[str], message: str
) -> None:
    request = messages.GetModelMetadataRequest()
    request.model_spec.name = "half"
    request.metadata_field.extend(fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


async def test_status_and_reload(
    channel: grpc.aio.Channel, dataplane: FakeDataPlane
) -> None:
    stub = ModelServiceStub(channel)
    status_request = messages.GetModelStatusRequest()
    status_request.model_spec.name = "half"
    status = await stub.GetModelStatus(status_request, timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (2, messages.ModelVersionStatus.AVAILABLE),
        (1, messages.ModelVersionStatus.AVAILABLE),
    ]
    reload_request = messages.ReloadConfigRequest()
    reload_request.config.model_config_list.config.add(name="m", base_path="/m")
    reload_request.metric_names.append("some_metric")
    answer = await stub.HandleReloadConfigRequest(reload_request, timeout=10)
    assert answer.status.error_code == 0
    assert [m.name for m in answer.metric] == ["some_metric"]
    assert dataplane.calls[-1].payload == reload_request.config


async def test_status_needs_a_model_spec(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ModelServiceStub(channel).GetModelStatus(
            messages.GetModelStatusRequest(), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Missing ModelSpec"


async def test_undecodable_tensor_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    request = messages.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].dtype = messages.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=4)
    request.inputs["x"].tensor_content = b"\x00" * 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await PredictionServiceStub(channel).Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_long_messages_are_truncated_like_tf_serving(
    channel: grpc.aio.Channel, dataplane: FakeDataPlane
) -> None:
    from modelserver.errors import InvalidInput

    dataplane.error = InvalidInput("x" * 5000)
    request = messages.GetModelStatusRequest()
    request.model_spec.name = "half"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert caught.value.details() == "x" * 1024 + "...TRUNCATED"


async def test_request_id_round_trip(channel: grpc.aio.Channel) -> None:
    request = messages.GetModelStatusRequest()
    request.model_spec.name = "half"
    call = ModelServiceStub(channel).GetModelStatus(
        request, timeout=10, metadata=(("x-request-id", "grpc-1"),)
    )
    await call
    assert ("x-request-id", "grpc-1") in tuple(await call.trailing_metadata())


async def test_health(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "ModelService"):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_channel_arguments() -> None:
    parsed = parse_channel_arguments(
        "grpc.max_connection_age_ms=2000, grpc.primary_user_agent=servekit"
    )
    assert parsed == [
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.primary_user_agent", "servekit"),
    ]
    options = dict(server_options(1024, [("grpc.max_send_message_length", 7)]))
    assert options["grpc.max_receive_message_length"] == 1024
    assert options["grpc.max_send_message_length"] == 7
    with pytest.raises(ValueError, match="key=value"):
        parse_channel_arguments("novalue")


async def test_reload_needs_a_model_config_list(
    channel: grpc.aio.Channel, dataplane: FakeDataPlane
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ModelServiceStub(channel).HandleReloadConfigRequest(
            messages.ReloadConfigRequest(), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
        "Only ModelConfigList is currently supported"
    )
    assert not [call for call in dataplane.calls if call.api == "reload_config"]
