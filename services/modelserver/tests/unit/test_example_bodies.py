"""Large ``:classify``/``:regress`` bodies read in a worker, their examples
sent back as columns through a shared memory segment
(modelserver.protocol.rest.examplebodies), real worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import orjson
import pytest
from modelserver import examplecolumns
from modelserver.errors import InvalidInput
from modelserver.protocol.rest import examplebodies
from modelserver.runtimes.base import merged_examples
from modelserver.types import Example, ExampleColumns
from servekit_protocol import segments
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.tensor_limits import TensorLimits


@pytest.fixture(scope="module")
def parsers() -> Iterator[BodyParsers]:
    """One worker that reads every body (threshold of one byte)."""
    running = BodyParsers(workers=1, threshold_bytes=1)
    try:
        yield running
    finally:
        running.close()


def _own_segments() -> list[str]:
    prefix = f"servekit-{os.getpid()}-"
    return [
        name
        for name in os.listdir(segments.default_directory())
        if name.startswith(prefix)
    ]


async def _settled(timeout: float = 10.0) -> list[str]:
    # Unlinking runs in a thread that is not awaited.
    deadline = time.monotonic() + timeout
    while _own_segments() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return _own_segments()


def _body(examples: int) -> bytes:
    rows = [
        {
            "a": [index / 7],
            "n": [index, -index],
            **({"s": ["text", {"b64": "/wA="}]} if index % 3 else {}),
            **({"m": [1]} if index % 5 == 0 else {"m": [2.5]}),
        }
        for index in range(examples)
    ]
    return orjson.dumps(
        {
            "signature_name": "sig",
            "context": {"c": [b"shared".decode()], "a": [9.0]},
            "examples": rows,
        }
    )


def _sorted(examples: list[Example]) -> str:
    return repr([sorted(example.items()) for example in examples])


@pytest.mark.parametrize("examples", [1, 30_000])
async def test_columns_read_in_a_worker_are_the_examples_read_in_place(
    parsers: BodyParsers, examples: int
) -> None:
    body = _body(examples)
    in_place = await examplebodies.decode_examples(
        body, BodyParsers(threshold_bytes=len(body) + 1), None
    )
    name, columns, context = await examplebodies.decode_examples(body, parsers, None)
    assert (name, context) == ("sig", None)
    assert isinstance(columns, ExampleColumns)
    assert not isinstance(in_place[1], ExampleColumns)
    _, merged = merged_examples(in_place[1], in_place[2])
    # The same features and values; the features of a dict come in another
    # order, which no runtime reads (columns are taken by name, and a
    # tf.Example's features are a map).
    assert _sorted(examplecolumns.to_examples(columns)) == _sorted(list(merged))
    assert await _settled() == []


async def test_a_refused_body_is_refused_alike_and_nothing_is_left(
    parsers: BodyParsers,
) -> None:
    for body, limits in [
        (b'{"examples": [{"a": [1.0]},', None),
        (b'{"examples": {"a": [1.0]}}', None),
        (_body(2_000), TensorLimits(max_elements=100)),
    ]:
        with pytest.raises(InvalidInput) as in_place:
            await examplebodies.decode_examples(
                body, BodyParsers(threshold_bytes=len(body) + 1), limits
            )
        with pytest.raises(InvalidInput) as in_worker:
            await examplebodies.decode_examples(body, parsers, limits)
        assert in_worker.value.message == in_place.value.message
    assert await _settled() == []


async def test_a_cancelled_read_removes_its_segments(parsers: BodyParsers) -> None:
    call = asyncio.ensure_future(
        examplebodies.decode_examples(_body(100_000), parsers, None)
    )
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await _settled(timeout=60) == []
