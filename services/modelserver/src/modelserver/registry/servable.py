"""One model version as the server tracks it (:class:`Servable`), and one served
model's versions and labels (:class:`ModelEntry`): the records
:class:`~modelserver.registry.registry.ModelRegistry` keeps and requests hold."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelserver.config import ModelConfig
from modelserver.errors import ServingError, VersionNotFound
from modelserver.runtimes.base import Runtime
from modelserver.types import VersionState, VersionStatus

Loader = Callable[[ModelConfig, int, Path], Runtime]
"""Loads and warms up one version (blocking; runs in the load pool)."""

UnloadHook = Callable[["Servable"], Awaitable[None]]


@dataclass(eq=False)
class Servable:
    """One model version as the server tracks it."""

    name: str
    version: int
    path: Path
    state: VersionState = VersionState.START
    error: ServingError | None = None
    runtime: Runtime | None = None
    in_flight: int = 0
    retry_allowed: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.version_text = str(self.version)

    def acquire(self) -> Runtime:
        """Count a request in; the version stays loaded until it is released.

        Raises:
            VersionNotFound: The version stopped serving meanwhile.
        """
        runtime = self.runtime
        if runtime is None or self.state is not VersionState.AVAILABLE:
            raise VersionNotFound(
                f"Servable not found for request: Specific({self.name}, {self.version})"
            )
        self.in_flight += 1
        return runtime

    def release(self) -> None:
        """Count a request out."""
        self.in_flight -= 1
        if self.in_flight == 0 and self.state is VersionState.UNLOADING:
            self.drained.set()

    def status(self) -> VersionStatus:
        """This version's row of GetModelStatus."""
        if self.error is not None:
            return VersionStatus(
                self.version, self.state, self.error.code_value, str(self.error)
            )
        return VersionStatus(self.version, self.state)


@dataclass(eq=False)
class ModelEntry:
    """A served model: its config, versions and labels."""

    config: ModelConfig | None
    servables: dict[int, Servable] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    aspired: set[int] = field(default_factory=set)
    latest: Servable | None = None
    loads: set[asyncio.Task[None]] = field(default_factory=set)

    def refresh_latest(self) -> None:
        """Point ``latest`` at the highest AVAILABLE version."""
        best: Servable | None = None
        for servable in self.servables.values():
            if servable.state is VersionState.AVAILABLE and (
                best is None or servable.version > best.version
            ):
                best = servable
        self.latest = best
