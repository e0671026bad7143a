"""One ``servekit-model-server`` for the whole conformance suite.

It serves TF Serving's own test SavedModels (copied from
``../shared/tfserving-testdata``; tests needing them skip when it is absent),
plus models built here: ``half_plus`` (a TF2 SavedModel with a string
signature) and ``linear`` (a scikit-learn pipeline published with
``modelregistry``). Prometheus is enabled at TF Serving's default path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.models import (
    TFSERVING_TESTDATA,
    copy_tfserving_testdata,
    publish_linear_pipeline,
    save_tf_half_plus,
)
from tests.support.modelserver import (
    ModelServer,
    model_server,
    write_monitoring_config,
)

TESTDATA_MODELS = (
    "half_plus_two",
    "half_plus_three",
    "half_plus_two_tf2",
    "saved_model_counter",
    "saved_model_half_plus_two_2_versions",
)
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


def _config_entry(name: str, base_path: Path, platform: str, extra: str = "") -> str:
    return (
        f"  config {{\n    name: {json.dumps(name)}\n"
        f"    base_path: {json.dumps(str(base_path))}\n"
        f"    model_platform: {json.dumps(platform)}\n{extra}  }}\n"
    )


@pytest.fixture(scope="session")
def testdata_available() -> bool:
    return (TFSERVING_TESTDATA / "models").is_dir()


@pytest.fixture(scope="session")
def conformance_server(
    tmp_path_factory: pytest.TempPathFactory, testdata_available: bool
) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("conformance")
    entries = []
    if testdata_available:
        models = copy_tfserving_testdata(root / "tfs", *TESTDATA_MODELS)
        for name in TESTDATA_MODELS:
            extra = ""
            if name == TWO_VERSIONS:
                extra = (
                    "    model_version_policy { all {} }\n"
                    '    version_labels { key: "stable" value: 123 }\n'
                    '    version_labels { key: "canary" value: 124 }\n'
                )
            entries.append(_config_entry(name, models / name, "tensorflow", extra))
    save_tf_half_plus(root / "built" / "half_plus" / "1")
    entries.append(
        _config_entry("half_plus", root / "built" / "half_plus", "tensorflow")
    )
    registry = root / "registry"
    publish_linear_pipeline(registry, "linear", offset=1.0)
    entries.append(_config_entry("linear", registry / "linear", "sklearn"))
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(entries) + "}\n")
    monitoring = write_monitoring_config(root)
    with model_server(
        [f"--model_config_file={config}", f"--monitoring_config_file={monitoring}"],
        log_path=root / "server.log",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def rest(conformance_server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=conformance_server.rest_url, timeout=30) as client:
        yield client


@pytest.fixture
def needs_testdata(testdata_available: bool) -> None:
    if not testdata_available:
        pytest.skip(f"TF Serving test data is absent ({TFSERVING_TESTDATA})")


def expected_metadata(file_name: str) -> dict[str, Any]:
    """An ``expected/*_metadata.json`` answer of TF Serving."""
    path = TFSERVING_TESTDATA / "expected" / file_name
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def without_empty_defaults(signature_map: dict[str, Any]) -> dict[str, Any]:
    """Drop ``"defaults": {}`` (older TF Serving JSON printers omitted it)."""
    return {
        key: {k: v for k, v in signature.items() if not (k == "defaults" and v == {})}
        for key, signature in signature_map.items()
    }
