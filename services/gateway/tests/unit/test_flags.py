"""Every gateway setting can be given as a flag, as the README promises."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway.__main__ import serve_parser, settings_overrides
from gateway.settings import Settings
from pydantic import ValidationError
from servekit_protocol import segments
from servekit_protocol.grpc_server import Http2Limits
from servekit_protocol.grpc_server.limits import described_fields


def test_every_setting_has_a_flag() -> None:
    destinations = {action.dest for action in serve_parser()._actions}
    assert set(Settings.model_fields) <= destinations


def test_coalescing_flags_reach_the_settings() -> None:
    parsed = serve_parser().parse_args(
        ["--coalesce-max-rows", "0", "--coalesce-max-in-flight", "3"]
    )
    assert (parsed.coalesce_max_rows, parsed.coalesce_max_in_flight) == (0, 3)


def test_rest_backends_come_as_json_and_need_host_and_port() -> None:
    parsed = serve_parser().parse_args(
        ["--rest-backends", '{"127.0.0.1:8500": "127.0.0.1:8501"}']
    )
    settings = Settings(rest_backends=parsed.rest_backends)
    assert settings.rest_backends == {"127.0.0.1:8500": "127.0.0.1:8501"}
    with pytest.raises(ValidationError, match="not host:port"):
        Settings(rest_backends={"127.0.0.1:8500": "modelserver"})
    with pytest.raises(ValidationError, match="not host:port"):
        Settings(rest_backends={"127.0.0.1:8500": "http://127.0.0.1:8501"})


def test_the_shared_memory_dir_is_a_flag_checked_as_the_settings_are_built(
    tmp_path: Path,
) -> None:
    parsed = serve_parser().parse_args(["--shared-memory-dir", str(tmp_path)])
    assert Settings(**settings_overrides(parsed)).shared_memory_dir == str(tmp_path)
    assert Settings().shared_memory_dir == segments.default_directory()
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(shared_memory_dir=str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValidationError, match="is not a directory"):
        Settings(shared_memory_dir=str(tmp_path / "file"))


def test_every_http2_limit_has_a_described_flag() -> None:
    text = serve_parser().format_help()
    for name, (_, default, description) in described_fields().items():
        flag = "--http2-" + name.replace("_", "-")
        assert flag in text, flag
        # argparse wraps help text: compare without whitespace.
        assert "".join(f"{description} (default: {default})".split()) in "".join(
            text.split()
        ), name


def test_http2_flags_set_the_limits_over_the_json_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_HTTP2", '{"max_connections": 5, "reset_burst": 9}')
    parsed = serve_parser().parse_args(
        [
            "--http2-max-concurrent-streams",
            "7",
            "--http2-idle-timeout-seconds=2.5",
            "--http2",
            '{"max_concurrent_streams": 3, "reset_burst": 11}',
        ]
    )
    overrides = settings_overrides(parsed)
    assert overrides == {
        "http2": {
            "max_concurrent_streams": 7,
            "idle_timeout_seconds": 2.5,
            "reset_burst": 11,
        }
    }
    limits = Settings(**overrides).http2
    assert limits.max_concurrent_streams == 7
    assert limits.idle_timeout_seconds == 2.5
    assert limits.reset_burst == 11
    assert limits.max_connections == 5
    assert limits.max_header_list_size == Http2Limits().max_header_list_size


def test_http2_flags_alone_keep_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_HTTP2", '{"max_connections": 5}')
    parsed = serve_parser().parse_args(["--http2-max-header-list-size", "8192"])
    limits = Settings(**settings_overrides(parsed)).http2
    assert (limits.max_header_list_size, limits.max_connections) == (8192, 5)


@pytest.mark.parametrize(
    "argv",
    [["--http2-max-concurrent-streams", "x"], ["--http2-reset-burst", "1.5"]],
)
def test_a_malformed_http2_flag_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        serve_parser().parse_args(argv)


def test_a_bad_http2_flag_value_is_refused() -> None:
    parsed = serve_parser().parse_args(["--http2-max-concurrent-streams", "0"])
    with pytest.raises(ValidationError, match="max_concurrent_streams must be"):
        Settings(**settings_overrides(parsed))
