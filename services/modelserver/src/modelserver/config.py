"""Parsing and validation of TF Serving's text-proto configuration files.

- ``ModelServerConfig`` (``--model_config_file``, ``HandleReloadConfigRequest``)
  becomes a tuple of :class:`ModelConfig`.
- ``BatchingParameters`` (``--batching_parameters_file``) becomes
  :class:`modelserver.settings.BatchingSettings`.
- ``MonitoringConfig`` (``--monitoring_config_file``) becomes
  :class:`modelserver.settings.MonitoringSettings`.

The text is parsed with ``google.protobuf.text_format`` into the
``servekit_protocol`` messages, whose field names equal TF Serving's, so the same
files work for both servers. Validation follows TF Serving's ``ServerCore`` rules
and messages. One extension: a relative ``base_path`` is resolved against the
config file's folder (the registry writes ``servekit.config`` that way, so the
registry folder can move); TF Serving requires absolute paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import ValidationError
from servekit_protocol import messages

from modelserver.errors import InvalidConfig
from modelserver.settings import BatchingSettings, MonitoringSettings

PLATFORMS = ("tensorflow", "sklearn")
"""``model_platform`` values servekit serves."""

PolicyKind = Literal["latest", "all", "specific"]


@dataclasses.dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which of the versions on disk should be served (``ServableVersionPolicy``)."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, on_disk: Iterable[int]) -> set[int]:
        """The aspired versions among those found on disk."""
        present = sorted(set(on_disk), reverse=True)
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return set(self.versions.intersection(present))
        return set(present[: self.num_versions])


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """One served model: where its versions live and how they are chosen."""

    name: str
    base_path: Path
    platform: str = "tensorflow"
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def single_model_config(name: str, base_path: str) -> tuple[ModelConfig, ...]:
    """The config ``--model_name``/``--model_base_path`` stand for (latest version)."""
    return (ModelConfig(name=name, base_path=Path(base_path).absolute()),)


def parse_model_server_config(text: str, *, base_dir: Path) -> tuple[ModelConfig, ...]:
    """Parse a ModelServerConfig text proto.

    Raises:
        InvalidConfig: The text does not parse or breaks a ServerCore rule.
    """
    message = messages.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidConfig(f"Invalid ModelServerConfig: {exc}") from exc
    return from_model_server_config(message, base_dir=base_dir)


def load_model_server_config(path: Path) -> tuple[ModelConfig, ...]:
    """Read and parse ``--model_config_file``.

    Raises:
        InvalidConfig: The file cannot be read or is invalid.
    """
    return parse_model_server_config(read_text(path), base_dir=path.absolute().parent)


def from_model_server_config(
    message: messages.ModelServerConfig, *, base_dir: Path
) -> tuple[ModelConfig, ...]:
    """Validate a ModelServerConfig message and convert it.

    Raises:
        InvalidConfig: Not a ``model_config_list``, a duplicate or unnamed model,
            an empty base path, or an unknown platform or version policy.
    """
    choice = message.WhichOneof("config")
    if choice is None:
        return ()
    if choice != "model_config_list":
        raise InvalidConfig(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    configs: list[ModelConfig] = []
    seen: set[str] = set()
    for entry in message.model_config_list.config:
        if not entry.name:
            raise InvalidConfig("ModelConfig has no name specified.")
        if entry.name in seen:
            raise InvalidConfig(
                f"Illegal to list model {entry.name} multiple times in config list"
            )
        seen.add(entry.name)
        if not entry.base_path:
            raise InvalidConfig(f"Expected model {entry.name} to have a base_path")
        base_path = Path(entry.base_path)
        if not base_path.is_absolute():
            base_path = base_dir / base_path
        configs.append(
            ModelConfig(
                name=entry.name,
                base_path=base_path,
                platform=_platform(entry),
                policy=_policy(entry),
                labels=dict(entry.version_labels),
            )
        )
    return tuple(configs)


def _platform(entry: messages.ModelConfig) -> str:
    if entry.model_type != messages.ModelType.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise InvalidConfig(
                "Illegal setting both ModelServerConfig::model_type (deprecated) "
                f"and ModelServerConfig::model_platform, model name is {entry.name}"
            )
        if entry.model_type != messages.ModelType.TENSORFLOW:
            raise InvalidConfig(
                f"ModelServerConfig::model_type choice {entry.model_type} "
                "not supported."
            )
        return "tensorflow"
    if not entry.model_platform:
        raise InvalidConfig(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) "
            f"nor ModelServerConfig::model_platform, model name is {entry.name}"
        )
    if entry.model_platform not in PLATFORMS:
        raise InvalidConfig(
            f"Model {entry.name} requests unsupported platform {entry.model_platform}"
        )
    return entry.model_platform


def _policy(entry: messages.ModelConfig) -> VersionPolicy:
    if not entry.HasField("model_version_policy"):
        return VersionPolicy()
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        versions = frozenset(int(version) for version in policy.specific.versions)
        if not versions:
            raise InvalidConfig(
                f"Model {entry.name}: the specific version policy lists no versions"
            )
        return VersionPolicy(kind="specific", versions=versions)
    if choice == "latest":
        # TF Serving treats num_versions 0 (unset) as 1.
        return VersionPolicy(
            kind="latest", num_versions=max(1, policy.latest.num_versions)
        )
    return VersionPolicy()


def load_batching_settings(path: Path) -> BatchingSettings:
    """Read a BatchingParameters text proto (``--batching_parameters_file``).

    Raises:
        InvalidConfig: The file cannot be read, does not parse, or is inconsistent.
    """
    message = messages.BatchingParameters()
    try:
        text_format.Parse(read_text(path), message)
    except text_format.ParseError as exc:
        raise InvalidConfig(f"Invalid BatchingParameters in {path}: {exc}") from exc
    values: dict[str, object] = {}
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "thread_pool_name",
        "enable_large_batch_splitting",
        "max_execution_batch_size",
    ):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = message.pad_variable_length_inputs
    try:
        return BatchingSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidConfig(
            f"Invalid BatchingParameters in {path}: {first['msg']}"
        ) from exc


def load_monitoring_settings(path: Path) -> MonitoringSettings:
    """Read a MonitoringConfig text proto (``--monitoring_config_file``).

    Raises:
        InvalidConfig: The file cannot be read or does not parse.
    """
    message = messages.MonitoringConfig()
    try:
        text_format.Parse(read_text(path), message)
    except text_format.ParseError as exc:
        raise InvalidConfig(f"Invalid MonitoringConfig in {path}: {exc}") from exc
    prometheus = message.prometheus_config
    return MonitoringSettings(
        prometheus_enabled=prometheus.enable,
        prometheus_path=prometheus.path or MonitoringSettings().prometheus_path,
    )


def read_text(path: Path) -> str:
    """Read a config file.

    Raises:
        InvalidConfig: The file cannot be read.
    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfig(f"Cannot read {path}: {exc.strerror}") from exc
