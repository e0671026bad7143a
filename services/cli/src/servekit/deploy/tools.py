"""Running external programs (kubectl, docker compose, git) with one-line errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from servekit.deploy.errors import ToolFailed, ToolMissing


def require(program: str, hint: str) -> str:
    """The absolute path of `program` on PATH.

    Raises:
        ToolMissing: it is not installed; `hint` says how to get it.
    """
    found = shutil.which(program)
    if found is None:
        raise ToolMissing(f"{program} is not installed or not on PATH; {hint}")
    return found


_KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def first_error_line(text: str) -> str:
    """The line of a tool's stderr worth showing: the first that starts with
    `error`, else the last plain line (kubectl's diagnostic log lines, `E1124
    12:00:00 ...`, only when nothing else was said)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    plain = [line for line in lines if not _KLOG_LINE.match(line)]
    for line in plain:
        if line.lower().startswith("error"):
            return line
    if plain:
        return plain[-1]
    return lines[-1] if lines else "(no output)"


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    ok_codes: Sequence[int] = (0,),
    label: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion; stdout/stderr captured unless `capture` is off
    (then they go to the terminal, for long interactive runs). `label` names the
    program in errors (default: the program and its first word).

    Raises:
        ToolFailed: the exit code is not in `ok_codes`.
    """
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        input=stdin,
        env=None if env is None else dict(env),
        capture_output=capture,
        text=True,
        check=False,
    )
    if result.returncode not in ok_codes:
        detail = (
            first_error_line(result.stderr or result.stdout or "") if capture else ""
        )
        name = label or " ".join([Path(argv[0]).name, *argv[1:2]])
        message = f"{name} failed (exit {result.returncode})"
        raise ToolFailed(f"{message}: {detail}" if detail else message)
    return result
