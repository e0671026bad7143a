"""Payload generation of the Locust users (tests/load/payloads.py).

The module is loaded from its file under a private name: the locustfile imports its
siblings as top-level modules, which must not leak into the test process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

PAYLOADS_FILE = Path(__file__).resolve().parents[1] / "load" / "payloads.py"


@pytest.fixture(scope="module")
def payloads() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "servekit_load_payloads", PAYLOADS_FILE
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while building the classes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MANIFEST: dict[str, Any] = {
    "name": "housing",
    "features": [
        {"name": "income", "dtype": "float64"},
        {"name": "rooms", "dtype": "int64"},
        {"name": "ocean", "dtype": "string"},
    ],
    "signatures": {
        "serving_default": {
            "method": "predict",
            "inputs": {
                "income": {"dtype": "float64", "shape": [-1]},
                "rooms": {"dtype": "int64", "shape": [-1]},
                "ocean": {"dtype": "string", "shape": [-1]},
            },
            "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
        }
    },
    "examples": [
        {"income": 1.5, "rooms": 3, "ocean": "NEAR BAY"},
        {"income": 8.0, "rooms": 7, "ocean": "INLAND"},
        {"income": 4.0, "rooms": 5, "ocean": "INLAND"},
    ],
}

# `GET /v1/models/half_plus_two/metadata` of TF Serving's test model, trimmed.
V1_METADATA: dict[str, Any] = {
    "model_spec": {"name": "half_plus_two", "version": "123", "signature_name": ""},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {
                        "x": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {
                                "dim": [
                                    {"size": "-1", "name": ""},
                                    {"size": "1", "name": ""},
                                ],
                                "unknown_rank": False,
                            },
                            "name": "x:0",
                        }
                    },
                    "outputs": {},
                    "method_name": "tensorflow/serving/predict",
                }
            }
        }
    },
}


def test_rows_stay_within_what_the_examples_show(payloads: ModuleType) -> None:
    schema = payloads.schema_from_manifest(MANIFEST)
    batches = payloads.build_batches(schema, batch_size=50, seed=1)
    assert len(batches) == payloads.MAX_POOL_SIZE
    columns = batches[0]
    assert columns["income"].dtype == np.float64 and columns["income"].shape == (50,)
    assert columns["income"].min() >= 1.5 and columns["income"].max() <= 8.0
    assert columns["rooms"].dtype == np.int64
    assert set(columns["rooms"].tolist()) <= set(range(3, 8))
    assert set(columns["ocean"].tolist()) <= {"NEAR BAY", "INLAND"}
    # Random, not a copy of one example.
    assert len(set(columns["income"].tolist())) > 40


def test_seed_makes_payloads_repeatable(payloads: ModuleType) -> None:
    schema = payloads.schema_from_manifest(MANIFEST)
    first = payloads.build_batches(schema, batch_size=4, seed=7)[3]
    again = payloads.build_batches(schema, batch_size=4, seed=7)[3]
    assert all(np.array_equal(first[name], again[name]) for name in first)


def test_bodies_per_protocol(payloads: ModuleType) -> None:
    schema = payloads.schema_from_manifest(MANIFEST)
    columns = payloads.build_batches(schema, batch_size=2, seed=3)[0]
    v1 = json.loads(payloads.v1_predict_body(columns, "serving_default"))
    assert list(v1) == ["instances"] and len(v1["instances"]) == 2
    assert set(v1["instances"][0]) == {"income", "rooms", "ocean"}
    assert isinstance(v1["instances"][0]["rooms"], int)
    v2 = json.loads(payloads.v2_infer_body(columns, schema))
    by_name = {entry["name"]: entry for entry in v2["inputs"]}
    assert by_name["income"]["datatype"] == "FP64" and by_name["income"]["shape"] == [2]
    assert by_name["ocean"]["datatype"] == "BYTES"
    assert [row["rooms"] for row in v1["instances"]] == by_name["rooms"]["data"]
    typed = json.loads(payloads.typed_predict_body(columns))
    assert typed == {"instances": v1["instances"]}
    other = json.loads(payloads.v1_predict_body(columns, "predict_proba"))
    assert other["signature_name"] == "predict_proba"


def test_metadata_schema_without_examples(payloads: ModuleType) -> None:
    schema = payloads.schema_from_v1_metadata(V1_METADATA)
    (spec,) = schema.inputs
    assert (spec.name, spec.dtype, spec.shape) == ("x", "float32", (-1, 1))
    columns = payloads.build_batches(schema, batch_size=3, seed=0)[0]
    assert columns["x"].shape == (3, 1) and columns["x"].dtype == np.float32
    assert ((columns["x"] >= 0) & (columns["x"] < 1)).all()


def test_v2_metadata_schema(payloads: ModuleType) -> None:
    schema = payloads.schema_from_v2_metadata(
        {
            "name": "linear",
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [-1]},
                {"name": "flag", "datatype": "BOOL", "shape": [-1, 2]},
            ],
        }
    )
    columns = payloads.build_batches(schema, batch_size=5, seed=0)[0]
    assert columns["a"].shape == (5,) and columns["flag"].shape == (5, 2)
    assert columns["flag"].dtype == np.bool_


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            {
                **MANIFEST,
                "signatures": {"other": MANIFEST["signatures"]["serving_default"]},
            },
            "no signature",
        ),
        ({"name": "x", "signatures": {"serving_default": {"inputs": {}}}}, "no inputs"),
        (
            {
                "name": "x",
                "signatures": {
                    "serving_default": {
                        "inputs": {"a": {"dtype": "complex64", "shape": [-1]}}
                    }
                },
            },
            "unknown dtype",
        ),
    ],
)
def test_unusable_manifest_is_refused(
    payloads: ModuleType, manifest: dict[str, Any], message: str
) -> None:
    with pytest.raises(payloads.SchemaError, match=message):
        payloads.schema_from_manifest(manifest)
