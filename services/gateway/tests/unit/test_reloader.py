from __future__ import annotations

import json
from pathlib import Path

from gateway.observability.metrics import GatewayMetrics
from gateway.reloader import Reloader
from gateway.routing.config import RoutesConfig
from gateway.routing.router import Router
from gateway.security.keys import Authenticator, hash_key


def test_changes_are_applied_and_broken_files_ignored(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.yaml"
    keys_file = tmp_path / "keys.yaml"
    routes_file.write_text(json.dumps({"routes": {"a": {"backend": "x:1"}}}))
    keys_file.write_text(
        json.dumps({"keys": [{"name": "k", "sha256": hash_key("one")}]})
    )
    router = Router(RoutesConfig(), "d:1")
    authenticator = Authenticator(enabled=True)
    metrics = GatewayMetrics()
    reloader = Reloader(
        router, authenticator, metrics, routes_file, keys_file, None, interval=1.0
    )
    reloader.load_initial()
    assert router.backends_of("a") == ("x:1",)
    assert authenticator.authenticate("one").name == "k"

    routes_file.write_text(json.dumps({"routes": {"a": {"backend": "y:2"}}}))
    keys_file.write_text(
        json.dumps({"keys": [{"name": "k2", "sha256": hash_key("two")}]})
    )
    reloader.check()
    assert router.backends_of("a") == ("y:2",)
    assert authenticator.authenticate("two").name == "k2"

    routes_file.write_text("routes: {a: {backend: [broken")
    keys_file.write_text("keys: 5")
    reloader.check()
    assert router.backends_of("a") == ("y:2",)
    assert authenticator.authenticate("two").name == "k2"
    errors = metrics.registry.get_sample_value(
        "gateway_config_reloads_total", {"source": "routes", "result": "error"}
    )
    assert errors == 1.0

    routes_file.unlink()
    reloader.check()
    assert router.backends_of("a") == ("d:1",)
