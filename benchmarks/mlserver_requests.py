"""Serialize MLServer's gRPC ``ModelInferRequest`` from a V2 JSON body.

Runs under MLServer's own interpreter (its venv has protobuf < 7, the main one has
7), as a plain script: ``python mlserver_requests.py BODY.json MODEL OUT.bin``. It
uses MLServer's converter, so the bytes are what MLServer's own clients send.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from mlserver.grpc.converters import (  # type: ignore[import-not-found]
        ModelInferRequestConverter,
    )
    from mlserver.types import InferenceRequest  # type: ignore[import-not-found]

    body_path, model, out_path = argv
    body = json.loads(Path(body_path).read_text(encoding="utf-8"))
    for tensor in body["inputs"]:
        # JSON carries text; the protobuf's bytes_contents needs bytes.
        if tensor["datatype"] == "BYTES":
            tensor["data"] = [str(value).encode() for value in tensor["data"]]
    request = InferenceRequest.model_validate(body)
    message = ModelInferRequestConverter.from_types(request, model_name=model)
    Path(out_path).write_bytes(message.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
