"""Large bodies parsed in worker processes (servekit_protocol.json_codec.offload)."""

from __future__ import annotations

import os

import pytest
from servekit_protocol import json_codec
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.offload import BodyParsers, ParserUnavailable


def _process_id(body: bytes) -> int:
    del body
    return os.getpid()


def _exit(body: bytes) -> None:
    del body
    os._exit(3)


async def test_bodies_under_the_threshold_are_parsed_in_place() -> None:
    parsers = BodyParsers(threshold_bytes=100)
    try:
        assert await parsers.run(99, _process_id, b"") == os.getpid()
    finally:
        parsers.close()


async def test_larger_bodies_are_parsed_in_a_worker_process() -> None:
    parsers = BodyParsers(threshold_bytes=100, workers=1)
    try:
        assert await parsers.run(100, _process_id, b"") != os.getpid()
        body = b'{"instances": [1.0, 2.0]}'
        specs = {"x": json_codec.TensorSpec("DT_FLOAT", None)}
        parsed = await parsers.run(
            100, json_codec.parse_predict_request, body, specs, None
        )
        assert parsed.inputs["x"].tolist() == [1.0, 2.0]
        # The worker's error comes back as it was raised.
        with pytest.raises(InvalidArgument, match="JSON Parse error"):
            await parsers.run(
                100, json_codec.parse_predict_request, b"{not json", specs, None
            )
    finally:
        parsers.close()


async def test_a_dead_worker_is_unavailable_and_the_next_call_gets_a_new_one() -> None:
    parsers = BodyParsers(threshold_bytes=1, workers=1)
    try:
        with pytest.raises(ParserUnavailable) as raised:
            await parsers.run(10, _exit, b"")
        assert raised.value.status == 503
        assert await parsers.run(10, _process_id, b"") != os.getpid()
    finally:
        parsers.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BodyParsers(threshold_bytes=0)
