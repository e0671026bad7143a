"""The parity gate: a compiled model may serve only if it answers as the pickle does.

Rows compared: the version's held-out rows, its example rows, and rows built to sit
on each side of every split threshold of the trees. For those, each numeric input
column a split's feature depends on is moved, from a complete base row, until the
feature (as the plan computes it) reaches the threshold itself and the float32
values on either side of it, found by the secant method; the value reached and its
float64 neighbours are kept (integer columns take the integers around it).

*Exact* mode demands a max relative difference of 1e-9 for regressors, identical
classes and probabilities within 1e-9 for classifiers. *Approximate* mode records
the measured maximum and passes within its (looser) tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelserver.compiled.model import CompiledModel
from modelserver.compiled.plan import Array

EXACT_TOLERANCE = 1e-9
APPROXIMATE_TOLERANCE = 1e-4
SECANT_STEPS = 16
STRING = "string"


@dataclass
class GateRows:
    """The rows the gate compares, by origin, as per-column arrays."""

    columns: dict[str, Array]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Comparison:
    """What the gate measured."""

    max_error: float
    classes_differ: int = 0
    rows: int = 0


def columns_from_rows(
    rows: Iterable[Mapping[str, Any]], features: list[tuple[str, str]]
) -> dict[str, Array]:
    """Per-column arrays in the manifest's dtypes, as the model server builds them.

    Rows that miss a text or integer value are left out: a request cannot carry a
    missing value there. A missing float is NaN.
    """
    kept: list[Mapping[str, Any]] = []
    for row in rows:
        if all(
            row.get(name) is not None or dtype.startswith("float")
            for name, dtype in features
        ):
            kept.append(row)
    columns: dict[str, Array] = {}
    for name, dtype in features:
        values = [row.get(name) for row in kept]
        if dtype == STRING:
            array = np.empty(len(values), dtype=object)
            array[:] = [str(value) for value in values]
        elif dtype.startswith("float"):
            array = np.asarray(
                [np.nan if value is None else value for value in values],
                dtype=np.float64,
            ).astype(dtype)
        else:
            array = np.asarray(values).astype(dtype)
        columns[name] = array
    return columns


def concat_columns(parts: list[dict[str, Array]]) -> dict[str, Array]:
    """Row-wise concatenation of column dicts with the same keys."""
    parts = [part for part in parts if part and len(next(iter(part.values())))]
    if not parts:
        return {}
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def row_count(columns: Mapping[str, Array]) -> int:
    """Rows in a column dict."""
    return len(next(iter(columns.values()))) if columns else 0


def threshold_rows(
    compiled: CompiledModel,
    splits: list[tuple[int, float]],
    base: dict[str, Array],
    features: list[tuple[str, str]],
) -> dict[str, Array]:
    """Rows whose features sit on, and on each side of, the split thresholds.

    Args:
        compiled: The compiled model (its plan computes the features).
        splits: Every distinct (feature index, threshold) of the trees.
        base: One complete row, as per-column arrays.
        features: The manifest's (name, dtype) pairs.
    """
    base_features = compiled.transform(base)[0]
    numeric = [(name, dtype) for name, dtype in features if dtype != STRING]
    parts: list[dict[str, Array]] = []
    for name, dtype in numeric:
        start = float(base[name][0])
        depends = _dependent_features(compiled, base, name, start, base_features)
        chosen = [(index, value) for index, value in splits if index in depends]
        if not chosen:
            continue
        indices = np.repeat(np.asarray([index for index, _ in chosen]), 3)
        targets = np.concatenate([_targets(threshold) for _, threshold in chosen])
        reached = _secant(compiled, base, name, indices, targets, start)
        values = _around(reached, dtype)
        parts.append(_with_column(base, name, values))
    return concat_columns(parts)


def _targets(threshold: float) -> Array:
    # The threshold itself (a float32 rounding tie when it is the midpoint of two
    # float32 values, as scikit-learn's are) and the float32 values either side.
    below = np.float32(threshold)
    if float(below) > threshold:
        below = np.nextafter(below, np.float32(-np.inf))
    above = np.nextafter(below, np.float32(np.inf))
    return np.asarray([threshold, float(below), float(above)], dtype=np.float64)


def _dependent_features(
    compiled: CompiledModel,
    base: dict[str, Array],
    name: str,
    start: float,
    base_features: Array,
) -> set[int]:
    moved = np.asarray(
        [start * 1.1 + 0.5, start * 0.9 - 0.7, start + 3.0], dtype=np.float64
    )
    changed = compiled.transform(_with_column(base, name, moved)) != base_features
    return {int(index) for index in np.flatnonzero(changed.any(axis=0))}


def _with_column(base: dict[str, Array], name: str, values: Array) -> dict[str, Array]:
    count = len(values)
    columns = {key: np.repeat(value, count) for key, value in base.items()}
    columns[name] = (
        values.astype(base[name].dtype) if base[name].dtype.kind == "f" else values
    )
    return columns


def _feature_values(
    compiled: CompiledModel,
    base: dict[str, Array],
    name: str,
    values: Array,
    indices: Array,
) -> Array:
    columns = {key: np.repeat(value, len(values)) for key, value in base.items()}
    columns[name] = values
    with np.errstate(all="ignore"):
        transformed = compiled.transform(columns)
    picked: Array = transformed[np.arange(len(values)), indices]
    return picked


def _secant(
    compiled: CompiledModel,
    base: dict[str, Array],
    name: str,
    indices: Array,
    targets: Array,
    start: float,
) -> Array:
    x0 = np.full(len(targets), start)
    x1 = x0 * 1.01 + 0.01
    f0 = _feature_values(compiled, base, name, x0, indices) - targets
    f1 = _feature_values(compiled, base, name, x1, indices) - targets
    with np.errstate(all="ignore"):
        for _ in range(SECANT_STEPS):
            slope = (f1 - f0) / (x1 - x0)
            step = np.where(np.isfinite(slope) & (slope != 0), f1 / slope, 0.0)
            x2 = np.where(np.isfinite(step), x1 - step, x1)
            if np.array_equal(x2, x1):
                break
            x0, f0 = x1, f1
            x1 = x2
            f1 = _feature_values(compiled, base, name, x1, indices) - targets
    return x1


def _around(values: Array, dtype: str) -> Array:
    values = values[np.isfinite(values)]
    if dtype.startswith("float"):
        return np.unique(
            np.concatenate(
                [
                    values,
                    np.nextafter(values, np.inf),
                    np.nextafter(values, -np.inf),
                ]
            )
        ).astype(dtype)
    if dtype == "bool":
        return np.asarray([False, True])
    info = np.iinfo(np.dtype(dtype))
    clipped = np.clip(values, info.min, info.max)
    return np.unique(np.concatenate([np.floor(clipped), np.ceil(clipped)])).astype(
        dtype
    )


def compare(expected: Array, actual: Array, classifier: bool) -> Comparison:
    """Relative difference of regressions, or of probabilities (absolute, as they
    lie in [0, 1]) and the count of differing classes."""
    if classifier:
        return Comparison(max_error=_max_abs(expected, actual), rows=len(expected))
    expected = np.asarray(expected, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    both_nan = np.isnan(expected) & np.isnan(actual)
    scale = np.maximum(np.abs(expected), np.abs(actual))
    with np.errstate(all="ignore"):
        relative = np.where(scale > 0, np.abs(expected - actual) / scale, 0.0)
    relative = np.where(both_nan, 0.0, relative)
    relative = np.where(np.isnan(relative), np.inf, relative)
    return Comparison(
        max_error=float(relative.max()) if len(relative) else 0.0,
        rows=len(expected),
    )


def _max_abs(expected: Array, actual: Array) -> float:
    difference = np.abs(
        np.asarray(expected, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    )
    if not difference.size:
        return 0.0
    return float(np.nan_to_num(difference, nan=np.inf).max())
