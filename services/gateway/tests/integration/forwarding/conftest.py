"""Backends reached on their REST port (`GATEWAY_REST_BACKENDS`): one model server
and one gateway shared by this folder's modules.

A v1 `:predict` alone on its target goes to the model server's REST API as it
came; concurrent ones are merged, as JSON, into one REST call and each caller gets
its own rows, or its own error. Every other backend call (gRPC front, v2, typed,
metadata) goes as gRPC-Web on the same port, merged Predicts included; a backend
whose REST port has no gRPC-Web (TF Serving) is called over gRPC instead. Both
paths keep the gateway's resilience: retries and the circuit breaker on an
unreachable backend or one that answers 503 / UNAVAILABLE, the deadline on a
silent one.

Every model name whose test opens a circuit has a backend address of its own, so
the modules pass in any order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from modelregistry import Registry
from modelregistry.servingconfig import config_text

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    ModelServer,
    model_server,
    write_monitoring_config,
)
from tests.support.processes import free_port
from tests.support.rest_backends import (
    BusyBackend,
    not_found_backend,
    serving,
    silent_backend,
)


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forwarding") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0)
    publish_linear_pipeline(root, "linear", offset=5.0)
    Registry(root).set_label("linear", "stable", 1)
    return root


@pytest.fixture(scope="package")
def backend_config(registry: Path) -> Path:
    """The registry's models, and `twin` from a registry the gateway does not read:
    the gateway cannot know twin's labels, so its canary label is tried on the
    backend, which has none."""
    elsewhere = registry.parent / "elsewhere"
    publish_linear_pipeline(elsewhere, "twin", offset=1.0)
    Registry(elsewhere).set_label("twin", "stable", 1)
    publish_linear_pipeline(elsewhere, "plain", offset=4.0)
    entries = [
        replace(entry, base_path=str(root / entry.base_path))
        for root in (registry, elsewhere)
        for entry in Registry(root).serving_entries(None)
    ]
    path = registry.parent / "backend.config"
    path.write_text(config_text(entries))
    return path


@pytest.fixture(scope="package")
def backend(
    backend_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServer]:
    logs = tmp_path_factory.mktemp("forwarding-logs")
    monitoring = write_monitoring_config(logs)
    with model_server(
        [
            f"--model_config_file={backend_config}",
            f"--monitoring_config_file={monitoring}",
        ],
        log_path=logs / "model-server.log",
        ready_timeout=180,
    ) as server:
        yield server


@pytest.fixture(scope="package")
def silent_rest() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with silent_backend() as address:
        yield address


@pytest.fixture(scope="package")
def no_grpc_web_rest() -> Iterator[str]:
    with not_found_backend() as address:
        yield address


@pytest.fixture(scope="package")
def busy_rest() -> Iterator[BusyBackend]:
    with serving(BusyBackend()) as server:
        yield server


@pytest.fixture(scope="package")
def gateway(
    registry: Path,
    backend: ModelServer,
    silent_rest: str,
    busy_rest: BusyBackend,
    no_grpc_web_rest: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    silent_grpc = f"127.0.0.1:{free_port()}"
    dead_grpc = f"127.0.0.1:{free_port()}"
    dead_rest = f"127.0.0.1:{free_port()}"
    # Its own address, so its circuit is not the one `dead` opens.
    webdead_grpc = f"127.0.0.1:{free_port()}"
    webdead_rest = f"127.0.0.1:{free_port()}"
    busy_grpc = f"127.0.0.1:{free_port()}"
    # Its own address, so its circuit is not the one `busy` opens.
    webflaky_grpc = f"127.0.0.1:{free_port()}"
    routes = {
        "routes": {
            "silent": {"backend": silent_grpc},
            "dead": {"backend": dead_grpc},
            "webdead": {"backend": webdead_grpc},
            "busy": {"backend": busy_grpc},
            "flaky": {"backend": busy_grpc},
            "webflaky": {"backend": webflaky_grpc},
            # The model server itself, under another name whose REST port is a
            # server without gRPC-Web (as TF Serving's is).
            "plain": {"backend": f"localhost:{backend.grpc_port}"},
            "twin": {
                "stable": "stable",
                "canary": {"label": "canary", "weight": 1.0},
            },
        }
    }
    (registry / "routes.yaml").write_text(json.dumps(routes))
    rest_backends = {
        backend.grpc_target: f"127.0.0.1:{backend.rest_port}",
        silent_grpc: silent_rest,
        dead_grpc: dead_rest,
        webdead_grpc: webdead_rest,
        busy_grpc: busy_rest.address,
        webflaky_grpc: busy_rest.address,
        f"localhost:{backend.grpc_port}": no_grpc_web_rest,
    }
    env = {
        "GATEWAY_REGISTRY": str(registry),
        "GATEWAY_DEFAULT_BACKEND": backend.grpc_target,
        "GATEWAY_REST_BACKENDS": json.dumps(rest_backends),
        "GATEWAY_BREAKER_FAILURES": "3",
        "GATEWAY_BREAKER_RESET_SECONDS": "30",
    }
    with running_gateway(tmp_path_factory.mktemp("forwarding-gateway"), env=env) as gw:
        yield gw
