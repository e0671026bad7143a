"""Loading one version the way the settings ask: runtime options, then warmup.

The registry calls a :class:`VersionLoader` in its load pool for every version it
brings up; the version serves only once this returns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from modelserver.config import ModelConfig
from modelserver.registry.repository import LoadOptions, load_runtime
from modelserver.registry.warmup import warm_up
from modelserver.runtimes.base import Runtime

if TYPE_CHECKING:
    from modelserver.settings import Settings

logger = logging.getLogger(__name__)


def load_options(settings: Settings) -> LoadOptions:
    """The runtime options of every load, from TF Serving's flags."""
    intra = settings.tensorflow_intra_op_parallelism
    inter = settings.tensorflow_inter_op_parallelism
    if settings.tensorflow_session_parallelism > 0:
        intra = inter = settings.tensorflow_session_parallelism
    return LoadOptions(
        saved_model_tags=tuple(
            tag.strip() for tag in settings.saved_model_tags.split(",") if tag.strip()
        ),
        intra_op_threads=intra,
        inter_op_threads=inter,
        gpu_memory_fraction=settings.per_process_gpu_memory_fraction,
        method_name_check=settings.enable_signature_method_name_check,
        own_warning_filters=settings.own_warning_filters,
    )


class VersionLoader:
    """Loads a version and replays its warmup requests (blocking)."""

    def __init__(self, settings: Settings) -> None:
        self._options = load_options(settings)
        self._warmup = settings.enable_model_warmup
        self._warmup_iterations = settings.num_request_iterations_for_warmup

    def __call__(self, config: ModelConfig, version: int, path: Path) -> Runtime:
        """Load ``version`` of ``config``'s model from ``path`` and warm it up.

        Raises:
            ServingError: The version cannot be loaded or its warmup failed
                (the runtime is closed first).
        """
        runtime = load_runtime(
            name=config.name,
            version=version,
            path=path,
            platform=config.platform,
            options=self._options,
        )
        if not self._warmup:
            return runtime
        try:
            calls = warm_up(runtime, iterations=self._warmup_iterations)
        except BaseException:
            runtime.close()
            raise
        if calls:
            logger.info(
                "Warmed up %s version %d with %d request(s)",
                config.name,
                version,
                calls,
            )
        return runtime
