"""Large ``Classify``, ``Regress`` and ``MultiInference`` requests parsed, and
their tf.Examples decoded, in a worker process, so that neither stalls the
event loop.

In place, a message costs its parse (about 1 ms a MiB) and then a dict of
lists an example (about 1 µs a feature of an example, 2.6 s for 300,000
examples of eight features), which the scikit-learn runtime turns into columns
on the loop again. From ``--grpc_parse_offload_bytes`` up the message goes to a
JSON worker through a shared memory segment, as a large ``Predict`` does
(:mod:`modelserver.protocol.grpc.largerequests`); the worker parses it, merges
each example with the context and writes one column a feature
(:mod:`modelserver.examplecolumns`) to a second segment. The request the
servicer gets carries those columns instead of dicts. What the examples make
is checked against the request's tensor limits on the message's bytes
(:mod:`modelserver.examplesize`) before the message is parsed, with its
examples left serialized (:mod:`~modelserver.protocol.grpc.serializedinput`),
and before any column is built; a scikit-learn
signature reads its inputs from them directly, and a runtime that takes dicts
gets them rebuilt (on the loop, as in place).

What a client sees is what the in-place path gives: a message that does not
parse answers INTERNAL ``Failed to parse the request: ...``, examples over the
limits INVALID_ARGUMENT with the same message, and every other check (empty
input, missing feature, a feature with several values) is the runtime's, with
the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from servekit_protocol import examples as example_codec
from servekit_protocol import messages, segments
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.tensor_limits import TensorLimits

from modelserver import examplecolumns, examplesize
from modelserver.errors import InvalidInput
from modelserver.protocol.carriedarrays import ArraysRoad, Carried, write_or_carry
from modelserver.protocol.grpc import converters, serializedinput
from modelserver.protocol.grpc.largerequests import (
    Decoded,
    PredictDecoder,
    SegmentDecoder,
    WorkerMessage,
    message_view,
)
from modelserver.types import (
    ClassifyRequest,
    InferenceTask,
    ModelSpec,
    MultiInferenceRequest,
    RegressRequest,
)

ExamplesRequest = ClassifyRequest | RegressRequest | MultiInferenceRequest
DecodedExamples = Decoded[ExamplesRequest]

CLASSIFY = "Classify"
REGRESS = "Regress"
MULTI_INFERENCE = "MultiInference"
_MESSAGES: dict[str, Any] = {
    CLASSIFY: messages.ClassificationRequest,
    REGRESS: messages.RegressionRequest,
    MULTI_INFERENCE: messages.MultiInferenceRequest,
}


@dataclass(frozen=True, slots=True)
class _DecodedExamples:
    method: str
    spec: ModelSpec | None
    tasks: tuple[InferenceTask, ...]
    rows: int
    features: list[examplecolumns.ColumnHead] = field(default_factory=list)
    slots: list[segments.ArraySlot] = field(default_factory=list)
    error: str = ""
    carried: Carried = field(default_factory=dict)


def decode_examples(
    message: WorkerMessage,
    arrays_segment: ArraysRoad,
    method: str,
    limits: TensorLimits | None,
) -> _DecodedExamples:
    """Check what the examples of the ``method`` request in ``message`` make
    against ``limits``, parse it and write their columns to a new segment
    ``arrays_segment`` (runs in a worker process); they come back in the
    answer when there is no segment, or no room for one.

    Raises:
        DecodeError: The message does not parse.
    """
    refusal = ""
    with message_view(message) as view:
        # Counted on the wire first: a refused message is never parsed.
        try:
            readable = limits is None or examplesize.check_request(method, view, limits)
        except InvalidInput as exc:
            refusal = exc.message
        else:
            request = serializedinput.parse(method, view)
    del message
    if refusal:
        return _DecodedExamples(method, None, (), 0, error=refusal)
    if not readable:
        # upb took what the walk could not read: refused as it refuses.
        raise serializedinput.corrupt(method)

    def parsed(data: bytes) -> messages.Example:
        example: messages.Example = serializedinput.parse_part(
            messages.Example, data, method
        )
        return example

    context = None if request.context is None else parsed(request.context)
    if method == MULTI_INFERENCE:
        spec = None
        tasks = tuple(
            InferenceTask(converters.to_model_spec(task.model_spec), task.method_name)
            for task in (
                serializedinput.parse_part(messages.InferenceTask, data, method)
                for data in request.head
            )
        )
    else:
        spec = converters.to_model_spec(
            serializedinput.parse_part(
                messages.ModelSpec, b"".join(request.head), method
            )
        )
        tasks = ()
    columns = examplecolumns.from_examples(
        (example_codec.to_dict(parsed(data)) for data in request.examples),
        None if context is None else example_codec.to_dict(context),
    )
    del request, context
    numeric, features = examplecolumns.to_arrays(columns)
    slots, carried = write_or_carry(arrays_segment, numeric)
    return _DecodedExamples(
        method, spec, tasks, columns.rows, features, slots, carried=carried
    )


class ExamplesDecoder(SegmentDecoder[DecodedExamples]):
    """Decodes a Classify, Regress or MultiInference message in a worker.

    Args:
        parsers: The worker processes.
        method: ``CLASSIFY``, ``REGRESS`` or ``MULTI_INFERENCE``.
    """

    def __init__(
        self, parsers: BodyParsers, method: str, limits: TensorLimits | None
    ) -> None:
        super().__init__(parsers, decode_examples, method, limits)

    def assemble(
        self, decoded: Any, arrays: dict[str, np.ndarray[Any, Any]]
    ) -> DecodedExamples:
        """The request, its examples as columns, or why it was refused."""
        assert isinstance(decoded, _DecodedExamples)
        if decoded.error:
            return Decoded(None, decoded.error)
        columns = examplecolumns.from_arrays(decoded.rows, decoded.features, arrays)
        request: ExamplesRequest
        if decoded.method == MULTI_INFERENCE:
            request = MultiInferenceRequest(decoded.tasks, columns)
        else:
            assert decoded.spec is not None
            kind = ClassifyRequest if decoded.method == CLASSIFY else RegressRequest
            request = kind(decoded.spec, columns)
        return Decoded(request)


def large_message_decoders(
    parsers: BodyParsers, limits: TensorLimits | None
) -> dict[str, SegmentDecoder[Any]]:
    """PredictionService method name -> the decoder of its large messages."""
    return {
        "Predict": PredictDecoder(parsers, limits),
        **{method: ExamplesDecoder(parsers, method, limits) for method in _MESSAGES},
    }
