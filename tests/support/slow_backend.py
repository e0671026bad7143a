"""A deliberately slow TF Serving backend, for deadline tests only.

It speaks PredictionService/ModelService (via servekit_protocol) for one model whose
`serving_default` signature maps `x` (float32 [-1]) to `y = 2 x`, and sleeps
`delay_seconds` in Predict. Runs in the test process on a thread pool, bound to
127.0.0.1 on a port it picks itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from servekit_protocol import messages
from servekit_protocol.metadata import pack_signature_def_map
from servekit_protocol.services import (
    ModelServiceServicer,
    PredictionServiceServicer,
    add_model_service_to_server,
    add_prediction_service_to_server,
)
from servekit_protocol.tensors import from_ndarray, from_shape, to_ndarray

VERSION = 1


class _Prediction(PredictionServiceServicer):
    def __init__(self, delay_seconds: float) -> None:
        self.delay_seconds = delay_seconds

    def Predict(
        self, request: messages.PredictRequest, _context: Any
    ) -> messages.PredictResponse:
        time.sleep(self.delay_seconds)
        response = messages.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = VERSION
        response.model_spec.signature_name = "serving_default"
        x = to_ndarray(request.inputs["x"])
        from_ndarray(x * 2, into=response.outputs["y"])
        return response

    def GetModelMetadata(
        self, request: messages.GetModelMetadataRequest, _context: Any
    ) -> messages.GetModelMetadataResponse:
        signatures = messages.SignatureDefMap()
        signature = signatures.signature_def["serving_default"]
        signature.method_name = "tensorflow/serving/predict"
        for key, name in (("x", "x:0"), ("y", "y:0")):
            info = (signature.inputs if key == "x" else signature.outputs)[key]
            info.name = name
            info.dtype = messages.DT_FLOAT
            info.tensor_shape.CopyFrom(from_shape([-1]))
        response = messages.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = VERSION
        pack_signature_def_map(signatures, into=response.metadata["signature_def"])
        return response


class _Models(ModelServiceServicer):
    def GetModelStatus(
        self, _request: messages.GetModelStatusRequest, _context: Any
    ) -> messages.GetModelStatusResponse:
        response = messages.GetModelStatusResponse()
        entry = response.model_version_status.add()
        entry.version = VERSION
        entry.state = messages.ModelVersionStatus.State.AVAILABLE
        return response


@contextlib.contextmanager
def slow_backend(delay_seconds: float) -> Iterator[str]:
    """Serve until the block ends; yields the ``host:port`` address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add_prediction_service_to_server(_Prediction(delay_seconds), server)
    add_model_service_to_server(_Models(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
