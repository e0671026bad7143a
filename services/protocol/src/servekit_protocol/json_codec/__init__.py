"""TF Serving's REST JSON bodies: parse requests, format responses.

Shared by the model server's REST API and the gateway's v1 API, so both speak
exactly TF Serving's dialect:

* ``:predict`` takes ``instances`` (row format: a list with one entry per batch
  row, plain values for a single input or ``{name: value}`` objects) or
  ``inputs`` (columnar: a value for a single input or ``{name: value}``).
  The answer mirrors the format: ``predictions`` (rows) or ``outputs``.
* ``:classify`` / ``:regress`` take ``examples`` (feature dicts) and an
  optional ``context``; the answer is ``{"results": ...}``.
* Binary strings travel as ``{"b64": "..."}``; outputs whose name ends in
  ``_bytes`` (or that are not UTF-8) are written that way.
* ``NaN``, ``Infinity`` and ``-Infinity`` are accepted and written as bare
  tokens, as TF Serving does.

Error messages follow TF Serving's wording so clients that match on them keep
working.

Modules by role: :mod:`.document` (parsing, serialization, error bodies),
:mod:`.arrays` (JSON values <-> arrays), :mod:`.predict`, :mod:`.examples`
(classify/regress), :mod:`.model_info` (status and metadata answers) and
:mod:`.offload` (large bodies parsed and large answers written off the event
loop).
"""

from servekit_protocol.json_codec.arrays import (
    BYTES_SUFFIX,
    TensorSpec,
    specs_from_tensor_infos,
    to_array,
    to_jsonable,
)
from servekit_protocol.json_codec.document import (
    dumps,
    error_body,
    loads,
)
from servekit_protocol.json_codec.examples import (
    ExamplesBody,
    classification_pairs,
    example_from_json,
    format_classify_response,
    format_regress_response,
    format_serialized_classify_response,
    format_serialized_regress_response,
    parse_classify_request,
    parse_examples_request,
    parse_regress_request,
)
from servekit_protocol.json_codec.model_info import (
    format_metadata_response,
    format_status_response,
)
from servekit_protocol.json_codec.offload import BodyParsers
from servekit_protocol.json_codec.predict import (
    PredictBody,
    RequestFormat,
    SpecSource,
    format_predict_response,
    output_elements,
    parse_predict_request,
)
from servekit_protocol.serving import DEFAULT_SIGNATURE

__all__ = [
    "BYTES_SUFFIX",
    "BodyParsers",
    "DEFAULT_SIGNATURE",
    "ExamplesBody",
    "PredictBody",
    "RequestFormat",
    "SpecSource",
    "TensorSpec",
    "classification_pairs",
    "dumps",
    "error_body",
    "example_from_json",
    "format_classify_response",
    "format_metadata_response",
    "format_predict_response",
    "format_regress_response",
    "format_serialized_classify_response",
    "format_serialized_regress_response",
    "format_status_response",
    "loads",
    "output_elements",
    "parse_classify_request",
    "parse_examples_request",
    "parse_predict_request",
    "parse_regress_request",
    "specs_from_tensor_infos",
    "to_array",
    "to_jsonable",
]
