"""Wire compatibility with the official TensorFlow / TF Serving classes.

Every TensorFlow import of this package's tests lives in this folder, so the
import cost is paid once. TensorFlow's own tools against ours (tensors, gRPC
stubs, config files, metadata JSON): test_official_apis.py.
"""

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from servekit_protocol import messages, metadata

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

# (our generated module, the official modules it mirrors)
MIRRORS: dict[str, tuple[str, ...]] = {
    "types": ("tensorflow.core.framework.types_pb2",),
    "tensor_shape": ("tensorflow.core.framework.tensor_shape_pb2",),
    "tensor": ("tensorflow.core.framework.tensor_pb2",),
    "feature": ("tensorflow.core.example.feature_pb2",),
    "example": ("tensorflow.core.example.example_pb2",),
    "meta_graph": ("tensorflow.core.protobuf.meta_graph_pb2",),
    "error_codes": ("tensorflow.compiler.xla.tsl.protobuf.error_codes_pb2",),
    "model": ("tensorflow_serving.apis.model_pb2",),
    "predict": ("tensorflow_serving.apis.predict_pb2",),
    "input": ("tensorflow_serving.apis.input_pb2",),
    "classification": ("tensorflow_serving.apis.classification_pb2",),
    "regression": ("tensorflow_serving.apis.regression_pb2",),
    "inference": ("tensorflow_serving.apis.inference_pb2",),
    "get_model_metadata": ("tensorflow_serving.apis.get_model_metadata_pb2",),
    "status": ("tensorflow_serving.apis.status_pb2",),
    "get_model_status": ("tensorflow_serving.apis.get_model_status_pb2",),
    "file_system_storage_path_source": (
        "tensorflow_serving.config.file_system_storage_path_source_pb2",
    ),
    "logging_config": (
        "tensorflow_serving.config.logging_config_pb2",
        "tensorflow_serving.config.log_collector_config_pb2",
    ),
    "model_server_config": ("tensorflow_serving.config.model_server_config_pb2",),
    "model_management": ("tensorflow_serving.apis.model_management_pb2",),
    "prediction_log": (
        "tensorflow_serving.apis.prediction_log_pb2",
        "tensorflow_serving.apis.logging_pb2",
    ),
}

# What the mirrors leave out on purpose (graph internals, LLM streaming options,
# SessionService); anything else missing is a bug.
OMITTED_FIELDS = {
    "TensorProto.resource_handle_val",
    "TensorProto.variant_val",
    "TensorInfo.composite_tensor",
    "PredictRequest.predict_streamed_options",
    "PredictRequest.client_id",
    "PredictRequest.request_options",
    "PredictionLog.session_run_log",
}
PACKAGES = (
    "servekit.tfs.error.",
    "servekit.tfs.",
    "tensorflow.serving.",
    "tensorflow.error.",
)


def _relative(full_name: str) -> str:
    for prefix in (*PACKAGES, "tensorflow."):
        if full_name.startswith(prefix):
            return full_name[len(prefix) :]
    return full_name


def _field_signature(field: FieldDescriptor) -> tuple[Any, ...]:
    target = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.is_packed,
        field.json_name,
        field.containing_oneof.name if field.containing_oneof else None,
        _relative(target.full_name) if target else None,
    )


def _messages(
    descriptor: Descriptor, prefix: str = ""
) -> Iterator[tuple[str, Descriptor]]:
    name = f"{prefix}{descriptor.name}"
    yield name, descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested, f"{name}.")


def _file_messages(files: list[FileDescriptor]) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}
    for file in files:
        for descriptor in file.message_types_by_name.values():
            found.update(_messages(descriptor))
    return found


def _enums(files: list[FileDescriptor]) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for file in files:
        for enum in file.enum_types_by_name.values():
            found[enum.name] = [(value.name, value.number) for value in enum.values]
        for name, descriptor in _file_messages([file]).items():
            for enum in descriptor.enum_types:
                found[f"{name}.{enum.name}"] = [(v.name, v.number) for v in enum.values]
    return found


