"""The transport-neutral core of the model server: every API call lands here.

The REST and gRPC layers are thin delegators: they decode the wire format into
:mod:`modelserver.types`, await one :class:`DataPlane` method and encode the answer.
Errors are :class:`modelserver.errors.ServingError` subclasses carrying both the
HTTP status and the gRPC code.

Contract for the transports:

- ``DataPlane.from_settings(settings, metrics)`` builds it (``settings`` a
  :class:`modelserver.settings.Settings`, ``metrics`` a
  :class:`modelserver.observability.metrics.Metrics`).
- ``await start()`` reads the model config (``--model_config_file`` or
  ``--model_name``/``--model_base_path``), loads and warms up every aspired version
  and starts the file-system and config-file pollers; it returns when the initial
  loads have finished (failed versions are reported in status, not raised).
- ``await stop()`` stops the pollers, waits for in-flight requests, unloads.
- ``ready()`` is true between the end of ``start`` and the beginning of ``stop``;
  ``live()`` until ``stop`` finished.
- Inference methods take keyword-only ``protocol`` (``"rest"``/``"grpc"``, a
  metrics label) and ``timeout`` (seconds left for the call; ``None`` = no limit).
  Inference runs in a thread pool (or in the batcher's), never on the event loop.
- ``signature(spec)`` gives the REST codecs the input/output dtypes they need to
  parse the row/columnar JSON formats before calling ``predict``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelserver.types import (
    ClassifyRequest,
    ClassifyResponse,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    MultiInferenceResponse,
    PredictRequest,
    PredictResponse,
    RegressRequest,
    RegressResponse,
    ResolvedSpec,
    SignatureInfo,
    VersionStatus,
)

if TYPE_CHECKING:
    from servekit_protocol.messages import ModelServerConfig

    from modelserver.observability.metrics import Metrics
    from modelserver.settings import Settings


class DataPlane:
    """Resolves model specs to loaded versions and runs the APIs on them."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> DataPlane:
        """Build the dataplane, its registry, watcher and batchers from settings."""
        return cls(settings, metrics)

    async def start(self) -> None:
        """Load the configured models and start polling for changes.

        Raises:
            InvalidConfig: The model config file cannot be read or is invalid.
        """
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop polling, drain in-flight requests and unload every version."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the initial loads finished and the server is not stopping."""
        raise NotImplementedError

    def live(self) -> bool:
        """Whether the process should be kept alive (false once stopped)."""
        raise NotImplementedError

    async def predict(
        self,
        request: PredictRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> PredictResponse:
        """Run a Predict call.

        Raises:
            ModelNotFound: No version of the model is available.
            VersionNotFound: The requested version is not available.
            LabelNotFound: The label is not assigned.
            SignatureNotFound: The signature does not exist.
            InvalidInput: Missing/extra inputs, wrong dtypes or shapes.
            Overloaded: The batch queue is full.
            DeadlineExceeded: ``timeout`` elapsed.
        """
        raise NotImplementedError

    async def classify(
        self,
        request: ClassifyRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> ClassifyResponse:
        """Run a Classify call (same errors as :meth:`predict`)."""
        raise NotImplementedError

    async def regress(
        self,
        request: RegressRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> RegressResponse:
        """Run a Regress call (same errors as :meth:`predict`)."""
        raise NotImplementedError

    async def multi_inference(
        self,
        request: MultiInferenceRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> MultiInferenceResponse:
        """Run several classify/regress tasks of one model version on one input.

        Raises:
            InvalidInput: Tasks name different models, repeat a signature, or
                the input is empty.
            Unimplemented: A task's method is neither classify nor regress.
        """
        raise NotImplementedError

    async def metadata(self, spec: ModelSpec, *, protocol: str = "") -> ModelMetadata:
        """Every signature of the resolved version (GetModelMetadata).

        Raises:
            ModelNotFound: No version of the model is available.
            VersionNotFound: The requested version is not available.
            LabelNotFound: The label is not assigned.
        """
        raise NotImplementedError

    async def signature(self, spec: ModelSpec) -> tuple[ResolvedSpec, SignatureInfo]:
        """The signature a request for ``spec`` would run (for the REST codecs).

        Raises:
            ModelNotFound: No version of the model is available.
            VersionNotFound: The requested version is not available.
            LabelNotFound: The label is not assigned.
            SignatureNotFound: The signature does not exist.
        """
        raise NotImplementedError

    async def status(
        self, spec: ModelSpec, *, protocol: str = ""
    ) -> list[VersionStatus]:
        """Every known version's state, or one version's (GetModelStatus).

        As in TF Serving, a label in ``spec`` is ignored and all versions are
        listed.

        Raises:
            ModelNotFound: The model has no known versions.
            VersionNotFound: That version is unknown.
        """
        raise NotImplementedError

    async def reload_config(
        self, config: ModelServerConfig, *, protocol: str = ""
    ) -> None:
        """Replace the served model list (HandleReloadConfigRequest).

        Returns once the new config's versions have been loaded (or failed).

        Raises:
            InvalidConfig: The config is not a ``model_config_list`` or is invalid.
        """
        raise NotImplementedError
