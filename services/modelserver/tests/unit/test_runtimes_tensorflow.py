"""The TensorFlow runtime: SavedModels loaded as graphs into sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelserver import examplecolumns
from modelserver.errors import (
    ArtifactNotFound,
    InvalidInput,
    LoadError,
    PredictSignatureNotFound,
)
from modelserver.registry.warmup import WARMUP_FILE, read_tfrecords, warm_up
from modelserver.runtimes.base import Runtime
from modelserver.runtimes.tensorflow import SessionOptions, TensorFlowRuntime
from modelserver.types import PREDICT_METHOD, Example, SignatureInfo

from tests.support.models import TFSERVING_TESTDATA

pytestmark = pytest.mark.slow


def load(path: Path, **kwargs: Any) -> TensorFlowRuntime:
    return TensorFlowRuntime.load(
        name="model", version=1, path=path, options=SessionOptions(), **kwargs
    )


def predict(runtime: Runtime, signature: str, **inputs: np.ndarray) -> dict[str, Any]:
    return runtime.run(runtime.prepare_predict(signature, inputs, ()))


def test_predict_by_signature_with_variable_batch(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    for rows in (1, 3, 17):
        x = np.arange(rows, dtype=np.float32)
        np.testing.assert_allclose(predict(runtime, "", x=x)["y"], 0.5 * x + 2)
    runtime.close()


def test_string_tensors_in_and_out(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    text = np.array([b"abc", "h\u00e9".encode(), b""], dtype=object)
    outputs = predict(runtime, "echo", text=text)
    assert outputs["text"].tolist() == text.tolist()
    assert outputs["length"].tolist() == [3, 3, 0]
    # Unicode numpy strings are encoded as UTF-8.
    unicode_outputs = predict(runtime, "echo", text=np.array(["h\u00e9"]))
    assert unicode_outputs["text"].tolist() == ["h\u00e9".encode()]


def test_output_filter_selects_and_orders_outputs(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    call = runtime.prepare_predict(
        "echo", {"text": np.array([b"ab"], dtype=object)}, ("length",)
    )
    assert list(runtime.run(call)) == ["length"]
    with pytest.raises(InvalidInput, match="output tensor alias not found"):
        runtime.prepare_predict(
            "echo", {"text": np.array([b"a"], dtype=object)}, ("nope",)
        )
    with pytest.raises(InvalidInput, match="duplicate output tensor alias"):
        runtime.prepare_predict(
            "echo", {"text": np.array([b"a"], dtype=object)}, ("length", "length")
        )


def test_wrong_dtype_gets_tensorflows_message(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    with pytest.raises(InvalidInput, match="Expects arg.0. to be float but double"):
        runtime.prepare_predict("", {"x": np.array([1.0])}, ())
    with pytest.raises(InvalidInput, match="to be float but string"):
        runtime.prepare_predict("", {"x": np.array([b"1"], dtype=object)}, ())


def test_wrong_rank_fails_in_the_graph_as_invalid_input(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    call = runtime.prepare_predict(
        "row_sum", {"rows": np.array([1.0, 2.0], dtype=np.float32)}, ()
    )
    with pytest.raises(InvalidInput):
        runtime.run(call)


def test_missing_inputs_and_unknown_signature(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    with pytest.raises(InvalidInput, match="Missing but required: {x}"):
        runtime.prepare_predict("", {}, ())
    with pytest.raises(PredictSignatureNotFound, match='"nope" not found'):
        runtime.prepare_predict("nope", {}, ())


def test_classify_and_regress_from_examples(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    call = runtime.prepare_regress("regress", [{"x": [2.0]}, {"x": [4.0]}], None)
    assert runtime.to_regressions(call, runtime.run(call)).tolist() == [3.0, 4.0]
    call = runtime.prepare_classify("classify", [{"x": [3.0]}], None)
    ((large, small),) = runtime.to_classifications(call, runtime.run(call)).pairs()
    assert large[0] == "large"
    assert small[0] == "small"
    assert large[1] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)


def test_examples_as_columns_run_as_the_dicts_do(tf_saved_model: Path) -> None:
    # A large gRPC message's examples arrive as columns (decoded in a worker).
    runtime = load(tf_saved_model)
    examples: list[Example] = [{"x": [2.0]}, {"x": [4.0], "note": [b"n"]}, {}]
    context: Example = {"x": [7.0]}
    columns = examplecolumns.from_examples(examples, context)
    for signature in ("regress", "classify"):
        prepare = getattr(runtime, f"prepare_{signature}")
        from_dicts = runtime.run(prepare(signature, examples, context))
        from_columns = runtime.run(prepare(signature, columns, None))
        assert from_dicts.keys() == from_columns.keys()
        for key, value in from_dicts.items():
            np.testing.assert_array_equal(from_columns[key], value)


def test_classify_needs_a_classification_signature(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    with pytest.raises(InvalidInput, match="classes"):
        runtime.prepare_classify("regress", [{"x": [1.0]}], None)
    with pytest.raises(InvalidInput, match="Expected one output Tensor"):
        runtime.prepare_regress("echo", [{"x": [1.0]}], None)


def test_method_name_check_is_off_by_default_as_in_tf_serving(
    tf_saved_model: Path,
) -> None:
    # TF2 exports mark every signature "predict"; TF Serving still classifies
    # with them unless --enable_signature_method_name_check.
    checked = load(tf_saved_model, method_name_check=True)
    with pytest.raises(InvalidInput, match="Expected regression signature"):
        checked.prepare_regress("regress", [{"x": [2.0]}], None)


def test_warmup_replays_every_record(tf_saved_model: Path) -> None:
    runtime = load(tf_saved_model)
    records = list(read_tfrecords(tf_saved_model / WARMUP_FILE))
    assert len(records) == 2
    assert warm_up(runtime) == 2
    assert warm_up(runtime, iterations=3) == 6


def test_failing_warmup_record_fails_the_load(
    tf_saved_model: Path, tmp_path: Path
) -> None:
    from servekit_protocol import messages

    copy = tmp_path / "1"
    shutil.copytree(tf_saved_model, copy)
    log = messages.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "missing"
    record = log.SerializeToString()
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(copy / WARMUP_FILE)) as writer:
        writer.write(record)
    runtime = load(copy)
    with pytest.raises(LoadError, match="Warmup predict_log request failed"):
        warm_up(runtime)


def test_truncated_warmup_file_fails_the_load(
    tf_saved_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(tf_saved_model, copy)
    data = (copy / WARMUP_FILE).read_bytes()
    (copy / WARMUP_FILE).write_bytes(data[:-3])
    with pytest.raises(LoadError, match="Truncated"):
        warm_up(load(copy))


def test_missing_or_corrupt_saved_model(tmp_path: Path) -> None:
    empty = tmp_path / "1"
    empty.mkdir()
    with pytest.raises(ArtifactNotFound, match="Could not find SavedModel"):
        load(empty)
    (empty / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(LoadError) as caught:
        load(empty)
    assert caught.value.code_value != 0


# --- TF Serving's own test models -------------------------------------------------


def _signature_json(info: SignatureInfo) -> dict[str, Any]:
    """A SignatureInfo in the JSON form of TF Serving's expected metadata files."""

    def tensor(entry: Any) -> dict[str, Any]:
        shape = entry.shape
        return {
            "dtype": entry.dtype,
            "tensor_shape": {
                "dim": []
                if shape is None
                else [{"size": str(size), "name": ""} for size in shape],
                "unknown_rank": shape is None,
            },
            "name": entry.name,
        }

    return {
        "inputs": {alias: tensor(entry) for alias, entry in info.inputs.items()},
        "outputs": {alias: tensor(entry) for alias, entry in info.outputs.items()},
        "method_name": info.method_name,
        "defaults": {},
    }


