"""``grpc-web-text`` bodies decoded from their parts as they arrive: the same
bytes, or the same error, however the body was split."""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable

import pytest
from servekit_protocol import grpcweb
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.text_bodies import RUN_BYTES, TextBody

MIB = 1 << 20


def _outcome(decode: Callable[[], bytes]) -> tuple[str, bytes | str]:
    try:
        return "bytes", decode()
    except InvalidArgument as exc:
        return "error", exc.message


def _body(rng: random.Random) -> bytes:
    """Base64 chunks, some padded, some over a MiB, some spoiled."""
    chunks = []
    for _ in range(rng.randint(1, 4)):
        size = rng.choice([0, 1, 2, 5, 100, MIB - 1, MIB, 3 * MIB // 2 + 7])
        chunk = base64.b64encode(rng.randbytes(size))
        if rng.random() < 0.2:
            chunk = chunk.rstrip(b"=")
        if chunk and rng.random() < 0.25:
            at = rng.randrange(len(chunk))
            spoiler = rng.choice([b"!", b"=", b"===", b"\r\n", b" ", b"A"])
            chunk = chunk[:at] + spoiler + chunk[at:]
        chunks.append(chunk)
    return b"".join(chunks)


def _split(rng: random.Random, body: bytes) -> list[bytes]:
    cuts = sorted(rng.randint(0, len(body)) for _ in range(rng.randint(0, 40)))
    return [
        body[start:end]
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)
    ]


def _decoded_in_parts(parts: list[bytes]) -> bytes:
    decoder = grpcweb.TextDecoder()
    for part in parts:
        decoder.add(part)
    return decoder.finish()


def test_parts_decode_as_the_whole_body_does() -> None:
    rng = random.Random(22)
    for _ in range(150):
        body = _body(rng)
        whole = _outcome(lambda body=body: grpcweb.decode_text(body))
        parts = _split(rng, body)
        assert _outcome(lambda parts=parts: _decoded_in_parts(parts)) == whole
        if whole[0] == "bytes":
            # Each padded chunk is base64 of its own bytes.
            chunks = re.findall(rb"[^=]+=*", b"".join(body.split()))
            assert whole[1] == b"".join(base64.b64decode(c) for c in chunks)


def test_padding_sent_alone_is_held_until_the_chunk_ends() -> None:
    first, second = base64.b64encode(b"ab"), base64.b64encode(b"cd")
    assert first.endswith(b"=")
    decoder = grpcweb.TextDecoder()
    for part in (first[:-1], b"=", b" ", second):
        decoder.add(part)
    assert decoder.finish() == b"abcd"
    # A padding run split over many parts is the run the whole body has.
    spoiled = first + b"=" * 5 + second
    parts = [first, *[b"="] * 5, second]
    assert _outcome(lambda: _decoded_in_parts(parts)) == _outcome(
        lambda: grpcweb.decode_text(spoiled)
    )


async def _text_body(chunks: list[bytes]) -> bytes:
    body = TextBody()
    for chunk in chunks:
        await body.add(chunk)
    return await body.decoded()


@pytest.mark.parametrize("size", [10, RUN_BYTES - 7, 3 * MIB + 5])
async def test_a_text_body_fed_chunk_by_chunk_is_the_decoded_body(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    encoded = base64.b64encode(payload)
    chunks = [encoded[i : i + 65_000] for i in range(0, len(encoded), 65_000)]
    assert await _text_body(chunks) == payload


async def test_a_bad_text_body_is_refused_when_decoded_not_while_read() -> None:
    good = base64.b64encode(bytes(2 * MIB))
    chunks = [b"!!!!", good[: RUN_BYTES * 3], good[RUN_BYTES * 3 :]]
    body = TextBody()
    for chunk in chunks:
        await body.add(chunk)
    with pytest.raises(InvalidArgument) as caught:
        await body.decoded()
    with pytest.raises(InvalidArgument) as whole:
        grpcweb.decode_text(b"".join(chunks))
    assert caught.value.message == whole.value.message
