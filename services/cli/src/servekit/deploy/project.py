"""The servekit checkout that holds the Dockerfiles and manifests, and its revision."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from servekit.deploy.errors import ProjectNotFound, ToolFailed

MARKERS = ("k8s", "deploy", "docker-compose.yml")


@dataclass(frozen=True)
class Project:
    """A servekit checkout: where `servekit deploy` finds what it ships."""

    root: Path

    @property
    def overlays_dir(self) -> Path:
        return self.root / "k8s" / "overlays"

    @property
    def compose_file(self) -> Path:
        return self.root / "docker-compose.yml"

    @property
    def compose_gpu_file(self) -> Path:
        return self.root / "docker-compose.gpu.yml"

    def overlays(self) -> list[str]:
        """Names of the kustomize overlays (`k8s/overlays/<name>/kustomization.yaml`)."""
        if not self.overlays_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.overlays_dir.iterdir()
            if (entry / "kustomization.yaml").is_file()
        )


def find_project(start: Path | None = None) -> Project:
    """The checkout containing `start` (default: the current directory).

    Raises:
        ProjectNotFound: no folder from `start` upwards has k8s/, deploy/ and
            docker-compose.yml.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if all((candidate / marker).exists() for marker in MARKERS):
            return Project(candidate)
    raise ProjectNotFound(
        f"no servekit checkout at or above {here} (looked for {', '.join(MARKERS)}); "
        "run from the repository or pass --project-dir"
    )


def git_revision(root: Path, length: int = 12) -> str:
    """The short commit id of HEAD, with `-dirty` when the work tree has changes
    (so an image built from uncommitted code never carries a clean commit's tag).

    Raises:
        ToolFailed: not a git checkout, or git is missing.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", f"--short={length}", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except FileNotFoundError as exc:
        raise ToolFailed("git is not installed; pass --tag to name the images") from exc
    except subprocess.CalledProcessError as exc:
        raise ToolFailed(
            f"cannot read the git revision of {root} ({exc.stderr.strip() or exc}); "
            "pass --tag to name the images"
        ) from exc
    return f"{sha}-dirty" if status else sha
