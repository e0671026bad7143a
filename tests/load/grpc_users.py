"""The gRPC user: TF Serving's `PredictionService/Predict`, in Locust's statistics.

gRPC's C core does its own I/O; `init_gevent()` makes it cooperate with gevent, and it
must run before the first channel exists (cf. Locust's `examples/grpc/grpc_user.py`).
Each call fires Locust's `request` event itself, so gRPC requests appear in the
same statistics, CSVs and reports as HTTP ones. Messages come from
`servekit_protocol`, so no TensorFlow is imported.
"""

from __future__ import annotations

from locust import User, task

import itertools
import logging
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import gevent.lock
import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from google.protobuf.json_format import MessageToDict

from servekit_protocol import messages
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.metadata import unpack_signature_def_map
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray

from payloads import (
    InputSchema,
    build_batches,
    describe,
    schema_from_signature_defs,
)
from settings import LoadSettings
from sources import manifest_schema

# Before any channel exists, or gRPC calls would block the whole gevent hub.
grpc_gevent.init_gevent()

logger = logging.getLogger(__name__)

METADATA_TIMEOUT_SECONDS = 10.0


class GrpcStatusError(Exception):
    """A failed call, named by its status code and details only.

    Locust groups failures by their text; the RpcError's own text carries a
    timestamp, which would make every failure a group of its own.
    """

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GrpcStatusError:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return cls(f"{code.name if code else 'UNKNOWN'}: {details}")


def grpc_target(host: str) -> str:
    """`host:port` from Locust's host, which may carry a `grpc://` scheme."""
    for scheme in ("grpc://", "http://", "https://"):
        if host.startswith(scheme):
            return host[len(scheme) :].rstrip("/")
    return host.rstrip("/")


def model_spec(settings: LoadSettings, signature: str) -> messages.ModelSpec:
    """The ModelSpec naming the model, its version or label, and the signature."""
    spec = messages.ModelSpec(name=settings.model, signature_name=signature)
    if settings.version is not None:
        spec.version.value = settings.version
    elif settings.label is not None:
        spec.version_label = settings.label
    return spec


def call_metadata(settings: LoadSettings) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the API key, when one is set."""
    if settings.api_key is None:
        return ()
    return (("authorization", f"Bearer {settings.api_key}"),)


def grpc_schema(settings: LoadSettings, target: str) -> InputSchema:
    """The schema from `GetModelMetadata` (signature_def).

    Raises:
        SchemaError: the call failed or the answer lacks the signature.
    """
    from payloads import SchemaError

    request = messages.GetModelMetadataRequest(
        model_spec=model_spec(settings, ""), metadata_field=["signature_def"]
    )
    with grpc.insecure_channel(target) as channel:
        try:
            response = PredictionServiceStub(channel).GetModelMetadata(
                request,
                timeout=METADATA_TIMEOUT_SECONDS,
                metadata=call_metadata(settings),
            )
        except grpc.RpcError as exc:
            raise SchemaError(f"GetModelMetadata at {target}: {exc}") from exc
    if "signature_def" not in response.metadata:
        raise SchemaError(f"GetModelMetadata at {target}: no signature_def")
    try:
        signature_map = unpack_signature_def_map(response.metadata["signature_def"])
    except InvalidArgument as exc:
        raise SchemaError(f"GetModelMetadata at {target}: {exc}") from exc
    as_json: dict[str, Any] = MessageToDict(
        signature_map, preserving_proto_field_name=True
    )
    return schema_from_signature_defs(
        as_json.get("signature_def", {}),
        settings.signature,
        source=f"gRPC metadata of {settings.model!r}",
    )


def predict_request(
    settings: LoadSettings, schema: InputSchema, columns: Mapping[str, np.ndarray]
) -> messages.PredictRequest:
    """A PredictRequest with one TensorProto per input (text goes as UTF-8 bytes)."""
    request = messages.PredictRequest(model_spec=model_spec(settings, schema.signature))
    for name, array in columns.items():
        from_ndarray(array, into=request.inputs[name], packed=True)
    return request


class GrpcModelUser(User):
    """Holds a channel and a PredictionService stub; reports calls to Locust."""

    abstract = True
    settings: ClassVar[LoadSettings]
    schema: ClassVar[InputSchema | None] = None
    _requests: ClassVar[list[messages.PredictRequest]] = []
    _prepare_lock: ClassVar[gevent.lock.Semaphore] = gevent.lock.Semaphore()

    @classmethod
    def configure(cls, settings: LoadSettings) -> None:
        """Bind the settings; called once by the locustfile on import."""
        cls.settings = settings

    @classmethod
    def prepare(cls, host: str) -> list[messages.PredictRequest]:
        """Build this process's request pool once.

        Raises:
            SchemaError: no usable schema could be found.
        """
        with cls._prepare_lock:
            if not cls._requests:
                schema = manifest_schema(cls.settings) or grpc_schema(
                    cls.settings, grpc_target(host)
                )
                batches = build_batches(
                    schema, cls.settings.batch_size, cls.settings.seed
                )
                cls._requests = [
                    predict_request(cls.settings, schema, columns)
                    for columns in batches
                ]
                cls.schema = schema
                logger.info(
                    "payloads from %s, signature %s, batch %d: %s",
                    schema.source,
                    schema.signature,
                    cls.settings.batch_size,
                    "; ".join(describe(schema)),
                )
        return cls._requests

    def on_start(self) -> None:
        requests = self.prepare(self.host or "")
        start = random.randrange(len(requests))
        self._cycle: Iterator[messages.PredictRequest] = itertools.islice(
            itertools.cycle(requests), start, None
        )
        self._channel = grpc.insecure_channel(grpc_target(self.host or ""))
        self._stub = PredictionServiceStub(self._channel)
        self._metadata = call_metadata(self.settings)

    def on_stop(self) -> None:
        self._channel.close()

    def report(
        self,
        name: str,
        start: float,
        started: float,
        response_length: int,
        exception: Exception | None,
    ) -> None:
        """Fire Locust's request event for one call."""
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            start_time=start,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response_length,
            response=None,
            context={},
            exception=exception,
        )


class GrpcPredictUser(GrpcModelUser):
    """Calls `Predict` and checks one output row per input row."""

    @task
    def predict(self) -> None:
        request = next(self._cycle)
        name = f"Predict {self.settings.model}"
        start = time.time()
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self._stub.Predict(
                request, timeout=self.settings.timeout_seconds, metadata=self._metadata
            )
            length = response.ByteSize()
            exception = self._problem(response)
        except grpc.RpcError as exc:
            exception = GrpcStatusError.from_rpc_error(exc)
        self.report(name, start, started, length, exception)

    def _problem(self, response: messages.PredictResponse) -> Exception | None:
        if not response.outputs:
            return ValueError("answer has no outputs")
        for key, tensor in response.outputs.items():
            dims = tensor.tensor_shape.dim
            if not dims or dims[0].size != self.settings.batch_size:
                sizes = [dim.size for dim in dims]
                return ValueError(f"output {key!r} has shape {sizes}")
        return None
