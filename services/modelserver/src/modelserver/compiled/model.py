"""A compiled model: the preprocessing plan's numpy kernels, then ONNX Runtime.

It answers ``predict`` and ``predict_proba`` as the pickle does, but takes the
request's columns (feature name -> 1-D array) or a feature matrix, never a
DataFrame, and loads from ``compiled/`` without unpickling anything, unless its
plan is hybrid: then the steps it runs in Python come from the version's pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime

from modelserver.compiled.errors import CompileError
from modelserver.compiled.hybrid import python_steps
from modelserver.compiled.plan import (
    Array,
    Spec,
    StepSource,
    Value,
    as_matrix,
    prepare,
)
from modelserver.compiled.rows import NotOnRow, prepare_row, run_row
from modelserver.compiled.trees import INPUT, OUTPUT

PLAN_FILE = "compiled/plan.json"
MODEL_FILE = "compiled/model.onnx"
PLAN_FORMAT = 1


def session_for(model_bytes: bytes) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on one thread.

    The model server runs each call on its own worker thread; ONNX Runtime's
    intra-op pool would only contend with the others for the same cores.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        model_bytes, options, providers=["CPUExecutionProvider"]
    )


class CompiledModel:
    """A plan and its ONNX tree ensemble, callable like the estimator it replaces.

    Attributes:
        plan: The plan specification (``compiled/plan.json``).
        classes_: A classifier's class labels, in ``predict_proba`` column order.
    """

    def __init__(
        self, plan: Spec, model_bytes: bytes, source: StepSource | None = None
    ) -> None:
        if plan.get("format") != PLAN_FORMAT:
            raise CompileError(f"unknown plan format {plan.get('format')!r}")
        self.plan = plan
        self._features: list[str] = list(plan["features"])
        self._preprocess = (
            None if plan["preprocess"] is None else prepare(plan["preprocess"], source)
        )
        # One-row calls (most of a lone client's) skip numpy's per-call overhead.
        self._row = (
            None if plan["preprocess"] is None else prepare_row(plan["preprocess"])
        )
        self._float32 = plan["mode"] == "approximate"
        self._session = session_for(model_bytes)
        model = plan["model"]
        self._classifier = bool(model["task"] == "classification")
        self.classes_: Array | None = (
            np.asarray(model["classes"], dtype=np.dtype(model["classes_dtype"]))
            if self._classifier
            else None
        )

    @staticmethod
    def needs_pickle(version_dir: Path) -> bool:
        """Whether the version's plan runs steps in Python (from the pickle)."""
        try:
            plan = json.loads((version_dir / PLAN_FILE).read_text(encoding="utf-8"))
            return bool(python_steps(plan["preprocess"]))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    @staticmethod
    def load(version_dir: Path, source: StepSource | None = None) -> CompiledModel:
        """Read ``compiled/plan.json`` and ``compiled/model.onnx`` of a version.

        The caller checks their digests against the manifest first, and gives
        ``source`` (steps of the loaded pickle) when the plan is hybrid.

        Raises:
            CompileError: The files are missing or unreadable.
        """
        try:
            plan = json.loads((version_dir / PLAN_FILE).read_text(encoding="utf-8"))
            model_bytes = (version_dir / MODEL_FILE).read_bytes()
        except (OSError, ValueError) as exc:
            raise CompileError(f"cannot read the compiled model: {exc}") from exc
        try:
            return compiled_model(plan, model_bytes, source)
        except (KeyError, TypeError) as exc:
            raise CompileError(f"invalid plan: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CompileError(f"ONNX Runtime refused the model: {exc}") from exc

    @property
    def handles_rows(self) -> bool:
        """Whether one-row calls run the plan on Python values (see :mod:`.rows`)."""
        return self._row is not None

    @property
    def is_classifier(self) -> bool:
        """Whether the model answers classes and probabilities."""
        return self._classifier

    def transform(self, values: Value) -> Array:
        """The features the tree ensemble takes, as a float64 matrix."""
        if self._preprocess is None:
            return as_matrix(values, self._features)
        if self._row is not None and not isinstance(values, np.ndarray):
            try:
                features = run_row(self._row, values, self._features)
            except NotOnRow:
                features = None
            if features is not None:
                return features
        return self._preprocess(values, self._features)

    def scores(self, values: Value) -> Array:
        """The ensemble's output: the prediction, or one probability per class."""
        # The pickle's numpy warns on log(0), overflow...; the answers are the same
        # and the server has no one to show the warning to.
        with np.errstate(all="ignore"):
            features = np.asarray(self.transform(values), dtype=np.float64)
            narrow = features.astype(np.float32)
        if np.isinf(narrow).any():
            # scikit-learn's trees refuse these (they cast X to float32 first).
            raise ValueError(
                "Input X contains infinity or a value too large for dtype('float32')."
            )
        (result,) = self._session.run(
            [OUTPUT], {INPUT: narrow if self._float32 else features}
        )
        return np.asarray(result, dtype=np.float64)

    def predict(self, values: Value) -> Array:
        """Predictions, one per row (class labels for a classifier)."""
        scores = self.scores(values)
        if self.classes_ is not None:
            taken: Array = self.classes_.take(np.argmax(scores, axis=1), axis=0)
            return taken
        result: Array = scores[:, 0]
        return result


class CompiledClassifier(CompiledModel):
    """A compiled classifier: ``predict_proba`` as well."""

    def predict_proba(self, values: Value) -> Array:
        """Class probabilities, one row per input row, in ``classes_`` order."""
        return self.scores(values)


def compiled_model(
    plan: Spec, model_bytes: bytes, source: StepSource | None = None
) -> CompiledModel:
    """The compiled model of a plan: a classifier when the plan's task says so.

    ``source`` gives a hybrid plan's Python steps (see :mod:`.hybrid`).
    """
    if plan["model"]["task"] == "classification":
        return CompiledClassifier(plan, model_bytes, source)
    return CompiledModel(plan, model_bytes, source)
