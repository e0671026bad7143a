"""The gRPC server's HPACK coders give exactly what ``hpack``'s own give."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple, OversizedHeaderListError
from servekit_protocol.grpc_server import hpack_literal
from servekit_protocol.grpc_server.hpack_cache import (
    CONSTANT_BLOCKS,
    OK_TRAILERS,
    RESPONSE_HEADERS,
    ConstantEncoder,
    RepeatDecoder,
)

Headers = list[tuple[bytes, bytes]]


def test_constant_blocks_decode_to_their_headers_and_touch_no_table() -> None:
    client = Decoder()
    client.decode(Encoder().encode([(b"x-filler", b"1")]), raw=True)
    for headers, block in CONSTANT_BLOCKS.items():
        # Whatever the client's table holds, the block means the same.
        assert client.decode(block, raw=True) == list(headers)
    assert list(client.header_table.dynamic_entries) == [(b"x-filler", b"1")]


def test_the_encoder_uses_constant_blocks_only_for_them() -> None:
    encoder = ConstantEncoder()
    assert encoder.encode(list(RESPONSE_HEADERS)) == CONSTANT_BLOCKS[RESPONSE_HEADERS]
    assert encoder.encode(list(OK_TRAILERS)) == CONSTANT_BLOCKS[OK_TRAILERS]
    client = Decoder()
    other = [(b"grpc-status", b"5"), (b"grpc-message", b"missing")]
    assert client.decode(encoder.encode(other), raw=True) == other
    # A never-indexed field equals the plain tuple but must keep its encoding.
    secret = [NeverIndexedHeaderTuple(b"grpc-status", b"0")]
    assert encoder.encode(secret) != CONSTANT_BLOCKS[OK_TRAILERS]
    assert encoder.encode(secret)[0] & 0xF0 == 0x10


def test_a_table_size_change_still_opens_the_next_block() -> None:
    encoder = ConstantEncoder()
    encoder.encode([(b"x-a", b"1")])
    encoder.header_table_size = 0
    block = encoder.encode(list(OK_TRAILERS))
    # RFC 7541 §6.3: 001xxxxx, the new size (0), before any field.
    assert block[0] == 0x20
    client = Decoder()
    assert client.decode(block, raw=True) == list(OK_TRAILERS)
    assert encoder.encode(list(OK_TRAILERS)) == CONSTANT_BLOCKS[OK_TRAILERS]


def _blocks(seed: int, count: int) -> list[bytes]:
    """A client's header blocks (repeats, new indexed fields, evictions, resizes),
    and now and then an earlier block sent again as is (not always valid)."""
    rng = random.Random(seed)
    encoder = Encoder()
    encoder.header_table_size = 256
    fixed: Headers = [
        (b":method", b"POST"),
        (b":path", b"/tensorflow.serving.PredictionService/Predict"),
        (b"content-type", b"application/grpc"),
    ]
    blocks: list[bytes] = []
    headers = list(fixed)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.1 and blocks:
            blocks.append(rng.choice(blocks))
            continue
        if roll < 0.5:
            pass  # the same headers again
        elif roll < 0.8:
            headers = [*fixed, (b"x-tag", b"%d" % rng.randrange(12))]
        elif roll < 0.9:
            key = NeverIndexedHeaderTuple(b"authorization", b"k%d" % rng.randrange(3))
            headers = [*fixed, key]
        else:
            encoder.header_table_size = rng.choice((0, 64, 256))
        blocks.append(encoder.encode(headers))
    return blocks


def _outcome(decoder: Decoder, block: bytes) -> object:
    try:
        return decoder.decode(block, raw=True)
    except Exception as exc:  # the error is what is compared
        return type(exc)


@pytest.mark.parametrize("seed", range(5))
def test_the_decoder_agrees_with_hpack_block_for_block(seed: int) -> None:
    plain = Decoder(max_header_list_size=16384)
    repeat = RepeatDecoder(16384)
    for block in _blocks(seed, 400):
        assert _outcome(repeat, block) == _outcome(plain, block)
        assert list(repeat.header_table.dynamic_entries) == list(
            plain.header_table.dynamic_entries
        )


def test_a_repeated_block_that_adds_to_the_table_is_decoded_again() -> None:
    encoder = Encoder()
    block = encoder.encode([(b"x-new", b"value")])
    assert block[0] & 0xC0 == 0x40  # literal with incremental indexing
    repeat = RepeatDecoder(16384)
    for count in (1, 2, 3):
        assert repeat.decode(block, raw=True) == [(b"x-new", b"value")]
        assert len(repeat.header_table.dynamic_entries) == count


def test_a_lowered_header_list_limit_applies_to_a_repeat() -> None:
    block = hpack_literal(b"x-big", b"v" * 200)
    repeat = RepeatDecoder(16384)
    for _ in range(2):
        assert repeat.decode(block, raw=True) == [(b"x-big", b"v" * 200)]
    assert not repeat.header_table.dynamic_entries
    repeat.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError):
        repeat.decode(block, raw=True)


def _fresh_hpack_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    # hpack's block from an empty table with every field never indexed: what a
    # table-free block must be, byte for byte.
    fields = [NeverIndexedHeaderTuple(name, value) for name, value in headers]
    return Encoder().encode(fields, huffman=False)


@pytest.mark.parametrize("seed", range(3))
def test_the_encoder_is_hpack_apart_from_its_table_free_blocks(
    seed: int,
) -> None:
    # Answers as the server sends them: the constant blocks, trailers with a
    # per-call request id, error statuses, a table size change now and then.
    rng = random.Random(seed)
    encoder, plain, client = ConstantEncoder(), Encoder(), Decoder()
    for number in range(300):
        roll = rng.random()
        headers: list[tuple[bytes, bytes]]
        if roll < 0.4:
            headers = list(rng.choice(list(CONSTANT_BLOCKS)))
        elif roll < 0.8:
            request_id = NeverIndexedHeaderTuple(b"x-request-id", b"%032x" % number)
            headers = [(b"grpc-status", b"0"), request_id]
        elif roll < 0.95:
            headers = [(b"grpc-status", b"5"), (b"grpc-message", b"m%d" % number)]
        else:
            size = rng.choice((0, 128, 4096))
            encoder.header_table_size = plain.header_table_size = size
            continue
        # A pending table size change opens the next block, which hpack writes.
        resized = encoder.header_table.resized
        block = encoder.encode(headers)
        assert client.decode(block, raw=True) == headers
        if not resized and headers[0] in OK_TRAILERS + RESPONSE_HEADERS:
            # Table-free: the same bytes whatever the tables hold, and neither
            # table changes (so the two encoders' tables stay equal).
            assert block == _fresh_hpack_block(headers)
            continue
        # Anything else is hpack's block, byte for byte.
        assert block == plain.encode(headers, huffman=False)
        assert list(encoder.header_table.dynamic_entries) == list(
            plain.header_table.dynamic_entries
        )


def test_trailing_metadata_after_a_constant_block_is_written_without_hpack() -> None:
    encoder = ConstantEncoder()
    encoder.encode([(b"grpc-status", b"5"), (b"grpc-message", b"indexed")])
    entries = list(encoder.header_table.dynamic_entries)
    long_id = NeverIndexedHeaderTuple(b"x-request-id", b"r" * 300)
    for trailers in (
        [(b"grpc-status", b"0"), NeverIndexedHeaderTuple(b"x-request-id", b"a1")],
        [(b"grpc-status", b"0"), long_id],  # lengths over one integer byte
        [*RESPONSE_HEADERS, NeverIndexedHeaderTuple(b"x-tag-bin", b"AAE")],
    ):
        block = encoder.encode(trailers)
        assert block == _fresh_hpack_block(trailers)
        assert Decoder().decode(block, raw=True) == trailers
    assert list(encoder.header_table.dynamic_entries) == entries


@pytest.mark.parametrize(
    "headers",
    [
        # A name in the static table: hpack would refer to it by index.
        [(b"grpc-status", b"0"), NeverIndexedHeaderTuple(b"user-agent", b"x")],
        # A plain (indexable) field after the constant block.
        [(b"grpc-status", b"0"), (b"x-request-id", b"a1")],
        # The constant fields themselves never indexed.
        [NeverIndexedHeaderTuple(b"grpc-status", b"0")],
        # Text, not bytes.
        [(b"grpc-status", b"0"), NeverIndexedHeaderTuple("x-request-id", "a1")],
    ],
)
def test_other_blocks_are_left_to_hpack(headers: list[tuple[bytes, bytes]]) -> None:
    encoder, plain = ConstantEncoder(), Encoder()
    assert encoder.encode(headers) == plain.encode(headers, huffman=False)
    assert list(encoder.header_table.dynamic_entries) == list(
        plain.header_table.dynamic_entries
    )
