"""A model call's outputs as each row's prediction, in JSON text, an output at a time.

The text is byte for byte what the REST API's row-format answer gives a client
that reads ``predictions`` and writes one back with ``orjson``: the answer is
formatted by :func:`servekit_protocol.json_codec.format_predict_response`
(numpy's float32 written at its shortest), read as Python floats, and written
again. Numeric outputs of one or two dimensions take a vectorised path with the
same result; any other output takes exactly that route, row by row.

For CSV and Parquet results, :func:`prediction_columns` gives the same values
as Arrow columns: what those texts read back as (``float64``, ``int64``,
``bool``, or lists of them), one column per output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from servekit_protocol import json_codec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_COMMA = ord(",")


def prediction_texts(outputs: Mapping[str, NDArray[Any]], rows: int) -> list[bytes]:
    """Each row's ``predictions`` entry as JSON text (``rows`` of them).

    Raises:
        InvalidArgument: The outputs cannot be written as a row-format answer
            (no outputs, no batch dimension, inconsistent batch sizes).
    """
    columns: dict[str, list[bytes]] = {}
    for name in sorted(outputs):  # the codec's order (json_codec.predict)
        array = np.asarray(outputs[name])
        texts = _output_texts(array) if array.shape[:1] == (rows,) else None
        if texts is None:
            return _through_the_codec(outputs)
        columns[name] = texts
    if len(columns) == 1:
        return next(iter(columns.values()))
    if not columns:
        return _through_the_codec(outputs)
    template = (
        b"{"
        + b",".join(
            orjson.dumps(name).replace(b"%", b"%%") + b":%b" for name in columns
        )
        + b"}"
    )
    return [template % row for row in zip(*columns.values(), strict=True)]


def prediction_columns(
    outputs: Mapping[str, NDArray[Any]], rows: int
) -> dict[str, pa.Array] | None:
    """Each output's values as the row-format answer reads back, as Arrow columns.

    ``None`` when an output is not numeric with one or two dimensions of
    ``rows`` rows, or holds NaN or infinities (whose answer text is ``null``):
    then only the texts say what a row holds.
    """
    columns: dict[str, pa.Array] = {}
    for name in sorted(outputs):  # the codec's order (json_codec.predict)
        array = np.asarray(outputs[name])
        kind = array.dtype.kind
        if (
            array.ndim not in (1, 2)
            or array.shape[0] != rows
            or kind not in "biuf"
            or (kind == "f" and not np.isfinite(array).all())
            or (kind == "u" and array.dtype.itemsize == 8)
            or (array.ndim == 2 and not array.shape[1])
        ):
            return None
        values: NDArray[Any]
        if kind == "f" and array.dtype != np.float64:
            values = read_back(array)
        elif kind in "iu":
            values = array.astype(np.int64)
        else:
            values = array
        if values.ndim == 1:
            columns[name] = pa.array(values)
        else:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            steps = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
            columns[name] = pa.ListArray.from_arrays(pa.array(steps), flat)
    if not columns:
        return None
    return columns


def _output_texts(array: NDArray[Any]) -> list[bytes] | None:
    kind = array.dtype.kind
    if array.ndim not in (1, 2) or kind not in "biuf" or not array.dtype.isnative:
        return None
    if kind == "f" and array.dtype not in (np.float32, np.float64):
        return None
    if kind == "f" and not np.isfinite(array).all():
        # The codec writes TF Serving's NaN tokens, which read back as floats
        # that orjson writes as null: leave that to the codec's own route.
        return None
    array = np.ascontiguousarray(array)
    if kind == "f" and array.dtype != np.float64:
        # The codec writes float32 at its shortest; read back, that is a Python
        # float, which orjson writes in float64's style (7.073035e-6, not
        # 0.000007073035): the text takes the same round trip.
        array = read_back(array)
    text = orjson.dumps(array, option=_OPTIONS)
    if array.ndim == 1:
        return text[1:-1].split(b",") if len(array) else []
    if not len(array):
        return []
    return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]


def read_back(array: NDArray[Any]) -> NDArray[np.float64]:
    """The ``float64`` each finite value of ``array`` (``float32``, or another
    float but ``float64``) reads back as from its shortest text, the text the REST answer holds for it (``0.1``, not the
    ``float32``'s exact ``0.100000001490116``).

    ``orjson`` writes the values at their shortest, as the codec does; Arrow
    parses each value of that text correctly rounded (fast_float), in C++
    without the GIL. Reading the text back with
    ``orjson.loads`` and numpy gives the same values (every one of four million
    random ``float32`` bit patterns checked) for about the same CPU time, but
    holds the GIL throughout (about 0.8 µs a row of ``digits``' ten
    probabilities, against the 0.24 of the writing here), so the model's
    thread, back from a call, waited for it: with a thread reading back beside
    it, the ``digits`` model ran 150,000 to 200,000 rows/s that way, and
    600,000 to 1,000,000 this way. NaN and infinities, whose answer text is
    not a number, are not read back (the callers take another route for them).
    """
    if not array.size:
        return np.zeros(array.shape, dtype=np.float64)
    text = orjson.dumps(np.ascontiguousarray(array).reshape(-1), option=_OPTIONS)
    # A string a value over orjson's bytes as they are, each from its comma
    # (the first from the bracket) to the next, the comma then trimmed: a
    # quarter less CPU than splitting the text at its commas, which copies
    # every value into a list array of its own.
    commas = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == _COMMA)
    bounds = np.empty(array.size + 1, dtype=np.int64)
    bounds[0] = 1
    bounds[1:-1] = commas
    bounds[-1] = len(text) - 1
    strings = pa.LargeStringArray.from_buffers(
        array.size, pa.py_buffer(bounds), pa.py_buffer(text)
    )
    values = pc.cast(pc.utf8_ltrim(strings, characters=","), pa.float64())
    return np.asarray(values.to_numpy(), dtype=np.float64).reshape(array.shape)


def _through_the_codec(outputs: Mapping[str, NDArray[Any]]) -> list[bytes]:
    answer = json_codec.format_predict_response(outputs, json_codec.RequestFormat.ROW)
    predictions: list[Any] = json_codec.loads(answer)["predictions"]
    return [orjson.dumps(prediction) for prediction in predictions]
