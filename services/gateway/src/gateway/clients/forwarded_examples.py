"""Large gRPC ``Classify``, ``Regress`` and ``MultiInference`` messages
forwarded to the backend as they came.

Of these requests the gateway reads only what names the target: the model
spec of a ClassificationRequest or RegressionRequest (field 1), the tasks of a
MultiInferenceRequest (field 1, each a model spec and a method name). The
``input`` (field 2: the tf.Examples, nearly all of the message) is the
backend's. Parsing it on the event loop costs about 2 ms a MiB and serializing
it again for the backend as much, every other call waiting meanwhile; so from
``GATEWAY_GRPC_PARSE_OFFLOAD_BYTES`` up only the leading field-1 entries are
parsed, and the message goes to the backend as those entries written again
(with the target's spec, as :func:`~gateway.context.apply_target` sets it)
followed by the client's other bytes as received (:mod:`gateway.clients.spliced`).
A message whose field-1 entries are not all at its front is parsed whole, as
below the threshold, and so is a MultiInference of more than
:data:`MAX_FORWARDED_TASKS` tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, cast

from google.protobuf.message import DecodeError
from servekit_protocol import messages

from gateway.clients.spliced import Spliced, field_one_after, leading_entries

_Examples = TypeVar(
    "_Examples", messages.ClassificationRequest, messages.RegressionRequest
)
_Whole = TypeVar(
    "_Whole",
    messages.ClassificationRequest,
    messages.RegressionRequest,
    messages.MultiInferenceRequest,
)

MAX_FORWARDED_TASKS = 64
"""Most leading tasks a forwarded MultiInference may have: each is read in
Python; more (a hostile message of millions) are parsed whole, as in place."""


@dataclass(slots=True)
class ForwardedExamples(Spliced):
    """A ClassificationRequest or RegressionRequest the gateway forwards
    without parsing its examples; ``model_spec`` is a real ModelSpec, routed
    and rewritten as a parsed request's is."""

    model_spec: messages.ModelSpec
    rest: memoryview

    def leading(self) -> tuple[bytes]:
        return (self.model_spec.SerializeToString(),)


@dataclass(slots=True)
class ForwardedMultiInference(Spliced):
    """A MultiInferenceRequest the gateway forwards without parsing its
    examples; ``tasks`` are real InferenceTasks, checked, routed and
    rewritten as a parsed request's are."""

    tasks: list[messages.InferenceTask]
    rest: memoryview

    def leading(self) -> list[bytes]:
        return [task.SerializeToString() for task in self.tasks]


def read_examples(
    message: memoryview, request_type: type[_Examples]
) -> ForwardedExamples | _Examples:
    """A large Classify or Regress message (``request_type``), read for
    forwarding; parsed whole when its ``model_spec`` is not its one leading
    field.

    Raises:
        DecodeError: the message does not parse; the error is the full
            parse's, so that a client sees what the in-place path gives.
    """
    leading = leading_entries(message, 0)
    if not leading:
        return _parsed_whole(message, request_type)
    start, end = leading[0]
    rest = message[end:]
    spec = messages.ModelSpec()
    try:
        # upb parses any buffer; the stubs say bytes.
        spec.MergeFromString(cast(bytes, message[start:end]))
        if field_one_after(rest):
            return _parsed_whole(message, request_type)
    except DecodeError:
        return _parsed_whole(message, request_type)
    return ForwardedExamples(spec, rest)


def read_multi_inference(
    message: memoryview,
) -> ForwardedMultiInference | messages.MultiInferenceRequest:
    """A large MultiInference message, read for forwarding; parsed whole when
    its tasks are not all at its front, or are more than
    :data:`MAX_FORWARDED_TASKS`.

    Raises:
        DecodeError: the message does not parse (the full parse's error).
    """
    leading = leading_entries(message, MAX_FORWARDED_TASKS)
    if not leading or len(leading) > MAX_FORWARDED_TASKS:
        return _parsed_whole(message, messages.MultiInferenceRequest)
    rest = message[leading[-1][1] :]
    try:
        tasks = [
            messages.InferenceTask.FromString(cast(bytes, message[start:end]))
            for start, end in leading
        ]
        if field_one_after(rest):
            return _parsed_whole(message, messages.MultiInferenceRequest)
    except DecodeError:
        return _parsed_whole(message, messages.MultiInferenceRequest)
    return ForwardedMultiInference(tasks, rest)


def _parsed_whole(message: memoryview, request_type: type[_Whole]) -> _Whole:
    return request_type.FromString(bytes(message))


__all__ = [
    "MAX_FORWARDED_TASKS",
    "ForwardedExamples",
    "ForwardedMultiInference",
    "read_examples",
    "read_multi_inference",
]
