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
  table holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple

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
_LONGEST_CONSTANT = max(len(headers) for headers in CONSTANT_BLOCKS)


class ConstantEncoder(Encoder):
    """``hpack``'s encoder, with the constant blocks written from a table."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        # Huffman coding is off unless asked for (h2 never asks): in pure Python
        # it costs more CPU than the few bytes it saves on answers' short values.
        # h2 hands over a list of plain tuples; hpack's HeaderTuple subclasses
        # (never-indexed fields) compare equal to them and must not match.
        block = None
        if isinstance(headers, list) and len(headers) <= _LONGEST_CONSTANT:
            block = CONSTANT_BLOCKS.get(tuple(headers))
            if block is not None and any(type(field) is not tuple for field in headers):
                block = None
        # A pending table size update must open the next block: hpack writes it.
        if block is None or self.header_table.resized:
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
