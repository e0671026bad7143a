from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from gateway.clients.arrays import ArrayRequest
from gateway.codecs.v2 import parse_infer_request
from gateway.codecs.v2_grpc import (
    PREDICT_ARRAY,
    encode_infer_message,
    encode_infer_piped,
    encode_infer_segment,
    format_model_infer,
    parameters_dict,
    parse_model_infer,
    read_infer_message,
    read_infer_segment,
)
from gateway.errors import InvalidInput
from servekit_protocol import messages, segments
from servekit_protocol import oip_messages as oip
from servekit_protocol.descriptors import Descriptors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messagepipe import MessagePipe, MessagePipes
from servekit_protocol.tensor_limits import TensorLimits

Result = TypeVar("Result")


@pytest.fixture
def descriptors() -> Iterator[Descriptors]:
    table = Descriptors()
    yield table
    table.close()


def _request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m", id="abc")
    request.parameters["signature_name"].string_param = "other"
    request.parameters["priority"].int64_param = 3
    return request


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("INT8", "int_contents", [-128, 127], np.int8),
        ("INT32", "int_contents", [-5, 7], np.int32),
        ("INT64", "int64_contents", [-(2**40), 1], np.int64),
        ("UINT16", "uint_contents", [0, 65535], np.uint16),
        ("UINT64", "uint64_contents", [2**64 - 1, 0], np.uint64),
        ("FP32", "fp32_contents", [0.5, -1.5], np.float32),
        ("FP64", "fp64_contents", [1e300, 2.0], np.float64),
    ],
)
def test_typed_contents_become_arrays(
    datatype: str, field: str, values: list[object], dtype: type
) -> None:
    request = _request()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    parsed = parse_model_infer(request)
    assert parsed.inputs["x"].dtype == np.dtype(dtype)
    assert parsed.inputs["x"].tolist() == values
    assert parsed.request_id == "abc"
    assert parsed.parameters == {"signature_name": "other", "priority": 3}


def test_out_of_range_values_for_narrow_types_are_refused() -> None:
    request = _request()
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[1])
    tensor.contents.int_contents.append(300)
    with pytest.raises(InvalidInput, match="out of range"):
        parse_model_infer(request)


def test_raw_contents_match_inputs_by_position() -> None:
    request = _request()
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<2f", 1.5, 2.5))
    request.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    parsed = parse_model_infer(request, {"x": np.dtype(np.float64)})
    assert parsed.inputs["x"].dtype == np.float64
    assert parsed.inputs["x"].tolist() == [1.5, 2.5]
    assert parsed.inputs["s"].tolist() == [b"hi"]


def test_raw_and_typed_contents_do_not_mix() -> None:
    request = _request()
    first = request.inputs.add(name="x", datatype="FP32", shape=[1])
    first.contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(struct.pack("<f", 1.0))
    with pytest.raises(InvalidInput, match="contents must be empty"):
        parse_model_infer(request)


def test_fp16_needs_raw_contents() -> None:
    request = _request()
    request.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        parse_model_infer(request)


def test_answers_use_raw_or_typed_contents() -> None:
    parsed = parse_infer_request(
        {
            "id": "q",
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        }
    )
    outputs = {
        "y": np.array([[1.5, 2.5]], dtype=np.float64),
        "w": np.array([b"a"], dtype=object),
    }
    typed = format_model_infer("m", "3", outputs, parsed, raw=False)
    assert typed.id == "q"
    assert typed.model_version == "3"
    assert not typed.raw_output_contents
    assert [(o.name, o.datatype, list(o.shape)) for o in typed.outputs] == [
        ("y", "FP64", [1, 2]),
        ("w", "BYTES", [1]),
    ]
    assert list(typed.outputs[0].contents.fp64_contents) == [1.5, 2.5]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"a"]
    raw = format_model_infer("m", "3", outputs, parsed, raw=True)
    assert list(raw.raw_output_contents) == [
        struct.pack("<2d", 1.5, 2.5),
        b"\x01\x00\x00\x00a",
    ]
    # FP16 has no typed field: the whole answer goes raw.
    half = format_model_infer(
        "m", "3", {"h": np.array([1.0], dtype=np.float16), **outputs}, parsed, False
    )
    assert len(half.raw_output_contents) == 3


def test_classification_over_grpc() -> None:
    request = _request()
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(1)
    output = request.outputs.add(name="p")
    output.parameters["classification"].int64_param = 1
    parsed = parse_model_infer(request)
    answer = format_model_infer("m", "1", {"p": np.array([0.1, 0.9])}, parsed, False)
    assert list(answer.outputs[0].contents.bytes_contents) == [b"0.900000:1"]


def _large_request(raw: bool) -> oip.ModelInferRequest:
    request = _request()
    values = np.arange(12, dtype=np.float32)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 4])
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    if raw:
        request.raw_input_contents.append(struct.pack("<I", 2) + b"hi")
    else:
        request.inputs[1].contents.bytes_contents.append(b"hi")
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    return request


