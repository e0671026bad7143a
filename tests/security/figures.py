"""The figures the attack tests measure (memory growth, a normal call's latency,
CPU time), kept per test and written as JSON at the end of the session when
``SERVEKIT_SECURITY_FIGURES`` names a file: the source of the protocol README's
table of measured values."""

from __future__ import annotations

import json
import os
from pathlib import Path

_FIGURES: dict[str, dict[str, float]] = {}


def record(name: str, value: float) -> None:
    """Keep the largest ``value`` of ``name`` seen by the running test."""
    # "path::name[params] (call)": the params may hold spaces.
    test = os.environ.get("PYTEST_CURRENT_TEST", "unknown").rsplit(" ", 1)[0]
    entry = _FIGURES.setdefault(test, {})
    entry[name] = max(entry.get(name, value), value)


def write_if_asked() -> None:
    """Write the figures to the file ``SERVEKIT_SECURITY_FIGURES`` names, if any."""
    target = os.environ.get("SERVEKIT_SECURITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(_FIGURES, indent=1, sort_keys=True))
