"""What a predictor makes of a chunk: predictions as arrays, or one outcome per row.

In process, the rows a model call answers keep the call's outputs as arrays
(:class:`Predictions.bulk`), so a writer formats them a column at a time; rows
refused by the model, and every row a remote endpoint answers, carry one
outcome each (:class:`Predictions.outcomes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class RowError:
    """Why one instance has no prediction (``status`` is a gRPC code name)."""

    status: str
    message: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """A prediction already written as JSON text."""

    text: bytes


Outcome = Any
"""A prediction (a JSON value or :class:`Encoded`) or a :class:`RowError`."""


@dataclass(frozen=True)
class Bulk:
    """Rows answered by model calls, with the outputs of those calls.

    Attributes:
        offsets: The rows' offsets in the chunk, ascending.
        outputs: Output name -> the outputs for those rows, row-aligned.
    """

    offsets: NDArray[np.intp]
    outputs: dict[str, NDArray[Any]]


@dataclass
class Predictions:
    """The outcomes of a chunk's rows that were read.

    Attributes:
        outcomes: Offset -> outcome, for every row ``bulk`` does not answer.
        bulk: The rows answered as arrays (``None``: none are).
    """

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    bulk: Bulk | None = None

    def successes(self) -> bool:
        """Whether ``outcomes`` holds a prediction (not only row errors)."""
        return any(not isinstance(item, RowError) for item in self.outcomes.values())
