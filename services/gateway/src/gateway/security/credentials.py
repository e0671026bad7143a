"""The header-only credential check every listener runs before reading a body.

The API key travels in headers (`Authorization: Bearer <key>` or `x-api-key`, as
HTTP headers or gRPC metadata), so a caller without a valid key is answered before
the gateway buffers a single byte of its request. The model's scope and the key's
own rate are checked later, once the model name is known (for gRPC it is in the
body).

Failed attempts are rate-limited per client address: each unknown or missing key
takes a token from that address's bucket, and an address whose bucket is empty is
answered 429 / RESOURCE_EXHAUSTED without its key being looked at, so guessing keys
costs the guesser time and the gateway nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.errors import RateLimited, Unauthenticated
from gateway.security.keys import Authenticator, Principal, extract_key
from gateway.security.ratelimit import TokenBucket

DEFAULT_FAILURES_PER_SECOND = 1.0
"""Failed attempts an address earns back per second."""
DEFAULT_FAILURE_BURST = 10.0
"""Failed attempts an address may make at once before it is slowed down."""
DEFAULT_TRACKED_ADDRESSES = 10_000
"""Addresses whose failures are remembered; the least recently failed are forgotten
first, so spoofed or many addresses cannot grow the table without bound."""


@dataclass
class FailedAuthLimiter:
    """A token bucket of failed authentication attempts per client address.

    Args:
        per_second: Attempts earned back per second.
        burst: Attempts allowed at once.
        max_addresses: Addresses remembered at most.
        clock: Monotonic seconds (injectable so tests need not sleep).
    """

    per_second: float = DEFAULT_FAILURES_PER_SECOND
    burst: float = DEFAULT_FAILURE_BURST
    max_addresses: int = DEFAULT_TRACKED_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, TokenBucket] = field(
        default_factory=OrderedDict, init=False
    )

    def check(self, address: str) -> None:
        """Refuse an address that has used up its failed attempts.

        Raises:
            RateLimited: the address's bucket is empty.
        """
        bucket = self._buckets.get(address)
        if bucket is None:
            return
        # Taking nothing refills the bucket for the time since the last failure.
        bucket.try_take(0.0)
        if bucket.tokens < 1.0:
            raise RateLimited(
                "too many failed authentication attempts from this address",
                (1.0 - bucket.tokens) / self.per_second,
            )

    def record_failure(self, address: str) -> None:
        """Take one attempt from the address's bucket."""
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = TokenBucket(self.per_second, self.burst, clock=self.clock)
            self._buckets[address] = bucket
            if len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        bucket.try_take()

    @property
    def tracked(self) -> int:
        """How many addresses have recent failures remembered."""
        return len(self._buckets)


@dataclass
class CredentialCheck:
    """Authenticates a call from its headers alone.

    Args:
        authenticator: The keys (and whether auth is on at all).
        failures: The per-address limit on failed attempts.
    """

    authenticator: Authenticator
    failures: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)

    def check(self, headers: Mapping[str, str], client: str) -> Principal:
        """Who is calling, from `authorization` / `x-api-key` (lower-case names).

        Args:
            headers: The request's headers or gRPC metadata.
            client: The peer's address (host only: a port changes per connection).

        Raises:
            RateLimited: the address has made too many failed attempts.
            Unauthenticated: auth is on and the key is missing or unknown.
        """
        authenticator = self.authenticator
        if not authenticator.enabled:
            return authenticator.authenticate(None)
        self.failures.check(client)
        key = extract_key(headers.get("authorization"), headers.get("x-api-key"))
        try:
            return authenticator.authenticate(key)
        except Unauthenticated:
            self.failures.record_failure(client)
            raise


def client_host(peer: str | tuple[str, int] | None) -> str:
    """The host part of a peer address: `("10.0.0.1", 5123)`, `"ipv4:10.0.0.1:5123"`
    or `"ipv6:[::1]:5123"` (grpc's form) all give the address alone."""
    if peer is None:
        return ""
    if isinstance(peer, tuple):
        return str(peer[0])
    text = peer
    for prefix in ("ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    host, separator, port = text.rpartition(":")
    if separator and port.isdigit() and host.count(":") == 0:
        return host
    return text
