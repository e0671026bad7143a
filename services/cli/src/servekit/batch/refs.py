"""What a job names on its command line: the model version and its share of shards."""

from __future__ import annotations

import re
from dataclasses import dataclass

from servekit.console import CommandError

_MODEL_REF = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?::(?P<version>\d+)|@(?P<label>[A-Za-z0-9_.-]+))?"
)
_SHARD = re.compile(r"(?P<index>\d+)/(?P<count>\d+)")


@dataclass(frozen=True)
class ModelRef:
    """``NAME``, ``NAME:VERSION`` or ``NAME@LABEL``."""

    name: str
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.label is not None:
            return f"{self.name}@{self.label}"
        return self.name


@dataclass(frozen=True)
class ShardSlice:
    """Process ``index`` of ``count``: it writes every output shard ``k`` with
    ``k % count == index``, so any number of processes share one job."""

    index: int = 0
    count: int = 1

    def owns(self, shard: int) -> bool:
        """Whether this process writes output shard ``shard``."""
        return shard % self.count == self.index


def parse_model_ref(text: str) -> ModelRef:
    """Read ``NAME[:VERSION|@LABEL]``.

    Raises:
        CommandError: Not of that form, or version 0.
    """
    match = _MODEL_REF.fullmatch(text.strip())
    if match is None:
        raise CommandError(
            f"invalid --model {text!r}: expected NAME, NAME:VERSION or NAME@LABEL"
        )
    version = match["version"]
    if version is not None and int(version) <= 0:
        raise CommandError(f"invalid --model {text!r}: versions are positive integers")
    return ModelRef(
        match["name"], int(version) if version is not None else None, match["label"]
    )


def parse_shard(text: str) -> ShardSlice:
    """Read ``i/n`` (0 <= i < n).

    Raises:
        CommandError: Not of that form, or ``i`` out of range.
    """
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise CommandError(f"invalid --shard {text!r}: expected INDEX/COUNT, e.g. 0/4")
    index, count = int(match["index"]), int(match["count"])
    if count <= 0 or index >= count:
        raise CommandError(
            f"invalid --shard {text!r}: INDEX must be in 0..COUNT-1 and COUNT >= 1"
        )
    return ShardSlice(index, count)
