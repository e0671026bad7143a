"""The model server's command line: TF Serving's flags (``tensorflow_model_server``)
and servekit's extensions, turned into :class:`~modelserver.settings.Settings` values.

``--flag=value`` and ``--flag value``; booleans also as a bare ``--flag`` and
``--flag=true|false|1|0``. Flags that TF Serving has but that change nothing here are
accepted and reported as ignored; the few whose meaning cannot be honoured are refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib import metadata as package_metadata
from typing import Any, NoReturn

from pydantic import ValidationError
from servekit_protocol.grpc_server.limits import described_fields

from modelserver.settings import Settings

IGNORED_FLAGS: dict[str, type] = {
    "enable_per_model_batching_parameters": bool,
    "flush_filesystem_caches": bool,
    "remove_unused_fields_from_bundle_metagraph": bool,
    "prefer_tflite_model": bool,
    "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int,
    "xla_cpu_compilation_enabled": bool,
    "xla_gpu_compilation_enabled": bool,
    "enable_profiler": bool,
    "thread_pool_factory_config_file": str,
    "tensorflow_session_config_file": str,
    "mixed_precision": str,
    "skip_initialize_tpu": bool,
}
"""TF Serving flags accepted for command-line compatibility that change nothing."""

UNSUPPORTED_FLAGS: dict[str, type] = {
    "use_alts_credentials": bool,
    "ssl_config_file": str,
    "platform_config_file": str,
}
"""TF Serving flags whose meaning servekit cannot honour: refused when set."""

_SETTINGS_FLAG_TYPES = (bool, int, float, str)

HTTP2_FLAG_PREFIX = "http2_"
"""``--http2_<field>`` sets one field of the gRPC port's HTTP/2 limits
(``Settings.http2``), e.g. ``--http2_idle_timeout_seconds=120``."""


class FlagError(Exception):
    """A command line TF Serving would refuse."""


class _FlagParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse exits with 2; TF Serving's flag errors exit like every other
        # start-up failure.
        raise FlagError(f"{self.prog}: {message}")


def parse_bool(text: str) -> bool:
    """Parse a TensorFlow-style boolean flag value.

    Raises:
        argparse.ArgumentTypeError: Not one of true/false/1/0.
    """
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _add_flag(
    parser: argparse.ArgumentParser, name: str, kind: type, help_text: str
) -> None:
    if kind is bool:
        parser.add_argument(
            f"--{name}",
            nargs="?",
            const=True,
            type=parse_bool,
            default=argparse.SUPPRESS,
            metavar="true|false",
            help=help_text,
        )
    else:
        converter: Callable[[str], Any] = kind
        parser.add_argument(
            f"--{name}",
            type=converter,
            default=argparse.SUPPRESS,
            metavar=kind.__name__.upper(),
            help=help_text,
        )


def build_parser() -> argparse.ArgumentParser:
    """The flag parser: every simple :class:`Settings` field plus the extras."""
    parser = _FlagParser(
        prog="servekit-model-server",
        description="A TensorFlow-Serving-compatible model server for SavedModels "
        "and scikit-learn pipelines (flags as tensorflow_model_server's).",
        allow_abbrev=False,
    )
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if kind in _SETTINGS_FLAG_TYPES and isinstance(kind, type):
            # argparse %-formats help strings.
            help_text = " ".join((field.description or "").split()).replace("%", "%%")
            if field.default is not None and not callable(field.default_factory):
                help_text = f"{help_text} (default: {field.default})".strip()
            _add_flag(parser, name, kind, help_text)
    for name, (kind, default, description) in described_fields().items():
        # One flag per HTTP/2 limit of the gRPC port (settings field `http2`).
        help_text = description.replace("%", "%%")
        _add_flag(
            parser,
            HTTP2_FLAG_PREFIX + name,
            kind,
            f"servekit extension: {help_text} (default: {default})",
        )
    for name, kind in IGNORED_FLAGS.items():
        _add_flag(parser, name, kind, "accepted for compatibility; no effect")
    for name, kind in UNSUPPORTED_FLAGS.items():
        _add_flag(parser, name, kind, "not supported; refused when set")
    parser.add_argument(
        "--log_level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="servekit extension: level of the JSON log lines on stderr",
    )
    parser.add_argument(
        "--version",
        nargs="?",
        const=True,
        type=parse_bool,
        default=False,
        metavar="true|false",
        help="print the version and exit",
    )
    return parser


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], argparse.Namespace]:
    """Split the command line into settings values and process options.

    Raises:
        FlagError: Unknown arguments or an unsupported flag was set.
    """
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise FlagError(f"unknown argument: {unknown[0]}\n{parser.format_usage()}")
    values = vars(namespace)
    http2 = {
        name.removeprefix(HTTP2_FLAG_PREFIX): values.pop(name)
        for name in list(values)
        if name.startswith(HTTP2_FLAG_PREFIX)
    }
    if http2:
        values["http2"] = http2
    for name in UNSUPPORTED_FLAGS:
        if values.pop(name, None):
            raise FlagError(f"--{name} is not supported by servekit-model-server")
    ignored = [name for name in IGNORED_FLAGS if values.pop(name, None) is not None]
    options = argparse.Namespace(
        log_level=values.pop("log_level"),
        version=values.pop("version"),
        ignored=ignored,
    )
    return values, options


def version_text() -> str:
    """What ``--version`` prints."""
    lines = [f"servekit-model-server: {_package_version('servekit-modelserver')}"]
    tensorflow_version = _package_version("tensorflow")
    if tensorflow_version != "unknown":
        lines.append(f"TensorFlow Library: {tensorflow_version}")
    return "\n".join(lines)


def _package_version(name: str) -> str:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return "unknown"


def validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"--{location}: {message}" if location else message)
    return "; ".join(parts)
