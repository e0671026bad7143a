"""`servekit deploy render/apply/status/compose` end to end, through the installed
console script, with no cluster and no Docker engine (as on development machines)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import OVERLAYS, REPO_ROOT, SERVEKIT, kubectl_or_skip
from tests.deploy.test_compose import compose_program

UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: nowhere
    cluster:
      server: https://127.0.0.1:1
contexts:
  - name: nowhere
    context:
      cluster: nowhere
      user: nobody
current-context: nowhere
users:
  - name: nobody
    user:
      token: not-a-token
"""


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig whose only cluster refuses connections: proves what needs none."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(UNREACHABLE_KUBECONFIG)
    return path


def servekit(
    *args: str,
    kubeconfig: Path,
    cwd: Path = REPO_ROOT,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVEKIT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={
            **os.environ,
            "COLUMNS": "250",
            "KUBECONFIG": str(kubeconfig),
            "DOCKER_HOST": "unix:///nonexistent/docker.sock",
            **(extra_env or {}),
        },
        check=False,
    )


def objects_of(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_render_prints_the_overlay(
    rendered: dict[str, list[dict[str, Any]]], kubeconfig: Path
) -> None:
    result = servekit("deploy", "render", "--overlay", "local", kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    assert objects_of(result.stdout) == rendered["local"]


def test_render_works_from_a_subfolder_and_writes_a_file(
    rendered: dict[str, list[dict[str, Any]]], kubeconfig: Path, tmp_path: Path
) -> None:
    output = tmp_path / "gpu.yaml"
    result = servekit(
        "deploy",
        "render",
        "--overlay",
        "gpu",
        "-o",
        str(output),
        kubeconfig=kubeconfig,
        cwd=REPO_ROOT / "k8s" / "base",
    )
    assert result.returncode == 0, result.stderr
    assert objects_of(output.read_text()) == rendered["gpu"]


def test_render_retags_only_servekit_images(kubeconfig: Path) -> None:
    result = servekit(
        "deploy",
        "render",
        "--overlay",
        "gpu",
        "--image-tag",
        "0123abcd4567",
        "--image-repository",
        "ghcr.io/acme/servekit",
        kubeconfig=kubeconfig,
    )
    assert result.returncode == 0, result.stderr
    images = set()
    for obj in objects_of(result.stdout):
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            images.add(container["image"])
    assert images == {
        "ghcr.io/acme/servekit/gateway:0123abcd4567",
        "ghcr.io/acme/servekit/modelserver:0123abcd4567",
        "ghcr.io/acme/servekit/trainer:0123abcd4567",
        "tensorflow/serving:2.19.1-gpu",
    }


def test_unknown_overlay_is_a_one_line_error(kubeconfig: Path) -> None:
    result = servekit("deploy", "render", "--overlay", "prod", kubeconfig=kubeconfig)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"servekit: error: no overlay 'prod' in {REPO_ROOT / 'k8s' / 'overlays'}; "
        f"choose from {', '.join(OVERLAYS)}"
    ]


def test_outside_a_checkout_is_a_one_line_error(
    kubeconfig: Path, tmp_path: Path
) -> None:
    result = servekit(
        "deploy", "render", "--overlay", "local", kubeconfig=kubeconfig, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.startswith("servekit: error: no servekit checkout")
    ok = servekit(
        "deploy",
        "render",
        "--overlay",
        "local",
        "--project-dir",
        str(REPO_ROOT),
        kubeconfig=kubeconfig,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_apply_dry_run_lists_every_object_without_a_cluster(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, kubeconfig: Path
) -> None:
    result = servekit(
        "deploy",
        "apply",
        "--overlay",
        overlay,
        "--dry-run",
        "--json",
        "--image-tag",
        "t9",
        kubeconfig=kubeconfig,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    expected = rendered[overlay]
    assert [(o["kind"], o["name"]) for o in listed] == [
        (obj["kind"], obj["metadata"]["name"]) for obj in expected
    ]
    gateway = next(
        o for o in listed if (o["kind"], o["name"]) == ("Deployment", "gateway")
    )
    assert gateway["namespace"] == "servekit"
    assert gateway["images"] == ["servekit/gateway:t9"]


def test_apply_dry_run_table_for_people(kubeconfig: Path) -> None:
    result = servekit(
        "deploy", "apply", "--overlay", "local", "--dry-run", kubeconfig=kubeconfig
    )
    assert result.returncode == 0, result.stderr
    assert "16 objects would be applied" in result.stdout
    assert (
        "NetworkPolicy" in result.stdout
        and "model-servers-from-gateway-only" in result.stdout
    )


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "apply", "--overlay", "local"],
        ["deploy", "apply", "--overlay", "local", "--diff"],
        ["deploy", "status"],
    ],
    ids=["apply", "diff", "status"],
)
def test_cluster_commands_fail_cleanly_without_a_cluster(
    args: list[str], kubeconfig: Path
) -> None:
    kubectl_or_skip()
    result = servekit(*args, kubeconfig=kubeconfig)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    verb = "get" if args[1] == "status" else ("diff" if "--diff" in args else "apply")
    assert re.match(
        rf"servekit: error: kubectl {verb} failed \(exit \d\): \w", lines[0]
    )
    assert not re.search(r"\bE\d{4} ", lines[0]), (
        "kubectl's log lines are not the message"
    )
    assert "127.0.0.1:1" in lines[0]
    assert "Traceback" not in result.stderr


def test_kubectl_missing_is_named(kubeconfig: Path, tmp_path: Path) -> None:
    # A PATH with git but neither kubectl nor kustomize.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    result = servekit(
        "deploy",
        "apply",
        "--overlay",
        "local",
        "--dry-run",
        kubeconfig=kubeconfig,
        extra_env={"PATH": str(bin_dir)},
    )
    assert result.returncode == 1
    assert "kubectl is not installed" in result.stderr