@pytest.mark.parametrize(
    ("model", "expected_file"),
    [
        ("half_plus_two", "half_plus_two_model_metadata.json"),
        (
            "saved_model_half_plus_two_2_versions",
            "saved_model_half_plus_two_2_versions_metadata.json",
        ),
    ],
)
def test_metadata_matches_tf_serving_exactly(
    tfserving_models: Path, model: str, expected_file: str
) -> None:
    expected = json.loads((TFSERVING_TESTDATA / "expected" / expected_file).read_text())
    runtime = load(tfserving_models / model / "00000123")
    actual = {key: _signature_json(info) for key, info in runtime.signatures.items()}
    assert actual == expected["metadata"]["signature_def"]["signature_def"]


def test_tf1_graphs_that_tf2_loading_refuses_still_serve(
    tfserving_models: Path,
) -> None:
    three = load(tfserving_models / "half_plus_three" / "00000123")
    x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    np.testing.assert_allclose(predict(three, "", x=x)["y"], [3.5, 4.0, 5.5])
    counter = load(tfserving_models / "saved_model_counter" / "00000123")
    assert predict(counter, "incr_counter")["output"] == 1.0
    assert predict(counter, "incr_counter")["output"] == 2.0
    delta = np.array(3.0, dtype=np.float32)
    assert predict(counter, "incr_counter_by", delta=delta)["output"] == 5.0
    assert predict(counter, "get_counter")["output"] == 5.0
    assert predict(counter, "reset_counter")["output"] == 0.0


def test_tf_serving_rest_examples(tfserving_models: Path) -> None:
    # tensorflow_model_server_test.py: instances [2, 3, 4] -> [3, 3.5, 4] (the
    # [-1, 1] signature shape is not enforced), classify/regress x=2 -> 3.
    runtime = load(tfserving_models / "half_plus_two" / "00000123")
    x = np.array([2.0, 3.0, 4.0], dtype=np.float32)
    np.testing.assert_allclose(predict(runtime, "", x=x)["y"], [3.0, 3.5, 4.0])
    call = runtime.prepare_classify("classify_x_to_y", [{"x": [2.0]}], None)
    assert runtime.to_classifications(call, runtime.run(call)).pairs() == [[("", 3.0)]]
    call = runtime.prepare_regress("regress_x_to_y", [{"x": [2.0]}], None)
    assert runtime.to_regressions(call, runtime.run(call)).tolist() == [3.0]
    tf2 = load(tfserving_models / "half_plus_two_tf2" / "00000123")
    call = tf2.prepare_regress("regress_x_to_y", [{"x": [2.0]}], None)
    assert tf2.to_regressions(call, tf2.run(call)).tolist() == [3.0]
    assert (
        tf2.signatures["__saved_model_init_op"].outputs["__saved_model_init_op"].dtype
        == "DT_INVALID"
    )
    assert tf2.signatures["serving_default"].method_name == PREDICT_METHOD
    # serving_default of the TF2 model has a default for x.
    np.testing.assert_allclose(predict(tf2, "")["y"], [2.0])
