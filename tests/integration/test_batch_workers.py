"""`servekit batch predict --workers N`: worker processes write the same job.

Every job runs as the `servekit` command in its own process, in process on the
registry's `linear` version 1 (a custom pipeline step whose code travels in the
version's `code/` folder), once with one process and once with two workers; the
files they write must be the same bytes, and the predictions the model server's
online answers for the same instances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.integration.test_batch_predict import (
    ROWS,
    SERVEKIT,
    batch,
    expected_instances,
    online_predictions,
    read_lines,
    write_input,
)
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

ROWS_PER_SHARD = 10
"""Four output shards of the 40 rows: two for each of two workers."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-workers") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0, sleep_seconds=0.0001)
    return root


@pytest.fixture(scope="module")
def server(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServer]:
    with model_server(
        [f"--model_config_file={registry / 'servekit.config'}"],
        log_path=tmp_path_factory.mktemp("logs") / "model-server.log",
        ready_timeout=180,
    ) as running:
        yield running


def job(
    registry: Path, source: Path, output: Path, workers: int, *extra: str | Path
) -> dict[str, Any]:
    result = batch(
        "--registry", registry, "--model", "linear:1", "--input", source,
        "--output", output, "--rows-per-shard", ROWS_PER_SHARD, "--batch-size", 4,
        "--workers", workers, "--json", *extra,
    )  # fmt: skip
    manifest: dict[str, Any] = json.loads(result.stdout)
    return manifest


def written(output: Path) -> dict[str, bytes]:
    """Every shard file and shard count file, by name."""
    files = {path.name: path.read_bytes() for path in output.glob("prediction.*")}
    files |= {
        f".shards/{path.name}": _without_seconds(path)
        for path in (output / ".shards").glob("*.json")
    }
    return files


def _without_seconds(path: Path) -> bytes:
    # A shard's counts hold how long it took to write: the one thing that differs.
    counts = json.loads(path.read_text())
    del counts["seconds"]
    return json.dumps(counts).encode()


def without_this_run(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in manifest.items() if key != "this_run"}


@pytest.mark.parametrize(
    ("fmt", "output_format"),
    [("csv", "jsonl"), ("jsonl", "csv"), ("parquet", "parquet")],
)
def test_two_workers_write_the_bytes_one_process_writes(
    registry: Path, server: ModelServer, tmp_path: Path, fmt: str, output_format: str
) -> None:
    source = tmp_path / f"input.{fmt}"
    bad = write_input(fmt, source)
    alone = job(registry, source, tmp_path / "one", 1, "--output-format", output_format)
    shared = job(
        registry, source, tmp_path / "two", 2, "--output-format", output_format
    )

    assert alone["this_run"]["workers"] == 1
    assert shared["this_run"]["workers"] == 2
    assert without_this_run(shared) == without_this_run(alone)
    assert shared["completion_stats"] == {
        "successful_count": ROWS - len(bad),
        "failed_count": len(bad),
        "incomplete_count": 0,
    }
    files = written(tmp_path / "two")
    assert len([name for name in files if name.startswith("prediction.results")]) == 4
    assert files == written(tmp_path / "one")
    assert not list((tmp_path / "two").glob(".*.tmp"))

    assert len(read_lines(tmp_path / "two", "prediction.errors")) == len(bad)
    predictions = _predictions(tmp_path / "two", output_format)
    # Batches of 4 against one request of every row: BLAS may sum a matrix
    # product in another order, so the last bit may differ (see
    # test_batch_predict's first test).
    assert predictions == pytest.approx(
        online_predictions(server, 1, expected_instances(bad)), rel=1e-12, abs=1e-12
    )


def _predictions(output: Path, output_format: str) -> list[float]:
    shards = sorted(output.glob("prediction.results-*"))
    if output_format == "jsonl":
        return [line["prediction"] for line in read_lines(output, "prediction.results")]
    if output_format == "csv":
        return [
            float(line.rsplit(",", 1)[1])
            for path in shards
            for line in path.read_text().splitlines()[1:]
        ]
    return [
        value
        for path in shards
        for value in pq.read_table(path).column("prediction").to_pylist()
    ]


