"""A forwarded Classify, Regress or MultiInference parses, on the backend, to
what the in-place path sends."""

from __future__ import annotations

import itertools

import pytest
from gateway.clients.forwarded import forwarding_decoders
from gateway.clients.forwarded_examples import (
    MAX_FORWARDED_TASKS,
    ForwardedExamples,
    ForwardedMultiInference,
    read_examples,
    read_multi_inference,
)
from gateway.clients.spliced import (
    MAX_FIELD_NUMBER,
    MAX_WALKED_FIELDS,
    FieldOneHead,
    field_one_after,
)
from gateway.clients.wire import FIXED32, VARINT
from gateway.context import apply_target
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.services import PREDICTION_SERVICE

from tests.support.forwarded_messages import LENGTH_DELIMITED, field, model_spec
from tests.support.forwarded_messages import TARGETS as ALL_TARGETS

ExamplesType = type[messages.ClassificationRequest] | type[messages.RegressionRequest]
EXAMPLES_TYPES: dict[str, ExamplesType] = {
    "classify": messages.ClassificationRequest,
    "regress": messages.RegressionRequest,
}
TARGETS = {
    name: ALL_TARGETS[name] for name in ("latest", "version", "label", "other model")
}
CLIENT_SPECS = {
    "name only": model_spec(),
    "version": model_spec(version=7),
    "label and signature": model_spec(label="stable", signature="s"),
}


def _input(count: int = 200, context: bool = False) -> messages.Input:
    model_input = messages.Input()
    examples = (
        model_input.example_list_with_context.examples
        if context
        else model_input.example_list.examples
    )
    for index in range(count):
        example = examples.add()
        example.features.feature["x"].float_list.value.extend([index, 0.5])
        example.features.feature["name"].bytes_list.value.append(b"row %d" % index)
    if context:
        shared = model_input.example_list_with_context.context.features.feature
        shared["c"].int64_list.value.append(3)
    return model_input


def _examples_request(
    request_type: ExamplesType,
    spec: messages.ModelSpec | None,
    context: bool = False,
) -> messages.ClassificationRequest | messages.RegressionRequest:
    request = request_type()
    if spec is not None:
        request.model_spec.CopyFrom(spec)
    request.input.CopyFrom(_input(context=context))
    return request


def _multi(
    specs: list[messages.ModelSpec],
    methods: tuple[str, ...] = ("tensorflow/serving/classify",),
) -> messages.MultiInferenceRequest:
    request = messages.MultiInferenceRequest()
    for spec, method in zip(specs, itertools.cycle(methods), strict=False):
        request.tasks.add(model_spec=spec, method_name=method)
    request.input.CopyFrom(_input())
    return request


@pytest.mark.parametrize("context", [False, True], ids=["examples", "with context"])
@pytest.mark.parametrize(
    ("kind", "client", "target"),
    list(itertools.product(EXAMPLES_TYPES, CLIENT_SPECS, TARGETS)),
)
def test_a_forwarded_examples_request_is_the_one_sent_in_place(
    kind: str, client: str, target: str, context: bool
) -> None:
    request_type = EXAMPLES_TYPES[kind]
    request = _examples_request(request_type, CLIENT_SPECS[client], context)
    data = request.SerializeToString()
    forwarded = read_examples(memoryview(data), request_type)
    assert isinstance(forwarded, ForwardedExamples)
    assert forwarded.model_spec == CLIENT_SPECS[client]
    apply_target(forwarded.model_spec, TARGETS[target])
    sent = forwarded.SerializeToString()
    apply_target(request.model_spec, TARGETS[target])
    # One spec and one input: the very bytes of serializing it again.
    assert sent == request.SerializeToString()
    framed = b"".join(forwarded.framed())
    assert framed[0] == 0
    assert int.from_bytes(framed[1:5], "big") == len(sent)
    assert framed[5:] == sent


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_forwarded_multi_inference_is_the_one_sent_in_place(target: str) -> None:
    specs = [model_spec(version=3), model_spec(version=3, signature="r")]
    request = _multi(
        specs, ("tensorflow/serving/classify", "tensorflow/serving/regress")
    )
    data = request.SerializeToString()
    forwarded = read_multi_inference(memoryview(data))
    assert isinstance(forwarded, ForwardedMultiInference)
    assert list(forwarded.tasks) == list(request.tasks)
    for task in (*forwarded.tasks, *request.tasks):
        apply_target(task.model_spec, TARGETS[target])
    assert forwarded.SerializeToString() == request.SerializeToString()


def test_the_rest_is_a_view_of_the_received_message() -> None:
    data = bytearray(
        _examples_request(messages.RegressionRequest, model_spec()).SerializeToString()
    )
    forwarded = read_examples(memoryview(data), messages.RegressionRequest)
    assert isinstance(forwarded, ForwardedExamples)
    assert forwarded.rest.obj is data


SPEC = model_spec().SerializeToString()
EXAMPLES_WHOLE = {
    "spec last": field(2, LENGTH_DELIMITED, _input().SerializeToString())
    + field(1, LENGTH_DELIMITED, SPEC),
    "spec twice": field(1, LENGTH_DELIMITED, SPEC)
    + field(1, LENGTH_DELIMITED, model_spec(version=2).SerializeToString())
    + field(2, LENGTH_DELIMITED, _input().SerializeToString()),
    "spec around the input": field(1, LENGTH_DELIMITED, SPEC)
    + field(2, LENGTH_DELIMITED, _input().SerializeToString())
    + field(1, LENGTH_DELIMITED, SPEC),
    "no spec": field(2, LENGTH_DELIMITED, _input().SerializeToString()),
    "empty": b"",
}


