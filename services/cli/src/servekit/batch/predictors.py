"""What a batch job asks of a model version, and how a refused batch is narrowed down.

A batch job's predictions are the online endpoint's for the same version. Two
predictors give them: :class:`servekit.batch.inprocess.InProcessPredictor`
(the version loaded in this process by the model server's own loader) and
:class:`servekit.batch.remote.RemotePredictor` (``:predict`` requests to a
gateway or model server).

A batch the model rejects as a whole is split in halves until the rows at
fault are alone, so one bad row costs its own prediction only (its reason is
the model's error message) and the good rows stay in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from servekit.batch.columns import KEYED
from servekit.batch.outcomes import Outcome, Predictions, RowError
from servekit.batch.schema import InputSchema
from servekit.batch.sources import Chunk


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

    def prepare_chunk(self, chunk: Chunk) -> None:
        """Do the work on ``chunk`` that needs no model (the job calls it in
        its read thread, beside the model's calls on earlier chunks)."""
        ...

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


def chunk_body(chunk: Chunk, offsets: list[int], signature_name: str) -> bytes:
    """The row-format ``:predict`` body for these rows of ``chunk``: the same
    JSON as :func:`body_of` on their requests.

    Rows that send all they hold are not made Python objects and encoded: a
    JSON Lines row is sent as its line (the same values), a table chunk's rows
    as their texts made a column at a time (:meth:`TableColumns.instance_texts`).
    """
    table = chunk.table
    whole = (
        chunk.sent is None
        if table is None
        else table.layout != KEYED or len(table.sent) == len(table.arrays)
    )
    rows: list[bytes]
    if not whole or (table is None and chunk.lines is None):
        return body_of([chunk.request(offset) for offset in offsets], signature_name)
    if chunk.lines is not None:
        lines = chunk.lines
        rows = [lines[offset] for offset in offsets]
    else:
        assert table is not None
        rows = table.instance_texts(np.asarray(offsets, dtype=np.intp))
    tail = b"]}"
    if signature_name:
        tail = b'],"signature_name":' + orjson.dumps(signature_name) + b"}"
    return b'{"instances":[' + b",".join(rows) + tail


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
