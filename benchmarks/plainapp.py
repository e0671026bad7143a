"""The baseline: a plain FastAPI app, as a user would write one by hand.

It loads the model once at start-up (unpickles the scikit-learn pipeline, or loads
the SavedModel's ``serving_default`` signature) and predicts per request from a
pydantic-validated ``{"instances": [...]}`` body, in a sync endpoint (FastAPI runs
it in its thread pool). No batching, no tuning: the chapter-2 way.

Run: ``python -m benchmarks.plainapp --registry R --model NAME --port P``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class PredictBody(BaseModel):
    """Rows as dicts of feature name to value (TF Serving's row format)."""

    instances: list[dict[str, Any]]


def sklearn_predictor(version_dir: Path, manifest: Any) -> Callable[[PredictBody], Any]:
    """Unpickle the pipeline once; each call builds a DataFrame and predicts."""
    import pandas as pd
    from modelregistry import load_pickle

    pipeline = load_pickle(version_dir, manifest)

    def predict(body: PredictBody) -> dict[str, list[Any]]:
        frame = pd.DataFrame(body.instances)
        return {"predictions": pipeline.predict(frame).tolist()}

    return predict


def tensorflow_predictor(
    version_dir: Path, manifest: Any
) -> Callable[[PredictBody], Any]:
    """Load the SavedModel's default signature once; each call runs it."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    dtypes = {
        name: spec.dtype
        for name, spec in manifest.signatures["serving_default"].inputs.items()
    }

    def predict(body: PredictBody) -> dict[str, Any]:
        inputs = {
            name: tf.constant([row[name] for row in body.instances], dtype=dtype)
            for name, dtype in dtypes.items()
        }
        outputs = signature(**inputs)
        return {name: tensor.numpy().tolist() for name, tensor in outputs.items()}

    # The signature holds only weak references to the model's variables.
    predict.loaded = loaded  # type: ignore[attr-defined]
    return predict


def create_app(registry_root: Path, model: str) -> FastAPI:
    """The app serving ``model``'s latest version at ``POST /predict``."""
    from modelregistry import Registry

    registry = Registry(registry_root)
    version = registry.resolve(model)
    manifest = registry.manifest(model, version)
    version_dir = registry.version_dir(model, version)
    if manifest.framework == "sklearn":
        predictor = sklearn_predictor(version_dir, manifest)
    else:
        predictor = tensorflow_predictor(version_dir, manifest)
    app = FastAPI(title=f"plain {model}")

    @app.post("/predict")
    def predict(body: PredictBody) -> Any:
        return predictor(body)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m benchmarks.plainapp")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_app(args.registry, args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
