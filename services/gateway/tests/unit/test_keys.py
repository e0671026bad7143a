from __future__ import annotations

from pathlib import Path

import pytest
from gateway.errors import PermissionDenied, RateLimited, Unauthenticated
from gateway.security.keys import (
    Authenticator,
    KeysFileError,
    RateSpec,
    extract_key,
    generate_key,
    hash_key,
    load_keys,
    parse_keys,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keys_for(*entries: dict[str, object]) -> Authenticator:
    authenticator = Authenticator(enabled=True, clock=FakeClock())
    authenticator.load(parse_keys({"keys": list(entries)}))
    return authenticator


def test_extracts_bearer_or_api_key_header() -> None:
    assert extract_key("Bearer abc", None) == "abc"
    assert extract_key("bearer  abc ", None) == "abc"
    assert extract_key("Basic abc", None) is None
    assert extract_key("Bearer x", "y") == "y"
    assert extract_key(None, None) is None


def test_unknown_or_missing_key_is_401_and_scope_is_403() -> None:
    key = generate_key()
    auth = keys_for({"name": "a", "sha256": hash_key(key), "scopes": ["tabular"]})
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authenticate(None)
    with pytest.raises(Unauthenticated, match="invalid"):
        auth.authenticate("sk_wrong")
    principal = auth.authenticate(key)
    auth.authorize(principal, "tabular")
    with pytest.raises(PermissionDenied):
        auth.authorize(principal, "digits")


def test_rate_limit_per_key_with_retry_after() -> None:
    clock = FakeClock()
    key = generate_key()
    auth = Authenticator(enabled=True, clock=clock)
    auth.load(
        parse_keys(
            {
                "keys": [
                    {
                        "name": "a",
                        "sha256": hash_key(key),
                        "rate": {"per_second": 1, "burst": 2},
                    }
                ]
            }
        )
    )
    principal = auth.authenticate(key)
    auth.authorize(principal, "m")
    auth.authorize(principal, "m")
    with pytest.raises(RateLimited) as caught:
        auth.authorize(principal, "m")
    assert caught.value.headers() == {"Retry-After": "1"}
    clock.now += 1.0
    auth.authorize(principal, "m")


def test_default_rate_applies_to_keys_without_one() -> None:
    clock = FakeClock()
    key = generate_key()
    auth = Authenticator(
        enabled=True, default_rate=RateSpec(per_second=0.5, burst=1), clock=clock
    )
    auth.load(parse_keys({"keys": [{"name": "a", "sha256": hash_key(key)}]}))
    principal = auth.authenticate(key)
    auth.authorize(principal, "m")
    with pytest.raises(RateLimited) as caught:
        auth.authorize(principal, "m")
    assert caught.value.headers() == {"Retry-After": "2"}


def test_disabled_auth_lets_anyone_use_anything() -> None:
    auth = Authenticator(enabled=False)
    principal = auth.authenticate(None)
    auth.authorize(principal, "anything")


def test_keys_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - name: a\n    sha256: nothex\n")
    with pytest.raises(KeysFileError, match="sha256"):
        load_keys(path)
    digest = hash_key("k")
    path.write_text(
        f"keys:\n  - {{name: a, sha256: {digest}}}\n  - {{name: a, sha256: {hash_key('j')}}}\n"
    )
    with pytest.raises(KeysFileError, match="unique"):
        load_keys(path)
