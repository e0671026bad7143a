"""Rollouts: move labels in the registry and weights in the gateway's routes file.

The registry regenerates `models.config`/`servekit.config` on every label change;
TF Serving and servekit-model-server re-read them (no restart), and the gateway
re-reads `routes.yaml`. The order of the steps is what makes a rollout drop no
request: a version is labelled (so the servers load it) before any route sends it
traffic, and routes stop sending traffic to a label before the label moves away.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelregistry import CANARY, STABLE, Registry

from servekit.deploy.errors import RolloutError
from servekit.deploy.routes import clear_canary, read_routes, set_canary, write_routes

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class RolloutResult:
    """Where a model's traffic goes after a rollout."""

    model: str
    stable: int
    canary: int | None
    weight: float
    """Share of requests sent to the canary (0 without one)."""
    routes_file: Path


def parse_weight(text: str) -> float:
    """A canary weight from `0.1` or `10%`; 0 ends a canary, 1 is a full rollout.

    Raises:
        RolloutError: not a number in [0, 1).
    """
    cleaned = text.strip()
    try:
        weight = (
            float(cleaned[:-1]) / 100.0 if cleaned.endswith("%") else float(cleaned)
        )
    except ValueError as exc:
        raise RolloutError(
            f"canary weight {text!r} is not a number or a percentage"
        ) from exc
    if not 0.0 <= weight < 1.0:
        raise RolloutError(
            f"canary weight {text!r} must be at least 0 and below 1 "
            "(omit --canary to send all traffic to the version)"
        )
    return weight


def wait_until_available(
    urls: Sequence[str],
    model: str,
    version: int,
    timeout_seconds: float,
    report: Reporter,
    poll_seconds: float = 1.0,
) -> None:
    """Poll each model server's REST status endpoint until the version is AVAILABLE.

    Raises:
        RolloutError: a server still does not serve it after `timeout_seconds`.
    """
    for base_url in urls:
        url = f"{base_url.rstrip('/')}/v1/models/{model}/versions/{version}"
        deadline = time.monotonic() + timeout_seconds
        last = "no answer yet"
        report(f"waiting for {model} version {version} to load at {base_url}")
        while True:
            state = _version_state(url)
            if state == "AVAILABLE":
                break
            last = state
            if time.monotonic() >= deadline:
                raise RolloutError(
                    f"{model} version {version} is not AVAILABLE at {base_url} after "
                    f"{timeout_seconds:g}s ({last}); labels are set, routes unchanged"
                )
            time.sleep(poll_seconds)


def _version_state(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"unreachable: {exc}"
    statuses = body.get("model_version_status") or [{}]
    return str(statuses[0].get("state", "UNKNOWN"))


def rollout(
    registry: Registry,
    model: str,
    version: int,
    canary_weight: float | None,
    routes_path: Path,
    wait: Callable[[int], None],
    report: Reporter,
) -> RolloutResult:
    """Send `canary_weight` of `model`'s traffic to `version` (None: all of it,
    0: none, ending a canary). `wait(version)` returns once the servers serve it.

    Raises:
        RolloutError: unknown or broken version, or a request that makes no sense.
        RegistryError: from the registry.
    """
    if version not in registry.versions(model):
        raise RolloutError(f"model {model!r} has no published version {version}")
    problems = registry.verify(model, version)
    if problems:
        raise RolloutError(
            f"{model} version {version} fails verification: {'; '.join(problems)}"
        )
    # Read (and validate) the routes file before touching any label.
    data = read_routes(routes_path)
    labels = registry.labels(model)

    if canary_weight is None:
        # Traffic leaves the canary label first, so moving the label below never
        # sends requests to a version that is still loading.
        clear_canary(data, model, STABLE)
        write_routes(routes_path, data)
        report(f"labelling {model} version {version} {CANARY} so the servers load it")
        registry.set_label(model, CANARY, version)
        wait(version)
        registry.promote(model, version)
        report(f"{model}: {STABLE} -> {version}, all traffic")
        return RolloutResult(model, version, None, 0.0, routes_path)

    if canary_weight == 0.0:
        if labels.get(CANARY) != version:
            raise RolloutError(
                f"version {version} is not the canary of {model!r} "
                f"(canary: {labels.get(CANARY, 'none')})"
            )
        clear_canary(data, model, STABLE)
        write_routes(routes_path, data)
        registry.remove_label(model, CANARY)
        stable = registry.labels(model).get(STABLE) or registry.resolve(model)
        report(f"{model}: canary {version} ended, all traffic to {STABLE} ({stable})")
        return RolloutResult(model, stable, None, 0.0, routes_path)

    stable_version = labels.get(STABLE)
    if stable_version is None:
        earlier = [v for v in registry.versions(model) if v < version]
        if not earlier:
            raise RolloutError(
                f"{model!r} has no version before {version} to keep as {STABLE}; "
                "roll it out without --canary"
            )
        stable_version = earlier[-1]
        report(
            f"labelling {model} version {stable_version} {STABLE} (no stable label yet)"
        )
        registry.set_label(model, STABLE, stable_version)
    if stable_version == version:
        raise RolloutError(f"version {version} is already {STABLE} for {model!r}")
    previous_canary = labels.get(CANARY)
    if previous_canary is not None and previous_canary != version:
        # Another version is the canary now: take its traffic away before the
        # label moves to a version that is not loaded yet.
        clear_canary(data, model, STABLE)
        write_routes(routes_path, data)
    registry.set_label(model, CANARY, version)
    wait(version)
    set_canary(data, model, STABLE, CANARY, canary_weight)
    write_routes(routes_path, data)
    report(
        f"{model}: {canary_weight:.0%} to {CANARY} ({version}), "
        f"the rest to {STABLE} ({stable_version})"
    )
    return RolloutResult(model, stable_version, version, canary_weight, routes_path)
