"""Running a compiled preprocessing plan: numpy kernels on per-column arrays.

A plan is a tree of JSON step specifications written by
:mod:`modelserver.compiled.converters`. Each kernel repeats the arithmetic of the
scikit-learn step it replaces, operation for operation, on plain numpy arrays: no
DataFrame, no input validation, no estimator objects. Doing the same IEEE operations
in the same order is what lets the parity gate demand float64 equality to 1e-9 (in
practice the values are bit-identical).

Values flowing between kernels are either a :class:`Columns` mapping (the request's
columns by feature name, the plan's input) or a 2-D array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelserver.compiled.errors import CompileError

Array = np.ndarray[Any, Any]
Spec = dict[str, Any]
Columns = Mapping[str, Array]
Value = Columns | Array

# The elementwise numpy functions a FunctionTransformer may wrap. numpy's own
# implementations are used, so the results are those the pickle computes.
UFUNCS: dict[str, Any] = {
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
    "expm1": np.expm1,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "square": np.square,
}


class UnknownCategory(ValueError):
    """A value outside a one-hot encoder's categories (``handle_unknown="error"``)."""


Kernel = Callable[[Value, list[str]], Array]
StepSource = Callable[[list[str]], Any]
"""The fitted step at a location in the pickle, for a hybrid plan's Python steps."""


def prepare(spec: Spec, source: StepSource | None = None) -> Kernel:
    """A step specification as a callable, its parameters turned into arrays once.

    The kernel takes the request's columns or the previous step's matrix, and the
    column order used when a matrix step gets columns.

    Raises:
        CompileError: The specification names no known kernel.
    """
    if spec["kind"] == "python":
        from modelserver.compiled.hybrid import python_kernel

        return python_kernel(spec, source)
    builder = BUILDERS.get(spec["kind"])
    if builder is None:
        raise CompileError(f"unknown plan step {spec['kind']!r}")
    return builder(spec, source)


def as_matrix(value: Value, feature_order: list[str], text: bool = False) -> Array:
    """The value as a 2-D array; columns are stacked in ``feature_order``."""
    if isinstance(value, np.ndarray):
        return value
    return stack([value[name] for name in feature_order], text)


def stack(columns: list[Array], text: bool) -> Array:
    """Columns side by side: object for text, float64 otherwise.

    scikit-learn's ``check_array`` turns integer and boolean frames into float64,
    which is exact for the integers a request can carry.
    """
    rows = len(columns[0]) if columns else 0
    matrix = np.empty((rows, len(columns)), dtype=object if text else np.float64)
    for index, column in enumerate(columns):
        matrix[:, index] = column
    return matrix


def _pipeline(spec: Spec, source: StepSource | None) -> Kernel:
    steps = [prepare(step, source) for step in spec["steps"]]

    def run(value: Value, order: list[str]) -> Array:
        for step in steps:
            value = step(value, order)
        assert isinstance(value, np.ndarray)
        return value

    return run


def _column_transformer(spec: Spec, source: StepSource | None) -> Kernel:
    branches = [
        (
            list(branch["columns"]),
            list(branch["indices"]),
            bool(branch["text"]),
            branch["step"]["kind"] == "python",
            prepare(branch["step"], source),
        )
        for branch in spec["branches"]
    ]

    def run(value: Value, _order: list[str]) -> Array:
        parts: list[Array] = []
        for columns, indices, text, python, step in branches:
            selected: Value
            if isinstance(value, np.ndarray):
                selected = value[:, indices]
                if not (text or python):
                    selected = selected.astype(np.float64)
            elif python:
                # A step run in Python gets its columns as they came, as the
                # pickle's ColumnTransformer hands it a slice of the DataFrame.
                selected = {name: value[name] for name in columns}
            else:
                selected = stack([value[name] for name in columns], text)
            parts.append(step(selected, columns))
        return np.hstack(parts) if parts else np.empty((0, 0))

    return run


def _identity(spec: Spec, _source: StepSource | None) -> Kernel:
    text = bool(spec.get("text", False))

    def run(value: Value, order: list[str]) -> Array:
        return as_matrix(value, order, text)

    return run


