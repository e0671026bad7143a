"""Large ``Predict``, ``Classify``, ``Regress`` and ``MultiInference`` answers
built in a worker process, so that building them does not stall the event loop.

A PredictResponse of 8 Mi doubles (64 MiB) takes about 340 ms to fill and
230 ms to serialize, both single calls into protobuf with the GIL held, so a
thread would stall the loop as long; its arrays pickle to the worker in a few
tens of milliseconds, outside the loop's thread.

Filling a ClassificationResponse costs about 5 µs a ``(label, score)`` pair
with the GIL held (a 300,000-example answer of two classes holds the loop 3 s),
a RegressionResponse about 1.5 µs a value. From the answer size at which the
REST port writes its JSON in a worker (``--rest_api_json_answer_offload_elements``,
counted in pairs, or values) the model's arrays go to a JSON worker, which
fills the message with the in-place code
(:mod:`~modelserver.protocol.grpc.converters`) and sends its serialized bytes
back; the servers send those as they are (:class:`~servekit_protocol.messages.Serialized`).
The numeric arrays go to the worker, and the answer's bytes come back, through
shared memory segments (:mod:`servekit_protocol.segment_answers`): through the
pool's pipe, a 64 MiB answer held the event loop 64-162 ms in the pool's
threads. Classifications and regression values travel as arrays too
(:mod:`modelserver.protocol.answerarrays`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from servekit_protocol import messages, segment_answers
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable

from modelserver.errors import Overloaded
from modelserver.protocol import answerarrays
from modelserver.protocol.grpc import converters
from modelserver.types import (
    ClassifyResponse,
    MultiInferenceResponse,
    PredictResponse,
    RegressResponse,
    ResolvedSpec,
)


def serialize_predict(
    outputs: dict[str, np.ndarray[Any, Any]], spec: Any, packed: bool
) -> bytes:
    """The PredictResponse's bytes (runs in a worker process)."""
    response = PredictResponse(spec, outputs)
    return converters.from_predict_response(response, packed=packed).SerializeToString()


def serialize_classify(
    arrays: dict[str, np.ndarray[Any, Any]],
    spec: ResolvedSpec,
    shape: answerarrays.ClassificationsShape,
) -> bytes:
    """The ClassificationResponse's bytes (runs in a worker process)."""
    response = ClassifyResponse(spec, answerarrays.classifications_of(arrays, shape))
    return converters.from_classify_response(response).SerializeToString()


def serialize_regress(
    arrays: dict[str, np.ndarray[Any, Any]], spec: ResolvedSpec
) -> bytes:
    """The RegressionResponse's bytes (runs in a worker process)."""
    response = RegressResponse(spec, answerarrays.regression_values(arrays))
    return converters.from_regress_response(response).SerializeToString()


def serialize_multi_inference(
    arrays: dict[str, np.ndarray[Any, Any]], tasks: list[answerarrays.TaskShape]
) -> bytes:
    """The MultiInferenceResponse's bytes (runs in a worker process)."""
    response = answerarrays.multi_inference_of(arrays, tasks)
    return converters.from_multi_inference_response(response).SerializeToString()


def _size(response: ClassifyResponse | RegressResponse) -> int:
    return int(response.results.size)


class AnswerWriter:
    """Builds the gRPC answers of Predict, Classify, Regress and
    MultiInference: in place when small, in a worker from ``parsers``' answer
    threshold (elements of all outputs).

    Args:
        parsers: The worker processes; None builds every answer in place.
    """

    def __init__(self, parsers: BodyParsers | None) -> None:
        self._parsers = parsers

    def _offloads(self, size: int) -> bool:
        parsers = self._parsers
        return parsers is not None and size >= parsers.answer_threshold_elements

    async def _in_worker(
        self, function: Any, arrays: dict[str, np.ndarray[Any, Any]], *args: Any
    ) -> messages.Serialized:
        assert self._parsers is not None
        try:
            data = await segment_answers.write_in_worker(
                self._parsers, function, arrays, *args
            )
        except ParserUnavailable as exc:
            raise Overloaded(exc.message) from exc
        return messages.Serialized(data)

    async def predict(
        self, response: PredictResponse, *, packed: bool
    ) -> messages.PredictResponse | messages.Serialized:
        """The PredictResponse, its numeric outputs as ``tensor_content`` when
        ``packed``.

        Raises:
            Overloaded: The worker building it died.
        """
        parsers = self._parsers
        if parsers is None or parsers.answer_threshold_elements > sum(
            array.size for array in response.outputs.values()
        ):
            return converters.from_predict_response(response, packed=packed)
        return await self._in_worker(
            serialize_predict, response.outputs, response.spec, packed
        )

    async def classify(
        self, response: ClassifyResponse
    ) -> messages.ClassificationResponse | messages.Serialized:
        """The ClassificationResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(response.results.size):
            return converters.from_classify_response(response)
        arrays, shape = await answerarrays.classification_arrays(response.results)
        return await self._in_worker(serialize_classify, arrays, response.spec, shape)

    async def regress(
        self, response: RegressResponse
    ) -> messages.RegressionResponse | messages.Serialized:
        """The RegressionResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(response.results.size):
            return converters.from_regress_response(response)
        arrays = answerarrays.regression_arrays(response.results)
        return await self._in_worker(serialize_regress, arrays, response.spec)

    async def multi_inference(
        self, response: MultiInferenceResponse
    ) -> messages.MultiInferenceResponse | messages.Serialized:
        """The MultiInferenceResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(sum(_size(item) for item in response.results)):
            return converters.from_multi_inference_response(response)
        arrays, tasks = await answerarrays.multi_inference_arrays(response)
        return await self._in_worker(serialize_multi_inference, arrays, tasks)
