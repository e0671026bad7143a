"""Per-model state kept beside the versions: labels, their history, the version policy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelregistry.errors import ManifestError
from modelregistry.fsync import write_atomically
from modelregistry.layout import MODEL_STATE_FILE


class ModelState(BaseModel):
    """Contents of `<root>/<name>/servekit-model.json`."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, int] = Field(default_factory=dict)
    """Label → version, e.g. `{"stable": 3, "canary": 4}`."""
    label_history: dict[str, list[int]] = Field(default_factory=dict)
    """Versions a label pointed at before, newest last, for rollback."""
    version_policy: dict[str, dict[str, int | list[int]]] | None = None
    """An explicit TF Serving version policy; None lets the registry choose."""
    last_version: int = 0
    """Highest version ever published, so deleted numbers are never reused."""


def read_state(model_dir: Path) -> ModelState:
    """Read a model's state; a model without the file has the empty state.

    Raises:
        ManifestError: the file exists but is not valid.
    """
    path = model_dir / MODEL_STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ModelState()
    try:
        return ModelState.model_validate_json(raw)
    except ValidationError as exc:
        raise ManifestError(
            f"{path}: invalid model state: {exc.errors()[0]['msg']}"
        ) from exc


def write_state(model_dir: Path, state: ModelState) -> None:
    """Replace the state file atomically."""
    write_atomically(
        model_dir / MODEL_STATE_FILE, state.model_dump_json(indent=2) + "\n"
    )
