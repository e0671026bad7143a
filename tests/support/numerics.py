"""How closely two answers of one model to the same rows must agree.

A model server computes a merged batch in one matrix product, and a lone row in
another: BLAS blocks and orders the sums differently for each shape, so a value
may differ in its last bits (24.999999999999996 against 24.999999999999993, one
float64 unit in the last place). A sum of n float64 products reordered moves by
at most about n * 2.2e-16 of the sum of the terms' magnitudes; the test models
have a handful of features and values below 1e3, so a few times 1e-13 covers
every reordering, while a caller handed another caller's row (values differ by
at least 1) or a float32 round trip (relative error 6e-8) still fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MERGED_RTOL = 1e-12
"""Relative tolerance between a merged answer and a lone one (see above)."""
MERGED_ATOL = 1e-12
"""Absolute tolerance, for values that come out at or near zero."""


def assert_same_prediction(merged: Any, alone: Any) -> None:
    """The two answers have the same shape and equal values up to summation
    order; non-numeric values must be equal."""
    left, right = np.asarray(merged), np.asarray(alone)
    assert left.shape == right.shape, (left.shape, right.shape)
    if left.dtype.kind in "biuf" and right.dtype.kind in "biuf":
        np.testing.assert_allclose(left, right, rtol=MERGED_RTOL, atol=MERGED_ATOL)
    else:
        np.testing.assert_array_equal(left, right)
