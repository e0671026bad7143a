"""The encoding micro-benchmark's figures and its section of the report."""

from __future__ import annotations

import numpy as np

from benchmarks.encoding import Case, decode, encode, measure, render_section
from benchmarks.report import Report, render_markdown


def test_both_encodings_decode_to_the_same_array() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    typed, packed = encode(array, packed=False), encode(array, packed=True)
    assert typed != packed
    np.testing.assert_array_equal(decode(typed), array)
    np.testing.assert_array_equal(decode(packed), array)


def test_a_measured_case_becomes_a_row_of_the_report_section() -> None:
    case = Case("int64[4]", np.arange(4, dtype=np.int64))
    result = measure(case, rounds=1, seconds=0.0)
    assert result["case"] == "int64[4]"
    for step in ("encode", "decode"):
        typed = float(str(result[f"{step}_typed_ns"]))
        packed = float(str(result[f"{step}_packed_ns"]))
        assert typed > 0 and packed > 0
        assert result[f"{step}_ratio"] == round(typed / packed, 2)
    section = render_section([result])
    row = section.splitlines()[-1]
    assert row.startswith(
        f"| int64[4] | {result['bytes_typed']} / {result['bytes_packed']} |"
    )
    assert f"| {float(str(result['encode_ratio'])):.2f}× |" in row
    report = Report(meta={}, runs=[], sections=[section])
    assert "## gRPC answer encoding: typed fields vs tensor_content" in render_markdown(
        report, []
    )
