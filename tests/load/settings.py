"""What a load test targets and how, read from `SERVEKIT_*` environment variables.

The locustfile is started unchanged by `servekit loadtest`, by a compose profile and
by Kubernetes master/worker pods; the environment is the one channel all three
share, and the user and shape classes must be chosen when the locustfile is
imported, before Locust parses its own options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROTOCOLS = ("rest", "v2", "typed", "grpc")
SHAPES = ("constant", "step", "spike")


class SettingsError(ValueError):
    """A `SERVEKIT_*` variable is missing or malformed."""


@dataclass(frozen=True)
class LoadSettings:
    """One load test's target model, protocol, payloads and gates."""

    model: str
    """Model name, as the server knows it (`SERVEKIT_MODEL`, required)."""
    protocol: str = "rest"
    """`rest` (TF Serving v1), `v2` (Open Inference Protocol), `typed` or `grpc`."""
    version: int | None = None
    """Pin requests to one version (`SERVEKIT_VERSION`)."""
    label: str | None = None
    """Send requests to a version label such as `canary` (`SERVEKIT_LABEL`)."""
    signature: str = "serving_default"
    """Signature whose inputs the payloads fill (`SERVEKIT_SIGNATURE`)."""
    batch_size: int = 1
    """Rows (instances) per request (`SERVEKIT_BATCH_SIZE`)."""
    registry: Path | None = None
    """Registry folder holding the model's manifest (`SERVEKIT_REGISTRY`)."""
    manifest: Path | None = None
    """A `servekit.json` file to take the schema from (`SERVEKIT_MANIFEST`); wins
    over `registry`. Without either, the schema comes from the server's metadata."""
    slo: str | None = None
    """Objectives such as `p99<50ms,errors<0.1%` (`SERVEKIT_SLO`); a breach sets a
    non-zero exit code."""
    shape: str = "constant"
    """Load shape: `constant`, `step` or `spike` (`SERVEKIT_SHAPE`)."""
    request_log: Path | None = None
    """CSV file receiving one line per request (`SERVEKIT_REQUEST_LOG`)."""
    timeout_seconds: float = 30.0
    """Per-request network timeout (`SERVEKIT_TIMEOUT`)."""
    seed: int | None = None
    """Seed for the random payloads, for repeatable runs (`SERVEKIT_SEED`)."""
    api_key: str | None = field(default=None, repr=False)
    """Gateway API key, sent as `Authorization: Bearer` (`SERVEKIT_API_KEY`)."""


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _integer(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    text = _optional(environ, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise SettingsError(f"{name}={text!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (_optional(environ, name) or choices[0]).lower()
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def settings_from(environ: Mapping[str, str]) -> LoadSettings:
    """Build the settings from an environment mapping.

    Raises:
        SettingsError: a variable is missing or malformed.
    """
    model = _optional(environ, "SERVEKIT_MODEL")
    if model is None:
        raise SettingsError("SERVEKIT_MODEL is required: the model to load-test")
    version = _integer(environ, "SERVEKIT_VERSION", minimum=1)
    label = _optional(environ, "SERVEKIT_LABEL")
    if version is not None and label is not None:
        raise SettingsError("set SERVEKIT_VERSION or SERVEKIT_LABEL, not both")
    timeout_text = _optional(environ, "SERVEKIT_TIMEOUT")
    try:
        timeout = float(timeout_text) if timeout_text else 30.0
    except ValueError as exc:
        raise SettingsError(
            f"SERVEKIT_TIMEOUT={timeout_text!r} is not a number"
        ) from exc
    registry = _optional(environ, "SERVEKIT_REGISTRY")
    manifest = _optional(environ, "SERVEKIT_MANIFEST")
    request_log = _optional(environ, "SERVEKIT_REQUEST_LOG")
    return LoadSettings(
        model=model,
        protocol=_choice(environ, "SERVEKIT_PROTOCOL", PROTOCOLS),
        version=version,
        label=label,
        signature=_optional(environ, "SERVEKIT_SIGNATURE") or "serving_default",
        batch_size=_integer(environ, "SERVEKIT_BATCH_SIZE", minimum=1) or 1,
        registry=Path(registry) if registry else None,
        manifest=Path(manifest) if manifest else None,
        slo=_optional(environ, "SERVEKIT_SLO"),
        shape=_choice(environ, "SERVEKIT_SHAPE", SHAPES),
        request_log=Path(request_log) if request_log else None,
        timeout_seconds=timeout,
        seed=_integer(environ, "SERVEKIT_SEED", minimum=0),
        api_key=_optional(environ, "SERVEKIT_API_KEY"),
    )


def load_settings() -> LoadSettings:
    """Read the settings from this process's environment.

    Raises:
        SettingsError: a variable is missing or malformed.
    """
    return settings_from(os.environ)
