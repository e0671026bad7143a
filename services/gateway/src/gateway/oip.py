"""The Open Inference Protocol ("v2") on top of the gateway, for both transports.

The HTTP routes (`routes.v2`) and the gRPC servicer (`grpcfront.inference`) parse
their wire format into `codecs.v2.InferRequest`, then call these functions, which
route and call the backends through `Gateway` like every other path (the same
routing, canary, shadowing, signatures, deadlines and error table), and format
what they return. A v2 model version is a version number, or any other text a
version label.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.serving import DEFAULT_SIGNATURE
from servekit_protocol.tensors import numpy_dtype, to_shape

from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import ArrayRequest
from gateway.clients.forwarded import ForwardedPredict, WrittenPredict
from gateway.codecs.v2 import InferRequest, check_tensor_limits
from gateway.codecs.v2_datatypes import v2_datatype
from gateway.codecs.v2_grpc import EncodedInfer
from gateway.codecs.v2_grpc_answer import chosen_outputs
from gateway.codecs.v2_spliced import SplicedInfer
from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import InvalidInput
from gateway.forwarding import PredictCall
from gateway.signatures import SignatureSet

SIGNATURE_PARAMETER = "signature_name"
"""The request parameter that picks a signature other than `serving_default`."""
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration")
"""The protocol extensions the gateway serves (ServerMetadata lists them)."""


def version_or_label(raw: str | None) -> tuple[int | None, str | None]:
    """A v2 version string: digits are a version, anything else a label."""
    if raw is None or raw == "":
        return None, None
    if raw.isdigit():
        return int(raw), None
    return None, raw


def signature_name(parameters: Mapping[str, Any]) -> str:
    """The `signature_name` request parameter ("" for the default).

    Raises:
        InvalidInput: it is not a string.
    """
    value = parameters.get(SIGNATURE_PARAMETER, "")
    if not isinstance(value, str):
        raise InvalidInput(f"parameter {SIGNATURE_PARAMETER} must be a string")
    return value


def available_versions(status: messages.GetModelStatusResponse) -> list[int]:
    """The versions of a status answer that are AVAILABLE, ascending."""
    return sorted(
        entry.version
        for entry in status.model_version_status
        if entry.state == messages.ModelVersionStatus.State.AVAILABLE
    )


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of a model, in v2 terms."""

    name: str
    datatype: str
    shape: list[int]
    """-1 for a dimension of any size."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ModelMetadata (and ModelConfig) answer about a model."""

    name: str
    versions: list[str]
    platform: str
    """The registry manifest's framework ("sklearn", "tensorflow")."""
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


def _tensor_infos(infos: Any) -> list[TensorInfo]:
    entries: list[TensorInfo] = []
    for key in sorted(infos):
        info = infos[key]
        try:
            datatype = v2_datatype(numpy_dtype(info.dtype))
        except (ProtocolError, InvalidInput):
            datatype = "BYTES"
        shape = to_shape(info.tensor_shape)
        entries.append(TensorInfo(key, datatype, list(shape) if shape else [-1]))
    return entries


async def model_info(
    gateway: Gateway, ctx: CallContext, model: str, version_text: str | None
) -> ModelInfo:
    """The routed version's signature and the model's available versions.

    Raises:
        GatewayError: unknown model or version, backend errors, the deadline.
    """
    version, label = version_or_label(version_text)
    response, _ = await gateway.metadata(ctx, model, version, label)
    status = await gateway.status(ctx, model, None, None)
    ctx.route = "metadata"
    signature_map = messages.SignatureDefMap()
    packed = response.metadata.get("signature_def")
    if packed is not None:
        signature_map.ParseFromString(packed.value)
    signature = signature_map.signature_def.get(DEFAULT_SIGNATURE)
    platform = "tensorflow"
    if gateway.registry is not None and response.model_spec.HasField("version"):
        manifest = gateway.registry.manifest(model, response.model_spec.version.value)
        if manifest is not None:
            platform = manifest.framework
    return ModelInfo(
        name=model,
        versions=[str(v) for v in available_versions(status)],
        platform=platform,
        inputs=_tensor_infos(signature.inputs) if signature else [],
        outputs=_tensor_infos(signature.outputs) if signature else [],
    )


