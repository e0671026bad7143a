"""A large message that cannot go to a worker is parsed in place."""

from __future__ import annotations

import errno
from typing import NoReturn

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from modelserver.protocol.grpc.largeexamples import CLASSIFY, ExamplesDecoder
from modelserver.protocol.grpc.largerequests import PredictDecoder
from servekit_protocol import examples as example_codec
from servekit_protocol import messages, segments
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.tensors import from_ndarray


def _no_room(name: str, data: memoryview) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device", name)


def _message() -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["x"].CopyFrom(from_ndarray(np.arange(12.0).reshape(3, 4)))
    return request.SerializeToString()


async def test_a_message_without_room_in_shared_memory_is_parsed_in_place(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker pool is never reached: the hand-over fails first.
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    parsers = BodyParsers()
    try:
        data = _message()
        decoded = await PredictDecoder(parsers, None)(memoryview(data))
    finally:
        parsers.close()
    assert isinstance(decoded, messages.PredictRequest)
    assert decoded == messages.PredictRequest.FromString(data)
    assert "parsed on the event loop" in caplog.text
    assert "No space left on device" in caplog.text


async def test_a_message_parsed_in_place_that_does_not_parse_raises_decode_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    parsers = BodyParsers()
    try:
        with pytest.raises(DecodeError):
            await PredictDecoder(parsers, None)(memoryview(b"\x0a\xff\xff\xff"))
    finally:
        parsers.close()


async def test_an_examples_message_without_room_is_parsed_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segments, "write_bytes", _no_room)
    request = messages.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.CopyFrom(example_codec.from_dicts([{"a": [1.0], "b": [2.0]}]))
    data = request.SerializeToString()
    parsers = BodyParsers()
    try:
        decoded = await ExamplesDecoder(parsers, CLASSIFY, None)(memoryview(data))
    finally:
        parsers.close()
    assert isinstance(decoded, messages.ClassificationRequest)
    assert decoded == request
