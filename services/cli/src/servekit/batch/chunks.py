"""A chunk: consecutive rows of a job's input, as typed columns or one value a row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from servekit_protocol import json_codec

from servekit.batch.columns import TableColumns


@dataclass
class Chunk:
    """Consecutive rows of the input.

    Attributes:
        start: The job-wide number of the first row.
        instances: One JSON value per row, as sent to the model (an
            ``orjson.Fragment`` holding a JSON Lines row as written); empty when
            ``table`` holds the rows.
        read_errors: Offset in the chunk -> why that row could not be read; its
            instance is then the raw text.
        lines: The JSON Lines rows as read (``None`` for other formats); the
            instances written are these texts.
        sent: What is sent for each row when it differs from its instance: the
            keys (or a table's columns) that no input of the signature takes
            (an id, the label) stay in the output's instance but are not sent.
        table: The rows as typed columns (CSV and Parquet chunks, and JSON
            Lines chunks whose rows share one shape).
        inputs: The model's arrays for the rows that were read, when the
            predictor made them from ``table`` ahead of the model's call.
        body: The request body for the rows that were read, when a remote
            predictor made it ahead of its call.
    """

    start: int
    instances: list[Any]
    read_errors: dict[int, str] = field(default_factory=dict)
    lines: list[bytes] | None = None
    sent: list[Any] | None = None
    table: TableColumns | None = None
    inputs: dict[str, Any] | None = None
    body: bytes | None = None

    def request(self, offset: int) -> Any:
        """What row ``offset`` sends to the model."""
        if self.table is not None:
            return self.table.request(offset)
        return (self.sent if self.sent is not None else self.instances)[offset]

    def instance(self, offset: int) -> Any:
        """Row ``offset``'s instance as the JSON output writes it."""
        if self.table is not None and self.lines is None:
            return self.table.instance(offset)
        return self.instances[offset]

    def instance_value(self, offset: int) -> Any:
        """Row ``offset``'s instance as plain Python values (for CSV/Parquet output)."""
        if self.lines is not None and offset not in self.read_errors:
            return json_codec.loads(self.lines[offset])
        if self.table is not None and self.lines is None:
            return self.table.instance(offset, plain=True)
        value = self.instances[offset]
        if isinstance(value, dict):
            return {key: _plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [_plain(item) for item in value]
        return _plain(value)

    def instance_texts(self, offsets: list[int]) -> list[bytes]:
        """The JSON text of these rows' instances (rows that were read)."""
        if self.lines is not None:
            lines = self.lines
            return [lines[offset] for offset in offsets]
        if self.table is not None:
            return self.table.instance_texts(np.asarray(offsets, dtype=np.intp))
        return [orjson.dumps(self.instances[offset]) for offset in offsets]

    def read_rows(self) -> NDArray[np.intp]:
        """The offsets of the rows that were read, in order, as an array (made
        without a Python int a row when every row was read)."""
        if not self.read_errors:
            return np.arange(len(self), dtype=np.intp)
        return np.asarray(self.read_offsets(), dtype=np.intp)

    def read_offsets(self) -> list[int]:
        """The offsets of the rows that were read, in order."""
        if not self.read_errors:
            return list(range(len(self)))
        return [offset for offset in range(len(self)) if offset not in self.read_errors]

    def __len__(self) -> int:
        return self.table.rows if self.table is not None else len(self.instances)


_TOKENS = {b"NaN": math.nan, b"Infinity": math.inf, b"-Infinity": -math.inf}


def _plain(value: Any) -> Any:
    if isinstance(value, orjson.Fragment):
        # Only the readers make fragments here, and only for these tokens.
        return _TOKENS.get(orjson.dumps(value), math.nan)
    return value
