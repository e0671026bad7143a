"""A model served by a gateway or model server, asked over TF Serving's REST API.

:class:`RemotePredictor` posts row-format ``:predict`` bodies to a gateway or
model server (pinned to the version number a label resolved to when the job
started), retries what says "later", and reads the answer's ``predictions`` as
a client reads them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import httpx
import orjson
from servekit_protocol import json_codec
from servekit_protocol.errors import ProtocolError

from servekit.batch.outcomes import Predictions, RowError
from servekit.batch.predictors import (
    BatchRejected,
    ModelVersion,
    body_of,
    chunk_body,
    predict_splitting,
)
from servekit.batch.schema import InputSchema, value_kind
from servekit.batch.sources import Chunk
from servekit.console import CommandError

RETRIED = frozenset({429, 502, 503, 504})
"""Statuses that say "later", not "never": the request is sent again."""
FATAL = frozenset({401, 403, 404})
"""Statuses no row causes: the job stops (credentials, unknown model or version)."""
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
}


class RemotePredictor:
    """A model served by a gateway or model server, over TF Serving's REST API."""

    def __init__(
        self,
        target: str,
        name: str,
        *,
        version: int | None,
        label: str | None,
        signature: str,
        api_key: str | None,
        retries: int,
        timeout: float,
        concurrency: int,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=target.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._retries = retries
        try:
            metadata = self._metadata(name, version, label)
        except BaseException:
            self._client.close()
            raise
        resolved = int(metadata["model_spec"]["version"])
        signatures = metadata["metadata"]["signature_def"]["signature_def"]
        key = signature or json_codec.DEFAULT_SIGNATURE
        if key not in signatures:
            self._client.close()
            raise CommandError(
                f"{name} version {resolved} has no signature {key!r} "
                f"(it has {', '.join(sorted(signatures))})"
            )
        inputs = signatures[key].get("inputs", {})
        # TF Serving's metadata names the version and its signatures, not the
        # digests of its files: the manifest says so instead of guessing them.
        self.model = ModelVersion(
            name,
            resolved,
            key,
            None,
            {
                "source": "target",
                "url": f"{self._client.base_url}/v1/models/{name}/versions/{resolved}",
                "signature_def_sha256": hashlib.sha256(
                    orjson.dumps(signatures, option=orjson.OPT_SORT_KEYS)
                ).hexdigest(),
                "sha256": "not exposed by the server's model metadata or status",
            },
        )
        self.schema = InputSchema(
            key,
            {
                alias: value_kind(str(info.get("dtype", "DT_STRING")))
                for alias, info in inputs.items()
            },
        )
        self._signature = signature
        # Pinned to the resolved number: a label moved or a version published
        # while the job runs does not mix two versions in one output.
        self._path = f"/v1/models/{name}/versions/{resolved}:predict"

    def _metadata(self, name: str, version: int | None, label: str | None) -> Any:
        path = f"/v1/models/{name}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{label}"
        response = self._send("GET", path + "/metadata", None)
        if response.status_code != HTTPStatus.OK:
            raise CommandError(
                f"{self._client.base_url}{path}/metadata answered "
                f"{response.status_code}: {_error_text(response)}"
            )
        return response.json()

    def prepare_chunk(self, chunk: Chunk) -> None:
        """Build the chunk's request body (in the job's read thread)."""
        offsets = chunk.read_offsets()
        if offsets:
            chunk.body = chunk_body(chunk, offsets, self._signature)

    def predict_chunk(self, chunk: Chunk) -> Predictions:
        offsets = chunk.read_offsets()
        if not offsets:
            return Predictions()
        body = chunk.body
        # Sent once; the chunk, written after its answer, does not keep it.
        chunk.body = None
        if body is None:
            body = chunk_body(chunk, offsets, self._signature)
        outcomes: list[Any]
        try:
            outcomes = self._post(body, len(offsets))
        except BatchRejected as exc:
            if len(offsets) == 1:
                outcomes = [RowError(exc.status, exc.message)]
            else:
                # Which rows the model refuses, and why, is found in halves.
                instances = [chunk.request(offset) for offset in offsets]
                middle = len(instances) // 2
                outcomes = predict_splitting(
                    instances[:middle], self._run
                ) + predict_splitting(instances[middle:], self._run)
        return Predictions(dict(zip(offsets, outcomes, strict=True)))

    def _run(self, instances: Sequence[Any]) -> list[Any]:
        return self._post(body_of(instances, self._signature), len(instances))

    def _post(self, body: bytes, rows: int) -> list[Any]:
        response = self._send("POST", self._path, body)
        status = response.status_code
        if status == HTTPStatus.OK:
            predictions: list[Any] = json_codec.loads(response.content)["predictions"]
            if len(predictions) != rows:
                raise CommandError(
                    f"{self._path}: {len(predictions)} predictions for {rows} instances"
                )
            return predictions
        if (
            status in FATAL
            or status in RETRIED
            or status > HTTPStatus.INTERNAL_SERVER_ERROR
        ):
            raise CommandError(
                f"{self._client.base_url}{self._path} answered {status}: "
                f"{_error_text(response)}"
            )
        raise BatchRejected(STATUS_NAMES.get(status, "UNKNOWN"), _error_text(response))

    def _send(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        delay = 0.2
        for attempt in range(self._retries + 1):
            try:
                response = self._client.request(
                    method,
                    path,
                    content=body,
                    headers={"content-type": "application/json"} if body else None,
                )
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    raise CommandError(
                        f"{self._client.base_url}{path}: {type(exc).__name__}: {exc} "
                        f"(after {attempt + 1} attempts)"
                    ) from exc
            else:
                if response.status_code not in RETRIED or attempt == self._retries:
                    return response
                delay = max(delay, _retry_after(response))
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._client.close()


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), 30.0)
    except ValueError:
        return 0.0


def _error_text(response: httpx.Response) -> str:
    try:
        document = json_codec.loads(response.content)
    except ProtocolError:
        return response.text[:512]
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return response.text[:512]
