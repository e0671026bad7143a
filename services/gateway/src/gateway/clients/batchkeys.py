"""What Predict requests must share to merge, and what each brings to a merge.

The coalescer groups requests by key and fills each merged call up to three
budgets: rows (``--coalesce-max-rows``), tensor elements and tensor bytes (the
request limits, ``--max-request-tensor-elements`` and
``--max-request-tensor-bytes``; `clients.mergequeue`). Every caller was checked
against those limits on its own; a merge is one request to the backend, which
holds it to them too, so each caller's share is counted as the backend counts
it. With TensorFlow's fill rule a Predict of a few bytes can declare the limit's
worth, and without the byte budget 31 such callers made the gateway write a
request of nearly 8 GiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensor_limits import declared_size
from servekit_protocol.tensors import declared_shape

from gateway.clients.arrays import ArrayRequest, array_layout, tensor_size
from gateway.clients.restbatch import RestPredict

Key = tuple[object, ...]


class Keyed(NamedTuple):
    """A mergeable request's key and its share of a merged call."""

    key: Key
    rows: int
    nbytes: int
    """The bytes its tensors hold once decoded, as the request limit counts
    them (declared by the shapes, whatever the message's own size)."""
    elements: int
    """The elements its tensors hold, as the request limit counts them."""


def spec_key(spec: messages.ModelSpec, output_filter: Sequence[str]) -> Key:
    """The part of a key that says which model, version and outputs."""
    version = spec.version.value if spec.HasField("version") else None
    return (
        spec.name,
        version,
        spec.version_label,
        spec.signature_name,
        tuple(output_filter),
    )


def proto_key(request: messages.PredictRequest) -> Keyed | None:
    """A gRPC caller's key: model spec, output filter, each input's name, dtype
    and trailing dimensions; its row count, declared bytes and elements. None without
    inputs, with a scalar, unknown-rank or negative-sized input, or with inputs
    whose leading dimensions differ."""
    rows = -1
    nbytes = 0
    elements = 0
    layout: list[tuple[str, int, tuple[int, ...]]] = []
    inputs = request.inputs
    for name in sorted(inputs):
        tensor = inputs[name]
        try:
            # Cached by the shape's bytes: faster than walking its dimensions.
            declared = declared_shape(tensor)
        except ProtocolError:
            return None
        sizes = declared[0]
        if not sizes:
            return None
        if rows == -1:
            rows = sizes[0]
        if sizes[0] != rows or rows < 1:
            return None
        count, size = declared_size(tensor, declared)
        elements += count
        nbytes += size
        layout.append((name, tensor.dtype, sizes[1:]))
    if rows == -1:
        return None
    key = spec_key(request.model_spec, request.output_filter) + (tuple(layout),)
    return Keyed(key, rows, nbytes, elements)


def array_key(request: ArrayRequest) -> Keyed | None:
    """A typed REST or OIP caller's key: as `proto_key`, with numpy dtypes."""
    layout_rows = array_layout(request.inputs)
    if layout_rows is None:
        return None
    layout, rows = layout_rows
    size = request.size
    elements, nbytes = tensor_size(request.inputs.values()) if size is None else size
    key = spec_key(request.model_spec, request.output_filter) + (layout,)
    return Keyed(key, rows, nbytes, elements)


def rest_key(request: RestPredict) -> Keyed:
    """An untranslated REST body's key: path, signature, format and layout.
    The backend types its values, so what it brings is the bytes the gateway
    writes for it, its body's, and the elements its rows' nesting declares."""
    key = (request.path, request.signature_name, request.columnar, request.layout)
    return Keyed(key, request.rows, len(request.body), request.elements)
