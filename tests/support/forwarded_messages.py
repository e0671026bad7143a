"""Messages the gateway's forwarded-message unit tests build by hand.

The forwarded Predict, Classify, Regress and MultiInference readers are checked
against the same client model specs, the same routing targets and the same
hand-written protobuf fields (a field out of place, a field twice, a bad
length), so they are built here once.
"""

from __future__ import annotations

from gateway.routing.router import Target
from servekit_protocol import messages, tensors

LENGTH_DELIMITED = 2
"""Protobuf's wire type of bytes, strings and embedded messages."""


def model_spec(
    name: str = "m",
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str | None = None,
) -> messages.ModelSpec:
    """A client's ``model_spec`` with only the given fields set."""
    spec = messages.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    if signature is not None:
        spec.signature_name = signature
    return spec


TARGETS = {
    "latest": Target("m", ("b:1",), None, None, "default"),
    "version": Target("m", ("b:1",), 4, None, "explicit"),
    "version 0": Target("m", ("b:1",), 0, None, "explicit"),
    "label": Target("m", ("b:1",), None, "canary", "canary"),
    "other model": Target("n", ("b:1",), 2, None, "stable"),
}
"""Where routing may send a call: each rewrites the client's spec differently."""


def field(number: int, wire: int, payload: bytes) -> bytes:
    """One protobuf field: its key, then ``payload`` (length-prefixed when
    ``wire`` is :data:`LENGTH_DELIMITED`, as it is written otherwise)."""
    key = tensors.varint(number << 3 | wire)
    if wire == LENGTH_DELIMITED:
        return key + tensors.varint(len(payload)) + payload
    return key + payload


def spec_field(spec: messages.ModelSpec) -> bytes:
    """``model_spec`` (field 1 of every request the gateway forwards)."""
    return field(1, LENGTH_DELIMITED, spec.SerializeToString())
