"""TF Serving protobuf messages <-> :mod:`modelserver.types`, in pairs.

``to_*`` functions read a request message into the dataplane's types (raising
:class:`~modelserver.errors.InvalidInput` for what cannot be decoded);
``from_*`` functions build the response message. Tensors, tf.Examples and the
metadata ``Any`` go through :mod:`servekit_protocol`.

Response ``model_spec``s follow TF Serving's ``MakeModelSpec``: inference
answers name the signature that ran (``serving_default`` when the request left
it empty); metadata answers carry no signature name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from servekit_protocol import examples as example_codec
from servekit_protocol import messages, tensors
from servekit_protocol.errors import ProtocolError
from servekit_protocol.metadata import SIGNATURE_DEF_FIELD, pack_signature_def_map
from servekit_protocol.serving import DEFAULT_SIGNATURE
from servekit_protocol.status import code_name
from servekit_protocol.tensor_limits import (
    DeclaredTensors,
    TensorLimits,
    declare_tensor_protos,
)

from modelserver import examplesize
from modelserver.errors import InvalidInput
from modelserver.types import (
    Classifications,
    ClassifyRequest,
    ClassifyResponse,
    Example,
    InferenceTask,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    MultiInferenceResponse,
    PredictRequest,
    PredictResponse,
    RegressRequest,
    RegressResponse,
    ResolvedSpec,
    SignatureInfo,
    Tensor,
    TensorInfo,
    VersionStatus,
)

# ---- model specs ---------------------------------------------------------------


def to_model_spec(proto: messages.ModelSpec) -> ModelSpec:
    """Read a request's ``model_spec`` (version and label are a oneof)."""
    choice = proto.WhichOneof("version_choice")
    return ModelSpec(
        name=proto.name,
        version=proto.version.value if choice == "version" else None,
        label=proto.version_label if choice == "version_label" else None,
        signature_name=proto.signature_name,
    )


def from_resolved_spec(
    spec: ResolvedSpec, into: messages.ModelSpec, *, with_signature: bool = True
) -> None:
    """Fill a response's ``model_spec`` with the version that answered."""
    into.name = spec.name
    into.version.value = spec.version
    if with_signature:
        into.signature_name = spec.signature_name or DEFAULT_SIGNATURE


# ---- Predict -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeclaredPredict:
    """A PredictRequest whose tensors' shapes are read and within the limits,
    its tensors not decoded yet (:func:`declare_predict_request`)."""

    proto: messages.PredictRequest
    tensors: DeclaredTensors

    @property
    def nbytes(self) -> int:
        """The bytes decoding its tensors allocates and writes."""
        return self.tensors.nbytes

    def decode(self) -> PredictRequest:
        """The request with its tensors decoded.

        Raises:
            InvalidInput: A tensor cannot be decoded.
        """
        try:
            inputs = self.tensors.decode()
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
        return PredictRequest(
            spec=to_model_spec(self.proto.model_spec),
            inputs=inputs,
            output_filter=tuple(self.proto.output_filter),
        )


def declare_predict_request(
    proto: messages.PredictRequest, limits: TensorLimits | None = None
) -> DeclaredPredict:
    """Read a PredictRequest's tensor shapes and check them against ``limits``
    (None: no limit), decoding nothing yet.

    Raises:
        InvalidInput: A malformed shape, or the tensors declare more than
            ``limits``.
    """
    try:
        declared = declare_tensor_protos(proto.inputs.items(), limits)
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
    return DeclaredPredict(proto, declared)


def to_predict_request(
    proto: messages.PredictRequest, limits: TensorLimits | None = None
) -> PredictRequest:
    """Decode a PredictRequest's tensors.

    Args:
        proto: The request.
        limits: The most its tensors may hold together, checked from their
            shapes before any is decoded; None for no limit.

    Raises:
        InvalidInput: A tensor cannot be decoded, or the tensors declare more
            than ``limits``.
    """
    return declare_predict_request(proto, limits).decode()


def from_predict_response(
    response: PredictResponse, *, packed: bool = False
) -> messages.PredictResponse:
    """Encode a PredictResponse as TF Serving does: each output's values in its
    dtype's typed field (``float_val``...), or as ``tensor_content`` when
    ``packed`` (``--enable_serialization_as_tensor_content``)."""
    proto = messages.PredictResponse()
    from_resolved_spec(response.spec, proto.model_spec)
    outputs = proto.outputs
    for name, array in response.outputs.items():
        tensors.from_ndarray(array, into=outputs[name], packed=packed)
    return proto


