"""docker compose: find the program, build its command line, run it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from servekit.deploy import tools
from servekit.deploy.errors import ToolMissing
from servekit.deploy.project import Project

COMPOSE_HINT = (
    "neither `docker compose` (the Compose plugin) nor `docker-compose` is installed; "
    "install Docker Compose (Debian: apt-get install docker-compose)"
)


def compose_program() -> list[str]:
    """`docker compose` when the plugin is there, else `docker-compose`.

    Raises:
        ToolMissing: neither is installed.
    """
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    raise ToolMissing(COMPOSE_HINT)


def compose_files(project: Project, gpu: bool) -> list[str]:
    """`-f` options: the main file, plus the GPU override when asked."""
    files = ["-f", str(project.compose_file)]
    if gpu:
        files += ["-f", str(project.compose_gpu_file)]
    return files


def compose_command(
    program: Sequence[str],
    project: Project,
    action: Sequence[str],
    gpu: bool = False,
    profiles: Sequence[str] = (),
) -> list[str]:
    """The full command line for one compose action (`up -d`, `down`, `config`)."""
    command = [*program, "--project-directory", str(project.root)]
    command += compose_files(project, gpu)
    for profile in profiles:
        command += ["--profile", profile]
    return command + list(action)


def run_compose(command: Sequence[str], project: Project, env: dict[str, str]) -> None:
    """Run compose attached to the terminal (its own progress output is the UI).

    Raises:
        ToolFailed: compose exited non-zero (e.g. no engine reachable).
    """
    tools.run(command, cwd=project.root, env=env, capture=False, label="docker compose")


def config(command: Sequence[str], project: Project, env: dict[str, str]) -> str:
    """The resolved compose configuration (validates the files; needs no engine).

    Raises:
        ToolFailed: the files do not validate.
    """
    return tools.run(command, cwd=project.root, env=env, label="docker compose").stdout
