"""The batch prediction Indexed Job: the `batch` overlay's objects and what
`servekit deploy batch` makes of them, rendered and validated offline."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    SERVEKIT,
    assert_cli_accepts,
    find,
    kubectl_or_skip,
    mount_for,
    pod_spec,
)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (dev group)"
)
from kubernetes_validate.utils import validate  # noqa: E402

KUBERNETES_VERSIONS = ("1.31.0", "1.34.0")
Objects = list[dict[str, Any]]
_VARIABLE = re.compile(r"\$\(([A-Z_]+)\)")


def settings_of(objects: Objects, job: dict[str, Any]) -> dict[str, str]:
    (container,) = pod_spec(job)["containers"]
    (source,) = container["envFrom"]
    config_map = find(objects, "ConfigMap", source["configMapRef"]["name"])
    return dict(config_map["data"])


def expanded_args(
    job: dict[str, Any], settings: dict[str, str], index: int
) -> list[str]:
    """The container's arguments as the kubelet expands them for one index."""
    values = {**settings, "JOB_COMPLETION_INDEX": str(index)}
    (container,) = pod_spec(job)["containers"]
    return [
        _VARIABLE.sub(lambda m: values[m.group(1)], arg) for arg in container["args"]
    ]


def check_indexed_job(objects: Objects, name: str) -> dict[str, str]:
    job = find(objects, "Job", name)
    spec = job["spec"]
    settings = settings_of(objects, job)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == int(settings["SERVEKIT_BATCH_SHARDS"])
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = pod_spec(job)["containers"]
    index_env = {env["name"]: env for env in container["env"]}["JOB_COMPLETION_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    # Every index runs one real `servekit batch predict` on its own --shard.
    shards = []
    for index in range(spec["completions"]):
        args = expanded_args(job, settings, index)
        assert_cli_accepts(args)
        assert args[:2] == ["batch", "predict"]
        shards.append(args[args.index("--shard") + 1])
    assert shards == [f"{i}/{spec['completions']}" for i in range(spec["completions"])]
    # The model from the registry volume, read-only; input and output on batch-data.
    args = expanded_args(job, settings, 0)
    registry = mount_for(job, container, args[args.index("--registry") + 1])
    assert registry["volume"]["persistentVolumeClaim"]["claimName"] == "servekit-models"
    assert registry["mount"]["readOnly"] is True
    for flag in ("--input", "--output"):
        data = mount_for(job, container, args[args.index(flag) + 1])
        claim = data["volume"]["persistentVolumeClaim"]["claimName"]
        assert claim == "servekit-batch-data"
        assert not data["mount"].get("readOnly", False)
    find(objects, "PersistentVolumeClaim", "servekit-batch-data")
    # One worker process per CPU the pod may use, not per CPU of the node.
    workers = args[args.index("--workers") + 1]
    assert workers == str(container["resources"]["limits"]["cpu"])
    return settings


def test_the_batch_overlay_runs_an_indexed_job_on_the_registry(
    rendered: dict[str, Objects],
) -> None:
    settings = check_indexed_job(rendered["batch"], "servekit-batch")
    assert settings["SERVEKIT_BATCH_MODEL"] == "tabular@stable"
    for overlay in ("local", "gpu", "loadtest"):
        kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]}
        assert ("Job", "servekit-batch") not in kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_deploy_batch_renders_one_jobs_objects_that_validate(version: str) -> None:
    kubectl_or_skip()
    result = subprocess.run(
        [
            str(SERVEKIT),
            "deploy",
            "batch",
            "--model",
            "digits:3",
            "--input",
            "/data/input/digits",
            "--output",
            "/data/output/digits-3",
            "--shards",
            "6",
            "--parallelism",
            "2",
            "--image-tag",
            "abc123",
            "--render",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ConfigMap", "servekit-batch-digits-3-settings"),
        ("Job", "servekit-batch-digits-3"),
        ("PersistentVolumeClaim", "servekit-batch-data"),
    ]
    for obj in objects:
        validate(obj, version, strict=True)
        assert obj["metadata"]["namespace"] == "servekit"
    settings = check_indexed_job(objects, "servekit-batch-digits-3")
    assert settings["SERVEKIT_BATCH_MODEL"] == "digits:3"
    assert settings["SERVEKIT_BATCH_INPUT"] == "/data/input/digits"
    assert settings["SERVEKIT_BATCH_OUTPUT"] == "/data/output/digits-3"
    job = find(objects, "Job", "servekit-batch-digits-3")
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (6, 2)
    (container,) = pod_spec(job)["containers"]
    assert container["image"] == "servekit/trainer:abc123"


def test_deploy_batch_refuses_an_overlay_without_the_component() -> None:
    kubectl_or_skip()
    result = subprocess.run(
        [
            str(SERVEKIT),
            "deploy",
            "batch",
            "--overlay",
            "local",
            "--model",
            "tabular",
            "--input",
            "/data/in",
            "--output",
            "/data/out",
            "--dry-run",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "has no batch component" in result.stderr
