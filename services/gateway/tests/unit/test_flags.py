"""Every gateway setting can be given as a flag, as the README promises."""

from __future__ import annotations

import pytest
from gateway.__main__ import serve_parser
from gateway.settings import Settings
from pydantic import ValidationError


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
