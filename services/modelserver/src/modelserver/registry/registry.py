"""Loaded model versions, their states, version policies and labels.

This is TF Serving's ``ServerCore`` + ``AspiredVersionsManager`` in miniature:

- Per model, the *aspired* versions are those the version policy picks among the
  directories on disk (``latest { num_versions }``, ``all``, ``specific``).
- New aspired versions go START -> LOADING (load + warmup, in the load pool)
  -> AVAILABLE, or END with their error, which status reports while the other
  versions keep serving. Loads are retried ``max_num_load_retries`` times.
- Unloading is availability-preserving: a version that is no longer aspired is
  unloaded only once an aspired version is AVAILABLE (or when nothing is aspired
  any more: a removed model or an emptied base path). Unloading waits for its
  in-flight requests (UNLOADING), then releases the model (END).
- Requests resolve a :class:`ModelSpec` to an AVAILABLE version: by number, by
  label, or the highest AVAILABLE version. Resolution is synchronous dictionary
  work on the event loop; every mutation also happens on the event loop, so no
  lock is needed on the request path.

Labels are applied after a config's loads settle; a label must point at an
AVAILABLE version unless ``allow_version_labels_for_unavailable_models`` (which,
as in TF Serving, still refuses to *move* an existing label to an unavailable
version).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path

from servekit_protocol.serving import unknown_label_message

from modelserver.config import ModelConfig
from modelserver.errors import (
    FailedPrecondition,
    IntegrityFailure,
    InvalidConfig,
    LabelNotFound,
    LoadError,
    ModelNotFound,
    ServingError,
    VersionNotFound,
)
from modelserver.observability.metrics import Metrics
from modelserver.registry.repository import scan_versions
from modelserver.registry.servable import Loader, ModelEntry, Servable, UnloadHook
from modelserver.runtimes.base import Runtime
from modelserver.types import ModelSpec, VersionState, VersionStatus

__all__ = ["Loader", "ModelEntry", "ModelRegistry", "Servable", "UnloadHook"]

logger = logging.getLogger(__name__)


class ModelRegistry:
    """The versions of every configured model, kept in line with disk and config."""

    def __init__(
        self,
        *,
        loader: Loader,
        load_executor: Executor,
        metrics: Metrics,
        num_load_threads: int = 0,
        max_load_retries: int = 5,
        load_retry_interval_seconds: float = 60.0,
        allow_labels_for_unavailable: bool = False,
        on_unload: UnloadHook | None = None,
    ) -> None:
        self._loader = loader
        self._load_executor = load_executor
        self._metrics = metrics
        self._load_slots = asyncio.Semaphore(max(1, num_load_threads))
        self._max_load_retries = max_load_retries
        self._load_retry_interval = max(0.0, load_retry_interval_seconds)
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._on_unload = on_unload
        self._models: dict[str, ModelEntry] = {}
        self._reconcile_lock = asyncio.Lock()
        self._config_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- request side -------------------------------------------------------------

    def resolve(self, spec: ModelSpec) -> Servable:
        """The AVAILABLE version a request for ``spec`` runs on.

        Raises:
            ModelNotFound: No version of the model is AVAILABLE.
            VersionNotFound: The requested (or labelled) version is not AVAILABLE.
            LabelNotFound: The label is not assigned.
        """
        entry = self._models.get(spec.name)
        if spec.label is not None:
            version = self.labelled_version(spec.name, spec.label)
            return self._specific(entry, spec.name, version)
        if spec.version is not None:
            return self._specific(entry, spec.name, spec.version)
        latest = entry.latest if entry is not None else None
        if latest is None:
            raise ModelNotFound(f"Servable not found for request: Latest({spec.name})")
        return latest

    @staticmethod
    def _specific(entry: ModelEntry | None, name: str, version: int) -> Servable:
        servable = entry.servables.get(version) if entry is not None else None
        if servable is None or servable.state is not VersionState.AVAILABLE:
            raise VersionNotFound(
                f"Servable not found for request: Specific({name}, {version})"
            )
        return servable

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every known version (newest first), or one.

        Raises:
            ModelNotFound: The model has no known versions.
            VersionNotFound: That version was never seen.
        """
        entry = self._models.get(name)
        if entry is None or not entry.servables:
            raise ModelNotFound(f"Could not find any versions of model {name}")
        if version is not None:
            servable = entry.servables.get(version)
            if servable is None:
                raise VersionNotFound(
                    f"Could not find version {version} of model {name}"
                )
            return [servable.status()]
        return [
            entry.servables[number].status()
            for number in sorted(entry.servables, reverse=True)
        ]

    def unsettled_models(self, *, serving_counts: bool) -> list[str]:
        """Configured models still waiting for a wanted version to load.

        A wanted (aspired) version is settled when it is AVAILABLE or its
        load ended in an error (retries included); a model whose wanted
        versions are all settled, or that has none, is settled. With
        ``serving_counts`` a model that already serves a version counts as
        settled too, so that loading a newer one does not take the server out
        of rotation.
        """
        waiting = []
        for name, entry in self._models.items():
            if entry.config is None:
                continue
            if serving_counts and entry.latest is not None:
                continue
            for number in entry.aspired:
                servable = entry.servables.get(number)
                if servable is None or not (
                    servable.state is VersionState.AVAILABLE
                    or (
                        servable.state is VersionState.END
                        and servable.error is not None
                    )
                ):
                    waiting.append(name)
                    break
        return sorted(waiting)

    def labelled_version(self, name: str, label: str) -> int:
        """The version ``label`` points at in model ``name``.

        Raises:
            LabelNotFound: The label is not assigned (TF Serving's
                INVALID_ARGUMENT "Unrecognized servable version label").
        """
        entry = self._models.get(name)
        version = entry.labels.get(label) if entry is not None else None
        if version is None:
            raise LabelNotFound(unknown_label_message(label))
        return version

    def model_names(self) -> list[str]:
        """Names of the configured models."""
        return sorted(
            name for name, entry in self._models.items() if entry.config is not None
        )

    def labels(self, name: str) -> dict[str, int]:
        """The labels assigned in a model (empty for unknown models)."""
        entry = self._models.get(name)
        return dict(entry.labels) if entry is not None else {}

    # --- management -----------------------------------------------------------------

    async def apply_config(self, configs: Iterable[ModelConfig]) -> None:
        """Serve exactly ``configs``: add, change and remove models, then label.

        Returns once the loads this config started have finished (or failed).

        Raises:
            InvalidConfig: A model would change platform.
            FailedPrecondition: A label points at a version that is not AVAILABLE
                (the other changes are applied; the labels stay as they were).
        """
        wanted = {config.name: config for config in configs}
        async with self._config_lock:
            for name, config in wanted.items():
                entry = self._models.get(name)
                if (
                    entry is not None
                    and entry.config is not None
                    and entry.config.platform != config.platform
                ):
                    raise InvalidConfig(
                        f"Illegal to change a model's platform. For model {name} "
                        f"platform was {entry.config.platform} and new platform "
                        f"requested is {config.platform}"
                    )
            replaced: list[ModelEntry] = []
            settling: list[ModelEntry] = []
            for name, entry in list(self._models.items()):
                if name not in wanted and entry.config is not None:
                    logger.info("Model %s removed from the config", name)
                    entry.config = None
                    entry.labels = {}
                    await self._reconcile(entry)
            for name, config in wanted.items():
                entry = self._models.get(name)
                if entry is None or entry.config is None:
                    if entry is None:
                        entry = ModelEntry(config=config)
                        self._models[name] = entry
                    entry.config = config
                    await self._reconcile(entry)
                    settling.append(entry)
                elif entry.config.base_path != config.base_path:
                    # A new home: serve the new versions before the old go away.
                    fresh = ModelEntry(config=config)
                    await self._reconcile(fresh)
                    await self._settle(fresh)
                    self._models[name] = fresh
                    entry.config = None
                    replaced.append(entry)
                    settling.append(fresh)
                elif entry.config != config:
                    entry.config = config
                    await self._reconcile(entry)
                    settling.append(entry)
            for old in replaced:
                await self._reconcile(old)
            for entry in settling:
                await self._settle(entry)
            self._apply_labels(wanted)

    def _apply_labels(self, wanted: dict[str, ModelConfig]) -> None:
        new_labels: dict[str, dict[str, int]] = {}
        for name, config in wanted.items():
            entry = self._models[name]
            assigned: dict[str, int] = {}
            for label, version in config.labels.items():
                servable = entry.servables.get(version)
                available = (
                    servable is not None and servable.state is VersionState.AVAILABLE
                )
                moving = entry.labels.get(label, version) != version
                if not available and (moving or not self._allow_labels_for_unavailable):
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model "
                        f"{name}, which is not currently available for inference"
                    )
                assigned[label] = version
            new_labels[name] = assigned
        for name, assigned in new_labels.items():
            self._models[name].labels = assigned

    async def poll_file_system(self) -> None:
        """Rescan every model's base path and start loads/unloads (not awaited)."""
        for entry in list(self._models.values()):
            if entry.config is not None:
                await self._reconcile(entry)

    async def settle_loads(self) -> None:
        """Wait until no load is in progress."""
        for entry in list(self._models.values()):
            await self._settle(entry)

    async def settle(self) -> None:
        """Wait until no load or unload is in progress."""
        await self.settle_loads()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        """Unload every version, waiting for in-flight requests."""
        self._closed = True
        async with self._config_lock:
            for entry in self._models.values():
                for task in list(entry.loads):
                    task.cancel()
                entry.config = None
                entry.labels = {}
            for entry in list(self._models.values()):
                await self._settle(entry)
                await self._reconcile(entry)
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _settle(self, entry: ModelEntry) -> None:
        while entry.loads:
            await asyncio.gather(*list(entry.loads), return_exceptions=True)

    # --- reconciliation -------------------------------------------------------------

    async def _reconcile(self, entry: ModelEntry) -> None:
        async with self._reconcile_lock:
            config = entry.config
            if config is None:
                on_disk: dict[int, Path] = {}
                aspired: set[int] = set()
            else:
                on_disk = await asyncio.to_thread(scan_versions, config.base_path)
                aspired = config.policy.select(on_disk)
            entry.aspired = aspired
            for number, servable in entry.servables.items():
                if number not in aspired and servable.error is not None:
                    # A failed version that leaves and comes back gets a new try.
                    servable.retry_allowed = True
            for number in sorted(aspired, reverse=True):
                self._maybe_load(entry, number, on_disk[number])
            self._unload_unaspired(entry)

    def _maybe_load(self, entry: ModelEntry, number: int, path: Path) -> None:
        current = entry.servables.get(number)
        if current is not None:
            if current.state is not VersionState.END:
                return
            if current.error is not None and not current.retry_allowed:
                return
        assert entry.config is not None
        servable = Servable(entry.config.name, number, path)
        entry.servables[number] = servable
        self._set_state(servable, VersionState.START)
        task = asyncio.create_task(self._load(entry, servable))
        entry.loads.add(task)
        task.add_done_callback(entry.loads.discard)

    def _unload_unaspired(self, entry: ModelEntry) -> None:
        serving = [
            servable
            for number, servable in entry.servables.items()
            if number not in entry.aspired and servable.state is VersionState.AVAILABLE
        ]
        if not serving:
            return
        aspired_available = any(
            entry.servables[number].state is VersionState.AVAILABLE
            for number in entry.aspired
            if number in entry.servables
        )
        if entry.aspired and not aspired_available:
            # Keep serving the newest old version until an aspired one is ready.
            serving.remove(max(serving, key=lambda servable: servable.version))
        for servable in serving:
            self._start_unload(entry, servable)

    def _start_unload(self, entry: ModelEntry, servable: Servable) -> None:
        self._set_state(servable, VersionState.UNLOADING)
        entry.refresh_latest()
        task = asyncio.create_task(self._unload(servable))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, entry: ModelEntry, servable: Servable) -> None:
        config = entry.config
        assert config is not None
        loop = asyncio.get_running_loop()
        self._set_state(servable, VersionState.LOADING)
        started = time.perf_counter()
        error: ServingError | None = None
        runtime: Runtime | None = None
        for attempt in range(self._max_load_retries + 1):
            if attempt:
                # The retry wait does not hold a load slot: other models load.
                await asyncio.sleep(self._load_retry_interval)
                if servable.version not in entry.aspired or self._closed:
                    break
                logger.info(
                    "Retrying load of %s version %d (attempt %d)",
                    servable.name,
                    servable.version,
                    attempt + 1,
                )
            try:
                async with self._load_slots:
                    runtime = await loop.run_in_executor(
                        self._load_executor,
                        self._loader,
                        config,
                        servable.version,
                        servable.path,
                    )
                break
            except ServingError as exc:
                error = exc
            except Exception as exc:
                error = LoadError(f"{type(exc).__name__}: {exc}")
            logger.warning(
                "Loading %s version %d failed: %s",
                servable.name,
                servable.version,
                error,
            )
            if isinstance(error, IntegrityFailure):
                break  # a digest mismatch does not fix itself
        if runtime is None:
            servable.error = error or LoadError("Load cancelled")
            self._set_state(servable, VersionState.END)
        elif self._closed or servable.version not in entry.aspired:
            # Aspired away while loading: never serve it.
            servable.runtime = runtime
            self._set_state(servable, VersionState.UNLOADING)
            await self._unload(servable)
        else:
            servable.runtime = runtime
            self._set_state(servable, VersionState.AVAILABLE)
            self._metrics.load_latency.labels(
                servable.name, servable.version_text
            ).observe(time.perf_counter() - started)
            logger.info(
                "Model %s version %d is AVAILABLE (%.2f s)",
                servable.name,
                servable.version,
                time.perf_counter() - started,
            )
        entry.refresh_latest()
        async with self._reconcile_lock:
            self._unload_unaspired(entry)

    async def _unload(self, servable: Servable) -> None:
        if servable.in_flight:
            await servable.drained.wait()
        if self._on_unload is not None:
            await self._on_unload(servable)
        runtime = servable.runtime
        servable.runtime = None
        if runtime is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._load_executor, runtime.close)
        self._set_state(servable, VersionState.END)
        logger.info("Model %s version %d unloaded", servable.name, servable.version)

    def _set_state(self, servable: Servable, state: VersionState) -> None:
        servable.state = state
        if state is VersionState.UNLOADING and servable.in_flight == 0:
            servable.drained.set()
        entry = self._models.get(servable.name)
        current = entry.servables.get(servable.version) if entry is not None else None
        # A moved model's old copy of a version must not overwrite the new one's.
        if current is None or current is servable:
            self._metrics.set_version_state(servable.name, servable.version, state)
