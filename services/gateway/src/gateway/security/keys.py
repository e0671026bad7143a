"""API keys: the YAML file, hashing, lookup, scopes and per-key rate limits.

The file holds only sha256 digests of the keys::

    keys:
      - name: analytics
        sha256: 9f86d0...            # sha256 hex of the key itself
        scopes: ["tabular", "*"]     # model names, or "*" for every model
        rate: {per_second: 20, burst: 40}   # optional

A key is presented as `Authorization: Bearer <key>` or `x-api-key: <key>` (HTTP headers
or gRPC metadata).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import PermissionDenied, RateLimited, Unauthenticated
from gateway.security.ratelimit import TokenBucket

KEY_PREFIX = "sk_"


class RateSpec(BaseModel):
    """A token bucket's refill rate and size."""

    model_config = ConfigDict(extra="forbid")

    per_second: float = Field(gt=0)
    burst: float | None = Field(default=None, gt=0)
    """Default: the same as `per_second` (one second's worth)."""


class KeyEntry(BaseModel):
    """One key of the keys file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[str] = Field(default_factory=lambda: ["*"])
    rate: RateSpec | None = None


class KeysFile(BaseModel):
    """The whole keys file."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)


class KeysFileError(ValueError):
    """The keys file cannot be read or does not fit the schema."""


def hash_key(key: str) -> str:
    """The digest stored in the keys file for a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random key (shown once; only its hash is stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(data: Any) -> KeysFile:
    """Validate parsed YAML.

    Raises:
        KeysFileError: wrong shape, or two keys with the same name or digest.
    """
    try:
        parsed = KeysFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise KeysFileError(f"keys file: {where}: {first['msg']}") from exc
    names = [entry.name for entry in parsed.keys]
    digests = [entry.sha256.lower() for entry in parsed.keys]
    if len(set(names)) != len(names) or len(set(digests)) != len(digests):
        raise KeysFileError("keys file: key names and digests must be unique")
    return parsed


def load_keys(path: Path) -> KeysFile:
    """Read and validate a keys file.

    Raises:
        KeysFileError: unreadable, not YAML, or not the schema.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeysFileError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{path}: not valid YAML: {exc}") from exc
    return parse_keys(data)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and what it may use."""

    name: str
    scopes: frozenset[str]

    def may_use(self, model: str) -> bool:
        return "*" in self.scopes or model in self.scopes


ANONYMOUS = Principal(name="anonymous", scopes=frozenset({"*"}))


def extract_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer ...` or `x-api-key`, if any."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


@dataclass
class Authenticator:
    """Checks keys, scopes and rate limits; rebuilt when the keys file changes.

    Buckets survive a reload for keys whose name and rate did not change, so editing
    the file does not hand every client a fresh burst.
    """

    enabled: bool
    default_rate: RateSpec | None = None
    clock: Callable[[], float] | None = None
    _by_digest: dict[str, Principal] = field(default_factory=dict)
    _rates: dict[str, RateSpec | None] = field(default_factory=dict)
    _buckets: dict[str, tuple[RateSpec, TokenBucket]] = field(default_factory=dict)

    def load(self, keys: KeysFile) -> None:
        """Install a new set of keys."""
        self._by_digest = {
            entry.sha256.lower(): Principal(
                name=entry.name, scopes=frozenset(entry.scopes)
            )
            for entry in keys.keys
        }
        self._rates = {entry.name: entry.rate for entry in keys.keys}
        self._buckets = {
            name: bucket
            for name, bucket in self._buckets.items()
            if name in self._rates
        }

    @property
    def key_count(self) -> int:
        return len(self._by_digest)

    def authenticate(self, key: str | None) -> Principal:
        """Who presents `key`.

        Raises:
            Unauthenticated: auth is on and the key is missing or unknown.
        """
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key'"
            )
        found = self._by_digest.get(hash_key(key))
        if found is None:
            raise Unauthenticated("invalid API key")
        return found

    def authorize(self, principal: Principal, model: str) -> None:
        """Check scope, then take a token from the principal's bucket.

        Raises:
            PermissionDenied: the model is outside the key's scopes.
            RateLimited: the key's bucket is empty.
        """
        if not principal.may_use(model):
            raise PermissionDenied(
                f"API key {principal.name!r} may not use model {model!r}"
            )
        bucket = self._bucket_for(principal)
        if bucket is None:
            return
        wait = bucket.try_take()
        if wait > 0:
            raise RateLimited(
                f"rate limit of API key {principal.name!r} exceeded", wait
            )

    def _bucket_for(self, principal: Principal) -> TokenBucket | None:
        rate = self._rates.get(principal.name) or self.default_rate
        if rate is None:
            return None
        current = self._buckets.get(principal.name)
        if current is not None and current[0] == rate:
            return current[1]
        burst = rate.burst if rate.burst is not None else rate.per_second
        bucket = (
            TokenBucket(rate.per_second, burst)
            if self.clock is None
            else TokenBucket(rate.per_second, burst, clock=self.clock)
        )
        self._buckets[principal.name] = (rate, bucket)
        return bucket
