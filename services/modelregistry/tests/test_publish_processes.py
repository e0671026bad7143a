"""Publishing with real processes: concurrent publishers and a publisher killed midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from modelregistry import Registry

PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from modelregistry import Registry

    root, mode = Path(sys.argv[1]), sys.argv[2]
    registry = Registry(root)
    with registry.publish("shared", framework="sklearn") as draft:
        (draft.path / "model.joblib").write_bytes(b"x" * 1000)
        if mode == "hang":
            print("writing", flush=True)
            time.sleep(60)
        draft.manifest.update(artifact="model.joblib")
    print(draft.version, flush=True)
    """
)


def _start(root: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(root), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "models"
    publishers = [_start(root, "quick") for _ in range(6)]
    versions = []
    for process in publishers:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        versions.append(int(out.strip()))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    registry = Registry(root)
    assert registry.versions("shared") == [1, 2, 3, 4, 5, 6]
    assert all(registry.verify("shared", v) == [] for v in versions)


@pytest.mark.integration
def test_killed_publisher_leaves_no_visible_version(tmp_path: Path) -> None:
    root = tmp_path / "models"
    process = _start(root, "hang")
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "writing"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    registry = Registry(root)
    assert registry.versions("shared") == []
    leftovers = [
        p.name for p in (root / "shared").iterdir() if p.name.startswith(".publish-")
    ]
    assert len(leftovers) == 1  # hidden, so TF Serving and our server ignore it
    # The next publisher clears the dead one's draft and takes version 1.
    follower = _start(root, "quick")
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert out.strip() == "1"
    assert not [
        p for p in (root / "shared").iterdir() if p.name.startswith(".publish-")
    ]
