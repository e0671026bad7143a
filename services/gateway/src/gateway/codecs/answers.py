"""The JSON answers of the v2 `/infer` and typed endpoints, written from arrays.

orjson writes an array's JSON with the GIL held, so a large answer is written in
a JSON worker process (`BodyParsers.write_answer`) and a small one in place;
both run the functions here, which take only what pickles cheaply (the output
arrays and a few names) and give back the body's bytes, so the two ways answer
the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from gateway.codecs.v2 import InferRequest
from gateway.codecs.v2_binary import (
    compress,
    encode_body,
    format_outputs,
    response_coding,
)


def output_elements(outputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """Elements of all the answer's arrays: what decides where it is written."""
    return sum(int(array.size) for array in outputs.values())


@dataclass(frozen=True)
class InferBody:
    """A v2 answer's body and the headers that describe it."""

    content: bytes
    header_length: int | None
    """The JSON's length before compression (binary extension), or None."""
    coding: str | None
    """`gzip` or `deflate` when the body is compressed."""


def answer_request(request: InferRequest) -> InferRequest:
    """What writing the answer needs of the request: not its input arrays, which
    would travel to the worker for nothing."""
    return replace(request, inputs={})


def write_infer_answer(
    outputs: Mapping[str, np.ndarray[Any, Any]],
    request: InferRequest,
    model: str,
    model_version: str,
    accept_encoding: str,
) -> InferBody:
    """The body of a v2 `/infer` answer: JSON, binary parts, compression.

    Raises:
        InvalidInput: an output with no v2 datatype, or classification of a
            non-numeric output.
    """
    entries, binaries = format_outputs(outputs, request)
    reply: dict[str, Any] = {
        "model_name": model,
        "model_version": model_version,
        "outputs": entries,
    }
    if request.request_id is not None:
        reply["id"] = request.request_id
    content, header_length = encode_body(
        orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY), binaries
    )
    coding = response_coding(accept_encoding, len(content))
    if coding is not None:
        content = compress(content, coding)
    return InferBody(content, header_length, coding)


def typed_predictions(
    output_names: Sequence[str], arrays: Mapping[str, np.ndarray[Any, Any]]
) -> list[Any]:
    """One entry per row: a value for a single output, an object with one field
    per output otherwise (as many rows as the shortest output has)."""
    columns = {name: _json_values(arrays[name]) for name in output_names}
    if len(output_names) == 1:
        return columns[output_names[0]]
    count = min(len(values) for values in columns.values())
    return [{name: columns[name][i] for name in columns} for i in range(count)]


def write_typed_answer(
    model: str,
    version: int,
    output_names: Sequence[str],
    arrays: Mapping[str, np.ndarray[Any, Any]],
) -> bytes:
    """The JSON of a typed endpoint's answer."""
    return orjson.dumps(
        {
            "model": model,
            "version": version,
            "predictions": typed_predictions(output_names, arrays),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _json_values(array: np.ndarray[Any, Any]) -> list[Any]:
    if array.dtype.kind == "O":
        decoded = np.empty(array.shape, dtype=object)
        flat = decoded.reshape(-1)
        for index, item in enumerate(array.reshape(-1).tolist()):
            flat[index] = (
                item.decode("utf-8", errors="replace")
                if isinstance(item, bytes)
                else item
            )
        result: list[Any] = decoded.tolist()
        return result
    values: list[Any] = array.tolist()
    return values
