"""tf.Examples as columns give the scikit-learn runtime what the dicts give it:
the same arrays, or the same refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelregistry import read_manifest
from modelserver import examplecolumns
from modelserver.errors import InvalidInput
from modelserver.runtimes.base import merge_examples
from modelserver.runtimes.sklearn import SklearnRuntime
from modelserver.types import Example

Batch = tuple[list[Example], Example | None]

BATCHES: dict[str, Batch] = {
    "floats": ([{"a": [1.0], "b": [2.5]}, {"a": [0.5], "b": [-1.0]}], None),
    "ints and floats": ([{"a": [1], "b": [2.5]}, {"a": [0.5], "b": [3]}], None),
    "ints": ([{"a": [1], "b": [2]}, {"a": [4], "b": [3]}], None),
    "context": ([{"a": [1.0]}, {"a": [2.0], "b": [9.0]}], {"b": [5.0], "c": [b"x"]}),
    "bytes": ([{"a": [b"1"], "b": [2.0]}], None),
    "extra feature": ([{"a": [1.0], "b": [2.0], "z": [b"p", b"q"]}], None),
    "no b at 1": ([{"a": [1.0], "b": [2.0]}, {"a": [1.0]}, {"b": [1.0]}], None),
    "no a at 2, b twice at 2": (
        [{"a": [1.0], "b": [2.0]}, {"a": [1.0], "b": [1.0]}, {"b": [1.0, 2.0]}],
        None,
    ),
    "b empty at 0": ([{"a": [1.0], "b": []}], None),
    "a absent everywhere": ([{"b": [1.0]}, {"b": [2.0]}], None),
    "b twice at 1, a absent at 1": (
        [{"a": [1.0], "b": [2.0]}, {"b": [2.0, 3.0]}],
        None,
    ),
    "empty": ([], None),
    "empty with context": ([], {"a": [1.0], "b": [1.0]}),
}


def _outcome(call: Any) -> Any:
    try:
        prepared = call()
    except InvalidInput as exc:
        return ("refused", exc.message)
    return (
        "prepared",
        prepared.batch_size,
        {
            name: (value.dtype.str, value.tolist())
            for name, value in prepared.inputs.items()
        },
    )


@pytest.mark.parametrize("name", list(BATCHES))
def test_columns_prepare_what_dicts_prepare(
    sklearn_linear_version: Path, name: str
) -> None:
    runtime = SklearnRuntime.load(
        name="linear",
        version=1,
        path=sklearn_linear_version,
        manifest=read_manifest(sklearn_linear_version),
    )
    examples, context = BATCHES[name]
    columns = examplecolumns.from_examples(examples, context)
    in_place = _outcome(lambda: runtime.prepare_regress("", examples, context))
    from_columns = _outcome(lambda: runtime.prepare_regress("", columns, None))
    assert from_columns == in_place


@pytest.mark.parametrize("name", list(BATCHES))
def test_columns_give_back_the_merged_examples(name: str) -> None:
    examples, context = BATCHES[name]
    columns = examplecolumns.from_examples(examples, context)
    if not examples:
        with pytest.raises(InvalidInput, match="Input is empty"):
            merge_examples(columns, None)
        return
    rebuilt = merge_examples(columns, None)
    assert rebuilt == merge_examples(examples, context)
    # The Python types too: an int stays an int, a float a float.
    for got, want in zip(rebuilt, merge_examples(examples, context), strict=True):
        for feature, values in want.items():
            assert [type(v) for v in got[feature]] == [type(v) for v in values]


def test_a_feature_every_example_holds_once_is_one_array() -> None:
    columns = examplecolumns.from_examples(
        [{"a": [float(i)], "b": [i]} for i in range(5)], None
    )
    assert columns.rows == 5
    a, b = columns.features["a"], columns.features["b"]
    assert a.values.dtype == np.float64
    assert b.values.dtype == np.int64
    assert a.present is None
    assert a.lengths.tolist() == [1] * 5


def test_examples_rebuilt_a_chunk_at_a_time_are_the_merged_examples() -> None:
    rows = 2 * examplecolumns.ROWS_A_CHUNK + 5
    # Sparse features across chunk boundaries, empty lists, several values,
    # and a feature whose kind changes after the first chunk.
    examples: list[Example] = [
        {
            **({"sparse": [float(i), 0.5]} if i % 997 == 0 else {}),
            **({"empty": []} if i % 3 == 0 else {}),
            "mixed": [i] if i < examplecolumns.ROWS_A_CHUNK else [float(i)],
            "text": [b"t%d" % i],
        }
        for i in range(rows)
    ]
    context: Example = {"shared": [1, 2], "sparse": [-1.0]}
    columns = examplecolumns.from_examples(examples, context)
    assert columns.features["mixed"].values.dtype == object
    merged = merge_examples(examples, context)
    rebuilt = list(examplecolumns.iter_examples(columns))
    assert rebuilt == merged
    assert [type(e["mixed"][0]) for e in rebuilt] == [
        type(e["mixed"][0]) for e in merged
    ]
