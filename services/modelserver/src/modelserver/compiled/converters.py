"""Converters: fitted scikit-learn steps to plan specifications and tree tables.

Each converter reads a fitted step's learned attributes and writes the JSON
specification of the numpy kernel in :mod:`modelserver.compiled.plan` that repeats
its arithmetic. Converters are found by class name first (so a custom transformer
that ships in a version's ``code/`` folder, such as the ``tabular`` job's
``ClusterSimilarity``, needs no import here), then by the classes scikit-learn ships.
:func:`register_converter` adds one for another class.

The parity gate, not the converter, decides whether the result may serve: a
converter that misreads a custom class is caught by the comparison with the pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.compiled.errors import CompileError
from modelserver.compiled.plan import UFUNCS, Spec


@dataclass(frozen=True)
class Context:
    """What converters know besides the step.

    Attributes:
        text_columns: The input columns holding text.
        root: The whole fitted model, for a hybrid plan: a step no converter
            takes runs in Python (found again in the pickle from here). None
            refuses such a step instead.
    """

    text_columns: frozenset[str] = frozenset()
    root: Any = None


Converter = Callable[[Any, str, Context], Spec]
CONVERTERS: dict[str, Converter] = {}


def register_converter(class_name: str, converter: Converter) -> None:
    """Convert steps whose class is named ``class_name`` with ``converter``.

    The converter gets the fitted step, its pipeline path and the
    :class:`Context`, and returns a plan step specification; it raises :class:`CompileError` for settings it does not
    support.
    """
    CONVERTERS[class_name] = converter


def convert_step(step: Any, path: str, context: Context) -> Spec:
    """The plan specification of one fitted preprocessing step.

    A step no converter takes becomes a Python step of a hybrid plan when the
    context has the whole model (:mod:`modelserver.compiled.hybrid`).

    Raises:
        CompileError: No converter takes the step (``error.step`` names it) and it
            cannot run in Python.
    """
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return {"kind": "identity"}
    try:
        converter = CONVERTERS.get(type(step).__name__)
        if converter is None:
            raise CompileError(
                f"no converter for {type(step).__name__} at step {path}", step=path
            )
        return converter(step, path, context)
    except CompileError as exc:
        if context.root is None or not hasattr(step, "transform"):
            raise
        from modelserver.compiled.hybrid import python_step

        return python_step(step, path, context.root, str(exc))


def _unsupported(step: Any, path: str, what: str) -> CompileError:
    return CompileError(
        f"{type(step).__name__} at step {path}: {what} is not supported", step=path
    )


def _floats(values: Any) -> list[float]:
    return [float(value) for value in np.asarray(values, dtype=np.float64).ravel()]


def _pipeline(step: Any, path: str, context: Context) -> Spec:
    steps = list(step.steps)
    return {
        "kind": "pipeline",
        "steps": [
            convert_step(inner, f"{path}/{name}", context) for name, inner in steps
        ],
    }


def _column_transformer(step: Any, path: str, context: Context) -> Spec:
    if getattr(step, "sparse_output_", False):
        raise _unsupported(step, path, "sparse output")
    if step.transformer_weights:
        raise _unsupported(step, path, "transformer_weights")
    names = getattr(step, "feature_names_in_", None)
    indices_by_name: dict[str, Any] = step._transformer_to_input_indices
    branches: list[Spec] = []
    for name, transformer, _columns in step.transformers_:
        indices = [int(index) for index in indices_by_name.get(name, [])]
        if (isinstance(transformer, str) and transformer == "drop") or not indices:
            continue
        columns = (
            [str(names[index]) for index in indices]
            if names is not None
            else [str(index) for index in indices]
        )
        text = (
            _text_branch(columns, context, f"{path}/{name}")
            if names is not None
            else False
        )
        branches.append(
            {
                "name": name,
                "columns": columns,
                "indices": indices,
                "text": text,
                "step": convert_step(transformer, f"{path}/{name}", context),
            }
        )
    return {"kind": "column_transformer", "branches": branches}


def _text_branch(columns: list[str], context: Context, path: str) -> bool:
    flags = {column in context.text_columns for column in columns}
    if len(flags) > 1:
        raise CompileError(
            f"step {path} mixes text and numeric columns: {', '.join(columns)}",
            step=path,
        )
    return flags.pop()


def _imputer(step: Any, path: str, _context: Context) -> Spec:
    if getattr(step, "add_indicator", False):
        raise _unsupported(step, path, "add_indicator")
    missing = step.missing_values
    if not (missing is None or (isinstance(missing, float) and missing != missing)):
        raise _unsupported(step, path, f"missing_values={missing!r}")
    statistics = np.asarray(step.statistics_)
    text = statistics.dtype.kind == "O"
    if not text and np.isnan(statistics.astype(np.float64)).any():
        raise _unsupported(step, path, "a column without any value at fit time")
    return {
        "kind": "impute",
        "text": text,
        "statistics": statistics.tolist() if text else _floats(statistics),
    }


def _scaler(step: Any, _path: str, _context: Context) -> Spec:
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None
    return {
        "kind": "scale",
        "mean": None if mean is None else _floats(mean),
        "scale": None if scale is None else _floats(scale),
    }


def _one_hot(step: Any, path: str, _context: Context) -> Spec:
    if step.drop_idx_ is not None:
        raise _unsupported(step, path, "drop")
    if getattr(step, "_infrequent_enabled", False):
        raise _unsupported(step, path, "infrequent categories")
    if step.handle_unknown not in ("ignore", "error", "infrequent_if_exist"):
        raise _unsupported(step, path, f"handle_unknown={step.handle_unknown!r}")
    categories = [np.asarray(values) for values in step.categories_]
    text = any(values.dtype.kind in "OUS" for values in categories)
    if text and any(
        value is None or value != value for values in categories for value in values
    ):
        raise _unsupported(step, path, "missing values as a category")
    return {
        "kind": "one_hot",
        "text": text,
        "unknown": "error" if step.handle_unknown == "error" else "ignore",
        "categories": [
            [str(value) for value in values] if text else _floats(values)
            for values in categories
        ],
    }


def _function(step: Any, path: str, _context: Context) -> Spec:
    if step.kw_args:
        raise _unsupported(step, path, "kw_args")
    function = step.func
    if function is None:
        return {"kind": "identity"}
    for name, ufunc in UFUNCS.items():
        if function is ufunc:
            return {"kind": "ufunc", "name": name}
    ratio = _ratio_columns(function)
    if ratio is not None:
        return {"kind": "ratio", "numerator": ratio[0], "denominator": ratio[1]}
    name = getattr(function, "__name__", type(function).__name__)
    raise CompileError(
        f"FunctionTransformer at step {path}: no converter for function {name}; "
        "known: numpy " + ", ".join(sorted(UFUNCS)) + " and a two-column ratio",
        step=path,
    )


def _ratio_columns(function: Callable[..., Any]) -> tuple[int, int] | None:
    """Recognise ``X[:, [a]] / X[:, [b]]`` (Hands-On ML's ``column_ratio``).

    The function is run on probe matrices of two to four columns whose values make
    every pair's ratio distinct; it is a ratio when its answer equals one pair's
    division exactly.
    """
    rng = np.random.default_rng(0)
    for width in (2, 3, 4):
        probe = rng.uniform(1.0, 2.0, size=(5, width))
        try:
            answer = np.asarray(function(probe.copy()))
        except Exception:  # the user's code may refuse a probe of this width
            continue
        if answer.shape != (5, 1):
            continue
        for numerator in range(width):
            for denominator in range(width):
                if numerator == denominator:
                    continue
                expected = probe[:, [numerator]] / probe[:, [denominator]]
                if np.array_equal(answer, expected):
                    return numerator, denominator
    return None


def _cluster_similarity(step: Any, path: str, _context: Context) -> Spec:
    # Hands-On ML's ClusterSimilarity (and the tabular job's): an RBF similarity
    # to k-means centres, rbf_kernel(X, kmeans_.cluster_centers_, gamma=gamma).
    kmeans = getattr(step, "kmeans_", None)
    centers = getattr(kmeans, "cluster_centers_", None)
    gamma = getattr(step, "gamma", None)
    if centers is None or gamma is None:
        raise _unsupported(step, path, "a similarity without kmeans_ and gamma")
    return {
        "kind": "rbf",
        "gamma": float(gamma),
        "centers": [_floats(row) for row in np.asarray(centers)],
    }


for _name, _converter in {
    "Pipeline": _pipeline,
    "ColumnTransformer": _column_transformer,
    "SimpleImputer": _imputer,
    "StandardScaler": _scaler,
    "OneHotEncoder": _one_hot,
    "FunctionTransformer": _function,
    "ClusterSimilarity": _cluster_similarity,
}.items():
    register_converter(_name, _converter)
