"""What a training job hands back once its version is in the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PublishedModel:
    """One published version: where it is and how well it did on held-out data."""

    name: str
    version: int
    path: Path
    framework: str
    task: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form printed by `servekit train --json`."""
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "framework": self.framework,
            "task": self.task,
            "metrics": self.metrics,
        }


def to_json_value(value: Any) -> Any:
    """A plain JSON value for one cell: numpy scalars unwrapped, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        return [to_json_value(item) for item in value]
    return str(value)
