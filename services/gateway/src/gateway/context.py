"""One request as the gateway's roles see it, and how a target goes on the wire.

The HTTP and gRPC adapters fill a `CallContext` in; admission, forwarding, the
signature cache and shadowing read it. The helpers below turn a routed `Target`
into the model spec or REST path the backend is called with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from servekit_protocol import messages
from servekit_protocol.logs import REQUEST_ID_HEADER
from servekit_protocol.paths import model_path

from gateway.routing.router import Target


@dataclass(slots=True)
class CallContext:
    """One request as the dataplane sees it; the adapters fill it in."""

    request_id: str
    protocol: str
    deadline: float
    """Absolute `time.monotonic()` deadline."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased request headers (or gRPC metadata), for sticky routing."""
    started: float = field(default_factory=time.perf_counter)
    client: str = ""
    """The peer's address (host only), against which failed keys are counted."""
    model: str = ""
    version: str = ""
    route: str = ""
    keep_answer_from: int | None = None
    """Backend answers of this many bytes or more may stay the bytes the
    backend sent (`clients.answers`): set by adapters that hand the answer to
    their client unchanged (gRPC and gRPC-Web) or decode it off the event
    loop (REST v1 `:predict`, OIP REST `infer`); None: always parsed."""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for backend calls: the request id travels along."""
        return ((REQUEST_ID_HEADER, self.request_id),)


def apply_target(spec: messages.ModelSpec, target: Target) -> None:
    """Point a request's ModelSpec at the chosen target (keeps signature_name)."""
    spec.name = target.model
    spec.ClearField("version")
    spec.ClearField("version_label")
    if target.version is not None:
        spec.version.value = target.version
    elif target.label is not None:
        spec.version_label = target.label


def rest_path(target: Target, verb: str) -> str:
    """TF Serving's REST path of a target, e.g. `/v1/models/m/labels/canary:predict`."""
    return model_path(target.model, target.version, target.label, verb)


def spec_version(spec: messages.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) a client's ModelSpec asks for."""
    if spec.HasField("version"):
        return spec.version.value, None
    if spec.version_label:
        return None, spec.version_label
    return None, None
