"""The wire count of a large tf.Example message: ``python -m benchmarks.examplewalk``.

A JSON worker counts the examples of a large ``Regress`` (``Classify``,
``MultiInference``) message on its bytes before parsing it
(``modelserver.examplesize.check_request``). This measures in MiB of message
a second the walk alone (``examplewire.locate``: the first of its two passes),
the walk reading every field in Python (``runs=False``: before
``examplewire`` matched runs of small fields with regular expressions), the
whole count under no limit (the walk, then every example handed out and
counted), and beside them, in the same rounds, the parse that used to come
first (``serializedinput.parse``: the examples left serialized). Messages:
examples of 64 one-value float features, all the same (what
``tests/security/test_examples_memory.py`` sends) or each different; empty
examples (two bytes each), alone or each after an example of one empty
``features`` (``alternating``), or each after an unknown two-byte field
(``mixed``); two-byte unknown fields only (``unknown``); examples of 8
features under a context of 64. ``--limited`` walks as a worker does at the
default limits (it stops past 5,592,405 examples) and reports CPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import struct
import time
from collections.abc import Callable

from modelserver import examplesize
from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import examplewire, serializedinput
from servekit_protocol import examples as example_codec
from servekit_protocol.tensor_limits import TensorLimits
from servekit_protocol.tensors import varint


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _example(features: int, seed: int) -> bytes:
    row = {f"f{index:02}": [float(seed % 1000 + index)] for index in range(features)}
    return example_codec.from_dict(row).SerializeToString()


def _message(kind: str, size: int) -> bytes:
    head = _field(1, _field(1, b"m"))
    if kind == "same":
        one = _field(1, _example(64, 0))
        listed = one * (size // len(one))
    elif kind == "different":
        one = _field(1, _example(64, 0))
        parts = []
        for index in range(size // len(one)):
            # The same size, a different value: no two examples alike.
            example = bytearray(one)
            example[-4:] = struct.pack("<f", float(index))
            parts.append(bytes(example))
        listed = b"".join(parts)
    elif kind == "empty":
        listed = b"\x0a\x00" * (size // 2)
    elif kind == "alternating":
        # No two examples alike in a row: a step of Python an example.
        listed = b"\x0a\x00\x0a\x02\x0a\x00" * (size // 6)
    elif kind == "mixed":
        listed = b"\x0a\x00\x10\x00" * (size // 4)
    elif kind == "unknown":
        listed = b"\x10\x00" * (size // 2)
    else:
        one = _field(1, _example(8, 0))
        context = _field(2, _example(64, 1))
        listed = one * (size // len(one)) + context
    number = 2 if kind == "context" else 1
    return head + _field(2, _field(number, listed))


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.examplewalk")
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--kinds", nargs="+", default=["same", "different", "empty", "context"]
    )
    parser.add_argument("--limited", action="store_true")
    args = parser.parse_args(argv)
    if args.limited:
        return _limited(args.kinds, args.mib, args.rounds)
    # Large enough that nothing is refused: the whole message is counted.
    limits = TensorLimits(max_elements=1 << 62, max_bytes=1 << 62)
    for kind in args.kinds:
        data = _message(kind, args.mib << 20)
        view = memoryview(data)
        mib = len(data) / 2**20

        def count(view: memoryview = view) -> None:
            try:
                examplesize.check_request("Regress", view, limits)
            except InvalidInput:
                raise AssertionError("refused under no limit") from None

        def walk(view: memoryview = view) -> None:
            examplewire.locate(view)

        def stepped(view: memoryview = view) -> None:
            examplewire.locate(view, runs=False)

        def parse(view: memoryview = view) -> None:
            serializedinput.parse("Regress", view)

        steps = {"walk": walk, "stepped": stepped, "count": count, "parse": parse}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(_timed(step))
        rates = {name: mib / statistics.median(times[name]) for name in steps}
        print(
            f"{kind:>11}: {mib:6.1f} MiB  walk {rates['walk']:7.1f} MiB/s  "
            f"a step a field {rates['stepped']:7.1f} MiB/s  "
            f"walk and count {rates['count']:7.1f} MiB/s  "
            f"parse (examples serialized) {rates['parse']:7.1f} MiB/s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident {peak:.0f} MiB")
    return 0


def _limited(kinds: list[str], mib: int, rounds: int) -> int:
    # The walk as check_request runs it at the default limits: it stops past
    # the most examples they allow, so the CPU a refused message costs.
    most = TensorLimits().max_bytes // 48
    for kind in kinds:
        data = _message(kind, mib << 20)
        view = memoryview(data)
        spent: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for runs in (True, False):
                started = time.process_time()
                with contextlib.suppress(examplewire.TooMany):
                    examplewire.locate(view, most=most, runs=runs)
                spent[runs].append(time.process_time() - started)
        print(
            f"{kind:>11}: {len(data) / 2**20:6.1f} MiB  CPU s, runs "
            f"{statistics.median(spent[True]):6.3f}  a step a field "
            f"{statistics.median(spent[False]):6.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
