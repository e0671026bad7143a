from __future__ import annotations

from pathlib import Path

import joblib
import pytest
from modelregistry import Registry
from sklearn.linear_model import LinearRegression


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def publish_linear(
    registry: Registry, name: str = "linear", version: int | None = None
) -> int:
    """Publish a tiny fitted regression with a manifest, the way training jobs do."""
    model = LinearRegression().fit(
        [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], [1.0, 2.0, 5.0]
    )
    with registry.publish(name, framework="sklearn", version=version) as draft:
        joblib.dump(model, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="regression",
            features=[
                {"name": "a", "dtype": "float64"},
                {"name": "b", "dtype": "float64"},
            ],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": {
                        "a": {"dtype": "float64", "shape": [-1]},
                        "b": {"dtype": "float64", "shape": [-1]},
                    },
                    "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
                }
            },
            examples=[{"a": 1.0, "b": 2.0}],
            metrics={"r2": 1.0},
        )
    assert draft.version is not None
    return draft.version
