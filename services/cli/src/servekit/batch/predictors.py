"""Turn a chunk of rows into one outcome per row that was read, in order.

A batch job's predictions are the online endpoint's for the same version:

- :class:`InProcessPredictor` loads the version with the model server's own
  loader (``modelserver.registry.repository.load_runtime``: sha256 checks,
  ``code/`` on the import path, the compiled model where the version has one,
  the runtime the version calls for). A table chunk's typed columns become the
  very arrays the REST codec decodes from the rows' instances
  (:mod:`servekit.batch.columns`); other chunks, and columns only the codec can
  judge, go through the codec itself as a row-format ``:predict`` body. The
  arrays go to the runtime's ``prepare_predict`` and ``run``, and the outputs
  become each row's ``predictions`` entry as the REST answer writes it
  (:mod:`servekit.batch.answers`).
- :class:`RemotePredictor` posts row-format ``:predict`` bodies to a gateway or
  model server and reads the answer's ``predictions`` as a client reads them.

A batch the model rejects as a whole is split in halves until the rows at
fault are alone, so one bad row costs its own prediction only (its reason is
the model's error message) and the good rows stay in batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import orjson
from servekit_protocol import json_codec
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import numpy_dtype

from servekit.batch.answers import prediction_texts
from servekit.batch.outcomes import Bulk, Encoded, Outcome, Predictions, RowError
from servekit.batch.schema import InputSchema, value_kind
from servekit.batch.sources import Chunk
from servekit.console import CommandError


@dataclass(frozen=True)
class ModelVersion:
    """The version a job runs, as its manifest records it."""

    name: str
    version: int
    signature_name: str
    sha256: dict[str, str] | None
    """The manifest's digests of the version's files (``None``: not known)."""
    identity: dict[str, Any] = field(default_factory=dict)
    """Where the version was read and what identifies it there."""


class Predictor(Protocol):
    """One resolved model version."""

    model: ModelVersion
    schema: InputSchema

    def predict_chunk(self, chunk: Chunk) -> Predictions:
        """An outcome for each row of ``chunk`` that was read.

        Raises:
            CommandError: The job cannot go on (the endpoint is down, refuses
                the credentials, or the model failed for a reason no row causes).
        """
        ...

    def close(self) -> None:
        """Release the model or the connections."""
        ...


class BatchRejected(Exception):
    """The whole batch was refused because of what it holds (HTTP 4xx-like)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def body_of(instances: Sequence[Any], signature_name: str) -> bytes:
    """The row-format ``:predict`` body for ``instances``."""
    document: dict[str, Any] = {"instances": list(instances)}
    if signature_name:
        document["signature_name"] = signature_name
    return orjson.dumps(document)


def predict_rows(
    chunk: Chunk, predict: Callable[[Sequence[Any]], list[Outcome]]
) -> Predictions:
    """``predict`` on the requests of the chunk's rows that were read."""
    offsets = chunk.read_offsets()
    if not offsets:
        return Predictions()
    instances = [chunk.request(offset) for offset in offsets]
    return Predictions(dict(zip(offsets, predict(instances), strict=True)))


def predict_splitting(
    instances: Sequence[Any], call: Callable[[Sequence[Any]], list[Any]]
) -> list[Outcome]:
    """``call`` on the batch; on :class:`BatchRejected`, on each half, down to rows."""
    try:
        return call(instances)
    except BatchRejected as exc:
        if len(instances) == 1:
            return [RowError(exc.status, exc.message)]
    middle = len(instances) // 2
    return predict_splitting(instances[:middle], call) + predict_splitting(
        instances[middle:], call
    )


