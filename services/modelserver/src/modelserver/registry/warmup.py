"""Warmup: run a version's sample requests before it takes traffic.

- SavedModels: ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of
  ``PredictionLog`` protos, replayed as TF Serving does (each record
  ``num_request_iterations`` times, at most 1000 records; predict, classify,
  regress and multi-inference logs). A failing record fails the load.
- scikit-learn pipelines: the manifest's ``examples`` rows, sent once as a batch
  and once row by row to every signature.

The TFRecord framing is read without TensorFlow: ``uint64 length, uint32 masked
crc32c(length), data, uint32 masked crc32c(data)`` per record, little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from servekit_protocol import examples as example_codec
from servekit_protocol import messages, tensors

from modelserver.errors import LoadError, ServingError
from modelserver.runtimes.base import PreparedCall, Runtime
from modelserver.types import Tensor

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000
_HEADER = struct.Struct("<QI")
_FOOTER_BYTES = 4


def warm_up(runtime: Runtime, *, iterations: int = 0) -> int:
    """Replay the version's warmup requests; return how many calls ran.

    ``iterations`` > 0 overrides how often each request is replayed (1 otherwise).

    Raises:
        LoadError: A warmup request failed or the warmup file is corrupt.
    """
    repeat = max(1, iterations)
    manifest = getattr(runtime, "manifest", None)
    if manifest is not None:
        return _replay_examples(runtime, manifest.examples, repeat)
    warmup_path = runtime.path / WARMUP_FILE
    if not warmup_path.is_file():
        return 0
    calls = 0
    for index, record in enumerate(read_tfrecords(warmup_path)):
        if index >= MAX_RECORDS:
            raise LoadError(
                f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at "
                f"{warmup_path}"
            )
        log = messages.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as exc:  # protobuf raises DecodeError, a bare Exception
            raise LoadError(
                f"Failed to parse warmup record {index} from {warmup_path}"
            ) from exc
        for _ in range(repeat):
            calls += _replay_log(runtime, log)
    return calls


def read_tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (checksums are not verified).

    Raises:
        LoadError: The file is truncated.
    """
    with path.open("rb") as handle:
        while True:
            header = handle.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise LoadError(f"Truncated record header in {path}")
            length, _ = _HEADER.unpack(header)
            data = handle.read(length)
            footer = handle.read(_FOOTER_BYTES)
            if len(data) < length or len(footer) < _FOOTER_BYTES:
                raise LoadError(f"Truncated record in {path}")
            yield data


def _replay_log(runtime: Runtime, log: messages.PredictionLog) -> int:
    kind = log.WhichOneof("log_type")
    try:
        if kind == "predict_log":
            request = log.predict_log.request
            inputs = {
                alias: tensors.to_ndarray(proto)
                for alias, proto in request.inputs.items()
            }
            call = runtime.prepare_predict(
                request.model_spec.signature_name, inputs, tuple(request.output_filter)
            )
            runtime.run(call)
            return 1
        if kind == "classify_log":
            request_c = log.classify_log.request
            _classify(runtime, request_c.model_spec.signature_name, request_c.input)
            return 1
        if kind == "regress_log":
            request_r = log.regress_log.request
            _regress(runtime, request_r.model_spec.signature_name, request_r.input)
            return 1
        if kind == "multi_inference_log":
            request_m = log.multi_inference_log.request
            for task in request_m.tasks:
                if task.method_name.endswith("/classify"):
                    _classify(runtime, task.model_spec.signature_name, request_m.input)
                else:
                    _regress(runtime, task.model_spec.signature_name, request_m.input)
            return len(request_m.tasks)
    except ServingError as exc:
        raise LoadError(f"Warmup {kind} request failed: {exc}") from exc
    except ValueError as exc:  # servekit_protocol's InvalidArgument
        raise LoadError(f"Warmup {kind} request is invalid: {exc}") from exc
    raise LoadError(f"Unsupported log_type for warmup: {kind}")


def _examples(request_input: messages.Input) -> list[dict[str, Any]]:
    return [
        example_codec.to_dict(example)
        for example in example_codec.merged_examples(request_input)
    ]


def _classify(
    runtime: Runtime, signature_name: str, request_input: messages.Input
) -> None:
    call = runtime.prepare_classify(signature_name, _examples(request_input), None)
    runtime.to_classifications(call, runtime.run(call))


def _regress(
    runtime: Runtime, signature_name: str, request_input: messages.Input
) -> None:
    call = runtime.prepare_regress(signature_name, _examples(request_input), None)
    runtime.to_regressions(call, runtime.run(call))


def _replay_examples(runtime: Runtime, rows: list[dict[str, Any]], repeat: int) -> int:
    if not rows:
        return 0
    calls = 0
    batches = [rows, *([row] for row in rows)]
    for _ in range(repeat):
        for key, signature in runtime.signatures.items():
            for batch in batches:
                inputs = _columns(batch, list(signature.inputs))
                try:
                    call: PreparedCall = runtime.prepare_predict(key, inputs, ())
                    runtime.run(call)
                except ServingError as exc:
                    raise LoadError(
                        f"Warmup with the manifest's examples failed on signature "
                        f"{key}: {exc}"
                    ) from exc
                calls += 1
    return calls


def _columns(rows: list[dict[str, Any]], aliases: list[str]) -> dict[str, Tensor]:
    columns: dict[str, Tensor] = {}
    for alias in aliases:
        values = [row.get(alias) for row in rows]
        if values and isinstance(values[0], str | bytes):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            columns[alias] = column
        else:
            columns[alias] = np.asarray(values)
    return columns
