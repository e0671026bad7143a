"""Rollouts on a cluster: the same `servekit deploy rollout`, run in a one-off pod.

In a cluster the registry is the `servekit-models` volume, which only pods can
mount. `--cluster` starts a short-lived pod from the trainer image (it has the
servekit CLI), mounts the volume read-write, runs the rollout there and streams
its output back; the pod is deleted when it ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from servekit.deploy import tools
from servekit.deploy.cluster import kubectl
from servekit.deploy.errors import DeployError, ToolFailed

REGISTRY_CLAIM = "servekit-models"
TRAINING_JOB = "servekit-train"
MOUNT_PATH = "/models"


def trainer_image(namespace: str, context: str | None) -> str:
    """The image the cluster's training job runs: same code as what published.

    Raises:
        DeployError: no training job to take it from (pass --image).
        ToolMissing, ToolFailed: kubectl absent or the cluster unreachable.
    """
    result = tools.run(
        [
            *kubectl(context),
            "get",
            "job",
            TRAINING_JOB,
            "--namespace",
            namespace,
            "--ignore-not-found",
            "--output",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        label="kubectl get",
    )
    image = result.stdout.strip()
    if not image:
        raise DeployError(
            f"no job {TRAINING_JOB} in namespace {namespace!r} to take the trainer "
            "image from; pass --image"
        )
    return image


def pod_overrides(image: str, command: Sequence[str]) -> dict[str, Any]:
    """The pod that runs `command`: the deployment's security settings, the
    registry volume read-write (as the training job has it)."""
    locked_down = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "v1",
        "metadata": {
            "labels": {
                "app.kubernetes.io/name": "rollout",
                "app.kubernetes.io/component": "rollout",
                "app.kubernetes.io/part-of": "servekit",
            }
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "rollout",
                    "image": image,
                    "command": list(command),
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "128Mi"},
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                    },
                    "securityContext": locked_down,
                    "volumeMounts": [
                        {"name": "registry", "mountPath": MOUNT_PATH},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "registry",
                    "persistentVolumeClaim": {"claimName": REGISTRY_CLAIM},
                },
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def rollout_command(
    model: str, version: int, canary: str | None, settle_seconds: float
) -> list[str]:
    """The rollout as the pod runs it, against the mounted registry."""
    command = [
        "servekit",
        "deploy",
        "rollout",
        model,
        str(version),
        "--registry",
        MOUNT_PATH,
        "--settle",
        f"{settle_seconds:g}",
    ]
    if canary is not None:
        command += ["--canary", canary]
    return command


def kubectl_run(
    namespace: str, context: str | None, image: str, command: Sequence[str]
) -> list[str]:
    """The `kubectl run` command line that runs `command` in a one-off pod."""
    name = f"servekit-rollout-{secrets.token_hex(3)}"
    return [
        *kubectl(context),
        "run",
        name,
        "--namespace",
        namespace,
        "--image",
        image,
        "--restart",
        "Never",
        "--rm",
        "--attach",
        "--quiet",
        "--pod-running-timeout",
        "5m",
        "--overrides",
        json.dumps(pod_overrides(image, command), separators=(",", ":")),
    ]


def run_in_cluster(command: Sequence[str]) -> None:
    """Run the pod, its output on this terminal.

    Raises:
        ToolFailed: the pod failed (its output says why) or kubectl did.
    """
    try:
        tools.run(command, capture=False, label="kubectl run")
    except ToolFailed as exc:
        raise ToolFailed(f"the rollout pod failed: {exc}") from exc