@pytest.mark.parametrize("ours", sorted(MIRRORS))
def test_descriptors_match_the_official_ones(ours: str) -> None:
    our_file = importlib.import_module(
        f"servekit_protocol._generated.{ours}_pb2"
    ).DESCRIPTOR
    their_files = [importlib.import_module(name).DESCRIPTOR for name in MIRRORS[ours]]
    our_messages = _file_messages([our_file])
    their_messages = _file_messages(their_files)
    for name, descriptor in our_messages.items():
        assert name in their_messages, f"{name} does not exist upstream"
        theirs = {f.name: f for f in their_messages[name].fields}
        for field in descriptor.fields:
            assert field.name in theirs, f"{name}.{field.name} does not exist upstream"
            assert _field_signature(field) == _field_signature(theirs[field.name]), (
                f"{name}.{field.name}"
            )
        missing = {f"{name}.{f}" for f in theirs} - {
            f"{name}.{f.name}" for f in descriptor.fields
        }
        assert missing <= OMITTED_FIELDS, missing
    for name, values in _enums([our_file]).items():
        assert values == _enums(their_files)[name], name


# ---- byte-for-byte round trips ---------------------------------------------------------


def _tensor(array: Any, dtype: Any = None) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(array, dtype=dtype)


def _example(**features: Any) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
        elif isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.int64_list.value.extend(values)
    return example


def _model_spec(**fields: Any) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name="half_plus_two", signature_name="serving_default")
    if "version" in fields:
        spec.version.value = fields["version"]
    if "label" in fields:
        spec.version_label = fields["label"]
    return spec


def _input(with_context: bool) -> input_pb2.Input:
    request_input = input_pb2.Input()
    rows = [_example(x=[1.5], tag=[b"a"]), _example(x=[-2.0], n=[3, 4])]
    if with_context:
        request_input.example_list_with_context.examples.extend(rows)
        request_input.example_list_with_context.context.CopyFrom(_example(c=[7]))
    else:
        request_input.example_list.examples.extend(rows)
    return request_input


def _predict_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=_model_spec(version=123))
    request.inputs["x"].CopyFrom(_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)))
    request.inputs["s"].CopyFrom(_tensor([b"a", b"\xff"]))
    request.inputs["b"].CopyFrom(_tensor([True, False]))
    request.inputs["h"].CopyFrom(_tensor(np.array([0.5], np.float16)))
    request.inputs["c"].CopyFrom(_tensor(np.array([1 + 2j], np.complex64)))
    request.inputs["u"].CopyFrom(_tensor(np.array([7], np.uint16)))
    request.inputs["k"].CopyFrom(_tensor(3.5, dtype=tf.float32))
    request.output_filter.extend(["y", "z"])
    return request


def _predict_response() -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse(model_spec=_model_spec(label="stable"))
    response.outputs["y"].CopyFrom(_tensor(np.array([[2.5], [3.0]], np.float64)))
    response.outputs["z"].CopyFrom(_tensor(np.array([1, 2], np.int64)))
    return response


def _classification_response() -> classification_pb2.ClassificationResponse:
    response = classification_pb2.ClassificationResponse(
        model_spec=_model_spec(version=2)
    )
    for scores in ([0.25, 0.75], [0.5, 0.5]):
        classifications = response.result.classifications.add()
        for label, score in zip(("cat", "dog"), scores, strict=True):
            classifications.classes.add(label=label, score=score)
    return response


def _regression_response() -> regression_pb2.RegressionResponse:
    response = regression_pb2.RegressionResponse(model_spec=_model_spec(version=2))
    response.result.regressions.add(value=1.25)
    response.result.regressions.add(value=-3.0)
    return response


def _signature_def_map() -> get_model_metadata_pb2.SignatureDefMap:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    predict = signatures.signature_def["serving_default"]
    predict.method_name = "tensorflow/serving/predict"
    x = predict.inputs["x"]
    x.name = "x:0"
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=-1)
    x.tensor_shape.dim.add(size=1)
    predict.outputs["y"].name = "y:0"
    predict.outputs["y"].dtype = types_pb2.DT_FLOAT
    predict.outputs["y"].tensor_shape.unknown_rank = True
    predict.defaults["scale"].CopyFrom(_tensor(2.0))
    classify = signatures.signature_def["classify_x_to_y"]
    classify.method_name = "tensorflow/serving/classify"
    classify.inputs["inputs"].coo_sparse.values_tensor_name = "v:0"
    classify.inputs["inputs"].dtype = types_pb2.DT_STRING
    return signatures


