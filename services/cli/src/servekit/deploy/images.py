"""Container images: what each one is built from, its build context, and the build.

Builds go through the Docker SDK (the engine's HTTP API), so no docker CLI is
needed. The context is made here, from `.dockerignore`, so it can be inspected
(`servekit deploy build --dry-run`) and tested without an engine.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from servekit.deploy.errors import BuildFailed, DeployError, EngineUnavailable

DEFAULT_REPOSITORY = "servekit"
"""Images are named `<repository>/<image>:<tag>`; the manifests use `servekit/...`."""


@dataclass(frozen=True)
class ImageSpec:
    """One image of the platform."""

    name: str
    dockerfile: str
    """Path of the Dockerfile relative to the repository root (the context)."""
    description: str
    build_args: Mapping[str, str] = field(default_factory=dict)


IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec(
        "gateway",
        "deploy/docker/gateway.Dockerfile",
        "the gateway (no TensorFlow)",
    ),
    ImageSpec(
        "modelserver",
        "deploy/docker/modelserver.Dockerfile",
        "servekit-model-server, CPU, scikit-learn pipelines",
    ),
    ImageSpec(
        "modelserver-tf",
        "deploy/docker/modelserver.Dockerfile",
        "servekit-model-server, CPU, scikit-learn pipelines and SavedModels",
        {"MODELSERVER_EXTRAS": "tf"},
    ),
    ImageSpec(
        "modelserver-gpu",
        "deploy/docker/modelserver-gpu.Dockerfile",
        "servekit-model-server with TensorFlow on CUDA",
    ),
    ImageSpec(
        "trainer",
        "deploy/docker/trainer.Dockerfile",
        "the training jobs and the servekit CLI",
    ),
    ImageSpec(
        "loadtest",
        "deploy/docker/loadtest.Dockerfile",
        "Locust with the servekit users (tests/load)",
    ),
)

DEFAULT_IMAGES: tuple[str, ...] = (
    "gateway",
    "modelserver",
    "trainer",
    "loadtest",
)
"""What `servekit deploy build` builds without arguments: what the manifests use."""


@dataclass(frozen=True)
class BuildPlan:
    """One image to build: spec and the full reference it is tagged with."""

    spec: ImageSpec
    reference: str
    """`<repository>/<name>:<tag>`."""
    labels: Mapping[str, str]


def image_names() -> list[str]:
    return [spec.name for spec in IMAGES]


def plan_builds(
    names: Sequence[str],
    tag: str,
    repository: str = DEFAULT_REPOSITORY,
    revision: str | None = None,
) -> list[BuildPlan]:
    """The builds for `names` (default: DEFAULT_IMAGES) tagged `tag`.

    Raises:
        DeployError: an unknown image name or an invalid tag.
    """
    from docker.utils.build import match_tag

    by_name = {spec.name: spec for spec in IMAGES}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise DeployError(
            f"unknown image {', '.join(unknown)}; choose from {', '.join(by_name)}"
        )
    labels = {"org.opencontainers.image.source": "servekit"}
    if revision is not None:
        labels["org.opencontainers.image.revision"] = revision
    plans = []
    for name in names or DEFAULT_IMAGES:
        reference = f"{repository.rstrip('/')}/{name}:{tag}"
        if not match_tag(reference):
            raise DeployError(f"{reference!r} is not a valid image reference")
        plans.append(BuildPlan(by_name[name], reference, labels))
    return plans


def ignore_patterns(root: Path) -> list[str]:
    """The `.dockerignore` patterns of the repository (none if it has no file)."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(root: Path, dockerfile: str) -> IO[bytes]:
    """A gzipped tar of the build context: the repository minus `.dockerignore`
    (the Dockerfile itself is always included), positioned at its start.

    Raises:
        DeployError: the Dockerfile does not exist.
    """
    from docker.utils.build import tar

    if not (root / dockerfile).is_file():
        raise DeployError(f"no Dockerfile at {root / dockerfile}")
    archive: IO[bytes] = tar(
        str(root),
        exclude=ignore_patterns(root),
        dockerfile=(dockerfile, None),
        gzip=True,
    )
    archive.seek(0)
    return archive


def context_members(archive: IO[bytes]) -> list[str]:
    """File paths (not folders) in a context archive, sorted; rewinds it after."""
    archive.seek(0)
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        names = sorted(member.name for member in tar.getmembers() if member.isfile())
    archive.seek(0)
    return names


def connect() -> Any:
    """A Docker SDK client connected to a live engine (DOCKER_HOST or the socket).

    Raises:
        EngineUnavailable: nothing answers; the message is one line.
    """
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException as exc:
        raise EngineUnavailable(
            "no Docker engine is reachable (is Docker running? "
            f"set DOCKER_HOST to use another one): {_one_line(exc)}"
        ) from exc
    except Exception as exc:  # the SDK leaks requests/urllib3 errors on some hosts
        raise EngineUnavailable(
            f"no Docker engine is reachable: {_one_line(exc)}"
        ) from exc
    return client


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 240 else text[:237] + "..."


def build_image(
    client: Any,
    root: Path,
    plan: BuildPlan,
    on_progress: Callable[[str], None],
    pull: bool = False,
) -> str:
    """Build one image and return its id; build output lines go to `on_progress`.

    Raises:
        BuildFailed: the engine reported an error.
    """
    context = build_context(root, plan.spec.dockerfile)
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            fileobj=context,
            custom_context=True,
            encoding="gzip",
            dockerfile=plan.spec.dockerfile,
            tag=plan.reference,
            buildargs=dict(plan.spec.build_args),
            labels=dict(plan.labels),
            rm=True,
            pull=pull,
            decode=True,
        )
        image_id = ""
        for chunk in stream:
            if "error" in chunk:
                raise BuildFailed(f"{plan.reference}: {_one_line_text(chunk['error'])}")
            if "stream" in chunk:
                for line in str(chunk["stream"]).splitlines():
                    if line.strip():
                        on_progress(line.strip())
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = str(chunk["aux"].get("ID", image_id))
    except BuildFailed:
        raise
    except Exception as exc:
        raise BuildFailed(f"{plan.reference}: {_one_line(exc)}") from exc
    finally:
        context.close()
    return image_id


def push_image(client: Any, reference: str, on_progress: Callable[[str], None]) -> None:
    """Push a built image to its registry.

    Raises:
        BuildFailed: the registry refused it (credentials, name, network).
    """
    repository, _, tag = reference.rpartition(":")
    try:
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise BuildFailed(f"push {reference}: {_one_line_text(chunk['error'])}")
            if chunk.get("status") and not chunk.get("progressDetail"):
                on_progress(f"{chunk['status']} {chunk.get('id', '')}".strip())
    except BuildFailed:
        raise
    except Exception as exc:
        raise BuildFailed(f"push {reference}: {_one_line(exc)}") from exc


def _one_line_text(text: object) -> str:
    return " ".join(str(text).split())
