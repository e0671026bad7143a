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
A scikit-learn model's labels are one row for every example: only that row
travels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from servekit_protocol import messages
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable

from modelserver.errors import Overloaded
from modelserver.protocol.grpc import converters
from modelserver.types import (
    Classifications,
    ClassifyResponse,
    MultiInferenceResponse,
    PredictResponse,
    RegressResponse,
)


@dataclass(frozen=True, slots=True)
class _SharedLabels:
    # Classifications whose labels are one row repeated for every example,
    # sent as that row (a broadcast view pickles as the whole array).
    row: np.ndarray[Any, Any]
    scores: np.ndarray[Any, Any] | None
    examples: int
    classes: int

    def unpack(self) -> Classifications:
        labels = np.broadcast_to(self.row, (self.examples, self.classes))
        return Classifications(labels, self.scores, self.examples, self.classes)


def _portable(results: Classifications) -> Classifications | _SharedLabels:
    labels = results.labels
    if (
        labels is not None
        and labels.ndim == 2
        and labels.shape[0] > 1
        and labels.strides[0] == 0
    ):
        return _SharedLabels(
            labels[0].copy(), results.scores, results.examples, results.classes
        )
    return results


def _unpack(results: Classifications | _SharedLabels) -> Classifications:
    return results.unpack() if isinstance(results, _SharedLabels) else results


def _portable_response(
    response: ClassifyResponse | RegressResponse,
) -> ClassifyResponse | RegressResponse | tuple[Any, ...]:
    if isinstance(response, ClassifyResponse):
        return (response.spec, _portable(response.results))
    return response


def _unpack_response(
    response: ClassifyResponse | RegressResponse | tuple[Any, ...],
) -> ClassifyResponse | RegressResponse:
    if isinstance(response, tuple):
        spec, results = response
        return ClassifyResponse(spec, _unpack(results))
    return response


def serialize_predict(response: PredictResponse, packed: bool) -> bytes:
    """The PredictResponse's bytes (runs in a worker process)."""
    return converters.from_predict_response(response, packed=packed).SerializeToString()


def serialize_classify(spec: Any, results: Classifications | _SharedLabels) -> bytes:
    """The ClassificationResponse's bytes (runs in a worker process)."""
    response = ClassifyResponse(spec, _unpack(results))
    return converters.from_classify_response(response).SerializeToString()


def serialize_regress(response: RegressResponse) -> bytes:
    """The RegressionResponse's bytes (runs in a worker process)."""
    return converters.from_regress_response(response).SerializeToString()


def serialize_multi_inference(
    results: Sequence[ClassifyResponse | RegressResponse | tuple[Any, ...]],
) -> bytes:
    """The MultiInferenceResponse's bytes (runs in a worker process)."""
    response = MultiInferenceResponse([_unpack_response(item) for item in results])
    return converters.from_multi_inference_response(response).SerializeToString()


def _size(response: ClassifyResponse | RegressResponse) -> int:
    if isinstance(response, ClassifyResponse):
        return response.results.size
    return len(response.results)


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

    async def _in_worker(self, function: Any, *args: Any) -> messages.Serialized:
        assert self._parsers is not None
        try:
            data = await self._parsers.in_worker(function, *args)
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
        return await self._in_worker(serialize_predict, response, packed)

    async def classify(
        self, response: ClassifyResponse
    ) -> messages.ClassificationResponse | messages.Serialized:
        """The ClassificationResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(response.results.size):
            return converters.from_classify_response(response)
        return await self._in_worker(
            serialize_classify, response.spec, _portable(response.results)
        )

    async def regress(
        self, response: RegressResponse
    ) -> messages.RegressionResponse | messages.Serialized:
        """The RegressionResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(len(response.results)):
            return converters.from_regress_response(response)
        return await self._in_worker(serialize_regress, response)

    async def multi_inference(
        self, response: MultiInferenceResponse
    ) -> messages.MultiInferenceResponse | messages.Serialized:
        """The MultiInferenceResponse.

        Raises:
            Overloaded: The worker building it died.
        """
        if not self._offloads(sum(_size(item) for item in response.results)):
            return converters.from_multi_inference_response(response)
        return await self._in_worker(
            serialize_multi_inference,
            [_portable_response(item) for item in response.results],
        )
