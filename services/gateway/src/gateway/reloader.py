"""Re-read the routes file, the keys file and the registry when they change.

A background task polls file identities (mtime, size, inode) every
`reload_interval_seconds`. A file that fails to parse is reported and the previous
configuration stays in force, so a typo never takes routing or auth down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.observability.metrics import GatewayMetrics
from gateway.registryview import FileIdentity, RegistryView, file_identity
from gateway.routing.config import RoutesFileError, load_routes
from gateway.routing.router import Router
from gateway.security.keys import Authenticator, KeysFileError, load_keys

logger = logging.getLogger(__name__)

RegistryListener = Callable[[], None]


class Reloader:
    """Owns the watched files' last seen identities and applies changes."""

    def __init__(
        self,
        router: Router,
        authenticator: Authenticator,
        metrics: GatewayMetrics,
        routes_file: Path | None,
        keys_file: Path | None,
        registry: RegistryView | None,
        interval: float,
    ) -> None:
        self._router = router
        self._authenticator = authenticator
        self._metrics = metrics
        self._routes_file = routes_file
        self._keys_file = keys_file
        self._registry = registry
        self._interval = interval
        self._routes_seen: FileIdentity | None = None
        self._keys_seen: FileIdentity | None = None
        self._registry_seen: tuple[object, ...] | None = None
        self._listeners: list[RegistryListener] = []
        self._task: asyncio.Task[None] | None = None

    def load_initial(self) -> None:
        """Load both files now; a broken file here stops the start-up.

        Raises:
            RoutesFileError, KeysFileError: a file exists but is invalid.
        """
        if self._routes_file is not None:
            self._routes_seen = file_identity(self._routes_file)
            self._router.routes = load_routes(self._routes_file)
            logger.info(
                "routes loaded from %s: %d route(s)",
                self._routes_file,
                len(self._router.routes.routes),
            )
        if self._keys_file is not None:
            self._keys_seen = file_identity(self._keys_file)
            self._authenticator.load(load_keys(self._keys_file))
            logger.info(
                "API keys loaded from %s: %d key(s)",
                self._keys_file,
                self._authenticator.key_count,
            )
        if self._registry is not None:
            self._registry_seen = self._registry.fingerprint()

    def on_registry_change(self, listener: RegistryListener) -> None:
        self._listeners.append(listener)

    def check(self) -> None:
        """Apply whatever changed since the last check."""
        if self._routes_file is not None:
            identity = file_identity(self._routes_file)
            if identity != self._routes_seen:
                self._routes_seen = identity
                try:
                    self._router.routes = load_routes(self._routes_file)
                except RoutesFileError as exc:
                    logger.error(
                        "routes file not reloaded (keeping the old one): %s", exc
                    )
                    self._metrics.reloads.labels("routes", "error").inc()
                else:
                    logger.info(
                        "routes reloaded: %d route(s)", len(self._router.routes.routes)
                    )
                    self._metrics.reloads.labels("routes", "ok").inc()
        if self._keys_file is not None:
            identity = file_identity(self._keys_file)
            if identity != self._keys_seen:
                self._keys_seen = identity
                try:
                    self._authenticator.load(load_keys(self._keys_file))
                except KeysFileError as exc:
                    logger.error(
                        "keys file not reloaded (keeping the old one): %s", exc
                    )
                    self._metrics.reloads.labels("keys", "error").inc()
                else:
                    logger.info(
                        "API keys reloaded: %d key(s)", self._authenticator.key_count
                    )
                    self._metrics.reloads.labels("keys", "ok").inc()
        if self._registry is not None:
            fingerprint = self._registry.fingerprint()
            if fingerprint != self._registry_seen:
                self._registry_seen = fingerprint
                for listener in self._listeners:
                    try:
                        listener()
                    except Exception:
                        logger.exception("registry change listener failed")
                        self._metrics.reloads.labels("registry", "error").inc()
                        break
                else:
                    self._metrics.reloads.labels("registry", "ok").inc()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                # A few stat() calls and, on change, small YAML/JSON reads: cheap
                # enough for the loop, and applying changes there needs no locks.
                self.check()
            except Exception:
                logger.exception("reload check failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
