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
- ``ready()`` is true between the end of ``start`` and the beginning of ``stop``
  while every configured model is settled (see :meth:`DataPlane.ready`);
  ``live()`` until ``stop`` finished.
- Inference methods take keyword-only ``protocol`` (``"rest"``, ``"grpc"`` or ``"grpc-web"``, a
  metrics label) and ``timeout`` (seconds left for the call; ``None`` = no limit).
  Inference runs in a thread pool (or in the batcher's), except unbatched calls
  proven short, which run on the event loop (:mod:`modelserver.execution`).
- ``signature(spec)`` gives the REST codecs the input/output dtypes they need to
  parse the row/columnar JSON formats before calling ``predict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from servekit_protocol.json_codec import offload as json_offload
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.config import (
    from_model_server_config,
    load_model_server_config,
    single_model_config,
)
from modelserver.errors import InvalidInput, ModelNotReady, ServingError
from modelserver.execution import Executor
from modelserver.multiinference import check_tasks, prepare_tasks, task_results
from modelserver.observability.requests import Observation, observe_request
from modelserver.registry.loader import VersionLoader
from modelserver.registry.registry import ModelRegistry, Servable
from modelserver.registry.watcher import Watcher
from modelserver.runtimes.base import Runtime
from modelserver.types import (
    Api,
    ClassifyRequest,
    ClassifyResponse,
    ExampleColumns,
    Examples,
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
    Tensor,
    VersionStatus,
)

if TYPE_CHECKING:
    from servekit_protocol.messages import ModelServerConfig

    from modelserver.observability.metrics import Metrics
    from modelserver.settings import Settings

logger = logging.getLogger(__name__)

Prepared = TypeVar("Prepared")

EXAMPLES_PREPARED_ON_THE_LOOP = 1024
"""Examples up to which a Classify, Regress or MultiInference call's examples
are turned into the model's inputs on the event loop; more are turned in a
thread. TensorFlow's runtime rebuilds a dict an example from a worker's
columns and serializes every example again, once a task (about 10 µs an
example of a few features): 200,000 examples held the loop for seconds. The
thread still takes the GIL, but hands it back to the loop every switch
interval (5 ms); the count is bounded by the request's tensor limits."""

Result = TypeVar("Result")


async def _post_processed(
    convert: Callable[[], Result], outputs: Iterable[Tensor], threshold: int
) -> Result:
    """``convert()`` (a model's outputs turned into classifications or
    regression values), in a thread when ``outputs`` hold ``threshold``
    elements or more: checking and rounding through float32 (and a
    classifier's labels) hold the loop tens of milliseconds from about
    100,000 examples, seconds at the request limits. Like the answers the protocols write, and
    from the same setting (``--rest_api_json_answer_offload_elements``)."""
    if sum(int(tensor.size) for tensor in outputs) < threshold:
        return convert()
    return await asyncio.to_thread(convert)


async def _prepared(prepare: Callable[[], Prepared], examples: Examples) -> Prepared:
    """``prepare()``, in a thread when ``examples`` are many."""
    rows = examples.rows if isinstance(examples, ExampleColumns) else len(examples)
    if rows <= EXAMPLES_PREPARED_ON_THE_LOOP:
        return prepare()
    return await asyncio.to_thread(prepare)


class DataPlane:
    """Resolves model specs to loaded versions and runs the APIs on them."""

    # The defaults until __init__ reads the settings (subclasses that replace
    # __init__, as test doubles do, keep them).
    _tensor_limits = TensorLimits()
    _post_processing_threshold = json_offload.DEFAULT_ANSWER_THRESHOLD_ELEMENTS

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._executor = Executor(settings, metrics)
        self._load_executor = ThreadPoolExecutor(
            max_workers=max(1, settings.num_load_threads), thread_name_prefix="load"
        )
        self._registry = ModelRegistry(
            loader=VersionLoader(settings),
            load_executor=self._load_executor,
            metrics=metrics,
            num_load_threads=settings.num_load_threads,
            max_load_retries=settings.max_num_load_retries,
            load_retry_interval_seconds=settings.load_retry_interval_micros / 1e6,
            allow_labels_for_unavailable=(
                settings.allow_version_labels_for_unavailable_models
            ),
            on_unload=self._executor.close_version,
        )
        self._config_file = (
            Path(settings.model_config_file).absolute()
            if settings.model_config_file
            else None
        )
        self._watcher: Watcher | None = None
        self._tensor_limits = TensorLimits(
            max_elements=settings.max_request_tensor_elements,
            max_bytes=settings.max_request_tensor_bytes,
        )
        self._post_processing_threshold = settings.rest_api_json_answer_offload_elements
        self._ready = False
        self._live = True
        self._stopping = False

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> DataPlane:
        """Build the dataplane, its registry, watcher and batchers from settings."""
        return cls(settings, metrics)

    @property
    def tensor_limits(self) -> TensorLimits:
        """The most one request's tensors may hold together; the protocol
        adapters check it before decoding any."""
        return self._tensor_limits

    @property
    def registry(self) -> ModelRegistry:
        """The versions being served (for status pages and tests)."""
        return self._registry

    # --- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the configured models and start polling for changes.

        Raises:
            InvalidConfig: The model config file cannot be read or is invalid.
        """
        settings = self._settings
        if self._config_file is not None:
            configs = await asyncio.to_thread(
                load_model_server_config, self._config_file
            )
        else:
            configs = single_model_config(settings.model_name, settings.model_base_path)
        logger.info("Loading %d model(s)", len(configs))
        try:
            await self._registry.apply_config(configs)
        except ServingError as exc:
            # TF Serving refuses to start on a label it cannot apply; servekit
            # serves the models and reports the label problem.
            logger.error("Initial config only partly applied: %s", exc)
        self._watcher = Watcher(
            self._registry,
            file_system_poll_seconds=settings.file_system_poll_wait_seconds,
            config_file=self._config_file,
            config_poll_seconds=settings.model_config_file_poll_wait_seconds,
            initial_config=configs,
        )
        self._watcher.start()
        self._ready = True

    async def stop(self) -> None:
        """Stop polling, drain in-flight requests and unload every version."""
        self._ready = False
        self._stopping = True
        if self._watcher is not None:
            await self._watcher.stop()
        await self._registry.close()
        await self._executor.close()
        # Joining the pool off the loop: a load may still be finishing.
        await asyncio.to_thread(self._load_executor.shutdown, wait=True)
        self._live = False

    def ready(self) -> bool:
        """Whether the initial loads settled and no configured model waits for a
        version (one that serves stays ready while a newer version loads; see
        ``ModelRegistry.unsettled_models`` and the README's "Readiness")."""
        return self._ready and not self.waiting_for()

    def waiting_for(self) -> list[str]:
        """The configured models readiness waits for (empty when ready)."""
        return self._registry.unsettled_models(serving_counts=True)

    def live(self) -> bool:
        """Whether the process should be kept alive (false once stopped)."""
        return self._live

    # --- inference ----------------------------------------------------------------

    def _observe(
        self, model: str, api: Api, protocol: str, version_text: str = ""
    ) -> contextlib.AbstractContextManager[Observation]:
        return observe_request(self._metrics, model, api, protocol, version_text)

    @contextlib.contextmanager
    def _acquired(
        self, spec: ModelSpec, observation: Observation
    ) -> Iterator[tuple[Servable, Runtime]]:
        """Resolve ``spec`` and hold its runtime, so an unload waits for the call."""
        servable = self._resolve(spec)
        observation.version_text = servable.version_text
        runtime = servable.acquire()
        try:
            yield servable, runtime
        finally:
            servable.release()

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
        spec = request.spec
        with (
            self._observe(spec.name, Api.PREDICT, protocol) as observation,
            self._acquired(spec, observation) as (servable, runtime),
        ):
            call = runtime.prepare_predict(
                spec.signature_name, request.inputs, request.output_filter
            )
            outputs = await self._executor.run(servable, runtime, call, timeout)
            return PredictResponse(
                ResolvedSpec(spec.name, servable.version, call.signature_name), outputs
            )

    async def classify(
        self,
        request: ClassifyRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> ClassifyResponse:
        """Run a Classify call (same errors as :meth:`predict`)."""
        spec = request.spec
        with (
            self._observe(spec.name, Api.CLASSIFY, protocol) as observation,
            self._acquired(spec, observation) as (servable, runtime),
        ):
            call = await _prepared(
                lambda: runtime.prepare_classify(
                    spec.signature_name, request.examples, request.context
                ),
                request.examples,
            )
            outputs = await self._executor.run(servable, runtime, call, timeout)
            results = await _post_processed(
                lambda: runtime.to_classifications(call, outputs),
                outputs.values(),
                self._post_processing_threshold,
            )
            return ClassifyResponse(
                ResolvedSpec(spec.name, servable.version, call.signature_name), results
            )

    async def regress(
        self,
        request: RegressRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> RegressResponse:
        """Run a Regress call (same errors as :meth:`predict`)."""
        spec = request.spec
        with (
            self._observe(spec.name, Api.REGRESS, protocol) as observation,
            self._acquired(spec, observation) as (servable, runtime),
        ):
            call = await _prepared(
                lambda: runtime.prepare_regress(
                    spec.signature_name, request.examples, request.context
                ),
                request.examples,
            )
            outputs = await self._executor.run(servable, runtime, call, timeout)
            results = await _post_processed(
                lambda: runtime.to_regressions(call, outputs),
                outputs.values(),
                self._post_processing_threshold,
            )
            return RegressResponse(
                ResolvedSpec(spec.name, servable.version, call.signature_name), results
            )

    async def multi_inference(
        self,
        request: MultiInferenceRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> MultiInferenceResponse:
        """Run several classify/regress tasks of one model version on one input.

        As in TF Serving, every task must name the same model, no signature may
        repeat, and the version is resolved from the first task's spec.

        Raises:
            InvalidInput: Tasks name different models, repeat a signature, or
                the input is empty.
            Unimplemented: A task's method is neither classify nor regress.
        """
        name = request.tasks[0].spec.name if request.tasks else ""
        with self._observe(name, Api.MULTI_INFERENCE, protocol) as observation:
            check_tasks(request)
            with self._acquired(request.tasks[0].spec, observation) as (
                servable,
                runtime,
            ):
                calls = await _prepared(
                    lambda: prepare_tasks(request, runtime), request.examples
                )
                outputs = await asyncio.gather(
                    *(
                        self._executor.run(servable, runtime, call, timeout)
                        for _, call in calls
                    )
                )
                results = await _post_processed(
                    lambda: task_results(
                        name, servable.version, runtime, calls, outputs
                    ),
                    (tensor for output in outputs for tensor in output.values()),
                    self._post_processing_threshold,
                )
            return MultiInferenceResponse(results)

    def _resolve(self, spec: ModelSpec) -> Servable:
        if self._stopping:
            raise ModelNotReady("The server is shutting down")
        if not spec.name:
            raise InvalidInput("ModelSpec has no name specified.")
        return self._registry.resolve(spec)

    # --- metadata and management ----------------------------------------------------

    async def metadata(self, spec: ModelSpec, *, protocol: str = "") -> ModelMetadata:
        """Every signature of the resolved version (GetModelMetadata).

        Raises:
            ModelNotFound: No version of the model is available.
            VersionNotFound: The requested version is not available.
            LabelNotFound: The label is not assigned.
        """
        with self._observe(spec.name, Api.METADATA, protocol) as observation:
            servable = self._resolve(spec)
            observation.version_text = servable.version_text
            runtime = servable.runtime
            if runtime is None:
                servable.acquire()  # raises: unloaded meanwhile
                raise AssertionError("unreachable")
            return ModelMetadata(
                ResolvedSpec(spec.name, servable.version, ""), runtime.signatures
            )

    async def signature(self, spec: ModelSpec) -> tuple[ResolvedSpec, SignatureInfo]:
        """The signature a request for ``spec`` would run (for the REST codecs).

        Raises:
            ModelNotFound: No version of the model is available.
            VersionNotFound: The requested version is not available.
            LabelNotFound: The label is not assigned.
            SignatureNotFound: The signature does not exist.
        """
        servable = self._resolve(spec)
        runtime = servable.runtime
        if runtime is None:
            servable.acquire()  # raises: unloaded meanwhile
            raise AssertionError("unreachable")
        key, info = runtime.signature(spec.signature_name)
        return ResolvedSpec(spec.name, servable.version, key), info

    async def status(
        self, spec: ModelSpec, *, protocol: str = ""
    ) -> list[VersionStatus]:
        """Every known version's state, or one version's (GetModelStatus).

        A label in ``spec`` answers the version it points at, whatever that
        version's state. (TF Serving's GetModelStatusImpl ignores the label and
        lists every version; servekit answers what the client asked for, and
        an unknown label gets the error a Predict on it gets.)

        Raises:
            ModelNotFound: The model has no known versions.
            VersionNotFound: That version is unknown.
            LabelNotFound: The label is not assigned.
        """
        version_text = "" if spec.version is None else str(spec.version)
        with self._observe(spec.name, Api.STATUS, protocol, version_text):
            if not spec.name:
                raise InvalidInput("Missing model name in request.")
            version = spec.version
            if spec.label is not None:
                version = self._registry.labelled_version(spec.name, spec.label)
            return self._registry.statuses(spec.name, version)

    async def reload_config(
        self, config: ModelServerConfig, *, protocol: str = ""
    ) -> None:
        """Replace the served model list (HandleReloadConfigRequest).

        Returns once the new config's versions have been loaded (or failed). An
        empty config is ignored, as in TF Serving. Relative base paths are
        resolved against the model config file's folder (the working directory
        without one).

        Raises:
            InvalidConfig: The config is not a ``model_config_list`` or is invalid.
            FailedPrecondition: A label points at a version that is not AVAILABLE.
        """
        with self._observe("", Api.RELOAD_CONFIG, protocol):
            if config.WhichOneof("config") is None:
                logger.info("Taking no action for empty config.")
                return
            base_dir = (
                self._config_file.parent
                if self._config_file is not None
                else Path.cwd()
            )
            configs = from_model_server_config(config, base_dir=base_dir)
            await self._registry.apply_config(configs)
