"""docker-compose.yml (and the GPU override) validate, and what they run agrees with
the servers: flag names, ports, config files, environment variables, health checks."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO_ROOT, VENV_BIN, assert_cli_accepts, flag_values

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_FILE = REPO_ROOT / "docker-compose.gpu.yml"
CHECK_JSONSCHEMA = VENV_BIN / "check-jsonschema"
MODEL_SERVERS = ("tfserving", "modelserver")
FILE_SETS = {"cpu": [COMPOSE_FILE], "gpu": [COMPOSE_FILE, GPU_FILE]}


def compose_program() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.skip(
            "Docker Compose is not installed "
            "(apt-get install --no-install-recommends docker-compose)"
        )
    return [legacy]


def load_settings_module() -> ModuleType:
    """tests/load/settings.py, which reads the SERVEKIT_* variables the Locust
    users run with (loaded by path: the load-test modules import each other flat)."""
    path = REPO_ROOT / "tests" / "load" / "settings.py"
    spec = importlib.util.spec_from_file_location("servekit_loadtest_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file on the host behind a container path, through the bind mounts."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if container_path == target or container_path.startswith(target + "/"):
            relative = str(container_path[len(target) :]).lstrip("/")
            return REPO_ROOT / str(source) / relative
    raise AssertionError(f"{container_path} is on no bind mount")


def merged_services(
    compose_file: dict[str, Any], gpu: dict[str, Any]
) -> dict[str, Any]:
    services = {
        name: dict(service) for name, service in compose_file["services"].items()
    }
    for name, override in gpu["services"].items():
        services[name] = {**services[name], **override}
    return services


@pytest.mark.parametrize("file_set", sorted(FILE_SETS))
def test_compose_config_validates(file_set: str) -> None:
    program = compose_program()
    files = [arg for path in FILE_SETS[file_set] for arg in ("-f", str(path))]
    result = subprocess.run(
        [
            *program,
            *files,
            "--profile",
            "train",
            "--profile",
            "loadtest",
            "config",
            "-q",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", [COMPOSE_FILE, GPU_FILE], ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(path: Path) -> None:
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema is not installed (dev group)")
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_specification_check_rejects_a_wrong_file(tmp_path: Path) -> None:
    # What the test above relies on: a misspelt key fails the schema.
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema is not installed (dev group)")
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["gateway"]["helthcheck"] = data["services"]["gateway"].pop(
        "healthcheck"
    )
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0


@pytest.mark.parametrize("file_set", sorted(FILE_SETS))
def test_model_servers_run_with_flags_they_accept(
    compose_file: dict[str, Any], compose_gpu_file: dict[str, Any], file_set: str
) -> None:
    settings = pytest.importorskip("modelserver.settings")
    accepted = set(settings.Settings.model_fields)
    services = (
        merged_services(compose_file, compose_gpu_file)
        if file_set == "gpu"
        else compose_file["services"]
    )
    for name in MODEL_SERVERS:
        flags = flag_values(services[name]["command"])
        assert not set(flags) - accepted, f"{name}: unknown flags"
        assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
        assert flags["enable_batching"] == "true"
        assert flags["monitoring_config_file"]
    tfserving = flag_values(services["tfserving"]["command"])
    modelserver = flag_values(services["modelserver"]["command"])
    assert tfserving["model_config_file"] == "/models/models.config"
    assert modelserver["model_config_file"] == "/models/sklearn.config"
    # TF Serving's own entrypoint would add single-model flags; it is replaced.
    assert services["tfserving"]["entrypoint"] == ["tensorflow_model_server"]


@pytest.mark.parametrize("file_set", sorted(FILE_SETS))
def test_config_files_the_flags_name_exist_and_parse(
    compose_file: dict[str, Any], compose_gpu_file: dict[str, Any], file_set: str
) -> None:
    config = pytest.importorskip("modelserver.config")
    services = (
        merged_services(compose_file, compose_gpu_file)
        if file_set == "gpu"
        else compose_file["services"]
    )
    for name in MODEL_SERVERS:
        service = services[name]
        flags = flag_values(service["command"])
        batching = host_path(service, flags["batching_parameters_file"])
        monitoring = host_path(service, flags["monitoring_config_file"])
        parsed = config.load_batching_settings(batching)
        assert parsed.max_batch_size == parsed.allowed_batch_sizes[-1]
        assert config.load_monitoring_settings(monitoring).prometheus_enabled
        assert (
            host_path(service, flags["model_config_file"]).parent
            == REPO_ROOT / "models"
        )
    gpu_batching = flag_values(services["tfserving"]["command"])[
        "batching_parameters_file"
    ]
    assert gpu_batching.endswith("batching-gpu.config") == (file_set == "gpu")


def test_ports_agree_with_the_design(compose_file: dict[str, Any]) -> None:
    services = compose_file["services"]
    assert services["tfserving"]["ports"] == [
        "127.0.0.1:8500:8500",
        "127.0.0.1:8501:8501",
    ]
    assert set(services["modelserver"]["expose"]) == {"8500", "8501"}
    gateway_env = services["gateway"]["environment"]
    assert (gateway_env["GATEWAY_PORT"], gateway_env["GATEWAY_GRPC_PORT"]) == (
        "8000",
        "8001",
    )
    assert gateway_env["GATEWAY_HOST"] == "0.0.0.0"
    assert services["gateway"]["ports"] == [
        "127.0.0.1:8000:8000",
        "127.0.0.1:8001:8001",
    ]
    # Health checks probe the ports the processes listen on.
    # Readiness: the gateway's backends and every configured model loaded.
    assert "127.0.0.1:8000/readyz" in " ".join(
        services["gateway"]["healthcheck"]["test"]
    )
    assert "8501/v2/health/ready" in " ".join(
        services["modelserver"]["healthcheck"]["test"]
    )
    tfserving_check = " ".join(services["tfserving"]["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/8501" in tfserving_check
    assert "/monitoring/prometheus/metrics" in tfserving_check


def test_start_order_follows_health(compose_file: dict[str, Any]) -> None:
    services = compose_file["services"]
    assert services["gateway"]["depends_on"] == {
        "tfserving": {"condition": "service_healthy"},
        "modelserver": {"condition": "service_healthy"},
    }
    for name in MODEL_SERVERS:
        assert services[name]["depends_on"] == {
            "registry-init": {"condition": "service_completed_successfully"}
        }
        assert "healthcheck" in services[name]


def test_registry_is_read_only_for_servers_and_writable_for_writers(
    compose_file: dict[str, Any],
) -> None:
    services = compose_file["services"]
    for name in (*MODEL_SERVERS, "gateway", "locust-master", "locust-worker"):
        assert "./models:/models:ro" in services[name]["volumes"], name
    for name in ("trainer", "registry-init"):
        assert "./models:/models" in services[name]["volumes"], name
        assert services[name]["user"] == "${SERVEKIT_UID:-10001}:${SERVEKIT_GID:-10001}"


def test_images_are_pinned(
    compose_file: dict[str, Any], compose_gpu_file: dict[str, Any]
) -> None:
    for service in merged_services(compose_file, compose_gpu_file).values():
        name, _, tag = service["image"].rpartition(":")
        assert name and tag and "latest" not in tag, service["image"]
    assert compose_file["services"]["tfserving"]["image"] == "tensorflow/serving:2.19.1"
    assert (
        compose_gpu_file["services"]["tfserving"]["image"]
        == "tensorflow/serving:2.19.1-gpu"
    )


def test_gpu_override_reserves_an_nvidia_gpu(compose_gpu_file: dict[str, Any]) -> None:
    tfserving = compose_gpu_file["services"]["tfserving"]
    devices = tfserving["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    flags = flag_values(tfserving["command"])
    assert 0 < float(flags["per_process_gpu_memory_fraction"]) <= 1


def test_gateway_environment_is_read_by_the_gateway(
    compose_file: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pytest.importorskip("gateway.settings")
    environment = compose_file["services"]["gateway"]["environment"]
    fields = set(settings.Settings.model_fields)
    for name in environment:
        assert name.startswith("GATEWAY_")
        assert name[len("GATEWAY_") :].lower() in fields, f"the gateway ignores {name}"
    for name, value in environment.items():
        monkeypatch.setenv(name, value.replace("${GATEWAY_AUTH_ENABLED:-true}", "true"))
    parsed = settings.Settings()
    assert parsed.auth_enabled is True
    assert (parsed.port, parsed.grpc_port) == (8000, 8001)
    assert str(parsed.routes_file) == "/models/routes.yaml"


def test_api_keys_come_from_a_secret_file(compose_file: dict[str, Any]) -> None:
    gateway = compose_file["services"]["gateway"]
    assert gateway["secrets"] == ["api-keys"]
    assert gateway["environment"]["GATEWAY_API_KEYS_FILE"] == "/run/secrets/api-keys"
    default = compose_file["secrets"]["api-keys"]["file"]
    local_file = default.split(":-", 1)[1].rstrip("}")
    keys = yaml.safe_load((REPO_ROOT / local_file).read_text())
    keys_module = pytest.importorskip("gateway.security.keys")
    parsed = keys_module.parse_keys(keys)
    # The documented local key is the one the file holds the digest of.
    documented = compose_file["x-loadtest-env"]["SERVEKIT_API_KEY"].split(":-", 1)[1]
    assert keys_module.hash_key(documented.rstrip("}")) == parsed.keys[0].sha256


def test_locust_services_run_the_repository_users(compose_file: dict[str, Any]) -> None:
    module = load_settings_module()
    services = compose_file["services"]
    for name in ("locust-master", "locust-worker"):
        environment = {
            key: value.split(":-", 1)[1].rstrip("}") if ":-" in value else value
            for key, value in services[name]["environment"].items()
        }
        settings = module.settings_from(environment)
        assert settings.model == "tabular"
        assert settings.api_key
    master = services["locust-master"]["command"]
    assert "--master" in master and "--headless" in master
    assert any(arg.startswith("--host=") for arg in master)
    assert "--master-host=locust-master" in services["locust-worker"]["command"]
    assert services["locust-master"]["profiles"] == ["loadtest"]


def test_trainer_runs_real_training_jobs(compose_file: dict[str, Any]) -> None:
    trainer = compose_file["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    script = trainer["command"][0]
    jobs = [part.split()[2] for part in script.split("&&")]
    assert jobs == ["tabular", "digits"]
    for part in script.split("&&"):
        program, *argv = part.split()
        assert program == "servekit"
        assert_cli_accepts(argv)


def _locust_options() -> set[str]:
    locust = VENV_BIN / "locust"
    if not locust.exists():
        pytest.skip("locust is not installed (servekit[loadtest])")
    result = subprocess.run(
        [str(locust), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(--[a-z][a-z-]+)", result.stdout))


def test_locust_commands_use_real_options_and_the_repository_config(
    compose_file: dict[str, Any],
) -> None:
    options = _locust_options()
    k8s = yaml.safe_load_all(
        (REPO_ROOT / "k8s" / "components" / "loadtest" / "locust.yaml").read_text()
    )
    k8s_args = [
        doc["spec"]["template"]["spec"]["containers"][0]["args"]
        for doc in k8s
        if doc["kind"] in ("Job", "Deployment")
    ]
    services = compose_file["services"]
    commands = [
        services["locust-master"]["command"],
        services["locust-worker"]["command"],
        *k8s_args,
    ]
    for command in commands:
        for arg in command:
            assert arg.split("=", 1)[0] in options, f"locust has no option {arg}"
    # The image copies tests/load/ to /opt/servekit/tests/load/ (loadtest.Dockerfile).
    for command in (services["locust-master"]["command"], k8s_args[0]):
        config = next(arg for arg in command if arg.startswith("--config="))
        in_image = config.split("=", 1)[1]
        assert in_image.startswith("/opt/servekit/tests/load/")
        assert (REPO_ROOT / in_image.removeprefix("/opt/servekit/")).is_file()
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "loadtest.Dockerfile").read_text()
    assert "COPY tests/load/ /opt/servekit/tests/load/" in dockerfile
    # Master-only options stay off the workers (Locust refuses --run-time there).
    for worker in (services["locust-worker"]["command"], k8s_args[1]):
        assert not any(
            arg.startswith(("--run-time", "--users", "--headless")) for arg in worker
        )


def test_servers_run_unprivileged(compose_file: dict[str, Any]) -> None:
    services = compose_file["services"]
    for name in (*MODEL_SERVERS, "gateway"):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "/tmp" in service["tmpfs"], name
    # TF Serving's image runs as root unless told otherwise; ours set USER 10001.
    assert services["tfserving"]["user"] == "10001:10001"
