from __future__ import annotations

import pytest
from gateway.errors import RateLimited, Unauthenticated
from gateway.security.credentials import (
    CredentialCheck,
    FailedAuthLimiter,
    client_host,
)
from gateway.security.keys import Authenticator, hash_key, parse_keys

KEY = "sk_test_key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def check_with(clock: FakeClock, *, burst: float = 3.0) -> CredentialCheck:
    authenticator = Authenticator(enabled=True)
    authenticator.load(parse_keys({"keys": [{"name": "a", "sha256": hash_key(KEY)}]}))
    limiter = FailedAuthLimiter(per_second=1.0, burst=burst, clock=clock)
    return CredentialCheck(authenticator, limiter)


def test_valid_key_from_either_header() -> None:
    check = check_with(FakeClock())
    assert check.check({"x-api-key": KEY}, "10.0.0.1").name == "a"
    assert check.check({"authorization": f"Bearer {KEY}"}, "10.0.0.1").name == "a"


def test_missing_or_unknown_key_is_unauthenticated() -> None:
    check = check_with(FakeClock())
    with pytest.raises(Unauthenticated):
        check.check({}, "10.0.0.1")
    with pytest.raises(Unauthenticated):
        check.check({"x-api-key": "wrong"}, "10.0.0.1")


def test_failures_beyond_the_burst_are_rate_limited_per_address() -> None:
    clock = FakeClock()
    check = check_with(clock, burst=3.0)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            check.check({"x-api-key": "guess"}, "10.0.0.1")
    # The address is now refused before its key is looked at, even a valid one.
    with pytest.raises(RateLimited) as refused:
        check.check({"x-api-key": KEY}, "10.0.0.1")
    assert refused.value.retry_after_seconds == pytest.approx(1.0)
    # Another address is not affected.
    assert check.check({"x-api-key": KEY}, "10.0.0.2").name == "a"
    clock.now += 1.0
    assert check.check({"x-api-key": KEY}, "10.0.0.1").name == "a"


def test_valid_keys_cost_no_attempts() -> None:
    check = check_with(FakeClock(), burst=1.0)
    for _ in range(10):
        check.check({"x-api-key": KEY}, "10.0.0.1")
    with pytest.raises(Unauthenticated):
        check.check({}, "10.0.0.1")


def test_tracked_addresses_are_bounded() -> None:
    limiter = FailedAuthLimiter(max_addresses=100, clock=FakeClock())
    for index in range(1000):
        limiter.record_failure(f"10.0.{index // 256}.{index % 256}")
    assert limiter.tracked == 100


def test_auth_off_accepts_anyone() -> None:
    check = CredentialCheck(Authenticator(enabled=False))
    assert check.check({}, "10.0.0.1").name == "anonymous"


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        (("127.0.0.1", 5000), "127.0.0.1"),
        ("ipv4:10.1.2.3:5123", "10.1.2.3"),
        ("ipv6:[::1]:5123", "::1"),
        ("[fe80::1]:80", "fe80::1"),
        ("10.1.2.3", "10.1.2.3"),
        (None, ""),
    ],
)
def test_client_host(peer: str | tuple[str, int] | None, host: str) -> None:
    assert client_host(peer) == host
