"""The official TensorFlow / TF Serving tools against ours: TensorFlow's tensor
functions, the generated gRPC stubs and servicers, TF Serving's config files and
its metadata JSON. (Descriptors and byte round trips: test_official_wire.py.)
"""

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from servekit_protocol import json_codec, messages, metadata, services, tensors

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow.python.framework import dtypes as tf_dtypes  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

# ../shared next to the repository root.
SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "tfserving-testdata"


# ---- tensors ----------------------------------------------------------------------------

MAKE_TENSOR_PROTO_CASES: list[tuple[Any, Any]] = [
    (np.arange(12, dtype=np.float32).reshape(3, 4), None),
    (np.array([0.1, -0.0, np.inf]), None),
    (np.array([1.5, -2.0], np.float16), None),
    (np.array([1.0, 2.5], np.float32), tf.bfloat16),
    (np.array([-5, 7], np.int8), None),
    (np.array([-5, 7], np.int16), None),
    (np.array([-5, 7], np.int32), None),
    (np.array([2**62, -7], np.int64), None),
    (np.array([0, 255], np.uint8), None),
    (np.array([0, 65535], np.uint16), None),
    (np.array([0, 2**32 - 1], np.uint32), None),
    (np.array([0, 2**64 - 1], np.uint64), None),
    (np.array([True, False, True]), None),
    (np.array([1 + 2j, 3 - 4j], np.complex64), None),
    (np.array([1 + 2j, 3 - 4j], np.complex128), None),
    ([b"abc", b"", b"\x00\xff"], None),
    (["héllo", "x"], tf.string),
    (3.25, None),
    (7, None),
    (True, None),
    (1.5, "broadcast"),
    (np.zeros((0, 3), np.float32), None),
    ([[1, 2], [3, 4]], tf.float16),
    ([1, 2], tf_dtypes.int4),
    ([3, 14], tf_dtypes.uint4),
    ([1.0, 2.0], tf_dtypes.float8_e5m2),
    ([1.0, 2.0], tf_dtypes.float8_e4m3fn),
]


@pytest.mark.parametrize(("values", "dtype"), MAKE_TENSOR_PROTO_CASES)
def test_make_tensor_proto_decodes_like_make_ndarray(values: Any, dtype: Any) -> None:
    if dtype == "broadcast":
        official = tf.make_tensor_proto(values, shape=[2, 3])
    else:
        official = tf.make_tensor_proto(values, dtype=dtype)
    expected = tf.make_ndarray(official)
    decoded = tensors.to_ndarray(
        messages.TensorProto.FromString(official.SerializeToString())
    )
    assert decoded.shape == expected.shape
    if expected.dtype.kind in "OSU":
        assert decoded.ravel().tolist() == [bytes(v) for v in expected.ravel().tolist()]
    else:
        assert decoded.dtype == expected.dtype
        assert decoded.tobytes() == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("packed", [False, True], ids=["typed", "packed"])
@pytest.mark.parametrize(("values", "dtype"), MAKE_TENSOR_PROTO_CASES)
def test_from_ndarray_is_read_by_make_ndarray(
    values: Any, dtype: Any, packed: bool
) -> None:
    if dtype == "broadcast":
        array = np.full((2, 3), values)
    else:
        array = tf.make_ndarray(tf.make_tensor_proto(values, dtype=dtype))
    official = tensor_pb2.TensorProto.FromString(
        tensors.from_ndarray(array, packed=packed).SerializeToString()
    )
    decoded = tf.make_ndarray(official)
    assert decoded.shape == array.shape
    if array.dtype.kind in "OSU":
        assert decoded.ravel().tolist() == array.ravel().tolist()
    else:
        assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()
    # TensorFlow's C++ parser (behind tf.constant) accepts it too.
    if (
        array.dtype.kind not in "OSU"
        and array.dtype.itemsize >= 1
        and dtype
        not in (
            tf_dtypes.int4,
            tf_dtypes.uint4,
        )
    ):
        tensor = tf.io.parse_tensor(
            official.SerializeToString(), out_type=official.dtype
        )
        assert tensor.numpy().tobytes() == np.ascontiguousarray(array).tobytes()


