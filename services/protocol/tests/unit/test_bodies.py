"""gzip request bodies: inflated under the size limit."""

from __future__ import annotations

import asyncio
import gzip
import random
import time
import zlib

import pytest
from servekit_protocol import inflating
from servekit_protocol.bodies import (
    BodyTooLarge,
    Coding,
    coding_of,
    gunzip,
    inflate,
    is_gzip,
)
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.inflating import STEP


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


def test_a_bomb_is_inflated_off_the_event_loop() -> None:
    # 64 MiB of zeros in 64 KiB of gzip: inflated in one go on this thread,
    # then by inflate, whose steps but the first two run in another thread.
    bomb = gzip.compress(bytes(64 * STEP))
    assert len(bomb) <= inflating.THREAD_BYTES
    started = time.thread_time()
    assert len(gunzip(bomb, 64 * STEP)) == 64 * STEP
    whole = time.thread_time() - started

    async def run() -> float:
        started = time.thread_time()
        inflated = await inflate(bomb, Coding.GZIP, 64 * STEP)
        spent = time.thread_time() - started
        assert len(inflated) == 64 * STEP
        with pytest.raises(BodyTooLarge):
            await inflate(bomb, Coding.GZIP, 16 * STEP)
        return spent

    on_loop = asyncio.run(run())
    # Two steps of 64 on the loop: a thirty-second of the work, CPU time (which
    # load stretches little); a quarter leaves room for the clock's ticks.
    assert on_loop < whole / 4, (on_loop, whole)


def test_a_body_is_judged_after_the_step_that_passes_the_limit() -> None:
    # A wrong checksum is found at the stream's end: 1.5 MiB in, so within the
    # step that passes a 1 MiB limit (refused as corrupt, as it always was) but
    # not within the one that passes a limit a byte lower.
    body = bytearray(gzip.compress(bytes(STEP + STEP // 2)))
    body[-8] ^= 0xFF
    with pytest.raises(InvalidArgument, match="incorrect data check"):
        gunzip(bytes(body), limit=STEP)
    with pytest.raises(BodyTooLarge):
        gunzip(bytes(body), limit=STEP - 1)


@pytest.mark.parametrize("size", [0, 1, STEP - 1, STEP, STEP + 1, 3 * STEP])
@pytest.mark.parametrize("coding", list(Coding))
def test_bodies_inflate_whole_at_the_limit_and_refuse_a_byte_more(
    size: int, coding: Coding
) -> None:
    data = random.Random(size).randbytes(size // 2) + bytes(size - size // 2)
    body = zlib.compress(data, 6, wbits=coding.value)
    assert asyncio.run(inflate(body, coding, size)) == data
    if size:
        with pytest.raises(BodyTooLarge, match=f"limit of {size - 1} bytes"):
            asyncio.run(inflate(body, coding, size - 1))
    # A stream cut short is refused, whatever it holds.
    with pytest.raises(InvalidArgument, match="truncated data"):
        asyncio.run(inflate(body[:-4], coding, size))
