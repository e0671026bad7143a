"""What the gateway's coalescer spends on the event loop to key a request
(`gateway.clients.batchkeys`): its merge key and its share of the budget (rows,
elements, bytes).

A gRPC Predict's share is read from its shapes; a typed request's from its
arrays, where a string input's bytes mean walking every value unless the
request limit's check counted them already and the request carries the count
(`ArrayRequest.size`, the OIP paths). Both are timed side by side.

    .venv/bin/python -m benchmarks.mergekeys [--repeat 7]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np
from gateway.clients.arrays import ArrayRequest, tensor_size
from gateway.clients.batchkeys import array_key, proto_key
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray

STRING_SHAPES = ((8, 16), (32, 64), (32, 1024))
"""Rows and strings a row of the typed requests timed."""


def _seconds(call: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs, a call: the least disturbed by others
    on a shared machine."""
    number = 1
    while min(timeit.repeat(call, number=number, repeat=1)) < 0.05:
        number *= 4
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number


def _predict(inputs: int = 8, rows: int = 4) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = "m"
    for index in range(inputs):
        array = np.ones((rows, 16), np.float32)
        from_ndarray(array, into=request.inputs[f"x{index}"], packed=True)
    return request


def _strings(rows: int, per_row: int) -> dict[str, np.ndarray]:
    flat = np.empty(rows * per_row, dtype=object)
    flat[:] = [b"value-%05d" % index for index in range(rows * per_row)]
    return {"s": flat.reshape(rows, per_row), "x": np.ones((rows, 4), np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    request = _predict()
    cost = _seconds(partial(proto_key, request), repeat)
    print(f"proto_key, 8 float32 inputs of 4x16: {cost * 1e6:.1f} us")
    for rows, per_row in STRING_SHAPES:
        inputs = _strings(rows, per_row)
        walked = ArrayRequest(inputs)
        carried = ArrayRequest(inputs, size=tensor_size(inputs.values()))
        assert array_key(walked) == array_key(carried)
        walk = _seconds(partial(array_key, walked), repeat)
        carry = _seconds(partial(array_key, carried), repeat)
        print(
            f"array_key, {rows}x{per_row} strings + 1 float32 input: "
            f"walked {walk * 1e6:.1f} us, carried {carry * 1e6:.1f} us"
        )


if __name__ == "__main__":
    main()
