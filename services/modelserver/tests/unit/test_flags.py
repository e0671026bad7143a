"""The command line: TF Serving's flag forms map onto Settings fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from modelserver.__main__ import main
from modelserver.flags import (
    FlagError,
    parse_bool,
    parse_flags,
    validation_message,
)
from modelserver.settings import Settings
from pydantic import ValidationError
from servekit_protocol import segments
from servekit_protocol.grpc_server import Http2Limits
from servekit_protocol.grpc_server.limits import described_fields


def test_both_flag_forms_and_tf_booleans() -> None:
    values, options = parse_flags(
        [
            "--port=9000",
            "--rest_api_port",
            "9001",
            "--enable_batching",
            "--enable_model_warmup=false",
            "--allow_version_labels_for_unavailable_models=1",
            "--file_system_poll_wait_seconds",
            "-1",
            "--model_base_path=/models/m",
            "--per_process_gpu_memory_fraction=0.5",
        ]
    )
    assert values == {
        "port": 9000,
        "rest_api_port": 9001,
        "enable_batching": True,
        "enable_model_warmup": False,
        "allow_version_labels_for_unavailable_models": True,
        "file_system_poll_wait_seconds": -1,
        "model_base_path": "/models/m",
        "per_process_gpu_memory_fraction": 0.5,
    }
    assert options.ignored == []
    assert options.log_level == "INFO"


def test_flags_left_out_are_not_passed() -> None:
    # Unset flags stay out so MODELSERVER_* variables and defaults apply.
    values, _ = parse_flags(["--model_config_file=/c"])
    assert values == {"model_config_file": "/c"}


def test_compatibility_flags_are_accepted_and_reported() -> None:
    values, options = parse_flags(
        [
            "--model_base_path=/m",
            "--xla_cpu_compilation_enabled=true",
            "--enable_profiler",
        ]
    )
    assert values == {"model_base_path": "/m"}
    assert options.ignored == ["xla_cpu_compilation_enabled", "enable_profiler"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope=1"], "unknown argument: --nope=1"),
        (["positional"], "unknown argument: positional"),
        (["--port=x"], "--port"),
        (["--enable_batching=maybe"], "invalid boolean value"),
        (["--ssl_config_file=/ssl"], "not supported"),
        (["--use_alts_credentials"], "not supported"),
        (["--por=1"], "unknown argument"),
    ],
)
def test_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        parse_flags(argv)


def test_bool_parser() -> None:
    assert parse_bool("TRUE") is True
    assert parse_bool("0") is False


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "servekit-model-server" in capsys.readouterr().out
    assert main(["--nope"]) == 255
    assert "unknown argument: --nope" in capsys.readouterr().err


def test_a_shared_memory_dir_that_is_not_a_folder_stops_the_start(
    tmp_path: Path,
) -> None:
    values, _ = parse_flags(["--model_base_path=/m", f"--shared_memory_dir={tmp_path}"])
    assert Settings(**values).shared_memory_dir == str(tmp_path)
    assert Settings(model_base_path="/m").shared_memory_dir == (
        segments.default_directory()
    )
    # Not main(): it configures the process's logging, which later tests see.
    missing, _ = parse_flags(
        ["--model_base_path=/m", f"--shared_memory_dir={tmp_path / 'missing'}"]
    )
    with pytest.raises(ValidationError) as refused:
        Settings(**missing)
    assert validation_message(refused.value) == (
        f"--shared_memory_dir: shared memory directory "
        f"'{tmp_path / 'missing'}' does not exist"
    )
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValidationError, match="is not a directory"):
        Settings(model_base_path="/m", shared_memory_dir=str(tmp_path / "file"))


def test_help_describes_every_flag_with_its_settings_docstring() -> None:
    # The installed entry point, as a user runs it.
    executable = Path(sys.executable).with_name("servekit-model-server")
    done = subprocess.run(
        [str(executable), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # argparse re-wraps lines, also after hyphens: compare without whitespace.
    text = "".join(done.stdout.split())
    described = 0
    for name, field in Settings.model_fields.items():
        if field.annotation not in (bool, int, float, str):
            continue
        assert field.description, f"Settings.{name} has no docstring"
        assert f"--{name}" in text
        assert "".join(field.description.split()) in text, name
        described += 1
    assert described >= 30
    # One flag per HTTP/2 limit of the gRPC port, described by its docstring.
    for name, (_, default, description) in described_fields().items():
        assert description, f"Http2Limits.{name} has no docstring"
        assert f"--http2_{name}" in text
        assert "".join(f"{description} (default: {default})".split()) in text, name


def test_http2_flags_set_the_limits_and_merge_with_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSERVER_HTTP2__MAX_CONNECTIONS", "5")
    values, _ = parse_flags(
        ["--http2_max_concurrent_streams=7", "--http2_idle_timeout_seconds", "2.5"]
    )
    assert values == {
        "http2": {"max_concurrent_streams": 7, "idle_timeout_seconds": 2.5}
    }
    limits = Settings(**values, model_base_path="/m").http2
    assert limits.max_concurrent_streams == 7
    assert limits.idle_timeout_seconds == 2.5
    assert limits.max_connections == 5
    assert limits.max_header_list_size == Http2Limits().max_header_list_size


def test_a_bad_http2_flag_is_refused() -> None:
    values, _ = parse_flags(["--http2_max_concurrent_streams=0"])
    with pytest.raises(ValidationError, match="max_concurrent_streams must be"):
        Settings(**values, model_base_path="/m")
