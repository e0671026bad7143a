"""A compressed gRPC message inflated in steps answers as one call does."""

from __future__ import annotations

import random
import zlib

import grpc
import pytest
from servekit_protocol.grpc_server.inflating import (
    STEP,
    advance,
    finish,
    inflate,
    inflating,
)
from servekit_protocol.grpcweb_server import Aborted


def _one_call(data: bytes, encoding: str, limit: int) -> bytes | tuple[object, str]:
    """What one ``decompress(data, limit + 1)`` gives, an error as its status."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflated = zlib.decompressobj(wbits).decompress(data, limit + 1)
    except zlib.error as exc:
        return (grpc.StatusCode.INTERNAL, f"Bad compressed message: {exc}")
    if len(inflated) > limit:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max (more than {limit} bytes inflated)",
        )
    return inflated


def _stepped(
    data: bytes, encoding: str, limit: int, step: int
) -> bytes | tuple[object, str]:
    try:
        return inflate(memoryview(data), encoding, limit, step)
    except Aborted as exc:
        return (exc.code, exc.details)


def _compressed(plain: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    return zlib.compress(plain, 1, wbits=wbits)


_RANDOM = random.Random(22).randbytes(700_000)
"""Incompressible: its compressed form spans several input steps."""
_REPEATED = b"servekit " * 300_000
"""Compresses about 1000 to 1: a step's output fills from little input."""

_MESSAGES = {
    "empty": b"",
    "random": _RANDOM,
    "repeated": _REPEATED,
    "mixed": _REPEATED[:100_000] + _RANDOM[:300_000] + _REPEATED[:500_000],
}


def _cases(plain: bytes, encoding: str) -> dict[str, bytes]:
    whole = _compressed(plain, encoding)
    middle = len(whole) // 2
    return {
        "whole": whole,
        "cut short": whole[: max(middle, 1)],
        "with bytes after its end": whole + b"trailing bytes",
        "corrupt in the middle": whole[:middle] + bytes(64) + whole[middle + 64 :],
        "not compressed": b"plain " + plain[:1000],
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("name", list(_MESSAGES))
@pytest.mark.parametrize("step", [7, 4096, STEP])
def test_stepped_inflating_answers_as_one_call_does(
    encoding: str, name: str, step: int
) -> None:
    plain = _MESSAGES[name]
    if step == 7:
        plain = plain[:20_000]  # 7-byte steps through a whole MiB are slow
    for case, data in _cases(plain, encoding).items():
        for limit in (0, len(plain) - 1, len(plain), len(plain) + 1, 64 << 20):
            if limit < 0:
                continue
            expected = _one_call(data, encoding, limit)
            assert _stepped(data, encoding, limit, step) == expected, (case, limit)


def test_an_inflated_message_over_the_limit_is_refused() -> None:
    data = _compressed(_REPEATED, "gzip")
    with pytest.raises(Aborted) as raised:
        inflate(memoryview(data), "gzip", len(_REPEATED) - 1)
    assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("encoding", ["", "identity", "snappy"])
def test_an_unknown_encoding_is_unimplemented(encoding: str) -> None:
    with pytest.raises(Aborted) as raised:
        inflate(memoryview(_compressed(b"x", "gzip")), encoding, 100)
    assert raised.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details == (
        f"Compression algorithm '{encoding or 'identity'}' is not supported"
    )


@pytest.mark.parametrize("first", [0, 1, 2, 5])
@pytest.mark.parametrize("name", list(_MESSAGES))
def test_steps_run_partly_then_finished_answer_as_inflate_does(
    name: str, first: int
) -> None:
    """As the event loop runs a few steps and a thread the rest."""
    plain = _MESSAGES[name]
    for case, data in _cases(plain, "gzip").items():
        for limit in (len(plain) - 1, len(plain), 64 << 20):
            if limit < 0:
                continue
            expected = _stepped(data, "gzip", limit, STEP)
            try:
                steps = inflating(memoryview(data), "gzip", limit)
                done = advance(steps, first)
                got: bytes | tuple[object, str] = (
                    done if done is not None else finish(steps)
                )
            except Aborted as exc:
                got = (exc.code, exc.details)
            assert got == expected, (case, limit)


def test_a_bomb_is_not_inflated_whole_in_the_first_steps() -> None:
    """64 MiB of zeros gzip to about 64 KiB: the few steps a caller runs on
    its event loop give at most a step's bytes each, not the whole message."""
    plain = bytes(64 << 20)
    data = _compressed(plain, "gzip")
    assert len(data) < 512 * 1024
    steps = inflating(memoryview(data), "gzip", len(plain))
    assert advance(steps, 2) is None
    assert finish(steps) == plain
