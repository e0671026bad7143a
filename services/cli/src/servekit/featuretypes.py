"""What a fitted scikit-learn pipeline knows about its input columns' types.

`publish` records a dtype for every feature; a wrong one (text recorded as a
number) makes every request with that column fail. So a dtype is taken only from
what the fitted objects show:

- an encoder's `categories_` (text or numbers, per column);
- an imputer's `statistics_` (the fill value of each column);
- the routing of a `ColumnTransformer`: columns a `make_column_selector(
  dtype_include=object)` picked were text at fit time, and every other column of
  that frame was not (likewise for `dtype_include=np.number` and `dtype_exclude`);
- scikit-learn's own numeric estimators (scalers, k-means, trees, linear models...),
  which only accept numbers, and `FunctionTransformer` over a NumPy ufunc.

Anything else (a custom transformer, `"passthrough"`) says nothing; a column whose
dtype nothing tells is left out, and the caller asks for `--example`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TEXT = "string"
NUMBER = "float64"
# Transformers of scikit-learn that take text or arbitrary objects, not numbers.
_NOT_NUMERIC_PREFIXES = ("sklearn.feature_extraction.",)
_NOT_NUMERIC_NAMES = {"FunctionTransformer", "FeatureUnion", "Pipeline"}


@dataclass
class Findings:
    """What the fitted objects show about each input column."""

    kinds: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    """A value each column was fitted on or filled with (median, mode, category)."""
    imputed: set[str] = field(default_factory=set)
    """Columns an imputer fills where they are missing (NaN) before anything else
    sees them: the model takes a missing value there."""


def inspect_pipeline(estimator: Any, names: list[str]) -> Findings:
    """Walk a fitted estimator for what it shows about the columns `names`."""
    findings = Findings()
    _visit(estimator, names, names, findings)
    return findings


def fitted_row(findings: Findings, dtypes: dict[str, str]) -> dict[str, Any] | None:
    """One input row of values the pipeline was fitted on, if every column has one."""
    row: dict[str, Any] = {}
    for name, dtype in dtypes.items():
        value = findings.values.get(name)
        if value is None:
            return None
        row[name] = str(value) if dtype == TEXT else float(value)
    return row


def known_dtypes(findings: Findings, names: list[str]) -> dict[str, str]:
    """Feature name -> dtype for every column whose type the fitted pipeline shows.

    A column with two different answers (text and number) is left out.
    """
    result: dict[str, str] = {}
    for name in names:
        found = findings.kinds.get(name, set())
        if len(found) == 1:
            result[name] = next(iter(found))
        elif found and TEXT not in found and "bool" not in found:
            result[name] = NUMBER  # int64 and float64 answers: numbers either way
    return result


def _add(findings: Findings, columns: Iterable[str], kind: str | None) -> None:
    if kind is None:
        return
    for column in columns:
        findings.kinds.setdefault(column, set()).add(kind)


def _remember(findings: Findings, column: str, value: Any) -> None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int | float) and value == value:
        findings.values.setdefault(column, value)


def _visit(step: Any, columns: list[str], frame: list[str], kinds: Findings) -> None:
    """Record what `step`, fed `columns` of a frame with columns `frame`, shows."""
    if step is None or isinstance(step, str):
        return  # "passthrough" and "drop" say nothing about a column
    kind_name = type(step).__name__
    if hasattr(step, "transformers_"):
        _visit_column_transformer(step, columns, kinds)
    elif kind_name == "Pipeline" and hasattr(step, "steps"):
        for _, inner in step.steps:
            if inner is None or isinstance(inner, str):
                continue
            _visit(inner, columns, frame, kinds)
            break  # later steps see the first one's output, not these columns
    elif kind_name == "FeatureUnion" and hasattr(step, "transformer_list"):
        for _, inner in step.transformer_list:
            _visit(inner, columns, frame, kinds)
    elif hasattr(step, "categories_"):
        for column, categories in zip(columns, step.categories_, strict=False):
            _add(kinds, [column], _values_kind(np.asarray(categories)))
            if len(categories):
                _remember(kinds, column, categories[0])
    elif hasattr(step, "statistics_"):
        for column, value in zip(columns, step.statistics_, strict=False):
            _add(kinds, [column], _value_kind(value))
            _remember(kinds, column, value)
        if _fills_nan(step):
            kinds.imputed.update(columns)
    elif kind_name == "FunctionTransformer":
        if isinstance(getattr(step, "func", None), np.ufunc) or getattr(
            step, "validate", False
        ):
            _add(kinds, columns, NUMBER)
    elif _numeric_only(step):
        _add(kinds, columns, NUMBER)
        means = getattr(step, "mean_", None)
        if means is not None and len(means) == len(columns):
            for column, value in zip(columns, means, strict=True):
                _remember(kinds, column, value)


def _fills_nan(imputer: Any) -> bool:
    """Whether the imputer replaces NaN (a JSON null reaches the model as NaN)."""
    missing = getattr(imputer, "missing_values", None)
    return isinstance(missing, float) and missing != missing


def _numeric_only(step: Any) -> bool:
    module = type(step).__module__
    return (
        module.startswith("sklearn.")
        and not module.startswith(_NOT_NUMERIC_PREFIXES)
        and type(step).__name__ not in _NOT_NUMERIC_NAMES
    )


def _visit_column_transformer(step: Any, columns: list[str], kinds: Findings) -> None:
    frame = [str(name) for name in getattr(step, "feature_names_in_", columns)]
    selectors = {name: spec for name, _, spec in getattr(step, "transformers", [])}
    for name, transformer, selected in step.transformers_:
        chosen = _column_names(selected, frame)
        if transformer == "drop" or not chosen:
            continue
        _visit(transformer, chosen, frame, kinds)
        selected_kind, other_kind = _selector_kinds(selectors.get(name))
        _add(kinds, chosen, selected_kind)
        _add(kinds, [c for c in frame if c not in chosen], other_kind)


def _column_names(selected: Any, frame: list[str]) -> list[str]:
    if isinstance(selected, str):
        return [selected]
    if isinstance(selected, slice):
        return frame[selected]
    values = list(np.asarray(selected).ravel()) if selected is not None else []
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        return [column for column, keep in zip(frame, values, strict=False) if keep]
    names: list[str] = []
    for value in values:
        if isinstance(value, int | np.integer):
            names.append(frame[int(value)])
        else:
            names.append(str(value))
    return names


def _selector_kinds(spec: Any) -> tuple[str | None, str | None]:
    """(kind of the columns a dtype selector picked, kind of the others)."""
    if type(spec).__name__ != "make_column_selector" or spec.pattern is not None:
        return None, None
    include, exclude = spec.dtype_include, spec.dtype_exclude
    if include is not None and exclude is not None:
        return None, None
    chosen = include if include is not None else exclude
    if chosen is None:
        return None, None
    kind = _selector_dtype_kind(chosen)
    if kind is None:
        return None, None
    other = NUMBER if kind == TEXT else TEXT
    if include is not None:
        # Columns outside a numeric selection may be text, bools or dates.
        return kind, other if kind == TEXT else None
    return other if kind == TEXT else None, kind


def _selector_dtype_kind(chosen: Any) -> str | None:
    items = chosen if isinstance(chosen, list | tuple) else [chosen]
    kinds = set()
    for item in items:
        if item is object or item in ("object", "O"):
            kinds.add(TEXT)
        elif item is np.number or item == "number":
            kinds.add(NUMBER)
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _values_kind(values: np.ndarray[Any, Any]) -> str | None:
    if values.dtype.kind in "US":
        return TEXT
    if values.dtype.kind == "b":
        return "bool"
    if values.dtype.kind in "iu":
        return "int64"
    if values.dtype.kind == "f":
        return NUMBER
    present = [v for v in values.tolist() if v is not None and v == v]
    if present and all(isinstance(v, str | bytes) for v in present):
        return TEXT
    if present and all(isinstance(v, int | float) for v in present):
        return NUMBER
    return None


def _value_kind(value: Any) -> str | None:
    if isinstance(value, str | bytes):
        return TEXT
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | np.number) and value == value:
        return NUMBER
    return None
