"""The Open Inference Protocol's gRPC messages (KServe/Triton "v2"), under one import.

Field numbers, names and types equal KServe's ``grpc_predict_v2.proto`` and
Triton's ``grpc_service.proto`` / ``model_config.proto``, so the bytes are
interchangeable with tritonclient's and kserve's classes; the proto package
(``servekit.oip``) differs, which lets both live in one process.
"""

from servekit_protocol._generated.oip_model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelInput,
    ModelOutput,
    ModelParameter,
    ModelTensorReshape,
    ModelVersionPolicy,
)
from servekit_protocol._generated.oip_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelConfigRequest,
    ModelConfigResponse,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)

__all__ = [
    "DataType",
    "InferParameter",
    "InferTensorContents",
    "ModelConfig",
    "ModelConfigRequest",
    "ModelConfigResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelInput",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelOutput",
    "ModelParameter",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ModelTensorReshape",
    "ModelVersionPolicy",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
]
