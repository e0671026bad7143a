"""A compiled plan run on one row with plain Python values.

A 1-client server mostly sees one-row calls, and on one row the numpy kernels of
:mod:`modelserver.compiled.plan` cost mostly their per-call overhead: an array
built, checked and dispatched per step. A row kernel
repeats the array kernel's operations on Python floats where those are the same
IEEE operation, one rounding each: imputing, ``(x - mean) / scale``, one-hot
equality, a ratio. Where numpy's result may depend on how it computes (BLAS
products, its own ``exp`` and ``log`` loops), the row kernel calls the array
kernel itself on a 1 x n array, so the answer is the array path's by construction.

Anything outside what a row kernel handles exactly (a value of an unexpected
type, a zero denominator, a non-float feature) raises :class:`NotOnRow`, and the
caller runs the array kernels instead. A plan with a step run in Python (hybrid)
gets no row kernel at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelserver.compiled.plan import BUILDERS, Array, Spec, UnknownCategory

Row = Mapping[str, Any] | list[Any]
"""A request's values by feature name (the plan's input), or a step's output."""

RowKernel = Callable[[Row, list[str]], list[Any]]


class NotOnRow(Exception):
    """The row needs the array kernels to be answered exactly as they answer it."""


def prepare_row(spec: Spec) -> RowKernel | None:
    """The row kernel of a step specification, or None when a step has none."""
    builder = _ROW_BUILDERS.get(spec["kind"])
    return None if builder is None else builder(spec)


def run_row(
    kernel: RowKernel, columns: Mapping[str, Any], order: list[str]
) -> Array | None:
    """The plan's features of a one-row request, as a 1 x n float64 array; None
    when a column does not hold exactly one value.

    Raises:
        NotOnRow: The array kernels must answer this row.
        UnknownCategory: As the array kernels raise it.
    """
    row: dict[str, Any] = {}
    for name, column in columns.items():
        if getattr(column, "shape", None) != (1,):
            return None
        row[name] = column.tolist()[0]
    return np.array([_floats(kernel(row, order))], dtype=np.float64)


def _values(value: Row, order: list[str]) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value[name] for name in order]


def _floats(values: list[Any]) -> list[float]:
    # What stacking into a float64 matrix does to the values a request carries
    # (floats, integers, booleans): one correctly rounded conversion each. Other
    # types (text in a numeric branch) keep numpy's own conversion and errors.
    kinds = set(map(type, values))
    if kinds <= _FLOAT:
        return values
    if kinds <= _NUMBERS:
        return [float(item) for item in values]
    raise NotOnRow


_FLOAT = frozenset({float})
_NUMBERS = frozenset({float, int, bool})


def _pipeline(spec: Spec) -> RowKernel | None:
    steps = [prepare_row(step) for step in spec["steps"]]
    if any(step is None for step in steps):
        return None
    kernels = [step for step in steps if step is not None]

    def run(value: Row, order: list[str]) -> list[Any]:
        for step in kernels:
            value = step(value, order)
        assert isinstance(value, list)
        return value

    return run


def _column_transformer(spec: Spec) -> RowKernel | None:
    branches: list[tuple[list[str], list[int], bool, RowKernel]] = []
    for branch in spec["branches"]:
        step = prepare_row(branch["step"])
        if step is None:
            return None
        branches.append(
            (
                list(branch["columns"]),
                list(branch["indices"]),
                bool(branch["text"]),
                step,
            )
        )

    def run(value: Row, _order: list[str]) -> list[Any]:
        joined: list[Any] = []
        for columns, indices, text, step in branches:
            if isinstance(value, list):
                selected = [value[index] for index in indices]
            else:
                selected = [value[name] for name in columns]
            joined += step(selected if text else _floats(selected), columns)
        return joined

    return run


def _identity(spec: Spec) -> RowKernel:
    text = bool(spec.get("text", False))

    def run(value: Row, order: list[str]) -> list[Any]:
        values = _values(value, order)
        return values if text else _floats(values)

    return run


def _impute(spec: Spec) -> RowKernel:
    text = bool(spec["text"])
    statistics: list[Any] = np.asarray(
        spec["statistics"], dtype=object if text else np.float64
    ).tolist()

    def run(value: Row, order: list[str]) -> list[Any]:
        values = _values(value, order)
        if not text:
            values = _floats(values)
        # NaN (x != x) and, in text columns, None are missing, as in the array
        # kernel; the comparison is the same Python one numpy makes per object.
        return [
            statistic if item is None or item != item else item
            for item, statistic in zip(values, statistics, strict=True)
        ]

    return run


def _scale(spec: Spec) -> RowKernel:
    mean = None if spec["mean"] is None else np.asarray(spec["mean"], np.float64)
    scale = None if spec["scale"] is None else np.asarray(spec["scale"], np.float64)
    means: list[float] | None = None if mean is None else mean.tolist()
    scales: list[float] | None = None if scale is None else scale.tolist()

    def run(value: Row, order: list[str]) -> list[Any]:
        values = _floats(_values(value, order))
        if means is not None:
            values = [item - offset for item, offset in zip(values, means, strict=True)]
        if scales is not None:
            values = [item / by for item, by in zip(values, scales, strict=True)]
        return values

    return run


def _one_hot(spec: Spec) -> RowKernel:
    text = bool(spec["text"])
    refuse_unknown = spec["unknown"] == "error"
    known: list[list[Any]] = [
        np.asarray(categories, dtype=object if text else np.float64).tolist()
        for categories in spec["categories"]
    ]

    def run(value: Row, order: list[str]) -> list[Any]:
        values = _values(value, order)
        if not text:
            values = _floats(values)
        encoded: list[Any] = []
        for index, (item, categories) in enumerate(zip(values, known, strict=True)):
            if text and type(item) is not str:
                raise NotOnRow  # None, NaN...: numpy's object comparison decides
            hits = [1.0 if item == category else 0.0 for category in categories]
            if refuse_unknown and 1.0 not in hits:
                raise UnknownCategory(
                    f"Found unknown categories {[str(item)]} in column {index} "
                    "during transform"
                )
            encoded += hits
        return encoded

    return run


def _ratio(spec: Spec) -> RowKernel:
    numerator, denominator = int(spec["numerator"]), int(spec["denominator"])

    def run(value: Row, order: list[str]) -> list[Any]:
        values = _floats(_values(value, order))
        if values[denominator] == 0.0:
            raise NotOnRow  # numpy's inf or NaN, not Python's ZeroDivisionError
        return [values[numerator] / values[denominator]]

    return run


def _on_array(spec: Spec) -> RowKernel:
    # numpy's exp/log loops and BLAS products (with FMA) need not round as
    # Python's math does: the array kernel itself runs on the 1 x n row.
    kernel = BUILDERS[spec["kind"]](spec, None)

    def run(value: Row, order: list[str]) -> list[Any]:
        matrix = np.array([_floats(_values(value, order))], dtype=np.float64)
        result: list[Any] = kernel(matrix, order)[0].tolist()
        return result

    return run


_ROW_BUILDERS: dict[str, Callable[[Spec], RowKernel | None]] = {
    "pipeline": _pipeline,
    "column_transformer": _column_transformer,
    "identity": _identity,
    "impute": _impute,
    "scale": _scale,
    "one_hot": _one_hot,
    "ratio": _ratio,
    "ufunc": _on_array,
    "rbf": _on_array,
}
