"""scikit-learn pipelines whose answers or costs the REST and inline-policy tests
need, published with :mod:`modelregistry` during the session (never committed).

- :func:`publish_classifier`: a logistic regression on ``a`` and ``b`` with
  :data:`CLASSES` (ten string classes), so that ``:classify`` answers ten
  ``(label, score)`` pairs an example.
- :func:`publish_marked_sleeper`: ``y = 2 a + 3 b + 1`` behind a step that sleeps
  when a row's ``a`` is :data:`SLEEP_MARK`, so that a call's cost depends on its
  values, not its row count. The step's code travels in the version's ``code/``
  folder, as a user's own transformer would.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any

CLASSES = [f"class-{index}" for index in range(10)]
"""The classifier's classes, in its order."""

SLEEP_MARK = -777.0
"""The value of ``a`` that makes :func:`publish_marked_sleeper`'s model sleep."""

MARKED_SLEEP_MODULE = "servekit_marked_sleep"
_MARKED_SLEEP_SOURCE = textwrap.dedent(
    '''
    """A pipeline step that sleeps when a row carries the mark (a test's slow call)."""

    import time

    import numpy as np
    from sklearn.base import BaseEstimator, TransformerMixin


    class SleepOnMark(TransformerMixin, BaseEstimator):
        def __init__(self, mark=0.0, seconds=0.0):
            self.mark = mark
            self.seconds = seconds

        def fit(self, X, y=None):
            return self

        def transform(self, X):
            if np.any(np.asarray(X["a"]) == self.mark):
                time.sleep(self.seconds)
            return X
    '''
)


def _features(rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})


def _columns_manifest(outputs: dict[str, Any]) -> dict[str, Any]:
    inputs = {
        "a": {"dtype": "float64", "shape": [-1]},
        "b": {"dtype": "float64", "shape": [-1]},
    }
    return {
        "features": [
            {"name": "a", "dtype": "float64"},
            {"name": "b", "dtype": "float64"},
        ],
        "signatures": {
            "serving_default": {
                "method": "predict",
                "inputs": inputs,
                "outputs": outputs,
            }
        },
        "examples": [{"a": 0.5, "b": -1.0}, {"a": 1.0, "b": 2.0}],
    }


def publish_classifier(registry_root: Path, name: str) -> int:
    """Publish the ten-class classifier as ``name``; return its version."""
    import joblib
    import numpy as np
    from modelregistry import Registry
    from sklearn.linear_model import LogisticRegression

    frame = _features(400)
    # Ten bands of a + b, so that every class is learnt.
    bands = np.digitize(frame["a"] + frame["b"], np.linspace(-2.5, 2.5, 9))
    labels = np.array(CLASSES)[bands]
    model = LogisticRegression(max_iter=500).fit(frame, labels)
    assert list(model.classes_) == CLASSES
    with Registry(registry_root).publish(name, framework="sklearn") as draft:
        joblib.dump(model, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="classification",
            classes=CLASSES,
            **_columns_manifest({"predictions": {"dtype": "string", "shape": [-1]}}),
        )
    assert draft.version is not None
    return draft.version


def _marked_sleep_class(code_dir: Path) -> Any:
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / f"{MARKED_SLEEP_MODULE}.py").write_text(_MARKED_SLEEP_SOURCE)
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    module = importlib.import_module(MARKED_SLEEP_MODULE)
    return module.SleepOnMark


def publish_marked_sleeper(registry_root: Path, name: str, seconds: float) -> int:
    """Publish ``y = 2 a + 3 b + 1`` as ``name``, sleeping ``seconds`` on a call
    with a row whose ``a`` is :data:`SLEEP_MARK`; return its version."""
    import joblib
    from modelregistry import Registry
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    frame = _features(64)
    target = 2.0 * frame["a"] + 3.0 * frame["b"] + 1.0
    with Registry(registry_root).publish(name, framework="sklearn") as draft:
        sleep_class = _marked_sleep_class(draft.path / "code")
        pipeline = Pipeline(
            [
                ("sleep", sleep_class(mark=SLEEP_MARK, seconds=seconds)),
                ("model", LinearRegression()),
            ]
        ).fit(frame, target)
        joblib.dump(pipeline, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="regression",
            code_dir="code",
            **_columns_manifest({"predictions": {"dtype": "float64", "shape": [-1]}}),
        )
    assert draft.version is not None
    return draft.version
