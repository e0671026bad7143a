"""Large REST ``:classify`` and ``:regress`` bodies read in a JSON worker, their
examples sent back as columns through a shared memory segment.

Sent back as they are read, a dict of lists an example, the examples are
pickled whole: unpickling them in the pool's result thread held the GIL, and so
the event loop, for seconds (2.3 s for 210,000 examples of two features on a
loaded 2-core machine; ``benchmarks.answerlag --kinds examples``). The worker
builds one column a feature instead (:mod:`modelserver.examplecolumns`, as for
a large gRPC Classify message), whose numeric arrays come back through a
segment; the request carries those columns, and what a client sees is what
the dicts gave: the same checks, in the same order, with the same messages.
The body reaches the worker through a segment too
(:func:`servekit_protocol.segment_bodies.run_on_body`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from servekit_protocol import segment_bodies, segments
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable
from servekit_protocol.tensor_limits import TensorLimits

from modelserver import examplecolumns
from modelserver.errors import Overloaded
from modelserver.protocol.carriedarrays import (
    Carried,
    carried_back,
    warn_carried,
    write_or_carry,
)
from modelserver.protocol.rest import codec
from modelserver.types import Example, ExampleColumns, Examples

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Columns:
    # What the worker hands back: everything but the numeric arrays' bytes
    # (``carried`` holds them when they could not go through a segment).
    signature_name: str
    rows: int
    heads: list[examplecolumns.ColumnHead]
    slots: list[segments.ArraySlot]
    carried: Carried = field(default_factory=dict)


def columns_of(
    body: bytes, limits: TensorLimits | None, arrays_segment: str
) -> _Columns:
    """Run in a worker: :func:`~modelserver.protocol.rest.codec.examples_of`
    of ``body``, the examples merged with the context into columns whose
    numeric arrays are written to a new segment ``arrays_segment`` (carried
    back instead when it has no room).

    Raises:
        InvalidInput: What :func:`~modelserver.protocol.rest.codec.examples_of`
            raises.
    """
    signature_name, examples, context = codec.examples_of(body, limits)
    del body
    columns = examplecolumns.from_examples(examples, context)
    del examples, context
    numeric, heads = examplecolumns.to_arrays(columns)
    slots, carried = write_or_carry(arrays_segment, numeric)
    return _Columns(signature_name, columns.rows, heads, slots, carried)


async def decode_examples(
    body: bytes, parsers: BodyParsers, limits: TensorLimits | None = None
) -> tuple[str, Examples, Example | None]:
    """Read a ``:classify``/``:regress`` body: its signature name, examples and
    context; a large one (from ``parsers``' body threshold) in a worker, its
    examples then columns with the context merged in (and no context).

    Args:
        body: The request body.
        parsers: The JSON workers.
        limits: The most the examples may make once merged with the context,
            checked before they are read (None for no limit).

    Raises:
        InvalidInput: Malformed JSON, no ``examples`` list, bad features, or
            examples over ``limits``.
        Overloaded: The worker reading the body died.
    """
    if len(body) < parsers.threshold_bytes:
        return codec.examples_of(body, limits)
    try:
        signature_name, columns = await decode_large_examples(parsers, body, limits)
    except ParserUnavailable as exc:
        raise Overloaded(exc.message) from exc
    return signature_name, columns, None


async def decode_large_examples(
    parsers: BodyParsers, body: bytes, limits: TensorLimits | None
) -> tuple[str, ExampleColumns]:
    """The body's signature name and its examples (merged with its context)
    as columns, read in a worker.

    Raises:
        InvalidInput: What :func:`~modelserver.protocol.rest.codec.examples_of`
            raises.
        ParserUnavailable: The worker died.
    """
    # Shielded: a cancelled call's worker still finishes before the arrays'
    # segment is removed (it may be writing it).
    return await segments.run_to_end(_decode(parsers, body, limits))


async def _decode(
    parsers: BodyParsers, body: bytes, limits: TensorLimits | None
) -> tuple[str, ExampleColumns]:
    arrays_segment = segments.new_path(parsers.segment_dir, "inputs")
    try:
        decoded = await segment_bodies.run_on_body(
            parsers, columns_of, body, limits, arrays_segment
        )
        arrays: dict[str, np.ndarray[Any, Any]] = (
            await asyncio.to_thread(segments.read_arrays, arrays_segment, decoded.slots)
            if decoded.slots
            else {}
        )
        if decoded.carried:
            warn_carried(
                "A large body's examples", decoded.carried, parsers.segment_dir
            )
        arrays.update(await carried_back(decoded.carried))
    finally:
        segments.unlink_soon(arrays_segment)
    return decoded.signature_name, examplecolumns.from_arrays(
        decoded.rows, decoded.heads, arrays
    )
