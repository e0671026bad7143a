"""The routes file (`routes.yaml`): model -> backends, stable target, canary, shadow.

Schema (every key but `routes` optional)::

    routes:
      tabular:
        backend: "127.0.0.1:8500"      # TF Serving gRPC address (or `backends: [..]`)
        stable: stable                 # label name, or a version number; omitted: latest
        canary:
          label: canary                # or `version: 4`
          weight: 0.1                  # share of traffic (0..1)
          backend: "10.0.0.7:8500"     # optional, default: the route's backends
        shadow: false                  # true: mirror the canary share, answer from stable
        sticky_header: x-user-id       # same header value -> same side of the split

Models without a route go to the default backend, version as the client asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RoutesFileError(ValueError):
    """The routes file cannot be read or does not fit the schema."""


class CanaryConfig(BaseModel):
    """The second target of a split (or the shadow)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = None
    version: int | None = Field(default=None, gt=0)
    weight: float = Field(default=0.0, ge=0.0, le=1.0)
    backend: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> CanaryConfig:
        if (self.label is None) == (self.version is None):
            raise ValueError("a canary names exactly one of label or version")
        return self


class RouteConfig(BaseModel):
    """How one model is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    backends: tuple[str, ...] = ()
    stable: str | int | None = None
    canary: CanaryConfig | None = None
    shadow: bool = False
    sticky_header: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteConfig:
        if self.backend is not None and self.backends:
            raise ValueError("give either backend or backends, not both")
        if isinstance(self.stable, int) and self.stable <= 0:
            raise ValueError("stable version must be a positive integer")
        if self.shadow and self.canary is None:
            raise ValueError("shadow mode needs a canary to mirror to")
        return self

    def addresses(self, default_backend: str) -> tuple[str, ...]:
        """The backends of the stable side."""
        if self.backends:
            return self.backends
        if self.backend is not None:
            return (self.backend,)
        return (default_backend,)

    def canary_addresses(self, default_backend: str) -> tuple[str, ...]:
        if self.canary is not None and self.canary.backend is not None:
            return (self.canary.backend,)
        return self.addresses(default_backend)


class RoutesConfig(BaseModel):
    """The whole routes file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: dict[str, RouteConfig] = Field(default_factory=dict)


def parse_routes(data: Any) -> RoutesConfig:
    """Validate parsed YAML (None, e.g. an empty file, means no routes).

    Raises:
        RoutesFileError: the data does not fit the schema.
    """
    try:
        return RoutesConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise RoutesFileError(f"routes file: {where}: {first['msg']}") from exc


def load_routes(path: Path) -> RoutesConfig:
    """Read the routes file; a missing file means no routes.

    Raises:
        RoutesFileError: unreadable, not YAML, or not the schema.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RoutesConfig()
    except OSError as exc:
        raise RoutesFileError(f"{path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"{path}: not valid YAML: {exc}") from exc
    return parse_routes(data)