def test_a_resumed_job_with_workers_ends_as_one_process_ends(
    registry: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.csv"
    write_input("csv", source)
    job(registry, source, tmp_path / "one", 1)
    complete = written(tmp_path / "one")

    output = tmp_path / "two"
    first = job(registry, source, output, 2, "--shard", "1/2")
    assert first["this_run"]["workers"] == 2  # shards 1 and 3, one each
    assert first["complete"] is False
    second = job(registry, source, output, 2)
    assert second["this_run"]["shards_written"] == 2
    assert second["complete"] is True
    assert written(output) == complete

    (output / "prediction.results-00002-of-00004").unlink()
    third = job(registry, source, output, 2)
    # One shard left: it is written here, no worker is started for it.
    assert third["this_run"] | {"workers": 1} == third["this_run"]
    assert third["this_run"]["shards_written"] == 1
    assert written(output) == complete
    assert without_this_run(third) == without_this_run(
        json.loads((tmp_path / "one" / "job.json").read_text())
    )


def test_a_failing_worker_fails_the_job_and_the_rerun_completes_it(
    registry: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.jsonl"
    write_input("jsonl", source)
    job(registry, source, tmp_path / "one", 1)
    output = tmp_path / "two"
    output.mkdir()
    # Shard 3's results cannot be renamed into place: the second worker fails.
    blocker = output / "prediction.results-00003-of-00004"
    blocker.mkdir()
    failed = batch(
        "--registry", registry, "--model", "linear:1", "--input", source,
        "--output", output, "--rows-per-shard", ROWS_PER_SHARD, "--batch-size", 4,
        "--workers", 2, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "prediction.results-00003-of-00004" in failed.stderr
    assert failed.stderr.count("\n") == 1
    # The other worker finished its block; the failed one kept shard 2 only.
    assert sorted(path.name for path in (output / ".shards").iterdir()) == [
        "00000.json",
        "00001.json",
        "00002.json",
    ]
    assert not list(output.glob(".*.tmp"))

    blocker.rmdir()
    rerun = job(registry, source, output, 2)
    assert rerun["this_run"]["shards_written"] == 1
    assert written(output) == written(tmp_path / "one")


def test_the_progress_bar_counts_every_worker_s_rows(
    registry: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.parquet"
    write_input("parquet", source)
    result = subprocess.run(
        [
            str(SERVEKIT), "batch", "predict", "--registry", str(registry),
            "--model", "linear:1", "--input", str(source),
            "--output", str(tmp_path / "out"), "--rows-per-shard", "10",
            "--batch-size", "4", "--workers", "2",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{ROWS}/{ROWS} rows" in result.stderr


def test_an_interrupted_job_leaves_no_worker_and_no_partial_file(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    # 50 ms a model call of 4 rows: each worker's two shards of 1,000 rows
    # take 25 s, so the job is still running when it is interrupted however
    # late this test sees both shard files open.
    publish_linear_pipeline(root, "linear", offset=1.0, sleep_seconds=0.05)
    source = tmp_path / "input.jsonl"
    source.write_text(
        "".join(json.dumps({"a": row * 0.5, "b": 1.0}) + "\n" for row in range(4000))
    )
    output = tmp_path / "out"
    process = subprocess.Popen(
        [
            str(SERVEKIT), "batch", "predict", "--registry", str(root),
            "--model", "linear:1", "--input", str(source), "--output", str(output),
            "--rows-per-shard", "1000", "--batch-size", "4", "--workers", "2",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        # Both workers have a shard file open once two temporary files exist.
        wait_until(
            lambda: (
                process.poll() is not None
                or len(list(output.glob(".prediction.results-*.tmp"))) >= 2
            ),
            timeout=120,
            what="two shards being written",
        )
        assert process.poll() is None, process.stderr
        workers = _children(process.pid)
        assert len(workers) == 2
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert not list(output.glob(".*.tmp"))


def _interruptible() -> None:
    # As a terminal's Ctrl-C finds it: a test run started in the background by
    # a non-interactive shell (a CI job) ignores SIGINT, and an ignored signal
    # stays ignored across exec, so the job would never see it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
