"""PredictionService and ModelService: each RPC converts, delegates, converts back.

Errors are mapped by :func:`~modelserver.protocol.grpc.errors.rpc`; the call's
deadline (``context.time_remaining()``) is handed to the dataplane, which answers
DEADLINE_EXCEEDED when it passes, as TF Serving's session-run timeout does.
"""

from __future__ import annotations

import asyncio

from servekit_protocol import messages
from servekit_protocol.logs import bind_model
from servekit_protocol.services import (
    ModelServiceServicer,
    PredictionServiceServicer,
)
from servekit_protocol.tensor_limits import DECODE_IN_THREAD_BYTES

from modelserver.dataplane import DataPlane
from modelserver.protocol.grpc import converters
from modelserver.protocol.grpc.errors import Context, rpc
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.protocol.grpc.largeexamples import DecodedExamples
from modelserver.protocol.grpc.largerequests import Decoded, DecodedPredict
from modelserver.types import (
    ClassifyRequest,
    MultiInferenceRequest,
    PredictRequest,
    RegressRequest,
)


class PredictionServicer(PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over a :class:`DataPlane`.

    ``protocol`` labels the calls in metrics and logs (``"grpc-web"`` when the
    same servicer answers gRPC-Web on the REST port). ``packed_outputs`` answers
    Predict with ``tensor_content`` instead of the typed fields
    (``--enable_serialization_as_tensor_content``). ``answers`` builds the
    Predict, Classify, Regress and MultiInference answers (large ones in a
    worker).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        protocol: str = "grpc",
        *,
        packed_outputs: bool = False,
        answers: AnswerWriter | None = None,
    ) -> None:
        self._dataplane = dataplane
        self.protocol = protocol
        self._packed_outputs = packed_outputs
        self._answers = answers if answers is not None else AnswerWriter(None)

    @rpc
    async def Predict(
        self, request: messages.PredictRequest | DecodedPredict, context: Context
    ) -> messages.PredictResponse | messages.Serialized:
        if isinstance(request, Decoded):
            # A large message, parsed and decoded in a worker.
            predict_request = request.unwrap()
        else:
            predict_request = await self._decoded(request)
        bind_model(predict_request.spec.name, predict_request.spec.version)
        response = await self._dataplane.predict(
            predict_request, protocol=self.protocol, timeout=context.time_remaining()
        )
        return await self._answers.predict(response, packed=self._packed_outputs)

    async def _decoded(self, request: messages.PredictRequest) -> PredictRequest:
        declared = converters.declare_predict_request(
            request, self._dataplane.tensor_limits
        )
        if declared.nbytes < DECODE_IN_THREAD_BYTES:
            return declared.decode()
        return await asyncio.to_thread(declared.decode)

    @rpc
    async def Classify(
        self,
        request: messages.ClassificationRequest | DecodedExamples,
        context: Context,
    ) -> messages.ClassificationResponse | messages.Serialized:
        if isinstance(request, Decoded):
            # A large message, its examples decoded into columns in a worker.
            classify_request = request.unwrap()
            assert isinstance(classify_request, ClassifyRequest)
        else:
            classify_request = converters.to_classify_request(
                request, self._dataplane.tensor_limits
            )
        bind_model(classify_request.spec.name, classify_request.spec.version)
        response = await self._dataplane.classify(
            classify_request, protocol=self.protocol, timeout=context.time_remaining()
        )
        return await self._answers.classify(response)

    @rpc
    async def Regress(
        self, request: messages.RegressionRequest | DecodedExamples, context: Context
    ) -> messages.RegressionResponse | messages.Serialized:
        if isinstance(request, Decoded):
            regress_request = request.unwrap()
            assert isinstance(regress_request, RegressRequest)
        else:
            regress_request = converters.to_regress_request(
                request, self._dataplane.tensor_limits
            )
        bind_model(regress_request.spec.name, regress_request.spec.version)
        response = await self._dataplane.regress(
            regress_request, protocol=self.protocol, timeout=context.time_remaining()
        )
        return await self._answers.regress(response)

    @rpc
    async def MultiInference(
        self,
        request: messages.MultiInferenceRequest | DecodedExamples,
        context: Context,
    ) -> messages.MultiInferenceResponse | messages.Serialized:
        if isinstance(request, Decoded):
            multi_request = request.unwrap()
            assert isinstance(multi_request, MultiInferenceRequest)
        else:
            multi_request = converters.to_multi_inference_request(
                request, self._dataplane.tensor_limits
            )
        if multi_request.tasks:
            bind_model(multi_request.tasks[0].spec.name, None)
        response = await self._dataplane.multi_inference(
            multi_request, protocol=self.protocol, timeout=context.time_remaining()
        )
        return await self._answers.multi_inference(response)

    @rpc
    async def GetModelMetadata(
        self,
        request: messages.GetModelMetadataRequest,
        context: Context,  # noqa: ARG002
    ) -> messages.GetModelMetadataResponse:
        spec = converters.to_metadata_spec(request)
        bind_model(spec.name, spec.version)
        metadata = await self._dataplane.metadata(spec, protocol=self.protocol)
        return converters.from_model_metadata(metadata)


class ModelServicer(ModelServiceServicer):
    """``tensorflow.serving.ModelService`` over a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, protocol: str = "grpc") -> None:
        self._dataplane = dataplane
        self.protocol = protocol

    @rpc
    async def GetModelStatus(
        self,
        request: messages.GetModelStatusRequest,
        context: Context,  # noqa: ARG002
    ) -> messages.GetModelStatusResponse:
        spec = converters.to_status_spec(request)
        bind_model(spec.name, spec.version)
        statuses = await self._dataplane.status(spec, protocol=self.protocol)
        return converters.from_version_statuses(statuses)

    @rpc
    async def HandleReloadConfigRequest(
        self,
        request: messages.ReloadConfigRequest,
        context: Context,  # noqa: ARG002
    ) -> messages.ReloadConfigResponse:
        config = converters.to_reload_config(request)
        await self._dataplane.reload_config(config, protocol=self.protocol)
        return converters.reload_config_success(request.metric_names)
