"""JSON documents as TF Serving reads and writes them: parsing (NaN and Infinity
accepted), serialization, the request envelope's common keys and error bodies."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson

from servekit_protocol.errors import InvalidArgument
from servekit_protocol.serving import DEFAULT_SIGNATURE

_DEBUG_LIMIT = 256
OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def debug_text(value: object) -> str:
    """A value as JSON for an error message, cut to a few hundred characters."""
    try:
        text = orjson.dumps(value, option=OPTIONS).decode("utf-8", "replace")
    except TypeError:
        text = repr(value)
    if len(text) > _DEBUG_LIMIT:
        return text[:_DEBUG_LIMIT] + "..."
    return text


def json_type(value: object) -> str:
    """The JSON type name TF Serving's messages use for a parsed value."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def loads(body: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON, accepting the NaN/Infinity tokens TF Serving allows.

    Raises:
        InvalidArgument: "JSON Parse error: ..." for an empty or malformed body.
    """
    if not body or (isinstance(body, str | bytes | bytearray) and not body.strip()):
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        # orjson rejects NaN/Infinity, which TF Serving accepts; the standard
        # parser accepts them, so it gets a second chance on failures only.
        try:
            text = bytes(body).decode("utf-8") if not isinstance(body, str) else body
            return json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: nesting orjson refused as too deep (over 1,024
            # levels) is too deep for the standard parser as well.
            raise InvalidArgument(f"JSON Parse error: {fast_error}") from fast_error


def parse_document(body: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object.

    Raises:
        InvalidArgument: malformed JSON, or not an object.
    """
    document = loads(body)
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {debug_text(document)} Is not object")
    return document


def read_signature_name(document: dict[str, Any]) -> str:
    """The body's ``signature_name`` (``serving_default`` when absent or empty).

    Raises:
        InvalidArgument: not a string.
    """
    name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {debug_text(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


def is_b64(value: object) -> bool:
    """Whether a JSON value is a ``{"b64": "..."}`` binary string."""
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get("b64"), str)
    )


def decode_b64(value: dict[str, str]) -> bytes:
    """The bytes of a ``{"b64": "..."}`` value.

    Raises:
        InvalidArgument: not valid base64.
    """
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("Unable to base64 decode") from exc


def dumps(document: Any) -> bytes:
    """Serialize a response document (numpy arrays and scalars allowed)."""
    return orjson.dumps(document, option=OPTIONS)


def error_body(message: str) -> bytes:
    """TF Serving's error body: ``{"error": message}``."""
    return dumps({"error": message})
