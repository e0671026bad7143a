"""Pollers that keep the registry in line with the file system and the config file.

- Every ``file_system_poll_wait_seconds`` each model's base path is rescanned:
  new versions load, vanished ones unload (0: scanned once at start only;
  negative: never rescanned).
- Every ``model_config_file_poll_wait_seconds`` (0: never) the config file is
  re-read; when it differs from the last version read, the registry switches to
  it. A config installed through ``HandleReloadConfigRequest`` therefore stays
  until the file itself changes. A file that fails to parse is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from modelserver.config import ModelConfig, load_model_server_config
from modelserver.errors import ServingError
from modelserver.registry.registry import ModelRegistry

logger = logging.getLogger(__name__)


class Watcher:
    """Background polling of base paths and of the model config file."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        file_system_poll_seconds: float,
        config_file: Path | None = None,
        config_poll_seconds: float = 0.0,
        initial_config: tuple[ModelConfig, ...] | None = None,
        read_config: Callable[
            [Path], tuple[ModelConfig, ...]
        ] = load_model_server_config,
    ) -> None:
        self._registry = registry
        self._file_system_poll_seconds = file_system_poll_seconds
        self._config_file = config_file
        self._config_poll_seconds = config_poll_seconds
        self._last_config = initial_config
        self._read_config = read_config
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the pollers on the running loop."""
        if self._file_system_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self._poll_file_system()))
        if self._config_file is not None and self._config_poll_seconds > 0:
            self._tasks.append(
                asyncio.create_task(self._poll_config(self._config_file))
            )

    async def stop(self) -> None:
        """Stop polling (a poll in progress is cancelled)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _poll_file_system(self) -> None:
        while True:
            await asyncio.sleep(self._file_system_poll_seconds)
            try:
                await self._registry.poll_file_system()
            except Exception:
                logger.exception("File system poll failed")

    async def _poll_config(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self._config_poll_seconds)
            await self.reload_config_file(path)

    async def reload_config_file(self, path: Path) -> bool:
        """Re-read the config file and apply it if it changed; True if applied."""
        try:
            configs = await asyncio.to_thread(self._read_config, path)
        except ServingError as exc:
            logger.error("Ignoring the model config file: %s", exc)
            return False
        if configs == self._last_config:
            return False
        self._last_config = configs
        logger.info("Model config file %s changed; applying it", path)
        try:
            await self._registry.apply_config(configs)
        except ServingError as exc:
            logger.error("Applying the model config file failed: %s", exc)
        return True
