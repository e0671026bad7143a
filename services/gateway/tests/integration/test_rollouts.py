"""Canary splits, sticky keys, shadow traffic, and promote/rollback followed live."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest
from modelregistry import Registry

from tests.support.gateway import GatewayProcess
from tests.support.processes import VENV_BIN, wait_until

pytestmark = pytest.mark.integration

ROW = {"instances": [{"a": 1.0, "b": 1.0}]}


def _versions(
    client: httpx.Client, model: str, count: int, **headers: str
) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(count):
        response = client.post(f"/v1/models/{model}:predict", json=ROW, headers=headers)
        assert response.status_code == 200, response.text
        served[response.headers["x-model-version"]] += 1
    return served


def test_canary_split_within_statistical_tolerance(client: httpx.Client) -> None:
    served = _versions(client, "linear", 400)
    # linear: 25% to the canary (v2). Binomial(400, 0.25): sd = 8.7; allow 4 sd.
    assert served["1"] + served["2"] == 400
    assert abs(served["2"] - 100) <= 35, served


def test_routing_headers_and_metrics(
    gateway: GatewayProcess, client: httpx.Client
) -> None:
    before = gateway.metric(
        "gateway_route_requests_total", model="linear", route="canary"
    )
    response = client.post("/v1/models/linear:predict", json=ROW)
    assert response.headers["x-route"] in ("stable", "canary")
    after = gateway.metric(
        "gateway_route_requests_total", model="linear", route="canary"
    )
    assert after - before == (1 if response.headers["x-route"] == "canary" else 0)


def test_sticky_header_keeps_a_user_on_one_version(client: httpx.Client) -> None:
    sides: dict[str, set[str]] = {}
    for user in (f"user-{n}" for n in range(40)):
        served = _versions(client, "linear", 5, **{"x-user-id": user})
        sides[user] = set(served)
    assert all(len(versions) == 1 for versions in sides.values()), sides
    # Different users land on both sides (25% canary: P(all 40 stable) < 1e-4).
    assert {next(iter(v)) for v in sides.values()} == {"1", "2"}


def test_shadow_answers_from_stable_and_counts_agreement(
    gateway: GatewayProcess, client: httpx.Client, main_registry: Path
) -> None:
    def counted(outcome: str) -> float:
        return gateway.metric(
            "gateway_shadow_requests_total", model="shadowed", outcome=outcome
        )

    agree, disagree = counted("agree"), counted("disagree")
    served = _versions(client, "shadowed", 20)
    assert served == Counter({"1": 20})
    wait_until(lambda: counted("agree") - agree == 20, timeout=10, what="20 agreements")
    assert counted("disagree") == disagree

    # Point the canary at v3, which answers differently.
    Registry(main_registry).set_label("shadowed", "canary", 3)
    wait_until(
        lambda: (
            client.post(
                "/v1/models/shadowed/labels/canary:predict", json=ROW
            ).headers.get("x-model-version")
            == "3"
        ),
        timeout=30,
        what="the model server to move the canary label to v3",
    )
    disagree = counted("disagree")
    served = _versions(client, "shadowed", 10)
    assert served == Counter({"1": 10})
    wait_until(
        lambda: counted("disagree") - disagree == 10,
        timeout=10,
        what="10 disagreements",
    )


def _servekit(registry: Path, *args: str) -> None:
    subprocess.run(
        [str(VENV_BIN / "servekit"), "models", *args, "--registry", str(registry)],
        check=True,
        capture_output=True,
        env={**os.environ},
        timeout=60,
    )


def test_promote_and_rollback_are_followed_without_restart(
    gateway: GatewayProcess, client: httpx.Client, main_registry: Path
) -> None:
    pid = gateway.process.pid
    assert set(_versions(client, "rollout", 40)) == {"1", "2"}

    _servekit(main_registry, "promote", "rollout")
    wait_until(
        lambda: set(_versions(client, "rollout", 10)) == {"2"},
        timeout=30,
        what="all rollout traffic on v2 after promote",
    )
    assert set(_versions(client, "rollout", 40)) == {"2"}

    _servekit(main_registry, "rollback", "rollout")
    wait_until(
        lambda: set(_versions(client, "rollout", 10)) == {"1"},
        timeout=30,
        what="all rollout traffic back on v1 after rollback",
    )
    assert set(_versions(client, "rollout", 40)) == {"1"}
    assert gateway.process.pid == pid and gateway.process.popen.poll() is None


def test_routes_file_is_reloaded_on_change(
    gateway: GatewayProcess, client: httpx.Client, main_registry: Path
) -> None:
    routes_file = main_registry / "routes.yaml"
    original = routes_file.read_text()
    routes = json.loads(original)
    routes["routes"]["linear"]["canary"]["weight"] = 1.0
    routes_file.write_text(json.dumps(routes))
    try:
        wait_until(
            lambda: set(_versions(client, "linear", 5)) == {"2"},
            timeout=10,
            what="the new canary weight",
        )
        # A broken file is refused and the last good routes stay in force.
        routes_file.write_text("routes: [not, a, mapping")
        wait_until(
            lambda: (
                gateway.metric(
                    "gateway_config_reloads_total", source="routes", result="error"
                )
                >= 1
            ),
            timeout=10,
            what="the failed reload to be counted",
        )
        assert set(_versions(client, "linear", 10)) == {"2"}
    finally:
        routes_file.write_text(original)
    wait_until(
        lambda: len(set(_versions(client, "linear", 30))) == 2,
        timeout=10,
        what="the original routes",
    )
