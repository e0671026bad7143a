"""Runs of small fields of a serialized message stepped over by the regular
expression engine, for :mod:`~modelserver.protocol.grpc.examplewire`.

Walked a field at a time, a message of tiny fields costs about half a
microsecond of Python a field: 64 MiB of two-byte unknown fields took a worker
over 20 s, and a message of tiny examples 3 s before the walk stopped at the
most it may count. A compiled pattern matches a run of such fields at a few
nanoseconds a byte, and counts the examples of a run 64 at a time (or, after
fields the list skips, one capture of its length's byte each). Each pattern
accepts exactly the fields the walk accepts and would step over (or count)
the same way:

* a tag of at most 5 bytes under 2**32 (a varint padded with zero bytes
  included), of field number 1 and up (0 too within a group), none of the
  tags its level reads;
* a varint value of at most 10 bytes, 8 or 4 bytes, or a length under 128 in
  one byte and that many bytes.

Anything else (a longer or padded length, a group, bytes that do not parse, a
tag the level reads) ends a run, and the walk reads that field itself.
Matches never reach past the message that holds the run (the end position
given to the pattern).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

_BLOCK = 64
"""Examples a block pattern matches: a run is counted a block at a time."""
_VARINT_VALUE = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_TAG_TAIL = rb"(?:[\x80-\xff]{0,2}[\x00-\x7f]|[\x80-\xff]{3}[\x00-\x0f])"
"""The bytes after the first of a tag of 2 to 5 bytes, under 2**32."""
_ZERO_TAIL = rb"\x80{0,3}\x00"
"""A tag's padding: the value is in its first byte."""
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
EXAMPLE_TAG = 0x0A
"""Field 1, length-delimited: an example in either list."""
STARTS = bytes(
    1 if byte & 7 in (_VARINT, _FIXED64, _LENGTH, _FIXED32) else 0
    for byte in range(256)
)
"""Whether a field a run matches may start with each byte (a tag's first byte
holds its wire type): elsewhere a pattern is not tried, since a call that
matches nothing costs about as much as a step of Python (a message of empty
groups took three times as long with one tried before each)."""


def _byte(value: int) -> bytes:
    return b"\\x%02x" % value


def _one_of(values: list[int]) -> bytes:
    return b"[" + b"".join(map(_byte, values)) + b"]" if values else b"(?!)"


def _either(patterns: list[bytes]) -> bytes:
    return b"(?:" + b"|".join(patterns) + b")"


def _short_length() -> bytes:
    """A length under 128, in one byte, and that many bytes; the shortest
    first (the engine tries them in order)."""
    return _either(
        [_byte(size) + (b".{%d}" % size if size else b"") for size in range(128)]
    )


def _tag(wire_type: int, skipped: frozenset[int], in_group: bool) -> bytes:
    """A tag of ``wire_type`` whose value is not in ``skipped`` (tags the level
    reads), of field number 1 and up unless ``in_group``."""
    first = [
        byte
        for byte in range(0x80)
        if byte & 7 == wire_type and (in_group or byte >= 8) and byte not in skipped
    ]
    longer = [byte for byte in range(0x80, 0x100) if byte & 7 == wire_type]
    padded = [
        byte
        for byte in longer
        if (in_group or byte & 0x7F >= 8) and byte & 0x7F not in skipped
    ]
    return _either(
        [
            _one_of(first),
            # Past its first byte the value is 128 or more: field 16 and up.
            _one_of(longer) + b"(?!" + _ZERO_TAIL + b")" + _TAG_TAIL,
            _one_of(padded) + _ZERO_TAIL,
        ]
    )


def _field(skipped: frozenset[int], in_group: bool) -> bytes:
    """A field that holds no group, of a length under 128 when delimited."""
    return _either(
        [
            _tag(_VARINT, skipped, in_group) + _VARINT_VALUE,
            _tag(_FIXED64, skipped, in_group) + b".{8}",
            _tag(_FIXED32, skipped, in_group) + b".{4}",
            _tag(_LENGTH, skipped, in_group) + _short_length(),
        ]
    )


