"""The binary tensor data extension of the Open Inference Protocol over HTTP.

A request or answer body is a JSON header followed by raw tensors; the
`Inference-Header-Content-Length` header gives the JSON's length. A binary input
names its byte count in `parameters.binary_data_size` and has no `data`; the
binary parts follow the JSON in the order of the inputs that have one. An output
is answered in binary when its `parameters.binary_data` is true, or, without
that, when the request's `parameters.binary_data_output` is true; its entry then
carries `binary_data_size` instead of `data`. Pure functions; no transport here.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.codecs.v2 import InferRequest, RequestedOutput, format_output
from gateway.codecs.v2_classification import classify
from gateway.codecs.v2_raw import to_raw
from gateway.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
"""The extension's header (lower-case, as ASGI gives header names)."""
BINARY_CONTENT_TYPE = "application/octet-stream"
MIN_COMPRESSED_BYTES = 1024
"""Smaller answers go uncompressed even when the client accepts gzip or deflate
(HTTP leaves it to the server): compressing them costs more than it saves."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes | None]:
    """The JSON header and the binary part (None without the extension).

    Raises:
        InvalidInput: the header length is not a number within the body.
    """
    if header_length is None:
        return body, None
    text = header_length.strip()
    if not text.isdigit():
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
        )
    length = int(text)
    if length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} is larger than the body "
            f"({len(body)} bytes)"
        )
    return body[:length], body[length:]


def _wants_binary(requested: RequestedOutput | None, request: InferRequest) -> bool:
    if requested is not None and requested.binary is not None:
        return requested.binary
    return request.binary_by_default


def format_outputs(
    outputs: Mapping[str, np.ndarray[Any, Any]], request: InferRequest
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The `outputs` entries of an answer and the binary parts that follow the JSON.

    Classification outputs (`classification` > 0) are replaced by their top
    classes first, then encoded like any BYTES tensor.

    Raises:
        InvalidInput: an output with no v2 datatype, or classification of a
            non-numeric output.
    """
    by_name = {item.name: item for item in request.requested}
    entries: list[dict[str, Any]] = []
    binaries: list[bytes] = []
    for name, array in outputs.items():
        requested = by_name.get(name)
        tensor = array
        if requested is not None and requested.class_count:
            tensor = classify(array, requested.class_count, name)
        if _wants_binary(requested, request):
            datatype, raw = to_raw(tensor)
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(tensor.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            binaries.append(raw)
        else:
            entries.append(format_output(name, tensor))
    return entries, binaries


def response_coding(accept_encoding: str, size: int) -> str | None:
    """The compression to answer `size` bytes with: `gzip` or `deflate` when the
    client's Accept-Encoding names one (and does not refuse it with q=0) and the
    answer has at least MIN_COMPRESSED_BYTES, else None.

    tritonclient's `response_compression_algorithm` sends exactly one of them.
    """
    if size < MIN_COMPRESSED_BYTES:
        return None
    for part in accept_encoding.split(","):
        name, _, rest = part.strip().partition(";")
        name = name.strip().lower()
        if name not in ("gzip", "deflate"):
            continue
        quality = rest.strip().lower().removeprefix("q=").strip()
        if quality and quality.replace(".", "").strip("0") == "":
            continue
        return name
    return None


def compress(body: bytes, coding: str) -> bytes:
    """`body` in the HTTP coding named (`deflate` is the zlib format, RFC 9110)."""
    if coding == "gzip":
        return gzip.compress(body, compresslevel=6)
    return zlib.compress(body, 6)


def encode_body(header: bytes, binaries: list[bytes]) -> tuple[bytes, int | None]:
    """The answer's body and the value of its Inference-Header-Content-Length
    (None when nothing is binary: a plain JSON answer)."""
    if not binaries:
        return header, None
    return b"".join([header, *binaries]), len(header)


__all__ = [
    "BINARY_CONTENT_TYPE",
    "HEADER_LENGTH",
    "compress",
    "encode_body",
    "format_outputs",
    "response_coding",
    "split_body",
]
