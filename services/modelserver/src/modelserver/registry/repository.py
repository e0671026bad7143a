"""The disk side of serving: which versions a base path holds and how to load one.

A version is a sub-directory whose name is a base-10 integer (``00000123`` is
version 123, as in TF Serving). Hidden entries (leading ``.``, which is where the
registry builds versions before renaming them into place), temporary names and
anything else that is not an integer are ignored.

The runtime is chosen per version directory: its ``servekit.json`` manifest names
the framework; without a manifest, a ``saved_model.pb`` means TensorFlow; a pickle
without a manifest is refused (its sha256 cannot be verified).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelregistry import MANIFEST_FILE, ManifestError, read_manifest

from modelserver.errors import ArtifactNotFound, LoadError
from modelserver.runtimes.base import Runtime

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What every load needs besides the version directory."""

    saved_model_tags: tuple[str, ...] = ("serve",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    gpu_memory_fraction: float = 0.0
    method_name_check: bool = False
    own_warning_filters: bool = False


def scan_versions(base_path: Path) -> dict[int, Path]:
    """Version number -> directory for every integer-named directory.

    A missing or unreadable base path holds no versions.
    """
    versions: dict[int, Path] = {}
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return versions
    for entry in entries:
        name = entry.name
        if not (name.isascii() and name.isdigit()):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        versions[int(name)] = Path(entry.path)
    return versions


def load_runtime(
    *, name: str, version: int, path: Path, platform: str, options: LoadOptions
) -> Runtime:
    """Load one version with the runtime its directory calls for (blocking).

    Raises:
        LoadError: The directory cannot be served; the message says why.
    """
    if not path.is_dir():
        raise ArtifactNotFound(f"Version directory {path} does not exist")
    framework = _framework(path, platform)
    if framework == "sklearn":
        from modelserver.runtimes.compiled import load_sklearn

        try:
            manifest = read_manifest(path)
        except ManifestError as exc:
            raise LoadError(str(exc)) from exc
        return load_sklearn(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            method_name_check=options.method_name_check,
            own_warning_filters=options.own_warning_filters,
        )
    # TensorFlow is imported only when a SavedModel is actually loaded.
    from modelserver.runtimes.tensorflow import SessionOptions, TensorFlowRuntime

    return TensorFlowRuntime.load(
        name=name,
        version=version,
        path=path,
        options=SessionOptions(
            intra_op_threads=options.intra_op_threads,
            inter_op_threads=options.inter_op_threads,
            gpu_memory_fraction=options.gpu_memory_fraction,
            tags=options.saved_model_tags,
        ),
        method_name_check=options.method_name_check,
    )


def _framework(path: Path, platform: str) -> str:
    if (path / MANIFEST_FILE).is_file():
        try:
            return read_manifest(path).framework
        except ManifestError as exc:
            raise LoadError(str(exc)) from exc
    if any((path / filename).is_file() for filename in SAVED_MODEL_FILES):
        return "tensorflow"
    pickles = sorted(
        entry.name for entry in path.iterdir() if entry.name.endswith(PICKLE_SUFFIXES)
    )
    if pickles or platform == "sklearn":
        found = pickles[0] if pickles else "no model file"
        raise LoadError(
            f"{path}: {found} but no {MANIFEST_FILE} manifest; a pickle is only "
            "loaded after its sha256 is checked against the manifest, so this "
            "version is refused"
        )
    return "tensorflow"