def _compile(pattern: bytes) -> re.Pattern[bytes]:
    return re.compile(pattern, re.DOTALL)


@dataclass(frozen=True)
class Skipper:
    """Steps over the fields one level of the walk does not look into."""

    run: re.Pattern[bytes]

    def skip(self, data: memoryview, pos: int, end: int) -> int:
        """The position after the run of such fields at ``pos``."""
        match = self.run.match(data, pos, end)
        assert match is not None  # a run may be empty
        return match.end()


@dataclass(frozen=True)
class ExampleRuns:
    """Counts the runs of small examples of a list: one after the other
    (``lengths`` None), or each after any number of fields the list steps
    over.

    Attributes:
        run: As many examples as follow one another.
        one: One example.
        block: :data:`_BLOCK` of them.
        blocks: As many blocks as follow one another.
        lengths: One example, its length's byte captured.
    """

    run: re.Pattern[bytes]
    one: re.Pattern[bytes]
    block: re.Pattern[bytes]
    blocks: re.Pattern[bytes]
    lengths: re.Pattern[bytes] | None

    def count(self, data: memoryview, pos: int, end: int) -> tuple[int, int, int]:
        """(the position after the run at ``pos``, its examples, their wire
        bytes: each example's own, as a step of the walk counts them)."""
        # Within a run each match starts where the one before ended: these
        # are the run's own examples, never bytes inside a field.
        if self.lengths is not None:
            run = self.run.match(data, pos, end)
            assert run is not None  # a run may be empty
            # A length of one byte is one of CPython's shared bytes objects.
            lengths = self.lengths.findall(data, pos, run.end())
            wire_bytes = 2 * len(lengths) + sum(b"".join(lengths))
            return run.end(), len(lengths), wire_bytes
        blocks = self.blocks.match(data, pos, end)
        assert blocks is not None
        counted = self.block.subn(b"", data[pos : blocks.end()])[1] * _BLOCK
        rest = self.run.match(data, blocks.end(), end)
        assert rest is not None
        counted += self.one.subn(b"", data[blocks.end() : rest.end()])[1]
        # Each example is its tag, its length's byte and that many bytes.
        return rest.end(), counted, rest.end() - pos

    def after(self, data: memoryview, pos: int, end: int, examples: int) -> int:
        """The position after the first ``examples`` of the run at ``pos``
        (it holds that many)."""
        for _ in range(examples // _BLOCK):
            match = self.block.match(data, pos, end)
            assert match is not None
            pos = match.end()
        for _ in range(examples % _BLOCK):
            match = self.one.match(data, pos, end)
            assert match is not None
            pos = match.end()
        return pos


@cache
def skipper(*tags: int, in_group: bool = False) -> Skipper:
    """Steps over the fields of a message (or group) but those of ``tags``."""
    field = _field(frozenset(tags), in_group)
    return Skipper(_compile(b"(?:%s)*+" % field))


@cache
def example_runs(*tags: int) -> tuple[ExampleRuns, ExampleRuns]:
    """The runs of examples of a list whose fields of ``tags`` are read (an
    example's tag among them), each of a length under 128 in one byte: one
    after the other, and each after fields a step of the walk skips."""
    skipped = b"(?:%s)*+" % _field(frozenset(tags), in_group=False)
    example = _byte(EXAMPLE_TAG) + _short_length()
    captured = _byte(EXAMPLE_TAG) + b"(?=(.))" + _short_length()

    def runs(one: bytes, lengths: re.Pattern[bytes] | None) -> ExampleRuns:
        return ExampleRuns(
            _compile(b"(?:%s)*+" % one),
            _compile(one),
            _compile(b"(?:%s){%d}" % (one, _BLOCK)),
            _compile(b"(?:(?:%s){%d})*+" % (one, _BLOCK)),
            lengths,
        )

    return runs(example, None), runs(skipped + example, _compile(skipped + captured))
