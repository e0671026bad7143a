"""Compile a fitted scikit-learn model and run the parity gate over the result.

:func:`compile_model` converts the preprocessing steps to a plan of numpy kernels
and the final tree estimator to an ONNX ``TreeEnsemble``, then compares the
compiled model's answers with the pickle's on the gate's rows. It returns the
verdict (a ``compiled`` manifest entry) and, when the gate passed, the files to
store in the version folder.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime
import pandas as pd

from modelserver.compiled.converters import Context, convert_step
from modelserver.compiled.errors import CompileError
from modelserver.compiled.hybrid import find_step, python_steps
from modelserver.compiled.model import (
    MODEL_FILE,
    PLAN_FILE,
    PLAN_FORMAT,
    CompiledModel,
    compiled_model,
)
from modelserver.compiled.parity import (
    APPROXIMATE_TOLERANCE,
    EXACT_TOLERANCE,
    columns_from_rows,
    compare,
    concat_columns,
    row_count,
    threshold_rows,
)
from modelserver.compiled.plan import Array, Spec
from modelserver.compiled.trees import Mode, tree_model_bytes

HELDOUT_LIMIT = 2000
CHUNK = 4096
REFUSED_SAMPLE = 32
SINGLE_ROWS = 64
"""Rows also answered one at a time, by the one-row path a lone client gets."""
STRING = "string"
Progress = Callable[[str], None]


@dataclass
class CompileResult:
    """A compile's verdict and, when it passed, the files it wrote.

    Attributes:
        verdict: The manifest's ``compiled`` entry.
        files: Relative path -> content, to store in the version folder.
    """

    verdict: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the compiled model may serve."""
        return bool(self.verdict["status"] == "passed")


def runtime_name() -> str:
    """The runtime the compiled model runs on, with its version."""
    return f"onnxruntime {onnxruntime.__version__}"


def build_plan(
    estimator: Any, features: list[tuple[str, str]], mode: Mode, hybrid: bool = True
) -> tuple[Spec, bytes]:
    """The plan and the ONNX model of a fitted estimator.

    With ``hybrid``, a preprocessing step no converter takes runs in Python.

    Raises:
        CompileError: A step has no converter (``error.step`` names it).
    """
    if not features:
        raise CompileError(
            "only models with named input columns are compiled", step=None
        )
    context = Context(
        text_columns=frozenset(name for name, dtype in features if dtype == STRING),
        root=estimator if hybrid else None,
    )
    preprocess: Spec | None = None
    final = estimator
    final_path = type(estimator).__name__
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        *before, (final_name, final) = steps
        final_path = final_name
        if before:
            preprocess = {
                "kind": "pipeline",
                "steps": [convert_step(step, name, context) for name, step in before],
            }
    n_features = getattr(final, "n_features_in_", None)
    if n_features is None:
        raise CompileError(f"{final_path}: not fitted", step=final_path)
    model_bytes = tree_model_bytes(final, int(n_features), mode, final_path)
    classes = getattr(final, "classes_", None)
    model: dict[str, Any] = {
        "kind": "trees",
        "task": "classification" if classes is not None else "regression",
    }
    if classes is not None:
        labels = np.asarray(classes)
        model["classes"] = labels.tolist()
        model["classes_dtype"] = labels.dtype.str if labels.dtype.kind != "U" else "O"
    plan: Spec = {
        "format": PLAN_FORMAT,
        "mode": mode,
        "features": [name for name, _ in features],
        "preprocess": preprocess,
        "model": model,
    }
    return plan, model_bytes


