"""Versions over the wire: hot reload under load, a corrupt version, labels and
version policies, and config-file reload, against one running model server.

The server watches a registry folder (``--file_system_poll_wait_seconds=1``)
and re-reads its config file every second
(``--model_config_file_poll_wait_seconds=1``). Models are scikit-learn
pipelines ``y = 2 a + 3 b + offset`` whose offset tells versions apart.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROW = {"a": 1.0, "b": 2.0}
SLUGGISH_SECONDS = 3.0
REST_TIMEOUT_MS = 2000


def offset_of(prediction: float) -> float:
    return round(prediction - linear_target(ROW["a"], ROW["b"], 0.0), 6)


def config_text(entries: list[dict[str, Any]]) -> str:
    blocks = []
    for entry in entries:
        lines = [
            "  config {",
            f"    name: {json.dumps(entry['name'])}",
            f"    base_path: {json.dumps(str(entry['base_path']))}",
            '    model_platform: "sklearn"',
        ]
        if "policy" in entry:
            lines.append(f"    model_version_policy {{ {entry['policy']} }}")
        for label, version in entry.get("labels", {}).items():
            lines.append(
                f"    version_labels {{ key: {json.dumps(label)} value: {version} }}"
            )
        lines.append("  }")
        blocks.append("\n".join(lines))
    return "model_config_list {\n" + "\n".join(blocks) + "\n}\n"


def write_config(path: Path, entries: list[dict[str, Any]]) -> None:
    # Replace atomically: the server polls the file while we write it.
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(config_text(entries))
    os.replace(staging, path)


class Deployment:
    """The registry, the config file and the server of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry = root / "registry"
        self.config = root / "models.config"
        self.entries: list[dict[str, Any]] = []
        self.server: ModelServer | None = None

    def base(self, name: str) -> Path:
        return self.registry / name

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.rest_url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    setup = Deployment(tmp_path_factory.mktemp("versions"))
    publish_linear_pipeline(setup.registry, "hot", offset=1.0)
    publish_linear_pipeline(setup.registry, "fragile", offset=5.0)
    for version, offset in ((1, 10.0), (2, 20.0), (3, 30.0)):
        publish_linear_pipeline(
            setup.registry, "labelled", offset=offset, version=version
        )
    for version, offset in ((1, 40.0), (2, 50.0)):
        publish_linear_pipeline(setup.registry, "every", offset=offset, version=version)
    publish_linear_pipeline(
        setup.registry, "sluggish", offset=0.0, sleep_seconds=SLUGGISH_SECONDS
    )
    setup.entries = [
        {"name": "hot", "base_path": setup.base("hot")},
        {"name": "fragile", "base_path": setup.base("fragile")},
        {
            "name": "labelled",
            "base_path": setup.base("labelled"),
            "policy": "specific { versions: 1 versions: 2 }",
            "labels": {"stable": 1, "canary": 2},
        },
        {"name": "every", "base_path": setup.base("every"), "policy": "all {}"},
        {"name": "sluggish", "base_path": setup.base("sluggish")},
    ]
    write_config(setup.config, setup.entries)
    with model_server(
        [
            f"--model_config_file={setup.config}",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
            # A corrupt version should be reported now, not after TF Serving's
            # default five retries a minute apart.
            "--max_num_load_retries=0",
            f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
            # Warming "sluggish" up would cost several of its slow calls.
            "--enable_model_warmup=false",
        ],
        log_path=setup.root / "server.log",
    ) as server:
        setup.server = server
        yield setup


def predict(client: httpx.Client, path: str) -> httpx.Response:
    return client.post(f"{path}:predict", json={"instances": [ROW]})


def statuses(client: httpx.Client, model: str) -> dict[int, dict[str, Any]]:
    response = client.get(f"/v1/models/{model}")
    if response.status_code != 200:
        return {}
    return {
        int(item["version"]): item for item in response.json()["model_version_status"]
    }


def test_hot_reload_under_continuous_requests_drops_nothing(
    deployment: Deployment,
) -> None:
    failures: list[str] = []
    offsets: list[float] = []
    stop = threading.Event()

    # Each client's answers in the order it got them: a client sends its next request
    # only after the previous answer, so its own sequence is causally ordered.
    per_client: list[list[float]] = [[] for _ in range(3)]

    def hammer(seen: list[float]) -> None:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            while not stop.is_set():
                response = predict(client, "/v1/models/hot")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                offset = offset_of(response.json()["predictions"][0])
                seen.append(offset)
                offsets.append(offset)

    workers = [threading.Thread(target=hammer, args=(seen,)) for seen in per_client]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(offsets) > 20, timeout=30, what="first answers")
        publish_linear_pipeline(deployment.registry, "hot", offset=101.0)
        wait_until(
            lambda: bool(offsets) and offsets[-1] == 101.0,
            timeout=60,
            what="version 2 to serve",
        )
        served_before = len(offsets)
        wait_until(lambda: len(offsets) > served_before + 20, timeout=30, what="more")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert failures == []
    assert set(offsets) == {1.0, 101.0}
    # Once version 2 answered a client, version 1 never answered that client again
    # (across clients, a request already running on version 1 may finish later).
    for seen in per_client:
        if 101.0 in seen:
            assert set(seen[seen.index(101.0) :]) == {101.0}
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        wait_until(
            lambda: statuses(client, "hot").get(1, {}).get("state") in (None, "END"),
            timeout=30,
            what="version 1 to unload",
        )
        assert statuses(client, "hot")[2]["state"] == "AVAILABLE"


