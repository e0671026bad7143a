"""One session of real processes for the gateway's over-the-wire tests.

- model server "main": a registry with `linear` (v1 stable, v2 canary), `rollout`
  (v1 stable, v2 canary) and `shadowed` (v1 stable, v2 canary answering the same,
  v3 answering differently); scikit-learn only, so it starts in seconds.
- model server "side": `flaky`, killed and restarted on the same ports by a test.
- a deliberately slow backend (`tests.support.slow_backend`) for `sleepy`.
- the gateway, auth on (an admin, a scoped and two rate-limited keys), a small body limit, a routes file sending
  `flaky` to the side server and `sleepy` to the slow one and splitting or
  shadowing the others; run with `python -X importtime` so its log lists every
  module it ever imported.

TensorFlow models (a SavedModel copied in by hand, TF Serving's own clients) are
exercised by `tests/integration/test_serve.py`, which pays for TensorFlow once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelregistry import Registry

from tests.support.gateway import ApiKeys, GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import wait_until
from tests.support.restartable import RestartableModelServer
from tests.support.slow_backend import slow_backend

SLEEPY_SECONDS = 3.0
LIMITED_RATE = 0.05
"""Tokens per second of the rate-limited keys: one per 20 s, so no token comes
back while a test spends a burst, however slowly a loaded machine sends it."""
LIMITED_BURST = 3
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
def sleepy_backend(sleepy_seconds: float) -> Iterator[str]:
    with slow_backend(sleepy_seconds) as address:
        yield address


@pytest.fixture(scope="session")
def limited_rate() -> float:
    return LIMITED_RATE


@pytest.fixture(scope="session")
def limited_burst() -> int:
    return LIMITED_BURST


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
        limited_rate=LIMITED_RATE,
        limited_burst=LIMITED_BURST,
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
    sleepy_backend: str,
    gateway_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    routes = json.loads(json.dumps(ROUTES))
    routes["routes"]["flaky"] = {"backend": side_server.target}
    routes["routes"]["sleepy"] = {"backend": sleepy_backend}
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
