"""TF Serving REST `:predict` bodies merged into one, and the answer cut back, as JSON.

The coalescer merges concurrent REST predicts for one target into one REST call,
as it merges gRPC calls, but without typing a single value here: the callers'
rows (`instances`) or columns (`inputs`) are joined as JSON values, the backend
checks and types them as it would each caller's own body, and its `predictions`
or `outputs` are cut into each caller's rows.

orjson reads a number into the same int64 or double the backend would read from
the client's text, and writes it back in a form that reads into that value again,
so a merged body carries the same values. What orjson cannot read (NaN, Infinity,
malformed JSON) is not merged: it goes to the backend as it came, and the backend
answers it as its own.

A merged answer from the JSON threshold is cut in a JSON worker
(`RestStrategy`), so `split_rest` reads nothing of the first request but its
format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from math import prod
from typing import Any

import orjson

MAX_MERGED_BODY_BYTES = 256 * 1024
"""Bodies above this go on their own, unread: they are batches already, and
reading them would cost the gateway as much as the backend."""

Layout = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class RestPredict:
    """A v1 `:predict` body that can merge with others of the same layout."""

    path: str
    """The backend's REST path (model, version or label, verb)."""
    body: bytes
    """As the client sent it; sent unchanged when the call carries it alone."""
    signature_name: str | None
    columnar: bool
    """`inputs` (columns) rather than `instances` (rows)."""
    values: Any
    """The `instances` list, or the `inputs` object or list."""
    layout: Layout
    """What another body must share to merge: format, input names, row shapes."""
    rows: int
    elements: int
    """What the backend's request limit counts of it: the rows times the
    elements its first row declares by its nesting, every input together."""


def _dims(value: Any) -> tuple[int, ...]:
    """The lengths of the first list at each nesting level (a row's shape)."""
    dims: list[int] = []
    while type(value) is list:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(dims)


def _row_layout(row: Any) -> Layout | None:
    if type(row) is dict:
        if "b64" in row:
            return None
        return tuple((name, _dims(row[name])) for name in sorted(row))
    return ("value", _dims(row))


def _row_elements(shapes: Sequence[tuple[int, ...]]) -> int:
    return sum(prod(shape) for shape in shapes)


def _batch(value: Any) -> tuple[int, tuple[int, ...]] | None:
    """(rows, row shape) of one column; None without a leading list dimension."""
    if type(value) is not list or not value:
        return None
    return len(value), _dims(value[0])


def rest_predict(path: str, body: bytes) -> RestPredict | None:
    """The body as a mergeable request; None when it must go on its own (not an
    object with a non-empty `instances` list or `inputs` with a shared leading
    dimension, other keys, a body orjson cannot read, or a large one)."""
    if len(body) > MAX_MERGED_BODY_BYTES:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict:
        return None
    signature_name = document.get("signature_name")
    if signature_name is not None and type(signature_name) is not str:
        return None
    expected = 2 if signature_name is not None else 1
    if len(document) != expected:
        return None
    instances = document.get("instances")
    if instances is not None:
        if type(instances) is not list or not instances:
            return None
        layout = _row_layout(instances[0])
        if layout is None:
            return None
        first = instances[0]
        # A row of named inputs counts each one's values; the backend counts
        # those its signature names, so never more.
        row = _row_elements(
            [_dims(first[name]) for name in first]
            if type(first) is dict
            else [_dims(first)]
        )
        rows = len(instances)
        return RestPredict(
            path, body, signature_name, False, instances, layout, rows, rows * row
        )
    inputs = document.get("inputs")
    if type(inputs) is dict:
        if not inputs or "b64" in inputs:
            return None
        shapes = []
        rows = -1
        for name in sorted(inputs):
            batch = _batch(inputs[name])
            if batch is None or (rows != -1 and batch[0] != rows):
                return None
            rows = batch[0]
            shapes.append((name, batch[1]))
        elements = rows * _row_elements([shape for _, shape in shapes])
        return RestPredict(
            path, body, signature_name, True, inputs, ("named", *shapes), rows, elements
        )
    batch = _batch(inputs)
    if batch is None:
        return None
    rows, shape = batch
    return RestPredict(
        path,
        body,
        signature_name,
        True,
        inputs,
        ("single", shape),
        rows,
        rows * prod(shape),
    )


def merge_rest(requests: Sequence[RestPredict]) -> bytes:
    """One body whose rows are the requests' rows, in order (same layout)."""
    first = requests[0]
    document: dict[str, Any] = {}
    if first.signature_name is not None:
        document["signature_name"] = first.signature_name
    if not first.columnar:
        document["instances"] = list(chain.from_iterable(r.values for r in requests))
    elif type(first.values) is dict:
        document["inputs"] = {
            name: list(chain.from_iterable(r.values[name] for r in requests))
            for name in first.values
        }
    else:
        document["inputs"] = list(chain.from_iterable(r.values for r in requests))
    return orjson.dumps(document)


def _cut(values: Any, rows: Sequence[int]) -> list[Any] | None:
    if type(values) is not list or len(values) != sum(rows):
        return None
    parts = []
    start = 0
    for count in rows:
        parts.append(values[start : start + count])
        start += count
    return parts


def split_rest(
    answer: bytes, first: RestPredict, rows: Sequence[int]
) -> list[bytes] | None:
    """Each caller's answer body out of a merged call's successful answer; None
    when an output does not lead with the merged rows (then the callers must be
    served one by one)."""
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict or len(document) != 1:
        return None
    if not first.columnar:
        parts = _cut(document.get("predictions"), rows)
        if parts is None:
            return None
        return [orjson.dumps({"predictions": part}) for part in parts]
    outputs = document.get("outputs")
    if type(outputs) is not dict:
        parts = _cut(outputs, rows)
        if parts is None:
            return None
        return [orjson.dumps({"outputs": part}) for part in parts]
    columns: dict[str, list[Any]] = {}
    for name, value in outputs.items():
        cut = _cut(value, rows)
        if cut is None:
            return None
        columns[name] = cut
    return [
        orjson.dumps({"outputs": {name: cut[index] for name, cut in columns.items()}})
        for index in range(len(rows))
    ]