def missing_objects(matrix: Array) -> Array:
    """Where an object matrix holds None or NaN (``x != x``), as SimpleImputer.

    numpy compares object cells in its C loop, one Python comparison a cell with
    no identity shortcut (NaN stays unequal to itself) and the truth of each
    result taken as ``bool()`` takes it (``pd.NA`` raises the same TypeError),
    instead of one Python function call a cell. ``== None`` is ``is None`` for
    every value a request or a file can carry (str, numbers, None, lists).
    """
    mask: Array = np.not_equal(matrix, matrix)
    mask |= np.equal(matrix, _NONE)
    return mask


_NONE = np.array(None, dtype=object)


def _impute(spec: Spec, _source: StepSource | None) -> Kernel:
    text = bool(spec["text"])
    statistics = np.asarray(spec["statistics"], dtype=object if text else np.float64)

    def run(value: Value, order: list[str]) -> Array:
        matrix = as_matrix(value, order, text)
        mask = missing_objects(matrix) if text else np.isnan(matrix)
        if mask.any():
            matrix = matrix.copy()
            rows, columns = np.nonzero(mask)
            matrix[rows, columns] = statistics[columns]
        return matrix

    return run


def _scale(spec: Spec, _source: StepSource | None) -> Kernel:
    mean = None if spec["mean"] is None else np.asarray(spec["mean"], np.float64)
    scale = None if spec["scale"] is None else np.asarray(spec["scale"], np.float64)

    def run(value: Value, order: list[str]) -> Array:
        # StandardScaler.transform: X -= mean_, then X /= scale_, on a copy.
        matrix = np.array(as_matrix(value, order), dtype=np.float64)
        if mean is not None:
            matrix -= mean
        if scale is not None:
            matrix /= scale
        return matrix

    return run


def _one_hot(spec: Spec, _source: StepSource | None) -> Kernel:
    text = bool(spec["text"])
    refuse_unknown = spec["unknown"] == "error"
    known = [
        np.asarray(categories, dtype=object if text else np.float64)[np.newaxis, :]
        for categories in spec["categories"]
    ]
    width = sum(categories.shape[1] for categories in known)

    def run(value: Value, order: list[str]) -> Array:
        matrix = as_matrix(value, order, text)
        encoded = np.empty((matrix.shape[0], width), dtype=np.float64)
        start = 0
        for index, categories in enumerate(known):
            column = matrix[:, index]
            hits = column[:, np.newaxis] == categories
            if refuse_unknown:
                unknown = ~hits.any(axis=1)
                if unknown.any():
                    found = sorted({str(item) for item in column[unknown]})
                    raise UnknownCategory(
                        f"Found unknown categories {found} in column {index} "
                        "during transform"
                    )
            end = start + categories.shape[1]
            encoded[:, start:end] = hits
            start = end
        return encoded

    return run


def _ufunc(spec: Spec, _source: StepSource | None) -> Kernel:
    function = UFUNCS[spec["name"]]

    def run(value: Value, order: list[str]) -> Array:
        result: Array = function(as_matrix(value, order))
        return result

    return run


def _ratio(spec: Spec, _source: StepSource | None) -> Kernel:
    numerator, denominator = [int(spec["numerator"])], [int(spec["denominator"])]

    def run(value: Value, order: list[str]) -> Array:
        matrix = as_matrix(value, order)
        result: Array = matrix[:, numerator] / matrix[:, denominator]
        return result

    return run


def _rbf(spec: Spec, _source: StepSource | None) -> Kernel:
    centers = np.asarray(spec["centers"], dtype=np.float64)
    center_norms = np.einsum("ij,ij->i", centers, centers)[np.newaxis, :]
    gamma = float(spec["gamma"])

    def run(value: Value, order: list[str]) -> Array:
        # sklearn's rbf_kernel through euclidean_distances(squared=True):
        # -2 X.C^T, + |x|^2, + |c|^2, clipped at 0, times -gamma, exp.
        matrix = np.asarray(as_matrix(value, order), dtype=np.float64)
        row_norms = np.einsum("ij,ij->i", matrix, matrix)[:, np.newaxis]
        distances: Array = -2 * (matrix @ centers.T)
        distances += row_norms
        distances += center_norms
        np.maximum(distances, 0, out=distances)
        distances *= -gamma
        np.exp(distances, distances)
        return distances

    return run


BUILDERS: dict[str, Callable[[Spec, StepSource | None], Kernel]] = {
    "pipeline": _pipeline,
    "column_transformer": _column_transformer,
    "identity": _identity,
    "impute": _impute,
    "scale": _scale,
    "one_hot": _one_hot,
    "ufunc": _ufunc,
    "ratio": _ratio,
    "rbf": _rbf,
}
