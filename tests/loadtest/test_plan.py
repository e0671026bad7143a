"""Run options: durations and targets as `servekit loadtest` takes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit.loadtest.plan import (
    PlanError,
    find_locustfile,
    locust_host,
    parse_duration,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("60s", 60), ("2m", 120), ("1h30m", 5400), ("1m30s", 90), ("1.5s", 2)],
)
def test_duration_is_parsed_like_locust_run_time(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "1x", "s", "10 s 5", "-5s"])
def test_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(PlanError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("target", "protocol", "host"),
    [
        ("127.0.0.1:8000", "rest", "http://127.0.0.1:8000"),
        ("http://gateway:8000/", "v2", "http://gateway:8000"),
        ("https://models.example.com", "typed", "https://models.example.com"),
        ("127.0.0.1:8500", "grpc", "127.0.0.1:8500"),
        ("grpc://gateway:8001", "grpc", "gateway:8001"),
        ("http://127.0.0.1:8001", "grpc", "127.0.0.1:8001"),
    ],
)
def test_target_takes_the_form_each_protocol_needs(
    target: str, protocol: str, host: str
) -> None:
    assert locust_host(target, protocol) == host


@pytest.mark.parametrize(
    ("target", "protocol"), [("gateway", "grpc"), ("ftp://x:1", "rest"), ("", "rest")]
)
def test_unusable_target_is_refused(target: str, protocol: str) -> None:
    with pytest.raises(PlanError):
        locust_host(target, protocol)


def test_locustfile_is_found_from_inside_the_checkout(tmp_path: Path) -> None:
    assert (
        find_locustfile(REPO_ROOT / "services")
        == REPO_ROOT / "tests/load/locustfile.py"
    )
    # Outside the checkout, the installed CLI's own checkout is the fallback.
    assert find_locustfile(tmp_path) == REPO_ROOT / "tests/load/locustfile.py"
