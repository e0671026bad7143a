"""Tiny models built during a test session (never committed).

- :func:`save_tf_half_plus`: a TF2 SavedModel ``y = slope * x + offset`` with a
  ``serving_default`` signature (``x`` float32 ``[-1]`` → ``y``) and a string
  signature ``echo`` (``text`` → ``text_bytes`` unchanged, ``length``).
- :func:`publish_linear_pipeline`: a scikit-learn pipeline
  ``y = 2 a + 3 b + offset`` published with :mod:`modelregistry`, optionally with
  a custom ``Sleep`` step (its code travels in the version's ``code/`` folder,
  so unpickling needs the manifest's ``code_dir``).
- :func:`copy_tfserving_testdata`: TF Serving's own test SavedModels, copied
  from ``../shared/tfserving-testdata`` (read-only there).
- :func:`install_version_copy`, :class:`VersionFolder`: copies of a built version
  folder put in place as a publisher would.

TensorFlow and scikit-learn are imported inside the functions: importing
TensorFlow costs seconds and most callers need only one of them.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TFSERVING_TESTDATA = REPO_ROOT.parent / "shared" / "tfserving-testdata"

SLEEP_STEP_MODULE = "servekit_test_steps"
_SLEEP_STEP_SOURCE = textwrap.dedent(
    '''
    """A pipeline step that takes time (and may warn), to keep requests in flight."""

    import time
    import warnings

    from sklearn.base import BaseEstimator, TransformerMixin


    class Sleep(TransformerMixin, BaseEstimator):
        def __init__(self, seconds=0.0, warning=""):
            self.seconds = seconds
            self.warning = warning

        def fit(self, X, y=None):
            return self

        def transform(self, X):
            if self.warning:
                warnings.warn(self.warning, UserWarning, stacklevel=1)
            time.sleep(self.seconds)
            return X
    '''
)


def linear_target(a: float, b: float, offset: float) -> float:
    """What :func:`publish_linear_pipeline`'s model predicts for one row."""
    return 2.0 * a + 3.0 * b + offset


def linear_inputs(*rows: tuple[float, float]) -> dict[str, Any]:
    """Columns `a` and `b` of ``rows`` as arrays: inputs of
    :func:`publish_linear_pipeline`'s model."""
    import numpy as np

    return {
        "a": np.array([row[0] for row in rows]),
        "b": np.array([row[1] for row in rows]),
    }


def save_tf_half_plus(path: Path, *, slope: float = 0.5, offset: float = 2.0) -> Path:
    """Save the TF2 ``half_plus`` SavedModel into ``path`` (a version folder)."""
    import tensorflow as tf

    class HalfPlus(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.slope = tf.Variable(slope, dtype=tf.float32)
            self.offset = tf.Variable(offset, dtype=tf.float32)

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.float32, name="x")]
        )
        def predict(self, x: Any) -> dict[str, Any]:
            return {"y": self.slope * x + self.offset}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="text")]
        )
        def echo(self, text: Any) -> dict[str, Any]:
            return {"text_bytes": text, "length": tf.strings.length(text)}

    module = HalfPlus()
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(
        module,
        str(path),
        signatures={"serving_default": module.predict, "echo": module.echo},
    )
    return path


def _sleep_step_class(code_dir: Path) -> Any:
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / f"{SLEEP_STEP_MODULE}.py").write_text(_SLEEP_STEP_SOURCE)
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    module = importlib.import_module(SLEEP_STEP_MODULE)
    return module.Sleep


def publish_linear_pipeline(
    registry_root: Path,
    name: str,
    *,
    offset: float = 1.0,
    sleep_seconds: float = 0.0,
    warning: str = "",
    version: int | None = None,
    dtype: str = "float64",
    impute: bool = False,
) -> int:
    """Publish ``y = 2 a + 3 b + offset`` as a scikit-learn pipeline; return its version.

    With ``sleep_seconds`` or ``warning``, the custom ``Sleep`` step comes first; it
    sleeps that long and issues ``warning`` as a ``UserWarning`` on every call.
    ``dtype`` is the features' (and the inputs'); with ``impute``, a median imputer
    comes before the regression and the features are declared nullable.
    """
    import joblib
    import numpy as np
    import pandas as pd
    from modelregistry import Registry
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"a": rng.normal(size=64), "b": rng.normal(size=64)}).astype(
        np.dtype(dtype)
    )
    target = 2.0 * frame["a"] + 3.0 * frame["b"] + offset
    steps: list[tuple[str, Any]] = []
    registry = Registry(registry_root)
    with registry.publish(name, framework="sklearn", version=version) as draft:
        manifest_code: dict[str, Any] = {}
        if sleep_seconds > 0 or warning:
            sleep_class = _sleep_step_class(draft.path / "code")
            steps.append(("sleep", sleep_class(seconds=sleep_seconds, warning=warning)))
            manifest_code["code_dir"] = "code"
        if impute:
            steps.append(("impute", SimpleImputer(strategy="median")))
        steps.append(("model", LinearRegression()))
        pipeline = Pipeline(steps).fit(frame, target)
        joblib.dump(pipeline, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="regression",
            features=[
                {"name": "a", "dtype": dtype, "nullable": impute},
                {"name": "b", "dtype": dtype, "nullable": impute},
            ],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": {
                        "a": {"dtype": dtype, "shape": [-1]},
                        "b": {"dtype": dtype, "shape": [-1]},
                    },
                    "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
                }
            },
            examples=[{"a": 0.5, "b": -1.0}, {"a": 1.0, "b": 2.0}],
            metrics={"r2": 1.0},
            **manifest_code,
        )
    assert draft.version is not None
    return draft.version


