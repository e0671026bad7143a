"""gRPC-Web framing for unary calls, shared by the model server and the gateway.

gRPC-Web (grpc/grpc ``doc/PROTOCOL-WEB.md``) carries a gRPC call over any HTTP
version, HTTP/1.1 included. The request body is gRPC's length-prefixed message
(one flag byte, a 4-byte big-endian length, the serialized protobuf). The
response body is the answer's message followed by a trailer frame (flag 0x80)
holding HTTP/1-style ``key: value`` lines with ``grpc-status`` and
``grpc-message``; an answer without a message may put those in the response
headers instead ("trailers-only"). ``application/grpc-web-text`` is the same
bytes in base64, for clients that cannot send binary bodies.

Only what unary calls need is here: one message each way, no per-message
compression (gRPC-Web compresses whole bodies with ``Content-Encoding``).
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterable
from urllib.parse import quote, unquote

from servekit_protocol.errors import InvalidArgument

CONTENT_TYPE = b"application/grpc-web+proto"
TEXT_CONTENT_TYPE = b"application/grpc-web-text+proto"

DATA_FLAG = 0x00
COMPRESSED_FLAG = 0x01
TRAILER_FLAG = 0x80
_PREFIX = struct.Struct(">BI")
_PAD = ord("=")

OK = 0
UNKNOWN = 2
INTERNAL = 13
UNIMPLEMENTED = 12
UNAVAILABLE = 14

_TIMEOUT_UNITS = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}
_MAX_TIMEOUT_DIGITS = 8

# What a gRPC client makes of an HTTP status that came without a gRPC status
# (grpc/grpc doc/http-grpc-status-mapping.md).
_HTTP_TO_GRPC = {
    400: INTERNAL,
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def is_grpc_web(content_type: bytes) -> bool:
    """Whether a Content-Type names gRPC-Web (binary or text)."""
    return content_type.lower().startswith(b"application/grpc-web")


def is_text(content_type: bytes) -> bool:
    """Whether a Content-Type names the base64 form (``application/grpc-web-text``)."""
    return content_type.lower().startswith(b"application/grpc-web-text")


def code_for_http_status(status: int) -> int:
    """The gRPC status of an HTTP answer that carries none."""
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def prefix(length: int, flag: int = DATA_FLAG) -> bytes:
    """The five bytes in front of a frame's ``length`` bytes of payload (gRPC's
    length-prefixed message, and gRPC-Web's frames)."""
    return _PREFIX.pack(flag, length)


def frame(message: bytes) -> bytes:
    """One data frame holding ``message``."""
    return _PREFIX.pack(DATA_FLAG, len(message)) + message


def encode_status_message(text: str) -> str:
    """``grpc-message``'s percent-encoding: UTF-8, with every byte outside
    printable ASCII, ``%`` itself, and spaces at either end escaped."""
    encoded = quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")
    # A field value may not begin or end with a space (RFC 9113 8.2.1): strict
    # HTTP/2 clients refuse it, and HTTP/1.1 readers of gRPC-Web trailers strip
    # it. gRPC's grammar lets any byte be escaped, and every conforming client
    # decodes %20 back to the space (TF Serving's "Duplicate evaluation of
    # signature: " ends with one).
    inner = encoded.strip(" ")
    if not inner:
        return "%20" * len(encoded)
    leading = len(encoded) - len(encoded.lstrip(" "))
    trailing = len(encoded) - len(encoded.rstrip(" "))
    return "%20" * leading + inner + "%20" * trailing


def decode_status_message(value: str) -> str:
    """Undo :func:`encode_status_message` (invalid escapes are kept as sent)."""
    return unquote(value, encoding="utf-8", errors="replace")


def trailer_lines(code: int, message: str, extra: Iterable[tuple[str, str]]) -> bytes:
    """The trailer block: ``grpc-status``, ``grpc-message`` and ``extra`` lines."""
    lines = [f"grpc-status: {code}", f"grpc-message: {encode_status_message(message)}"]
    lines.extend(f"{key}: {value}" for key, value in extra)
    return ("\r\n".join(lines) + "\r\n").encode("latin-1", "replace")


