"""The gRPC bindings over real servers on 127.0.0.1 (sync and asyncio)."""

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from servekit_protocol import messages, services, tensors


def _doubled(request: messages.PredictRequest) -> messages.PredictResponse:
    response = messages.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, tensor in request.inputs.items():
        tensors.from_ndarray(
            tensors.to_ndarray(tensor) * 2, into=response.outputs[name]
        )
    return response


class SyncPredictions(services.PredictionServiceServicer):
    def Predict(
        self, request: messages.PredictRequest, context: Any
    ) -> messages.PredictResponse:
        context.set_trailing_metadata((("x-served-by", "aio"),))
        return _doubled(request)


class AsyncPredictions(services.PredictionServiceServicer):
    async def Predict(
        self, request: messages.PredictRequest, context: Any
    ) -> messages.PredictResponse:
        context.set_trailing_metadata((("x-served-by", "aio"),))
        return _doubled(request)


class AsyncModels(services.ModelServiceServicer):
    async def GetModelStatus(
        self, request: messages.GetModelStatusRequest, context: Any
    ) -> messages.GetModelStatusResponse:
        del context
        response = messages.GetModelStatusResponse()
        response.model_version_status.add(
            version=request.model_spec.version.value,
            state=messages.ModelVersionStatus.AVAILABLE,
        )
        return response

    async def HandleReloadConfigRequest(
        self, request: messages.ReloadConfigRequest, context: Any
    ) -> messages.ReloadConfigResponse:
        del request
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "read-only")
        raise AssertionError("abort returned")


def _request() -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = "half"
    tensors.from_ndarray(np.array([1.0, 2.5], np.float32), into=request.inputs["x"])
    return request


@pytest.fixture(scope="module")
def sync_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services.add_prediction_service_to_server(SyncPredictions(), server)
    services.add_model_service_to_server(services.ModelServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
async def async_target() -> AsyncIterator[str]:
    server = grpc.aio.server()
    services.add_prediction_service_to_server(AsyncPredictions(), server)
    services.add_model_service_to_server(AsyncModels(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def test_method_paths_are_tf_servings() -> None:
    paths = [
        method.path for method in services.PREDICTION_METHODS + services.MODEL_METHODS
    ]
    assert "/tensorflow.serving.PredictionService/Predict" in paths
    assert "/tensorflow.serving.PredictionService/GetModelMetadata" in paths
    assert "/tensorflow.serving.ModelService/HandleReloadConfigRequest" in paths
    assert len(paths) == 7


def test_sync_stub_against_sync_server(sync_target: str) -> None:
    with grpc.insecure_channel(sync_target) as channel:
        response = services.PredictionServiceStub(channel).Predict(
            _request(), timeout=10
        )
    assert response.model_spec.name == "half"
    np.testing.assert_array_equal(tensors.to_ndarray(response.outputs["x"]), [2.0, 5.0])


def test_unimplemented_methods_answer_unimplemented(sync_target: str) -> None:
    with grpc.insecure_channel(sync_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            services.PredictionServiceStub(channel).Classify(
                messages.ClassificationRequest(), timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as caught:
            services.ModelServiceStub(channel).GetModelStatus(
                messages.GetModelStatusRequest(), timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_aio_stub_against_aio_server(async_target: str) -> None:
    async with grpc.aio.insecure_channel(async_target) as channel:
        prediction = services.PredictionServiceStub(channel)
        call = prediction.Predict(_request(), timeout=10)
        response = await call
        assert (await call.trailing_metadata()).get("x-served-by") == "aio"
        np.testing.assert_array_equal(
            tensors.to_ndarray(response.outputs["x"]), [2.0, 5.0]
        )

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prediction.Regress(messages.RegressionRequest(), timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED

        models = services.ModelServiceStub(channel)
        request = messages.GetModelStatusRequest()
        request.model_spec.version.value = 3
        status = await models.GetModelStatus(request, timeout=10)
        assert status.model_version_status[0].version == 3
        assert (
            status.model_version_status[0].state
            == messages.ModelVersionStatus.AVAILABLE
        )

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await models.HandleReloadConfigRequest(
                messages.ReloadConfigRequest(), timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == "read-only"


def test_sync_stub_offers_futures(sync_target: str) -> None:
    # A sync channel's callables also expose futures, which the gateway's
    # thread-based clients use.
    with grpc.insecure_channel(sync_target) as channel:
        future = services.PredictionServiceStub(channel).Predict.future(
            _request(), timeout=10
        )
        assert tensors.to_ndarray(future.result().outputs["x"]).tolist() == [2.0, 5.0]