@pytest.mark.parametrize("raw", [False, True])
def test_a_message_read_in_a_worker_is_the_one_parsed_in_place(raw: bool) -> None:
    request = _large_request(raw)
    data = request.SerializeToString()
    head = read_infer_message(data)
    assert (head.model_name, head.model_version, head.raw) == ("m", "", raw)
    assert head.parameters == parameters_dict(request.parameters)
    wanted = {"x": np.dtype(np.float64)}
    encoded = encode_infer_message(data, wanted, TensorLimits())
    in_place = parse_model_infer(request, wanted)
    expected = ArrayRequest(in_place.inputs, output_filter=("y",)).to_proto()
    expected.ClearField("model_spec")
    assert messages.PredictRequest.FromString(encoded.message) == expected
    assert encoded.request.inputs == {}
    assert encoded.request.outputs == in_place.outputs == ["y"]
    assert encoded.request.requested == in_place.requested
    assert encoded.request.request_id == in_place.request_id == "abc"


def test_a_message_over_the_tensor_limits_is_refused_in_the_worker() -> None:
    data = _large_request(raw=True).SerializeToString()
    with pytest.raises(InvalidArgument, match="13 elements"):
        encode_infer_message(data, None, TensorLimits(max_elements=12))


@pytest.mark.parametrize("raw", [False, True])
def test_a_message_in_a_segment_encodes_as_its_bytes_do(raw: bool) -> None:
    data = _large_request(raw).SerializeToString()
    message = segments.new_path(segments.default_directory(), "message")
    predict = segments.new_path(segments.default_directory(), "predict")
    wanted = {"x": np.dtype(np.float64)}
    try:
        segments.write_bytes(message, data)
        assert read_infer_segment(message) == read_infer_message(data)
        written = encode_infer_segment(message, predict, wanted, TensorLimits())
        with segments.mapped(predict) as view:
            in_segment = bytes(view)
    finally:
        segments.unlink(message)
        segments.unlink(predict)
    encoded = encode_infer_message(data, wanted, TensorLimits())
    assert in_segment == encoded.message
    assert written.size == len(encoded.message)
    assert written.request == encoded.request


def test_a_segment_over_the_tensor_limits_writes_no_predict() -> None:
    data = _large_request(raw=False).SerializeToString()
    message = segments.new_path(segments.default_directory(), "message")
    predict = segments.new_path(segments.default_directory(), "predict")
    try:
        segments.write_bytes(message, data)
        with pytest.raises(InvalidArgument, match="13 elements"):
            encode_infer_segment(message, predict, None, TensorLimits(max_elements=12))
        assert not Path(predict).exists()
    finally:
        segments.unlink(message)


def test_a_predict_with_no_room_in_shared_memory_comes_back_itself() -> None:
    data = _large_request(raw=False).SerializeToString()
    message = segments.new_path(segments.default_directory(), "message")
    # A segment in a folder that does not exist: writing it fails as a full
    # /dev/shm does, with an OSError.
    missing = segments.new_path(segments.default_directory(), "folder")
    predict = segments.new_path(missing, "predict")
    try:
        segments.write_bytes(message, data)
        written = encode_infer_segment(message, predict, None, TensorLimits())
    finally:
        segments.unlink(message)
    encoded = encode_infer_message(data, None, TensorLimits())
    assert written.message == encoded.message
    assert written.size == len(encoded.message)
    assert written.request == encoded.request


@pytest.mark.parametrize("raw", [False, True])
def test_a_message_through_its_pipes_encodes_as_its_bytes_do(
    raw: bool, descriptors: Descriptors
) -> None:
    # This process plays the worker: it takes the pipes' ends as a worker
    # does, through the pickled handles.
    data = _large_request(raw).SerializeToString()
    wanted = {"x": np.dtype(np.float64)}
    pipes = MessagePipes(memoryview(data), descriptors)
    sending = MessagePipe(memoryview(data), descriptors)
    try:
        head = read_infer_message(pickle.loads(pickle.dumps(sending.message)))
    finally:
        sending.close()
    written, arrays = asyncio.run(
        pipes.exchange(
            _answered(
                encode_infer_piped,
                pickle.loads(pickle.dumps(pipes.message)),
                pickle.loads(pickle.dumps(pipes.arrays)),
                wanted,
                TensorLimits(),
            )
        )
    )
    encoded = encode_infer_message(data, wanted, TensorLimits())
    assert head == read_infer_message(data)
    assert arrays[PREDICT_ARRAY].tobytes() == encoded.message
    assert written.size == len(encoded.message)
    assert written.request == encoded.request
    assert written.message == b""


def test_a_piped_message_over_the_tensor_limits_sends_no_predict(
    descriptors: Descriptors,
) -> None:
    data = _large_request(raw=False).SerializeToString()
    pipes = MessagePipes(memoryview(data), descriptors)
    refused = _answered(
        encode_infer_piped,
        pickle.loads(pickle.dumps(pipes.message)),
        pickle.loads(pickle.dumps(pipes.arrays)),
        None,
        TensorLimits(max_elements=12),
    )
    with pytest.raises(InvalidArgument, match="13 elements"):
        asyncio.run(pipes.exchange(refused))


async def _answered(function: Callable[..., Result], *args: Any) -> Result:
    # In a thread, as the pool's worker answers while the pipes' threads run.
    return await asyncio.to_thread(function, *args)
