"""Shared fixtures of the deployment tests: the repository, rendered overlays, compose.

Everything here works offline: overlays are rendered with `kubectl kustomize`, the
compose file is read as YAML. A tool that is truly absent skips the tests that need
it, naming the package to install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO_ROOT / "k8s" / "overlays"
OVERLAYS = sorted(
    path.name
    for path in OVERLAYS_DIR.iterdir()
    if (path / "kustomization.yaml").is_file()
)
VENV_BIN = Path(sys.executable).parent
SERVEKIT = VENV_BIN / "servekit"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


def assert_cli_accepts(argv: list[str]) -> None:
    """The `servekit` command line parses `argv` (subcommand and flags exist)."""
    cli = pytest.importorskip("servekit.__main__")
    parser = cli.build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(
            f"`servekit {' '.join(argv)}` is not a valid command"
        ) from exc


def kubectl_or_skip() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl)")
    return kubectl


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects of one overlay, rendered by `kubectl kustomize`."""
    kubectl = kubectl_or_skip()
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's objects, rendered once per session."""
    return {overlay: render(overlay) for overlay in OVERLAYS}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "Pod":
        return dict(spec)
    if obj["kind"] == "CronJob":
        return dict(spec["jobTemplate"]["spec"]["template"]["spec"])
    return dict(spec["template"]["spec"])


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return dict(obj["metadata"].get("labels", {}))
    template = (
        obj["spec"]["jobTemplate"]["spec"]["template"]
        if obj["kind"] == "CronJob"
        else obj["spec"]["template"]
    )
    return dict(template["metadata"].get("labels", {}))


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (obj for obj in objects if obj["kind"] in WORKLOAD_KINDS)


def all_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


def mount_for(
    obj: dict[str, Any], container: dict[str, Any], path: str
) -> dict[str, Any]:
    """The volume behind the mount that holds `path` in `container` (longest prefix)."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    assert mount["name"] in volumes, f"mount {mount['name']} has no volume"
    return {"mount": mount, "volume": volumes[mount["name"]]}


def flag_values(args: list[str]) -> dict[str, str]:
    """`--name=value` (and bare `--name`) arguments as a mapping."""
    values = {}
    for arg in args:
        assert arg.startswith("--"), f"unexpected argument {arg!r}"
        name, _, value = arg[2:].partition("=")
        values[name] = value
    return values


@pytest.fixture(scope="session")
def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "docker-compose.yml").read_text()
    )
    return data


@pytest.fixture(scope="session")
def compose_gpu_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "docker-compose.gpu.yml").read_text()
    )
    return data
