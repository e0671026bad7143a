"""The batch prediction Indexed Job, set up for one job: model, files, shard count.

The `batch` component (k8s/components/batch) holds the Job, its settings
ConfigMap and the batch-data volume claim, all labelled
``app.kubernetes.io/component: batch``. :func:`batch_objects` renders an overlay
holding it, keeps only those objects and writes the job's values into them: the
settings, the completions (one per ``--shard`` index) and a Job name of its own,
since a Job cannot be changed once created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from servekit.deploy import manifests
from servekit.deploy.errors import DeployError
from servekit.deploy.project import Project

COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "batch"
JOB_NAME = "servekit-batch"
SETTINGS = "servekit-batch-settings"
_NAME_CHARACTERS = re.compile(r"[^a-z0-9-]+")
_MAX_NAME = 52
"""Job names feed pod names and labels (63 characters) with an index suffix."""


@dataclass(frozen=True)
class BatchJob:
    """One batch prediction job, as `servekit deploy batch` takes it."""

    model: str
    """``NAME[:VERSION|@LABEL]``, resolved in the registry volume."""
    input: str
    """Path inside the pod (the batch-data volume is at ``/data``)."""
    output: str
    shards: int
    """Completions: processes (and at least as many output shards)."""
    parallelism: int | None = None
    """Pods at once (default: all shards)."""
    batch_size: int | None = None
    rows_per_shard: int | None = None
    name: str | None = None


def job_name(job: BatchJob) -> str:
    """The Job's name: ``--name`` or ``servekit-batch-<model>`` made DNS-safe."""
    if job.name:
        return job.name
    slug = _NAME_CHARACTERS.sub("-", job.model.lower()).strip("-")
    return f"{JOB_NAME}-{slug}"[:_MAX_NAME].rstrip("-")


def batch_objects(
    project: Project,
    overlay: str,
    job: BatchJob,
    image_tag: str | None = None,
    image_repository: str | None = None,
) -> list[dict[str, Any]]:
    """The component's objects from ``overlay``, set up for ``job``.

    Raises:
        DeployError: The overlay has no batch component, or a value is invalid.
    """
    if job.shards < 1 or (job.parallelism is not None and job.parallelism < 1):
        raise DeployError("--shards and --parallelism must be 1 or more")
    _, objects = manifests.render(project, overlay, image_tag, image_repository)
    chosen = [
        obj
        for obj in objects
        if (obj.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL)
        == COMPONENT
    ]
    jobs = [obj for obj in chosen if obj["kind"] == "Job"]
    settings = [
        obj
        for obj in chosen
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith(SETTINGS)
    ]
    if len(jobs) != 1 or len(settings) != 1:
        raise DeployError(
            f"overlay {overlay!r} has no batch component "
            "(add ../../components/batch to its components)"
        )
    data = settings[0].setdefault("data", {})
    data["SERVEKIT_BATCH_MODEL"] = job.model
    data["SERVEKIT_BATCH_INPUT"] = job.input
    data["SERVEKIT_BATCH_OUTPUT"] = job.output
    data["SERVEKIT_BATCH_SHARDS"] = str(job.shards)
    if job.batch_size is not None:
        data["SERVEKIT_BATCH_SIZE"] = str(job.batch_size)
    if job.rows_per_shard is not None:
        data["SERVEKIT_BATCH_ROWS_PER_SHARD"] = str(job.rows_per_shard)
    name = job_name(job)
    # The settings are this job's: their own name, so another job's pods keep theirs.
    settings_name = f"{name}-settings"
    old_settings_name = settings[0]["metadata"]["name"]
    settings[0]["metadata"]["name"] = settings_name
    batch = jobs[0]
    batch["metadata"]["name"] = name
    spec = batch["spec"]
    spec["completions"] = job.shards
    spec["parallelism"] = min(job.shards, job.parallelism or job.shards)
    for container in manifests.containers(batch):
        for source in container.get("envFrom", []):
            reference = source.get("configMapRef", {})
            if reference.get("name") == old_settings_name:
                reference["name"] = settings_name
    return chosen
