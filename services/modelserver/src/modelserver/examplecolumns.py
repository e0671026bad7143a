"""tf.Examples as columns (:class:`~modelserver.types.ExampleColumns`).

A large Classify, Regress or MultiInference message is decoded in a worker
process; a dict of lists an example would cost as much to send back and rebuild
on the event loop as parsing it there (about 1 µs a feature of an example).
The worker builds one column a feature instead (:func:`from_examples`), which
crosses processes as a few arrays; a scikit-learn signature takes its columns
from them (:func:`single_values`) with the checks, and the messages, of the
dict path, and any other runtime gets the dicts back (:func:`to_examples`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from modelserver.errors import InvalidInput
from modelserver.types import Example, ExampleColumns, FeatureColumn, Tensor


class _Column:
    """One feature's values while the examples are read."""

    __slots__ = ("flat", "kinds", "lengths", "present")

    def __init__(self) -> None:
        self.present: list[int] = []
        self.lengths: list[int] = []
        self.flat: list[Any] = []
        self.kinds: set[type] = set()

    def add(self, index: int, values: list[Any]) -> None:
        self.present.append(index)
        self.lengths.append(len(values))
        self.flat.extend(values)
        if values:
            self.kinds.add(type(values[0]))

    def finish(self, rows: int) -> FeatureColumn:
        values: Tensor
        if self.kinds == {float}:
            values = np.asarray(self.flat, np.float64)
        elif self.kinds == {int}:
            values = np.asarray(self.flat, np.int64)
        else:
            # bytes, or kinds mixed across examples: the Python values as they
            # are, so that a column of them converts as the dict path's list.
            values = np.empty(len(self.flat), dtype=object)
            values[:] = self.flat
        present = (
            None if len(self.present) == rows else np.asarray(self.present, np.int64)
        )
        return FeatureColumn(values, np.asarray(self.lengths, np.int64), present)


def from_examples(
    examples: Iterable[Example], context: Example | None
) -> ExampleColumns:
    """The columns of ``examples``, each merged with ``context`` as
    :func:`~modelserver.runtimes.base.merge_examples` merges them (an
    example's own feature wins)."""
    columns: dict[str, _Column] = {}
    rows = 0
    for index, example in enumerate(examples):
        rows = index + 1
        for name, values in example.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = _Column()
            column.add(index, values)
        if context:
            for name, values in context.items():
                if name not in example:
                    column = columns.get(name)
                    if column is None:
                        column = columns[name] = _Column()
                    column.add(index, values)
    return ExampleColumns(
        rows, {name: column.finish(rows) for name, column in columns.items()}
    )


def _first_irregular(column: FeatureColumn | None, rows: int) -> tuple[int, int]:
    """(index, value count) of the first example that does not hold exactly one
    value of the feature, the count -1 where it has none; (rows, 1) when every
    example holds one."""
    if column is None:
        return (0, -1) if rows else (rows, 1)
    lengths = column.lengths
    first = (rows, 1)
    wrong = np.flatnonzero(lengths != 1)
    if wrong.size:
        position = int(wrong[0])
        index = position if column.present is None else int(column.present[position])
        first = (index, int(lengths[position]))
    present = column.present
    if present is not None:
        gaps = np.flatnonzero(present != np.arange(present.size))
        absent = int(gaps[0]) if gaps.size else present.size
        if absent < first[0]:
            first = (absent, -1)
    return first


def single_values(columns: ExampleColumns, aliases: Sequence[str]) -> dict[str, Tensor]:
    """One array an alias: each example's one value of that feature.

    Raises:
        InvalidInput: An example lacks a feature or holds other than one value
            of it; the first such example, and among its features the first
            of ``aliases``, as the dict path reports it.
    """
    rows = columns.rows
    worst: tuple[int, int, str] | None = None
    for alias in aliases:
        index, count = _first_irregular(columns.features.get(alias), rows)
        if index < rows and (worst is None or index < worst[0]):
            worst = (index, count, alias)
    if worst is not None:
        index, count, alias = worst
        if count < 0:
            raise InvalidInput(f"Example {index} has no feature {alias}")
        raise InvalidInput(
            f"Example {index}: feature {alias} has {count} values; expected 1"
        )
    return {alias: columns.features[alias].values for alias in aliases}


def to_examples(columns: ExampleColumns) -> list[Example]:
    """The examples as dicts (their context merged in), for a runtime that
    takes them so."""
    examples: list[Example] = [{} for _ in range(columns.rows)]
    for name, column in columns.features.items():
        values = column.values.tolist()
        lengths = column.lengths.tolist()
        indices = (
            range(columns.rows) if column.present is None else column.present.tolist()
        )
        start = 0
        for index, length in zip(indices, lengths, strict=True):
            examples[index][name] = values[start : start + length]
            start += length
    return examples
