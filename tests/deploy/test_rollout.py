"""`servekit deploy rollout`: registry labels, the regenerated serving configs and the
gateway's routes file, in a no-drop order; and a real model server following a
canary without a restart."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO_ROOT, SERVEKIT, flag_values

cli = pytest.importorskip("servekit.__main__")
registry_module = pytest.importorskip("modelregistry")
models = pytest.importorskip("tests.support.models")
Registry = registry_module.Registry


def rollout(
    registry: Path, *args: str, check: bool = True, installed: bool = False
) -> subprocess.CompletedProcess[str]:
    """`servekit deploy rollout ... --registry R`: in this process by default (the
    CLI's own entry point, without paying its start-up per call), or through the
    installed console script."""
    argv = ["deploy", "rollout", *args, "--registry", str(registry)]
    if installed:
        result = subprocess.run(
            [str(SERVEKIT), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
    else:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(argv)
        result = subprocess.CompletedProcess(
            argv, code, stdout.getvalue(), stderr.getvalue()
        )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def routes_of(registry: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((registry / "routes.yaml").read_text())
    gateway_routes = pytest.importorskip("gateway.routing.config")
    # The file stays valid for the gateway that reads it.
    gateway_routes.parse_routes(data)
    return data


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with `tabular` versions 1, 2 and 3 (offsets 1, 5, 9); copied per test."""
    root = tmp_path_factory.mktemp("registry")
    for offset in (1.0, 5.0, 9.0):
        models.publish_linear_pipeline(root, "tabular", offset=offset)
    return root


@pytest.fixture
def registry(published: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(published, root)
    return root


def test_canary_labels_the_version_and_splits_the_routes(registry: Path) -> None:
    result = rollout(
        registry, "tabular", "2", "--canary", "10%", "--json", installed=True
    )
    assert json.loads(result.stdout) == {
        "model": "tabular",
        "stable": 1,
        "canary": 2,
        "canary_weight": 0.1,
        "routes_file": str(registry / "routes.yaml"),
    }
    assert Registry(registry).labels("tabular") == {"stable": 1, "canary": 2}
    assert routes_of(registry)["routes"]["tabular"] == {
        "stable": "stable",
        "canary": {"label": "canary", "weight": 0.1},
    }
    # The servers' config carries the labels (both versions loaded, labelled).
    config = (registry / "servekit.config").read_text()
    assert 'key: "canary"\n      value: 2' in config
    assert 'key: "stable"\n      value: 1' in config


def test_full_rollout_promotes_and_clears_the_canary(registry: Path) -> None:
    rollout(registry, "tabular", "2", "--canary", "0.25")
    result = rollout(registry, "tabular", "2")
    assert "stable version 2; canary: none" in result.stdout
    assert Registry(registry).labels("tabular") == {"stable": 2}
    assert routes_of(registry)["routes"]["tabular"] == {"stable": "stable"}
    assert 'key: "canary"' not in (registry / "servekit.config").read_text()


def test_weight_zero_ends_a_canary(registry: Path) -> None:
    rollout(registry, "tabular", "3", "--canary", "0.2")
    rollout(registry, "tabular", "3", "--canary", "0")
    assert Registry(registry).labels("tabular") == {"stable": 2}
    assert "canary" not in routes_of(registry)["routes"]["tabular"]


def test_a_new_canary_replaces_the_previous_one(registry: Path) -> None:
    rollout(registry, "tabular", "2", "--canary", "0.1")
    rollout(registry, "tabular", "3", "--canary", "0.3")
    assert Registry(registry).labels("tabular") == {"stable": 1, "canary": 3}
    assert routes_of(registry)["routes"]["tabular"]["canary"] == {
        "label": "canary",
        "weight": 0.3,
    }


def test_other_routing_settings_are_kept(registry: Path) -> None:
    (registry / "routes.yaml").write_text(
        yaml.safe_dump(
            {
                "routes": {
                    "tabular": {
                        "backend": "modelserver:8500",
                        "sticky_header": "x-user",
                    },
                    "digits": {"backend": "tfserving:8500", "stable": 3},
                }
            }
        )
    )
    rollout(registry, "tabular", "3", "--canary", "0.5")
    routes = routes_of(registry)["routes"]
    assert routes["tabular"] == {
        "backend": "modelserver:8500",
        "sticky_header": "x-user",
        "stable": "stable",
        "canary": {"label": "canary", "weight": 0.5},
    }
    assert routes["digits"] == {"backend": "tfserving:8500", "stable": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tabular", "7"], "has no published version 7"),
        (["tabular", "2", "--canary", "1.5"], "must be at least 0 and below 1"),
        (["tabular", "2", "--canary", "abc"], "is not a number or a percentage"),
        (["tabular", "1", "--canary", "0"], "version 1 is not the canary"),
        (["nosuch", "1"], "nosuch"),
    ],
)
def test_impossible_requests_are_one_line_errors(
    registry: Path, args: list[str], message: str
) -> None:
    before = Registry(registry).labels("tabular")
    result = rollout(registry, *args, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servekit: error: "), result.stderr
    assert message in lines[0]
    assert Registry(registry).labels("tabular") == before


def test_a_corrupt_version_is_not_rolled_out(registry: Path) -> None:
    artifact = Registry(registry).version_dir("tabular", 3) / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    result = rollout(registry, "tabular", "3", "--canary", "0.1", check=False)
    assert result.returncode == 1
    assert "fails verification" in result.stderr
    assert Registry(registry).labels("tabular") == {}
    assert not (registry / "routes.yaml").exists()


def test_a_broken_routes_file_stops_the_rollout_before_any_label_moves(
    registry: Path,
) -> None:
    (registry / "routes.yaml").write_text("routes: [not, a, mapping]\n")
    result = rollout(registry, "tabular", "2", "--canary", "0.1", check=False)
    assert result.returncode == 1
    assert "`routes` must map model names to routes" in result.stderr
    assert Registry(registry).labels("tabular") == {}


def test_wait_gives_up_with_a_clear_error(registry: Path) -> None:
    result = rollout(
        registry,
        "tabular",
        "2",
        "--canary",
        "0.1",
        "--wait-url",
        "http://127.0.0.1:1",
        "--wait-timeout",
        "1",
        check=False,
    )
    assert result.returncode == 1
    assert "is not AVAILABLE at http://127.0.0.1:1 after 1s" in result.stderr
    # Labels moved (the servers may still load it); no traffic was routed to it.
    assert Registry(registry).labels("tabular") == {"stable": 1, "canary": 2}
    assert not (registry / "routes.yaml").exists()


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _predict(url: str) -> float:
    request = urllib.request.Request(
        url,
        data=json.dumps({"instances": [{"a": 1.0, "b": 1.0}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return float(json.loads(response.read())["predictions"][0])


@pytest.mark.integration
@pytest.mark.slow
def test_the_compose_model_server_follows_a_canary_without_restart(
    registry: Path, tmp_path: Path
) -> None:
    """Run servekit-model-server with docker-compose.yml's own command (ports and the
    container paths mapped to this machine), then roll out a canary and watch the
    running server load and label it."""
    support = pytest.importorskip("tests.support.modelserver")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    flags = flag_values(compose["services"]["modelserver"]["command"])
    mounts = {
        "/models": str(registry),
        "/etc/servekit": str(REPO_ROOT / "deploy" / "config"),
    }
    argv = []
    for name, value in flags.items():
        if name in ("port", "rest_api_port"):
            continue  # the helper picks free ports on 127.0.0.1
        for container_path, host_path in mounts.items():
            if value.startswith(container_path + "/"):
                value = host_path + value[len(container_path) :]
        if name == "model_config_file_poll_wait_seconds":
            value = "1"  # the compose value (10 s) would only slow the test down
        argv.append(f"--{name}={value}")
    Registry(registry).set_label("tabular", "stable", 1)
    with support.model_server(argv, log_path=tmp_path / "modelserver.log") as server:
        stable_url = f"{server.rest_url}/v1/models/tabular/labels/stable"
        assert _predict(stable_url + ":predict") == pytest.approx(6.0)
        result = rollout(
            registry,
            "tabular",
            "2",
            "--canary",
            "0.2",
            "--wait-url",
            server.rest_url,
            "--wait-timeout",
            "60",
        )
        assert "waiting for tabular version 2" in result.stderr
        status = _get(f"{server.rest_url}/v1/models/tabular/versions/2")
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        # The label follows the regenerated config within the poll interval.
        canary_url = f"{server.rest_url}/v1/models/tabular/labels/canary:predict"
        support_processes = pytest.importorskip("tests.support.processes")

        def canary_answers() -> bool:
            try:
                return _predict(canary_url) == pytest.approx(10.0)
            except OSError:
                return False

        support_processes.wait_until(
            canary_answers, timeout=30, process=server.process, what="canary label"
        )
        assert _predict(stable_url + ":predict") == pytest.approx(6.0)
        rollout(registry, "tabular", "2", "--wait-url", server.rest_url)
        support_processes.wait_until(
            lambda: _predict(stable_url + ":predict") == pytest.approx(10.0),
            timeout=30,
            process=server.process,
            what="stable label",
        )
        assert server.process.popen.poll() is None, "the server was not restarted"


# ---- on a cluster: the same rollout in a one-off pod ------------------------------------


def _cluster_dry_run(*args: str) -> list[str]:
    result = subprocess.run(
        [str(SERVEKIT), "deploy", "rollout", *args, "--cluster", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def test_cluster_rollout_runs_in_a_pod_that_mounts_the_registry() -> None:
    argv = _cluster_dry_run(
        "tabular", "3", "--canary", "10%", "--image", "servekit/trainer:abc"
    )
    assert Path(argv[0]).name == "kubectl" and argv[1] == "run"
    assert argv[argv.index("--namespace") + 1] == "servekit"
    assert {"--rm", "--attach"} <= set(argv)
    pod = json.loads(argv[argv.index("--overrides") + 1])
    container = pod["spec"]["containers"][0]
    assert container["image"] == "servekit/trainer:abc"
    assert container["command"] == [
        "servekit",
        "deploy",
        "rollout",
        "tabular",
        "3",
        "--registry",
        "/models",
        "--settle",
        "25",
        "--canary",
        "10%",
    ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "servekit-models"
    }
    assert not mounts["/models"].get("readOnly", False)
    # The pod is a valid, locked-down Pod for the API server.
    validation = pytest.importorskip("kubernetes_validate.utils")
    pod = {**pod, "kind": "Pod", "metadata": {**pod["metadata"], "name": "rollout"}}
    validation.validate(pod, "1.31.0", strict=True)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_pods_command_is_a_working_rollout(registry: Path) -> None:
    argv = _cluster_dry_run("tabular", "2", "--canary", "0.3", "--image", "x/y:z")
    command = json.loads(argv[argv.index("--overrides") + 1])["spec"]["containers"][0][
        "command"
    ]
    assert command[:3] == ["servekit", "deploy", "rollout"]
    local = [str(registry) if part == "/models" else part for part in command[3:]]
    local[local.index("--settle") + 1] = "0"
    result = subprocess.run(
        [str(SERVEKIT), "deploy", "rollout", *local],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Registry(registry).labels("tabular") == {"stable": 1, "canary": 2}


def test_cluster_rollout_without_a_cluster_is_a_one_line_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n"
        "    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n"
        "    cluster: x\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n"
    )
    result = subprocess.run(
        [str(SERVEKIT), "deploy", "rollout", "tabular", "2", "--cluster"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "servekit: error: kubectl get failed"
    )


def test_cluster_rollout_refuses_local_paths(registry: Path) -> None:
    result = rollout(registry, "tabular", "2", "--cluster", check=False)
    assert result.returncode == 1
    assert "--cluster uses the cluster's registry volume" in result.stderr
