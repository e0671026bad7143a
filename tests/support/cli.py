"""Running the `servekit` command of the project's venv from a test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.processes import VENV_BIN


def servekit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`servekit ARGS`, its output captured; wide columns keep tables on one line."""
    return subprocess.run(
        [str(VENV_BIN / "servekit"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout; it must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
