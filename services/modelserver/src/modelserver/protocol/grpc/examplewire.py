"""Where the tf.Examples of a serialized ``Classify``, ``Regress`` or
``MultiInference`` request lie, found by walking its wire format instead of
parsing it.

Parsed, even with its examples left serialized
(:mod:`~modelserver.protocol.grpc.serializedinput`), a message of small
examples takes about three times its size (a bytes object and a list slot an
example) before anything could be counted. The walk reads the levels above the
examples (the request, its ``Input``, the ``ExampleList`` or
``ExampleListWithContext``) and hands out each example as a view of the
message, so that :mod:`modelserver.examplesize` counts them, and refuses a
request over the limits, before the message is parsed at all. It keeps no
object an example: two passes, the first to find the context and which of the
lists the parser would keep, the second to hand the examples out.

It accepts what upb accepts at these levels and is as strict as upb is (each
rule checked against upb by the tests):

* a tag is a varint of at most 5 bytes under 2**32, of a wire type from 0 to
  5 and a field number from 1 (from 0 within a group); an end-group tag
  closes only the group of its own number;
* a varint has at most 10 bytes, a length at most 5 and under 2**31, and a
  length-delimited field ends within the message that holds it;
* messages and groups nest at most 100 deep (upb's default), counted from the
  request;
* a known field number of another wire type is an unknown field (skipped), as
  is every field the walk does not look into;
* ``Input`` occurrences merge; one of its two lists sent after the other
  replaces it (a oneof), occurrences of the same list merge: examples append,
  contexts concatenate.

Bytes it cannot walk raise :class:`Malformed`; the caller then parses the
message, so that the client gets upb's own error.

The first pass steps through the examples one at a time (a run of alike ones
at once), about half a microsecond of Python an example: a message of tiny
examples, each unlike the one before (two to four bytes each), cost a worker
44 s of CPU for 64 MiB when every example was walked. Given ``most``, the walk
stops once the lists it has seen hold more examples than that, replaced lists
included (upb builds those too before a later list replaces them), and raises
:class:`TooMany`; the bytes after that point are not walked. Even so a step an
example cost 3.1 s to reach the default limit's 5,592,405 examples, and a step
a field 20 s for 64 MiB of two-byte unknown fields, which no limit stops: runs
of small fields (examples under 128 bytes, fields the walk skips) are matched
by regular expressions instead (:mod:`~modelserver.protocol.grpc.fieldruns`),
0.2-0.3 s for the former. A step of Python still reads each field they do not
match (a longer or padded length, a group, a tag the level reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from modelserver.protocol.grpc import fieldruns

REQUEST = 0
"""The bytes are a whole request (its ``Input`` is field 2)."""
INPUT = 1
"""The bytes are an ``Input``."""

_DEPTH_LIMIT = 100
"""Messages and groups nested deeper are refused (upb's default)."""
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_INPUT_TAG = 2 << 3 | _LENGTH
"""A request's ``input``."""
_LIST_TAG = 1 << 3 | _LENGTH
"""``Input.example_list``; ``examples`` in either list."""
_WITH_CONTEXT_TAG = 2 << 3 | _LENGTH
"""``Input.example_list_with_context``; ``context`` in that list."""

_KIND, _EXAMPLE, _CONTEXT, _SUMMED = range(4)
_STARTS = fieldruns.STARTS
_WINDOW = 1 << 20
"""Bytes of a list whose examples are counted at once (about 350,000 at the
most, a list of their lengths of 2.8 MB)."""


class Malformed(Exception):
    """The bytes are not a message upb parses."""


class TooMany(Exception):
    """The lists walked so far hold more examples than :func:`locate` was
    given as ``most``."""

    def __init__(self, examples: int) -> None:
        super().__init__(examples)
        self.examples = examples


@dataclass(frozen=True, slots=True)
class Located:
    """What the walk found in a request.

    Attributes:
        examples: How many examples the parser would keep.
        wire_bytes: Their serialized size, each counted with the two bytes at
            least of its tag and length.
        context: The serialized context merged into each of them; None when
            there is none.
        run: Which run of one kind of list holds them (the earlier ones are
            replaced, as a oneof is).
    """

    examples: int
    wire_bytes: int
    context: bytes | None
    run: int


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    # (value, position after it); at most 10 bytes, as upb reads them.
    value = 0
    shift = 0
    for index in range(pos, min(pos + 10, end)):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    raise Malformed


def _tag(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    byte = data[pos]
    if byte >= 0x80:
        tag, pos = _varint(data, pos, min(pos + 5, end))
        if tag >> 32:
            raise Malformed
    else:
        tag, pos = byte, pos + 1
    if tag & 7 > _FIXED32:
        raise Malformed
    return tag, pos


def _field_tag(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    # A message's field numbers start at 1; a group's may be 0 (upb skips
    # those unread).
    tag, pos = _tag(data, pos, end)
    if tag < 8:
        raise Malformed
    return tag, pos


def _length(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    # (length, position after it), the field within ``end``.
    byte = data[pos] if pos < end else 0x80
    if byte < 0x80:
        length, pos = byte, pos + 1
    else:
        length, pos = _varint(data, pos, min(pos + 5, end))
        if length >> 31:
            raise Malformed
    if pos + length > end:
        raise Malformed
    return length, pos


def _skip(
    data: memoryview,
    pos: int,
    end: int,
    tag: int,
    depth: int,
    grouped: fieldruns.Skipper | None,
) -> int:
    """The position after the value of a field of ``tag`` that starts at
    ``pos``, in a message (or group) ``depth`` deep that ends at ``end``."""
    wire_type = tag & 7
    if wire_type == _VARINT:
        return _varint(data, pos, end)[1]
    if wire_type == _LENGTH:
        length, pos = _length(data, pos, end)
        return pos + length
    if wire_type == _START_GROUP:
        return _skip_group(data, pos, end, tag >> 3, depth + 1, grouped)
    if wire_type == _END_GROUP:
        raise Malformed  # one that closes no group
    pos += 8 if wire_type == _FIXED64 else 4
    if pos > end:
        raise Malformed
    return pos


def _skip_group(
    data: memoryview,
    pos: int,
    end: int,
    number: int,
    depth: int,
    grouped: fieldruns.Skipper | None,
) -> int:
    if depth > _DEPTH_LIMIT:
        raise Malformed
    skipper = grouped
    while pos < end:
        if skipper is not None and _STARTS[data[pos]]:
            pos = skipper.skip(data, pos, end)
            if pos >= end:
                break
        tag, pos = _tag(data, pos, end)
        if tag & 7 == _END_GROUP:
            if tag >> 3 != number:
                raise Malformed
            return pos
        pos = _skip(data, pos, end, tag, depth, grouped)
    raise Malformed


Event = tuple[int, int, int, int]
"""(what, start, stop, count): a list (``_KIND``, its tag), ``count``
examples alike one after the other (the first's bytes), a piece of context,
or the examples of a list summed (``_SUMMED``: ``stop`` their wire bytes)."""


def _walk(
    data: memoryview, level: int, summed: bool, most: int | None, runs: bool
) -> Iterator[Event]:
    """Each list, run of examples and piece of context, in the order of the
    bytes."""
    end = len(data)
    if level == INPUT:
        yield from _input(data, 0, end, 0, summed, most, runs)
        return
    skipper = fieldruns.skipper(_INPUT_TAG) if runs else None
    grouped = fieldruns.skipper(in_group=True) if runs else None
    pos = 0
    while pos < end:
        if skipper is not None and _STARTS[data[pos]]:
            pos = skipper.skip(data, pos, end)
            if pos >= end:
                break
        tag, pos = _field_tag(data, pos, end)
        if tag == _INPUT_TAG:
            length, pos = _length(data, pos, end)
            yield from _input(data, pos, pos + length, 1, summed, most, runs)
            pos += length
        else:
            pos = _skip(data, pos, end, tag, 0, grouped)


def _input(
    data: memoryview,
    pos: int,
    end: int,
    depth: int,
    summed: bool,
    most: int | None,
    runs: bool,
) -> Iterator[Event]:
    skipper = fieldruns.skipper(_LIST_TAG, _WITH_CONTEXT_TAG) if runs else None
    grouped = fieldruns.skipper(in_group=True) if runs else None
    while pos < end:
        if skipper is not None and _STARTS[data[pos]]:
            pos = skipper.skip(data, pos, end)
            if pos >= end:
                break
        tag, pos = _field_tag(data, pos, end)
        if tag in (_LIST_TAG, _WITH_CONTEXT_TAG):
            length, pos = _length(data, pos, end)
            yield _KIND, tag, 0, 0
            yield from _list(
                data, pos, pos + length, depth + 1, tag, summed, most, runs
            )
            pos += length
        else:
            pos = _skip(data, pos, end, tag, depth, grouped)


def _list(
    data: memoryview,
    pos: int,
    end: int,
    depth: int,
    kind: int,
    summed: bool,
    most: int | None,
    runs: bool,
) -> Iterator[Event]:
    # Summed, the examples of the list are one event (_SUMMED, 0, their wire
    # bytes, their count) after the pieces of context.
    examples = 0
    wire_bytes = 0
    skipper = None
    grouped = fieldruns.skipper(in_group=True) if runs else None
    read: tuple[int, ...] = (_LIST_TAG,)
    if kind == _WITH_CONTEXT_TAG:
        read = (_LIST_TAG, _WITH_CONTEXT_TAG)
    if runs:
        skipper = fieldruns.skipper(*read)
        if summed:
            alone, mixed = fieldruns.example_runs(*read)
    counting = summed and skipper is not None
    while pos < end:
        # A run of examples counted a window at a time, so that it stops
        # soon after ``most``; an example followed by its copies is left to
        # the step below, which counts them at once.
        while counting and pos < end and _STARTS[data[pos]]:
            # Each pattern is tried only where its run may start: a call that
            # matches nothing costs about as much as a step.
            if data[pos] == _LIST_TAG:
                if pos + 1 >= end or data[pos + 1] >= 0x80 or _copied(data, pos, end):
                    break
                counter = alone
            elif data[pos] in read:
                break
            else:
                counter = mixed
            stop, count, run_bytes = counter.count(data, pos, min(pos + _WINDOW, end))
            if not count:
                break
            if most is not None and examples + count > most:
                # Up to the example past ``most`` and the copies of it that
                # follow, as the step below counts them.
                assert skipper is not None
                past = skipper.skip(
                    data, counter.after(data, pos, end, most - examples), end
                )
                size = 2 + data[past + 1]
                examples = most + 1 + _repeats(data, past, past + size, end)
                yield _SUMMED, 0, wire_bytes, examples
                return
            examples += count
            wire_bytes += run_bytes
            pos = stop
        if pos >= end:
            break
        if skipper is not None and _STARTS[data[pos]] and data[pos] not in read:
            pos = skipper.skip(data, pos, end)
            if pos >= end:
                break
        field_start = pos
        # An example of under 128 bytes (most of a message of small ones),
        # read here: a step of Python an example is most of the walk's time.
        if data[pos] == _LIST_TAG and pos + 1 < end and data[pos + 1] < 0x80:
            pos += 2
            stop = pos + data[pos - 1]
            if stop > end:
                raise Malformed
        else:
            tag, pos = _field_tag(data, pos, end)
            if tag == _LIST_TAG:
                length, pos = _length(data, pos, end)
                stop = pos + length
            elif tag == _WITH_CONTEXT_TAG and kind == _WITH_CONTEXT_TAG:
                length, pos = _length(data, pos, end)
                yield _CONTEXT, pos, pos + length, 1
                pos += length
                continue
            else:
                pos = _skip(data, pos, end, tag, depth, grouped)
                continue
        size = stop - field_start
        count = 1
        # Its last bytes first: examples of one shape often differ there
        # (the last value), and a view compares a byte at a time.
        tail = min(size, 16)
        if (
            stop + size <= end
            and data[stop + size - 1] == data[stop - 1]
            and data[stop + size - tail : stop + size] == data[stop - tail : stop]
        ):
            count += _repeats(data, field_start, stop, end)
        if summed:
            examples += count
            wire_bytes += (stop - pos + 2) * count
            if most is not None and examples > most:
                break
        else:
            yield _EXAMPLE, pos, stop, count
        pos = stop + (count - 1) * size
    if examples:
        yield _SUMMED, 0, wire_bytes, examples


def _copied(data: memoryview, pos: int, end: int) -> bool:
    """Whether the example of under 128 bytes at ``pos`` is followed by a copy
    of it."""
    size = 2 + data[pos + 1]
    return (
        pos + 2 * size <= end
        and data[pos + size : pos + 2 * size] == data[pos : pos + size]
    )


def _repeats(data: memoryview, start: int, stop: int, end: int) -> int:
    """How many copies of the field ``data[start:stop]`` follow it before
    ``end``: compared a doubling stretch at a time, so that a message of one
    example repeated (an amplifying request's way) costs comparisons of its
    bytes, not a step of Python an example."""
    size = stop - start
    most = (end - stop) // size
    copies = 0
    step = 1
    while copies < most:
        step = min(step, most - copies)
        at = stop + copies * size
        # The stretch after the copies found against as many of the first.
        if data[at : at + step * size] == data[start : start + step * size]:
            copies += step
            step *= 2
        elif step > 1:
            step //= 2
        else:
            break
    return copies


def locate(
    data: memoryview,
    level: int = REQUEST,
    most: int | None = None,
    *,
    runs: bool = True,
) -> Located:
    """Walk the request (or ``Input``, by ``level``) in ``data``; without
    ``runs``, every field a step of Python (what the runs must agree with).

    Raises:
        Malformed: upb would not parse it.
        TooMany: Its lists hold more than ``most`` examples in all.
    """
    kind = 0
    run = 0
    examples = 0
    wire_bytes = 0
    walked = 0
    context: bytearray | None = None
    for what, start, stop, count in _walk(data, level, True, most, runs):
        if what == _SUMMED:
            examples += count
            wire_bytes += stop
            walked += count
            if most is not None and walked > most:
                raise TooMany(walked)
        elif what == _CONTEXT:
            context = context if context is not None else bytearray()
            context += data[start:stop]
        elif start != kind:
            kind = start
            run += 1
            examples = wire_bytes = 0
            context = None
    return Located(
        examples, wire_bytes, None if context is None else bytes(context), run
    )


def examples(
    data: memoryview, located: Located, level: int = REQUEST
) -> Iterator[tuple[memoryview, int]]:
    """Each example of ``located`` (found in ``data`` by :func:`locate`), a
    view of ``data``, in order, with how many times it is sent in a row."""
    run = 0
    kind = 0
    for what, start, stop, count in _walk(data, level, False, None, True):
        if what == _KIND:
            if start != kind:
                kind = start
                run += 1
        elif what == _EXAMPLE and run == located.run:
            yield data[start:stop], count
