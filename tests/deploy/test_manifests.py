"""The k8s/ overlays render, validate against the Kubernetes schemas (strict), and
keep the deployment policies: probes, resources, non-root, pinned images, rolling
updates without unavailability, GPU placement, network isolation, autoscaling,
config files that exist where the servers' flags point, API keys from a Secret.
The jobs (training, load test): test_job_manifests.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.conftest import (
    OVERLAYS,
    REPO_ROOT,
    all_containers,
    find,
    flag_values,
    mount_for,
    pod_labels,
    pod_spec,
    workloads,
)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (dev group)"
)
from kubernetes_validate.utils import ValidationError, validate  # noqa: E402

KUBERNETES_VERSIONS = ("1.31.0", "1.34.0")
MODEL_SERVERS = ("tfserving", "modelserver")
Objects = list[dict[str, Any]]


def test_the_expected_overlays_exist() -> None:
    assert {"local", "gpu", "loadtest"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_platform(
    rendered: dict[str, Objects], overlay: str
) -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered[overlay]}
    for expected in [
        ("Namespace", "servekit"),
        ("Deployment", "tfserving"),
        ("Service", "tfserving"),
        ("Deployment", "modelserver"),
        ("Service", "modelserver"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("Job", "servekit-train"),
        ("PersistentVolumeClaim", "servekit-models"),
        ("NetworkPolicy", "model-servers-from-gateway-only"),
        ("Ingress", "gateway"),
    ]:
        assert expected in kinds, f"{overlay} lacks {expected}"
    for obj in rendered[overlay]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "servekit", obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "servekit"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(
    rendered: dict[str, Objects], overlay: str, version: str
) -> None:
    for obj in rendered[overlay]:
        validate(obj, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(
    rendered: dict[str, Objects],
) -> None:
    # The validator is what the test above trusts: a misspelt field must fail it.
    deployment = copy.deepcopy(find(rendered["local"], "Deployment", "gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(ValidationError):
        validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(
    rendered: dict[str, Objects], overlay: str
) -> None:
    for obj in workloads(rendered[overlay]):
        for container in all_containers(obj):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(part, {}), (
                        f"{overlay} {obj['metadata']['name']}/{container['name']} "
                        f"has no {part}.{resource}"
                    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_have_readiness_and_liveness_probes_on_declared_ports(
    rendered: dict[str, Objects], overlay: str
) -> None:
    checked = 0
    for obj in workloads(rendered[overlay]):
        # Jobs run to completion; Locust workers serve no port (they exit with the
        # master). Every other long-running container serves and is probed.
        if obj["kind"] != "Deployment" or not any(
            c.get("ports") for c in pod_spec(obj)["containers"]
        ):
            continue
        for container in pod_spec(obj)["containers"]:
            ports = {p["name"] for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                assert probe, f"{obj['metadata']['name']} has no {probe_name}"
                handler = (
                    probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                )
                assert handler and handler["port"] in ports, (
                    f"{obj['metadata']['name']} {probe_name} probes an undeclared port"
                )
            checked += 1
    assert checked >= 3


def test_probes_point_at_the_documented_paths(rendered: dict[str, Objects]) -> None:
    objects = rendered["local"]
    gateway = pod_spec(find(objects, "Deployment", "gateway"))["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness means every configured model loaded (DESIGN.md "Readiness"),
    # never /v1/models/<m>, which answers 200 while a model is LOADING.
    modelserver = pod_spec(find(objects, "Deployment", "modelserver"))["containers"][0]
    assert modelserver["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert modelserver["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    tfserving = pod_spec(find(objects, "Deployment", "tfserving"))["containers"][0]
    assert tfserving["readinessProbe"]["grpc"] == {"port": 8500}
    assert "--enable_grpc_healthcheck_service=true" in tfserving["args"]
    assert (
        tfserving["livenessProbe"]["httpGet"]["path"]
        == "/monitoring/prometheus/metrics"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_with_a_locked_down_container(
    rendered: dict[str, Objects], overlay: str
) -> None:
    for obj in workloads(rendered[overlay]):
        spec = pod_spec(obj)
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False
        for container in all_containers(obj):
            security = {**pod_security, **container.get("securityContext", {})}
            where = f"{overlay} {obj['metadata']['name']}/{container['name']}"
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) > 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(rendered: dict[str, Objects], overlay: str) -> None:
    for obj in workloads(rendered[overlay]):
        for container in all_containers(obj):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{image} has no tag"
            assert tag != "latest" and not tag.startswith("latest-"), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_updates_never_drop_below_the_wanted_replicas(
    rendered: dict[str, Objects], overlay: str
) -> None:
    for obj in rendered[overlay]:
        if obj["kind"] != "Deployment":
            continue
        strategy = obj["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, obj["metadata"]["name"]
        assert strategy["rollingUpdate"]["maxSurge"] >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_servers_drain_before_they_stop(
    rendered: dict[str, Objects], overlay: str
) -> None:
    for name in (*MODEL_SERVERS, "gateway"):
        spec = pod_spec(find(rendered[overlay], "Deployment", name))
        assert spec["terminationGracePeriodSeconds"] >= 30
        assert spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]


_QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "mb": 2**20, "gb": 2**30}


def _bytes_of(quantity: str) -> int:
    """A Kubernetes quantity (``1Gi``) or a compose size (``1gb``) in bytes."""
    for unit, size in _QUANTITY_UNITS.items():
        if quantity.endswith(unit):
            return int(quantity[: -len(unit)]) * size
    return int(quantity)


def _message_limit(args: list[str]) -> int:
    from modelserver.settings import Settings

    default = Settings.model_fields["grpc_max_message_bytes"].default
    return int(flag_values(args).get("grpc_max_message_bytes", default))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_server_has_shared_memory_for_its_largest_messages(
    rendered: dict[str, Objects], overlay: str
) -> None:
    # A large message and its decoded arrays cross to the worker processes
    # through /dev/shm; a container's own 64 MiB holds neither a 256 MiB
    # message nor its arrays, and a message without room is parsed on the
    # event loop.
    obj = find(rendered[overlay], "Deployment", "modelserver")
    container = pod_spec(obj)["containers"][0]
    volume = mount_for(obj, container, "/dev/shm")["volume"]
    assert volume["emptyDir"]["medium"] == "Memory"
    room = _bytes_of(volume["emptyDir"]["sizeLimit"])
    assert room >= 2 * _message_limit(container["args"])
    assert room < _bytes_of(container["resources"]["limits"]["memory"])


def test_the_compose_model_server_has_shared_memory_for_its_largest_messages(
    compose_file: dict[str, Any],
) -> None:
    service = compose_file["services"]["modelserver"]
    assert _bytes_of(service["shm_size"]) >= 2 * _message_limit(service["command"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_targets_the_gateway_deployment(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    hpas = [obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    gateway = find(objects, "Deployment", target["name"])
    assert pod_labels(gateway)["app.kubernetes.io/name"] == "gateway"
    # The autoscaler owns the count; a fixed `replicas` would be reset on every apply.
    assert "replicas" not in gateway["spec"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = find(objects, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(gateway).items()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used"
    return bool(selector["matchLabels"].items() <= labels.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_the_model_servers(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    assert policies
    pods = {obj["metadata"]["name"]: pod_labels(obj) for obj in workloads(objects)}
    for name in MODEL_SERVERS:
        covering = [
            p for p in policies if _selects(p["spec"]["podSelector"], pods[name])
        ]
        assert covering, f"no NetworkPolicy selects {name}"
        for policy in covering:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"]["ingress"]:
                assert rule["from"], "an ingress rule without `from` admits everyone"
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, peer
                    admitted = [
                        pod
                        for pod, labels in pods.items()
                        if _selects(peer["podSelector"], labels)
                    ]
                    assert admitted == ["gateway"], admitted
                assert {port["port"] for port in rule["ports"]} == {8500, 8501}
    # And the policy leaves the gateway itself reachable.
    assert not any(
        _selects(p["spec"]["podSelector"], pods["gateway"]) for p in policies
    )


def test_only_the_gpu_overlay_asks_for_gpus(rendered: dict[str, Objects]) -> None:
    for overlay in OVERLAYS:
        for obj in workloads(rendered[overlay]):
            for container in all_containers(obj):
                limits = container["resources"]["limits"]
                wants_gpu = "nvidia.com/gpu" in limits
                expected = overlay == "gpu" and obj["metadata"]["name"] == "tfserving"
                assert wants_gpu == (expected and container["name"] == "tfserving"), (
                    overlay,
                    obj["metadata"]["name"],
                    container["name"],
                )


def test_gpu_overlay_places_tf_serving_on_the_gpu_pool(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["gpu"]
    tfserving = find(objects, "Deployment", "tfserving")
    spec = pod_spec(tfserving)
    container = spec["containers"][0]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert spec["nodeSelector"], "GPU pods need a node selector for the GPU pool"
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
        for t in spec["tolerations"]
    )
    for each in all_containers(tfserving):
        assert each["image"] == "tensorflow/serving:2.19.1-gpu"
    flags = flag_values(container["args"])
    assert 0.0 < float(flags["per_process_gpu_memory_fraction"]) <= 1.0
    # Batching tuned for GPUs: the mounted batching file is the GPU one.
    batching = mount_for(tfserving, container, flags["batching_parameters_file"])
    config_map = find(objects, "ConfigMap", batching["volume"]["configMap"]["name"])
    gpu_file = (REPO_ROOT / "deploy" / "config" / "batching-gpu.config").read_text()
    assert config_map["data"]["batching.config"] == gpu_file
    # The other workloads stay off the GPU pool.
    for name in ("gateway", "modelserver"):
        assert "nodeSelector" not in pod_spec(find(objects, "Deployment", name))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_flags_point_at_mounted_files(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    expected_model_config = {
        "tfserving": "/models/models.config",
        "modelserver": "/models/sklearn.config",
    }
    for name, model_config in expected_model_config.items():
        deployment = find(objects, "Deployment", name)
        container = pod_spec(deployment)["containers"][0]
        flags = flag_values(container["args"])
        assert flags["model_config_file"] == model_config
        assert flags["enable_batching"] == "true"
        assert int(flags["port"]) == 8500 and int(flags["rest_api_port"]) == 8501
        registry = mount_for(deployment, container, model_config)
        assert (
            registry["volume"]["persistentVolumeClaim"]["claimName"]
            == "servekit-models"
        )
        assert registry["mount"]["readOnly"] is True
        for flag in ("batching_parameters_file", "monitoring_config_file"):
            path = flags[flag]
            backing = mount_for(deployment, container, path)
            config_map = find(
                objects, "ConfigMap", backing["volume"]["configMap"]["name"]
            )
            key = path[len(backing["mount"]["mountPath"]) :].lstrip("/")
            assert key in config_map["data"], (
                f"{name} {flag}: {key} not in the ConfigMap"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_maps_are_the_files_in_deploy_config(
    rendered: dict[str, Objects], overlay: str
) -> None:
    config_dir = REPO_ROOT / "deploy" / "config"
    sources = {
        "serving-config": {"batching.config": "batching.config"},
        "serving-config-gpu": {"batching.config": "batching-gpu.config"},
    }
    seen = set()
    for obj in rendered[overlay]:
        if obj["kind"] != "ConfigMap":
            continue
        base_name = obj["metadata"]["name"].rsplit("-", 1)[0]
        if base_name not in sources:
            continue
        seen.add(base_name)
        for key, file_name in {
            **sources[base_name],
            "monitoring.config": "monitoring.config",
        }.items():
            assert obj["data"][key] == (config_dir / file_name).read_text()
    assert seen == set(sources)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_requires_api_keys_from_a_secret(
    rendered: dict[str, Objects], overlay: str
) -> None:
    gateway = find(rendered[overlay], "Deployment", "gateway")
    container = pod_spec(gateway)["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["GATEWAY_AUTH_ENABLED"] == "true"
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_ROUTES_FILE"] == "/models/routes.yaml"
    keys = mount_for(gateway, container, env["GATEWAY_API_KEYS_FILE"])
    assert "secret" in keys["volume"], "API keys must come from a Secret"
    secret_name = keys["volume"]["secret"]["secretName"]
    secrets = [obj for obj in rendered[overlay] if obj["kind"] == "Secret"]
    if overlay in ("local", "loadtest", "batch"):
        secret = find(rendered[overlay], "Secret", secret_name)
        key_file = env["GATEWAY_API_KEYS_FILE"].rsplit("/", 1)[1]
        assert key_file in secret["data"]
    else:
        # Real clusters bring their own keys: no key material in the repository.
        assert not any(
            s["metadata"]["name"].startswith("servekit-api-keys") for s in secrets
        )
        assert secret_name == "servekit-api-keys"


def test_gateway_settings_know_every_variable_the_manifests_set(
    rendered: dict[str, Objects],
) -> None:
    settings = pytest.importorskip("gateway.settings")
    fields = set(settings.Settings.model_fields)
    container = pod_spec(find(rendered["gpu"], "Deployment", "gateway"))["containers"][
        0
    ]
    for item in container["env"]:
        assert item["name"].startswith("GATEWAY_")
        field = item["name"][len("GATEWAY_") :].lower()
        assert field in fields, f"the gateway has no setting {item['name']}"


def test_model_server_flags_are_flags_the_servers_accept(
    rendered: dict[str, Objects],
) -> None:
    settings = pytest.importorskip("modelserver.settings")
    accepted = set(settings.Settings.model_fields)
    for overlay in OVERLAYS:
        for name in MODEL_SERVERS:
            container = pod_spec(find(rendered[overlay], "Deployment", name))[
                "containers"
            ][0]
            unknown = set(flag_values(container["args"])) - accepted
            assert not unknown, f"{overlay} {name}: unknown flags {unknown}"


def test_services_route_to_declared_container_ports(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["loadtest"]
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        selected = [
            obj
            for obj in workloads(objects)
            if _selects({"matchLabels": service["spec"]["selector"]}, pod_labels(obj))
        ]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for obj in selected:
            names = {
                port["name"]
                for container in pod_spec(obj)["containers"]
                for port in container.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, (service["metadata"]["name"], port)


def test_design_ports_are_served(rendered: dict[str, Objects]) -> None:
    objects = rendered["local"]
    ports = {
        name: {p["port"] for p in find(objects, "Service", name)["spec"]["ports"]}
        for name in (*MODEL_SERVERS, "gateway")
    }
    assert ports == {
        "tfserving": {8500, 8501},
        "modelserver": {8500, 8501},
        "gateway": {8000, 8001},
    }
