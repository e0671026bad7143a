"""Where a load generator sends its requests, and what it sends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HttpTarget:
    """A POST endpoint and the file holding the body to send to it."""

    url: str
    body_file: Path
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    """More request headers (e.g. the OIP binary extension's header length)."""


@dataclass(frozen=True)
class GrpcTarget:
    """A unary gRPC method, the serialized request, and the answer's size.

    ``response_bytes`` is the size of one successful serialized answer, learnt from a
    checked call before the load starts; a load generator that cannot read gRPC
    statuses counts successes by it.
    """

    address: str
    method: str
    request_file: Path
    response_bytes: int | None = None

    @property
    def path(self) -> str:
        return self.method if self.method.startswith("/") else f"/{self.method}"