# ---- Classify / Regress / MultiInference -----------------------------------------


def iter_examples(proto: messages.Input) -> tuple[Iterator[Example], Example | None]:
    """The examples of an ``Input`` (an example list, with or without a
    context), decoded one by one as they are taken, and its context.

    Raises:
        ProtocolError: The context has a feature that cannot be decoded (the
            examples raise it when they are taken).
    """
    kind = proto.WhichOneof("kind")
    if kind == "example_list":
        listed = proto.example_list.examples
        return (example_codec.to_dict(e) for e in listed), None
    if kind == "example_list_with_context":
        with_context = proto.example_list_with_context
        context = (
            example_codec.to_dict(with_context.context)
            if with_context.HasField("context")
            else None
        )
        return (example_codec.to_dict(e) for e in with_context.examples), context
    return iter(()), None


def to_examples(
    proto: messages.Input, limits: TensorLimits | None = None
) -> tuple[list[Example], Example | None]:
    """Read an ``Input`` (an example list, with or without a context).

    Args:
        proto: The input.
        limits: The most its examples may make once merged with the context
            (:mod:`modelserver.examplesize`), checked before any is read; None
            for no limit.

    Raises:
        InvalidInput: A feature cannot be decoded, or the examples make more
            than ``limits``.
    """
    if limits is not None:
        examplesize.check_input(proto, limits)
    try:
        examples, context = iter_examples(proto)
        return list(examples), context
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def to_classify_request(
    proto: messages.ClassificationRequest, limits: TensorLimits | None = None
) -> ClassifyRequest:
    """Read a ClassificationRequest.

    Raises:
        InvalidInput: A feature cannot be decoded, or the examples make more
            than ``limits`` (see :func:`to_examples`).
    """
    examples, context = to_examples(proto.input, limits)
    return ClassifyRequest(to_model_spec(proto.model_spec), examples, context)


def to_regress_request(
    proto: messages.RegressionRequest, limits: TensorLimits | None = None
) -> RegressRequest:
    """Read a RegressionRequest.

    Raises:
        InvalidInput: A feature cannot be decoded, or the examples make more
            than ``limits`` (see :func:`to_examples`).
    """
    examples, context = to_examples(proto.input, limits)
    return RegressRequest(to_model_spec(proto.model_spec), examples, context)


def fill_classifications(
    results: Classifications, into: messages.ClassificationResult
) -> None:
    """Append one ``Classifications`` per example to a ClassificationResult."""
    for classes in results.pairs():
        classifications = into.classifications.add()
        for label, score in classes:
            classifications.classes.add(label=label, score=score)


def fill_regressions(results: Tensor, into: messages.RegressionResult) -> None:
    """Append one ``Regression`` per example (``results``: float32) to a
    RegressionResult."""
    for value in results.tolist():
        into.regressions.add(value=value)


def from_classify_response(
    response: ClassifyResponse,
) -> messages.ClassificationResponse:
    """Encode a ClassificationResponse."""
    proto = messages.ClassificationResponse()
    from_resolved_spec(response.spec, proto.model_spec)
    fill_classifications(response.results, proto.result)
    return proto


def from_regress_response(response: RegressResponse) -> messages.RegressionResponse:
    """Encode a RegressionResponse."""
    proto = messages.RegressionResponse()
    from_resolved_spec(response.spec, proto.model_spec)
    fill_regressions(response.results, proto.result)
    return proto


def to_multi_inference_request(
    proto: messages.MultiInferenceRequest, limits: TensorLimits | None = None
) -> MultiInferenceRequest:
    """Read a MultiInferenceRequest (task validation is the dataplane's).

    Raises:
        InvalidInput: A feature cannot be decoded, or the examples make more
            than ``limits`` (see :func:`to_examples`).
    """
    examples, context = to_examples(proto.input, limits)
    tasks = tuple(
        InferenceTask(to_model_spec(task.model_spec), task.method_name)
        for task in proto.tasks
    )
    return MultiInferenceRequest(tasks, examples, context)


def from_multi_inference_response(
    response: MultiInferenceResponse,
) -> messages.MultiInferenceResponse:
    """Encode a MultiInferenceResponse (one result per task, in order)."""
    proto = messages.MultiInferenceResponse()
    for result in response.results:
        item = proto.results.add()
        from_resolved_spec(result.spec, item.model_spec)
        if isinstance(result, ClassifyResponse):
            fill_classifications(result.results, item.classification_result)
        else:
            fill_regressions(result.results, item.regression_result)
    return proto


