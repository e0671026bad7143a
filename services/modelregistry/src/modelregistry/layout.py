"""TF Serving's folder layout: `<root>/<name>/<integer version>/`, hidden entries ignored."""

from __future__ import annotations

import re
from pathlib import Path

from modelregistry.errors import InvalidName

MODEL_STATE_FILE = "servekit-model.json"
TF_CONFIG_FILE = "models.config"
SERVEKIT_CONFIG_FILE = "servekit.config"
SKLEARN_CONFIG_FILE = "sklearn.config"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def check_model_name(name: str) -> str:
    """Return the name if it can be a model folder (and a URL segment).

    Raises:
        InvalidName: the name has characters outside `[A-Za-z0-9_.-]` or starts with one.
    """
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return name


def check_label(label: str) -> str:
    """Return the label if it is a valid TF Serving version label name.

    Raises:
        InvalidName: the label is not lower-case letters, digits, '_' or '-'.
    """
    if not _LABEL.fullmatch(label):
        raise InvalidName(
            f"invalid label {label!r}: use lower-case letters, digits, '_', '-'"
        )
    return label


def parse_version(text: str) -> int:
    """Parse a version as TF Serving does: a positive decimal integer.

    Raises:
        InvalidName: the text is not a positive integer.
    """
    if not text.isdigit() or int(text) <= 0:
        raise InvalidName(f"invalid version {text!r}: versions are positive integers")
    return int(text)


def scan_versions(model_dir: Path) -> dict[int, Path]:
    """Map each version number to its folder; hidden and non-integer names are skipped.

    Zero-padded names (`00000123`) are version 123, as in TF Serving.
    """
    versions: dict[int, Path] = {}
    try:
        entries = list(model_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return versions
    for entry in entries:
        if entry.name.isdigit() and int(entry.name) > 0 and entry.is_dir():
            versions[int(entry.name)] = entry
    return versions


def scan_models(root: Path) -> list[str]:
    """Names of the model folders under the registry root, sorted."""
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        entry.name
        for entry in entries
        if entry.is_dir() and _NAME.fullmatch(entry.name) and not entry.name.isdigit()
    )
