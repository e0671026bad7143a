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

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.errors import InvalidInput
from modelserver.types import Example, ExampleColumns, FeatureColumn, Tensor


class _Column:
    """One feature's values while the examples are read.

    Numbers go into typed arrays (8 bytes a value, a length and an index an
    example holding the feature) that the column's arrays then share; kept in
    lists they took about 70 bytes a value while the columns were built (a
    list slot and a float object each, and the lists' spare room).
    """

    __slots__ = ("kind", "lengths", "numbers", "objects", "present")

    def __init__(self) -> None:
        self.present = array("q")
        self.lengths = array("q")
        self.kind: type | None = None
        self.numbers: array[Any] | None = None
        self.objects: list[Any] | None = None

    def add(self, index: int, values: list[Any]) -> None:
        self.present.append(index)
        self.lengths.append(len(values))
        if not values:
            return
        kind = type(values[0])
        if self.kind is None:
            self.kind = kind
            if kind is float:
                self.numbers = array("d")
            elif kind is int:
                self.numbers = array("q")
            else:
                self.objects = []
        if self.numbers is not None and kind is self.kind:
            self.numbers.extend(values)
            return
        if self.objects is None:
            # A second kind of list: from here on the Python values as they
            # are (the numbers so far come back as the same floats or ints).
            self.objects = [] if self.numbers is None else self.numbers.tolist()
            self.numbers = None
        self.objects.extend(values)

    def finish(self, rows: int) -> FeatureColumn:
        values: Tensor
        if self.numbers is not None:
            dtype = np.float64 if self.kind is float else np.int64
            values = np.frombuffer(self.numbers, dtype)
        else:
            # bytes, or kinds mixed across examples: the Python values as they
            # are, so that a column of them converts as the dict path's list.
            objects = self.objects or []
            values = np.empty(len(objects), dtype=object)
            values[:] = objects
        present = (
            None if len(self.present) == rows else np.frombuffer(self.present, np.int64)
        )
        return FeatureColumn(values, np.frombuffer(self.lengths, np.int64), present)


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


ROWS_A_CHUNK = 4096
"""Examples :func:`iter_examples` rebuilds at a time: the Python values of a
chunk (about 32 bytes a number) exist at once, not the whole request's."""


def iter_examples(columns: ExampleColumns) -> Iterator[Example]:
    """The examples as dicts (their context merged in), one at a time, for a
    runtime that takes them so and keeps something smaller of each (TensorFlow
    keeps it serialized): all the dicts at once took about 130 bytes a
    one-value feature, several times the columns."""
    rows = columns.rows
    prepared = [
        (name, column, np.cumsum(column.lengths))
        for name, column in columns.features.items()
    ]
    for start in range(0, rows, ROWS_A_CHUNK):
        stop = min(rows, start + ROWS_A_CHUNK)
        examples: list[Example] = [{} for _ in range(stop - start)]
        for name, column, ends in prepared:
            present = column.present
            if present is None:
                first, last = start, stop
                indices: Iterable[int] = range(start, stop)
            else:
                first, last = (
                    int(position)
                    for position in np.searchsorted(present, (start, stop))
                )
                indices = present[first:last].tolist()
            if first == last:
                continue
            lengths = column.lengths[first:last].tolist()
            offset = int(ends[first]) - lengths[0]
            values = column.values[offset : int(ends[last - 1])].tolist()
            offset = 0
            for index, length in zip(indices, lengths, strict=True):
                examples[index - start][name] = values[offset : offset + length]
                offset += length
        yield from examples


def to_examples(columns: ExampleColumns) -> list[Example]:
    """The examples as dicts (their context merged in), for a runtime that
    takes them so."""
    return list(iter_examples(columns))


@dataclass(frozen=True, slots=True)
class ColumnHead:
    """A column besides its numeric arrays: what :func:`to_arrays` leaves for
    a worker to send back pickled (its name, whether it has ``present``, and
    its values when they are Python objects)."""

    name: str
    has_present: bool
    objects: Tensor | None


def to_arrays(columns: ExampleColumns) -> tuple[dict[str, Tensor], list[ColumnHead]]:
    """The columns' numeric arrays, named by the column's index, and their
    heads: what crosses back from a worker through a segment, and what is
    pickled (:func:`from_arrays` puts them together again)."""
    numeric: dict[str, Tensor] = {}
    heads = []
    for index, (name, column) in enumerate(columns.features.items()):
        numeric[f"{index}.lengths"] = column.lengths
        if column.present is not None:
            numeric[f"{index}.present"] = column.present
        objects = column.values if column.values.dtype == object else None
        if objects is None:
            numeric[f"{index}.values"] = column.values
        heads.append(ColumnHead(name, column.present is not None, objects))
    return numeric, heads


def from_arrays(
    rows: int, heads: Sequence[ColumnHead], arrays: dict[str, Tensor]
) -> ExampleColumns:
    """The :class:`~modelserver.types.ExampleColumns` :func:`to_arrays` took
    apart."""
    features = {}
    for index, head in enumerate(heads):
        values = head.objects if head.objects is not None else arrays[f"{index}.values"]
        features[head.name] = FeatureColumn(
            values,
            arrays[f"{index}.lengths"],
            arrays[f"{index}.present"] if head.has_present else None,
        )
    return ExampleColumns(rows, features)
