"""One session of real processes for the gateway's over-the-wire tests.

- model server "main": a registry with `linear` (v1 stable, v2 canary), `rollout`
  (v1 stable, v2 canary), `shadowed` (v1 stable, v2 canary answering the same,
  v3 answering differently) and, when TF Serving's test data is present, the
  `half_plus_two` SavedModel copied in by hand (no manifest).
- model server "side": `flaky` (killed and restarted by a test) and `sleepy` (a
  pipeline whose custom step sleeps), on fixed ports so a restart reuses them.
- the gateway, auth on (three keys), a small body limit, a routes file sending
  `flaky`/`sleepy` to the side server and splitting or shadowing the others; run
  with `python -X importtime` so its log lists every module it ever imported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelregistry import Registry

from tests.support.gateway import ApiKeys, GatewayProcess, running_gateway
from tests.support.models import TFSERVING_TESTDATA, publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import wait_until
from tests.support.restartable import RestartableModelServer

SLEEPY_SECONDS = 3.0
HALF_PLUS_TWO = TFSERVING_TESTDATA / "models" / "half_plus_two" / "00000123"
POLL_FLAGS = (
    "--model_config_file_poll_wait_seconds=1",
    "--file_system_poll_wait_seconds=1",
)

ROUTES = {
    "routes": {
        "linear": {
            "stable": "stable",
            "canary": {"label": "canary", "weight": 0.25},
            "sticky_header": "x-user-id",
        },
        "rollout": {
            "stable": "stable",
            "canary": {"label": "canary", "weight": 0.5},
        },
        "shadowed": {
            "stable": "stable",
            "canary": {"label": "canary", "weight": 1.0},
            "shadow": True,
        },
    }
}


@pytest.fixture(scope="session")
def main_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gateway-main") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0)
    publish_linear_pipeline(root, "linear", offset=5.0)
    publish_linear_pipeline(root, "rollout", offset=2.0)
    publish_linear_pipeline(root, "rollout", offset=7.0)
    publish_linear_pipeline(root, "shadowed", offset=1.0)
    publish_linear_pipeline(root, "shadowed", offset=1.0)
    publish_linear_pipeline(root, "shadowed", offset=9.0)
    registry = Registry(root)
    for model in ("linear", "rollout", "shadowed"):
        registry.set_label(model, "stable", 1)
        registry.set_label(model, "canary", 2)
    if HALF_PLUS_TWO.is_dir():
        # A SavedModel copied in by hand: no manifest, TF Serving's folder layout.
        shutil.copytree(HALF_PLUS_TWO, root / "half_plus_two" / "123")
        registry.write_configs()
    return root


@pytest.fixture(scope="session")
def main_model_server(
    main_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServer]:
    with model_server(
        [f"--model_config_file={main_registry / 'servekit.config'}", *POLL_FLAGS],
        log_path=tmp_path_factory.mktemp("logs") / "model-server-main.log",
        ready_timeout=180,
    ) as server:
        yield server


@pytest.fixture(scope="session")
def side_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RestartableModelServer]:
    root = tmp_path_factory.mktemp("gateway-side") / "models"
    publish_linear_pipeline(root, "flaky", offset=3.0)
    publish_linear_pipeline(root, "sleepy", offset=0.0, sleep_seconds=SLEEPY_SECONDS)
    side = RestartableModelServer(
        registry=root, log_dir=tmp_path_factory.mktemp("side-logs")
    )
    side.start()
    try:
        yield side
    finally:
        side.stop()


@pytest.fixture(scope="session")
def sleepy_seconds() -> float:
    return SLEEPY_SECONDS


@pytest.fixture(scope="session")
def api_keys() -> ApiKeys:
    return ApiKeys()


@pytest.fixture(scope="session")
def gateway_env(
    main_registry: Path,
    main_model_server: ModelServer,
    api_keys: ApiKeys,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    keys_file = api_keys.write(
        tmp_path_factory.mktemp("keys") / "api-keys.yaml",
        limited_rate=0.5,
        limited_burst=3,
    )
    return {
        "GATEWAY_REGISTRY": str(main_registry),
        "GATEWAY_DEFAULT_BACKEND": main_model_server.grpc_target,
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_API_KEYS_FILE": str(keys_file),
        "GATEWAY_MAX_BODY_BYTES": str(64 * 1024),
        "GATEWAY_MAX_TIMEOUT_MS": "20000",
        "GATEWAY_BREAKER_FAILURES": "3",
        "GATEWAY_BREAKER_RESET_SECONDS": "1.0",
        "GATEWAY_RELOAD_INTERVAL_SECONDS": "0.3",
        "GATEWAY_METADATA_TTL_SECONDS": "0.5",
        # The no-TensorFlow test reads this process's imports: nothing may be
        # smuggled in through the environment.
        "PYTHONPATH": "",
    }


@pytest.fixture(scope="session")
def gateway(
    main_registry: Path,
    side_server: RestartableModelServer,
    gateway_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    routes = json.loads(json.dumps(ROUTES))
    routes["routes"]["flaky"] = {"backend": side_server.target}
    routes["routes"]["sleepy"] = {"backend": side_server.target}
    (main_registry / "routes.yaml").write_text(json.dumps(routes))
    with running_gateway(
        tmp_path_factory.mktemp("gateway"),
        env=gateway_env,
        python_options=("-X", "importtime"),
    ) as running:
        wait_until(
            lambda: httpx.get(f"{running.url}/readyz", timeout=5).status_code == 200,
            timeout=60,
            process=running.process,
            what="gateway /readyz",
        )
        yield running


@pytest.fixture
def client(gateway: GatewayProcess, api_keys: ApiKeys) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway, authenticated as admin."""
    with gateway.client(api_keys.admin) as http:
        yield http
