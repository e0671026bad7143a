"""``hyperframe``'s frame ``repr`` written without copying the frame's body.

``h2`` (4.4.1, and its main branch) logs every received frame with
``logger.trace("Received frame: %s", repr(frame))``: the ``repr`` is built
eagerly, whatever the logger. ``hyperframe`` (6.1.0) writes a DATA frame's body
part by serializing the whole body (a copy of its payload, padding included)
and hexlifying all of it, then keeps the first 20 hex digits; HEADERS and
CONTINUATION frames hexlify their whole header block the same way. For a large
request that is two passes over every received byte on the event loop (about
20-40 ms a 16 MiB body on the shared machine) for a string nobody reads.

:func:`install` gives those frame classes a body ``repr`` that reads only the
first bytes it shows: the same string, byte for byte (unit tests compare it
with ``hyperframe``'s own over padded, empty, short and long frames), at a cost
independent of the frame's size. It is idempotent and changes nothing else of
the classes: parsing and serializing are ``hyperframe``'s own.
"""

from __future__ import annotations

from collections.abc import Callable

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    HeadersFrame,
)

_SHOWN_BYTES = 10
"""Bytes ``hyperframe`` shows of a body (20 hex digits, then ``...``)."""

BodyRepr = Callable[[Frame], str]

_ORIGINALS: dict[type[Frame], BodyRepr] = {}


def _hex_head(head: bytes, length: int) -> str:
    # hyperframe's _raw_data_repr of a body whose first bytes are ``head`` and
    # whose whole length is ``length``.
    if not length:
        return "None"
    more = "..." if length > _SHOWN_BYTES else ""
    return f"<hex:{head[:_SHOWN_BYTES].hex()}{more}>"


def _data_body(frame: DataFrame) -> str:
    # serialize_body() is the padding length byte (PADDED only), the data and
    # pad_length zero bytes.
    head = frame.serialize_padding_data()
    data = frame.data
    length = len(head) + len(data) + frame.pad_length
    shown = head + bytes(data[:_SHOWN_BYTES])
    if len(shown) < _SHOWN_BYTES:
        shown += b"\0" * min(frame.pad_length, _SHOWN_BYTES)
    return _hex_head(shown, length)


def _headers_body(frame: HeadersFrame) -> str:
    data = _hex_head(bytes(frame.data[:_SHOWN_BYTES]), len(frame.data))
    return (
        f"exclusive={frame.exclusive}, depends_on={frame.depends_on}, "
        f"stream_weight={frame.stream_weight}, data={data}"
    )


def _continuation_body(frame: ContinuationFrame) -> str:
    return f"data={_hex_head(bytes(frame.data[:_SHOWN_BYTES]), len(frame.data))}"


def _extension_body(frame: ExtensionFrame) -> str:
    body = _hex_head(bytes(frame.body[:_SHOWN_BYTES]), len(frame.body))
    return f"type={frame.type}, flag_byte={frame.flag_byte}, body={body}"


_SHORT: dict[type[Frame], Callable[..., str]] = {
    DataFrame: _data_body,
    HeadersFrame: _headers_body,
    ContinuationFrame: _continuation_body,
    ExtensionFrame: _extension_body,
}


def install() -> None:
    """Give the frame classes that carry a payload the short body ``repr``."""
    for cls, short in _SHORT.items():
        if cls not in _ORIGINALS:
            _ORIGINALS[cls] = cls._body_repr
            cls._body_repr = short  # type: ignore[method-assign]


def uninstall() -> None:
    """Give the frame classes ``hyperframe``'s own body ``repr`` back (to
    measure what :func:`install` saves)."""
    for cls, original in _ORIGINALS.items():
        cls._body_repr = original  # type: ignore[method-assign,assignment]
    _ORIGINALS.clear()


def original_repr(frame: Frame) -> str:
    """``repr(frame)`` as ``hyperframe`` itself writes it (copying the body):
    what the short form is checked against."""
    body = _ORIGINALS.get(type(frame), type(frame)._body_repr)
    return (
        f"{type(frame).__name__}(stream_id={frame.stream_id}, "
        f"flags={frame.flags!r}): {body(frame)}"
    )
