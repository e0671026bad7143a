"""A large gRPC message whose shared memory segment finds no room goes to its
worker, and its arrays come back, through pipes of their own (through the
pool's pipe, pickled, where none can be made): decoded the same,
refused the same, and never parsed or copied on the event loop's thread.

Real worker processes (spawned, so the failures forced here stay in this
process): the message segment's write fails with ENOSPC, as on a full
``/dev/shm``; the arrays segment's write fails for real in the worker because
a file of its name exists already.
"""

from __future__ import annotations

import errno
import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from modelserver.protocol import carriedarrays
from modelserver.protocol.carriedarrays import CarriedArray
from modelserver.protocol.grpc.largeexamples import CLASSIFY, ExamplesDecoder
from modelserver.protocol.grpc.largerequests import (
    Decoded,
    PredictDecoder,
    SegmentDecoder,
)
from servekit_protocol import examples as example_codec
from servekit_protocol import messages, segments
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.loop_heartbeat import LoopHeartbeat
from servekit_protocol.tensor_limits import TensorLimits
from servekit_protocol.tensors import from_ndarray

LOOP_BUSY_LIMIT = 0.05
"""Most CPU the event loop's thread may spend between two heartbeats while a
large message goes through the pipe: the issue's bound on a stall. The thread
only hands the message's view to the pool and assembles the answer (well
under 1 ms); the pickling copies run in the pool's threads and count in their
CPU time, not the loop's, so load on the machine does not move this figure."""


def _no_room(name: str, data: memoryview) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device", name)


@pytest.fixture
def parsers() -> Iterator[BodyParsers]:
    pool = BodyParsers()
    try:
        yield pool
    finally:
        pool.close()


def _predict(rows: int = 3) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    request.model_spec.signature_name = "serving_default"
    request.output_filter.append("y")
    request.inputs["x"].CopyFrom(from_ndarray(np.arange(rows * 4.0).reshape(rows, 4)))
    request.inputs["n"].CopyFrom(from_ndarray(np.arange(rows, dtype=np.int32)))
    return request


def _with_strings() -> bytes:
    request = _predict()
    text = request.inputs["text"]
    text.dtype = messages.DT_STRING
    text.tensor_shape.dim.add(size=3)
    text.string_val.extend([b"a", b"\xff" * 10, b""])
    return request.SerializeToString()


def _over_the_limits() -> bytes:
    request = _predict()
    request.inputs["x"].tensor_shape.dim[0].size = 1 << 24
    return request.SerializeToString()


def _short_content() -> bytes:
    request = _predict()
    tensor = request.inputs["x"]
    tensor.ClearField("double_val")
    tensor.tensor_content = bytes(3 * 4 * 8 - 8)
    return request.SerializeToString()


CASES: dict[str, Callable[[], bytes]] = {
    "numbers": lambda: _predict().SerializeToString(),
    "string input": _with_strings,
    "over the tensor limits": _over_the_limits,
    "tensor_content short": _short_content,
}


def _fingerprint(decoded: Decoded[Any]) -> tuple[Any, ...]:
    """Everything the servicer sees, arrays down to their bytes."""
    if decoded.request is None:
        return ("error", decoded.error)
    request = decoded.request
    inputs = [
        (
            name,
            array.dtype.str,
            array.shape,
            array.tolist() if array.dtype == object else array.tobytes(),
        )
        for name, array in request.inputs.items()
    ]
    return (request.spec, request.output_filter, inputs)


async def _decode(decoder: SegmentDecoder[Any], data: bytes) -> Any:
    return await decoder(memoryview(data))


