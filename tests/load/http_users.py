# mypy: disable-error-code="no-untyped-call,untyped-decorator"
"""HTTP users: TF Serving's v1 REST API, the Open Inference Protocol (v2), typed endpoints.

`ModelUser` is the abstract validating user (cf. Locust's `examples/rest.py`): one
task posts a pre-built payload and fails the request unless the answer is a 200
whose body holds one prediction per row sent. Subclasses give the path, the body
encoding and the answer check of their protocol.
"""

from __future__ import annotations

from locust import FastHttpUser, task
from locust.contrib.fasthttp import ResponseContextManager

import itertools
import logging
import random
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import gevent.lock
import numpy as np
from typing_extensions import override

from payloads import (
    DEFAULT_SIGNATURE,
    InputSchema,
    build_batches,
    describe,
    typed_predict_body,
    v1_predict_body,
    v2_infer_body,
)
from settings import LoadSettings, SettingsError
from sources import (
    auth_headers,
    http_schema,
    manifest_schema,
    v1_model_path,
    v2_model_path,
)

logger = logging.getLogger(__name__)

MAX_ERROR_BODY = 300


class ModelUser(FastHttpUser):
    """Posts predictions for one model and checks every answer."""

    abstract = True
    settings: ClassVar[LoadSettings]
    schema: ClassVar[InputSchema | None] = None
    _bodies: ClassVar[list[bytes]] = []
    _prepare_lock: ClassVar[gevent.lock.Semaphore] = gevent.lock.Semaphore()

    @classmethod
    def configure(cls, settings: LoadSettings) -> None:
        """Bind the settings; called once by the locustfile on import."""
        cls.settings = settings
        cls.network_timeout = settings.timeout_seconds
        cls.connection_timeout = settings.timeout_seconds

    @classmethod
    def prepare(cls, host: str) -> list[bytes]:
        """Build this process's payload pool once (the schema may need the server).

        Raises:
            SchemaError: no usable schema could be found.
        """
        with cls._prepare_lock:
            if not cls._bodies:
                schema = manifest_schema(cls.settings) or http_schema(
                    cls.settings, host
                )
                batches = build_batches(
                    schema, cls.settings.batch_size, cls.settings.seed
                )
                cls._bodies = [cls.encode(schema, columns) for columns in batches]
                cls.schema = schema
                logger.info(
                    "payloads from %s, signature %s, batch %d: %s",
                    schema.source,
                    schema.signature,
                    cls.settings.batch_size,
                    "; ".join(describe(schema)),
                )
        return cls._bodies

    @classmethod
    def encode(cls, schema: InputSchema, columns: Mapping[str, np.ndarray]) -> bytes:
        """One request body for a batch."""
        raise NotImplementedError

    @classmethod
    def path(cls) -> str:
        """Where the body is posted; also the statistics row's name."""
        raise NotImplementedError

    def problem(self, body: Any) -> str | None:
        """What is wrong with a 200 answer's JSON body, or None."""
        raise NotImplementedError

    def on_start(self) -> None:
        bodies = self.prepare(self.host or "")
        # Users start at different places in the pool so they do not send in lockstep.
        start = random.randrange(len(bodies))
        self._cycle: Iterator[bytes] = itertools.islice(
            itertools.cycle(bodies), start, None
        )
        self._headers = {
            "Content-Type": "application/json",
            **auth_headers(self.settings),
        }

    @task
    def predict(self) -> None:
        path = self.path()
        with self.client.post(
            path,
            # Bytes go out as they are; Locust's annotation only names str.
            data=next(self._cycle),  # type: ignore[arg-type]
            headers=self._headers,
            name=path,
            catch_response=True,
        ) as response:
            self._judge(response)

    def _judge(self, response: ResponseContextManager) -> None:
        if not response.status_code:
            # No answer at all: refused, reset or timed out. The error comes from
            # the failed request's stand-in object, copied onto this one.
            response.failure(f"no response: {getattr(response, 'error', None)!r}")
            return
        if response.status_code != 200:
            text = (response.text or "")[:MAX_ERROR_BODY] if response.content else ""
            response.failure(f"HTTP {response.status_code} {text}".strip())
            return
        try:
            body = response.json()
        except ValueError:
            response.failure("answer is not JSON")
            return
        problem = self.problem(body)
        if problem is None:
            response.success()
        else:
            response.failure(problem)


def _count_problem(predictions: Any, expected: int, what: str) -> str | None:
    if not isinstance(predictions, list):
        return f"answer has no {what} list"
    if len(predictions) != expected:
        return f"{len(predictions)} {what} for {expected} rows"
    return None


class RestPredictUser(ModelUser):
    """TF Serving's REST API: `POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict`."""

    @classmethod
    def encode(cls, schema: InputSchema, columns: Mapping[str, np.ndarray]) -> bytes:
        return v1_predict_body(columns, schema.signature)

    @classmethod
    def path(cls) -> str:
        return f"{v1_model_path(cls.settings)}:predict"

    def problem(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "answer is not a JSON object"
        return _count_problem(
            body.get("predictions"), self.settings.batch_size, "predictions"
        )


class V2InferUser(ModelUser):
    """Open Inference Protocol: `POST /v2/models/{m}[/versions/{v}]/infer`."""

    @classmethod
    def encode(cls, schema: InputSchema, columns: Mapping[str, np.ndarray]) -> bytes:
        return v2_infer_body(columns, schema)

    @classmethod
    def path(cls) -> str:
        return f"{v2_model_path(cls.settings)}/infer"

    def problem(self, body: Any) -> str | None:
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list) or not outputs:
            return "answer has no outputs"
        for output in outputs:
            shape = output.get("shape") if isinstance(output, dict) else None
            if not shape or shape[0] != self.settings.batch_size:
                return f"output shape {shape} does not start with the batch size"
        return None


class TypedPredictUser(ModelUser):
    """The gateway's typed endpoint: `POST /models/{m}[/versions/{v}]/predict`.

    Rows name their features; the answer is `{"model", "version", "predictions"}`.
    Typed endpoints have no label form: the gateway's routes pick the version.
    """

    @classmethod
    @override
    def configure(cls, settings: LoadSettings) -> None:
        if settings.label is not None:
            raise SettingsError("typed endpoints take no label; use SERVEKIT_VERSION")
        super().configure(settings)

    @classmethod
    @override
    def encode(cls, schema: InputSchema, columns: Mapping[str, np.ndarray]) -> bytes:
        return typed_predict_body(columns)

    @classmethod
    def path(cls) -> str:
        settings = cls.settings
        path = f"/models/{settings.model}"
        if settings.version is not None:
            path += f"/versions/{settings.version}"
        suffix = (
            "predict" if settings.signature == DEFAULT_SIGNATURE else settings.signature
        )
        return f"{path}/{suffix}"

    def problem(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "answer is not a JSON object"
        return _count_problem(
            body.get("predictions"), self.settings.batch_size, "predictions"
        )