def test_compose_config_resolves_the_stack(kubeconfig: Path) -> None:
    compose_program()
    result = servekit(
        "deploy",
        "compose",
        "config",
        "--gpu",
        "--profile",
        "loadtest",
        "--image-tag",
        "t5",
        kubeconfig=kubeconfig,
        extra_env={"SERVEKIT_UID": "1234"},
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert services["tfserving"]["image"] == "tensorflow/serving:2.19.1-gpu"
    assert services["gateway"]["image"] == "servekit/gateway:t5"
    assert "locust-master" in services
    # The caller's own uid wins; the gid defaults to the caller's.
    assert services["registry-init"]["user"] == f"1234:{os.getgid()}"


def test_compose_up_without_an_engine_fails_cleanly(kubeconfig: Path) -> None:
    compose_program()
    result = servekit("deploy", "compose", "up", kubeconfig=kubeconfig)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "servekit: error: docker compose failed (exit 1)"
    )


def test_compose_missing_is_named(kubeconfig: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    result = servekit(
        "deploy",
        "compose",
        "up",
        kubeconfig=kubeconfig,
        extra_env={"PATH": str(bin_dir)},
    )
    assert result.returncode == 1
    assert "neither `docker compose`" in result.stderr


@pytest.fixture
def recording_kubectl(tmp_path: Path) -> Path:
    """A kubectl stand-in first on PATH: `kustomize` runs the real one; `apply`,
    `diff` and `get` record their arguments and stdin, then answer as a cluster would
    (KUBECTL_ANSWER selects the answer)."""
    real = kubectl_or_skip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(
        f"""#!/bin/sh
if [ "$1" = kustomize ]; then exec {real} "$@"; fi
printf '%s\\n' "$@" > "{tmp_path}/argv"
cat > "{tmp_path}/stdin"
case "$KUBECTL_ANSWER" in
  immutable)
    echo 'The Job "servekit-train" is invalid: spec.template: Invalid value: core.PodTemplateSpec{{}}: field is immutable' >&2
    exit 1 ;;
  listing) cat "$KUBECTL_OUTPUT" ;;
  *) echo 'deployment.apps/gateway configured' ;;
esac
"""
    )
    script.chmod(0o755)
    return tmp_path


def _with_path(directory: Path) -> dict[str, str]:
    return {"PATH": f"{directory / 'bin'}:{os.environ['PATH']}"}


def test_apply_sends_the_rendered_overlay_to_kubectl(
    recording_kubectl: Path, kubeconfig: Path, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    result = servekit(
        "deploy",
        "apply",
        "--overlay",
        "local",
        "--context",
        "kind-servekit",
        kubeconfig=kubeconfig,
        extra_env=_with_path(recording_kubectl),
    )
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/gateway configured" in result.stdout
    argv = (recording_kubectl / "argv").read_text().split()
    assert argv == ["--context", "kind-servekit", "apply", "-f", "-"]
    assert objects_of((recording_kubectl / "stdin").read_text()) == rendered["local"]


def test_apply_explains_an_immutable_job(
    recording_kubectl: Path, kubeconfig: Path
) -> None:
    env = {**_with_path(recording_kubectl), "KUBECTL_ANSWER": "immutable"}
    result = servekit(
        "deploy", "apply", "--overlay", "local", kubeconfig=kubeconfig, extra_env=env
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "field is immutable" in line
    assert "kubectl -n servekit delete job servekit-train" in line


STATUS_LISTING = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "kind": "Deployment",
            "metadata": {"name": "gateway"},
            "spec": {
                "replicas": 2,
                "template": {
                    "spec": {"containers": [{"image": "servekit/gateway:abc"}]}
                },
            },
            "status": {"readyReplicas": 1, "updatedReplicas": 2},
        },
        {
            "kind": "Job",
            "metadata": {"name": "servekit-train"},
            "spec": {"completions": 1},
            "status": {
                "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True"}],
            },
        },
        {
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "gateway"},
            "spec": {"minReplicas": 1, "maxReplicas": 3},
            "status": {"currentReplicas": 2, "desiredReplicas": 2},
        },
        {
            "kind": "Pod",
            "metadata": {"name": "tfserving-7d9f"},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "ready": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    }
                ],
            },
        },
    ],
}


def test_status_summarizes_the_workloads(
    recording_kubectl: Path, kubeconfig: Path
) -> None:
    listing = recording_kubectl / "listing.json"
    listing.write_text(json.dumps(STATUS_LISTING))
    env = {
        **_with_path(recording_kubectl),
        "KUBECTL_ANSWER": "listing",
        "KUBECTL_OUTPUT": str(listing),
    }
    result = servekit(
        "deploy", "status", "-n", "ml", "--json", kubeconfig=kubeconfig, extra_env=env
    )
    assert result.returncode == 0, result.stderr
    argv = (recording_kubectl / "argv").read_text().split()
    assert argv[:2] == ["get", "deployments,jobs,horizontalpodautoscalers,pods"]
    assert argv[argv.index("--namespace") + 1] == "ml"
    assert json.loads(result.stdout) == [
        {
            "kind": "Deployment",
            "name": "gateway",
            "ready": "1/2",
            "detail": "updated 2, servekit/gateway:abc",
        },
        {"kind": "Job", "name": "servekit-train", "ready": "1/1", "detail": "Complete"},
        {
            "kind": "HorizontalPodAutoscaler",
            "name": "gateway",
            "ready": "2/2",
            "detail": "min 1, max 3",
        },
        {
            "kind": "Pod",
            "name": "tfserving-7d9f",
            "ready": "0/1",
            "detail": "Pending, CrashLoopBackOff, restarts 3",
        },
    ]