def compile_model(
    estimator: Any,
    *,
    features: list[tuple[str, str]],
    examples: Sequence[Mapping[str, Any]],
    heldout: Sequence[Mapping[str, Any]],
    mode: Mode = "exact",
    tolerance: float | None = None,
    hybrid: bool = True,
    progress: Progress | None = None,
) -> CompileResult:
    """Compile ``estimator`` and decide, by the parity gate, whether it may serve.

    Args:
        estimator: The fitted estimator or pipeline, as unpickled.
        features: The manifest's input columns, (name, dtype), in order.
        examples: The manifest's example rows.
        heldout: Held-out rows (at most the first 2,000 are used).
        mode: ``exact`` (float64) or ``approximate`` (float32 trees).
        tolerance: The gate's bound; by default 1e-9 exact, 1e-4 approximate.
        hybrid: Let preprocessing steps that no converter takes run in Python
            (the verdict's ``python_steps`` names them); else they refuse.
        progress: Called with a line per stage.
    """
    say = progress or (lambda _line: None)
    bound = (
        tolerance
        if tolerance is not None
        else (EXACT_TOLERANCE if mode == "exact" else APPROXIMATE_TOLERANCE)
    )
    verdict: dict[str, Any] = {
        "status": "refused",
        "mode": mode,
        "runtime": runtime_name(),
        "tolerance": bound,
        "max_error": None,
        "rows": {},
        "failed_step": None,
        "reason": None,
        "python_steps": [],
    }
    say("converting steps")
    try:
        plan, model_bytes = build_plan(estimator, features, mode, hybrid)
        verdict["python_steps"] = python_steps(plan["preprocess"])
        compiled = compiled_model(
            plan, model_bytes, lambda location: find_step(estimator, location)
        )
    except CompileError as exc:
        verdict["failed_step"] = exc.step
        verdict["reason"] = str(exc)
        return CompileResult(verdict)
    except Exception as exc:  # onnxruntime rejects a graph with its own errors
        verdict["reason"] = f"{type(exc).__name__}: {exc}"
        return CompileResult(verdict)
    say("building the gate's rows")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        rows, counts = _gate_rows(compiled, estimator, features, examples, heldout)
        verdict["rows"] = counts
        if not row_count(rows):
            verdict["reason"] = "no rows to compare: the version has no examples"
            return CompileResult(verdict)
        say(f"comparing {row_count(rows)} rows with the pickle")
        problem, error = _compare(estimator, compiled, rows, features)
    verdict["max_error"] = error
    if problem is None and error > bound:
        problem = (
            f"max {'probability' if compiled.is_classifier else 'relative'} "
            f"difference {error:.3g} exceeds {bound:g}"
        )
    if problem is not None:
        verdict["reason"] = problem
        verdict["failed_step"] = _final_step(estimator)
        return CompileResult(verdict)
    verdict["status"] = "passed"
    verdict["plan"] = PLAN_FILE
    verdict["model"] = MODEL_FILE
    files = {
        PLAN_FILE: (json.dumps(plan, indent=1) + "\n").encode(),
        MODEL_FILE: model_bytes,
    }
    return CompileResult(verdict, files)


def _final_step(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    return str(steps[-1][0]) if steps else type(estimator).__name__


def _gate_rows(
    compiled: CompiledModel,
    estimator: Any,
    features: list[tuple[str, str]],
    examples: Sequence[Mapping[str, Any]],
    heldout: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Array], dict[str, int]]:
    held = columns_from_rows(heldout[:HELDOUT_LIMIT], features)
    shown = columns_from_rows(examples, features)
    counts = {"heldout": row_count(held), "examples": row_count(shown)}
    known = concat_columns([shown, held])
    base = _complete_row(known, features)
    thresholds: dict[str, Array] = {}
    if base is not None:
        thresholds = threshold_rows(compiled, _splits(estimator), base, features)
    counts["thresholds"] = row_count(thresholds)
    return concat_columns([known, thresholds]), counts


def _complete_row(
    columns: dict[str, Array], features: list[tuple[str, str]]
) -> dict[str, Array] | None:
    for index in range(row_count(columns)):
        if all(
            dtype == STRING or not np.isnan(float(columns[name][index]))
            for name, dtype in features
        ):
            return {name: columns[name][index : index + 1] for name, _ in features}
    return None


def _splits(estimator: Any) -> list[tuple[int, float]]:
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    trees = [e.tree_ for e in getattr(final, "estimators_", [])] or [final.tree_]
    found: set[tuple[int, float]] = set()
    for tree in trees:
        inner = tree.children_left >= 0
        found.update(
            zip(
                tree.feature[inner].tolist(),
                tree.threshold[inner].tolist(),
                strict=True,
            )
        )
    return sorted(found)