def _metadata_response() -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_model_spec(version=123)
    )
    response.metadata["signature_def"].Pack(_signature_def_map())
    return response


def _status_response() -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(
        version=123, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    )
    failed = response.model_version_status.add(
        version=124, state=get_model_status_pb2.ModelVersionStatus.END
    )
    failed.status.error_code = 9
    failed.status.error_message = "could not load"
    return response


def _model_server_config() -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    first = config.model_config_list.config.add(
        name="half", base_path="/models/half", model_platform="tensorflow"
    )
    first.model_version_policy.specific.versions.extend([1, 2])
    first.version_labels["stable"] = 1
    first.version_labels["canary"] = 2
    first.logging_config.sampling_config.sampling_rate = 0.5
    first.logging_config.log_collector_config.type = "file"
    second = config.model_config_list.config.add(
        name="tabular", base_path="/models/tab"
    )
    second.model_platform = "sklearn"
    second.model_version_policy.latest.num_versions = 2
    third = config.model_config_list.config.add(name="all", base_path="/m/all")
    third.model_version_policy.all.SetInParent()
    return config


def _multi_inference_request() -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest(input=_input(with_context=True))
    request.tasks.add(
        model_spec=_model_spec(), method_name="tensorflow/serving/classify"
    )
    request.tasks.add(
        model_spec=_model_spec(), method_name="tensorflow/serving/regress"
    )
    return request


def _multi_inference_response() -> inference_pb2.MultiInferenceResponse:
    response = inference_pb2.MultiInferenceResponse()
    first = response.results.add(model_spec=_model_spec(version=1))
    first.classification_result.CopyFrom(_classification_response().result)
    second = response.results.add(model_spec=_model_spec(version=1))
    second.regression_result.CopyFrom(_regression_response().result)
    return response


def _prediction_log() -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(_predict_request())
    log.predict_log.response.CopyFrom(_predict_response())
    log.log_metadata.model_spec.CopyFrom(_model_spec(version=1))
    log.log_metadata.saved_model_tags.append("serve")
    return log


