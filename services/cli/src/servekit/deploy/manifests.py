"""Kubernetes manifests: render an overlay with kustomize, list and retag its objects."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from servekit.deploy import tools
from servekit.deploy.errors import DeployError, ToolFailed, ToolMissing
from servekit.deploy.project import Project

MANAGED_REPOSITORY = "servekit/"
"""Images the manifests name as `servekit/<image>:<tag>`; --image-tag and
--image-repository rewrite these and leave third-party images alone."""


@dataclass(frozen=True)
class ObjectSummary:
    """One rendered object, as `apply --dry-run` lists it."""

    kind: str
    namespace: str
    name: str
    images: tuple[str, ...]


def kustomize_command() -> list[str]:
    """`kubectl kustomize`, or a standalone `kustomize build` when kubectl is absent.

    Raises:
        ToolMissing: neither is installed.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    raise ToolMissing(
        "kubectl is not installed or not on PATH (it bundles kustomize); "
        "install kubectl or kustomize"
    )


def render_overlay(project: Project, overlay: str) -> str:
    """The overlay's manifests as one multi-document YAML text.

    Raises:
        DeployError: unknown overlay; ToolMissing / ToolFailed from kustomize.
    """
    available = project.overlays()
    if overlay not in available:
        raise DeployError(
            f"no overlay {overlay!r} in {project.overlays_dir}; "
            f"choose from {', '.join(available) or '(none)'}"
        )
    command = [*kustomize_command(), str(project.overlays_dir / overlay)]
    try:
        return tools.run(command, cwd=project.root).stdout
    except ToolFailed as exc:
        raise ToolFailed(f"rendering overlay {overlay!r} failed: {exc}") from exc


def parse_objects(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text (empty documents dropped).

    Raises:
        DeployError: not YAML, or a document that is not a Kubernetes object.
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DeployError(f"rendered manifests are not valid YAML: {exc}") from exc
    objects = [document for document in documents if document is not None]
    for document in objects:
        if not isinstance(document, dict) or "kind" not in document:
            raise DeployError("rendered manifests hold a document without a kind")
    return objects


def dump_objects(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs inside a workload object (Deployment, Job, CronJob, Pod, ...)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield (job_spec.get("template") or {}).get("spec") or {}
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec") or {}


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a workload object, init containers included."""
    for pod in pod_specs(obj):
        for key in ("initContainers", "containers"):
            yield from pod.get(key) or []


def retag_images(
    objects: list[dict[str, Any]], tag: str | None, repository: str | None
) -> int:
    """Point `servekit/<image>` containers at `<repository>/<image>:<tag>` in place
    (either part may be None: keep it); returns how many containers changed."""
    if tag is None and repository is None:
        return 0
    changed = 0
    for obj in objects:
        for container in containers(obj):
            image = str(container.get("image", ""))
            if not image.startswith(MANAGED_REPOSITORY):
                continue
            name_and_tag = image[len(MANAGED_REPOSITORY) :]
            name, _, old_tag = name_and_tag.partition(":")
            new_repository = (repository or MANAGED_REPOSITORY).rstrip("/")
            container["image"] = f"{new_repository}/{name}:{tag or old_tag}"
            changed += 1
    return changed


def summarize(objects: list[dict[str, Any]]) -> list[ObjectSummary]:
    """Kind, namespace, name and images of each object, in apply order."""
    summaries = []
    for obj in objects:
        metadata = obj.get("metadata") or {}
        images = tuple(str(c.get("image", "")) for c in containers(obj))
        summaries.append(
            ObjectSummary(
                kind=str(obj.get("kind")),
                namespace=str(metadata.get("namespace") or ""),
                name=str(metadata.get("name", "")),
                images=images,
            )
        )
    return summaries


def render(
    project: Project,
    overlay: str,
    image_tag: str | None = None,
    image_repository: str | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Render an overlay, apply the image overrides; returns text and objects.

    Raises:
        DeployError: as render_overlay and parse_objects.
    """
    text = render_overlay(project, overlay)
    objects = parse_objects(text)
    if retag_images(objects, image_tag, image_repository):
        text = dump_objects(objects)
    return text, objects