LIMITS = TensorLimits(max_elements=1 << 20, max_bytes=1 << 26)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_message_without_room_is_decoded_through_the_pipe_as_through_segments(
    case: str,
    parsers: BodyParsers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = CASES[case]()
    decoder = PredictDecoder(parsers, LIMITS)
    through_segments = await _decode(decoder, data)
    assert not caplog.records
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    with caplog.at_level(logging.WARNING):
        through_the_pipe = await _decode(decoder, data)
    assert isinstance(through_the_pipe, Decoded)
    assert _fingerprint(through_the_pipe) == _fingerprint(through_segments)
    if case == "over the tensor limits":
        assert "the limit is 1048576 elements" in through_the_pipe.error
    [warning] = caplog.records
    assert "through the worker pipe (the message went" in warning.getMessage()
    assert "No space left on device" in warning.getMessage()


async def test_a_message_without_room_that_does_not_parse_raises_decode_error(
    parsers: BodyParsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"\x0a\xff\xff\xff"
    decoder = PredictDecoder(parsers, None)
    with pytest.raises(DecodeError) as through_segments:
        await _decode(decoder, data)
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    with pytest.raises(DecodeError) as through_the_pipe:
        await _decode(decoder, data)
    assert str(through_the_pipe.value) == str(through_segments.value)


async def test_arrays_without_room_come_back_through_the_pipe(
    parsers: BodyParsers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _predict().SerializeToString()
    decoder = PredictDecoder(parsers, None)
    through_segments = await _decode(decoder, data)
    # The worker's write of the arrays segment fails for real (O_EXCL on an
    # existing name) and the worker removes the file, as it would a part
    # written to a full /dev/shm.
    taken = segments.new_path(segments.default_directory(), "taken")
    segments.write_bytes(taken, b"")
    new_path = segments.new_path
    monkeypatch.setattr(
        segments,
        "new_path",
        lambda folder, role: taken if role == "arrays" else new_path(folder, role),
    )
    with caplog.at_level(logging.WARNING):
        through_the_pipe = await _decode(decoder, data)
    assert _fingerprint(through_the_pipe) == _fingerprint(through_segments)
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "A large gRPC message's arrays came back from their worker through a "
        "pipe of their own"
    )


def test_arrays_without_room_or_a_pipe_are_carried_pickled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arrays = {"x": np.arange(12.0).reshape(3, 4)[:, ::2], "n": np.arange(3)}
    taken = segments.new_path(segments.default_directory(), "taken")
    segments.write_bytes(taken, b"")

    def no_pipe(sent: Any) -> NoReturn:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(carriedarrays, "send_back", no_pipe)
    slots, carried = carriedarrays.write_or_carry(taken, arrays)
    assert slots == []
    assert isinstance(carried, dict)
    assert {name: array.array.tobytes() for name, array in carried.items()} == {
        name: array.tobytes() for name, array in arrays.items()
    }


async def test_an_examples_message_without_room_is_decoded_through_the_pipe(
    parsers: BodyParsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = messages.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.CopyFrom(
        example_codec.from_dicts([{"a": [1.0], "b": [2.0]}, {"a": [3.0]}])
    )
    data = request.SerializeToString()
    decoder = ExamplesDecoder(parsers, CLASSIFY, None)
    through_segments = await _decode(decoder, data)
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    through_the_pipe = await _decode(decoder, data)
    assert through_the_pipe.request is not None
    assert through_the_pipe.request.spec == through_segments.request.spec
    columns = through_the_pipe.request.examples
    expected = through_segments.request.examples
    assert columns.rows == expected.rows == 2
    assert list(columns.features) == list(expected.features)
    for name, column in columns.features.items():
        other = expected.features[name]
        assert column.values.tobytes() == other.values.tobytes()
        assert column.lengths.tobytes() == other.lengths.tobytes()
        assert (column.present is None) == (other.present is None)
        if column.present is not None:
            assert column.present.tobytes() == other.present.tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 1024 * 1024, dtype=np.float64).reshape(-1, 4),  # 6 pieces
        np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2],  # not contiguous
        np.array([1 + 2j, 3j], dtype=np.complex64),
        np.array([True, False]),
        np.array(7, dtype=np.int16),
        np.zeros((0, 5), dtype=np.float32),
    ],
    ids=["large", "strided big-endian", "complex", "bool", "0-d", "empty"],
)
def test_carried_arrays_unpickle_to_the_same_arrays(
    array: np.ndarray[Any, Any],
) -> None:
    carried = pickle.loads(pickle.dumps(CarriedArray(array)))
    assert isinstance(carried, CarriedArray)
    assert carried.array.dtype == array.dtype
    assert carried.array.shape == array.shape
    assert carried.array.tobytes() == array.tobytes()
    assert carried.array.flags.c_contiguous
    assert carried.array.flags.writeable


async def test_a_large_message_through_the_pipe_keeps_the_loop_free(
    parsers: BodyParsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _predict(rows=1 << 20).SerializeToString()  # 36 MiB
    decoder = PredictDecoder(parsers, None)
    await _decode(decoder, _predict().SerializeToString())  # workers started
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    busy: list[float] = []
    heartbeat = LoopHeartbeat(0.005, lambda cpu, _lag: busy.append(cpu))
    heartbeat.start()
    try:
        decoded = await _decode(decoder, data)
    finally:
        heartbeat.stop()
    assert decoded.request is not None
    assert decoded.request.inputs["x"].shape == (1 << 20, 4)
    assert len(busy) > 10
    assert max(busy) < LOOP_BUSY_LIMIT
