"""Install what the benchmarks need but ``make install`` does not: load generators,
MLServer in its own venv, and the two models in the benchmark registry.

Every step says what it does; nothing is installed when ``--no-install`` is given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.settings import REPO_ROOT, VENV_BIN, child_environment

Progress = Callable[[str], None]

MLSERVER_PYTHON = "3.11"
MLSERVER_REQUIREMENTS = (
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    # MLServer's generated code needs protobuf < 7 (servekit's venv has 7).
    "protobuf<7",
    # uvloop 0.22 breaks MLServer's parallel inference workers.
    "uvloop<0.22",
)


class PrerequisiteError(Exception):
    """Something the benchmarks need is missing and could not be installed."""


def _run(
    command: Sequence[str],
    what: str,
    progress: Progress,
    env: dict[str, str] | None = None,
) -> None:
    progress(f"{what}: {' '.join(command)}")
    completed = subprocess.run(
        list(command), capture_output=True, text=True, check=False, env=env
    )
    if completed.returncode != 0:
        raise PrerequisiteError(
            f"{what} failed ({completed.returncode}):\n"
            f"{completed.stdout[-1500:]}{completed.stderr[-1500:]}"
        )


def ensure_debian_tool(
    tool: str, package: str, *, install: bool, progress: Progress
) -> str:
    """The path of ``tool``, installing Debian's ``package`` when root may.

    Raises:
        PrerequisiteError: Missing and not installable here.
    """
    found = shutil.which(tool)
    if found:
        return found
    can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if not install or not can_apt:
        raise PrerequisiteError(
            f"{tool} is not installed: run `apt-get install -y "
            f"--no-install-recommends {package}` as root"
        )
    progress(f"installing {package} (for {tool}) with apt-get")
    apt_env = child_environment({"DEBIAN_FRONTEND": "noninteractive"})
    apt_install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    try:
        _run([*apt_install, package], f"apt-get install {package}", progress, apt_env)
    except PrerequisiteError:
        # A fresh machine has no package lists yet.
        _run(["apt-get", "update", "-qq"], "apt-get update", progress, apt_env)
        _run([*apt_install, package], f"apt-get install {package}", progress, apt_env)
    found = shutil.which(tool)
    if not found:
        raise PrerequisiteError(f"{package} installed but {tool} is not on PATH")
    return found


def find_uv() -> str | None:
    """uv from PATH, else the copy ``make`` installs into ``.tools/``."""
    return shutil.which("uv") or next(
        (
            str(path)
            for path in (REPO_ROOT / ".tools" / "bin" / "uv", VENV_BIN / "uv")
            if path.exists()
        ),
        None,
    )


def ensure_mlserver(venv: Path, *, install: bool, progress: Progress) -> Path:
    """MLServer's ``mlserver`` command in its own venv, built on first use.

    Raises:
        PrerequisiteError: Missing and not installable (no uv, or no network).
    """
    mlserver = venv / "bin" / "mlserver"
    marker = venv / ".servekit-requirements"
    wanted = "\n".join(MLSERVER_REQUIREMENTS)
    if mlserver.exists() and marker.exists() and marker.read_text() == wanted:
        return mlserver
    if not install:
        raise PrerequisiteError(f"MLServer's venv is missing at {venv}")
    uv = find_uv()
    if uv is None:
        raise PrerequisiteError("uv is needed to build MLServer's venv (make install)")
    progress(f"building MLServer's venv in {venv} (once; about a minute)")
    _run(
        [uv, "venv", "--quiet", "--clear", str(venv), "--python", MLSERVER_PYTHON],
        "uv venv",
        progress,
    )
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            *MLSERVER_REQUIREMENTS,
        ],
        "uv pip install MLServer",
        progress,
    )
    marker.write_text(wanted)
    return mlserver


def ensure_models(
    registry: Path, models: Sequence[str], *, install: bool, progress: Progress
) -> None:
    """Train each model into ``registry`` unless a version is already there.

    Raises:
        PrerequisiteError: A model is missing and training failed or is not allowed.
    """
    from modelregistry import Registry

    present = set(Registry(registry).models()) if registry.exists() else set()
    for model in models:
        if model in present and Registry(registry).versions(model):
            continue
        if not install:
            raise PrerequisiteError(f"{registry} has no {model!r} model")
        progress(f"training {model!r} into {registry} (servekit train {model})")
        _run(
            [str(VENV_BIN / "servekit"), "train", model, "--registry", str(registry)],
            f"servekit train {model}",
            progress,
        )