MANIFEST_FIELDS_ADDED_SINCE_NULLABLE = {"main_names", "trusted_types", "compiled"}
"""Manifest fields that servekit did not write yet when features had no
``nullable`` (all with defaults, so today's reader takes a manifest without them)."""


def publish_linear_pipeline_before_nullable(
    registry_root: Path, name: str, *, offset: float = 1.0, impute: bool = False
) -> int:
    """Publish :func:`publish_linear_pipeline`'s model as version 1 of ``name`` the
    way servekit published it before features recorded ``nullable``: the same
    files, and the manifest with the fields of then only (no ``nullable`` key,
    nor the fields added since: ``MANIFEST_FIELDS_ADDED_SINCE_NULLABLE``); the
    manifest is not among its own digests. Built hidden, manifest last, renamed
    into place."""
    import tempfile

    from modelregistry import MANIFEST_FILE, Registry, read_manifest

    with tempfile.TemporaryDirectory() as scratch:
        scratch_root = Path(scratch) / "models"
        publish_linear_pipeline(scratch_root, name, offset=offset, impute=impute)
        source = scratch_root / name / "1"
        manifest = read_manifest(source)
        written_then = manifest.model_copy(
            update={
                "features": [
                    feature.model_copy(update={"nullable": None})
                    for feature in manifest.features
                ]
            }
        )
        base = registry_root / name
        base.mkdir(parents=True, exist_ok=True)
        hidden = base / ".tmp-1"
        shutil.copytree(source, hidden, ignore=shutil.ignore_patterns(MANIFEST_FILE))
        (hidden / MANIFEST_FILE).write_text(
            written_then.model_dump_json(
                indent=2, exclude=MANIFEST_FIELDS_ADDED_SINCE_NULLABLE
            )
            + "\n",
            encoding="utf-8",
        )
        hidden.rename(base / "1")
    Registry(registry_root).write_configs()
    return 1


def copy_tfserving_testdata(destination: Path, *names: str) -> Path:
    """Copy TF Serving's test models (all, or the ``names``) under ``destination``.

    Returns:
        ``destination``, which then holds ``<name>/<version>/`` folders.

    Raises:
        FileNotFoundError: The shared test data is absent (callers skip).
    """
    source = TFSERVING_TESTDATA / "models"
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is absent")
    for model_dir in sorted(source.iterdir()):
        if names and model_dir.name not in names:
            continue
        shutil.copytree(model_dir, destination / model_dir.name)
    return destination


def install_version_copy(source: Path, base_path: Path, version: int) -> Path:
    """Copy a version folder into ``base_path/<version>`` the way a publisher
    would: build it hidden, then rename it into place."""
    base_path.mkdir(parents=True, exist_ok=True)
    hidden = base_path / f".tmp-{version}"
    shutil.copytree(source, hidden)
    target = base_path / str(version)
    hidden.rename(target)
    return target


@dataclass(frozen=True)
class VersionFolder:
    """A model's base path, where :meth:`install` puts copies of ``source``."""

    base: Path
    source: Path

    def install(self, version: int) -> Path:
        """``source`` in place as ``version`` (see :func:`install_version_copy`)."""
        return install_version_copy(self.source, self.base, version)


def publish_regression(
    registry_root: Path,
    name: str,
    model: Any,
    features: int,
    metrics: dict[str, float] | None = None,
    outputs: int | None = None,
    input_dtype: str = "float64",
) -> None:
    """Publish a fitted scikit-learn regression on one ``[-1, features]``
    input ``x`` of ``input_dtype``, answering float64 ``predictions``
    (``[-1]``, or ``[-1, outputs]`` when given)."""
    import joblib
    from modelregistry import Registry

    shape = [-1] if outputs is None else [-1, outputs]
    with Registry(registry_root).publish(name, framework="sklearn") as draft:
        joblib.dump(model, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="regression",
            features=[],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": {"x": {"dtype": input_dtype, "shape": [-1, features]}},
                    "outputs": {"predictions": {"dtype": "float64", "shape": shape}},
                }
            },
        )
        if metrics is not None:
            draft.manifest.update(metrics=metrics)
