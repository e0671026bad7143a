"""Which registry version a job runs: ``NAME``, ``NAME:VERSION`` or ``NAME@LABEL``."""

from __future__ import annotations

from pathlib import Path

from modelregistry import Registry, RegistryError

from servekit.batch.refs import ModelRef
from servekit.console import CommandError


def resolve_version(registry: Path, ref: ModelRef) -> int:
    """The version number ``ref`` means in the registry (``stable``, else latest).

    Raises:
        CommandError: Unknown model, version or label.
    """
    try:
        return Registry(registry).resolve(ref.name, ref.version, ref.label)
    except RegistryError as exc:
        raise CommandError(f"{registry}: {exc}") from exc


def version_dir(registry: Path, name: str, version: int) -> Path:
    """The folder of a version.

    Raises:
        CommandError: No such model or version.
    """
    try:
        return Registry(registry).version_dir(name, version)
    except RegistryError as exc:
        raise CommandError(f"{registry}: {exc}") from exc
