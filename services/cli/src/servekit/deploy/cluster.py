"""Talking to a cluster through kubectl: apply, diff and status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from servekit.deploy import tools
from servekit.deploy.errors import ToolFailed

KUBECTL_HINT = "install kubectl and point it at your cluster (kubeconfig)"
DEFAULT_NAMESPACE = "servekit"


def kubectl(context: str | None) -> list[str]:
    """The kubectl command line prefix, with `--context` when one is chosen.

    Raises:
        ToolMissing: kubectl is not installed.
    """
    command = [tools.require("kubectl", KUBECTL_HINT)]
    if context:
        command += ["--context", context]
    return command


def apply(manifests: str, context: str | None) -> str:
    """`kubectl apply` the rendered manifests; returns kubectl's report.

    Raises:
        ToolMissing, ToolFailed: kubectl absent, cluster unreachable, object refused.
    """
    try:
        result = tools.run(
            [*kubectl(context), "apply", "-f", "-"],
            stdin=manifests,
            label="kubectl apply",
        )
    except ToolFailed as exc:
        if "field is immutable" in str(exc):
            # The usual cause: a finished Job whose image tag changed.
            raise ToolFailed(
                f"{exc} (a Job cannot change once created: delete the finished job, "
                "e.g. `kubectl -n servekit delete job servekit-train`, and apply again)"
            ) from exc
        raise
    return result.stdout


def diff(manifests: str, context: str | None) -> str:
    """What `apply` would change in the live cluster (server-side dry run).

    Raises:
        ToolMissing, ToolFailed: kubectl absent or the cluster unreachable.
    """
    # kubectl diff exits 1 when there are differences, >1 on errors.
    result = tools.run(
        [*kubectl(context), "diff", "-f", "-"],
        stdin=manifests,
        ok_codes=(0, 1),
        label="kubectl diff",
    )
    return result.stdout or "no changes\n"


@dataclass(frozen=True)
class WorkloadStatus:
    """One line of `servekit deploy status`."""

    kind: str
    name: str
    ready: str
    detail: str


def status(namespace: str, context: str | None) -> list[WorkloadStatus]:
    """Deployments, Jobs, autoscalers and pods of the namespace, summarized.

    Raises:
        ToolMissing, ToolFailed: kubectl absent or the cluster unreachable.
    """
    result = tools.run(
        [
            *kubectl(context),
            "get",
            "deployments,jobs,horizontalpodautoscalers,pods",
            "--namespace",
            namespace,
            "--output",
            "json",
        ],
        label="kubectl get",
    )
    try:
        items: list[dict[str, Any]] = json.loads(result.stdout).get("items", [])
    except json.JSONDecodeError as exc:
        raise ToolFailed(f"kubectl returned something other than JSON: {exc}") from exc
    return [summarize_item(item) for item in items]


def summarize_item(item: dict[str, Any]) -> WorkloadStatus:
    """One workload object as a status line."""
    kind = str(item.get("kind", ""))
    name = str((item.get("metadata") or {}).get("name", ""))
    spec = item.get("spec") or {}
    state = item.get("status") or {}
    if kind == "Deployment":
        wanted = spec.get("replicas", 1)
        ready = f"{state.get('readyReplicas', 0)}/{wanted}"
        detail = f"updated {state.get('updatedReplicas', 0)}, " + _images(item)
    elif kind == "Job":
        completions = spec.get("completions", 1)
        ready = f"{state.get('succeeded', 0)}/{completions}"
        detail = "failed" if state.get("failed") else _conditions(state) or "running"
    elif kind == "HorizontalPodAutoscaler":
        ready = f"{state.get('currentReplicas', 0)}/{state.get('desiredReplicas', 0)}"
        detail = f"min {spec.get('minReplicas', 1)}, max {spec.get('maxReplicas')}"
    elif kind == "Pod":
        statuses = state.get("containerStatuses") or []
        ready_count = sum(1 for s in statuses if s.get("ready"))
        ready = f"{ready_count}/{len(statuses)}"
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
        waiting = [
            s["state"]["waiting"].get("reason", "")
            for s in statuses
            if (s.get("state") or {}).get("waiting")
        ]
        detail = ", ".join(
            [str(state.get("phase", "")), *waiting, f"restarts {restarts}"]
        )
    else:
        ready, detail = "", ""
    return WorkloadStatus(kind, name, ready, detail)


def _images(item: dict[str, Any]) -> str:
    template = ((item.get("spec") or {}).get("template") or {}).get("spec") or {}
    images: Sequence[str] = [c.get("image", "") for c in template.get("containers", [])]
    return ", ".join(images)


def _conditions(state: dict[str, Any]) -> str:
    return ", ".join(
        str(c.get("type"))
        for c in state.get("conditions") or []
        if c.get("status") == "True"
    )
