"""`servekit models publish` refusals: arguments checked first, no dtype guesses, smoke test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from modelregistry import Registry

SERVEKIT = Path(sys.executable).with_name("servekit")


class OpensAFile:
    """Unpickling it creates `path`: proof that a pickle was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def publish(*args: str | Path, registry: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SERVEKIT),
            "models",
            "publish",
            *map(str, args),
            "--registry",
            str(registry),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def trap(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "unpickled"
    path = tmp_path / "trap.pkl"
    joblib.dump(OpensAFile(marker), path)
    return path, marker


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("../evil", "{pickle}"), "invalid model name"),
        (("ok", "{pickle}", "--code", "{a}", "--code", "{b}"), "one base name"),
        (("ok", "{pickle}", "--code", "{json}"), "standard library"),
        (("ok", "{pickle}", "--code", "{notes}"), "not a Python module file"),
        (("ok", "{pickle}", "--trust", "x.Y"), "--trust applies to .skops"),
        (("ok", "{pickle}", "--example", "{missing}"), "not found"),
    ],
)
def test_arguments_are_refused_before_the_pickle_is_opened(
    tmp_path: Path, trap: tuple[Path, Path], args: tuple[str, ...], message: str
) -> None:
    pickle_path, marker = trap
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "helpers.py").write_text("X = 1\n")
    (tmp_path / "json.py").write_text("X = 1\n")
    (tmp_path / "notes.txt").write_text("X = 1\n")
    names = {
        "pickle": pickle_path,
        "a": tmp_path / "a" / "helpers.py",
        "b": tmp_path / "b" / "helpers.py",
        "json": tmp_path / "json.py",
        "notes": tmp_path / "notes.txt",
        "missing": tmp_path / "absent.csv",
    }
    registry = tmp_path / "models"
    result = publish(*(a.format(**names) for a in args), registry=registry)
    assert result.returncode != 0
    assert message in result.stderr
    assert not marker.exists()
    assert not registry.exists() or Registry(registry).models() == []


def custom_step_module(folder: Path) -> Path:
    path = folder / "custom_steps.py"
    path.write_text(
        "from sklearn.base import BaseEstimator, TransformerMixin\n\n\n"
        "class Keep(BaseEstimator, TransformerMixin):\n"
        "    def fit(self, X, y=None):\n"
        "        return self\n\n"
        "    def transform(self, X):\n"
        "        return X\n"
    )
    return path


def test_a_dtype_nothing_shows_is_refused_by_name(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    module_path = custom_step_module(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import custom_steps

        frame = pd.DataFrame({"size": [1.0, 2.0, 3.0], "rooms": [1.0, 3.0, 2.0]})
        model = make_pipeline(
            ColumnTransformer(
                [
                    ("scaled", StandardScaler(), ["size"]),
                    ("kept", custom_steps.Keep(), ["rooms"]),
                ]
            ),
            LinearRegression(),
        ).fit(frame, [1.0, 2.0, 3.0])
        joblib.dump(model, tmp_path / "model.pkl")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("custom_steps", None)
    registry = tmp_path / "models"
    refused = publish(
        "rooms", tmp_path / "model.pkl", "--code", module_path, registry=registry
    )
    assert refused.returncode != 0
    assert "cannot tell the dtype of rooms" in refused.stderr
    assert "--example" in refused.stderr
    frame.to_csv(tmp_path / "rows.csv", index=False)
    accepted = publish(
        "rooms",
        tmp_path / "model.pkl",
        "--code",
        module_path,
        "--example",
        tmp_path / "rows.csv",
        registry=registry,
    )
    assert accepted.returncode == 0, accepted.stderr
    manifest = Registry(registry).manifest("rooms", 1)
    assert {f.name: f.dtype for f in manifest.features} == {
        "size": "float64",
        "rooms": "float64",
    }


def test_example_rows_that_fail_predict_stop_the_publish(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"region": ["north", "south", "north", "east"]})
    model = make_pipeline(
        ColumnTransformer([("cat", OneHotEncoder(), ["region"])]),
        LinearRegression(),
    ).fit(frame, np.arange(4.0))
    joblib.dump(model, tmp_path / "model.pkl")
    pd.DataFrame({"region": ["mars"]}).to_csv(tmp_path / "rows.csv", index=False)
    registry = tmp_path / "models"
    refused = publish(
        "regions",
        tmp_path / "model.pkl",
        "--example",
        tmp_path / "rows.csv",
        registry=registry,
    )
    assert refused.returncode != 0
    assert "smoke test failed: predict on the example rows" in refused.stderr
    assert "mars" in refused.stderr
    assert (
        Registry(registry).models() == []
        or Registry(registry).versions("regions") == []
    )


def test_skops_with_untrusted_types_needs_trust(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    # A plain Python function is code: skops will not load it unless trusted.
    model = make_pipeline(FunctionTransformer(abs), LinearRegression())
    model.fit(frame, [1.0, 2.0, 3.0])
    sio.dump(model, tmp_path / "model.skops")
    registry = tmp_path / "models"
    refused = publish("signs", tmp_path / "model.skops", registry=registry)
    assert refused.returncode != 0
    assert "builtins.abs" in refused.stderr
    assert "--trust" in refused.stderr
    frame.to_csv(tmp_path / "rows.csv", index=False)
    accepted = publish(
        "signs",
        tmp_path / "model.skops",
        "--trust",
        "builtins.abs",
        "--example",
        tmp_path / "rows.csv",
        registry=registry,
    )
    assert accepted.returncode == 0, accepted.stderr
    manifest = Registry(registry).manifest("signs", 1)
    assert "builtins.abs" in (manifest.trusted_types or [])
