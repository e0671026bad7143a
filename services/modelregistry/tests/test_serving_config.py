"""models.config must parse with TF Serving's own proto; servekit.config lists everything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from modelregistry import Registry, config_text
from modelregistry.servingconfig import ModelEntry

from .conftest import publish_linear

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "tfserving-testdata"


def _parse_official(text: str) -> object:
    pytest.importorskip("tensorflow_serving")
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def _fake_saved_model(registry: Registry, name: str, version: int) -> None:
    # A SavedModel copied in by hand (no manifest) is a TensorFlow model to the registry.
    folder = registry.root / name / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")


def test_configs_split_tensorflow_from_everything(registry: Registry) -> None:
    publish_linear(registry, "tabular")
    _fake_saved_model(registry, "digits", 1)
    _fake_saved_model(registry, "digits", 2)
    registry.set_label("digits", "stable", 1)
    registry.set_label("digits", "canary", 2)

    tf_config = _parse_official((registry.root / "models.config").read_text())
    configs = tf_config.model_config_list.config  # type: ignore[attr-defined]
    assert [c.name for c in configs] == ["digits"]
    (digits,) = configs
    assert digits.base_path == "/models/digits"
    assert digits.model_platform == "tensorflow"
    assert list(digits.model_version_policy.specific.versions) == [1, 2]
    assert dict(digits.version_labels) == {"stable": 1, "canary": 2}

    all_config = _parse_official((registry.root / "servekit.config").read_text())
    by_name = {c.name: c for c in all_config.model_config_list.config}  # type: ignore[attr-defined]
    assert set(by_name) == {"digits", "tabular"}
    assert by_name["tabular"].base_path == "tabular"
    assert by_name["tabular"].model_platform == "sklearn"
    assert by_name["tabular"].model_version_policy.latest.num_versions == 1

    sklearn_config = _parse_official((registry.root / "sklearn.config").read_text())
    configs = sklearn_config.model_config_list.config  # type: ignore[attr-defined]
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [
        ("tabular", "tabular", "sklearn")
    ]


def test_explicit_policies_render(registry: Registry) -> None:
    _fake_saved_model(registry, "digits", 1)
    _fake_saved_model(registry, "digits", 3)
    registry.set_version_policy("digits", {"all": {}})
    parsed = _parse_official((registry.root / "models.config").read_text())
    (digits,) = parsed.model_config_list.config  # type: ignore[attr-defined]
    assert digits.model_version_policy.HasField("all")
    registry.set_version_policy("digits", {"specific": {"versions": [3]}})
    registry.set_label("digits", "old", 1)
    parsed = _parse_official((registry.root / "models.config").read_text())
    (digits,) = parsed.model_config_list.config  # type: ignore[attr-defined]
    assert list(digits.model_version_policy.specific.versions) == [1, 3]


def test_names_are_quoted_safely() -> None:
    entry = ModelEntry(
        "m.v-1_x",
        '/models/a "quoted" path',
        "tensorflow",
        {"latest": {"num_versions": 2}},
    )
    parsed = _parse_official(config_text([entry]))
    (config,) = parsed.model_config_list.config  # type: ignore[attr-defined]
    assert config.base_path == '/models/a "quoted" path'
    assert config.model_version_policy.latest.num_versions == 2


@pytest.mark.skipif(
    not SHARED.is_dir(), reason="shared TF Serving test data not present"
)
def test_registry_reads_tf_serving_test_models(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(
        SHARED / "models" / "saved_model_half_plus_two_2_versions",
        root / "half_plus_two",
    )
    registry = Registry(root)
    assert registry.versions("half_plus_two") == [123, 124]
    assert registry.framework("half_plus_two", 124) == "tensorflow"
    registry.write_configs()
    parsed = _parse_official((root / "models.config").read_text())
    (config,) = parsed.model_config_list.config  # type: ignore[attr-defined]
    assert config.name == "half_plus_two"
