"""The gateway's routing file (`<registry>/routes.yaml`), as far as rollouts write it.

The part `servekit deploy rollout` owns::

    routes:
      tabular:
        stable: stable            # a version label or an integer version
        canary:                   # absent: no canary split
          label: canary
          weight: 0.1             # share of requests sent to the canary, 0 < w < 1

Every other key, in a route or at the top level (backends, shadow settings, ...),
is kept as it is. The file is replaced atomically, so the gateway, which re-reads
it on change, never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from servekit.deploy.errors import RoutesFileError

ROUTES_FILE_NAME = "routes.yaml"


def read_routes(path: Path) -> dict[str, Any]:
    """The whole file as a mapping; a missing or empty file is `{"routes": {}}`.

    Raises:
        RoutesFileError: unreadable, not YAML, or `routes` is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"routes": {}}
    except OSError as exc:
        raise RoutesFileError(f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RoutesFileError(f"{path}: the top level must be a mapping")
    routes = data.setdefault("routes", {})
    if routes is None:
        data["routes"] = routes = {}
    if not isinstance(routes, dict):
        raise RoutesFileError(f"{path}: `routes` must map model names to routes")
    return data


def model_route(data: dict[str, Any], model: str) -> dict[str, Any]:
    """The (mutable) route of one model, created empty if absent.

    Raises:
        RoutesFileError: the model's entry is not a mapping.
    """
    routes: dict[str, Any] = data["routes"]
    route = routes.setdefault(model, {})
    if route is None:
        routes[model] = route = {}
    if not isinstance(route, dict):
        raise RoutesFileError(f"the route of {model!r} must be a mapping")
    return route


def set_canary(
    data: dict[str, Any], model: str, stable: str | int, label: str, weight: float
) -> None:
    """Split a model's traffic: `weight` to `label`, the rest to `stable`."""
    if not 0.0 < weight < 1.0:
        raise RoutesFileError(f"a canary weight is between 0 and 1, got {weight}")
    route = model_route(data, model)
    route["stable"] = stable
    route["canary"] = {"label": label, "weight": weight}


def clear_canary(data: dict[str, Any], model: str, stable: str | int) -> None:
    """Send all of a model's traffic to `stable`."""
    route = model_route(data, model)
    route["stable"] = stable
    route.pop("canary", None)


def write_routes(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically (temporary file in the same folder, fsync, rename).

    Raises:
        RoutesFileError: the folder is missing or not writable.
    """
    text = "# Gateway routes; `servekit deploy rollout` rewrites stable/canary.\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise RoutesFileError(f"cannot write next to {path}: {exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        # Readers (the gateway) may run as another user; the file holds no secret.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise RoutesFileError(f"cannot write {path}: {exc}") from exc
