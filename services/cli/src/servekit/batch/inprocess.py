"""A registry version loaded in this process, answering chunks as ``:predict`` would.

:class:`InProcessPredictor` loads the version with the model server's own loader
(``modelserver.registry.repository.load_runtime``: sha256 checks, ``code/`` on
the import path, the compiled model where the version has one, the runtime the
version calls for). A table chunk's typed columns become the very arrays the
REST codec decodes from the rows' instances (:mod:`servekit.batch.columns`);
other chunks, and columns only the codec can judge, go through the codec itself
as a row-format ``:predict`` body. The arrays go to the runtime's
``prepare_predict`` and ``run``, and the outputs become each row's
``predictions`` entry as the REST answer writes it (:mod:`servekit.batch.answers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from servekit_protocol import json_codec
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import numpy_dtype

from servekit.batch.answers import prediction_texts
from servekit.batch.outcomes import Bulk, Encoded, Outcome, Predictions, RowError
from servekit.batch.predictors import (
    BatchRejected,
    ModelVersion,
    body_of,
    predict_splitting,
)
from servekit.batch.schema import InputSchema, value_kind
from servekit.batch.sources import Chunk
from servekit.console import CommandError


class InProcessPredictor:
    """A registry version loaded in this process by the model server's loader.

    ``session_threads``: a TensorFlow version's intra- and inter-op thread pools
    (0: TensorFlow's default, one thread a core), as the model server's
    ``--tensorflow_intra_op_parallelism`` sets them; other runtimes ignore it.
    """

    def __init__(
        self,
        registry: Path,
        name: str,
        version: int,
        signature: str,
        *,
        session_threads: int = 0,
    ) -> None:
        from modelregistry import MANIFEST_FILE, read_manifest
        from modelserver.errors import ServingError
        from modelserver.registry.repository import LoadOptions, load_runtime
        from modelserver.runtimes.sklearn import SklearnRuntime

        from servekit.batch import versions

        path = versions.version_dir(registry, name, version)
        try:
            self._runtime = load_runtime(
                name=name,
                version=version,
                path=path,
                platform="",
                options=LoadOptions(
                    intra_op_threads=session_threads, inter_op_threads=session_threads
                ),
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
        # scikit-learn's runtime decodes the codec's UTF-8 bytes to str row by
        # row before anything else; a table's text columns are str already.
        self._text_as_str = isinstance(self._runtime, SklearnRuntime)

    @property
    def runtime(self) -> Any:
        """The loaded runtime (``modelserver.runtimes.base.Runtime``)."""
        return self._runtime

    def prepare_chunk(self, chunk: Chunk) -> None:
        """Build the model's arrays from a table chunk's columns (the matrix of a
        single matrix input, text as the runtime takes it) ahead of its call."""
        if chunk.table is not None:
            rows = chunk.read_rows()
            if len(rows):
                chunk.inputs = chunk.table.model_inputs(
                    self._dtypes, rows, text_as_str=self._text_as_str
                )

    def predict_chunk(self, chunk: Chunk) -> Predictions:
        rows = chunk.read_rows()
        if not len(rows):
            return Predictions()
        if chunk.inputs is None:
            self.prepare_chunk(chunk)
        arrays = chunk.inputs
        # The arrays were made for this call only; the chunk, written after
        # it, does not keep them.
        chunk.inputs = None
        if arrays is None:
            offsets = rows.tolist()
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
        self._run_splitting(arrays, np.arange(len(rows)), rows, answered, refused)
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
        offsets: NDArray[np.intp],
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
                refused[int(offsets[int(positions[0])])] = RowError(
                    exc.status, exc.message
                )
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