CASES: dict[str, tuple[Callable[[], Message], type[Message]]] = {
    "PredictRequest": (_predict_request, messages.PredictRequest),
    "PredictResponse": (_predict_response, messages.PredictResponse),
    "ClassificationRequest": (
        lambda: classification_pb2.ClassificationRequest(
            model_spec=_model_spec(label="canary"), input=_input(with_context=False)
        ),
        messages.ClassificationRequest,
    ),
    "ClassificationResponse": (
        _classification_response,
        messages.ClassificationResponse,
    ),
    "RegressionRequest": (
        lambda: regression_pb2.RegressionRequest(
            model_spec=_model_spec(), input=_input(with_context=True)
        ),
        messages.RegressionRequest,
    ),
    "RegressionResponse": (_regression_response, messages.RegressionResponse),
    "MultiInferenceRequest": (_multi_inference_request, messages.MultiInferenceRequest),
    "MultiInferenceResponse": (
        _multi_inference_response,
        messages.MultiInferenceResponse,
    ),
    "GetModelMetadataRequest": (
        lambda: get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(version=7), metadata_field=["signature_def"]
        ),
        messages.GetModelMetadataRequest,
    ),
    "GetModelMetadataResponse": (_metadata_response, messages.GetModelMetadataResponse),
    "SignatureDefMap": (_signature_def_map, messages.SignatureDefMap),
    "GetModelStatusRequest": (
        lambda: get_model_status_pb2.GetModelStatusRequest(
            model_spec=_model_spec(version=3)
        ),
        messages.GetModelStatusRequest,
    ),
    "GetModelStatusResponse": (_status_response, messages.GetModelStatusResponse),
    "ReloadConfigRequest": (
        lambda: model_management_pb2.ReloadConfigRequest(
            config=_model_server_config(), metric_names=["a"]
        ),
        messages.ReloadConfigRequest,
    ),
    "ReloadConfigResponse": (
        lambda: model_management_pb2.ReloadConfigResponse(
            status={"error_code": 3, "error_message": "bad"},
            metric=[model_management_pb2.Metric(name="m", int64_value_increase=4)],
        ),
        messages.ReloadConfigResponse,
    ),
    "ModelServerConfig": (_model_server_config, messages.ModelServerConfig),
    "PredictionLog": (_prediction_log, messages.PredictionLog),
    "SignatureDef": (
        lambda: meta_graph_pb2.SignatureDef(
            method_name="tensorflow/serving/regress",
            inputs={
                "x": meta_graph_pb2.TensorInfo(name="x:0", dtype=types_pb2.DT_DOUBLE)
            },
        ),
        messages.SignatureDef,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_bytes_survive_our_classes(case: str) -> None:
    build, ours = CASES[case]
    official = build()
    wire = official.SerializeToString(deterministic=True)
    parsed = ours.FromString(wire)
    assert parsed.SerializeToString(deterministic=True) == wire
    assert parsed.ByteSize() == official.ByteSize()


@pytest.mark.parametrize("case", sorted(set(CASES) - {"GetModelMetadataResponse"}))
def test_our_bytes_survive_the_official_classes(case: str) -> None:
    build, ours = CASES[case]
    official = build()
    # Rebuild the message with our classes from its text form, so the bytes
    # come from our serializer, not from a re-encoding of theirs.
    mine = text_format.Parse(text_format.MessageToString(official), ours())
    wire = mine.SerializeToString(deterministic=True)
    assert type(official).FromString(wire) == official
    assert wire == official.SerializeToString(deterministic=True)


def test_our_metadata_response_survives_the_official_class() -> None:
    mine = messages.GetModelMetadataResponse()
    mine.model_spec.name = "half_plus_two"
    mine.model_spec.version.value = 123
    signatures = text_format.Parse(
        text_format.MessageToString(_signature_def_map()), messages.SignatureDefMap()
    )
    metadata.pack_signature_def_map(signatures, into=mine.metadata["signature_def"])
    official = get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        mine.SerializeToString()
    )
    assert official.model_spec == model_pb2.ModelSpec(
        name="half_plus_two", version={"value": 123}
    )
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert official.metadata["signature_def"].Unpack(unpacked)
    assert unpacked == _signature_def_map()


def test_fields_we_do_not_declare_survive_a_pass_through() -> None:
    official = _predict_request()
    official.client_id = b"client-7"
    official.request_options.max_cache_length = 64
    ours = messages.PredictRequest.FromString(official.SerializeToString())
    assert predict_pb2.PredictRequest.FromString(ours.SerializeToString()) == official


# ---- metadata ----------------------------------------------------------------------------


def test_signature_def_map_unpacks_with_the_official_class() -> None:
    ours = messages.SignatureDefMap.FromString(_signature_def_map().SerializeToString())
    response = messages.GetModelMetadataResponse()
    metadata.pack_signature_def_map(
        ours, into=response.metadata[metadata.SIGNATURE_DEF_FIELD]
    )
    official = get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        response.SerializeToString()
    )
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert official.metadata["signature_def"].Unpack(unpacked)
    assert unpacked == _signature_def_map()
    assert (
        official.metadata["signature_def"].type_url
        == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    )


def test_official_metadata_unpacks_with_ours() -> None:
    wire = _metadata_response().SerializeToString()
    ours = messages.GetModelMetadataResponse.FromString(wire)
    unpacked = metadata.unpack_signature_def_map(ours.metadata["signature_def"])
    assert unpacked.signature_def["serving_default"].inputs["x"].name == "x:0"


# ---- text-format config files -------------------------------------------------------------


def test_rich_model_config_text_parses_like_tf_serving() -> None:
    text = text_format.MessageToString(_model_server_config())
    ours = text_format.Parse(text, messages.ModelServerConfig())
    assert ours.SerializeToString(
        deterministic=True
    ) == _model_server_config().SerializeToString(deterministic=True)