def trailer_frame(code: int, message: str, extra: Iterable[tuple[str, str]]) -> bytes:
    """The trailer frame that ends a response body."""
    block = trailer_lines(code, message, extra)
    return _PREFIX.pack(TRAILER_FLAG, len(block)) + block


_BASE64_WHITESPACE = b" \t\n\r\x0b\x0c"
_TEXT_PIECE_BYTES = 1 << 20
TEXT_IN_THREAD_BYTES = 1 << 20
"""From this many base64 characters a ``grpc-web-text`` body is decoded in a
thread: decoding runs at roughly 100-200 MiB/s, so a 16 MiB body would hold the
event loop for over 100 ms."""


class TextDecoder:
    """Decodes a base64 (``grpc-web-text``) body given in parts, as they come.

    Padding may appear between chunks of the body, so each padded chunk is
    decoded on its own, in pieces of at most 1 MiB counted from the chunk's
    start: every piece but a chunk's last is whole base64 groups, and each is
    one short C call (run in a thread, the event loop's thread gets the GIL back
    between pieces). The pieces are the same however the body is split into
    parts, so a bad body gets the same error whichever way it arrived.
    """

    def __init__(self) -> None:
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._at_padding = False
        self._decoded: list[bytes] = []

    def add(self, part: bytes | bytearray | memoryview) -> None:
        """Decode what ``part`` completes; keep the rest for the next part.

        Raises:
            InvalidArgument: not base64.
        """
        data = bytes(part).translate(None, _BASE64_WHITESPACE)
        self._held.append(data)
        self._held_bytes += len(data)
        if not data.rstrip(b"="):
            # Padding alone decides nothing (it may go on in the next part);
            # held, a long run of it is not joined again with every part.
            return
        # A chunk's end (padding) or a whole piece is ready to decode.
        if self._at_padding or self._held_bytes >= _TEXT_PIECE_BYTES or b"=" in data:
            self._decode(final=False)

    def finish(self) -> bytes:
        """The decoded body, once every part was added.

        Raises:
            InvalidArgument: not base64.
        """
        self._decode(final=True)
        decoded, self._decoded = self._decoded, []
        return b"".join(decoded)

    def _decode(self, *, final: bool) -> None:
        data = b"".join(self._held)
        view = memoryview(data)
        start, size = 0, len(data)
        self._at_padding = False
        while start < size:
            end = data.find(b"=", start)
            if end < 0:
                if not final:
                    start = self._whole_pieces(view, start, size)
                    break
                end = size
            else:
                # A chunk ends after its padding (one or two '='), which may go
                # on in the next part.
                pad = end
                end += 1
                while end < size and data[end] == _PAD:
                    end += 1
                if end == size and not final:
                    start = self._whole_pieces(view, start, pad)
                    self._at_padding = True
                    break
            self._pieces(view, start, end)
            start = end
        self._held = [data[start:]] if start < size else []
        self._held_bytes = size - start

    def _whole_pieces(self, view: memoryview, start: int, stop: int) -> int:
        """Decode the whole pieces between ``start`` and ``stop``; where the
        next piece starts."""
        stop = start + (stop - start) // _TEXT_PIECE_BYTES * _TEXT_PIECE_BYTES
        self._pieces(view, start, stop)
        return stop

    def _pieces(self, view: memoryview, start: int, end: int) -> None:
        try:
            for piece in range(start, end, _TEXT_PIECE_BYTES):
                stop = min(piece + _TEXT_PIECE_BYTES, end)
                self._decoded.append(
                    binascii.a2b_base64(view[piece:stop], strict_mode=True)
                )
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"grpc-web-text body is not base64: {exc}") from exc