@pytest.mark.parametrize("kind", list(EXAMPLES_TYPES))
@pytest.mark.parametrize("case", list(EXAMPLES_WHOLE))
def test_an_examples_request_without_one_leading_spec_is_parsed_whole(
    kind: str, case: str
) -> None:
    data = EXAMPLES_WHOLE[case]
    request_type = EXAMPLES_TYPES[kind]
    read = read_examples(memoryview(data), request_type)
    assert isinstance(read, request_type)
    assert read == request_type.FromString(data)


def _task(name: str = "m") -> bytes:
    return messages.InferenceTask(
        model_spec=model_spec(name=name), method_name="tensorflow/serving/regress"
    ).SerializeToString()


MULTI_WHOLE = {
    "task last": field(1, LENGTH_DELIMITED, _task())
    + field(2, LENGTH_DELIMITED, _input().SerializeToString())
    + field(1, LENGTH_DELIMITED, _task("n")),
    "no leading task": field(2, LENGTH_DELIMITED, _input().SerializeToString())
    + field(1, LENGTH_DELIMITED, _task()),
    "no task": field(2, LENGTH_DELIMITED, _input().SerializeToString()),
    "too many tasks": field(1, LENGTH_DELIMITED, _task()) * (MAX_FORWARDED_TASKS + 1)
    + field(2, LENGTH_DELIMITED, _input().SerializeToString()),
}


@pytest.mark.parametrize("case", list(MULTI_WHOLE))
def test_a_multi_inference_without_its_tasks_in_front_is_parsed_whole(
    case: str,
) -> None:
    data = MULTI_WHOLE[case]
    read = read_multi_inference(memoryview(data))
    assert isinstance(read, messages.MultiInferenceRequest)
    assert read == messages.MultiInferenceRequest.FromString(data)


def test_the_most_tasks_are_forwarded() -> None:
    data = field(1, LENGTH_DELIMITED, _task()) * MAX_FORWARDED_TASKS + field(
        2, LENGTH_DELIMITED, _input().SerializeToString()
    )
    read = read_multi_inference(memoryview(data))
    assert isinstance(read, ForwardedMultiInference)
    assert len(read.tasks) == MAX_FORWARDED_TASKS


def _valid_examples() -> bytes:
    return _examples_request(
        messages.ClassificationRequest, model_spec()
    ).SerializeToString()


BAD = {
    "truncated": _valid_examples()[:-7],
    "spec too long": b"\x0a\xff\xff\xff\xff\x0f" + bytes(64),
    "name not UTF-8": field(1, LENGTH_DELIMITED, b"\x0a\x03\xff\xfe\xfd")
    + field(2, LENGTH_DELIMITED, _input().SerializeToString()),
    "bad field after the input": _valid_examples() + b"\x1a\xff\xff\xff\xff\x0f",
    "method name not UTF-8": field(1, LENGTH_DELIMITED, b"\x12\x02\xff\xfe")
    + field(2, LENGTH_DELIMITED, _input().SerializeToString()),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_message_fails_as_the_full_parse_fails(case: str) -> None:
    data = BAD[case]
    for request_type in EXAMPLES_TYPES.values():
        with pytest.raises(DecodeError) as whole:
            request_type.FromString(data)
        with pytest.raises(DecodeError) as read:
            read_examples(memoryview(data), request_type)
        assert str(read.value) == str(whole.value)
    with pytest.raises(DecodeError) as whole:
        messages.MultiInferenceRequest.FromString(data)
    with pytest.raises(DecodeError) as read:
        read_multi_inference(memoryview(data))
    assert str(read.value) == str(whole.value)


def test_every_forwarded_method_has_a_decoder_from_the_threshold() -> None:
    decoders = forwarding_decoders(1 << 20)
    assert set(decoders) == {
        f"/{PREDICTION_SERVICE}/{method}"
        for method in ("Predict", "Classify", "Regress", "MultiInference")
    }
    assert {decoder.threshold_bytes for decoder in decoders.values()} == {1 << 20}


REST_CASES = {
    "the input": field(2, LENGTH_DELIMITED, _input().SerializeToString()),
    "a field 1 after": field(2, LENGTH_DELIMITED, b"")
    + field(1, LENGTH_DELIMITED, b"\x0a\x01m"),
    "field 1 as a varint": field(1, VARINT, b"\x05"),
    "field 1 past the walked fields": field(3, VARINT, b"\x01")
    * (MAX_WALKED_FIELDS + 1)
    + field(1, LENGTH_DELIMITED, b""),
    "many fields, no field 1": field(3, FIXED32, b"\x00" * 4) * (MAX_WALKED_FIELDS + 1),
    "the largest field number": field(MAX_FIELD_NUMBER, VARINT, b"\x01"),
    "empty": b"",
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_field_one_after_agrees_with_upb(case: str) -> None:
    rest = REST_CASES[case]
    assert field_one_after(memoryview(rest)) == bool(
        FieldOneHead.FromString(rest).entries
    )


@pytest.mark.parametrize(
    "rest",
    [
        field(MAX_FIELD_NUMBER + 1, VARINT, b"\x01"),
        field(3, 3, b""),  # a group start, never closed
        field(2, LENGTH_DELIMITED, b"abc")[:-1],
    ],
)
def test_field_one_after_fails_as_upb_fails(rest: bytes) -> None:
    with pytest.raises(DecodeError) as whole:
        FieldOneHead.FromString(rest)
    with pytest.raises(DecodeError) as walked:
        field_one_after(memoryview(rest))
    assert str(walked.value) == str(whole.value)
