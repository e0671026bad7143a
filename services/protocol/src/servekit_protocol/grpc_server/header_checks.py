"""``h2``'s checks of a received header block, not redone for the same block.

``h2`` (4.4.1) runs every received header block through its RFC 9113 §8 checks
(``validate_headers``: illegal characters, empty or upper-case names, ``te`` and
connection headers, pseudo-header order and duplicates, ``:path``,
``:authority``) and its normalization (cookie fields joined), as a chain of
generators over the fields: for a six-field gRPC request about a fifth of
``h2``'s cost of receiving the call.

A client calling the same method again sends the same block again, and
:class:`~servekit_protocol.grpc_server.hpack_cache.RepeatDecoder` answers it with
the very same field objects. Both steps are functions of the fields and of the
stream's validation flags and connection settings alone, so when they get the
same objects with the same flags and settings again, their result is the one
they gave last time. :func:`install` wraps ``H2Stream._process_received_headers``
so that such a repeat is answered from memory; any other block (new objects, a
different stream state, other settings) goes through ``h2``'s own steps. A block
they refuse is never remembered, so it is refused every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from h2.stream import H2Stream

MAX_REMEMBERED = 64
"""Blocks remembered at once (all connections together); the memory forgets
them all when full. Each entry keeps its fields alive, at most
``max_header_list_size`` bytes of them."""

Process = Callable[[H2Stream, Iterable[Any], Any, Any], list[Any]]

_ORIGINAL: list[Process] = []
_passed: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}


def _process(
    stream: H2Stream, headers: Iterable[Any], flags: Any, encoding: Any
) -> list[Any]:
    fields = headers if isinstance(headers, list | tuple) else list(headers)
    config = stream.config
    # By identity: the entry keeps the objects alive, so no other object can
    # take one of their ids while it is remembered.
    key = (
        flags,
        encoding,
        config.normalize_inbound_headers,
        config.validate_inbound_headers,
        *map(id, fields),
    )
    known = _passed.get(key)
    if known is not None:
        return list(known[1])
    result = _ORIGINAL[0](stream, fields, flags, encoding)
    if len(_passed) >= MAX_REMEMBERED:
        _passed.clear()
    _passed[key] = (tuple(fields), tuple(result))
    return result


def install() -> None:
    """Answer repeated header blocks from memory (idempotent)."""
    if not _ORIGINAL:
        _ORIGINAL.append(H2Stream._process_received_headers)
        H2Stream._process_received_headers = _process  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    """Give ``h2`` its own step back and forget every block (to measure what
    :func:`install` saves)."""
    if _ORIGINAL:
        H2Stream._process_received_headers = _ORIGINAL.pop()  # type: ignore[method-assign,assignment]
    _passed.clear()