# ---- GetModelMetadata ------------------------------------------------------------


def to_metadata_spec(proto: messages.GetModelMetadataRequest) -> ModelSpec:
    """Validate a GetModelMetadataRequest as TF Serving does and read its spec.

    Raises:
        InvalidInput: No model spec, no metadata field, or an unsupported one.
    """
    if not proto.HasField("model_spec"):
        raise InvalidInput("Missing ModelSpec")
    if not proto.metadata_field:
        raise InvalidInput(
            "GetModelMetadataRequest must specify at least one metadata_field"
        )
    for field in proto.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise InvalidInput(f"Metadata field {field} is not supported")
    return to_model_spec(proto.model_spec)


def _fill_tensor_info(info: TensorInfo, into: messages.TensorInfo) -> None:
    into.name = info.name
    into.dtype = messages.DataType.Value(info.dtype)
    into.tensor_shape.CopyFrom(tensors.from_shape(info.shape))


def from_signature(signature: SignatureInfo, into: messages.SignatureDef) -> None:
    """Fill a SignatureDef from the dataplane's description of it."""
    into.method_name = signature.method_name
    for key, info in signature.inputs.items():
        _fill_tensor_info(info, into.inputs[key])
    for key, info in signature.outputs.items():
        _fill_tensor_info(info, into.outputs[key])
    for key, value in signature.defaults.items():
        tensors.from_ndarray(value, into=into.defaults[key])


def to_signature_def_map(metadata: ModelMetadata) -> messages.SignatureDefMap:
    """Every signature of a version as a SignatureDefMap."""
    signature_map = messages.SignatureDefMap()
    for key, signature in metadata.signatures.items():
        from_signature(signature, signature_map.signature_def[key])
    return signature_map


def from_model_metadata(metadata: ModelMetadata) -> messages.GetModelMetadataResponse:
    """Encode GetModelMetadata's answer (the map packed in an ``Any``)."""
    proto = messages.GetModelMetadataResponse()
    from_resolved_spec(metadata.spec, proto.model_spec, with_signature=False)
    pack_signature_def_map(
        to_signature_def_map(metadata), into=proto.metadata[SIGNATURE_DEF_FIELD]
    )
    return proto


# ---- ModelService ------------------------------------------------------------------


def to_status_spec(proto: messages.GetModelStatusRequest) -> ModelSpec:
    """Read a GetModelStatusRequest.

    Raises:
        InvalidInput: No model spec.
    """
    if not proto.HasField("model_spec"):
        raise InvalidInput("Missing ModelSpec")
    return to_model_spec(proto.model_spec)


def from_version_statuses(
    statuses: Iterable[VersionStatus],
) -> messages.GetModelStatusResponse:
    """Encode GetModelStatus's answer."""
    proto = messages.GetModelStatusResponse()
    for status in statuses:
        item = proto.model_version_status.add()
        item.version = status.version
        item.state = messages.ModelVersionStatus.State.Value(status.state.value)
        item.status.error_code = messages.Code.ValueType(status.error_code)
        item.status.error_message = status.error_message
    return proto


def error_code_name(code: int) -> str:
    """The ``tensorflow.error.Code`` name of a numeric code (``OK``, ``NOT_FOUND``...)."""
    return code_name(code)


def to_reload_config(proto: messages.ReloadConfigRequest) -> messages.ModelServerConfig:
    """The config of a HandleReloadConfigRequest, checked as TF Serving's
    ``ModelServiceImpl`` checks it.

    Raises:
        InvalidInput: The config is not a ``model_config_list``.
    """
    if proto.config.WhichOneof("config") != "model_config_list":
        raise InvalidInput(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    return proto.config


def reload_config_success(
    metric_names: Iterable[str] = (),
) -> messages.ReloadConfigResponse:
    """ReloadConfigResponse for an applied config (status OK).

    TF Serving reports how much each requested metric grew during the reload;
    servekit has no such counters, so each requested name reports 0.
    """
    proto = messages.ReloadConfigResponse()
    proto.status.error_code = messages.Code.OK
    for name in metric_names:
        proto.metric.add(name=name, int64_value_increase=0)
    return proto
