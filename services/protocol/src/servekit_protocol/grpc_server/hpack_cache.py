"""HPACK work a connection can skip because its answer is known already.

A client that calls the same method again sends the same header block again,
byte for byte, and most gRPC answers carry the same two header blocks (the
response headers and ``grpc-status: 0``). ``hpack`` redoes the work every time:
about a third of ``h2``'s cost for a small call. These subclasses keep ``hpack``'s
encoding and decoding (the header table, the size limits, every error) and skip
only what is provably a repeat:

- :class:`RepeatDecoder` answers a block that equals the previous block with
  the previous result, provided decoding that block left the header table as it
  was and nothing has changed it since. HPACK decoding is a function of the block
  and the table, so the answer is the one ``hpack`` would give. ``h2``'s checks on
  the decoded headers (RFC 9113 §8) still run on every request.
- :class:`ConstantEncoder` writes the blocks of :data:`CONSTANT_BLOCKS` as fixed
  bytes: ``hpack``'s own encoding of them, made once, that uses only the static
  table and never-indexed literals, which mean the same whatever the client's
  table holds. A constant block followed by never-indexed fields (the trailers
  of a call with its ``x-request-id``) is written the same way: the constant
  block, then each field as the never-indexed literal ``hpack`` writes from an
  empty table. Such a field neither refers to the table nor changes it, so the
  block means the same whatever either side's table holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from servekit_protocol.grpc_server.literals import hpack_integer

RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
"""The response headers of every gRPC answer that has a message."""
OK_TRAILERS = ((b"grpc-status", b"0"),)
"""The trailers of a call that succeeded with no trailing metadata."""


def _table_free_block(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    # hpack's own block for the headers, from an encoder with an empty table:
    # each field is a full static-table match (indexed) or a never-indexed
    # literal, so the block refers to no dynamic entry and adds none.
    fields = [NeverIndexedHeaderTuple(name, value) for name, value in headers]
    return Encoder().encode(fields, huffman=False)


CONSTANT_BLOCKS: dict[tuple[tuple[bytes, bytes], ...], bytes] = {
    headers: _table_free_block(headers) for headers in (RESPONSE_HEADERS, OK_TRAILERS)
}
"""The encoded blocks of the header lists above."""
_STATIC_NAMES = frozenset(name for name, _ in HeaderTable.STATIC_TABLE)
_NEVER_INDEXED = b"\x10"
"""RFC 7541 §6.2.3: a literal never indexed, its name a literal too."""


def never_indexed_literal(field: Any) -> bytes | None:
    """``hpack``'s encoding of a never-indexed field from an empty table, without
    Huffman coding; None when that encoding would refer to the static table (a
    name of its own) or the field is not a never-indexed one of bytes."""
    if type(field) is not NeverIndexedHeaderTuple:
        return None
    name, value = field
    if type(name) is not bytes or type(value) is not bytes or name in _STATIC_NAMES:
        return None
    return b"".join(
        (
            _NEVER_INDEXED,
            hpack_integer(len(name), 7),
            name,
            hpack_integer(len(value), 7),
            value,
        )
    )


def table_free_block(headers: list[Any]) -> bytes | None:
    """The block of ``headers`` when it needs no header table: a constant block,
    or one followed by never-indexed fields; None otherwise."""
    count = len(headers)
    for constant, block in CONSTANT_BLOCKS.items():
        length = len(constant)
        if count < length or tuple(headers[:length]) != constant:
            continue
        # hpack's HeaderTuple subclasses (never-indexed fields) compare equal
        # to plain tuples and must not match a constant's plain fields.
        if any(type(field) is not tuple for field in headers[:length]):
            continue
        if count == length:
            return block
        parts = [block]
        for field in headers[length:]:
            literal = never_indexed_literal(field)
            if literal is None:
                return None
            parts.append(literal)
        return b"".join(parts)
    return None


class ConstantEncoder(Encoder):
    """``hpack``'s encoder, with the constant blocks written from a table."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        # Huffman coding is off unless asked for (h2 never asks): in pure Python
        # it costs more CPU than the few bytes it saves on answers' short values.
        # A pending table size update must open the next block: hpack writes it.
        if huffman or self.header_table.resized or not isinstance(headers, list):
            return super().encode(headers, huffman)
        block = table_free_block(headers)
        if block is None:
            return super().encode(headers, huffman)
        return block


class RepeatDecoder(Decoder):
    """``hpack``'s decoder, answering a repeated header block from memory."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._block: bytes | None = None
        self._headers: list[HeaderTuple] = []
        self._key: tuple[int, int, bool] = (0, 0, False)

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._block = None
        self.header_table.maxsize = value

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        """Decode ``data``; the previous result when it is the same block again.

        Raises:
            hpack.HPACKDecodingError: The block is malformed or too large.
        """
        # The limits are part of the key: a block under the old ones may be over
        # the new ones.
        key = (self.max_header_list_size, self.max_allowed_table_size, raw)
        if data == self._block and key == self._key:
            return list(self._headers)
        self._block = None
        table = self.header_table
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        count, size = len(entries), table.maxsize
        headers = list(super().decode(data, raw))
        # Every insertion puts a new tuple first; an eviction without one
        # changes the count or the size. Either way a repeat decodes differently.
        unchanged = (
            (entries[0] if entries else None) is first
            and len(entries) == count
            and table.maxsize == size
        )
        if unchanged:
            self._block = bytes(data)
            self._headers = headers
            self._key = key
        return list(headers)
