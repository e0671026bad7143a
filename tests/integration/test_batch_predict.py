"""`servekit batch predict` end to end: real files in, a real model server and gateway.

The registry holds `linear` (y = 2a + 3b + offset): version 1 (offset 1, with a
custom pipeline step whose code travels in the version's `code/` folder) labelled
`stable`, and version 2 (offset 5). Every job runs as the `servekit` command in
its own process; its predictions are compared with what the model server answers
online for the same instances and version.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from modelregistry import Registry

from tests.support.gateway import ApiKeys, GatewayProcess, running_gateway
from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import VENV_BIN, wait_until

pytestmark = pytest.mark.integration

SERVEKIT = VENV_BIN / "servekit"
ROWS = 40
ROWS_PER_SHARD = 16
BAD_TEXT_ROW = 3
"""A CSV cell that is not a number (JSON Lines: a string; Parquet: infinity)."""
MISSING_ROW = 17
"""An empty cell / NaN: read fine, refused by the model (scikit-learn rejects NaN)."""
BROKEN_LINE = 25
"""JSON Lines only: a line that is not JSON; CSV only: a row with an extra cell."""
FORMATS = ("csv", "jsonl", "parquet")


def good_value(row: int) -> dict[str, float]:
    return {"a": row * 0.25 - 3.0, "b": (row % 7) * 0.5}


def write_input(fmt: str, path: Path) -> list[int]:
    """Write ROWS rows, some bad; return the numbers of the rows that should fail."""
    rows = [good_value(row) for row in range(ROWS)]
    if fmt == "csv":
        lines = ["a,b"] + [f"{row['a']!r},{row['b']!r}" for row in rows]
        lines[1 + BAD_TEXT_ROW] = "three,1.0"
        lines[1 + MISSING_ROW] = "1.5,"
        lines[1 + BROKEN_LINE] = "1.0,2.0,3.0"
        path.write_text("\n".join(lines) + "\n")
        return [BAD_TEXT_ROW, MISSING_ROW, BROKEN_LINE]
    if fmt == "jsonl":
        lines = [json.dumps(row) for row in rows]
        lines[BAD_TEXT_ROW] = '{"a": "three", "b": 1.0}'
        lines[MISSING_ROW] = '{"a": 1.5, "b": NaN}'
        lines[BROKEN_LINE] = '{"a": 1.0, "b":'
        path.write_text("\n".join(lines) + "\n")
        return [BAD_TEXT_ROW, MISSING_ROW, BROKEN_LINE]
    column_a = [row["a"] for row in rows]
    column_b: list[float | None] = [row["b"] for row in rows]
    column_a[BAD_TEXT_ROW] = math.inf
    column_b[MISSING_ROW] = None
    pq.write_table(
        pa.table({"a": column_a, "b": pa.array(column_b, pa.float64())}),
        path,
        row_group_size=10,
    )
    return [BAD_TEXT_ROW, MISSING_ROW]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0, sleep_seconds=0.0001)
    publish_linear_pipeline(root, "linear", offset=5.0)
    Registry(root).set_label("linear", "stable", 1)
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


@pytest.fixture(scope="module")
def gateway(
    registry: Path, server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    keys = ApiKeys().write(
        tmp_path_factory.mktemp("keys") / "api-keys.yaml",
        limited_rate=0.5,
        limited_burst=3,
    )
    env = {
        "GATEWAY_REGISTRY": str(registry),
        "GATEWAY_DEFAULT_BACKEND": server.grpc_target,
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_API_KEYS_FILE": str(keys),
    }
    with running_gateway(tmp_path_factory.mktemp("gateway"), env=env) as running:
        wait_until(
            lambda: httpx.get(f"{running.url}/readyz", timeout=5).status_code == 200,
            timeout=60,
            process=running.process,
            what="gateway /readyz",
        )
        yield running


def batch(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SERVEKIT), "batch", "predict", "--no-progress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_lines(output: Path, prefix: str) -> list[dict[str, Any]]:
    """Every JSON line of the `prefix-*` shards, in shard order."""
    lines = []
    for path in sorted(output.glob(f"{prefix}-*")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def online_predictions(server: ModelServer, version: int, instances: list[Any]) -> Any:
    response = httpx.post(
        f"{server.rest_url}/v1/models/linear/versions/{version}:predict",
        json={"instances": instances},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def expected_instances(bad: list[int]) -> list[dict[str, float]]:
    return [good_value(row) for row in range(ROWS) if row not in bad]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["in-process", "target"])
def test_predictions_equal_the_online_answers_and_bad_rows_are_errors(
    registry: Path, server: ModelServer, tmp_path: Path, fmt: str, mode: str
) -> None:
    source = tmp_path / f"input.{fmt}"
    bad = write_input(fmt, source)
    output = tmp_path / "out"
    where = (
        ["--target", server.rest_url] if mode == "target" else ["--registry", registry]
    )
    result = batch(
        "--model", "linear@stable", "--input", source, "--output", output,
        "--rows-per-shard", ROWS_PER_SHARD, "--batch-size", 8, "--json", *where,
    )  # fmt: skip
    manifest = json.loads(result.stdout)

    shards = sorted(path.name for path in output.glob("prediction.results-*"))
    assert shards == [f"prediction.results-0000{k}-of-00003" for k in range(3)]
    results = read_lines(output, "prediction.results")
    instances = expected_instances(bad)
    assert [line["instance"] for line in results] == instances  # input order kept
    predictions = [line["prediction"] for line in results]
    # The job sends batches of 8 rows (fewer where bad rows were taken out) and
    # the online request sends all rows at once: BLAS sums a matrix product in
    # an order that depends on the batch size, so the last bit may differ.
    # Bit-for-bit equality for the same batch is checked by the test below.
    assert predictions == pytest.approx(
        online_predictions(server, 1, instances), rel=1e-12, abs=1e-12
    )
    assert predictions[0] == pytest.approx(linear_target(-3.0, 0.0, 1.0))

    errors = read_lines(output, "prediction.errors")
    assert len(errors) == len(bad)
    assert {error["error"]["status"] for error in errors} == {"INVALID_ARGUMENT"}
    messages = " | ".join(error["error"]["message"] for error in errors)
    assert "NaN" in messages  # the model's own refusal of the missing value
    if fmt == "csv":
        assert "column a: 'three' is not a number" in messages
        assert "expected 2 columns, got 3" in messages
    if fmt == "jsonl":
        assert "JSON Parse error" in messages
        assert "three" in messages

    assert manifest["model"]["name"] == "linear"
    assert manifest["model"]["version"] == 1
    assert manifest["completion_stats"] == {
        "successful_count": ROWS - len(bad),
        "failed_count": len(bad),
        "incomplete_count": 0,
    }
    assert manifest["complete"] is True
    assert json.loads((output / "job.json").read_text()) == manifest
    if mode == "in-process":
        digests = manifest["model"]["sha256"]
        assert set(digests) >= {"model.joblib", "code/servekit_test_steps.py"}
        assert digests["model.joblib"] == (
            Registry(registry).manifest("linear", 1).files["model.joblib"].sha256
        )
        assert manifest["model"]["identity"]["source"] == "registry"
    else:
        # The server's metadata carries no file digests: none are made up.
        assert manifest["model"]["sha256"] is None
        identity = manifest["model"]["identity"]
        assert identity["source"] == "target"
        assert identity["url"].endswith("/v1/models/linear/versions/1")
        assert len(identity["signature_def_sha256"]) == 64


def test_same_batch_same_bits_and_a_version_number_pins_the_job(
    registry: Path, server: ModelServer, tmp_path: Path
) -> None:
    source = tmp_path / "input.jsonl"
    source.write_text("".join(json.dumps(good_value(row)) + "\n" for row in range(5)))
    for mode, where in [
        ("in-process", ["--registry", str(registry)]),
        ("target", ["--target", server.rest_url]),
    ]:
        output = tmp_path / mode
        batch("--model", "linear:2", "--input", source, "--output", output, *where)
        predictions = [
            line["prediction"] for line in read_lines(output, "prediction.results")
        ]
        assert predictions == online_predictions(
            server, 2, [good_value(row) for row in range(5)]
        )
        manifest = json.loads((output / "job.json").read_text())
        assert manifest["model"]["version"] == 2


def test_through_the_gateway_with_its_api_key(
    gateway: GatewayProcess, server: ModelServer, tmp_path: Path
) -> None:
    source = tmp_path / "input.csv"
    bad = write_input("csv", source)
    refused = batch(
        "--model", "linear:1", "--input", source, "--output", tmp_path / "refused",
        "--target", gateway.url, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "401" in refused.stderr

    output = tmp_path / "out"
    batch(
        "--model", "linear:1", "--input", source, "--output", output,
        "--target", gateway.url, "--api-key", ApiKeys().admin, "--concurrency", 3,
        "--batch-size", 4,
    )  # fmt: skip
    results = read_lines(output, "prediction.results")
    instances = expected_instances(bad)
    assert [line["instance"] for line in results] == instances
    predictions = [line["prediction"] for line in results]
    assert predictions == pytest.approx(  # batches differ: see the first test
        online_predictions(server, 1, instances), rel=1e-12, abs=1e-12
    )
    assert len(read_lines(output, "prediction.errors")) == len(bad)


def test_a_rerun_writes_only_the_missing_shards(registry: Path, tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    write_input("csv", source)
    output = tmp_path / "out"
    common = [
        "--registry", registry, "--model", "linear:1", "--input", source,
        "--output", output, "--rows-per-shard", 10, "--json",
    ]  # fmt: skip

    first = json.loads(batch(*common, "--shard", "1/2").stdout)
    assert first["this_run"]["shards_written"] == 2  # shards 1 and 3 of 0..3
    assert first["complete"] is False
    assert first["completion_stats"]["incomplete_count"] == 20
    assert sorted(path.name for path in output.glob("prediction.results-*")) == [
        "prediction.results-00001-of-00004",
        "prediction.results-00003-of-00004",
    ]

    second = json.loads(batch(*common).stdout)
    assert second["this_run"]["shards_written"] == 2  # only 0 and 2 were missing
    assert second["complete"] is True
    complete = {path.name: path.read_bytes() for path in output.glob("prediction.*")}

    (output / "prediction.results-00002-of-00004").unlink()
    third = json.loads(batch(*common).stdout)
    assert third["this_run"]["shards_written"] == 1
    assert third["completion_stats"] == second["completion_stats"]
    assert {
        path.name: path.read_bytes() for path in output.glob("prediction.*")
    } == complete
    assert not list(output.glob(".*.tmp"))

    other = batch(*common[:-3], "--rows-per-shard", 7, check=False)
    assert other.returncode == 1
    assert "holds the output of another job" in other.stderr
    assert "rows_per_shard" in other.stderr


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_table_outputs_add_the_prediction_column(
    registry: Path, server: ModelServer, tmp_path: Path, output_format: str
) -> None:
    source = tmp_path / "input.parquet"
    bad = write_input("parquet", source)
    output = tmp_path / "out"
    batch(
        "--registry", registry, "--model", "linear:1", "--input", source,
        "--output", output, "--output-format", output_format,
    )  # fmt: skip
    (results,) = output.glob("prediction.results-*")
    assert results.name == f"prediction.results-00000-of-00001.{output_format}"
    if output_format == "csv":
        text = results.read_text().splitlines()
        assert text[0] == "a,b,prediction"
        rows = [[float(cell) for cell in line.split(",")] for line in text[1:]]
    else:
        table = pq.read_table(results)
        assert table.column_names == ["a", "b", "prediction"]
        rows = [list(row.values()) for row in table.to_pylist()]
    instances = expected_instances(bad)
    assert [row[:2] for row in rows] == [[row["a"], row["b"]] for row in instances]
    assert [row[2] for row in rows] == pytest.approx(  # see the first test
        online_predictions(server, 1, instances), rel=1e-12, abs=1e-12
    )


def test_refusals_are_one_line_with_a_non_zero_exit(
    registry: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.jsonl"
    source.write_text('{"a": 1.0, "b": 2.0}\n')
    for args, message in [
        (["--model", "nosuch"], "model 'nosuch' not found"),
        (["--model", "linear:9"], "has no version 9"),
        (["--model", "linear@gold"], "has no label 'gold'"),
        (["--model", "linear", "--shard", "2/2"], "invalid --shard"),
    ]:
        result = batch(
            "--registry", registry, "--input", source, "--output", tmp_path / "o",
            *args, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
    missing = batch(
        "--registry", registry, "--model", "linear", "--input", tmp_path / "none.csv",
        "--output", tmp_path / "o", check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "no such file or folder" in missing.stderr


@pytest.mark.parametrize("mode", ["in-process", "target"])
def test_json_lines_keys_no_input_takes_stay_in_the_instance_only(
    registry: Path, server: ModelServer, tmp_path: Path, mode: str
) -> None:
    # Rows 0-7 share their keys (one typed chunk of 8), rows 8-11 do not.
    rows: list[dict[str, Any]] = [
        {"row_id": f"r{row}", **good_value(row)} for row in range(12)
    ]
    del rows[9]["row_id"]
    rows[10]["label"] = 1.5
    source = tmp_path / "input.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    where = (
        ["--target", server.rest_url] if mode == "target" else ["--registry", registry]
    )
    batch(
        "--model", "linear:1", "--input", source, "--output", output,
        "--batch-size", 8, *where,
    )  # fmt: skip
    results = read_lines(output, "prediction.results")
    assert [line["instance"] for line in results] == rows
    assert not read_lines(output, "prediction.errors")
    assert [line["prediction"] for line in results] == pytest.approx(
        online_predictions(server, 1, [good_value(row) for row in range(12)]),
        rel=1e-12,
        abs=1e-12,
    )
