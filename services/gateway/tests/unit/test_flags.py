"""Every gateway setting can be given as a flag, as the README promises."""

from __future__ import annotations

from gateway.__main__ import serve_parser
from gateway.settings import Settings


def test_every_setting_has_a_flag() -> None:
    destinations = {action.dest for action in serve_parser()._actions}
    assert set(Settings.model_fields) <= destinations


def test_coalescing_flags_reach_the_settings() -> None:
    parsed = serve_parser().parse_args(
        ["--coalesce-max-rows", "0", "--coalesce-max-in-flight", "3"]
    )
    assert (parsed.coalesce_max_rows, parsed.coalesce_max_in_flight) == (0, 3)
