"""The OIP messages against the official ones: tritonclient's and kserve's classes.

Those classes live in .venv-clients (they need protobuf < 7), so their side runs
in a subprocess (tests/clients/describe_protos.py): it reports every field of
every message and encodes text-format messages; here the same text is encoded
with our classes and the bytes must be equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from servekit_protocol import oip_messages as oip
from servekit_protocol._generated import oip_model_config_pb2, oip_pb2
from servekit_protocol.oip_services import INFERENCE_METHODS, INFERENCE_SERVICE

from tests.support.clients import run_client_script

OUR_PACKAGE = "servekit.oip."
TRITON_SERVICE = "tritonclient.grpc.service_pb2"
TRITON_CONFIG = "tritonclient.grpc.model_config_pb2"
KSERVE = "kserve.protocol.grpc.grpc_predict_v2_pb2"
MIRRORS: dict[str, FileDescriptor] = {
    TRITON_SERVICE: oip_pb2.DESCRIPTOR,
    KSERVE: oip_pb2.DESCRIPTOR,
    TRITON_CONFIG: oip_model_config_pb2.DESCRIPTOR,
}
# model_config.proto is mirrored in part on purpose (see its header comment).
PARTIAL_FILES = {TRITON_CONFIG}


def _signature(field: FieldDescriptor) -> list[Any]:
    target = field.message_type or field.enum_type
    return [
        field.number,
        field.type,
        field.is_repeated,
        bool(field.is_packed),
        field.json_name,
        field.containing_oneof.name if field.containing_oneof else None,
        target.full_name.removeprefix(OUR_PACKAGE) if target else None,
    ]


def _walk(descriptor: Descriptor, prefix: str, out: dict[str, Any]) -> None:
    name = f"{prefix}{descriptor.name}"
    out[name] = {field.name: _signature(field) for field in descriptor.fields}
    for nested in descriptor.nested_types:
        _walk(nested, f"{name}.", out)


def _ours(file: FileDescriptor) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for descriptor in file.message_types_by_name.values():
        _walk(descriptor, "", found)
    return found


def _describe(module: str, cases: Sequence[tuple[str, str]] = ()) -> Any:
    return run_client_script(
        "describe_protos.py",
        {
            "module": module,
            "cases": [{"message": name, "text": text} for name, text in cases],
        },
    )


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    return {module: _describe(module) for module in MIRRORS}


@pytest.mark.parametrize("module", sorted(MIRRORS))
def test_shared_fields_have_the_official_numbers_and_types(
    official: dict[str, Any], module: str
) -> None:
    ours = _ours(MIRRORS[module])
    theirs = official[module]["messages"]
    for name in ours.keys() & theirs.keys():
        for field in ours[name].keys() & theirs[name].keys():
            assert ours[name][field] == theirs[name][field], f"{module}: {name}.{field}"
        if module not in PARTIAL_FILES:
            missing = theirs[name].keys() - ours[name].keys()
            assert not missing, f"{module}: {name} lacks {sorted(missing)}"


def test_every_message_and_field_exists_upstream(official: dict[str, Any]) -> None:
    for file in {id(f): f for f in MIRRORS.values()}.values():
        upstream = [
            official[module]["messages"]
            for module, mirrored in MIRRORS.items()
            if mirrored is file
        ]
        for name, fields in _ours(file).items():
            assert any(name in messages for messages in upstream), name
            for field in fields:
                assert any(field in messages.get(name, {}) for messages in upstream), (
                    f"{name}.{field}"
                )


def test_enums_have_the_official_values(official: dict[str, Any]) -> None:
    theirs = official[TRITON_CONFIG]["enums"]
    assert [[v.name, v.number] for v in oip.DataType.DESCRIPTOR.values] == theirs[
        "DataType"
    ]
    assert [
        [v.name, v.number] for v in oip.ModelInput.Format.DESCRIPTOR.values
    ] == theirs["ModelInput.Format"]


def test_the_service_has_the_official_method_paths() -> None:
    assert INFERENCE_SERVICE == "inference.GRPCInferenceService"
    for method in INFERENCE_METHODS:
        assert method.path == f"/inference.GRPCInferenceService/{method.name}"
        assert method.request.__name__ == f"{method.name}Request"
        assert method.response.__name__ == f"{method.name}Response"


INFER_REQUEST = """
model_name: "digits" model_version: "3" id: "req-1"
parameters { key: "signature_name" value { string_param: "serving_default" } }
parameters { key: "priority" value { int64_param: -2 } }
parameters { key: "flag" value { bool_param: true } }
parameters { key: "scale" value { double_param: 0.25 } }
parameters { key: "big" value { uint64_param: 18446744073709551615 } }
inputs {
  name: "x" datatype: "FP32" shape: [2, 3]
  parameters { key: "binary_data_size" value { int64_param: 24 } }
  contents { fp32_contents: [1.5, -2, 3, 4, 5, 6.25] }
}
inputs {
  name: "s" datatype: "BYTES" shape: [2]
  contents { bytes_contents: ["a", "\\000\\377"] }
}
inputs { name: "r" datatype: "INT64" shape: [1] }
outputs { name: "y" parameters { key: "classification" value { int64_param: 3 } } }
raw_input_contents: "\\001\\000\\000\\000\\000\\000\\000\\000"
"""
CONTENTS = """
bool_contents: [true, false] int_contents: [-1, 2] int64_contents: [-9007199254740993]
uint_contents: [4294967295] uint64_contents: [18446744073709551615]
fp32_contents: [0.5] fp64_contents: [1e300] bytes_contents: ["\\001"]
"""
INFER_RESPONSE = """
model_name: "digits" model_version: "3" id: "req-1"
parameters { key: "triton_final_response" value { bool_param: true } }
outputs {
  name: "y" datatype: "FP64" shape: [1, 2]
  parameters { key: "binary_data_size" value { int64_param: 16 } }
  contents { fp64_contents: [0.25, 0.75] }
}
raw_output_contents: "\\000\\001"
"""
METADATA = """
name: "digits" versions: ["1", "3"] platform: "tensorflow"
inputs { name: "x" datatype: "FP32" shape: [-1, 64] }
outputs { name: "y" datatype: "INT64" shape: [-1] }
"""
SHARED_CASES = [
    ("ServerLiveResponse", "live: true"),
    ("ServerReadyResponse", "ready: true"),
    ("ModelReadyRequest", 'name: "m" version: "2"'),
    ("ModelReadyResponse", "ready: true"),
    (
        "ServerMetadataResponse",
        'name: "servekit" version: "0.1" extensions: ["binary_tensor_data"]',
    ),
    ("ModelMetadataRequest", 'name: "m" version: "label"'),
    ("ModelMetadataResponse", METADATA),
    ("InferParameter", 'string_param: "x"'),
    ("InferTensorContents", CONTENTS),
    ("ModelInferRequest", INFER_REQUEST),
    ("ModelInferResponse", INFER_RESPONSE),
]
TRITON_CASES = [
    *SHARED_CASES,
    ("ModelConfigRequest", 'name: "m" version: "1"'),
    (
        "ModelConfigResponse",
        """config {
          name: "digits" platform: "tensorflow_savedmodel" backend: "tensorflow"
          max_batch_size: 0
          version_policy { specific { versions: [1, 3] } }
          input { name: "x" data_type: TYPE_FP32 dims: [-1, 64] format: FORMAT_NONE }
          output { name: "y" data_type: TYPE_INT64 dims: [-1] label_filename: "l" }
          parameters { key: "k" value { string_value: "v" } }
        }""",
    ),
]
# kserve's InferParameter has no double_param or uint64_param (Triton added them).
KSERVE_CASES = [
    (
        name,
        "\n".join(
            line
            for line in text.splitlines()
            if "double_param" not in line and "uint64_param" not in line
        ),
    )
    for name, text in SHARED_CASES
]


def _ours_encoded(name: str, text: str) -> str:
    cls: type[Message] = oip_pb2
    for part in name.split("."):
        cls = getattr(cls, part)
    message = text_format.Parse(text, cls())
    return message.SerializeToString(deterministic=True).hex()


@pytest.mark.parametrize(
    ("module", "cases"), [(TRITON_SERVICE, TRITON_CASES), (KSERVE, KSERVE_CASES)]
)
def test_messages_encode_to_the_official_bytes(
    module: str, cases: list[tuple[str, str]]
) -> None:
    theirs = _describe(module, cases)["encoded"]
    for (name, text), encoded in zip(cases, theirs, strict=True):
        assert _ours_encoded(name, text) == encoded, name
        # And the official bytes parse back into ours with nothing unknown.
        cls: Any = oip_pb2
        for part in name.split("."):
            cls = getattr(cls, part)
        parsed = cls.FromString(bytes.fromhex(encoded))
        parsed.DiscardUnknownFields()
        assert parsed.SerializeToString(deterministic=True).hex() == encoded, name