def _compare(
    estimator: Any,
    compiled: CompiledModel,
    rows: dict[str, Array],
    features: list[tuple[str, str]],
) -> tuple[str | None, float]:
    """The first disagreement (or None) and the max error over the rows answered.

    Rows whose features overflow float32 are refused by both sides (scikit-learn's
    trees cast to float32 and reject infinity); the pickle is asked about a sample
    of them one by one rather than all, which would take a call per row.
    """
    order = [name for name, _ in features]
    method = "predict_proba" if compiled.is_classifier else "predict"

    def pickle_answers(part: dict[str, Array]) -> Any:
        frame = pd.DataFrame({name: part[name] for name in order})
        return getattr(estimator, method)(frame)

    overflow = _overflowing(compiled, rows)
    sample = np.flatnonzero(overflow)[:REFUSED_SAMPLE]
    _, refused = _answers(pickle_answers, _subset(rows, sample))
    if not refused.all():
        row = int(sample[np.flatnonzero(~refused)[0]])
        return (
            f"row {row} overflows float32 in the compiled model's features but "
            "the pickle answers it",
            float("inf"),
        )
    rows = _subset(rows, ~overflow)
    expected, expected_failed = _answers(pickle_answers, rows)
    actual, actual_failed = _answers(getattr(compiled, method), rows)
    mismatch = np.flatnonzero(expected_failed != actual_failed)
    if len(mismatch):
        row = int(mismatch[0])
        who = "the pickle" if expected_failed[row] else "the compiled model"
        return (
            f"{len(mismatch)} rows are refused by one side only; first: row {row}, "
            f"refused by {who}",
            float("inf"),
        )
    answered = ~expected_failed
    comparison = compare(expected[answered], actual[answered], compiled.is_classifier)
    singles = np.flatnonzero(answered)[:SINGLE_ROWS]
    if compiled.handles_rows and len(singles):
        one_by_one, refused_alone = _answers_alone(
            getattr(compiled, method), rows, singles
        )
        if refused_alone is not None:
            return f"row {refused_alone} is refused when asked alone", float("inf")
        alone = compare(expected[singles], one_by_one, compiled.is_classifier)
        comparison.max_error = max(comparison.max_error, alone.max_error)
    if compiled.is_classifier:
        kept = _subset(rows, answered)
        labels_expected, _ = _answers(
            lambda part: estimator.predict(
                pd.DataFrame({name: part[name] for name in order})
            ),
            kept,
        )
        labels_actual, _ = _answers(compiled.predict, kept)
        differing = int(np.sum(labels_expected != labels_actual))
        if differing:
            return f"{differing} rows get another class", comparison.max_error
    return None, comparison.max_error


def _answers_alone(
    function: Callable[[dict[str, Array]], Any], rows: dict[str, Array], picked: Array
) -> tuple[Array, int | None]:
    """``function``'s answers to each picked row asked alone, or the first row
    it refuses."""
    answers: list[Array] = []
    for index in range(len(picked)):
        try:
            answers.append(
                np.asarray(function(_subset(rows, picked[index : index + 1])))
            )
        except (ValueError, TypeError, KeyError):
            return np.empty(0), int(picked[index])
    return np.concatenate(answers), None


def _overflowing(compiled: CompiledModel, rows: dict[str, Array]) -> Array:
    try:
        features = compiled.transform(rows)
    except ValueError:
        return np.zeros(row_count(rows), dtype=bool)
    narrowed = np.asarray(features, dtype=np.float64).astype(np.float32)
    return np.asarray(np.isinf(narrowed).any(axis=1), dtype=bool)


def _subset(rows: dict[str, Array], mask: Array) -> dict[str, Array]:
    return {name: column[mask] for name, column in rows.items()}


def _answers(
    function: Callable[[dict[str, Array]], Any], rows: dict[str, Array]
) -> tuple[Array, Array]:
    """Answers in chunks; a chunk that raises is halved until the rows that raise
    are found.

    Returns the answers (NaN where refused) and which rows were refused.
    """
    total = row_count(rows)
    results: list[Array] = []
    failed = np.zeros(total, dtype=bool)
    pending = [(start, min(start + CHUNK, total)) for start in range(0, total, CHUNK)]
    answered: dict[int, Array] = {}
    while pending:
        start, end = pending.pop()
        part = {name: column[start:end] for name, column in rows.items()}
        try:
            answered[start] = np.asarray(function(part))
            continue
        except (ValueError, TypeError, KeyError):
            pass
        if end - start == 1:
            failed[start] = True
            answered[start] = np.full((1,), np.nan)
            continue
        middle = (start + end) // 2
        pending += [(start, middle), (middle, end)]
    results = [answered[start] for start in sorted(answered)]
    return (_stack_singles(results) if results else np.empty(0)), failed


def _stack_singles(singles: list[Array]) -> Array:
    width = max((s.shape[1] for s in singles if s.ndim == 2), default=0)
    if not width:
        return np.concatenate(
            [s.astype(object) if s.dtype.kind in "OUS" else s for s in singles]
        )
    rows = [s if s.ndim == 2 else np.full((1, width), np.nan) for s in singles]
    return np.concatenate(rows)
