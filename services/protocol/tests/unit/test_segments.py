"""Shared memory segments: bytes in, arrays out, files removed, the folder
checked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servekit_protocol import segments


@pytest.fixture
def directory(tmp_path: Path) -> str:
    """A segment folder of the test's own (checked, as a server checks its
    setting)."""
    return segments.check_directory(str(tmp_path))


@pytest.fixture
def names(directory: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        segments.unlink(name)


def test_bytes_written_are_mapped_back(names: list[str], directory: str) -> None:
    name = segments.new_path(directory, "message")
    names.append(name)
    data = bytearray(np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17))
    segments.write_bytes(name, memoryview(data)[5:])
    with segments.mapped(name) as view:
        assert bytes(view) == bytes(data[5:])


def test_an_empty_segment_maps_to_no_bytes(names: list[str], directory: str) -> None:
    name = segments.new_path(directory, "message")
    names.append(name)
    segments.write_bytes(name, b"")
    with segments.mapped(name) as view:
        assert bytes(view) == b""


def test_a_name_is_never_reused(names: list[str], directory: str) -> None:
    name = segments.new_path(directory, "message")
    names.append(name)
    segments.write_bytes(name, b"first")
    with pytest.raises(FileExistsError):
        segments.write_bytes(name, b"second")


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "float16", "int8", "uint64", "bool", "complex64"]
)
def test_arrays_come_back_equal_and_owning_their_memory(
    names: list[str], directory: str, dtype: str
) -> None:
    name = segments.new_path(directory, "arrays")
    names.append(name)
    rng = np.random.default_rng(1)
    arrays = {
        "matrix": (rng.normal(size=(300, 7)) * 50).astype(dtype),
        "empty": np.zeros((0, 3), dtype=dtype),
        "scalar": np.array(3, dtype=dtype),
        "strided": (rng.normal(size=(40, 40)) * 50).astype(dtype)[:, ::3],
    }
    slots = segments.write_arrays(name, arrays)
    back = segments.read_arrays(name, slots)
    assert list(back) == list(arrays)
    for key, array in arrays.items():
        assert back[key].dtype == array.dtype
        assert back[key].shape == array.shape
        np.testing.assert_array_equal(back[key], array)
        assert back[key].flags.c_contiguous
        assert back[key].flags.owndata
        assert back[key].flags.writeable


def test_a_short_segment_is_an_error(names: list[str], directory: str) -> None:
    name = segments.new_path(directory, "arrays")
    names.append(name)
    slots = segments.write_arrays(name, {"x": np.arange(10.0)})
    Path(name).write_bytes(b"\0" * 16)
    with pytest.raises(OSError, match="ended early"):
        segments.read_arrays(name, slots)


def test_unlink_removes_and_ignores_missing(directory: str) -> None:
    name = segments.new_path(directory, "message")
    segments.write_bytes(name, b"x")
    segments.unlink(name)
    assert not Path(name).exists()
    segments.unlink(name)


def _dead_pid() -> int:
    """The id of a process that ran and was reaped (the kernel hands ids out
    in increasing order, so it is not reused within the test)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_leftovers_of_stopped_processes_are_swept(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        files = {
            "dead": f"servekit-{dead}-0123456789abcdef-message",
            "dead arrays": f"servekit-{dead}-fedcba9876543210-arrays",
            "own id": f"servekit-{os.getpid()}-0123456789abcdef-arrays",
            "live": f"servekit-{live.pid}-0123456789abcdef-message",
            "other name": f"servekit-{dead}-notrandom-message",
            "other prefix": f"other-{dead}-0123456789abcdef-message",
            "no role": f"servekit-{dead}-0123456789abcdef",
        }
        for index, name in enumerate(files.values()):
            (tmp_path / name).write_bytes(b"x" * (index + 1))
        (tmp_path / f"servekit-{dead}-00000000000000aa-folder").mkdir()
        swept = segments.sweep_leftovers(str(tmp_path))
        swept_again = segments.sweep_leftovers(str(tmp_path))
    finally:
        live.kill()
        live.wait()
    assert swept == segments.Swept(segments=3, bytes=1 + 2 + 3)
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {
        files["live"],
        files["other name"],
        files["other prefix"],
        files["no role"],
        f"servekit-{dead}-00000000000000aa-folder",
    }
    assert swept_again == segments.Swept(0, 0)


def test_new_paths_lie_in_the_folder_named_for_the_process(directory: str) -> None:
    first = segments.new_path(directory, "message")
    second = segments.new_path(directory, "message")
    assert first != second
    assert os.path.dirname(first) == directory
    assert os.path.basename(first).startswith(f"servekit-{os.getpid()}-")


def test_a_checked_folder_keeps_no_probe(tmp_path: Path) -> None:
    assert segments.check_directory(str(tmp_path)) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        segments.check_directory(str(tmp_path / "missing"))


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a directory"):
        segments.check_directory(str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            segments.check_directory(str(folder))
    finally:
        folder.chmod(0o700)