# ---- gRPC against the official generated code ---------------------------------------------


class OfficialServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def Predict(self, request: Any, context: Any) -> Any:
        del context
        response = predict_pb2.PredictResponse(model_spec=request.model_spec)
        response.outputs["y"].CopyFrom(
            tf.make_tensor_proto(tf.make_ndarray(request.inputs["x"]) + 1)
        )
        return response


class OurServicer(services.PredictionServiceServicer):
    def Predict(
        self, request: messages.PredictRequest, context: Any
    ) -> messages.PredictResponse:
        del context
        response = messages.PredictResponse(model_spec=request.model_spec)
        tensors.from_ndarray(
            tensors.to_ndarray(request.inputs["x"]) + 1, into=response.outputs["y"]
        )
        return response


@pytest.fixture(scope="module")
def official_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        OfficialServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def our_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services.add_prediction_service_to_server(OurServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_our_stub_calls_an_official_server(official_server: str) -> None:
    request = messages.PredictRequest()
    request.model_spec.name = "m"
    tensors.from_ndarray(np.array([1.0, 2.0], np.float32), into=request.inputs["x"])
    with grpc.insecure_channel(official_server) as channel:
        response = services.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert response.model_spec.name == "m"
    assert tensors.to_ndarray(response.outputs["y"]).tolist() == [2.0, 3.0]


def test_official_stub_calls_our_server(our_server: str) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    with grpc.insecure_channel(our_server) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10
        )
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.0, 3.0]


# ---- text-format config files -------------------------------------------------------------


def test_good_model_config_parses_like_tf_serving() -> None:
    path = SHARED / "expected" / "good_model_config.txt"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    text = path.read_text()
    ours = text_format.Parse(text, messages.ModelServerConfig())
    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert [config.name for config in ours.model_config_list.config] == [
        "half_plus_two",
        "half_plus_three",
    ]


def test_unknown_config_fields_fail_loudly() -> None:
    with pytest.raises(text_format.ParseError, match="no_such_field"):
        text_format.Parse(
            'model_config_list { config { name: "a" no_such_field: 1 } }',
            messages.ModelServerConfig(),
        )


# ---- REST JSON parity with TF Serving's expected answers -----------------------------------


@pytest.mark.parametrize(
    ("model", "expected_file"),
    [
        ("half_plus_two/00000123", "half_plus_two_model_metadata.json"),
        (
            "saved_model_half_plus_two_2_versions/00000123",
            "saved_model_half_plus_two_2_versions_metadata.json",
        ),
    ],
)
def test_metadata_json_matches_tf_serving(model: str, expected_file: str) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model_path = SHARED / "models" / model / "saved_model.pb"
    expected_path = SHARED / "expected" / expected_file
    if not saved_model_path.is_file() or not expected_path.is_file():
        pytest.skip("TF Serving test data is not available")
    saved_model = saved_model_pb2.SavedModel.FromString(saved_model_path.read_bytes())
    expected = json_codec.loads(expected_path.read_bytes())

    official = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in saved_model.meta_graphs[0].signature_def.items():
        # TF Serving hides the SavedModel's internal init signature.
        if not key.startswith("__"):
            official.signature_def[key].CopyFrom(signature)
    response = messages.GetModelMetadataResponse()
    response.model_spec.name = expected["model_spec"]["name"]
    response.model_spec.version.value = int(expected["model_spec"]["version"])
    metadata.pack_signature_def_map(
        messages.SignatureDefMap.FromString(official.SerializeToString()),
        into=response.metadata["signature_def"],
    )
    assert json_codec.loads(json_codec.format_metadata_response(response)) == expected
