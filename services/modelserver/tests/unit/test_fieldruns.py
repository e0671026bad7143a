"""The runs of small fields the walk of a tf.Example request steps over with
regular expressions (:mod:`modelserver.protocol.grpc.fieldruns`) against the
same walk reading every field in Python, which ``test_examplewire.py`` checks
against upb: the same counts, the same bytes refused, the same place to stop.

Requests are made of what the runs read: tiny examples (alike in a row or
not), unknown fields of every wire type with tags and lengths of every size
(padded ones too), groups, contexts, at every level; then cut, changed or
stretched at random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from modelserver.protocol.grpc import examplewire
from servekit_protocol.tensors import varint

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)
REQUESTS = 3000
"""Requests generated, each walked at several limits."""


def key(number: int, wire: int, padding: int = 0) -> bytes:
    """A tag, padded with ``padding`` zero bytes of varint (upb reads those)."""
    encoded = bytearray(varint(number << 3 | wire))
    if padding:
        encoded[-1] |= 0x80
        encoded += b"\x80" * (padding - 1) + b"\x00"
    return bytes(encoded)


def delimited(number: int, payload: bytes, padding: int = 0) -> bytes:
    length = bytearray(varint(len(payload)))
    if padding:
        length[-1] |= 0x80
        length += b"\x80" * (padding - 1) + b"\x00"
    return key(number, LENGTH) + bytes(length) + payload


@dataclass
class Writer:
    """Writes requests of tiny fields, a random way each time."""

    rng: random.Random

    def padding(self) -> int:
        return self.rng.choice((0, 0, 0, 0, 1, 2, 3, 4))

    def unknown(self, numbers: tuple[int, ...], depth: int = 0) -> bytes:
        """An unknown field: its number among ``numbers`` at times (a known
        field number of another wire type, or a list's context in an
        ``ExampleList``)."""
        number = self.rng.choice((*numbers, 3, 7, 15, 16, 300, (1 << 29) - 1))
        wire = self.rng.choice((VARINT, FIXED64, FIXED32, LENGTH, START_GROUP))
        tag = key(number, wire, self.padding())
        if wire == VARINT:
            return tag + varint(self.rng.choice((0, 1, 127, 128, 1 << 63)))
        if wire == FIXED64:
            return tag + bytes(8)
        if wire == FIXED32:
            return tag + bytes(4)
        if wire == LENGTH:
            size = self.rng.choice((0, 1, 5, 127, 128, 200))
            value = delimited(number, self.rng.randbytes(size), self.padding())
            return tag + value[len(key(number, LENGTH)) :]
        inner = b"".join(
            self.unknown((0, 1, 2), depth + 1)
            for _ in range(self.rng.randrange(3 if depth < 2 else 1))
        )
        return tag + inner + key(number, END_GROUP, self.padding())

    def example(self) -> bytes:
        size = self.rng.choice((0, 0, 1, 2, 3, 30, 126, 127, 128, 300))
        payload = self.rng.randbytes(size)
        return delimited(
            1, payload, self.padding() if self.rng.randrange(6) == 0 else 0
        )

    def listed(self, with_context: bool) -> bytes:
        out = b""
        for _ in range(self.rng.randrange(40)):
            choice = self.rng.randrange(10)
            if choice < 6:
                out += self.example() * self.rng.choice((1, 1, 1, 2, 3, 70, 200))
            elif choice < 8:
                out += self.unknown((1, 2) if not with_context else (1,))
            else:
                out += delimited(2, self.rng.randbytes(self.rng.randrange(3)))
        return out

    def request(self) -> bytes:
        out = b""
        for _ in range(self.rng.randrange(1, 4)):
            inputs = b""
            for _ in range(self.rng.randrange(1, 3)):
                with_context = bool(self.rng.randrange(2))
                number = 2 if with_context else 1
                inputs += delimited(number, self.listed(with_context))
                if self.rng.randrange(3) == 0:
                    inputs += self.unknown((1, 2))
            out += delimited(2, inputs)
            if self.rng.randrange(3) == 0:
                out += self.unknown((1, 2))
        return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    changed = bytearray(data)
    at = rng.randrange(len(data) + 1)
    choice = rng.randrange(4)
    if choice == 0 and data:
        changed[min(at, len(data) - 1)] = rng.randrange(256)
    elif choice == 1:
        del changed[at : at + rng.randrange(1, 4)]
    elif choice == 2:
        changed[at:at] = data[at : at + rng.randrange(1, 40)]
    else:
        del changed[at:]
    return bytes(changed)


def walked(data: bytes, most: int | None, runs: bool) -> object:
    """What :func:`examplewire.locate` gives, or how it stops."""
    try:
        return examplewire.locate(memoryview(data), most=most, runs=runs)
    except examplewire.Malformed:
        return "malformed"
    except examplewire.TooMany as exc:
        return ("too many", exc.examples)


def test_runs_read_every_request_as_the_walk_a_field_at_a_time() -> None:
    rng = random.Random(31)
    writer = Writer(rng)
    outcomes = {"located": 0, "malformed": 0, "too many": 0}
    for _ in range(REQUESTS):
        data = writer.request()
        if rng.randrange(2):
            data = mutate(rng, data)
        whole = walked(data, None, runs=False)
        assert walked(data, None, runs=True) == whole, data
        if not isinstance(whole, examplewire.Located):
            outcomes["malformed"] += 1
            continue
        outcomes["located"] += 1
        # Stopped at every place a limit may fall: within a run of tiny
        # examples, within a run alike, at its edges.
        for most in {0, 1, 63, 64, 65, 100, rng.randrange(whole.examples + 1)}:
            result = walked(data, most, runs=False)
            assert walked(data, most, runs=True) == result, (data, most)
            if isinstance(result, tuple):
                outcomes["too many"] += 1
    assert min(outcomes.values()) > REQUESTS // 20, outcomes


@pytest.mark.parametrize("size", [1 << 10, 1 << 16])
def test_a_long_run_of_tiny_examples_is_counted_to_the_example(size: int) -> None:
    # Unlike in a row, then alike: the runs count 64 at a time, and the
    # last example past the limit takes its copies along (as a step does).
    tiny = b"\x0a\x00\x0a\x02\x0a\x00" * size + b"\x0a\x01\x00" * 300
    data = delimited(2, delimited(1, tiny))
    examples = 2 * size + 300
    assert walked(data, None, runs=True) == walked(data, None, runs=False)
    for most in (examples - 301, examples - 300, examples - 1, 2 * size - 2, 64 * 5):
        assert walked(data, most, runs=True) == walked(data, most, runs=False)
    assert walked(data, examples - 300, runs=True) == ("too many", examples)
