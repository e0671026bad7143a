"""Small scikit-learn models for the compiled-model tests, and how to publish them.

:func:`build_models` trains, in the project's venv, ``sizes`` (a
RandomForestClassifier behind a ColumnTransformer, string classes) and ``clipped``
(a RandomForestRegressor whose ColumnTransformer applies a user's function that no
converter knows, shipped as code), and writes the held-out rows, example rows and
40 request rows (``rows.json``) beside them. :func:`publish` brings one into a
registry with ``servekit models publish``, which compiles it and runs the gate.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.cli import ok, servekit
from tests.support.processes import VENV_BIN

HELPERS = """
import numpy as np


def clipped_square(values):
    return np.clip(values, 0.0, 150.0) ** 2
"""

BUILD = """
import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from clipped_helpers import clipped_square


def frame(rows, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "size": rng.uniform(20, 200, rows).round(2),
            "rooms": rng.integers(1, 8, rows).astype(np.float64),
            "region": rng.choice(["north", "south", "east"], rows).astype(object),
        }
    )


train = frame(600, 1)
score = 3.0 * train["size"] + 20.0 * train["rooms"] + (train["region"] == "north") * 60
labels = np.where(score > 450, "large", np.where(score > 300, "medium", "small"))
numeric = ["size", "rooms"]
classifier = Pipeline(
    [
        (
            "prep",
            ColumnTransformer(
                [
                    ("num", StandardScaler(), numeric),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
                ]
            ),
        ),
        ("forest", RandomForestClassifier(n_estimators=30, random_state=0)),
    ]
).fit(train, labels)
joblib.dump(classifier, "sizes.pkl")
regressor = Pipeline(
    [
        (
            "prep",
            ColumnTransformer(
                [
                    ("clip", FunctionTransformer(clipped_square), ["size"]),
                    ("num", StandardScaler(), ["rooms"]),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
                ]
            ),
        ),
        ("forest", RandomForestRegressor(n_estimators=20, random_state=0)),
    ]
).fit(train, score)
joblib.dump(regressor, "clipped.pkl")
held = frame(300, 2)
held.to_csv("heldout.csv", index=False)
held.head(5).to_csv("examples.csv", index=False)
held.iloc[5:45].to_json("rows.json", orient="records")
"""


def build_models(folder: Path) -> None:
    """Train both models into ``folder`` (``sizes.pkl``, ``clipped.pkl``)."""
    (folder / "clipped_helpers.py").write_text(HELPERS)
    (folder / "build.py").write_text(BUILD)
    completed = subprocess.run(
        [str(VENV_BIN / "python"), "build.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def publish(folder: Path, registry: Path, name: str, *more: str | Path) -> None:
    """``servekit models publish`` one of them, with its examples and held-out rows;
    ``clipped`` takes its helper module along."""
    code: tuple[str | Path, ...] = ()
    if name == "clipped":
        code = ("--code", folder / "clipped_helpers.py")
    ok(
        servekit(
            "models",
            "publish",
            name,
            folder / f"{name}.pkl",
            "--example",
            folder / "examples.csv",
            "--heldout",
            folder / "heldout.csv",
            *code,
            *more,
            "--registry",
            registry,
        )
    )


def models_config(folder: Path, registry: Path, names: tuple[str, ...]) -> Path:
    """A model config file serving ``names`` of ``registry`` (platform sklearn)."""
    config = folder / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: {json.dumps(str(registry / name))}'
            ' model_platform: "sklearn" }\n'
            for name in names
        )
        + "}\n"
    )
    return config


def batching_parameters(folder: Path) -> Path:
    """Batching parameters that merge concurrent calls (up to 64 rows, 2 ms)."""
    path = folder / "batching.txt"
    path.write_text(
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 2000 }\n"
        "num_batch_threads { value: 1 }\n"
        "max_enqueued_batches { value: 100 }\n"
    )
    return path
