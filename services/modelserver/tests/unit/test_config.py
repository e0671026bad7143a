"""ModelServerConfig, BatchingParameters and MonitoringConfig text protos."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelserver.config import (
    VersionPolicy,
    load_batching_settings,
    load_model_server_config,
    load_monitoring_settings,
    parse_model_server_config,
    single_model_config,
)
from modelserver.errors import InvalidConfig
from modelserver.settings import Settings

from tests.support.models import TFSERVING_TESTDATA


def test_parses_names_paths_policies_and_labels(tmp_path: Path) -> None:
    text = """
    model_config_list {
      config {
        name: "tabular"
        base_path: "tabular"
        model_platform: "sklearn"
        model_version_policy { all {} }
        version_labels { key: "stable" value: 2 }
        version_labels { key: "canary" value: 3 }
      }
      config {
        name: "digits"
        base_path: "/srv/models/digits"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 4 } }
      }
      config { name: "plain" base_path: "/p" model_platform: "tensorflow" }
    }
    """
    tabular, digits, plain = parse_model_server_config(text, base_dir=tmp_path)
    assert tabular.name == "tabular"
    assert tabular.base_path == tmp_path / "tabular"
    assert tabular.platform == "sklearn"
    assert tabular.policy == VersionPolicy(kind="all")
    assert dict(tabular.labels) == {"stable": 2, "canary": 3}
    assert digits.base_path == Path("/srv/models/digits")
    assert digits.policy.kind == "specific"
    assert digits.policy.versions == frozenset({1, 4})
    assert plain.policy == VersionPolicy(kind="latest", num_versions=1)


def test_version_policies_select_among_versions_on_disk() -> None:
    on_disk = [1, 2, 3, 7]
    assert VersionPolicy().select(on_disk) == {7}
    assert VersionPolicy(kind="latest", num_versions=2).select(on_disk) == {3, 7}
    assert VersionPolicy(kind="all").select(on_disk) == {1, 2, 3, 7}
    specific = VersionPolicy(kind="specific", versions=frozenset({2, 5}))
    assert specific.select(on_disk) == {2}


def test_tf_serving_example_config_parses() -> None:
    path = TFSERVING_TESTDATA / "expected" / "good_model_config.txt"
    if not path.is_file():
        pytest.skip("../shared/tfserving-testdata is absent")
    configs = load_model_server_config(path)
    assert [config.name for config in configs] == ["half_plus_two", "half_plus_three"]
    assert {config.platform for config in configs} == {"tensorflow"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'a' base_path: '/a' } }", "neither"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' "
            "model_platform: 'pytorch' } }",
            "unsupported platform pytorch",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' "
            "model_platform: 'tensorflow' } config { name: 'a' base_path: '/b' "
            "model_platform: 'tensorflow' } }",
            "Illegal to list model a multiple times",
        ),
        (
            "model_config_list { config { name: 'a' model_platform: 'sklearn' } }",
            "base_path",
        ),
        ("model_config_list { config { nme: 'a' } }", "Invalid ModelServerConfig"),
        (
            "custom_model_config { type_url: 'x' }",
            "Only ModelConfigList is currently supported",
        ),
    ],
)
def test_invalid_configs_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        parse_model_server_config(text, base_dir=tmp_path)


def test_unreadable_config_file_is_invalid_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="Cannot read"):
        load_model_server_config(tmp_path / "missing.config")


def test_single_model_flags_serve_the_latest_version(tmp_path: Path) -> None:
    (config,) = single_model_config("default", str(tmp_path))
    assert config.name == "default"
    assert config.base_path == tmp_path
    assert config.policy == VersionPolicy()


def test_batching_parameters_file(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text(
        "max_batch_size { value: 32 }\n"
        "batch_timeout_micros { value: 5000 }\n"
        "max_enqueued_batches { value: 4 }\n"
        "num_batch_threads { value: 3 }\n"
        "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\n"
        "pad_variable_length_inputs: true\n"
    )
    batching = load_batching_settings(path)
    assert batching.max_batch_size == 32
    assert batching.batch_timeout_micros == 5000
    assert batching.max_enqueued_batches == 4
    assert batching.num_batch_threads == 3
    assert batching.allowed_batch_sizes == (8, 32)
    assert batching.pad_variable_length_inputs is True


def test_batching_defaults_apply_to_unset_fields(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 16 }\n")
    batching = load_batching_settings(path)
    assert batching.max_batch_size == 16
    assert batching.batch_timeout_micros == 0
    assert batching.max_enqueued_batches == 10


def test_allowed_batch_sizes_must_end_at_max_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(InvalidConfig, match="must match max_batch_size"):
        load_batching_settings(path)


def test_monitoring_config(tmp_path: Path) -> None:
    path = tmp_path / "monitoring.txt"
    path.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    monitoring = load_monitoring_settings(path)
    assert monitoring.prometheus_enabled is True
    assert monitoring.prometheus_path == "/metrics"
    path.write_text("prometheus_config { enable: true }\n")
    assert load_monitoring_settings(path).prometheus_path == (
        "/monitoring/prometheus/metrics"
    )


def test_settings_read_the_config_files_they_name(tmp_path: Path) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 8 }\n")
    monitoring = tmp_path / "monitoring.txt"
    monitoring.write_text("prometheus_config { enable: true }\n")
    settings = Settings(
        model_base_path=str(tmp_path),
        enable_batching=True,
        batching_parameters_file=str(batching),
        monitoring_config_file=str(monitoring),
    )
    assert settings.batching.max_batch_size == 8
    assert settings.monitoring.prometheus_enabled is True


def test_settings_refuse_no_model_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_base_path"):
        Settings()
    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(InvalidConfig, match="max_batch_size"):
        Settings(model_base_path=str(tmp_path), batching_parameters_file=str(bad))


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSERVER_MODEL_BASE_PATH", str(tmp_path))
    monkeypatch.setenv("MODELSERVER_REST_API_PORT", "9999")
    settings = Settings()
    assert settings.model_base_path == str(tmp_path)
    assert settings.rest_api_port == 9999
