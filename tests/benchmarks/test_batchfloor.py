"""The batch benchmark's floor (``benchmarks.batchfloor``) on the default models.

``tabular`` (keyed columns with the text column ``bmi_class``, a compiled
scikit-learn pipeline) and ``digits`` (``pixel_<i>`` columns as one matrix input
of a SavedModel) are trained into a fresh registry; the floor must score the
very rows the job scores with the very predictions, and the benchmark must run
it beside the job in its rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import batchjob
from benchmarks.batchfloor import write_floor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVEKIT = Path(sys.executable).parent / "servekit"
MODELS = ("tabular", "digits")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-floor") / "models"
    for name in MODELS:
        subprocess.run(
            [SERVEKIT, "train", name, "--registry", root, "--no-progress"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return root


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", MODELS)
def test_the_floor_scores_the_rows_the_job_scores(
    registry: Path, tmp_path: Path, name: str
) -> None:
    from servekit.batch import versions
    from servekit.batch.inprocess import InProcessPredictor

    rows = 3_000  # a block that starts and ends inside a read and a chunk
    version = versions.resolve_version(registry, batchjob.refs_of(name))
    predictor = InProcessPredictor(registry, name, version, "")
    try:
        frame = batchjob.frame_for(registry, name, rows)
        (source,) = batchjob.write_inputs(
            frame, tmp_path, ["parquet"], matrix=name == "digits"
        ).values()
        args = batchjob.parse_args(["--rows", str(rows), "--batch-size", "256"])
        batchjob.job_rate(
            predictor, source, tmp_path / "job", args, output_format="parquet"
        )
        floor = tmp_path / "floor.parquet"
        assert write_floor(predictor, source, floor, 700, 2_900, 256) == 2_200
    finally:
        predictor.close()
    (results,) = (tmp_path / "job").glob("prediction.results-*.parquet")
    job = pq.read_table(results).slice(700, 2_200)
    scored = pq.read_table(floor)
    predictions = [title for title in scored.column_names if "prediction" in title]
    assert predictions
    assert scored.column_names == job.column_names
    for title in scored.column_names:
        mine, theirs = scored.column(title), job.column(title)
        if title not in predictions:
            assert mine.equals(theirs), title
            continue
        # The job's values are the answer's text read back as float64; the
        # floor keeps the model's own arrays (float32 here, exactly).
        values = mine.combine_chunks()
        if pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        theirs_values = flattened(theirs)
        wanted = np.asarray(values.to_numpy(zero_copy_only=False))
        assert np.array_equal(theirs_values.astype(wanted.dtype), wanted), title


def flattened(column: pa.ChunkedArray) -> np.ndarray:
    """A column's values as one numpy array (a list column's values flattened)."""
    array = column.combine_chunks()
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return np.asarray(array.to_numpy(zero_copy_only=False))


@pytest.mark.timeout(1_800)
def test_the_benchmark_runs_the_floor_beside_the_job(
    registry: Path, tmp_path: Path
) -> None:
    output = tmp_path / "batch.json"
    assert (
        batchjob.main(
            [
                "--registry",
                str(registry),
                "--rows",
                "2000",
                "--rounds",
                "1",
                "--formats",
                "parquet",
                "--output-formats",
                "parquet",
                "jsonl",
                "--no-target",
                "--workers",
                "2",
                "--output",
                str(output),
            ]
        )  # fmt: skip
        == 0
    )
    results = json.loads(output.read_text())
    assert [(row["model"].split(":")[0], row["output_format"]) for row in results] == [
        (name, written) for name in MODELS for written in ("parquet", "jsonl")
    ]
    for row in results:
        tensorflow = row["model"].startswith("digits")
        assert (row["limit_one_thread_rows_per_s"] is not None) == tensorflow
        assert row["limit_rows_per_s"] >= row["limit_default_threads_rows_per_s"]
        if row["output_format"] == "parquet":
            assert row["floor_rows_per_s"] > 0
            assert len(row["floor_ratios"]) == 1
            assert row["floor_cpu_us"] > 0
            assert row["floor_cpu_bound"] > 0
        else:
            assert row["floor_rows_per_s"] is None
            assert row["floor_ratios"] == []
            assert row["floor_cpu_bound"] is None
