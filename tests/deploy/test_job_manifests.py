"""The k8s/ jobs: the training Job writes the registry the servers read, and the
load-test overlay runs Locust's master and workers with settings its users take."""

from __future__ import annotations

from typing import Any

from tests.deploy.conftest import (
    REPO_ROOT,
    all_containers,
    assert_cli_accepts,
    find,
    mount_for,
    pod_spec,
)

Objects = list[dict[str, Any]]


def test_training_job_writes_the_registry_the_servers_read(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["local"]
    job = find(objects, "Job", "servekit-train")
    jobs = []
    for container in all_containers(job):
        registry = mount_for(job, container, "/models")
        claim = registry["volume"]["persistentVolumeClaim"]["claimName"]
        assert claim == "servekit-models"
        assert not registry["mount"].get("readOnly", False)
        args = container["args"]
        assert args[0] == "train" and args[2:] == ["--registry", "/models"], args
        jobs.append(args[1])
    assert jobs == ["tabular", "digits"]
    # Each is a real `servekit train` job that takes --registry.
    for container in all_containers(job):
        assert_cli_accepts(container["args"])


def test_loadtest_overlay_runs_locust_master_and_workers(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["loadtest"]
    master = find(objects, "Job", "locust-master")
    workers = find(objects, "Deployment", "locust-worker")
    master_args = pod_spec(master)["containers"][0]["args"]
    worker_args = pod_spec(workers)["containers"][0]["args"]
    assert "--master" in master_args and "--headless" in master_args
    assert "--worker" in worker_args
    assert "--master-host=locust-master" in worker_args
    find(objects, "Service", "locust-master")
    env_sources = [
        find(objects, "ConfigMap", ref["configMapRef"]["name"])["data"]
        for ref in pod_spec(master)["containers"][0]["envFrom"]
    ]
    merged = {k: v for data in env_sources for k, v in data.items()}
    assert merged["LOCUST_HOST"] == "http://gateway:8000"
    assert merged["SERVEKIT_MODEL"]
    # Workers must not get master-only options: Locust exits on --run-time there.
    worker_sources = [
        find(objects, "ConfigMap", ref["configMapRef"]["name"])["data"]
        for ref in pod_spec(workers)["containers"][0]["envFrom"]
    ]
    assert not any("LOCUST_RUN_TIME" in data for data in worker_sources)
    # The locustfile the image runs is the one in the repository.
    assert (REPO_ROOT / "tests" / "load" / "locustfile.py").is_file()


def test_loadtest_settings_are_accepted_by_the_locust_users(
    rendered: dict[str, Objects],
) -> None:
    from tests.deploy.test_compose import load_settings_module

    module = load_settings_module()
    config_map = next(
        obj
        for obj in rendered["loadtest"]
        if obj["kind"] == "ConfigMap"
        and obj["metadata"]["name"].startswith("locust-settings")
    )
    settings = module.settings_from({**config_map["data"], "SERVEKIT_API_KEY": "k"})
    assert settings.model == config_map["data"]["SERVEKIT_MODEL"]
