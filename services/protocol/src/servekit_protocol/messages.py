"""The TF Serving and TensorFlow protobuf messages, under one import.

Every class here has the field numbers, names and types of its TensorFlow or
TF Serving counterpart, so its serialized bytes are interchangeable with the
official classes; only the proto package (``servekit.tfs``) differs, which
lets both live in one process.
"""

from servekit_protocol._generated.classification_pb2 import (
    Class,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationResult,
    Classifications,
)
from servekit_protocol._generated.error_codes_pb2 import Code
from servekit_protocol._generated.example_pb2 import Example, SequenceExample
from servekit_protocol._generated.feature_pb2 import (
    BytesList,
    Feature,
    FeatureList,
    FeatureLists,
    Features,
    FloatList,
    Int64List,
)
from servekit_protocol._generated.file_system_storage_path_source_pb2 import (
    FileSystemStoragePathSourceConfig,
)
from servekit_protocol._generated.get_model_metadata_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    SignatureDefMap,
)
from servekit_protocol._generated.get_model_status_pb2 import (
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelVersionStatus,
)
from servekit_protocol._generated.inference_pb2 import (
    InferenceResult,
    InferenceTask,
    MultiInferenceRequest,
    MultiInferenceResponse,
)
from servekit_protocol._generated.input_pb2 import (
    ExampleList,
    ExampleListWithContext,
    Input,
)
from servekit_protocol._generated.logging_config_pb2 import (
    LogCollectorConfig,
    LoggingConfig,
    PerTaskSamplingConfig,
    SamplingConfig,
)
from servekit_protocol._generated.meta_graph_pb2 import SignatureDef, TensorInfo
from servekit_protocol._generated.model_management_pb2 import (
    Metric,
    ReloadConfigRequest,
    ReloadConfigResponse,
)
from servekit_protocol._generated.model_pb2 import ModelSpec
from servekit_protocol._generated.model_server_config_pb2 import (
    ModelConfig,
    ModelConfigList,
    ModelServerConfig,
    ModelType,
)
from servekit_protocol._generated.monitoring_config_pb2 import (
    MonitoringConfig,
    PrometheusConfig,
)
from servekit_protocol._generated.predict_pb2 import PredictRequest, PredictResponse
from servekit_protocol._generated.prediction_log_pb2 import (
    ClassifyLog,
    LogMetadata,
    MultiInferenceLog,
    PredictionLog,
    PredictLog,
    PredictStreamedLog,
    RegressLog,
)
from servekit_protocol._generated.regression_pb2 import (
    Regression,
    RegressionRequest,
    RegressionResponse,
    RegressionResult,
)
from servekit_protocol._generated.session_bundle_config_pb2 import BatchingParameters
from servekit_protocol._generated.status_pb2 import StatusProto
from servekit_protocol._generated.tensor_pb2 import TensorProto
from servekit_protocol._generated.tensor_shape_pb2 import TensorShapeProto
from servekit_protocol._generated.types_pb2 import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_COMPLEX64,
    DT_COMPLEX128,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_INVALID,
    DT_QINT8,
    DT_QINT16,
    DT_QINT32,
    DT_QUINT8,
    DT_QUINT16,
    DT_RESOURCE,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    DT_VARIANT,
    DataType,
)

ServableVersionPolicy = FileSystemStoragePathSourceConfig.ServableVersionPolicy

# Method names of SignatureDef.method_name, as TF Serving writes them.
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"


class Serialized:
    """A response message serialized already (in a worker process, for a large
    answer): the gRPC and gRPC-Web servers send its bytes as they are, where
    serializing the message object would hold the event loop.

    Args:
        data: The message's serialized bytes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        """The bytes, as a message's method gives them."""
        return self.data


__all__ = [
    "Serialized",
    "CLASSIFY_METHOD_NAME",
    "DT_BFLOAT16",
    "DT_BOOL",
    "DT_COMPLEX64",
    "DT_COMPLEX128",
    "DT_DOUBLE",
    "DT_FLOAT",
    "DT_HALF",
    "DT_INT8",
    "DT_INT16",
    "DT_INT32",
    "DT_INT64",
    "DT_INVALID",
    "DT_QINT8",
    "DT_QINT16",
    "DT_QINT32",
    "DT_QUINT8",
    "DT_QUINT16",
    "DT_RESOURCE",
    "DT_STRING",
    "DT_UINT8",
    "DT_UINT16",
    "DT_UINT32",
    "DT_UINT64",
    "DT_VARIANT",
    "PREDICT_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "BatchingParameters",
    "BytesList",
    "Class",
    "ClassificationRequest",
    "ClassificationResponse",
    "ClassificationResult",
    "Classifications",
    "ClassifyLog",
    "Code",
    "DataType",
    "Example",
    "ExampleList",
    "ExampleListWithContext",
    "Feature",
    "FeatureList",
    "FeatureLists",
    "Features",
    "FileSystemStoragePathSourceConfig",
    "FloatList",
    "GetModelMetadataRequest",
    "GetModelMetadataResponse",
    "GetModelStatusRequest",
    "GetModelStatusResponse",
    "InferenceResult",
    "InferenceTask",
    "Input",
    "Int64List",
    "LogCollectorConfig",
    "LogMetadata",
    "LoggingConfig",
    "Metric",
    "ModelConfig",
    "ModelConfigList",
    "ModelServerConfig",
    "ModelSpec",
    "ModelType",
    "ModelVersionStatus",
    "MonitoringConfig",
    "MultiInferenceLog",
    "MultiInferenceRequest",
    "MultiInferenceResponse",
    "PerTaskSamplingConfig",
    "PredictLog",
    "PredictRequest",
    "PredictResponse",
    "PredictStreamedLog",
    "PredictionLog",
    "PrometheusConfig",
    "RegressLog",
    "Regression",
    "RegressionRequest",
    "RegressionResponse",
    "RegressionResult",
    "ReloadConfigRequest",
    "ReloadConfigResponse",
    "SamplingConfig",
    "SequenceExample",
    "ServableVersionPolicy",
    "SignatureDef",
    "SignatureDefMap",
    "StatusProto",
    "TensorInfo",
    "TensorProto",
    "TensorShapeProto",
]
