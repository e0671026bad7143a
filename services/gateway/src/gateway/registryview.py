"""What the gateway reads from the registry folder, cached by file identity.

Labels come from each model's state file, re-read only when its mtime/size/inode
change (one `stat` per lookup), so `servekit models promote` is seen at once.
Manifests are immutable per version and cached for good. The gateway never writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from modelregistry import (
    MODEL_STATE_FILE,
    Manifest,
    Registry,
    RegistryError,
    nullability_unrecorded,
)

logger = logging.getLogger(__name__)

FileIdentity = tuple[int, int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """(mtime_ns, size, inode) of a file, or None when it does not exist."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _warn_if_nullability_unrecorded(
    model: str, version: int, manifest: Manifest
) -> None:
    """One line per version (manifests are read once) whose typed endpoints keep
    taking null in every float column because its manifest predates
    `Feature.nullable`."""
    columns = nullability_unrecorded(manifest)
    if not columns:
        return
    logger.warning(
        "%s version %d: its manifest predates recorded nullability, so its typed "
        "endpoints take null in every float column as they did when it was "
        "published (a model that does not impute the column answers 400); "
        "publish the model again (servekit models publish, or its training job) "
        "to record which columns it imputes and refuse null elsewhere with 422",
        model,
        version,
        extra={
            "servable": model,
            "servable_version": version,
            "unrecorded_columns": columns,
        },
    )


@dataclass(frozen=True)
class ModelView:
    """A model's published versions, labels and the manifest of each version."""

    name: str
    versions: tuple[int, ...]
    labels: dict[str, int]
    manifests: dict[int, Manifest]

    def default_version(self) -> int | None:
        """What an unversioned request means: `stable` if set, else the latest."""
        if "stable" in self.labels and self.labels["stable"] in self.versions:
            return self.labels["stable"]
        return self.versions[-1] if self.versions else None


class RegistryView:
    """Read-only, cached access to a registry folder."""

    def __init__(self, root: Path) -> None:
        self.registry = Registry(root)
        self.root = Path(root)
        self._labels: dict[str, tuple[FileIdentity | None, dict[str, int]]] = {}
        self._manifests: dict[tuple[str, int], Manifest | None] = {}
        self._frameworks: dict[str, str | None] = {}

    def labels(self, model: str) -> dict[str, int] | None:
        """The model's labels, or None when the registry does not have the model."""
        model_dir = self.root / model
        identity = file_identity(model_dir / MODEL_STATE_FILE)
        cached = self._labels.get(model)
        if cached is not None and cached[0] == identity:
            return cached[1]
        if identity is None and not model_dir.is_dir():
            return None
        try:
            labels = self.registry.labels(model)
        except RegistryError as exc:
            logger.warning("cannot read labels of %s: %s", model, exc)
            return None
        self._labels[model] = (identity, labels)
        return labels

    def manifest(self, model: str, version: int) -> Manifest | None:
        """The version's manifest, or None (no such version, or no manifest)."""
        key = (model, version)
        if key in self._manifests and self._manifests[key] is not None:
            return self._manifests[key]
        try:
            manifest: Manifest | None = self.registry.manifest(model, version)
        except RegistryError:
            manifest = None
        if manifest is not None:
            self._manifests[key] = manifest
            _warn_if_nullability_unrecorded(model, version, manifest)
        return manifest

    def framework(self, model: str) -> str | None:
        """`sklearn` or `tensorflow` for the model's latest version (cached until
        `forget_frameworks`), None when the registry does not know the model."""
        if model in self._frameworks:
            return self._frameworks[model]
        framework: str | None = None
        try:
            versions = self.registry.versions(model)
            if versions:
                framework = self.registry.framework(model, versions[-1])
        except RegistryError:
            framework = None
        self._frameworks[model] = framework
        return framework

    def forget_frameworks(self) -> None:
        self._frameworks.clear()

    def resolve(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> int | None:
        """The version a request means, or None when the registry cannot tell."""
        try:
            return self.registry.resolve(model, version=version, label=label)
        except RegistryError:
            return None

    def snapshot(self) -> dict[str, ModelView]:
        """Every model with its versions, labels and manifests (for typed routes)."""
        views: dict[str, ModelView] = {}
        try:
            names = self.registry.models()
        except (OSError, RegistryError):
            return views
        for name in names:
            try:
                versions = tuple(self.registry.versions(name))
            except RegistryError:
                continue
            labels = self.labels(name) or {}
            manifests: dict[int, Manifest] = {}
            for version in versions:
                manifest = self.manifest(name, version)
                if manifest is not None:
                    manifests[version] = manifest
            views[name] = ModelView(name, versions, labels, manifests)
        return views

    def fingerprint(self) -> tuple[object, ...]:
        """Changes whenever a model, version or label changes (cheap: a few stats)."""
        parts: list[object] = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        except OSError:
            return ()
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                versions = sorted(
                    child.name
                    for child in os.scandir(entry.path)
                    if child.name.isdigit() and child.is_dir()
                )
            except OSError:
                continue
            state = file_identity(Path(entry.path) / MODEL_STATE_FILE)
            parts.append((entry.name, tuple(versions), state))
        return tuple(parts)
