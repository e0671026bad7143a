"""Describing models trained elsewhere: example rows, SavedModel signatures, and the
manifest fields of a fitted scikit-learn estimator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from modelregistry import Signature, TensorSpec

from servekit.console import CommandError
from servekit.featuretypes import (
    Findings,
    fitted_row,
    inspect_pipeline,
    known_dtypes,
)

# TensorFlow's DataType enum names → the manifest's dtype names.
TF_DTYPES = {
    "DT_HALF": "float16",
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
}
METHODS = {
    "tensorflow/serving/predict": "predict",
    "tensorflow/serving/classify": "classify",
    "tensorflow/serving/regress": "regress",
}


def read_example_rows(path: Path) -> list[dict[str, Any]]:
    """Rows from a CSV file (header + rows) or a JSON list of objects.

    Raises:
        CommandError: the file is missing or not in either form.
    """
    if not path.is_file():
        raise CommandError(f"example file {path} not found")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: not valid JSON: {exc.msg}") from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise CommandError(f"{path}: expected a JSON list of objects")
        return rows
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, csv.Error) as exc:
        raise CommandError(f"{path}: cannot read CSV: {exc}") from exc
    return [
        {str(k): (None if _is_missing(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _dtype_of(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int64"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def saved_model_signatures(path: Path) -> dict[str, Signature]:
    """Read the signature defs of a SavedModel folder (imports TensorFlow).

    Raises:
        CommandError: the folder holds no readable SavedModel.
    """
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise CommandError(f"{path} has no saved_model.pb")
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(pb.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError subclasses
        raise CommandError(f"{pb}: not a SavedModel: {exc}") from exc
    serving = [
        mg for mg in saved_model.meta_graphs if "serve" in mg.meta_info_def.tags
    ] or list(saved_model.meta_graphs)
    if not serving:
        raise CommandError(f"{pb}: no meta graph")

    def spec(info: Any) -> TensorSpec:
        dtype_name = types_pb2.DataType.Name(info.dtype)
        if dtype_name not in TF_DTYPES:
            raise CommandError(f"{pb}: unsupported tensor dtype {dtype_name}")
        shape = (
            [-1]
            if info.tensor_shape.unknown_rank
            else [int(d.size) for d in info.tensor_shape.dim]
        )
        return TensorSpec(dtype=TF_DTYPES[dtype_name], shape=shape)

    signatures: dict[str, Signature] = {}
    for key, sig in serving[0].signature_def.items():
        if key.startswith("__"):
            continue
        signatures[key] = Signature(
            method=METHODS.get(sig.method_name, "predict"),
            inputs={k: spec(v) for k, v in sig.inputs.items()},
            outputs={k: spec(v) for k, v in sig.outputs.items()},
        )
    return signatures


def sklearn_description(
    estimator: Any, examples: list[dict[str, Any]]
) -> dict[str, Any]:
    """Manifest fields of a fitted estimator: features, task, signatures.

    Feature dtypes come from the fitted pipeline where it shows them
    (:mod:`servekit.featuretypes`), else from the example rows.

    Raises:
        CommandError: the object is no fitted estimator, or a feature's dtype is
            known neither from the pipeline nor from example rows.
    """
    if not hasattr(estimator, "predict"):
        raise CommandError("the pickle holds no estimator (it has no predict method)")
    names = [str(n) for n in getattr(estimator, "feature_names_in_", [])]
    if not names and examples:
        names = list(examples[0])
    fields: dict[str, Any] = {"examples": examples[:5]}
    classes = getattr(estimator, "classes_", None)
    fields["task"] = "classification" if classes is not None else "regression"
    if classes is not None:
        fields["classes"] = [str(c) for c in classes]
    outputs = {
        "predictions": {
            "dtype": "string"
            if classes is not None and not _numeric(classes)
            else "float64",
            "shape": [-1],
        }
    }
    if names:
        findings = inspect_pipeline(estimator, names)
        dtypes = _feature_dtypes(findings, names, examples)
        fields["features"] = [
            {"name": n, "dtype": d, "nullable": n in findings.imputed}
            for n, d in dtypes.items()
        ]
        if not examples:
            # Values the pipeline was fitted on (medians, modes, categories) make an
            # example row to smoke-test, warm up and document the version.
            row = fitted_row(findings, dtypes)
            fields["examples"] = [row] if row is not None else []
        inputs = {
            f["name"]: {"dtype": f["dtype"], "shape": [-1]} for f in fields["features"]
        }
    else:
        width = getattr(estimator, "n_features_in_", None)
        if width is None:
            raise CommandError(
                "cannot tell the estimator's inputs: it has no feature_names_in_ or "
                "n_features_in_; pass --example with input rows"
            )
        inputs = {"inputs": {"dtype": "float64", "shape": [-1, int(width)]}}
    method = "classify" if classes is not None else "regress"
    signatures: dict[str, Any] = {
        "serving_default": {"method": "predict", "inputs": inputs, "outputs": outputs},
        method: {"method": method, "inputs": inputs, "outputs": outputs},
    }
    if classes is not None and hasattr(estimator, "predict_proba"):
        signatures["predict_proba"] = {
            "method": "predict",
            "inputs": inputs,
            "outputs": {
                "probabilities": {"dtype": "float64", "shape": [-1, len(classes)]}
            },
        }
    fields["signatures"] = signatures
    return fields


def _feature_dtypes(
    findings: Findings, names: list[str], examples: list[dict[str, Any]]
) -> dict[str, str]:
    known = known_dtypes(findings, names)
    dtypes: dict[str, str] = {}
    unknown: list[str] = []
    for name in names:
        seen = _dtype_of([row.get(name) for row in examples]) if examples else None
        if name in known:
            # "A number" from the pipeline; the rows may say which kind.
            numeric = known[name] == "float64" and seen in ("int64", "float64")
            dtypes[name] = seen if numeric and seen else known[name]
        elif seen is not None:
            dtypes[name] = seen
        else:
            unknown.append(name)
    if unknown:
        raise CommandError(
            f"cannot tell the dtype of {', '.join(unknown)} from the fitted pipeline "
            "(no encoder, imputer or column selector shows it); pass --example with "
            "a CSV or JSON file of input rows"
        )
    return dtypes


def _numeric(values: Any) -> bool:
    return all(
        isinstance(v, (int, float)) or hasattr(v, "dtype") and v.dtype.kind in "iuf"
        for v in values
    )