class InProcessPredictor:
    """A registry version loaded in this process by the model server's loader."""

    def __init__(self, registry: Path, name: str, version: int, signature: str) -> None:
        from modelregistry import MANIFEST_FILE, read_manifest
        from modelserver.errors import ServingError
        from modelserver.registry.repository import LoadOptions, load_runtime

        from servekit.batch import versions

        path = versions.version_dir(registry, name, version)
        try:
            self._runtime = load_runtime(
                name=name,
                version=version,
                path=path,
                platform="",
                options=LoadOptions(),
            )
        except ServingError as exc:
            raise CommandError(f"{name} version {version} cannot load: {exc}") from exc
        try:
            key, info = self._runtime.predict_signature(signature)
        except ServingError as exc:
            self._runtime.close()
            raise CommandError(f"{name} version {version}: {exc}") from exc
        digests = (
            {
                relative: digest.sha256
                for relative, digest in read_manifest(path).files.items()
            }
            if (path / MANIFEST_FILE).is_file()
            else {}
        )
        self.model = ModelVersion(
            name, version, key, digests, {"source": "registry", "path": str(path)}
        )
        self.schema = InputSchema(
            key, {alias: value_kind(spec.dtype) for alias, spec in info.inputs.items()}
        )
        self._specs = {
            alias: json_codec.TensorSpec(spec.dtype, None)
            for alias, spec in info.inputs.items()
        }
        self._dtypes = {
            alias: numpy_dtype(spec.dtype) for alias, spec in info.inputs.items()
        }
        self._error_type = ServingError

    @property
    def runtime(self) -> Any:
        """The loaded runtime (``modelserver.runtimes.base.Runtime``)."""
        return self._runtime

    def predict_chunk(self, chunk: Chunk) -> Predictions:
        offsets = chunk.read_offsets()
        if not offsets:
            return Predictions()
        rows = np.asarray(offsets, dtype=np.intp)
        arrays = (
            chunk.table.model_inputs(self._dtypes, rows)
            if chunk.table is not None
            else None
        )
        if arrays is None:
            instances = [chunk.request(offset) for offset in offsets]
            try:
                arrays = self._parse(instances)
            except BatchRejected:
                # Which rows the codec refuses, and why, is found row by row.
                return Predictions(
                    dict(
                        zip(
                            offsets,
                            predict_splitting(instances, self._run_json),
                            strict=True,
                        )
                    )
                )
        answered: list[tuple[Any, dict[str, Any]]] = []
        refused: dict[int, Outcome] = {}
        self._run_splitting(arrays, np.arange(len(offsets)), offsets, answered, refused)
        return _gathered(rows, answered, refused)

    def _parse(self, instances: Sequence[Any]) -> dict[str, Any]:
        try:
            parsed = json_codec.parse_predict_request(
                body_of(instances, self.model.signature_name), self._specs
            )
        except ProtocolError as exc:
            raise BatchRejected("INVALID_ARGUMENT", exc.message) from exc
        return dict(parsed.inputs)

    def _run_splitting(
        self,
        arrays: dict[str, Any],
        positions: Any,
        offsets: list[int],
        answered: list[tuple[Any, dict[str, Any]]],
        refused: dict[int, Outcome],
    ) -> None:
        """Predict the rows at ``positions`` of ``arrays``; halve what is refused.

        Answered positions land in ``answered`` in ascending order, with the
        call's outputs; the rows refused alone land in ``refused``.
        """
        every = len(positions) == len(offsets)  # the first call: no copy
        try:
            outputs = self._run_arrays(
                arrays if every else {k: v[positions] for k, v in arrays.items()}
            )
        except BatchRejected as exc:
            if len(positions) == 1:
                refused[offsets[int(positions[0])]] = RowError(exc.status, exc.message)
                return
            middle = len(positions) // 2
            for half in (positions[:middle], positions[middle:]):
                self._run_splitting(arrays, half, offsets, answered, refused)
            return
        answered.append((positions, outputs))

    def _run_arrays(self, arrays: dict[str, Any]) -> dict[str, Any]:
        try:
            call = self._runtime.prepare_predict(self.model.signature_name, arrays, ())
            return dict(self._runtime.run(call))
        except ProtocolError as exc:
            raise BatchRejected("INVALID_ARGUMENT", exc.message) from exc
        except self._error_type as exc:
            # Every refusal is narrowed down to rows, failures inside the model
            # too: scikit-learn raises what it raises for one odd value.
            raise BatchRejected(exc.grpc_code.name, exc.message) from exc

    def _run_json(self, instances: Sequence[Any]) -> list[Any]:
        signature = self.model.signature_name
        try:
            parsed = json_codec.parse_predict_request(
                body_of(instances, signature), self._specs
            )
            call = self._runtime.prepare_predict(signature, parsed.inputs, ())
            outputs = self._runtime.run(call)
            answer = json_codec.format_predict_response(outputs, parsed.format)
        except ProtocolError as exc:
            raise BatchRejected("INVALID_ARGUMENT", exc.message) from exc
        except self._error_type as exc:
            # Every refusal is narrowed down to rows, failures inside the model
            # too: scikit-learn raises what it raises for one odd value.
            raise BatchRejected(exc.grpc_code.name, exc.message) from exc
        predictions: list[Any] = json_codec.loads(answer)["predictions"]
        return predictions

    def close(self) -> None:
        self._runtime.close()


def _gathered(
    rows: Any,
    answered: list[tuple[Any, dict[str, Any]]],
    refused: dict[int, Outcome],
) -> Predictions:
    """The model calls' outputs as one :class:`Bulk` for the chunk's answered rows.

    An output that does not have one entry per row of its call cannot be cut
    into rows by position: then each call's rows get their answer's text as the
    REST API writes it.
    """
    if not answered:
        return Predictions(refused)
    aligned = all(
        all(
            np.ndim(output) and len(output) == len(positions)
            for output in outputs.values()
        )
        for positions, outputs in answered
    )
    if not aligned or not answered[0][1]:
        outcomes = dict(refused)
        for positions, outputs in answered:
            answers: list[Outcome]
            try:
                answers = [
                    Encoded(text) for text in prediction_texts(outputs, len(positions))
                ]
            except ProtocolError as exc:
                answers = [RowError("INVALID_ARGUMENT", exc.message)] * len(positions)
            for position, answer in zip(positions.tolist(), answers, strict=True):
                outcomes[int(rows[position])] = answer
        return Predictions(outcomes)
    if len(answered) == 1:
        positions, outputs = answered[0]
        merged = {name: np.asarray(output) for name, output in outputs.items()}
    else:
        positions = np.concatenate([part for part, _ in answered])
        merged = {
            name: np.concatenate([np.asarray(part[name]) for _, part in answered])
            for name in answered[0][1]
        }
    return Predictions(refused, Bulk(rows[positions], merged))


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

    def predict_chunk(self, chunk: Chunk) -> Predictions:
        return predict_rows(
            chunk, lambda instances: predict_splitting(instances, self._run)
        )

    def _run(self, instances: Sequence[Any]) -> list[Any]:
        response = self._send("POST", self._path, body_of(instances, self._signature))
        status = response.status_code
        if status == HTTPStatus.OK:
            predictions: list[Any] = json_codec.loads(response.content)["predictions"]
            if len(predictions) != len(instances):
                raise CommandError(
                    f"{self._path}: {len(predictions)} predictions for "
                    f"{len(instances)} instances"
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