def decode_text(body: bytes | bytearray | memoryview) -> bytes:
    """The bytes of a base64 (``grpc-web-text``) body (see :class:`TextDecoder`).

    Raises:
        InvalidArgument: not base64.
    """
    decoder = TextDecoder()
    view = memoryview(body)
    for start in range(0, len(view), _TEXT_PIECE_BYTES):
        decoder.add(view[start : start + _TEXT_PIECE_BYTES])
    return decoder.finish()


def split_frames(body: bytes) -> list[tuple[int, bytes]]:
    """Every ``(flag, payload)`` frame of a body.

    Raises:
        InvalidArgument: a frame is cut short.
    """
    frames: list[tuple[int, bytes]] = []
    offset = 0
    size = len(body)
    while offset < size:
        if size - offset < _PREFIX.size:
            raise InvalidArgument("gRPC-Web body ends inside a frame header")
        flag, length = _PREFIX.unpack_from(body, offset)
        offset += _PREFIX.size
        if size - offset < length:
            raise InvalidArgument(
                f"gRPC-Web frame announces {length} bytes but {size - offset} follow"
            )
        frames.append((flag, body[offset : offset + length]))
        offset += length
    return frames


def request_message(body: bytes) -> bytes:
    """The one message of a unary request body.

    Raises:
        InvalidArgument: no message, more than one, a compressed one (no
            ``grpc-encoding`` is negotiated) or a cut frame.
    """
    if len(body) >= _PREFIX.size:
        flag, length = _PREFIX.unpack_from(body, 0)
        if flag == DATA_FLAG and length == len(body) - _PREFIX.size:
            return body[_PREFIX.size :]
    frames = split_frames(body)
    data = [payload for flag, payload in frames if not flag & TRAILER_FLAG]
    if any(flag & COMPRESSED_FLAG for flag, _ in frames):
        raise InvalidArgument("compressed gRPC-Web messages are not supported")
    if len(data) != 1:
        raise InvalidArgument(f"a unary call takes one message, got {len(data)}")
    return data[0]


def parse_trailers(block: bytes) -> dict[str, str]:
    """The ``key: value`` lines of a trailer frame (keys lower-cased)."""
    trailers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        key, separator, value = line.partition(":")
        if separator:
            trailers[key.strip().lower()] = value.strip()
    return trailers


def response_parts(body: bytes) -> tuple[bytes | None, dict[str, str]]:
    """A unary response body's message (``None`` when absent) and trailers.

    Raises:
        InvalidArgument: a cut frame or a compressed message.
    """
    message: bytes | None = None
    trailers: dict[str, str] = {}
    for flag, payload in split_frames(body):
        if flag & TRAILER_FLAG:
            trailers.update(parse_trailers(payload))
        elif flag & COMPRESSED_FLAG:
            raise InvalidArgument("compressed gRPC-Web messages are not supported")
        else:
            message = payload
    return message, trailers


def encode_timeout(seconds: float) -> str:
    """A ``grpc-timeout`` value: whole milliseconds, rounded up, at least 1 ms.

    Longer timeouts step to coarser units to fit gRPC's eight digits.
    """
    millis = max(1, int(-(-seconds * 1000 // 1)))
    if millis < 10**_MAX_TIMEOUT_DIGITS:
        return f"{millis}m"
    whole = max(1, int(-(-seconds // 1)))
    if whole < 10**_MAX_TIMEOUT_DIGITS:
        return f"{whole}S"
    return f"{min(10**_MAX_TIMEOUT_DIGITS - 1, int(-(-seconds // 3600)))}H"


def decode_timeout(value: str) -> float:
    """Seconds of a ``grpc-timeout`` value (``1..8 digits`` then a unit).

    Raises:
        InvalidArgument: not in that form.
    """
    digits, unit = value[:-1], value[-1:]
    if (
        not digits.isdigit()
        or not digits.isascii()
        or len(digits) > _MAX_TIMEOUT_DIGITS
        or unit not in _TIMEOUT_UNITS
    ):
        raise InvalidArgument(f"malformed grpc-timeout {value!r}")
    return int(digits) * _TIMEOUT_UNITS[unit]