def test_corrupt_version_is_reported_while_the_previous_keeps_serving(
    deployment: Deployment,
) -> None:
    model_dir = deployment.base("fragile")
    # Build version 2 out of sight, break its pickle (its sha256 no longer
    # matches the manifest), then publish it with one rename.
    staging = model_dir / ".staging-2"
    shutil.copytree(model_dir / "1", staging)
    with (staging / "model.joblib").open("ab") as artifact:
        artifact.write(b"tampered")
    os.rename(staging, model_dir / "2")
    with httpx.Client(base_url=deployment.url, timeout=30) as client:

        def version_2_failed() -> bool:
            status = statuses(client, "fragile").get(2)
            return bool(status and status["status"]["error_code"] != "OK")

        wait_until(version_2_failed, timeout=60, what="version 2 to fail")
        status = statuses(client, "fragile")
        assert status[2]["state"] == "END"
        assert status[2]["status"]["error_message"]
        assert status[1]["state"] == "AVAILABLE"
        assert status[1]["status"]["error_code"] == "OK"
        for _ in range(5):
            response = predict(client, "/v1/models/fragile")
            assert response.status_code == 200, response.text
            assert offset_of(response.json()["predictions"][0]) == 5.0
        assert predict(client, "/v1/models/fragile/versions/2").status_code == 404


def test_labels_and_specific_version_policy(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        status = statuses(client, "labelled")
        assert sorted(status) == [1, 2]
        assert {item["state"] for item in status.values()} == {"AVAILABLE"}
        for path, offset in (
            ("/v1/models/labelled/labels/stable", 10.0),
            ("/v1/models/labelled/labels/canary", 20.0),
            ("/v1/models/labelled/versions/1", 10.0),
            # Without a version, the latest served version answers.
            ("/v1/models/labelled", 20.0),
        ):
            response = predict(client, path)
            assert response.status_code == 200, (path, response.text)
            assert offset_of(response.json()["predictions"][0]) == offset, path
        # Version 3 is on disk but outside the policy.
        assert predict(client, "/v1/models/labelled/versions/3").status_code == 404
        unknown = predict(client, "/v1/models/labelled/labels/nope")
        assert unknown.status_code == 400
        assert unknown.json() == {"error": "Unrecognized servable version label: nope"}


def test_all_versions_policy(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        assert sorted(statuses(client, "every")) == [1, 2]
        for version, offset in ((1, 40.0), (2, 50.0)):
            response = predict(client, f"/v1/models/every/versions/{version}")
            assert offset_of(response.json()["predictions"][0]) == offset


def test_rest_timeout_answers_504(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        started = time.monotonic()
        response = predict(client, "/v1/models/sluggish")
        elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]
    # Answered at the deadline, not when the model call ended.
    assert elapsed < SLUGGISH_SECONDS


def test_config_file_reload_adds_relabels_and_removes_models(
    deployment: Deployment,
) -> None:
    publish_linear_pipeline(deployment.registry, "added", offset=7.0)
    entries = [entry for entry in deployment.entries if entry["name"] != "every"]
    for entry in entries:
        if entry["name"] == "labelled":
            entry["labels"] = {"stable": 2, "canary": 1}
    entries.append({"name": "added", "base_path": deployment.base("added")})
    write_config(deployment.config, entries)
    with httpx.Client(base_url=deployment.url, timeout=30) as client:

        def added_serves() -> bool:
            return predict(client, "/v1/models/added").status_code == 200

        wait_until(added_serves, timeout=60, what="the added model")
        response = predict(client, "/v1/models/added")
        assert offset_of(response.json()["predictions"][0]) == 7.0

        def relabelled() -> bool:
            answer = predict(client, "/v1/models/labelled/labels/stable")
            return offset_of(answer.json()["predictions"][0]) == 20.0

        wait_until(relabelled, timeout=30, what="the new labels")

        def removed() -> bool:
            return predict(client, "/v1/models/every").status_code == 404

        wait_until(removed, timeout=60, what="the removed model to go")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert predict(client, "/v1/models/hot").status_code == 200