async def model_ready(
    gateway: Gateway, ctx: CallContext, model: str, version_text: str | None
) -> bool:
    """Whether the model (or the version or label asked for) has an AVAILABLE version.

    Raises:
        GatewayError: unknown model, backend errors, the deadline.
    """
    version, label = version_or_label(version_text)
    status = await gateway.status(ctx, model, version, label)
    return bool(available_versions(status))


@dataclass(frozen=True, slots=True)
class InferAnswer:
    """A v2 inference's outcome, before formatting."""

    request: InferRequest
    outputs: dict[str, np.ndarray[Any, Any]]
    """The outputs asked for (all, without `outputs`), in the order asked."""
    model_version: str
    received: ReceivedAnswer | None = None
    """A large answer kept as the backend's bytes (`outputs` then empty):
    the request set `CallContext.keep_answer_from`."""


def _check_limits(gateway: Gateway, parsed: InferRequest) -> tuple[int, int]:
    return check_tensor_limits(parsed, gateway.gatekeeper.tensor_limits)


async def infer(
    gateway: Gateway,
    ctx: CallContext,
    model: str,
    version_text: str | None,
    signature: str,
    parse: Callable[
        [Mapping[str, np.dtype[Any]] | None],
        InferRequest
        | Awaitable[InferRequest]
        | Awaitable[EncodedInfer]
        | Awaitable[SplicedInfer],
    ],
) -> InferAnswer:
    """Route a v2 inference, call the backend, and collect the outputs asked for.

    Args:
        signature: the `signature_name` parameter ("" for the default).
        parse: turns the wire request into an `InferRequest`, given the target's
            input dtypes (numeric inputs are converted to them) when known;
            or a coroutine doing so (a large body parsed off the event loop),
            which may give the backend's message already encoded
            (`EncodedInfer` or `SplicedInfer`, a large gRPC ModelInfer,
            limits checked).

    Raises:
        GatewayError: bad input (400), unknown model, version or output, backend
            errors, the deadline.
        ProtocolError: the inputs are above the gateway's tensor limits.
    """
    version, label = version_or_label(version_text)
    parsed_holder: list[InferRequest] = []

    async def encode(
        signatures: SignatureSet | None,
    ) -> ArrayRequest | ForwardedPredict:
        wanted = signatures.input_dtypes(signature) if signatures is not None else None
        parsing = parse(wanted)
        parsed = await parsing if inspect.isawaitable(parsing) else parsing
        if isinstance(parsed, EncodedInfer):
            parsed_holder[:] = [parsed.request]
            spec = messages.ModelSpec(signature_name=signature)
            return ForwardedPredict(spec, {}, memoryview(parsed.message))
        if isinstance(parsed, SplicedInfer):
            parsed_holder[:] = [parsed.request]
            spec = messages.ModelSpec(signature_name=signature)
            return WrittenPredict(spec, {}, memoryview(b""), parts=parsed.parts)
        size = _check_limits(gateway, parsed)
        parsed_holder[:] = [parsed]
        request = ArrayRequest(
            parsed.inputs, output_filter=tuple(parsed.outputs or ()), size=size
        )
        if signature:
            request.model_spec.signature_name = signature
        return request

    plan = gateway.plan(ctx, model, version, label)
    response = (await gateway.predict(ctx, plan, PredictCall(encode))).translated
    parsed = parsed_holder[0]
    model_version = (
        str(response.model_spec.version.value)
        if response.model_spec.HasField("version")
        else ""
    )
    if isinstance(response, ReceivedAnswer):
        # Written off the loop by the caller (`codecs.v2_grpc_answer`).
        return InferAnswer(parsed, {}, model_version, received=response)
    return InferAnswer(
        request=parsed,
        outputs=chosen_outputs(model, parsed, response),
        model_version=model_version,
    )


__all__ = [
    "EXTENSIONS",
    "SIGNATURE_PARAMETER",
    "InferAnswer",
    "ModelInfo",
    "TensorInfo",
    "available_versions",
    "infer",
    "model_info",
    "model_ready",
    "signature_name",
    "version_or_label",
]
