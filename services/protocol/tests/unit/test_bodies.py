"""gzip request bodies: inflated under the size limit."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest
from servekit_protocol.bodies import (
    INFLATE_STEP,
    BodyTooLarge,
    Coding,
    coding_of,
    gunzip,
    inflate,
    is_gzip,
)
from servekit_protocol.errors import InvalidArgument


def test_a_gzip_body_inflates_to_its_bytes() -> None:
    body = b'{"instances": [1.0, 2.0]}'
    assert gunzip(gzip.compress(body), limit=len(body)) == body


def test_the_limit_applies_to_the_inflated_size() -> None:
    body = b"0" * 10_000
    small = gzip.compress(body)
    assert len(small) < 100
    with pytest.raises(BodyTooLarge, match="limit of 9999 bytes") as raised:
        gunzip(small, limit=9_999)
    assert raised.value.status == 413


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [1.0]}', gzip.compress(b'{"instances": [1.0]}')[:-6]],
    ids=["not gzip", "truncated"],
)
def test_a_body_that_does_not_inflate_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="Failed to uncompress") as raised:
        gunzip(body, limit=1_000)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    "value, expected",
    [(b"gzip", True), (b"GZip", True), (b"x-gzip", True), (b"identity", False)],
)
def test_content_encodings_that_name_gzip(value: bytes, expected: bool) -> None:
    assert is_gzip(value) is expected


def test_deflate_is_the_zlib_format() -> None:
    body = b'{"instances": [1.0, 2.0]}'
    assert coding_of(b"deflate") is Coding.DEFLATE
    assert asyncio.run(inflate(zlib.compress(body), Coding.DEFLATE, 100)) == body
    with pytest.raises(InvalidArgument, match="deflated"):
        asyncio.run(inflate(gzip.compress(body), Coding.DEFLATE, 100))


def test_inflate_lets_the_event_loop_run_between_steps() -> None:
    # 64 steps of output: a ticker task must get the loop between them, and the
    # limit is found as soon as the output passes it.
    bomb = gzip.compress(bytes(64 * INFLATE_STEP))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def run() -> None:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        with pytest.raises(BodyTooLarge):
            await inflate(bomb, Coding.GZIP, 16 * INFLATE_STEP)
        inflated = await inflate(bomb, Coding.GZIP, 64 * INFLATE_STEP)
        ticker.cancel()
        assert len(inflated) == 64 * INFLATE_STEP

    asyncio.run(run())
    assert ticks >= 16 + 63
