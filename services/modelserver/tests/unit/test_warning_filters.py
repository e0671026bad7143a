"""The server's warning filters replace whatever the imports left."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from modelserver import warning_filters


@pytest.fixture(autouse=True)
def restore_filters() -> Iterator[None]:
    with warnings.catch_warnings():
        yield


def test_install_keeps_only_the_default_ignores() -> None:
    warnings.filterwarnings("always", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="numpy.dtype size changed")
    warning_filters.install()
    assert [(entry[0], entry[2]) for entry in warnings.filters] == [
        ("ignore", category) for category in warning_filters.IGNORED
    ]


def test_ensure_reinstalls_after_an_import_adds_filters() -> None:
    warning_filters.install()
    warnings.simplefilter("always", UserWarning)
    warning_filters.ensure()
    assert len(warnings.filters) == len(warning_filters.IGNORED)
    assert all(entry[2] is not UserWarning for entry in warnings.filters)


def test_ensure_leaves_installed_filters_alone() -> None:
    warning_filters.install()
    before = warnings.filters
    snapshot = list(before)
    warning_filters.ensure()
    assert warnings.filters is before
    assert warnings.filters == snapshot


def test_other_warnings_show_once_per_place() -> None:
    warning_filters.install()
    with warnings.catch_warnings(record=True) as caught:
        warning_filters.install()
        for _ in range(3):
            warnings.warn("same place", UserWarning, stacklevel=1)
        warnings.warn("deprecated", DeprecationWarning, stacklevel=1)
    assert [str(entry.message) for entry in caught] == ["same place"]
