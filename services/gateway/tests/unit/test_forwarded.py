"""A forwarded Predict parses, on the backend, to what the in-place path sends."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from gateway.clients.forwarded import ForwardedPredict, PredictHead, read_predict
from gateway.context import apply_target
from gateway.routing.router import Target
from google.protobuf.message import DecodeError
from servekit_protocol import messages, tensors
from servekit_protocol.tensor_limits import declared_size

from tests.support.forwarded_messages import (
    TARGETS,
    field,
    model_spec,
    spec_field,
)

CLIENT_SPECS = {
    "name only": model_spec(),
    "version": model_spec(version=7),
    "version 0": model_spec(version=0),
    "label": model_spec(label="stable"),
    "signature": model_spec(signature="predict_proba"),
    "version and signature": model_spec(version=3, signature="s"),
    "label and signature": model_spec(label="canary", signature="s"),
}


def _request(
    spec: messages.ModelSpec | None, inputs: int = 1
) -> messages.PredictRequest:
    request = messages.PredictRequest()
    if spec is not None:
        request.model_spec.CopyFrom(spec)
    rng = np.random.default_rng(5)
    for index in range(inputs):
        tensor = request.inputs[f"x{index}"]
        tensor.dtype = messages.DT_FLOAT
        tensor.tensor_shape.dim.add(size=64)
        tensor.tensor_shape.dim.add(size=16)
        tensor.float_val.extend(rng.normal(size=64 * 16).astype(np.float32))
    request.output_filter.append("y")
    return request


def _sent_in_place(data: bytes, target: Target) -> messages.PredictRequest:
    # What the gateway sends after parsing the message whole.
    request = messages.PredictRequest.FromString(data)
    apply_target(request.model_spec, target)
    return request


def _forwarded(data: bytes) -> ForwardedPredict:
    read = read_predict(memoryview(data))
    assert isinstance(read, ForwardedPredict)
    return read


@pytest.mark.parametrize(
    ("client", "target"), list(itertools.product(CLIENT_SPECS, TARGETS))
)
def test_the_forwarded_message_is_the_one_sent_in_place(
    client: str, target: str
) -> None:
    data = _request(CLIENT_SPECS[client]).SerializeToString()
    forwarded = _forwarded(data)
    assert forwarded.model_spec == CLIENT_SPECS[client]
    apply_target(forwarded.model_spec, TARGETS[target])
    sent = forwarded.SerializeToString()
    expected = _sent_in_place(data, TARGETS[target])
    assert messages.PredictRequest.FromString(sent) == expected
    # One input: the same bytes as serializing the parsed message again.
    assert sent == expected.SerializeToString()


def test_several_inputs_and_a_second_target_parse_equal() -> None:
    data = _request(model_spec(version=7, signature="s"), inputs=3).SerializeToString()
    forwarded = _forwarded(data)
    for target in (TARGETS["label"], TARGETS["latest"]):
        # The canary fallback rewrites the spec a second time.
        apply_target(forwarded.model_spec, target)
        sent = messages.PredictRequest.FromString(forwarded.SerializeToString())
        assert sent == _sent_in_place(data, target)


def test_a_copy_has_its_own_spec() -> None:
    forwarded = _forwarded(_request(model_spec()).SerializeToString())
    mirrored = forwarded.copy()
    apply_target(mirrored.model_spec, TARGETS["other model"])
    assert forwarded.model_spec.name == "m"
    assert mirrored.model_spec.name == "n"


def test_tensor_heads_declare_what_the_parsed_tensors_declare() -> None:
    request = _request(model_spec(), inputs=2)
    text = request.inputs["text"]
    text.dtype = messages.DT_STRING
    text.tensor_shape.dim.add(size=3)
    text.string_val.extend([b"a", b"\xff" * 10, b""])
    unknown = request.inputs["unknown rank"]
    unknown.dtype = messages.DT_INT64
    unknown.tensor_shape.unknown_rank = True
    data = request.SerializeToString()
    forwarded = _forwarded(data)
    assert set(forwarded.inputs) == set(request.inputs)
    for name, tensor in request.inputs.items():
        head = forwarded.inputs[name]
        if tensor.tensor_shape.unknown_rank:
            assert head.tensor_shape.unknown_rank
        else:
            assert declared_size(head) == declared_size(tensor)
        # Only the declared fields are kept, not a copy of the values.
        assert head.ByteSize() < 64


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            _request(None).SerializeToString() + spec_field(model_spec(version=3)),
            id="spec after the inputs",
        ),
        pytest.param(
            spec_field(model_spec())
            + _request(model_spec(version=3)).SerializeToString(),
            id="spec twice",
        ),
        pytest.param(b"", id="empty"),
        pytest.param(_request(None).SerializeToString(), id="no spec"),
    ],
)
def test_a_message_without_one_leading_spec_is_parsed_whole(data: bytes) -> None:
    read = read_predict(memoryview(data))
    assert isinstance(read, messages.PredictRequest)
    assert read == messages.PredictRequest.FromString(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_request(model_spec()).SerializeToString()[:-7], id="truncated"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f" + bytes(64), id="spec too long"),
        pytest.param(
            _request(model_spec()).SerializeToString() + b"\x1a\x02\xff\xfe",
            id="output filter not UTF-8",
        ),
        pytest.param(
            spec_field(model_spec()) + b"\x12\x05\x0a\x03\xff\xfe\xfd",
            id="input name not UTF-8",
        ),
    ],
)
def test_a_bad_message_fails_as_the_full_parse_fails(data: bytes) -> None:
    with pytest.raises(DecodeError) as whole:
        messages.PredictRequest.FromString(data)
    with pytest.raises(DecodeError) as read:
        read_predict(memoryview(data))
    assert str(read.value) == str(whole.value)


def _tensor_bytes(*fields: bytes) -> bytes:
    return b"".join(fields)


def _entry(name: bytes, tensor: bytes) -> bytes:
    return field(2, 2, field(1, 2, name) + field(2, 2, tensor))


_SHAPE_2x3 = messages.TensorShapeProto(
    dim=[messages.TensorShapeProto.Dim(size=2), messages.TensorShapeProto.Dim(size=3)]
).SerializeToString()
_SHAPE_NAMED = messages.TensorShapeProto(
    dim=[messages.TensorShapeProto.Dim(size=5, name="rows")]
).SerializeToString()
_DOUBLES = field(6, 2, np.arange(6, dtype="<f8").tobytes())
_DTYPE_DOUBLE = field(1, 0, tensors.varint(messages.DT_DOUBLE))
WALKED = {
    "packed values": _entry(
        b"x", _tensor_bytes(_DTYPE_DOUBLE, field(2, 2, _SHAPE_2x3), _DOUBLES)
    ),
    "tensor_content": _entry(
        b"x",
        _tensor_bytes(_DTYPE_DOUBLE, field(2, 2, _SHAPE_2x3), field(4, 2, bytes(48))),
    ),
    "values one field each": _entry(
        b"x",
        _tensor_bytes(
            _DTYPE_DOUBLE,
            field(2, 2, _SHAPE_2x3),
            *(field(6, 1, bytes(8)) for _ in range(100)),
        ),
    ),
    "shape twice, merged": _entry(
        b"x",
        _tensor_bytes(
            field(2, 2, _SHAPE_2x3), _DTYPE_DOUBLE, field(2, 2, _SHAPE_NAMED)
        ),
    ),
    "dtype twice, the last kept": _entry(
        b"x",
        _tensor_bytes(field(1, 0, b"\x09"), _DTYPE_DOUBLE, field(2, 2, _SHAPE_2x3)),
    ),
    "negative dtype": _entry(b"x", field(1, 0, b"\xff" * 9 + b"\x01")),
    "strings": _entry(
        b"s",
        _tensor_bytes(
            field(1, 0, tensors.varint(messages.DT_STRING)),
            field(2, 2, _SHAPE_2x3),
            *(field(8, 2, b"v" * n) for n in range(6)),
        ),
    ),
    "the same name twice, the last kept": _entry(b"x", _DTYPE_DOUBLE)
    + _entry(b"x", field(1, 0, tensors.varint(messages.DT_FLOAT))),
    "two inputs and unknown fields": _entry(b"a", _DTYPE_DOUBLE)
    + field(9, 0, b"\x96\x01")
    + field(10, 1, bytes(8))
    + field(11, 5, bytes(4))
    + field(12, 2, b"\xff\xff")
    + _entry(b"b", _tensor_bytes(field(13, 0, b"\x01"), _DTYPE_DOUBLE))
    + field(3, 2, "名前".encode()),
    "an entry without a key or a value": field(2, 2, b"")
    + field(2, 2, field(1, 2, b"only a key")),
    "a group": _entry(b"x", _DTYPE_DOUBLE) + b"\x7b" + b"\x7c",
    "dtype as a fixed32": _entry(b"x", field(1, 5, bytes(4))),
}


@pytest.mark.parametrize("rest", list(WALKED.values()), ids=list(WALKED))
def test_walked_tensor_heads_are_the_head_parses(rest: bytes) -> None:
    data = spec_field(model_spec(version=3)) + rest
    forwarded = _forwarded(data)
    assert bytes(forwarded.rest) == rest
    parsed = PredictHead.FromString(rest)
    assert set(forwarded.inputs) == set(parsed.inputs)
    for name, tensor in parsed.inputs.items():
        head = forwarded.inputs[name]
        assert head.dtype == tensor.dtype
        assert head.tensor_shape == tensor.tensor_shape
        assert list(head.string_val) == list(tensor.string_val)
        # Only the declared fields are kept, not a copy of the values.
        assert head.ByteSize() < 128
