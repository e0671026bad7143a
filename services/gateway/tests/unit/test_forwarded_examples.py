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
from gateway.context import apply_target
from gateway.routing.router import Target
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.services import PREDICTION_SERVICE

ExamplesType = type[messages.ClassificationRequest] | type[messages.RegressionRequest]
EXAMPLES_TYPES: dict[str, ExamplesType] = {
    "classify": messages.ClassificationRequest,
    "regress": messages.RegressionRequest,
}
TARGETS = {
    "latest": Target("m", ("b:1",), None, None, "default"),
    "version": Target("m", ("b:1",), 4, None, "explicit"),
    "label": Target("m", ("b:1",), None, "canary", "canary"),
    "other model": Target("n", ("b:1",), 2, None, "stable"),
}


def _spec(**fields: object) -> messages.ModelSpec:
    spec = messages.ModelSpec(name=str(fields.get("name", "m")))
    if "version" in fields:
        spec.version.value = int(fields["version"])  # type: ignore[call-overload]
    if "label" in fields:
        spec.version_label = str(fields["label"])
    if "signature" in fields:
        spec.signature_name = str(fields["signature"])
    return spec


CLIENT_SPECS = {
    "name only": _spec(),
    "version": _spec(version=7),
    "label and signature": _spec(label="stable", signature="s"),
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
    specs = [_spec(version=3), _spec(version=3, signature="r")]
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
        _examples_request(messages.RegressionRequest, _spec()).SerializeToString()
    )
    forwarded = read_examples(memoryview(data), messages.RegressionRequest)
    assert isinstance(forwarded, ForwardedExamples)
    assert forwarded.rest.obj is data


def _field_one(value: bytes) -> bytes:
    assert len(value) < 0x80
    return b"\x0a" + bytes((len(value),)) + value


def _input_field(model_input: messages.Input) -> bytes:
    value = model_input.SerializeToString()
    header = bytearray(b"\x12")
    size = len(value)
    while size > 0x7F:
        header.append((size & 0x7F) | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + value


SPEC = _spec().SerializeToString()
EXAMPLES_WHOLE = {
    "spec last": _input_field(_input()) + _field_one(SPEC),
    "spec twice": _field_one(SPEC)
    + _field_one(_spec(version=2).SerializeToString())
    + _input_field(_input()),
    "spec around the input": _field_one(SPEC)
    + _input_field(_input())
    + _field_one(SPEC),
    "no spec": _input_field(_input()),
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
        model_spec=_spec(name=name), method_name="tensorflow/serving/regress"
    ).SerializeToString()


MULTI_WHOLE = {
    "task last": _field_one(_task()) + _input_field(_input()) + _field_one(_task("n")),
    "no leading task": _input_field(_input()) + _field_one(_task()),
    "no task": _input_field(_input()),
    "too many tasks": _field_one(_task()) * (MAX_FORWARDED_TASKS + 1)
    + _input_field(_input()),
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
    data = _field_one(_task()) * MAX_FORWARDED_TASKS + _input_field(_input())
    read = read_multi_inference(memoryview(data))
    assert isinstance(read, ForwardedMultiInference)
    assert len(read.tasks) == MAX_FORWARDED_TASKS


def _valid_examples() -> bytes:
    return _examples_request(
        messages.ClassificationRequest, _spec()
    ).SerializeToString()


BAD = {
    "truncated": _valid_examples()[:-7],
    "spec too long": b"\x0a\xff\xff\xff\xff\x0f" + bytes(64),
    "name not UTF-8": _field_one(b"\x0a\x03\xff\xfe\xfd") + _input_field(_input()),
    "bad field after the input": _valid_examples() + b"\x1a\xff\xff\xff\xff\x0f",
    "method name not UTF-8": _field_one(b"\x12\x02\xff\xfe") + _input_field(_input()),
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
